"""Self-training with pseudo-labels: train on labels, pseudo-label the unlabeled images, train on both."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import nnunet_compat as compat
from .registry import register_trainer
from .semisup import SemiSupervisedTrainer
from .unlabeled_data import PseudoLabeledDataset, UnlabeledImageDataset

__all__ = ["nnUNetTrainerSelfTraining", "pseudo_label_folder", "pseudo_label_dir", "PSEUDO_DONE", "self_training_loss"]

#: written last into the pseudo-label folder: the labels in it are complete
PSEUDO_DONE = "pseudo_labels.json"


def pseudo_label_folder(trainer) -> Path:
    """Where a run's pseudo-labels go: ``nnUNet_preprocessed/<dataset>/pseudo_labels/<model folder>-<key>/fold_<f>``.

    They are derived training data (like the preprocessed arrays) of one model and fold, not part
    of the model folder, which rank 0 alone writes. ``<key>`` comes from the model folder's full
    path (:func:`pseudo_label_dir`), so runs of the same trainer and dataset under two
    ``nnUNet_results`` never share (or resume from) each other's pseudo-labels.
    """
    return pseudo_label_dir(trainer.preprocessed_dataset_folder_base, trainer.output_folder_base, trainer.fold)


def pseudo_label_dir(preprocessed_dataset_folder: str | Path, model_folder: str | Path, fold: int | str) -> Path:
    """The pseudo-label folder of the model in ``model_folder`` (its full path), for readers without a trainer.

    Args:
        preprocessed_dataset_folder: ``nnUNet_preprocessed/<dataset>``.
        model_folder: the model folder (``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``).
        fold: the fold.

    Returns:
        ``<preprocessed dataset folder>/pseudo_labels/<model folder name>-<8 hex digits of the SHA-1 of its
        absolute path>/fold_<fold>``.
    """
    model_folder = Path(model_folder).resolve()
    key = hashlib.sha1(str(model_folder).encode()).hexdigest()[:8]
    return Path(preprocessed_dataset_folder) / "pseudo_labels" / f"{model_folder.name}-{key}" / f"fold_{fold}"


def self_training_loss(outputs, target, pseudo_target, *, n_labeled: int, loss: Callable,
                       pseudo_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-2 loss of one pass over ``n_labeled`` labeled then pseudo-labeled patches: two terms.

    ``loss(labeled outputs, target) + pseudo_weight * loss(pseudo-labeled outputs, pseudo_target)``,
    each term averaged over its own patches, so the labeled term is exactly a supervised step's
    loss on the labeled patches (one loss over both halves would halve its share).

    Args:
        outputs: network outputs (deep-supervision list or tensor), labeled patches first.
        target: nnU-Net's target of the labeled patches (list or tensor).
        pseudo_target: the pseudo-labeled patches' targets, same form.
        n_labeled: labeled patches at the start of the batch.
        loss: nnU-Net's loss, ``(outputs, target) -> scalar``.
        pseudo_weight: weight of the pseudo-label term.

    Returns:
        ``(total, {"labeled_loss": ..., "pseudo_loss": ...})``.
    """
    deep = isinstance(outputs, (list, tuple))
    lab = [o[:n_labeled] for o in outputs] if deep else outputs[:n_labeled]
    pse = [o[n_labeled:] for o in outputs] if deep else outputs[n_labeled:]
    l_lab, l_pse = loss(lab, target), loss(pse, pseudo_target)
    return l_lab + pseudo_weight * l_pse, {"labeled_loss": l_lab, "pseudo_loss": l_pse}


