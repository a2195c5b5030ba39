"""Base class of nnzoo's trainers: nnU-Net's trainer plus atomic checkpoints and logged hyperparameters."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

__all__ = ["AtomicCheckpointMixin", "NnzooTrainer", "PlanNetworkMixin", "nnzoo_trainer_class", "method_hyperparameters"]

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

    Attributes:
        supports_regions: False makes the constructor refuse region-based (sigmoid) plans.
        supports_ignore_label: False makes the constructor refuse datasets with an ignore label.
        unsupported_labels_reason: why, appended to the error message.
    """

    supports_regions: bool = True
    supports_ignore_label: bool = True
    unsupported_labels_reason: str = ""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        unsupported = [what for what, ok, present in (
            ("region-based training", self.supports_regions, self.label_manager.has_regions),
            ("the ignore label", self.supports_ignore_label, self.label_manager.has_ignore_label)) if present and not ok]
        if unsupported:
            reason = f" ({self.unsupported_labels_reason})" if self.unsupported_labels_reason else ""
            raise NotImplementedError(f"{type(self).__name__} does not support {' and '.join(unsupported)}{reason}; "
                                      f"dataset {dataset_json.get('name', '')!r} uses it")

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


class PlanNetworkMixin:
    """``build_network_architecture`` for method networks built around the plan's encoder.

    Subclasses set ``network_class``, a network taking ``(encoder, num_classes,
    n_conv_per_stage_decoder, deep_supervision, nonlin_first, **extra_network_kwargs())``; it is
    built by :func:`~nnzoo.trainers.networks.common.network_from_arch` from the configuration's
    ``PlainConvUNet`` or ``ResidualEncoderUNet`` architecture (nnU-Net's predictor calls the same
    class method, so checkpoints load into the same network).
    """

    network_class: type

    @classmethod
    def extra_network_kwargs(cls) -> dict:
        """Keyword arguments for ``network_class`` beyond the plan's (default none)."""
        return {}

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The method's network from the configuration's architecture.

        Args:
            plans_manager: nnU-Net plans manager (unused, part of nnU-Net's signature).
            configuration_manager: the configuration whose architecture is used.
            num_input_channels: image channels.
            num_output_channels: segmentation heads (classes or regions).
            enable_deep_supervision: initial deep-supervision flag.

        Returns:
            A ``network_class`` instance with nnU-Net's initialisation.

        Raises:
            ValueError: the plan's network is neither ``PlainConvUNet`` nor ``ResidualEncoderUNet``.
        """
        from .networks.common import network_from_arch

        return network_from_arch(cls.network_class, configuration_manager.network_arch_class_name,
                                 configuration_manager.network_arch_init_kwargs,
                                 configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                 num_output_channels, deep_supervision=enable_deep_supervision,
                                 **cls.extra_network_kwargs())
