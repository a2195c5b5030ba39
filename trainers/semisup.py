"""Base of nnzoo's semi-supervised trainers: labeled + unlabeled data loaders and an EMA teacher.

:class:`SemiSupervisedTrainer` is nnU-Net's trainer with

- the label budget of :class:`~nnzoo.trainers.label_budget.LabelBudgetMixin` (``--labeled N``);
- a second, unlabeled augmenter built by nnU-Net's own ``get_dataloaders`` (same augmentation,
  worker counts and pinning as the labeled one; see
  :func:`~nnzoo.trainers.nnunet_compat.build_augmenter`). Its cases are the fold's
  ``unlabeled_train_keys`` (read from the labeled folder, images only: labels are never opened)
  plus every case of the configuration's ``<data_identifier>_unlabeled`` folder
  (``imagesUnlabeled``); under DDP each rank takes its own share of them. Patches are sampled
  uniformly (there is no label to oversample);
- every step gets nnU-Net's full labeled batch plus ``UNLABELED_BATCH_RATIO`` times as many
  unlabeled patches (the official code of every method here trains on a labeled and an unlabeled
  batch of the same size), so a semi-supervised run sees at least the supervised baseline's
  labeled patches;
- :class:`EMATeacher`, built from the unwrapped student, saved in and restored from the checkpoint
  (``nnzoo_teacher``; the write stays atomic).

Subclasses implement ``train_step`` with :meth:`SemiSupervisedTrainer.next_unlabeled_batch` and
:meth:`~nnzoo.trainers.base.NnzooTrainer.nnunet_step`. Under DDP every parameter must receive a
gradient each step (include every deep-supervision output in the loss) and the teacher is updated
from the synchronised student after the optimizer step, so all ranks hold the same teacher.

Not supported: cascaded configurations (unlabeled cases have no previous-stage segmentation).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from . import nnunet_compat as compat
from .base import NnzooTrainer
from .unlabeled_data import UnlabeledImageDataset, unlabeled_folder, unlabeled_identifiers

__all__ = ["EMATeacher", "SemiSupervisedTrainer", "TEACHER_KEY", "sigmoid_rampup"]

TEACHER_KEY = "nnzoo_teacher"


def sigmoid_rampup(current: float, length: float) -> float:
    """Sigmoid-shaped ramp ``exp(-5 (1 - t)^2)``, ``t = clip(current / length, 0, 1)`` (Laine & Aila 2017).

    Args:
        current: progress, in the units of ``length``.
        length: ramp length; 0 means no ramp (always 1).

    Returns:
        A weight in ``[exp(-5), 1]`` (1 once ``current >= length``).
    """
    if length <= 0:
        return 1.0
    t = float(np.clip(current / length, 0.0, 1.0))
    return float(np.exp(-5.0 * (1.0 - t) ** 2))


class EMATeacher:
    """Exponential-moving-average copy of a student network (mean teacher).

    Args:
        student: the student network, possibly wrapped in DDP / torch.compile; the teacher is a
            deep copy of the unwrapped module, without gradients, in eval mode.

    ``update(student, decay)`` sets every parameter to ``decay * teacher + (1 - decay) * student``
    (floating-point buffers likewise; integer buffers are copied). Call it after each optimizer step.
    """

    def __init__(self, student: nn.Module) -> None:
        self.module = copy.deepcopy(compat.unwrap_network(student))
        for p in self.module.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.module.eval()

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        """Move the teacher towards ``student`` (``decay`` in [0, 1]: 1 keeps the teacher)."""
        s = compat.unwrap_network(student)
        t_params = list(self.module.parameters())
        s_params = [p.detach() for p in s.parameters()]
        if len(t_params) != len(s_params):
            raise RuntimeError("teacher and student have different parameters")
        torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
        for tb, sb in zip(self.module.buffers(), s.buffers()):
            if tb.dtype.is_floating_point:
                tb.lerp_(sb, 1.0 - decay)
            else:
                tb.copy_(sb)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits at full resolution (first output if the network returns a list)."""
        out = self.module(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.module.load_state_dict(state_dict)


class SemiSupervisedTrainer(NnzooTrainer):
    """nnU-Net trainer with a labeled and an unlabeled data loader and an optional EMA teacher.

    Attributes:
        UNLABELED_BATCH_RATIO: unlabeled patches per labeled patch in a step (1: as many unlabeled
            as labeled patches, the official setting of every method here).
        teacher: an :class:`EMATeacher` once a subclass creates one (None before), saved in and
            restored from checkpoints.
        dataloader_unlabeled: augmenter yielding ``{"data": (B_u, C, *patch), ...}`` batches of
            unlabeled images (the ``target`` entry is an all-zero dummy).

    Raises:
        RuntimeError: when training starts without any unlabeled case (neither a label budget
            leaving cases unlabeled nor preprocessed ``imagesUnlabeled``).
    """

    UNLABELED_BATCH_RATIO = 1.0
    supports_cascade = False
    unsupported_labels_reason = "unlabeled images have no previous-stage segmentation"
    teacher: EMATeacher | None = None
    dataloader_unlabeled = None

    # ---------------------------------------------------------------- data
    @property
    def unlabeled_batch_size(self) -> int:
        """Unlabeled patches per step on this rank: ``max(1, round(batch_size * UNLABELED_BATCH_RATIO))``."""
        return max(1, int(round(self.batch_size * self.UNLABELED_BATCH_RATIO)))

    def unlabeled_sources(self) -> list[tuple[str, str]]:
        """``(folder, identifier)`` of this rank's unlabeled cases (call after :meth:`do_split`).

        Under DDP the cases are dealt out over the ranks (every rank keeps at least one).
        """
        sources = [(self.preprocessed_dataset_folder, k) for k in self.unlabeled_train_keys]
        extra = unlabeled_folder(self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier)
        sources += [(extra, k) for k in unlabeled_identifiers(extra)]
        if not sources:
            raise RuntimeError(
                f"{type(self).__name__} is semi-supervised but has no unlabeled cases: train with a label "
                f"budget (--labeled N) so that some training cases become unlabeled, and/or add images to "
                f"imagesUnlabeled/ and preprocess them (expected in {extra})")
        if self.is_ddp:
            import torch.distributed as dist

            rank, world = dist.get_rank(), dist.get_world_size()
            sources = sources[rank::world] or sources[rank % len(sources):][:1]
        return sources

    def get_dataloaders(self):
        dl_tr, dl_val = super().get_dataloaders()  # runs do_split: unlabeled_train_keys is set
        sources = self.unlabeled_sources()
        self.print_to_log_file(f"Unlabeled cases: {len(sources)} on this rank ({len(self.unlabeled_train_keys)} "
                               f"of the training split are unlabeled; the others from imagesUnlabeled)")
        self.dataloader_unlabeled = compat.build_augmenter(self, UnlabeledImageDataset(sources),
                                                           self.unlabeled_batch_size, self.unlabeled_label_manager())
        return dl_tr, dl_val

    def unlabeled_label_manager(self):
        """The dataset's label manager without the ignore label: with one, nnU-Net's loader samples
        annotated voxels from the label-derived class locations, which unlabeled cases do not have."""
        labels = {k: v for k, v in self.dataset_json["labels"].items() if k != "ignore"}
        return self.plans_manager.get_label_manager({**self.dataset_json, "labels": labels})

    def next_unlabeled_batch(self) -> torch.Tensor:
        """The step's unlabeled images (``unlabeled_batch_size`` patches) on the training device."""
        return next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)

    def on_train_end(self) -> None:
        super().on_train_end()
        compat.shutdown_augmenter(self.dataloader_unlabeled)

    # ---------------------------------------------------------------- checkpoints
    def _extra_checkpoint_state(self) -> dict:
        return {TEACHER_KEY: self.teacher.state_dict() if self.teacher is not None else None}

    def _restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super()._restore_extra_checkpoint_state(checkpoint)
        state = checkpoint.get(TEACHER_KEY)
        if state is not None:
            self.teacher = EMATeacher(self.network)
            self.teacher.load_state_dict(state)
        else:
            self.teacher = None

