"""nnunetv2 internals around preprocessed data and nnU-Net's loaders (see :mod:`nnzoo.trainers.nnunet_compat`)."""

from __future__ import annotations

import os

from torch import nn

#: What ``nnUNetDatasetBlosc2.save_case`` writes per case, in this order (the ``.pkl`` last).
#: Why internal: the preprocessed file layout is an implementation detail of nnU-Net's dataset
#: class; there is no public "is this case completely preprocessed" query. Used to skip complete
#: folders in ``plan_and_preprocess`` and to find preprocessed unlabeled cases.
PREPROCESSED_FILE_ENDINGS = (".b2nd", "_seg.b2nd", ".pkl")


def preprocessed_case_files(folder: str | os.PathLike, case: str) -> list[str]:
    """The files nnU-Net's preprocessing writes for one case of a configuration's data folder."""
    return [os.path.join(folder, f"{case}{e}") for e in PREPROCESSED_FILE_ENDINGS]


def load_preprocessed_image(folder: str | os.PathLike, case: str):
    """The preprocessed image of a case (``(C, *spatial)``, memory-mapped where possible), not its label.

    Why internal: ``nnUNetDatasetBlosc2.load_case`` always opens the segmentation and the
    properties too; semi-supervised training must never read the label of a case it treats as
    unlabeled. This opens the image array exactly as ``load_case`` does (blosc2, mmap, one thread).
    """
    return _open_b2nd(os.path.join(folder, f"{case}.b2nd"))


def load_preprocessed_segmentation(folder: str | os.PathLike, case: str):
    """The preprocessed segmentation of a labeled case (``(1, *spatial)``), opened like its image
    (for scoring against a case's label without going through ``load_case``)."""
    return _open_b2nd(os.path.join(folder, f"{case}_seg.b2nd"))


def _open_b2nd(path: str):
    import blosc2

    kwargs = {} if os.name == "nt" else {"mmap_mode": "r"}
    return blosc2.open(urlpath=path, mode="r", dparams={"nthreads": 1}, **kwargs)


def foreground_locations(seg, label_manager) -> dict:
    """nnU-Net's ``class_locations`` of a label map (what its loader oversamples foreground from).

    Why internal: the sampling is the private static ``DefaultPreprocessor._sample_foreground_locations``,
    called inside ``run_case_npy``; a label map made during training (pseudo-labels) needs the same.
    """
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    classes = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    return DefaultPreprocessor._sample_foreground_locations(seg, classes)


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers.

    nnU-Net unwraps the same two wrappers inline wherever it needs the module (checkpoints,
    deep-supervision switch); there is no helper to call.
    """
    from torch._dynamo import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(network, DistributedDataParallel):
            network = network.module
        elif isinstance(network, OptimizedModule):
            network = network._orig_mod
        else:
            return network


class _TrainerView:
    """A trainer with some attributes replaced, to run one of nnU-Net's trainer methods on other settings."""

    def __init__(self, trainer, **overrides) -> None:
        object.__setattr__(self, "_trainer", trainer)
        self.__dict__.update(overrides)

    def __getattr__(self, name: str):
        return getattr(self._trainer, name)


def build_augmenter(trainer, dataset, batch_size: int, label_manager=None,
                    oversample_foreground_percent: float | None = 0.0):
    """nnU-Net's training loader and augmenter over another dataset (e.g. unlabeled images).

    Runs ``nnUNetTrainer.get_dataloaders`` itself on a view of ``trainer`` whose datasets are
    ``dataset``, whose batch size is ``batch_size`` and which oversamples foreground as given
    (default never: unlabeled images have no labels), so augmentation, patch sampling, worker
    counts and pinning stay nnU-Net's. The validation augmenter it also builds is shut down at once.

    Why internal: ``get_dataloaders`` builds loaders and augmenters inline, for the trainer's own
    split only; there is no hook for a second dataset.

    Args:
        trainer: an nnU-Net trainer (initialized).
        dataset: an ``nnUNetBaseDataset``.
        batch_size: patches per batch.
        label_manager: label manager for the loader and transforms (default: the trainer's).
        oversample_foreground_percent: foreground oversampling (None: the trainer's, with its
            probabilistic setting).

    Returns:
        The started training augmenter.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    oversampling = {} if oversample_foreground_percent is None else {
        "oversample_foreground_percent": oversample_foreground_percent, "probabilistic_oversampling": False}
    view = _TrainerView(trainer, batch_size=batch_size, **oversampling,
                        label_manager=label_manager or trainer.label_manager,
                        get_tr_and_val_datasets=lambda: (dataset, dataset))
    train_augmenter, val_augmenter = nnUNetTrainer.get_dataloaders(view)
    shutdown_augmenter(val_augmenter)
    return train_augmenter


def shutdown_augmenter(augmenter) -> None:
    """Stop an augmenter's worker processes (no-op for single-threaded ones).

    Why internal: batchgenerators' multi-process augmenters are stopped with their private
    ``_finish()``, as nnU-Net's ``on_train_end`` does.
    """
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    if isinstance(augmenter, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
        augmenter._finish()
