"""Base of nnzoo's semi-supervised trainers: labeled + unlabeled data loaders and an EMA teacher.

:class:`SemiSupervisedTrainer` is nnU-Net's trainer with

- the label budget of :class:`~nnzoo.trainers.label_budget.LabelBudgetMixin` (``--labeled N``);
- a second, unlabeled data loader with nnU-Net's training augmentation. Its cases are the fold's
  ``unlabeled_train_keys`` (read from the labeled folder, images only: the ``_seg`` file and the
  label-derived properties are never opened) plus every case of the configuration's
  ``<data_identifier>_unlabeled`` folder (``imagesUnlabeled``, see :mod:`nnzoo.pipeline.unlabeled`).
  Patches are sampled uniformly (no foreground oversampling: there is no label to find it);
- :class:`EMATeacher`, built from the unwrapped student (DDP ``.module``, compiled ``._orig_mod``),
  saved in and restored from the checkpoint (``nnzoo_teacher`` key; the write stays atomic).

Subclasses implement ``train_step`` with :meth:`SemiSupervisedTrainer.next_unlabeled_batch` and
:meth:`SemiSupervisedTrainer.optimizer_step`. Under DDP every parameter must receive a gradient
each step (include every deep-supervision output in the loss) and the teacher is updated from
the synchronised student after the optimizer step, so all ranks hold the same teacher.

Not supported: cascaded configurations (unlabeled cases have no previous-stage segmentation).
Region and ignore-label plans are loaded fine (the unlabeled loader ignores both); whether a
method supports them is up to the subclass.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset, nnUNetDatasetBlosc2
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnzoo.pipeline.unlabeled import unlabeled_folder

from .base import NnzooTrainer
from .label_budget import LabelBudgetMixin

__all__ = ["unwrap_network", "EMATeacher", "UnlabeledImageDataset", "SemiSupervisedTrainer"]

TEACHER_KEY = "nnzoo_teacher"


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(network, DistributedDataParallel):
            network = network.module
        elif isinstance(network, OptimizedModule):
            network = network._orig_mod
        else:
            return network


class EMATeacher:
    """Exponential-moving-average copy of a student network (mean teacher).

    Args:
        student: the student network, possibly wrapped in DDP / torch.compile; the teacher is a
            deep copy of the unwrapped module, without gradients, in eval mode.

    ``update(student, decay)`` sets every parameter to ``decay * teacher + (1 - decay) * student``
    (floating-point buffers likewise; integer buffers are copied). Call it after each optimizer step.
    """

    def __init__(self, student: nn.Module) -> None:
        self.module = copy.deepcopy(unwrap_network(student))
        for p in self.module.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.module.eval()

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        """Move the teacher towards ``student`` (``decay`` in [0, 1]: 1 keeps the teacher)."""
        s = unwrap_network(student)
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


class UnlabeledImageDataset(nnUNetBaseDataset):
    """Images of preprocessed cases from one or more folders, never their labels.

    ``load_case`` opens only ``<case>.b2nd`` (or ``.npy``/``.npz`` data of nnU-Net's numpy
    format), returns an all-zero segmentation (a broadcast view, no memory) and properties with
    empty ``class_locations``: neither ``<case>_seg.*`` nor ``<case>.pkl`` is read.

    Args:
        sources: ``(folder, case identifier)`` pairs. Identifiers occurring in several folders
            are made unique by appending ``@<n>``.
    """

    def __init__(self, sources: list[tuple[str, str]]) -> None:
        self._where: dict[str, tuple[str, str]] = {}
        for folder, key in sources:
            ident, n = key, 1
            while ident in self._where:
                ident, n = f"{key}@{n}", n + 1
            self._where[ident] = (folder, key)
        super().__init__(folder=sources[0][0] if sources else "", identifiers=list(self._where))

    def load_case(self, identifier: str):
        folder, key = self._where[identifier]
        base = os.path.join(folder, key)
        if os.path.isfile(base + ".b2nd"):
            import blosc2

            kw = {} if os.name == "nt" else {"mmap_mode": "r"}
            data = blosc2.open(urlpath=base + ".b2nd", mode="r", dparams={"nthreads": 1}, **kw)
        elif os.path.isfile(base + ".npy"):
            data = np.load(base + ".npy", mmap_mode="r")
        else:
            data = np.load(base + ".npz")["data"]
        seg = np.broadcast_to(np.zeros((), dtype=np.int8), (1, *data.shape[1:]))
        return data, seg, None, {"class_locations": {}}

    @staticmethod
    def save_case(data, seg, properties, output_filename_truncated):
        raise NotImplementedError("UnlabeledImageDataset is read-only")

    @staticmethod
    def get_identifiers(folder: str) -> list[str]:
        return nnUNetDatasetBlosc2.get_identifiers(folder)


class _ExtraCheckpointStateMixin(nnUNetTrainer):
    """Adds ``self._extra_checkpoint_state()`` to the file nnU-Net's ``save_checkpoint`` writes.

    It sits below :class:`~nnzoo.trainers.base.AtomicCheckpointMixin` in the MRO, so it amends
    the temporary file before that mixin renames it over the checkpoint: writes stay atomic.
    """

    def _extra_checkpoint_state(self) -> dict:
        return {}

    def _restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Restore what :meth:`_extra_checkpoint_state` saved (called by :meth:`load_checkpoint`)."""

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        self._restore_extra_checkpoint_state(checkpoint)

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        extra = self._extra_checkpoint_state()
        if extra and self.local_rank == 0 and os.path.isfile(filename):
            checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
            checkpoint.update(extra)
            torch.save(checkpoint, filename)


