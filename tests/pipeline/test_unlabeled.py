"""Tests of preprocessing unlabeled images (imagesUnlabeled) with a dataset's plans."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from helpers import tiny_dataset_json, tiny_plans

from nnzoo.pipeline.synthetic import write_synthetic_folders
from nnzoo.pipeline.unlabeled import find_unlabeled_cases, preprocess_unlabeled, unlabeled_folder

DATASET = "Dataset901_Tiny3d"


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """Raw imagesUnlabeled (3 cases) + nnU-Net plans and dataset.json in nnUNet_preprocessed."""
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, str(tmp_path / k))
    src = write_synthetic_folders(tmp_path / "src", num_cases=0, shape=(12, 14, 16), num_unlabeled=3)
    raw = tmp_path / "nnUNet_raw" / DATASET / "imagesUnlabeled"
    raw.mkdir(parents=True)
    for p in sorted(src["unlabeled"].iterdir()):
        os.replace(p, raw / f"{p.name[:-len('.nii.gz')]}_0000.nii.gz")
    pp = tmp_path / "nnUNet_preprocessed" / DATASET
    pp.mkdir(parents=True)
    (pp / "nnUNetPlans.json").write_text(json.dumps(tiny_plans()))
    (pp / "dataset.json").write_text(json.dumps(tiny_dataset_json()))
    labeled = pp / "nnUNetPlans_3d_fullres"
    labeled.mkdir()
    (labeled / "case000.b2nd").write_bytes(b"x")
    return {"raw": raw, "pp": pp, "labeled": labeled}


def _load(folder, case):
    import blosc2

    data = blosc2.open(urlpath=str(folder / f"{case}.b2nd"), mode="r")[:]
    with open(folder / f"{case}.pkl", "rb") as f:
        return data, pickle.load(f)


def test_preprocesses_into_own_folder_like_nnunet(dataset):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    written = preprocess_unlabeled(DATASET, "nnUNetPlans", configurations=["3d_fullres", "2d", "3d_lowres"], num_processes=1)
    assert written == {"3d_fullres": 3, "2d": 3, "3d_lowres": 0}  # 3d_lowres is not in the plans
    out = dataset["pp"] / "nnUNetPlans_3d_fullres_unlabeled"
    assert str(out) == unlabeled_folder(str(dataset["pp"]), "nnUNetPlans_3d_fullres")
    assert sorted(os.listdir(out)) == sorted(f"unl{i:03d}{e}" for i in range(3) for e in (".b2nd", "_seg.b2nd", ".pkl"))
    assert sorted(os.listdir(dataset["labeled"])) == ["case000.b2nd"]  # labeled folder untouched
    assert (dataset["pp"] / "nnUNetPlans_2d_unlabeled" / "unl000.b2nd").is_file()
    data, props = _load(out, "unl001")
    assert "class_locations" not in props  # nnU-Net's own output for a case without a label file
    # identical to nnU-Net's own preprocessing of the same image
    pm = PlansManager(tiny_plans())
    ref, _, _ = DefaultPreprocessor(verbose=False).run_case(
        [str(dataset["raw"] / "unl001_0000.nii.gz")], None, pm, pm.get_configuration("3d_fullres"), tiny_dataset_json())
    np.testing.assert_allclose(data, ref, rtol=1e-6, atol=1e-6)


def test_skips_done_cases_and_redoes_incomplete_ones(dataset):
    preprocess_unlabeled(DATASET, "nnUNetPlans", configurations=["3d_fullres"], num_processes=1)
    assert preprocess_unlabeled(DATASET, "nnUNetPlans", configurations=["3d_fullres"], num_processes=1) == {"3d_fullres": 0}
    out = dataset["pp"] / "nnUNetPlans_3d_fullres_unlabeled"
    os.remove(out / "unl002.pkl")  # interrupted while writing unl002
    assert preprocess_unlabeled(DATASET, "nnUNetPlans", configurations=["3d_fullres"], num_processes=1) == {"3d_fullres": 1}
    assert (out / "unl002.pkl").is_file()


@pytest.mark.slow
def test_worker_processes(dataset):
    assert preprocess_unlabeled(DATASET, "nnUNetPlans", configurations=["3d_fullres"], num_processes=2) == {"3d_fullres": 3}
    data, props = _load(dataset["pp"] / "nnUNetPlans_3d_fullres_unlabeled", "unl000")
    assert data.ndim == 4 and np.isfinite(data).all() and "class_locations" not in props


def test_unreadable_case_is_named(dataset):
    (dataset["raw"] / "broken_0000.nii.gz").write_bytes(b"not an image")
    with pytest.raises(RuntimeError, match="broken_0000.nii.gz"):
        preprocess_unlabeled(DATASET, "nnUNetPlans", configurations=["3d_fullres"], num_processes=1)


def test_naming_errors(dataset, tmp_path):
    (dataset["raw"] / "oops.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="oops.nii.gz"):
        preprocess_unlabeled(DATASET, "nnUNetPlans", configurations=["3d_fullres"], num_processes=1)
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "a_0000.nii.gz").write_bytes(b"")
    (folder / "a_0001.nii.gz").write_bytes(b"")
    (folder / "b_0000.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="b_0001.nii.gz"):
        find_unlabeled_cases(str(folder), ".nii.gz", 2)


def test_no_unlabeled_folder_and_missing_plans(dataset, tmp_path):
    for f in dataset["raw"].iterdir():
        f.unlink()
    dataset["raw"].rmdir()
    assert preprocess_unlabeled(DATASET, "nnUNetPlans", configurations=["3d_fullres"], num_processes=1) == {"3d_fullres": 0}
    dataset["raw"].mkdir()
    with pytest.raises(FileNotFoundError, match="OtherPlans.json"):
        preprocess_unlabeled(DATASET, "OtherPlans", configurations=["3d_fullres"], num_processes=1)
