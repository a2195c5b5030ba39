"""The one seam between nnzoo and nnunetv2's internals.

nnzoo extends nnU-Net through its public extension points: trainer subclasses and their hooks,
planner subclasses, ``PlansManager``, the predictor, the dataset classes and nnU-Net's helpers.
Where those do not reach, the code below is the only place in nnzoo that touches an nnunetv2
internal (a private method, a module global, a file layout); each item says why the public API
does not serve. ``tests/trainers/test_nnunet_compat.py`` checks that every item still exists with
the signature used here, so an nnunetv2 upgrade fails there, loudly, first.

:data:`INTERNALS` names every nnunetv2 internal nnzoo relies on (the test has one check per name and
fails if the two lists differ): nowhere else in nnzoo — pipeline, trainers, benchmarks or tests —
sets ``plans["continue_training"]``, calls a private nnU-Net method or rebuilds one of its formulas.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["sliding_window_tiles", "INTERNALS", "build_trainer", "run_nnunet_training", "checkpoint_saved_with", "checkpoint_loaded",
           "deep_supervision_weights", "PREPROCESSED_FILE_ENDINGS", "preprocessed_case_files", "load_preprocessed_image", "foreground_locations",
           "unwrap_network",
           "build_augmenter", "shutdown_augmenter", "do_i_compile", "deep_supervision_scales",
           "load_checkpoint_for_run", "nnunet_train_step", "ddp_device", "ddp_wrapping", "writes_of_this_rank",
           "validation_on_rank_zero", "nnunet_trainer_module", "results_elsewhere", "retarget_output_folder",
           "MirroredForwardMixin"]

#: Every nnunetv2 internal nnzoo relies on, and the function of this module that uses it.
#: ``tests/trainers/test_nnunet_compat.py`` holds one check per entry (and fails if an entry has none).
INTERNALS: dict[str, str] = {
    "nnUNetTrainer.__init__ pops plans['continue_training']": "build_trainer",
    "nnUNetTrainer.__init__ derives its model folder from nnunetv2.paths.nnUNet_results": "results_elsewhere",
    "nnunetv2.paths reads nnUNet_* environment variables when used, not when imported": "results_elsewhere",
    "nnUNetTrainer attributes output_folder_base/output_folder/log_file/folder_with_segs_from_previous_stage":
        "retarget_output_folder",
    "MetaLogger.output_folder and MetaLogger.update_config": "retarget_output_folder",
    "nnUNetTrainer.save_checkpoint writes its dict with the module global torch.save": "checkpoint_saved_with",
    "nnUNetTrainer.load_checkpoint reads a file with the module global torch.load": "checkpoint_loaded",
    "nnunetv2.run.run_training.maybe_load_checkpoint": "load_checkpoint_for_run",
    "nnunetv2.run.run_training.run_training's order of steps": "run_nnunet_training",
    "nnUNetTrainer._build_loss (hook the method trainers override; initialize calls it)": "(trainers override it)",
    "nnUNetTrainer._do_i_compile": "do_i_compile",
    "nnUNetTrainer._get_deep_supervision_scales": "deep_supervision_scales",
    "DeepSupervisionWrapper.weight_factors": "deep_supervision_weights",
    "nnUNetTrainer.train_step calls self.network(data) and self.loss(output, target)": "nnunet_train_step",
    "nnUNetTrainer.get_dataloaders reads the attributes the view replaces": "build_augmenter",
    "batchgenerators' augmenters stop with _finish()": "shutdown_augmenter",
    "DefaultPreprocessor._sample_foreground_locations": "foreground_locations",
    "DefaultPreprocessor.run_case_save": "(pipeline.unlabeled preprocesses unlabeled images with it)",
    "nnUNetDatasetBlosc2.save_case's file layout": "preprocessed_case_files",
    "module global DDP of nnunetv2's trainer module, called with device_ids=[self.local_rank]": "ddp_wrapping",
    "nnUNetTrainer.on_train_start writes into output_folder_base": "writes_of_this_rank",
    "nnUNetPredictor's sliding window calls self._internal_maybe_mirror_and_predict(patch) per patch":
        "MirroredForwardMixin",
    "nnUNetPredictor.predict_sliding_window_return_logits pads with pad_nd_image and tiles with "
    "_internal_get_sliding_window_slicers": "sliding_window_tiles",
    "nnUNetPredictor.predict_logits_from_preprocessed_data loads each fold's parameters, then calls "
    "predict_sliding_window_return_logits once per fold": "(pipeline.inference adapts per fold in that call)",
}

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


def do_i_compile(trainer) -> bool:
    """Whether nnU-Net compiles the network and losses for this trainer (device, OS, ``nnUNet_compile``).

    Why internal: the decision lives in the private ``nnUNetTrainer._do_i_compile``; a method that
    builds an extra loss must compile it under the same rule.
    """
    return bool(trainer._do_i_compile())


def deep_supervision_scales(trainer) -> list | None:
    """Output scales of the trainer's network relative to the patch (None without deep supervision).

    Why internal: nnU-Net's hook for them is the private ``_get_deep_supervision_scales`` (CoTr
    overrides it; benchmarks need the scales to build targets).
    """
    return trainer._get_deep_supervision_scales()


def deep_supervision_weights(loss) -> list[float] | None:
    """The weight of each deep-supervision output in nnU-Net's loss (None: no deep supervision).

    Why internal: ``DeepSupervisionWrapper`` keeps its weights in the attribute ``weight_factors``;
    a method that weighs extra outputs as nnU-Net does reads them there instead of repeating
    nnU-Net's formula (``1 / 2**i``, the lowest resolution dropped, normalised).
    """
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    if isinstance(loss, nn.Module) and hasattr(loss, "_orig_mod"):  # a compiled loss
        loss = loss._orig_mod
    if not isinstance(loss, DeepSupervisionWrapper):
        return None
    return [float(w) for w in loss.weight_factors]


def build_trainer(trainer_class: type, *, plans: dict, configuration: str, fold: int | str, dataset_json: dict,
                  device: torch.device, resume: bool = False, model_folder_name: str | None = None):
    """Construct a trainer as ``nnUNetv2_train`` does, for every caller in nnzoo (CLI, benchmarks, tests).

    Args:
        trainer_class: an nnU-Net trainer class.
        plans: the plans dict (not modified: the trainer gets a copy).
        configuration: configuration name.
        fold: fold index or ``"all"``.
        dataset_json: the dataset's ``dataset.json`` contents.
        device: the training device.
        resume: whether the run continues an earlier one (nnU-Net's loggers resume their files).
        model_folder_name: a model folder other than nnU-Net's ``<trainer>__<plans>__<configuration>``
            (e.g. a label budget's ``..._labeled4``); the constructor's own writes go to a scratch
            folder, then the trainer is pointed at this one (:func:`retarget_output_folder`).

    Returns:
        The constructed (not yet initialised) trainer.

    Why internal: ``nnUNetTrainer.__init__`` pops the key ``continue_training`` from the plans
    (``get_trainer_from_args`` sets it in ``nnunetv2.run.run_training``); it is not a parameter.
    """
    plans = copy.deepcopy(plans)
    plans["continue_training"] = bool(resume)
    kwargs = dict(plans=plans, configuration=configuration, fold=fold, dataset_json=dataset_json, device=device)
    if model_folder_name is None:
        return trainer_class(**kwargs)
    with results_elsewhere():
        trainer = trainer_class(**kwargs)
    retarget_output_folder(trainer, model_folder_name)
    return trainer


def run_nnunet_training(trainer, *, resume: bool, validation_only: bool = False, pretrained_weights: str | None = None,
                        val_best: bool = False, validate: bool = True, npz: bool = False,
                        after_validation: Callable[[], None] | None = None) -> None:
    """What ``nnunetv2.run.run_training.run_training`` does with a constructed trainer, in its order.

    Load the checkpoint to continue from or the pretrained weights (:func:`load_checkpoint_for_run`),
    let cuDNN pick its kernels, train (unless ``validation_only``), load ``checkpoint_best.pth`` for
    ``val_best``, and run the final validation (``validate``; under DDP on rank 0 alone, see
    :func:`validation_on_rank_zero`), then ``after_validation`` on the same rank.

    Why internal: ``run_training`` builds its trainer itself from a class name and plans on disk;
    nnzoo's trainer is built by :func:`build_trainer` (schedule, label budget, hyperparameters), so
    the sequence after construction is followed here, step for step (the test checks nnU-Net's order).
    """
    load_checkpoint_for_run(trainer, resume, validation_only, pretrained_weights)
    if trainer.device.type == "cuda":
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    if not validation_only:
        trainer.run_training()
    if val_best:
        trainer.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_best.pth"))
    if validate:
        with validation_on_rank_zero(trainer) as here:
            if here:
                trainer.perform_actual_validation(npz)
                if after_validation is not None:
                    after_validation()


class _TorchWithCheckpointHooks:
    """Stands in for the module global ``torch`` of nnU-Net's trainer module during one save or load."""

    def __init__(self, save=None, load=None) -> None:
        self._save, self._load = save, load

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def save(self, obj, f, *args, **kwargs):
        return (self._save or torch.save)(obj, f, *args, **kwargs)

    def load(self, f, *args, **kwargs):
        return (self._load or torch.load)(f, *args, **kwargs)


@contextmanager
def _nnunet_torch(**hooks) -> Iterator[None]:
    module = nnunet_trainer_module()
    original = module.torch
    module.torch = _TorchWithCheckpointHooks(**hooks)
    try:
        yield
    finally:
        module.torch = original


@contextmanager
def checkpoint_saved_with(extra: dict | None = None) -> Iterator[None]:
    """While active, the checkpoint nnU-Net's ``save_checkpoint`` writes gets ``extra`` and is written atomically.

    The dict nnU-Net builds (weights, optimizer, logging, epoch, init args, trainer name...) gets
    ``extra`` (e.g. an EMA teacher) added before its one write, which goes to a temporary file that
    is flushed to disk and renamed over the target: a process killed while saving leaves the previous
    checkpoint intact. nnU-Net's rules stay: nothing is written on ranks > 0 or with checkpointing
    disabled. Wrap the call to ``super().save_checkpoint(filename)``.

    Why internal: nnU-Net builds the dict inside ``save_checkpoint`` and saves it at once with the
    module global ``torch.save``; there is no hook for extra state or for the write itself.
    """

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and extra:
            obj = {**obj, **extra}
        tmp = f"{os.fspath(f)}.tmp-{os.getpid()}"
        torch.save(obj, tmp, *args, **kwargs)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, f)

    with _nnunet_torch(save=save):
        yield


@contextmanager
def checkpoint_loaded() -> Iterator[dict]:
    """While active, the checkpoint dict nnU-Net's ``load_checkpoint`` reads is kept (yielded dict, key
    ``"checkpoint"``), so that a trainer restores its extra state from the same read.

    Why internal: ``load_checkpoint`` reads the file with the module global ``torch.load`` and keeps
    nothing of the dict beyond what it restores.
    """
    read: dict = {}

    def load(*args, **kwargs):
        read["checkpoint"] = torch.load(*args, **kwargs)
        return read["checkpoint"]

    with _nnunet_torch(load=load):
        yield read


def load_checkpoint_for_run(trainer, continue_training: bool, validation_only: bool = False,
                            pretrained_weights: str | None = None) -> None:
    """Load what ``nnUNetv2_train`` would load before training: latest/final checkpoint, pretrained weights.

    Why internal: ``maybe_load_checkpoint`` lives in ``nnunetv2.run.run_training`` (the CLI's module),
    not in an API module; its choice of checkpoint (final, else latest, else best) is what
    ``--continue`` must mean.
    """
    from nnunetv2.run.run_training import maybe_load_checkpoint

    maybe_load_checkpoint(trainer, continue_training, validation_only, pretrained_weights)


class _StepForward(nn.Module):
    """Stands in for ``trainer.network`` during one of nnU-Net's ``train_step`` calls."""

    def __init__(self, network: nn.Module, forward: Callable) -> None:
        super().__init__()
        self.network = network  # registered: parameters() are the real network's (gradient clipping)
        self._forward = forward

    def forward(self, data: torch.Tensor):
        return self._forward(self.network, data)


def nnunet_train_step(trainer, data: torch.Tensor, target, forward: Callable, loss: Callable) -> dict:
    """One optimisation step through nnU-Net's own ``train_step``, with a method's forward pass and loss.

    nnU-Net's ``train_step`` moves the batch to the device, zeroes the gradients, runs
    ``loss(network(data), target)`` under its autocast, back-propagates (with its AMP grad scaler),
    clips the gradient norm and steps the optimizer. A method that needs another forward (several
    outputs, a teacher, mixed inputs) passes ``forward(network, data)`` and ``loss(outputs, target)``;
    they run inside that same step, so mixed precision, clipping and the optimizer step stay nnU-Net's.

    Why internal: ``train_step`` calls ``self.network(data)`` and ``self.loss(output, target)``
    directly; swapping the two attributes for the duration of the call is the only way to reuse
    it for a method step (DDP wrappers stay in place: ``forward`` receives ``trainer.network``).

    Args:
        trainer: the trainer.
        data: the step's network input (any tensor ``forward`` understands).
        target: nnU-Net's target (tensor or deep-supervision list) or whatever ``loss`` expects;
            tensors and lists of tensors are moved to the device.
        forward: ``(network, data) -> outputs``.
        loss: ``(outputs, target) -> scalar loss``.

    Returns:
        nnU-Net's step result, ``{"loss": numpy scalar}``.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    network, criterion = trainer.network, trainer.loss

    def as_usual(fn: Callable, *args):  # the method's code sees the trainer's own network and loss
        stand_ins = trainer.network, trainer.loss
        trainer.network, trainer.loss = network, criterion
        try:
            return fn(*args)
        finally:
            trainer.network, trainer.loss = stand_ins

    trainer.network = _StepForward(network, lambda net, x: as_usual(forward, net, x))
    trainer.loss = lambda outputs, t: as_usual(loss, outputs, t)
    try:
        return nnUNetTrainer.train_step(trainer, {"data": data, "target": target})
    finally:
        trainer.network, trainer.loss = network, criterion


# ---------------------------------------------------------------------------------------------- result folders
@contextmanager
def results_elsewhere() -> Iterator[str]:
    """While active, ``nnUNet_results`` is a scratch folder (yielded; removed afterwards).

    Why internal: ``nnUNetTrainer.__init__`` derives the model folder from the class and plans
    names alone, creates it and writes its log there; a model folder of another name (a label
    budget's ``..._labeled4``) is set afterwards by :func:`retarget_output_folder`, and the
    constructor's own writes go to the scratch folder instead of a stray one.
    """
    real = os.environ.get("nnUNet_results")
    with tempfile.TemporaryDirectory(prefix="nnzoo-init-") as scratch:
        os.environ["nnUNet_results"] = scratch
        try:
            yield scratch
        finally:
            if real is None:
                os.environ.pop("nnUNet_results", None)
            else:
                os.environ["nnUNet_results"] = real


def retarget_output_folder(trainer, folder_name: str) -> None:
    """Point a constructed trainer's model folder (and everything derived from it) at ``folder_name``.

    Sets ``output_folder_base``, ``output_folder``, ``log_file`` and, for a cascade stage,
    ``folder_with_segs_from_previous_stage`` (the previous stage's model folder with the same
    suffix), as ``nnUNetTrainer.__init__`` derives them.
    """
    from nnunetv2.paths import nnUNet_results

    dataset = trainer.plans_manager.dataset_name
    trainer.output_folder_base = os.path.join(str(nnUNet_results), dataset, folder_name)
    trainer.output_folder = os.path.join(trainer.output_folder_base, f"fold_{trainer.fold}")
    trainer.log_file = os.path.join(trainer.output_folder, os.path.basename(trainer.log_file))
    trainer.logger.output_folder = trainer.output_folder
    os.makedirs(trainer.output_folder, exist_ok=True)
    if trainer.is_cascaded:
        prev = trainer.configuration_manager.previous_stage_name
        suffix = folder_name.split(f"__{trainer.configuration_name}", 1)[1]
        trainer.folder_with_segs_from_previous_stage = os.path.join(
            str(nnUNet_results), dataset, f"{type(trainer).__name__}__{trainer.plans_manager.plans_name}__{prev}{suffix}",
            "predicted_next_stage", trainer.configuration_name)


# ---------------------------------------------------------------------------------------------- DDP
def nnunet_trainer_module():
    """The module that defines ``nnUNetTrainer`` (its globals are patched by :func:`ddp_wrapping`)."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as module

    return module


def ddp_device(requested: torch.device) -> torch.device:
    """The device of this process under DDP: ``cuda:LOCAL_RANK`` for CUDA, else the requested one.

    Why internal: under DDP nnU-Net's constructor sets ``cuda:<global rank>`` (a device that does
    not exist on a second node) whatever device was asked for; nnzoo sets it back afterwards.
    """
    if requested.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return requested


@contextmanager
def ddp_wrapping(device: torch.device) -> Iterator[None]:
    """While active, nnU-Net's ``initialize`` wraps the network in DDP with ``device``'s ids.

    Why internal: ``nnUNetTrainer.initialize`` calls ``DDP(network, device_ids=[self.local_rank])``
    with the *global* rank and no way to pass a CPU module (Gloo); the module global ``DDP`` is
    replaced for the duration of the call by one that uses ``device`` (no ids on CPU).
    """
    module = nnunet_trainer_module()
    original = module.DDP

    def wrap(network: nn.Module, device_ids=None, **kwargs):
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        return original(network, device_ids=ids, **kwargs)

    module.DDP = wrap
    try:
        yield
    finally:
        module.DDP = original


@contextmanager
def writes_of_this_rank(trainer) -> Iterator[None]:
    """Send the files that nnU-Net's ``on_train_start`` writes on every rank to a scratch folder on ranks > 0.

    Why internal: ``on_train_start`` saves ``plans.json``, ``dataset.json`` and the fingerprint into
    ``output_folder_base`` on every rank; only rank 0 may write the model folder.
    """
    if trainer.local_rank == 0:
        yield
        return
    real = trainer.output_folder_base
    with tempfile.TemporaryDirectory(prefix="nnzoo-rank-") as scratch:
        trainer.output_folder_base = scratch
        try:
            yield
        finally:
            trainer.output_folder_base = real


@contextmanager
def validation_on_rank_zero(trainer) -> Iterator[bool]:
    """Run nnU-Net's final validation as a single process on rank 0 (yields whether to run it here).

    Why internal: under DDP ``perform_actual_validation`` spreads the validation cases over ranks
    and each rank exports its share; nnzoo's rule is that rank 0 alone writes the model folder.
    On rank 0 the trainer is made non-distributed (plain module, ``is_ddp`` off) for the call, so
    it runs no collective: the other ranks need not wait for it.
    """
    if not trainer.is_ddp:
        yield True
        return
    if trainer.local_rank != 0:
        yield False
        return
    network, trainer.network, trainer.is_ddp = trainer.network, unwrap_network(trainer.network), False
    try:
        yield True
    finally:
        trainer.network, trainer.is_ddp = network, True


# ---------------------------------------------------------------------------------------------- prediction
class MirroredForwardMixin:
    """For a subclass of ``nnUNetPredictor``: each patch of nnU-Net's sliding window goes through
    ``self.mirrored_forward(patch)`` (the network and its mirrored copies, averaged) instead of
    nnU-Net's one-forward-per-mirror loop; the sliding window, Gaussian weighting, fold averaging and
    export stay nnU-Net's.

    Why internal: the per-patch step is the private ``nnUNetPredictor._internal_maybe_mirror_and_predict``,
    called by the private ``_internal_predict_sliding_window_return_logits``; a predictor that runs the
    mirrors in another precision or in one batch has no other place to do it.
    """

    def mirrored_forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - subclasses define it
        raise NotImplementedError

    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.mirrored_forward(x)


def sliding_window_tiles(predictor, input_image: torch.Tensor) -> list[torch.Tensor]:
    """The tiles nnU-Net's sliding window feeds the network for ``input_image`` (``(C, *spatial)``), each
    ``(1, C, *patch)``, in nnU-Net's order (what a test-time adaptation adapts on before the same window predicts).

    Why internal: the padding and the tile positions are computed inside
    ``nnUNetPredictor.predict_sliding_window_return_logits`` (``pad_nd_image`` to the patch size, then the
    private ``_internal_get_sliding_window_slicers``); there is no public query for them.
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    data, _ = pad_nd_image(input_image, predictor.configuration_manager.patch_size, "constant", {"value": 0}, True,
                           None)
    return [data[s][None] for s in predictor._internal_get_sliding_window_slicers(data.shape[1:])]
