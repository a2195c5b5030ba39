"""What ``nnzoo train`` is asked to do (:class:`TrainOptions`, one field per flag) and a checked run
(:class:`TrainRun`: the resolved options plus nnU-Net's folders); :mod:`nnzoo.pipeline.train` resolves and runs
them, :mod:`nnzoo.pipeline.train_checks` checks them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import NnzooError
from .experiment import model_folder

__all__ = ["TrainOptions", "TrainRun", "parse_labeled"]


def parse_labeled(value: str | int | float | None) -> int | float | None:
    """``--labeled`` as a case count (``"4"``) or a fraction (``"0.1"``).

    Raises:
        NnzooError: not a positive integer or a fraction in (0, 1).
    """
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise NnzooError(f"--labeled must be a number of cases or a fraction, got {value!r}") from None
    if f >= 1 and f == int(f):
        return int(f)
    if 0 < f < 1:
        return f
    raise NnzooError(f"--labeled must be a positive integer or a fraction between 0 and 1, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """What ``nnzoo train`` is asked to do: one field per flag, built once (``from_namespace`` for the CLI).

    :func:`resolve_run` checks it all, in one place, before anything is built or written.

    Attributes:
        dataset: dataset id or name.
        configuration: e.g. ``3d_fullres`` or ``2d``.
        fold: fold index or ``"all"``.
        trainer: registered nnzoo trainer or any nnU-Net trainer name (``-tr``).
        plans: plans name (``-p``; default: the trainer's planner's plans, else ``nnUNetPlans``).
        device: ``auto``, ``cpu``, ``cuda`` (``-device``).
        num_gpus: processes on this node (``-num_gpus``; one GPU each on CUDA, Gloo on the CPU).
        resume: continue the fold from its latest checkpoint (``--continue``; schedule, seed and
            hyperparameters from ``nnzoo_run.json``).
        epochs: number of epochs (default: the trainer's, 1000 for nnU-Net).
        iters: training iterations per epoch (default: the trainer's, 250).
        val_iters: validation iterations per epoch (default: the trainer's, or iters/5 with ``iters``).
        save_every: write ``checkpoint_latest.pth`` every this many epochs (default: the trainer's, 50).
        labeled: keep only this many (or this fraction of) labeled training cases; the rest of the
            fold's training cases count as unlabeled (their labels are never read).
        augment: an input augmentation applied on top of the trainer's own (``--augment``, one of
            :data:`nnzoo.trainers.augment.AUGMENTATIONS`, e.g. ``gin``); part of the model folder's name
            (``..._gin``), so ``--continue``/``--val`` and ``predict`` are given it again.
        seed: seed Python's, numpy's and torch's generators before the trainer is built
            (initialisation, patch sampling and, with ``nnUNet_n_proc_DA=0``, augmentation) and the
            choice of labeled cases.
        overwrite: start a new training over a fold folder that already holds checkpoints.
        validate: run nnU-Net's final validation (``--no-val`` turns it off).
        npz: also save the validation softmax as ``.npz`` (nnU-Net's ``--npz``; needed by find-best).
        validation_only: only run the final validation of a finished fold (nnU-Net's ``--val``).
        val_best: validate with ``checkpoint_best.pth`` instead of the final one (``--val_best``).
        pretrained_weights: nnU-Net checkpoint to initialise the network from (``-pretrained_weights``).
        disable_checkpointing: write no checkpoints (``--disable_checkpointing``).
        hparams: ``{NAME: VALUE}`` overrides of the trainer's UPPER_CASE hyperparameters (``--hparam``),
            logged and recorded in ``nnzoo_run.json``.
    """

    dataset: str | int
    configuration: str
    fold: str | int
    trainer: str = "nnUNetTrainer"
    plans: str | None = None
    device: str = "auto"
    num_gpus: int = 1
    resume: bool = False
    epochs: int | None = None
    iters: int | None = None
    val_iters: int | None = None
    save_every: int | None = None
    labeled: str | int | float | None = None
    augment: str | None = None
    seed: int | None = None
    overwrite: bool = False
    validate: bool = True
    npz: bool = False
    validation_only: bool = False
    val_best: bool = False
    pretrained_weights: str | None = None
    disable_checkpointing: bool = False
    hparams: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_namespace(cls, args) -> TrainOptions:
        """The options of an ``argparse`` namespace whose destinations are the field names."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


@dataclass(frozen=True)
class TrainRun:
    """A checked run: its options resolved (dataset name, plans, fold, label budget, the schedule, seed and
    hyperparameters of the run being continued) plus nnU-Net's folders; what every training process gets."""

    options: TrainOptions
    folders: dict

    @property
    def dataset_name(self) -> str:
        return str(self.options.dataset)

    @property
    def fold_dir(self) -> Path:
        o = self.options
        return (model_folder(self.dataset_name, o.trainer, o.plans, o.configuration, o.labeled, augment=o.augment)
                / f"fold_{o.fold}")

    @property
    def model_folder_name(self) -> str | None:
        """The model folder's name where it is not nnU-Net's ``<trainer>__<plans>__<configuration>`` (a label
        budget or an augmentation), else None."""
        o = self.options
        name = self.fold_dir.parent.name
        return None if name == f"{o.trainer}__{o.plans}__{o.configuration}" else name

    def record(self) -> dict:
        """``nnzoo_run.json``: the resolved options (schedule under nnU-Net's attribute names)."""
        o = self.options
        return {"dataset_name": self.dataset_name, "configuration": o.configuration, "fold": o.fold,
                "trainer": o.trainer, "plans": o.plans, "device": o.device, "resume": o.resume,
                "num_epochs": o.epochs, "num_iterations_per_epoch": o.iters, "num_val_iterations_per_epoch": o.val_iters,
                "save_every": o.save_every, "labeled": o.labeled, "augment": o.augment, "seed": o.seed,
                "validate": o.validate,
                "validation_only": o.validation_only, "npz": o.npz, "val_best": o.val_best,
                "pretrained_weights": o.pretrained_weights, "disable_checkpointing": o.disable_checkpointing,
                "hparams": dict(o.hparams) or None}