@register_trainer(
    description="Self-training: train on the labeled cases, pseudo-label the unlabeled images with nnU-Net's "
                "sliding window, train on labeled + pseudo-labeled (semi-supervised baseline)",
    paper="Self-training with pseudo-labels as nnU-Net users apply it, e.g. Ma et al., Unleashing the Strengths "
          "of Unlabeled Data in Pan-cancer Abdominal Organ Quantification: the FLARE22 Challenge, Lancet Digital "
          "Health 2024 (winning entries)",
    dims=("2d", "3d"),
    semi_supervised=True,
)
class nnUNetTrainerSelfTraining(SemiSupervisedTrainer):
    """Self-training with pseudo-labels, the way nnU-Net users learn from unlabeled images (e.g. FLARE22).

    Stage 1 (the first ``PSEUDO_LABEL_AT`` of the epochs): nnU-Net's training on the labeled cases
    only. Then every unlabeled case is predicted with nnU-Net's sliding window (Gaussian weighting,
    mirroring test-time augmentation as in nnU-Net's validation) by the current model; the label
    maps (and nnU-Net's foreground locations for oversampling) are stored in
    :func:`pseudo_label_folder`. Stage 2 continues training; every step takes nnU-Net's labeled
    batch of ``B`` patches plus ``B`` pseudo-labeled patches (sampled and augmented by nnU-Net's
    loader, with its foreground oversampling) in one forward pass, with the loss
    (:func:`self_training_loss`)::

        L(labeled outputs, labels) + PSEUDO_WEIGHT * L(pseudo-labeled outputs, pseudo-labels)

    (nnU-Net's deep-supervised Dice + CE, each term averaged over its own ``B`` patches): the
    labeled term is exactly the supervised baseline's loss, as in every other semi-supervised
    trainer here (the labeled batch keeps its full weight). This is the two-term form of
    pseudo-label training as in WILDS' ``NoisyStudent`` (labeled loss + pseudo-label loss, weight
    1) and FixMatch-style objectives; until 2026-12 nnzoo used one loss over the ``2B`` patches,
    which gave the labeled patches half the weight of a supervised step. ST++ (Yang et al., CVPR
    2022) instead retrains on the union of the two sets as one dataset. Each rank pseudo-labels
    its own share of the unlabeled cases; ``--continue`` in stage 2 reuses the stored
    pseudo-labels, a run starting (or resumed) before stage 2 makes new ones.

    nnzoo choices (no single official code defines them):
        - one round and one model: pseudo-labels come from the model being trained, half-way
          through (``PSEUDO_LABEL_AT = 0.5``), while nnU-Net's poly learning rate is still high
          (0.01 * 0.5^0.9, about 54 % of the initial rate), so the total number of iterations
          equals any other trainer's (the FLARE entries train a teacher to the end, then a new
          student, sometimes for several rounds, with ensembles as teachers);
        - no confidence filtering: every voxel of every unlabeled case gets the argmax label
          (``PSEUDO_WEIGHT = 1``, no threshold, no uncertainty weighting);
        - stage-2 weighting as above (labeled term at full weight, pseudo-label term added).

        What the pseudo-labelling point changes, measured on the low-label benchmark (5 seeds, 2026-12-06, README "nnzoo choices"):
        ``PSEUDO_LABEL_AT = 0.8`` -0.1 points mean foreground Dice [-0.7, +0.5], not separable.

    Not supported (error): the ignore label (pseudo-labels have no unannotated voxels).
    """

    PSEUDO_LABEL_AT = 0.5
    PSEUDO_WEIGHT = 1.0
    PSEUDO_LABEL_TTA = True
    supports_ignore_label = False
    unsupported_labels_reason = "pseudo-labels have no unannotated voxels; cascades have no previous stage for them"
    dataloader_pseudo = None

    @property
    def pseudo_label_epoch(self) -> int:
        """First epoch of stage 2."""
        return int(round(self.PSEUDO_LABEL_AT * self.num_epochs))

    def get_dataloaders(self):
        # nnU-Net's loaders only: stage 2 reads pseudo-labeled cases, never plain unlabeled images
        dl_tr, dl_val = super(SemiSupervisedTrainer, self).get_dataloaders()
        self.unlabeled_case_sources = self.unlabeled_sources()
        return dl_tr, dl_val

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.current_epoch < self.pseudo_label_epoch:  # a fresh run (or resumed in stage 1): any stored
            for marker in pseudo_label_folder(self).glob(f"*{PSEUDO_DONE}"):  # labels are of an earlier model
                if not self.is_ddp or marker.name == f"rank{self._rank()}_{PSEUDO_DONE}":
                    marker.unlink()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.current_epoch >= self.pseudo_label_epoch and self.dataloader_pseudo is None:
            folder = self.make_pseudo_labels()
            dataset = PseudoLabeledDataset(self.unlabeled_case_sources, folder)
            self.dataloader_pseudo = compat.build_augmenter(self, dataset, self.unlabeled_batch_size,
                                                            oversample_foreground_percent=None)

    @torch.no_grad()
    def make_pseudo_labels(self) -> Path:
        """Predict this rank's unlabeled cases with the current network (unless done); returns the folder."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        folder = pseudo_label_folder(self)
        done = folder / (PSEUDO_DONE if not self.is_ddp else f"rank{self._rank()}_{PSEUDO_DONE}")
        if done.is_file():
            self.print_to_log_file(f"Pseudo-labels of {len(self.unlabeled_case_sources)} cases reused from {folder}")
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        network = compat.unwrap_network(self.network)
        self.set_deep_supervision_enabled(False)
        network.eval()
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=self.PSEUDO_LABEL_TTA,
                                    perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, type(self).__name__, self.inference_allowed_mirroring_axes)
        images = UnlabeledImageDataset(self.unlabeled_case_sources)
        for ident in images.identifiers:
            data = torch.from_numpy(np.asarray(images.load_case(ident)[0][:]))
            seg = self.label_manager.convert_logits_to_segmentation(
                predictor.predict_sliding_window_return_logits(data).float()).cpu().numpy().astype(np.int8)[None]
            np.save(folder / f"{ident}.npy", seg)
            with open(folder / f"{ident}.pkl", "wb") as f:
                pickle.dump({"class_locations": compat.foreground_locations(seg, self.label_manager)}, f)
        done.write_text(json.dumps({"cases": images.identifiers, "epoch": self.current_epoch}))
        self.set_deep_supervision_enabled(self.enable_deep_supervision)
        network.train()
        self.print_to_log_file(f"Pseudo-labels of {len(images.identifiers)} unlabeled cases (epoch {self.current_epoch})"
                               f" written to {folder}")
        if self.is_ddp:
            torch.distributed.barrier()
        return folder

    def _rank(self) -> int:
        return torch.distributed.get_rank() if self.is_ddp else 0

    def train_step(self, batch: dict) -> dict:
        if self.dataloader_pseudo is None:  # stage 1: nnU-Net's step on the labels
            return super().train_step(batch)
        data, target = self.batch_to_device(batch)
        p_data, p_target = self.batch_to_device(next(self.dataloader_pseudo))
        n = data.shape[0]
        return self.nnunet_step_with_parts(
            torch.cat((data, p_data.to(data.dtype))), target, lambda net, x: net(x),
            lambda out, t: self_training_loss(out, t, p_target, n_labeled=n, loss=self.loss,
                                              pseudo_weight=self.PSEUDO_WEIGHT))

    def on_train_end(self) -> None:
        super().on_train_end()
        compat.shutdown_augmenter(self.dataloader_pseudo)

