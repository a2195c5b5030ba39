"""Shared fixture of the planner tests: a planner's view of a toy dataset without files."""

from __future__ import annotations

import pytest
from helpers import TOY_MEDIAN as MEDIAN
from helpers import TOY_N_CASES as N_CASES
from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as dep


@pytest.fixture
def toy_dataset(monkeypatch):
    """A planner's view of a 4-case 128^3 dataset (1 channel, 3 labels) without files on disk."""
    dataset_json = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1, "b": 2},
                    "numTraining": N_CASES, "file_ending": ".nii.gz"}
    fingerprint = {"median_relative_size_after_cropping": 1.0, "spacings": [[1.0, 1.0, 1.0]] * N_CASES,
                   "shapes_after_crop": [list(MEDIAN)] * N_CASES}
    # nnU-Net's own estimate calls torch.set_num_threads(nnUNet_n_proc_DA), which rejects the tests' 0
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    monkeypatch.setattr(dep, "maybe_convert_to_dataset_name", lambda _: "Dataset999_Toy")
    monkeypatch.setattr(dep, "nnUNet_raw", "/nonexistent/raw")
    monkeypatch.setattr(dep, "nnUNet_preprocessed", "/nonexistent/preprocessed")
    monkeypatch.setattr(dep, "load_json",
                        lambda f: fingerprint if f.endswith("dataset_fingerprint.json") else dataset_json)
    monkeypatch.setattr(dep, "isfile", lambda f: f.endswith("dataset_fingerprint.json"))
    monkeypatch.setattr(dep, "get_filenames_of_train_images_and_targets", lambda *a: {})
    return dataset_json


