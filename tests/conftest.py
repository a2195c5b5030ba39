"""pytest configuration: helpers importable as ``helpers``; small prepared nnU-Net datasets shared by tests."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ.setdefault("nnUNet_def_n_proc", "2")

FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@contextmanager
def nnunet_folders(base: Path):
    """Point nnU-Net's three folders at ``base/<name>`` for the duration of the block."""
    old = {k: os.environ.get(k) for k in FOLDERS}
    for k in FOLDERS:
        os.environ[k] = str(base / k)
        (base / k).mkdir(parents=True, exist_ok=True)
    try:
        yield base
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def workdir(tmp_path):
    """Fresh, empty nnU-Net folders for one test."""
    with nnunet_folders(tmp_path / "work") as base:
        yield base


def _prepare(base: Path, dim: int) -> dict:
    from nnzoo.pipeline.cli import main
    from nnzoo.pipeline.synthetic import write_synthetic_folders

    if dim == 3:
        src = write_synthetic_folders(base / "src", num_cases=6, shape=(16, 20, 24), num_classes=3,
                                      num_unlabeled=2, spacing=(2.0, 1.0, 1.0), seed=3)
        did, cfg = 501, "3d_fullres"
    else:
        src = write_synthetic_folders(base / "src", num_cases=6, shape=(32, 32), num_classes=3,
                                      num_unlabeled=2, file_ending=".png", seed=4)
        did, cfg = 502, "2d"
    with nnunet_folders(base / "work"):
        args = ["dataset", "create", "--images", str(src["images"]), "--labels", str(src["labels"]),
                "--name", f"Toy{dim}d", "--id", str(did), "--channel", "img"]
        args += ["--unlabeled", str(src["unlabeled"])]
        assert main(args) == 0
        assert main(["plan_and_preprocess", "-d", str(did), "-c", cfg, "-np", "2"]) == 0
    return {"base": base / "work", "src": src, "id": did, "configuration": cfg}


@pytest.fixture(scope="session")
def prepared_3d(tmp_path_factory):
    """A planned and preprocessed 3D toy dataset (6 cases 16x20x24, 2 unlabeled), id 501."""
    return _prepare(tmp_path_factory.mktemp("prep3d"), 3)


@pytest.fixture(scope="session")
def prepared_2d(tmp_path_factory):
    """A planned and preprocessed 2D toy dataset (6 PNG cases 32x32, 2 unlabeled), id 502."""
    return _prepare(tmp_path_factory.mktemp("prep2d"), 2)


@pytest.fixture
def in_prepared(request):
    """Use with indirect parametrization: activates a prepared dataset's folders for the test."""
    prep = request.getfixturevalue(request.param)
    with nnunet_folders(prep["base"]):
        yield prep
