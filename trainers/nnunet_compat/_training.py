"""nnunetv2 internals of trainer construction, the training run, checkpoints and train steps (see :mod:`nnzoo.trainers.nnunet_compat`)."""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ._ddp import nnunet_trainer_module, validation_on_rank_zero


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