class SemiSupervisedTrainer(LabelBudgetMixin, NnzooTrainer, _ExtraCheckpointStateMixin):
    """nnU-Net trainer with a labeled and an unlabeled data loader and an optional EMA teacher.

    Attributes:
        teacher: an :class:`EMATeacher` once a subclass creates one (None before), saved in and
            restored from checkpoints.
        dataloader_unlabeled: augmenter yielding ``{"data": (B, C, *patch), ...}`` batches of
            unlabeled images (the ``target`` entry is an all-zero dummy).
        unlabeled_batch_size: batch size of the unlabeled loader when ``UNLABELED_FRACTION`` is
            None (None: the labeled batch size).
        UNLABELED_FRACTION: None: every step gets nnU-Net's full labeled batch plus a full
            unlabeled batch. A fraction ``f``: the planned batch of ``B`` patches is shared, as in
            the official code of most semi-supervised methods (half labeled, half unlabeled):
            ``n_u = max(1, round(B f))`` unlabeled and ``n_l = max(1, B - n_u)`` labeled patches
            per step (see :meth:`batch_split` and :meth:`labeled_part`).

    Raises:
        RuntimeError: when training starts without any unlabeled case (neither a label budget
            leaving cases unlabeled nor preprocessed ``imagesUnlabeled``).
        NotImplementedError: cascaded configurations.
    """

    unlabeled_batch_size: int | None = None
    UNLABELED_FRACTION: float | None = None
    teacher: EMATeacher | None = None
    dataloader_unlabeled = None

    # ---------------------------------------------------------------- data
    def batch_split(self) -> tuple[int, int]:
        """``(labeled, unlabeled)`` patches per training step (see ``UNLABELED_FRACTION``)."""
        if self.UNLABELED_FRACTION is None:
            return self.batch_size, self.unlabeled_batch_size or self.batch_size
        n_u = max(1, int(round(self.batch_size * self.UNLABELED_FRACTION)))
        return max(1, self.batch_size - n_u), n_u

    def labeled_part(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]:
        """``(data, target)`` of the step's labeled patches on the training device.

        With ``UNLABELED_FRACTION`` set these are the last ``n_l`` patches of nnU-Net's batch:
        they include the foreground-oversampled ones, which nnU-Net puts at the end of a batch.
        """
        n_l = self.batch_split()[0]
        data, target = batch["data"][-n_l:], batch["target"]
        target = [t[-n_l:] for t in target] if isinstance(target, (list, tuple)) else target[-n_l:]
        return self.batch_to_device({"data": data, "target": target})

    def unlabeled_sources(self) -> list[tuple[str, str]]:
        """``(folder, identifier)`` of every unlabeled case (call after :meth:`do_split`)."""
        sources = [(self.preprocessed_dataset_folder, k) for k in self.unlabeled_train_keys]
        extra = unlabeled_folder(self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier)
        if os.path.isdir(extra):
            sources += [(extra, k) for k in sorted(nnUNetDatasetBlosc2.get_identifiers(extra))]
        if not sources:
            raise RuntimeError(
                f"{type(self).__name__} is semi-supervised but has no unlabeled cases: train with a label "
                f"budget (--labeled N) so that some training cases become unlabeled, and/or add images to "
                f"imagesUnlabeled/ and preprocess them (expected in {extra})")
        return sources

    def get_dataloaders(self):
        if self.is_cascaded:
            raise NotImplementedError(f"{type(self).__name__} does not support cascaded configurations")
        dl_tr, dl_val = super().get_dataloaders()  # runs do_split: unlabeled_train_keys is set
        sources = self.unlabeled_sources()
        self.print_to_log_file(f"Unlabeled cases: {len(sources)} ({len(self.unlabeled_train_keys)} from the "
                               f"training split, {len(sources) - len(self.unlabeled_train_keys)} from imagesUnlabeled)")
        self.dataloader_unlabeled = self._build_unlabeled_augmenter(UnlabeledImageDataset(sources))
        return dl_tr, dl_val

    def _build_unlabeled_augmenter(self, dataset: UnlabeledImageDataset):
        patch_size = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels, regions=None, ignore_label=None)
        dl = nnUNetDataLoader(dataset, self.batch_split()[1], initial_patch_size,
                              patch_size, self.label_manager, oversample_foreground_percent=0.0,
                              sampling_probabilities=None, pad_sides=None, transforms=transforms)
        dl.has_ignore = False  # uniform sampling; never looks up (label-derived) class locations
        n = get_allowed_n_proc_DA()
        if n == 0:
            augmenter = SingleThreadedAugmenter(dl, None)
        else:
            augmenter = NonDetMultiThreadedAugmenter(
                data_loader=dl, transform=None, num_processes=max(1, n // 2), num_cached=max(3, n // 4),
                seeds=None, pin_memory=self.device.type == "cuda", wait_time=0.002)
        _ = next(augmenter)
        return augmenter

    def next_unlabeled_batch(self) -> torch.Tensor:
        """The step's unlabeled images (the first ``batch_split()[1]`` of the loader's next
        augmented batch: all of it for the loader built here), on the training device."""
        return next(self.dataloader_unlabeled)["data"][:self.batch_split()[1]].to(self.device, non_blocking=True)

    def on_train_end(self) -> None:
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
            self.dataloader_unlabeled._finish()

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
