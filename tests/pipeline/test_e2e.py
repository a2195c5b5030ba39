"""End to end through the CLI on tiny 3D and 2D datasets: create -> plan -> train -> predict.

Also: nnU-Net's own ``nnUNetv2_predict`` gives the same segmentation for an nnzoo-trained model,
nnzoo predicts a model trained by stock ``nnUNetv2_train``, and the shim folder lets nnU-Net
find nnzoo trainers.
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

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _geometry(path: Path):
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def _train_and_predict(prep: dict, tmp_path: Path, trainer: str = "nnUNetTrainer", *predict_flags: str) -> Path:
    did, cfg = str(prep["id"]), prep["configuration"]
    assert main(["train", did, cfg, "0", "-tr", trainer, "-device", "cpu", "--epochs", "1", "--iters", "2",
                 "--overwrite"]) == 0
    fold = dataset_dir("nnUNet_results", prep["id"]) / f"{trainer}__nnUNetPlans__{cfg}" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    ev = json.loads((fold / "validation" / "evaluation" / "summary.json").read_text())  # nnzoo's, beside nnU-Net's
    assert {"HD95", "NSD", "Dice"} <= set(ev["mean"]["1"]) and (fold / "validation" / "evaluation" / "report.html").is_file()
    run = json.loads((fold / "nnzoo_run.json").read_text())
    assert (run["num_epochs"], run["num_iterations_per_epoch"]) == (1, 2)

    inp = tmp_path / "in"
    inp.mkdir()
    imgs = sorted(prep["src"]["images"].iterdir())[:2]
    for f in imgs:
        shutil.copy(f, inp / f.name)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(inp), "-o", str(out), "-d", did, "-c", cfg, "-tr", trainer, "-f", "0",
                 "-device", "cpu", "--disable-tta", *predict_flags]) == 0  # -f 0: other tests train other folds
    for f in imgs:
        pred = out / f.name
        assert pred.is_file()
        assert _geometry(pred) == _geometry(f)
        labels = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(pred))))
        assert set(labels.tolist()) <= {0, 1, 2}
    return out


@pytest.mark.parametrize("in_prepared", ["prepared_3d", "prepared_2d"], indirect=True)
def test_cli_end_to_end(in_prepared, tmp_path):
    _train_and_predict(in_prepared, tmp_path)


@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_exact_prediction_is_bit_identical_to_nnunet_predict(in_prepared, tmp_path):
    """``nnzoo predict --exact``: nnU-Net's float32 path, the same segmentations and probabilities to the bit."""
    prep = in_prepared
    out = _train_and_predict(prep, tmp_path, "nnUNetTrainer", "--exact", "--save-probabilities")
    nn_in = tmp_path / "nn_in"  # nnU-Net's own naming: CASE_0000.png
    nn_in.mkdir()
    for f in (tmp_path / "in").iterdir():
        shutil.copy(f, nn_in / f"{f.stem}_0000.png")
    stock = tmp_path / "stock"
    subprocess.run([str(BIN / "nnUNetv2_predict"), "-i", str(nn_in), "-o", str(stock), "-d",
                    str(prep["id"]), "-c", "2d", "-f", "0", "-device", "cpu", "--disable_tta", "--save_probabilities"],
                   check=True, capture_output=True, env=os.environ.copy())
    preds = sorted(out.glob("*.png"))
    assert len(preds) == 2
    for f in preds:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(stock / f.name)))
        np.testing.assert_array_equal(a, b)
        pa, pb = (np.load(d / f"{f.stem}.npz")["probabilities"] for d in (out, stock))
        assert pa.dtype == pb.dtype == np.float32
        np.testing.assert_array_equal(pa, pb)

@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_predict_model_trained_by_stock_nnunet(in_prepared, tmp_path):
    prep = in_prepared
    env = os.environ.copy()
    env["nnUNet_n_proc_DA"] = "0"
    subprocess.run([str(BIN / "nnUNetv2_train"), str(prep["id"]), "2d", "1", "-tr", "nnUNetTrainer_1epoch",
                    "-device", "cpu"], check=True, capture_output=True, env=env, timeout=900)
    inp = tmp_path / "in"
    inp.mkdir()
    f = sorted(prep["src"]["images"].iterdir())[0]
    shutil.copy(f, inp / f.name)
    assert main(["predict", "-i", str(inp), "-o", str(tmp_path / "o"), "-d", str(prep["id"]), "-c", "2d",
                 "-tr", "nnUNetTrainer_1epoch", "-device", "cpu", "--disable-tta"]) == 0
    assert (tmp_path / "o" / f.name).is_file()


def test_shim_folder_lets_nnunet_find_nnzoo_trainers(tmp_path):
    from nnzoo.trainers import list_trainers
    from nnzoo.trainers.nnunet_ext import EXT_TRAINER_DIR

    names = [i.name for i in list_trainers() if i.cls.__module__.startswith("nnzoo.")]
    code = ("import sys; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            "[print(n, f(n).__module__) for n in sys.argv[1:]]")
    env = dict(os.environ, nnUNet_extTrainer=EXT_TRAINER_DIR)
    r = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, check=True)
    found = dict(line.split() for line in r.stdout.splitlines() if line.startswith("nnUNetTrainer"))
    assert set(found) == set(names)
    assert all(m.startswith("nnzoo.trainers.") for m in found.values())
