"""``source-stats``: record the source statistics test-time adaptation needs (``nnzoo predict --adapt vptta``).

For every normalisation layer of a fold's trained network, the per-channel mean and variance of the layer's
input over random patches of the fold's preprocessed training cases (no augmentation), written beside the
checkpoint as ``fold_X/source_stats.json`` (:mod:`nnzoo.trainers.adapt.source_stats`). ``nnzoo train`` records
them at the end of training; this command computes them for any model that lacks them (stock ``nnUNetv2_train``
models, models trained before), from the dataset's preprocessed training cases. Nothing else in the model
folder changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from .adaptation import source_stats_file
from .errors import NnzooError

__all__ = ["source_stats", "SourceStatsOptions", "record_fold_statistics", "source_stats_file", "record_after_training", "PATCHES_PER_CASE",
           "MAX_CASES"]

#: random patches per training case
PATCHES_PER_CASE = 2
#: training cases used at most (the first of the sorted fold's training cases, evenly spread)
MAX_CASES = 50


def _training_cases(plans: dict, configuration: str, fold: int | str) -> tuple[Path, list[str]]:
    from .experiment import data_identifier, fold_training_cases

    base = Path(os.environ["nnUNet_preprocessed"]) / plans["dataset_name"]
    data = base / data_identifier(plans, configuration)
    if not data.is_dir() or not any(data.glob("*.b2nd")):
        raise NnzooError(f"{data}: the preprocessed training cases of {plans['dataset_name']} ({configuration}) are "
                         "not there; source statistics are computed from them: run nnzoo plan_and_preprocess for "
                         "this dataset and configuration first")
    cases = fold_training_cases(base, data, fold)
    if len(cases) > MAX_CASES:
        step = len(cases) / MAX_CASES
        cases = [cases[int(i * step)] for i in range(MAX_CASES)]
    return data, cases


def record_fold_statistics(network, plans: dict, configuration: str, fold: int | str, out: Path, *, device,
                           seed: int = 0, **provenance) -> Path:
    """Record and write one fold's source statistics (``network`` holds the fold's trained weights).

    Raises:
        NnzooError: the dataset's preprocessed training cases are missing.
    """
    import numpy as np

    from nnzoo.trainers import nnunet_compat as compat
    from nnzoo.trainers.adapt import random_patches, record_source_statistics, save_source_statistics

    data, cases = _training_cases(plans, configuration, fold)
    patch = tuple(plans["configurations"][configuration]["patch_size"])
    arrays = (np.asarray(compat.load_preprocessed_image(data, c)[:]) for c in cases)
    patches = random_patches(arrays, patch, per_case=PATCHES_PER_CASE, generator=np.random.default_rng(seed))
    stats = record_source_statistics(network.to(device), patches, device=device)
    return save_source_statistics(stats, out, cases=len(cases), patches_per_case=PATCHES_PER_CASE,
                                  configuration=configuration, fold=str(fold), **provenance)


@dataclass(frozen=True, kw_only=True)
class SourceStatsOptions:
    """What ``nnzoo source-stats`` is asked to do (``from_namespace`` for the CLI).

    Attributes:
        model_dir: a model folder (``-m``).
        dataset, configuration, trainer, plans: the model under ``nnUNet_results`` otherwise (``-d -c -tr -p``).
        folds: the folds (``-f``; default: every fold with the checkpoint).
        checkpoint: the checkpoint whose weights are used (``-chk``).
        device: ``auto``, ``cpu``, ``cuda``.
        keep: skip folds that already have statistics (``--keep``; default: record them again).
    """

    model_dir: str | Path | None = None
    dataset: str | int | None = None
    configuration: str | None = None
    trainer: str = "nnUNetTrainer"
    plans: str | None = None
    folds: list[str] | None = None
    checkpoint: str = "checkpoint_final.pth"
    device: str = "auto"
    keep: bool = False

    @classmethod
    def from_namespace(cls, args) -> SourceStatsOptions:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def source_stats(options: SourceStatsOptions) -> list[Path]:
    """Record the source statistics of a model's folds (``-m`` or ``-d -c -tr -p``).

    Returns:
        The files written (or kept).

    Raises:
        NnzooError: both or neither of ``-m``/``-d``, unknown model or fold, missing preprocessed training cases.
    """
    import torch

    from .env import resolve_device, setup_folders
    from .trained_model import load_model, resolve_model

    o = options
    if o.model_dir is not None and o.dataset is not None:
        raise NnzooError(f"give -m {o.model_dir} or -d {o.dataset}, not both (-m names the model folder itself)")
    setup_folders(quiet=True)
    model = resolve_model(model_dir=o.model_dir, dataset=o.dataset, configuration=o.configuration, trainer=o.trainer,
                          plans=o.plans, folds=o.folds, checkpoint=o.checkpoint)
    network, *_rest = load_model(model)
    parameters = _rest[2]
    dev = resolve_device(o.device)
    out = []
    for f, weights in zip(model.folds, parameters):
        target = source_stats_file(model.folder, f)
        if target.is_file() and o.keep:
            out.append(target)
            continue
        network.load_state_dict(weights)
        with torch.no_grad():
            record_fold_statistics(network, model.plans, model.configuration, f, target, device=dev,
                                   checkpoint=o.checkpoint)
        print(f"nnzoo: source statistics of fold {f} -> {target}")
        out.append(target)
    return out


def record_after_training(fold_dir: Path, options) -> Path | None:
    """``nnzoo train``'s last step: the fold's source statistics from its final checkpoint (see :func:`source_stats`).

    Skipped for ``--val`` (validation only) and when training wrote no final checkpoint; a failure is reported
    as a warning naming the command that records them later, never a failed training.
    """
    fold_dir = Path(fold_dir)
    if getattr(options, "validation_only", False) or not (fold_dir / "checkpoint_final.pth").is_file():
        return None
    fold = fold_dir.name[len("fold_"):]
    try:
        return source_stats(SourceStatsOptions(model_dir=fold_dir.parent, folds=[fold],
                                               device=getattr(options, "device", "auto")))[0]
    except Exception as e:  # noqa: BLE001 - the training itself succeeded
        print(f"nnzoo: warning: source statistics not recorded ({' '.join(str(e).split())[:300]}); record them with "
              f"`nnzoo source-stats -m {fold_dir.parent} -f {fold}` before `nnzoo predict --adapt vptta`")
        return None
