"""plan_and_preprocess: identical plans to nnU-Net's CLI, shared preprocessing, unlabeled data, backups."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnzoo.pipeline.cli import main

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("in_prepared", ["prepared_3d"], indirect=True)
def test_default_plans_equal_nnunet_cli(in_prepared, tmp_path):
    """nnzoo's plans for dataset 501 equal those nnUNetv2_plan_and_preprocess writes for a copy of it."""
    raw = Path(os.environ["nnUNet_raw"]) / "Dataset501_Toy3d"
    other = tmp_path / "stock"
    shutil.copytree(raw, other / "nnUNet_raw" / "Dataset501_Toy3d")
    env = dict(os.environ, nnUNet_raw=str(other / "nnUNet_raw"), nnUNet_preprocessed=str(other / "pre"),
               nnUNet_results=str(other / "res"), nnUNet_n_proc_DA="2")
    subprocess.run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "501", "-c", "3d_fullres", "-np", "2",
                    "-npfp", "2"], check=True, capture_output=True, env=env)
    ours = json.loads((Path(os.environ["nnUNet_preprocessed"]) / "Dataset501_Toy3d" / "nnUNetPlans.json").read_text())
    stock = json.loads((other / "pre" / "Dataset501_Toy3d" / "nnUNetPlans.json").read_text())
    assert ours == stock
    ours_cases = sorted(p.name for p in (Path(os.environ["nnUNet_preprocessed"]) / "Dataset501_Toy3d" /
                                         "nnUNetPlans_3d_fullres").iterdir())
    assert ours_cases == sorted(p.name for p in (other / "pre" / "Dataset501_Toy3d" / "nnUNetPlans_3d_fullres").iterdir())


@pytest.mark.parametrize("in_prepared", ["prepared_3d"], indirect=True)
def test_unlabeled_images_preprocessed_beside_not_into_labeled(in_prepared):
    pre = Path(os.environ["nnUNet_preprocessed"]) / "Dataset501_Toy3d"
    labeled = sorted(p.name for p in (pre / "nnUNetPlans_3d_fullres").glob("*.pkl"))
    unl = sorted(p.name for p in (pre / "nnUNetPlans_3d_fullres_unlabeled").glob("*.pkl"))
    assert labeled == [f"case{i:03d}.pkl" for i in range(6)]
    assert unl == ["unl000.pkl", "unl001.pkl"]
    import blosc2

    for f in (pre / "nnUNetPlans_3d_fullres_unlabeled").glob("*_seg.b2nd"):  # nnU-Net's nonzero mask, no label
        assert set(np.unique(blosc2.open(urlpath=str(f), mode="r")[:])) <= {-1, 0}
    splits = json.loads((pre / "splits_final.json").read_text()) if (pre / "splits_final.json").is_file() else []
    assert all("unl" not in k for s in splits for k in s["train"] + s["val"])


@pytest.mark.parametrize("in_prepared", ["prepared_3d"], indirect=True)
def test_method_planner_reuses_preprocessed_data(in_prepared, capsys):
    pre = Path(os.environ["nnUNet_preprocessed"]) / "Dataset501_Toy3d"
    folder = pre / "nnUNetPlans_3d_fullres"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert main(["plan_and_preprocess", "-d", "501", "-c", "3d_fullres", "-pl", "nnUNetPlannerBoundaryAware",
                 "-np", "1"]) == 0
    assert "complete and identical; reused" in capsys.readouterr().out
    plans = json.loads((pre / "nnUNetPlans_BANet.json").read_text())
    assert plans["configurations"]["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # nothing rewritten
    assert not (pre / "nnUNetPlans_BANet_3d_fullres").exists()


def test_unknown_planner_suggests(workdir, tmp_path, capsys):
    from nnzoo.pipeline.synthetic import write_synthetic_folders

    src = write_synthetic_folders(tmp_path / "s", num_cases=2, shape=(6, 8, 8))
    assert main(["dataset", "create", "--images", str(src["images"]), "--labels", str(src["labels"]), "--name",
                 "P", "--id", "9", "--channel", "x"]) == 0
    assert main(["plan_and_preprocess", "-d", "9", "-pl", "nnUNetPlannerBoundaryAwar"]) == 2
    assert "Did you mean 'nnUNetPlannerBoundaryAware'" in capsys.readouterr().err


@pytest.mark.slow
def test_changed_plans_are_backed_up(workdir, tmp_path):
    from nnzoo.pipeline.plan import plan_and_preprocess
    from nnzoo.pipeline.synthetic import write_synthetic_folders

    src = write_synthetic_folders(tmp_path / "s", num_cases=3, shape=(8, 10, 12))
    assert main(["dataset", "create", "--images", str(src["images"]), "--labels", str(src["labels"]), "--name",
                 "B", "--id", "10", "--channel", "x"]) == 0
    plan_and_preprocess(10, configurations=["3d_fullres"], preprocess=False)
    f = Path(os.environ["nnUNet_preprocessed"]) / "Dataset010_B" / "nnUNetPlans.json"
    edited = json.loads(f.read_text())
    edited["configurations"]["3d_fullres"]["batch_size"] = 7  # a user's hand edit
    f.write_text(json.dumps(edited))
    plan_and_preprocess(10, configurations=["3d_fullres"], preprocess=False)
    backups = list(f.parent.glob("nnUNetPlans.json.bak-*"))
    assert len(backups) == 1 and json.loads(backups[0].read_text())["configurations"]["3d_fullres"]["batch_size"] == 7
