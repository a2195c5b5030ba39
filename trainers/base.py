"""Base of nnzoo's trainers: nnU-Net's trainer plus what ``nnzoo train`` adds to every trainer.

- :class:`NnzooTrainerMixin`: atomic checkpoints, correct devices and DDP wrapping on every node
  and on CPU (Gloo), rank 0 alone writing the model folder, logged hyperparameters, declared
  label support. :func:`nnzoo_trainer_class` adds it (and the label budget) to any nnU-Net trainer.
- :class:`NnzooTrainer`: the mixin on ``nnUNetTrainer``, base of every nnzoo method trainer; custom
  steps run through nnU-Net's own ``train_step`` (:meth:`NnzooTrainer.nnunet_step`).
- :class:`PlanNetworkMixin`: ``build_network_architecture`` for networks built around the plan's encoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from . import nnunet_compat as compat

__all__ = ["AtomicCheckpointMixin", "NnzooTrainerMixin", "NnzooTrainer", "PlanNetworkMixin", "nnzoo_trainer_class",
           "method_hyperparameters", "parse_hyperparameters", "label_support_problem"]

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


def parse_hyperparameters(trainer_class: type, items: dict[str, str]) -> dict:
    """Typed values for ``NAME=VALUE`` overrides of a trainer's UPPER_CASE hyperparameters.

    The type is the attribute's: bool (``true``/``false``/``1``/``0``), int, float, str, or a
    tuple of numbers given comma-separated.

    Raises:
        KeyError: a name that is not one of the trainer's hyperparameters (the message lists them).
        ValueError: a value that does not parse as the attribute's type.
    """
    known = method_hyperparameters(trainer_class)
    out = {}
    for name, text in items.items():
        if name not in known:
            raise KeyError(f"{name} is not a hyperparameter of {trainer_class.__name__} (they are: "
                           f"{', '.join(sorted(known)) or 'none'})")
        default = known[name]
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                value = text.lower() in ("true", "1")
            elif isinstance(default, tuple):
                value = tuple(type(default[0])(v) if default else float(v) for v in text.split(","))
            else:
                value = type(default)(text)
        except ValueError:
            raise ValueError(f"{name}={text!r}: expected a {type(default).__name__} like {default!r}") from None
        out[name] = value
    return out


def label_support_problem(trainer_class: type, label_manager, cascaded: bool = False) -> str | None:
    """Why ``trainer_class`` cannot train on these labels or this configuration, or None.

    Reads the class's declared support (``supports_regions``, ``supports_ignore_label``,
    ``supports_cascade``; nnU-Net's own trainers support everything).

    Args:
        trainer_class: a trainer class.
        label_manager: nnU-Net's ``LabelManager`` of the dataset.
        cascaded: the configuration is a cascade stage (uses the previous stage's segmentations).
    """
    unsupported = [what for what, ok, present in (
        ("region-based training", getattr(trainer_class, "supports_regions", True), label_manager.has_regions),
        ("the ignore label", getattr(trainer_class, "supports_ignore_label", True), label_manager.has_ignore_label),
        ("cascaded configurations", getattr(trainer_class, "supports_cascade", True), cascaded)) if present and not ok]
    if not unsupported:
        return None
    reason = getattr(trainer_class, "unsupported_labels_reason", "")
    return f"{trainer_class.__name__} does not support {' and '.join(unsupported)}" + (f" ({reason})" if reason else "")


class NnzooTrainerMixin(AtomicCheckpointMixin):
    """What ``nnzoo train`` adds to any nnU-Net trainer (put before the trainer in the bases).

    - atomic checkpoints (:class:`AtomicCheckpointMixin`);
    - under DDP (a process group initialised by ``nnzoo train -num_gpus N`` or by torchrun): the
      device is ``cuda:LOCAL_RANK`` (nnU-Net picks ``cuda:<global rank>``) or the requested CPU
      (Gloo), the network is wrapped in DDP for that device, and only rank 0 writes into the model
      folder (nnU-Net writes ``plans.json`` etc. on every rank);
    - the method's UPPER_CASE hyperparameters printed to the training log when training starts;
    - declared label support: a trainer that sets ``supports_regions``, ``supports_ignore_label``
      or ``supports_cascade`` to False refuses such datasets or configurations in its constructor
      (``nnzoo train`` checks the same with :func:`label_support_problem` before building it).

    - a model folder with a suffix (``result_suffix``, e.g. ``_labeled4`` for a label budget:
      ``<trainer>__<plans>__<configuration>_labeled4``), so that runs of the same trainer with
      different label budgets keep their own models.

    Attributes:
        result_suffix: appended to the model folder's name (empty: nnU-Net's name).
        supports_regions: False: refuse region-based (sigmoid) plans.
        supports_ignore_label: False: refuse datasets with an ignore label.
        supports_cascade: False: refuse cascaded configurations (``3d_cascade_fullres``).
        unsupported_labels_reason: why, appended to the error message.
    """

    result_suffix: str = ""
    supports_regions: bool = True
    supports_ignore_label: bool = True
    supports_cascade: bool = True
    unsupported_labels_reason: str = ""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        if self.result_suffix:
            with compat.results_elsewhere():
                super().__init__(plans, configuration, fold, dataset_json, device)
            compat.retarget_output_folder(self, f"{type(self).__name__}__{self.plans_manager.plans_name}__"
                                                f"{configuration}{self.result_suffix}")
        else:
            super().__init__(plans, configuration, fold, dataset_json, device)
        problem = label_support_problem(type(self), self.label_manager, self.is_cascaded)
        if problem:
            raise NotImplementedError(f"{problem}; dataset {dataset_json.get('name', '')!r}, configuration "
                                      f"{configuration!r}")
        if self.is_ddp:
            self.device = compat.ddp_device(device)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            else:
                self.grad_scaler = None  # nnU-Net made one for the CUDA device it assumed

    def initialize(self) -> None:
        if not self.is_ddp:
            return super().initialize()
        with compat.ddp_wrapping(self.device):
            return super().initialize()

    def on_train_start(self) -> None:
        with compat.writes_of_this_rank(self):
            super().on_train_start()
        hp = method_hyperparameters(type(self))
        if hp:
            self.print_to_log_file(f"{type(self).__name__} hyperparameters: {hp}")
            self.logger.update_config({"method_hparams": hp})


def nnzoo_trainer_class(trainer_class: type, result_suffix: str = "", hyperparameters: dict | None = None) -> type:
    """``trainer_class`` with what ``nnzoo train`` adds to any trainer.

    That is :class:`NnzooTrainerMixin` and low-label runs
    (:class:`~nnzoo.trainers.label_budget.LabelBudgetMixin`), and a model-folder suffix. Classes
    that have both mixins are returned as they are (without a suffix); any other case gets a
    subclass of the same name (nnU-Net derives result folders and the checkpoint's
    ``trainer_name`` from the class name, so models stay interchangeable with stock
    ``nnUNetv2_train`` ones). ``hyperparameters`` replace UPPER_CASE class attributes (see
    :func:`parse_hyperparameters`).
    """
    from .label_budget import LabelBudgetMixin

    missing = tuple(m for m in (NnzooTrainerMixin, LabelBudgetMixin) if not issubclass(trainer_class, m))
    if not missing and not result_suffix and not hyperparameters:
        return trainer_class
    attrs = {"__doc__": trainer_class.__doc__, "__module__": trainer_class.__module__, **(hyperparameters or {})}
    if result_suffix:
        attrs["result_suffix"] = result_suffix
    return type(trainer_class.__name__, (*missing, trainer_class), attrs)


class NnzooTrainer(NnzooTrainerMixin, nnUNetTrainer):
    """nnU-Net's trainer with :class:`NnzooTrainerMixin`; base of every nnzoo method trainer.

    Subclasses declare their hyperparameters as UPPER_CASE class attributes (logged when training
    starts). A method with its own optimisation step runs it through :meth:`nnunet_step`, so that
    mixed precision, gradient clipping and the optimizer step stay nnU-Net's.
    """

    def batch_to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]:
        """``(data, target)`` of an nnU-Net batch on the training device (target: tensor or DS list)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, (list, tuple)):
            return data, [t.to(self.device, non_blocking=True) for t in target]
        return data, target.to(self.device, non_blocking=True)

    def nnunet_step(self, data: torch.Tensor, target, forward: Callable, loss: Callable) -> dict:
        """One step of nnU-Net's ``train_step`` with the method's ``forward(network, data)`` and
        ``loss(outputs, target)`` (see :func:`~nnzoo.trainers.nnunet_compat.nnunet_train_step`)."""
        return compat.nnunet_train_step(self, data, target, forward, loss)


