"""Shared helpers for nnzoo's tests: tiny real nnU-Net plans and trainers built on them."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
TOY_MEDIAN = (128, 128, 128)  # the planner tests' toy dataset (tests/plans/conftest.py)
TOY_N_CASES = 4


def tiny_plans(configuration: str = "3d_fullres", patch_size: tuple[int, ...] | None = None) -> dict:
    """Plans written by nnU-Net's ExperimentPlanner for a 24x28x32 toy dataset (3 stages).

    Args:
        configuration: "3d_fullres" or "2d" (the plans hold both).
        patch_size: optional override of that configuration's patch size.
    """
    plans = json.loads((DATA / "tiny_plans.json").read_text())
    if patch_size is not None:
        plans["configurations"][configuration]["patch_size"] = list(patch_size)
    return plans


def tiny_dataset_json(labels: dict | None = None, **extra) -> dict:
    """dataset.json of the toy dataset (background, a, b), optionally with other labels/keys."""
    dj = json.loads((DATA / "tiny_dataset.json").read_text())
    if labels is not None:
        dj["labels"] = labels
    dj.update(extra)
    return dj


def make_trainer(trainer_class: type, tmp_path: Path, configuration: str = "3d_fullres",
                 plans: dict | None = None, dataset_json: dict | None = None, fold: int = 0,
                 initialize: bool = False):
    """Instantiate a trainer on CPU with nnUNet_* folders under ``tmp_path`` (nothing is trained).

    With ``initialize``, network, optimizer and loss are built too (``trainer.initialize()``),
    without preprocessed data: nnU-Net infers the dataset format from the files in the
    preprocessed folder, so an empty marker file stands in for them.
    """
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = str(tmp_path / k)
    plans = copy.deepcopy(plans if plans is not None else tiny_plans(configuration))
    plans["continue_training"] = False
    trainer = trainer_class(plans=plans, configuration=configuration, fold=fold,
                            dataset_json=dataset_json if dataset_json is not None else tiny_dataset_json(),
                            device=torch.device("cpu"))
    if initialize:
        folder = Path(trainer.preprocessed_dataset_folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "marker.b2nd").touch()
        trainer.initialize()
    return trainer
