"""Base of nnzoo's trainers: nnU-Net's trainer plus what ``nnzoo train`` adds to every trainer.

- :class:`NnzooTrainerMixin`: atomic checkpoints, correct devices and DDP wrapping on every node
  and on CPU (Gloo), rank 0 alone writing the model folder, logged hyperparameters, declared
  label support. :func:`nnzoo_trainer_class` adds it (and the label budget) to any nnU-Net trainer.
- :class:`NnzooTrainer`: the mixin on ``nnUNetTrainer``, base of every nnzoo method trainer; custom
  steps run through nnU-Net's own ``train_step`` (:meth:`NnzooTrainer.nnunet_step`).
- :class:`PlanNetworkMixin`: ``build_network_architecture`` for networks built around the plan's encoder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from . import nnunet_compat as compat
from .label_budget import LabelBudgetMixin

__all__ = ["AtomicCheckpointMixin", "NnzooTrainerMixin", "NnzooTrainer", "PlanNetworkMixin", "nnzoo_trainer_class",
           "method_hyperparameters", "parse_hyperparameters", "label_support_problem"]

_HPARAM_TYPES = (bool, int, float, str, tuple)


class AtomicCheckpointMixin:
    """Checkpoints written atomically, with a method's extra state in the same file.

    nnU-Net's ``save_checkpoint`` builds its dict; :meth:`_extra_checkpoint_state` is added to it and
    the one write goes to a temporary file, flushed to disk and renamed over the target
    (:func:`~nnzoo.trainers.nnunet_compat.checkpoint_saved_with`): a process killed while saving
    leaves the previous checkpoint intact. ``load_checkpoint`` hands the dict it read to
    :meth:`_restore_extra_checkpoint_state`. Subclasses extend the two hooks (calling ``super()``).
    """

    def _extra_checkpoint_state(self) -> dict:
        """Entries added to every checkpoint this trainer writes (default none)."""
        return {}

    def _restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Restore what :meth:`_extra_checkpoint_state` saved from a loaded checkpoint dict."""

    def save_checkpoint(self, filename: str) -> None:
        with compat.checkpoint_saved_with(self._extra_checkpoint_state()):
            super().save_checkpoint(filename)  # type: ignore[misc]

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        with compat.checkpoint_loaded() as read:
            super().load_checkpoint(filename_or_checkpoint)  # type: ignore[misc]
        self._restore_extra_checkpoint_state(read.get("checkpoint", filename_or_checkpoint))


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
      folder (nnU-Net writes ``plans.json`` etc. on every rank), and only rank 0 creates the dataset's
      ``splits_final.json`` (the other ranks wait for it);
    - the method's UPPER_CASE hyperparameters printed to the training log when training starts;
    - declared label support: a trainer that sets ``supports_regions``, ``supports_ignore_label``
      or ``supports_cascade`` to False refuses such datasets or configurations in its constructor
      (``nnzoo train`` checks the same with :func:`label_support_problem` before building it).

    Attributes:
        supports_regions: False: refuse region-based (sigmoid) plans.
        supports_ignore_label: False: refuse datasets with an ignore label.
        supports_cascade: False: refuse cascaded configurations (``3d_cascade_fullres``).
        unsupported_labels_reason: why, appended to the error message.
    """

    supports_regions: bool = True
    supports_ignore_label: bool = True
    supports_cascade: bool = True
    unsupported_labels_reason: str = ""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
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

    def do_split(self):
        compat.wait_for_splits(self)  # under DDP only rank 0 creates the split file; the others read it whole
        return super().do_split()

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


def nnzoo_trainer_class(trainer_class: type, hyperparameters: dict | None = None) -> type:
    """The class ``nnzoo train`` runs for ``trainer_class``.

    nnzoo's own trainers (subclasses of :class:`NnzooTrainer`) run as they are written: the class in
    their file. Two cases need a class made here, of the same name (nnU-Net derives model folders and
    the checkpoint's ``trainer_name`` from the class name, so models stay interchangeable with stock
    ``nnUNetv2_train`` ones):

    - a trainer that is not nnzoo's (nnU-Net's own, or a user's variant) gets
      :class:`NnzooTrainerMixin` and the label budget
      (:class:`~nnzoo.trainers.label_budget.LabelBudgetMixin`) in front of it;
    - ``hyperparameters`` (``--hparam``, see :func:`parse_hyperparameters`) replace UPPER_CASE class
      attributes (they are read by class methods such as ``build_network_architecture`` too).

    The model folder (e.g. a label budget's ``..._labeled4``) is not part of the class: see
    :func:`~nnzoo.trainers.nnunet_compat.build_trainer`.
    """
    missing = tuple(m for m in (NnzooTrainerMixin, LabelBudgetMixin) if not issubclass(trainer_class, m))
    if not missing and not hyperparameters:
        return trainer_class
    attrs = {"__doc__": trainer_class.__doc__, "__module__": trainer_class.__module__, **(hyperparameters or {})}
    return type(trainer_class.__name__, (*missing, trainer_class), attrs)


class NnzooTrainer(LabelBudgetMixin, NnzooTrainerMixin, nnUNetTrainer):
    """nnU-Net's trainer with :class:`NnzooTrainerMixin` and the label budget; base of every nnzoo method trainer.

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

    def nnunet_step_with_parts(self, data: torch.Tensor, target, forward: Callable, loss: Callable,
                               total_key: str = "loss") -> dict:
        """:meth:`nnunet_step` with a loss made of named parts that are logged too.

        Args:
            data: the step's network input.
            target: nnU-Net's target (or whatever ``loss`` expects).
            forward: ``(network, data) -> outputs``.
            loss: ``(outputs, target) -> (total, parts)`` with ``parts`` a dict of scalar tensors;
                ``total`` is optimised.
            total_key: the name under which the optimised total is returned.

        Returns:
            ``{total_key: total, **parts}``, every value detached as a numpy scalar (a part may
            also be called ``"loss"`` when ``total_key`` is another name).
        """
        parts: dict = {}

        def total(outputs, t):
            value, step_parts = loss(outputs, t)
            parts.update(step_parts)
            return value

        out = self.nnunet_step(data, target, forward, total)
        return {total_key: out["loss"], **{k: v.detach().cpu().numpy() for k, v in parts.items()}}

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-head probabilities of logits ``(b, c, ...)`` in float32: softmax over the classes, or a
        sigmoid per region for region-based plans."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)


class PlanNetworkMixin:
    """``build_network_architecture`` for method networks built around the plan's encoder.

    Subclasses set ``network_class``, a network taking ``(encoder, num_classes,
    n_conv_per_stage_decoder, deep_supervision, nonlin_first, **extra_network_kwargs(ndim),
    **plans_network_kwargs(plans))``; it is
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
    def plans_network_kwargs(cls, plans: dict) -> dict:
        """Keyword arguments for ``network_class`` read from the plans (e.g. entries a trainer wrote into the
        model folder's ``plans.json``); default none."""
        return {}

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The method's network from the configuration's architecture.

        Args:
            plans_manager: nnU-Net plans manager (its plans go to :meth:`plans_network_kwargs`).
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
                                 arch_kwargs=configuration_manager.network_arch_init_kwargs,
                                 kw_requires_import=configuration_manager.network_arch_init_kwargs_req_import,
                                 input_channels=num_input_channels, num_classes=num_output_channels,
                                 deep_supervision=enable_deep_supervision,
                                 encoder_kwargs=cls.encoder_kwargs(ndim), **cls.extra_network_kwargs(ndim),
                                 **cls.plans_network_kwargs(plans_manager.plans))
