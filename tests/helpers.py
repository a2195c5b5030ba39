"""Shared helpers for nnzoo's tests: tiny real nnU-Net plans and trainers built on them."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
TOY_MEDIAN = (128, 128, 128)  # the planner tests' toy dataset (tests/plans/conftest.py)
TOY_N_CASES = 4
#: stand-in labeled cases and their domains for trainers whose registry entry says ``needs_domains``:
#: ``make_trainer`` writes them as the dataset's ``domains.json`` (and, with ``initialize``, as preprocessed
#: cases); :func:`batch_keys` names them in a batch's ``keys`` as nnU-Net's data loader does
STANDIN_DOMAINS = {"marker": "site_a", "marker_b": "site_b"}


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
    """Instantiate a trainer on CPU (nnUNet_* folders under ``tmp_path``, set by conftest; nothing is trained).

    With ``initialize``, network, optimizer and loss are built too (``trainer.initialize()``),
    without preprocessed data: nnU-Net infers the dataset format from the files in the
    preprocessed folder, so an empty marker file stands in for them.
    """
    assert os.environ["nnUNet_preprocessed"] == str(tmp_path / "nnUNet_preprocessed"), "conftest sets the folders"
    from nnzoo.trainers.nnunet_compat import build_trainer

    trainer = build_trainer(trainer_class, plans=plans if plans is not None else tiny_plans(configuration),
                            configuration=configuration, fold=fold,
                            dataset_json=dataset_json if dataset_json is not None else tiny_dataset_json(),
                            device=torch.device("cpu"))
    domains = needs_domains(trainer_class)
    if domains:
        base = Path(trainer.preprocessed_dataset_folder_base)
        base.mkdir(parents=True, exist_ok=True)
        (base / "domains.json").write_text(json.dumps(STANDIN_DOMAINS))
    if initialize:
        folder = Path(trainer.preprocessed_dataset_folder)
        folder.mkdir(parents=True, exist_ok=True)
        for case in STANDIN_DOMAINS if domains else ["marker"]:
            (folder / f"{case}.b2nd").touch()
        trainer.initialize()
    return trainer


def needs_domains(trainer_class: type) -> bool:
    """Whether the registry entry of ``trainer_class`` says it reads each case's domain."""
    from nnzoo.trainers.registry import find_trainer_info

    info = find_trainer_info(trainer_class.__name__)
    return bool(info is not None and info.needs_domains)


def batch_keys(n: int) -> list[str]:
    """Case identifiers of a batch of ``n`` patches from the stand-in cases of ``make_trainer``
    (alternating, so any two consecutive patches come from two domains)."""
    cases = list(STANDIN_DOMAINS)
    return [cases[i % len(cases)] for i in range(n)]


def write_two_domains(raw_dataset: Path) -> dict[str, str]:
    """``domains.json`` in a raw dataset: its labeled cases (``labelsTr``) and unlabeled ones
    (``imagesUnlabeled``) alternately in domains ``site_a`` and ``site_b`` (sorted case order).

    Returns:
        The mapping written.
    """
    ending = json.loads((raw_dataset / "dataset.json").read_text())["file_ending"]
    labeled = sorted(f.name[:-len(ending)] for f in (raw_dataset / "labelsTr").glob(f"*{ending}"))
    unlabeled = sorted({f.name[:-len(ending) - 5] for f in (raw_dataset / "imagesUnlabeled").glob(f"*{ending}")})
    domains = {c: ("site_a", "site_b")[i % 2] for cases in (labeled, unlabeled) for i, c in enumerate(cases)}
    (raw_dataset / "domains.json").write_text(json.dumps(domains, indent=1))
    return domains


@contextmanager
def nnunet_folders(base: Path):
    """Point nnU-Net's three folders at ``base/<name>`` for the duration of the block."""
    with pytest.MonkeyPatch.context() as mp:
        for k in FOLDERS:
            mp.setenv(k, str(base / k))
            (base / k).mkdir(parents=True, exist_ok=True)
        yield base


@contextmanager
def drops_new_models(results: Path):
    """Remove the model and fold folders the block adds under ``results`` (``nnUNet_results``) when it ends.

    Tests on a shared (session or module) dataset train into its results folder; without this every test's
    checkpoints stay on disk until the session ends (gigabytes for the full suite).
    """
    def folders() -> set[Path]:
        return set(results.glob("*/*")) | set(results.glob("*/*/fold_*"))

    before = folders()
    try:
        yield
    finally:
        for f in sorted(folders() - before, key=lambda q: len(q.parts)):
            shutil.rmtree(f, ignore_errors=True)


def prepare_dataset(base: Path, dim: int, dataset_id: int | None = None) -> dict:
    """A planned and preprocessed toy dataset through the CLI (6 labeled cases, 2 unlabeled images; their
    domains in ``domains.json``, two domains, see :func:`write_two_domains`).

    3D: 16x20x24 NIfTI, spacing (2, 1, 1), id 501; 2D: 32x32 PNG, id 502 (or ``dataset_id``).
    """
    from nnzoo.pipeline.cli import main
    from nnzoo.pipeline.synthetic import write_synthetic_folders

    if dim == 3:
        src = write_synthetic_folders(base / "src", num_cases=6, shape=(16, 20, 24), num_classes=3,
                                      num_unlabeled=2, spacing=(2.0, 1.0, 1.0), seed=3)
        did, cfg = dataset_id or 501, "3d_fullres"
    else:
        src = write_synthetic_folders(base / "src", num_cases=6, shape=(32, 32), num_classes=3,
                                      num_unlabeled=2, file_ending=".png", seed=4)
        did, cfg = dataset_id or 502, "2d"
    with nnunet_folders(base / "work"):
        args = ["dataset", "create", "--images", str(src["images"]), "--labels", str(src["labels"]),
                "--name", f"Toy{dim}d", "--id", str(did), "--channel", "img", "--unlabeled", str(src["unlabeled"])]
        assert main(args) == 0
        write_two_domains(dataset_dir("nnUNet_raw", did))  # for trainers that need domains; others ignore it
        assert main(["plan_and_preprocess", "-d", str(did), "-c", cfg, "-np", "2"]) == 0
    return {"base": base / "work", "src": src, "id": did, "configuration": cfg}


def dataset_dir(variable: str, dataset_id: int) -> Path:
    """``$<variable>/Dataset<id>_<name>`` (the folder of one dataset, whatever else other tests put there)."""
    (folder,) = Path(os.environ[variable]).glob(f"Dataset{int(dataset_id):03d}_*")
    return folder


def deep_supervision_targets(trainer, label: torch.Tensor) -> list[torch.Tensor]:
    """``label`` (``N, 1, *patch``) at every deep-supervision scale of ``trainer``, as nnU-Net's loader
    downsamples targets (nearest)."""
    from nnzoo.trainers.nnunet_compat import deep_supervision_scales

    patch = label.shape[2:]
    return [torch.nn.functional.interpolate(label, size=[round(p * s) for p, s in zip(patch, sc)], mode="nearest-exact")
            for sc in deep_supervision_scales(trainer)]
