"""Locating an experiment's pieces: plans, configuration, preprocessed data, folds and model folders.

Each lookup raises :class:`NnzooError` with what exists instead, so ``train`` and ``predict``
fail early with an actionable message.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

from .errors import NnzooError

__all__ = ["data_identifier", "default_plans_name", "load_plans", "check_configuration", "parse_fold", "model_folder", "trainer_for"]


def trainer_for(name: str, configuration: str | None = None) -> type:
    """Trainer class for a name (registry first, then nnU-Net's own), checked against the configuration.

    Raises:
        NnzooError: unknown name (with suggestions), or a 2D/3D mismatch with the trainer.
    """
    from nnzoo.trainers.registry import _REGISTRY, UnknownTrainerError, resolve_trainer_class

    try:
        cls = resolve_trainer_class(name)
    except UnknownTrainerError as e:
        raise NnzooError(str(e)) from None
    info = _REGISTRY.get(name)
    if info is not None and configuration is not None:
        dim = "2d" if configuration.startswith("2d") else "3d"
        if dim not in info.dims:
            raise NnzooError(f"trainer {name} supports {'/'.join(info.dims)} only, not configuration {configuration!r}")
    return cls


def default_plans_name(trainer: str) -> str:
    """Plans the trainer's registered planner writes (``nnUNetPlans`` when it has none)."""
    from nnzoo.plans.registry import get_planner_class
    from nnzoo.trainers.registry import _REGISTRY, _discover

    _discover()
    info = _REGISTRY.get(trainer)
    if info is None or not info.planner:
        return "nnUNetPlans"
    param = inspect.signature(get_planner_class(info.planner).__init__).parameters.get("plans_name")
    return param.default if param is not None and isinstance(param.default, str) else "nnUNetPlans"


def load_plans(dataset_name: str, plans: str) -> tuple[dict, Path]:
    """Plans dict and the preprocessed dataset folder.

    Raises:
        NnzooError: the plans file does not exist (lists the plans that do).
    """
    base = Path(os.environ["nnUNet_preprocessed"]) / dataset_name
    f = base / f"{plans}.json"
    if not f.is_file():
        have = sorted(p.stem for p in base.glob("*.json") if p.stem not in ("dataset", "dataset_fingerprint",
                                                                            "splits_final"))
        raise NnzooError(f"{f}: plans not found; run `nnzoo plan_and_preprocess -d {dataset_name[7:10].lstrip('0')}`"
                         f" with the matching planner first" + (f" (plans present: {', '.join(have)})" if have else ""))
    return json.loads(f.read_text()), base


def data_identifier(plans: dict, configuration: str) -> str:
    """Name of the preprocessed data folder of a configuration (following ``inherits_from``)."""
    cfgs = plans["configurations"]
    cfg = cfgs[configuration]
    while "data_identifier" not in cfg and "inherits_from" in cfg:
        cfg = {**cfgs[cfg["inherits_from"]], **{k: v for k, v in cfg.items() if k != "inherits_from"}}
    return cfg["data_identifier"]


def check_configuration(plans: dict, configuration: str, preprocessed_base: Path | None = None) -> None:
    """Configuration exists in the plans (and, with ``preprocessed_base``, its data was preprocessed).

    Raises:
        NnzooError: unknown configuration or missing preprocessed data.
    """
    cfgs = plans["configurations"]
    if configuration not in cfgs:
        raise NnzooError(f"unknown configuration {configuration!r} for plans {plans['plans_name']}; "
                         f"available: {', '.join(cfgs)}")
    if preprocessed_base is not None:
        folder = preprocessed_base / data_identifier(plans, configuration)
        if not folder.is_dir() or not any(folder.iterdir()):
            raise NnzooError(f"{folder}: configuration {configuration} is not preprocessed; run "
                             f"`nnzoo plan_and_preprocess -d {preprocessed_base.name[7:10].lstrip('0')} -c {configuration}`")


def parse_fold(fold: str | int, preprocessed_base: Path | None = None) -> int | str:
    """``'all'`` or a fold index that the dataset's splits hold.

    Raises:
        NnzooError: not an integer/'all', negative, or beyond the splits file's folds.
    """
    if str(fold) == "all":
        return "all"
    try:
        f = int(fold)
    except ValueError:
        raise NnzooError(f"fold must be an integer or 'all', got {fold!r}") from None
    n = 5
    if preprocessed_base is not None and (preprocessed_base / "splits_final.json").is_file():
        n = len(json.loads((preprocessed_base / "splits_final.json").read_text()))
    if not 0 <= f < n:
        raise NnzooError(f"fold {f} does not exist: the splits have {n} folds (0-{n - 1}), or use 'all'")
    return f


def model_folder(dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    """``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``."""
    return Path(os.environ["nnUNet_results"]) / dataset_name / f"{trainer}__{plans}__{configuration}"
