"""Base class of nnzoo's trainers: nnU-Net's trainer plus atomic checkpoints and logged hyperparameters."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

__all__ = ["AtomicCheckpointMixin", "NnzooTrainer", "nnzoo_trainer_class", "method_hyperparameters"]

_HPARAM_TYPES = (bool, int, float, str, tuple)


class AtomicCheckpointMixin:
    """Writes checkpoints to a temporary file and renames it over the target.

    A process killed while saving leaves the previous checkpoint intact: ``os.replace`` is
    atomic on POSIX and Windows file systems, and the temporary file is flushed to disk first.
    """

    def save_checkpoint(self, filename: str) -> None:
        tmp = f"{filename}.tmp-{os.getpid()}"
        super().save_checkpoint(tmp)  # type: ignore[misc]
        if not os.path.isfile(tmp):  # not rank 0, or checkpointing disabled
            return
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, filename)


def nnzoo_trainer_class(trainer_class: type) -> type:
    """``trainer_class`` with what ``nnzoo train`` adds to any trainer.

    That is atomic checkpoints (:class:`AtomicCheckpointMixin`) and low-label runs
    (:class:`~nnzoo.trainers.label_budget.LabelBudgetMixin`). nnzoo trainers have both and are
    returned as they are; any other nnU-Net trainer gets a subclass of the same name (nnU-Net
    derives result folders and the checkpoint's ``trainer_name`` from the class name, so models
    stay interchangeable with stock ``nnUNetv2_train`` ones).
    """
    from .label_budget import LabelBudgetMixin

    missing = tuple(m for m in (AtomicCheckpointMixin, LabelBudgetMixin) if not issubclass(trainer_class, m))
    if not missing:
        return trainer_class
    return type(trainer_class.__name__, (*missing, trainer_class),
                {"__doc__": trainer_class.__doc__, "__module__": trainer_class.__module__})


def method_hyperparameters(trainer_class: type) -> dict:
    """Class attributes that nnzoo trainers declare as hyperparameters (upper-case names).

    Args:
        trainer_class: a trainer class.

    Returns:
        ``{name: value}`` for every upper-case class attribute of plain type along the MRO
        (subclasses override their bases).
    """
    out: dict = {}
    for klass in reversed(trainer_class.__mro__):
        for k, v in vars(klass).items():
            if k.isupper() and isinstance(v, _HPARAM_TYPES):
                out[k] = v
    return out


class NnzooTrainer(AtomicCheckpointMixin, nnUNetTrainer):
    """nnU-Net's trainer with atomic checkpoints; base of every nnzoo method trainer.

    Subclasses declare their hyperparameters as UPPER_CASE class attributes; they are printed
    to the training log and added to the logger's config when training starts. Custom
    ``train_step`` s use :meth:`batch_to_device`, :meth:`autocast` and :meth:`optimizer_step` so
    that mixed precision, gradient clipping and the optimizer step stay nnU-Net's.
    """

    def batch_to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]:
        """``(data, target)`` of an nnU-Net batch on the training device (target: tensor or DS list)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, (list, tuple)):
            return data, [t.to(self.device, non_blocking=True) for t in target]
        return data, target.to(self.device, non_blocking=True)

    def autocast(self):
        """nnU-Net's mixed precision: autocast on CUDA, nothing elsewhere."""
        return torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else nullcontext()

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward pass, gradient clipping (norm 12) and optimizer step as nnU-Net's ``train_step``
        does them (with the AMP grad scaler on CUDA). Zero the gradients before the forward pass."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()

    def on_train_start(self) -> None:
        super().on_train_start()
        hp = method_hyperparameters(type(self))
        if hp:
            self.print_to_log_file(f"{type(self).__name__} hyperparameters: {hp}")
            self.logger.update_config({"method_hparams": hp})
