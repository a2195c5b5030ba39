"""pytest configuration: helpers importable as ``helpers``; small prepared nnU-Net datasets shared by tests."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from helpers import FOLDERS, drops_new_models, nnunet_folders, prepare_dataset  # noqa: E402

#: fixtures that plan and preprocess a dataset through nnU-Net (tens of seconds each): their tests are ``slow``
DATASET_FIXTURES = {"prepared_2d", "prepared_3d", "in_prepared", "dataset_root"}


def pytest_collection_modifyitems(config, items):
    """Mark every test on a planned and preprocessed dataset ``slow`` (``make test-fast`` deselects them)."""
    for item in items:
        if DATASET_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _worker_counts():
    """Augmentation in the test process (nnUNet_n_proc_DA=0) and two export/preprocessing workers."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_n_proc_DA", os.environ.get("nnUNet_n_proc_DA", "0"))
        mp.setenv("nnUNet_def_n_proc", os.environ.get("nnUNet_def_n_proc", "2"))
        yield


@pytest.fixture(autouse=True)
def _own_nnunet_folders(monkeypatch, tmp_path):
    """Every test starts with nnU-Net's three folders in its own tmp_path (restored afterwards)."""
    for k in FOLDERS:
        monkeypatch.setenv(k, str(tmp_path / k))


@pytest.fixture
def workdir(tmp_path):
    """Fresh, empty nnU-Net folders for one test."""
    with nnunet_folders(tmp_path / "work") as base:
        yield base


@pytest.fixture(scope="session")
def prepared_3d(tmp_path_factory):
    """A planned and preprocessed 3D toy dataset (6 cases 16x20x24, 2 unlabeled), id 501."""
    return prepare_dataset(tmp_path_factory.mktemp("prep3d"), 3)


@pytest.fixture(scope="session")
def prepared_2d(tmp_path_factory):
    """A planned and preprocessed 2D toy dataset (6 PNG cases 32x32, 2 unlabeled), id 502."""
    return prepare_dataset(tmp_path_factory.mktemp("prep2d"), 2)


@pytest.fixture
def in_prepared(request):
    """Use with indirect parametrization: activates a prepared dataset's folders for the test (the models it
    trains there are removed after it)."""
    prep = request.getfixturevalue(request.param)
    with nnunet_folders(prep["base"]), drops_new_models(prep["base"] / "nnUNet_results"):
        yield prep
