"""Every method trainer end to end through the CLI on the tiny 2D and 3D datasets.

``train -tr <method>`` on a dataset planned with nnU-Net's default planner (the method's planner
runs on the spot) -> train a few iterations -> predict; for BA-Net also ``nnUNetv2_predict``
through the shim folder, which must give identical outputs. Semi-supervised trainers use the
datasets' ``imagesUnlabeled/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import dataset_dir

from nnzoo.pipeline.cli import main
from nnzoo.pipeline.experiment import default_plans_name
from nnzoo.trainers import list_trainers
from nnzoo.trainers.base import method_hyperparameters

pytestmark = pytest.mark.slow
METHODS = [i for i in list_trainers() if i.name != "nnUNetTrainer"]
CASES = [(i.name, p) for i in METHODS for p in ("prepared_3d", "prepared_2d") if p[-2:] in i.dims]


@pytest.mark.parametrize("trainer,in_prepared", CASES, indirect=["in_prepared"],
                         ids=[f"{t}-{p[-2:]}" for t, p in CASES])
def test_method_end_to_end(trainer, in_prepared, tmp_path, capsys):
    prep = in_prepared
    did, cfg = str(prep["id"]), prep["configuration"]
    info = next(i for i in METHODS if i.name == trainer)
    plans = default_plans_name(trainer)
    pre = dataset_dir("nnUNet_preprocessed", prep["id"])
    if info.planner:  # the dataset holds only nnU-Net's plans
        (pre / f"{plans}.json").unlink(missing_ok=True)
    quick = [a for k, v in info.quick_hparams.items() for a in ("--hparam", f"{k}={v}")]
    assert main(["train", did, cfg, "0", "-tr", trainer, "-device", "cpu", "--epochs", "2", "--iters", "2",
                 "--overwrite", *quick]) == 0
    if info.planner:  # the method's plans were made on the spot, from nnU-Net's preprocessed data
        assert f"planning them now with {info.planner}" in capsys.readouterr().out
        assert (pre / f"{plans}.json").is_file()
    model = dataset_dir("nnUNet_results", prep["id"]) / f"{trainer}__{plans}__{cfg}"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    log = next((model / "fold_0").glob("training_log_*.txt")).read_text()
    if method_hyperparameters(info.cls):  # nnU-Net's own variants (DA5) declare none
        assert f"{trainer} hyperparameters:" in log
    for k, v in info.quick_hparams.items():  # the overrides reach the trainer and are logged
        assert f"{k}={v}" in log or f"'{k}': {v}" in log

    inp, nn_in = tmp_path / "in", tmp_path / "nn_in"
    inp.mkdir()
    nn_in.mkdir()
    imgs = sorted(prep["src"]["images"].iterdir())[:2]
    ending = ".nii.gz" if cfg != "2d" else ".png"
    for f in imgs:
        shutil.copy(f, inp / f.name)
        shutil.copy(f, nn_in / f"{f.name[:-len(ending)]}_0000{ending}")
    out = tmp_path / "out"
    exact = ["--exact"] if trainer == "nnUNetTrainerBoundaryAware" else []  # compared with nnUNetv2_predict below
    assert main(["predict", "-i", str(inp), "-o", str(out), "-d", did, "-c", cfg, "-tr", trainer, "-f", "0",
                 "-device", "cpu", "--disable-tta", *exact]) == 0
    for f in imgs:
        ref, pred = sitk.ReadImage(str(f)), sitk.ReadImage(str(out / f.name))
        assert pred.GetSize() == ref.GetSize() and pred.GetSpacing() == ref.GetSpacing()

    if trainer == "nnUNetTrainerBoundaryAware":  # nnU-Net's own predictor, through the shim folder
        from nnzoo.trainers.nnunet_ext import EXT_TRAINER_DIR

        env = dict(os.environ, nnUNet_extTrainer=EXT_TRAINER_DIR)
        stock = tmp_path / "stock"
        subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(nn_in), "-o", str(stock),
                        "-d", did, "-c", cfg, "-tr", trainer, "-p", plans, "-f", "0", "-device", "cpu",
                        "--disable_tta"], check=True, capture_output=True, env=env)
        for f in imgs:
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f.name)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(stock / f.name)))
            np.testing.assert_array_equal(a, b)

    if info.semi_supervised:
        split = model / "fold_0" / "labeled_split.json"
        assert not split.exists()  # all training cases labeled; unlabeled images from imagesUnlabeled/
        assert json.loads((model / "fold_0" / "nnzoo_run.json").read_text())["labeled"] is None


@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_labeled_budget_through_cli(in_prepared, capsys):
    """--labeled 2: its own model folder (``..._labeled2``), the choice written down and the same on a second run;
    the full-label model of the same fold is kept; --continue needs the budget."""
    did = str(in_prepared["id"])
    models = Path(os.environ["nnUNet_results"]) / "Dataset502_Toy2d"
    res = models / "nnUNetTrainer__nnUNetPlans__2d_labeled2" / "fold_1"
    base = ["train", did, "2d", "1", "-device", "cpu", "--epochs", "1", "--iters", "1", "--no-val"]
    assert main([*base, "--overwrite"]) == 0  # all labels
    full = (models / "nnUNetTrainer__nnUNetPlans__2d" / "fold_1" / "checkpoint_final.pth").read_bytes()
    chosen = []
    for _ in range(2):
        assert main([*base, "--labeled", "2", "--overwrite"]) == 0
        split = json.loads((res / "labeled_split.json").read_text())
        assert len(split["labeled"]) == 2 and json.loads((res / "nnzoo_run.json").read_text())["labeled"] == 2
        chosen.append(split["labeled"])
    assert chosen[0] == chosen[1]
    assert (models / "nnUNetTrainer__nnUNetPlans__2d" / "fold_1" / "checkpoint_final.pth").read_bytes() == full
    assert main(["predict", "-i", str(in_prepared["src"]["images"]), "-o", str(res.parent / "pred"), "-d", did,
                 "-c", "2d", "--labeled", "2", "-f", "1"]) == 0
    assert len(list((res.parent / "pred").glob("*.png"))) == 6