class PlanNetworkMixin:
    """``build_network_architecture`` for method networks built around the plan's encoder.

    Subclasses set ``network_class``, a network taking ``(encoder, num_classes,
    n_conv_per_stage_decoder, deep_supervision, nonlin_first, **extra_network_kwargs(ndim))``; it is
    built by :func:`~nnzoo.trainers.networks.common.network_from_arch` from the configuration's
    ``PlainConvUNet`` or ``ResidualEncoderUNet`` architecture, with ``encoder_kwargs(ndim)``
    replacing plan entries of the encoder (nnU-Net's predictor calls the same class method, so
    checkpoints load into the same network).
    """

    network_class: type

    @classmethod
    def extra_network_kwargs(cls, ndim: int) -> dict:
        """Keyword arguments for ``network_class`` beyond the plan's, for 2D or 3D (default none)."""
        return {}

    @classmethod
    def encoder_kwargs(cls, ndim: int) -> dict:
        """Entries replacing the plan's ``arch_kwargs`` for the encoder, for 2D or 3D (default none)."""
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

        ndim = len(configuration_manager.patch_size)
        return network_from_arch(cls.network_class, configuration_manager.network_arch_class_name,
                                 configuration_manager.network_arch_init_kwargs,
                                 configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                 num_output_channels, deep_supervision=enable_deep_supervision,
                                 encoder_kwargs=cls.encoder_kwargs(ndim), **cls.extra_network_kwargs(ndim))
