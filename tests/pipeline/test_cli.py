"""CLI behaviour: working folder, list-trainers, and clear errors for unknown names and ids."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nnzoo.pipeline.cli import main


def test_unset_folders_use_one_printed_working_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    r = subprocess.run([sys.executable, "-m", "nnzoo.pipeline.cli", "plan_and_preprocess", "-d", "5"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert f"using the working folder {tmp_path / 'nnzoo_work'}" in r.stdout
    assert "unknown dataset id 5" in r.stderr and "Traceback" not in r.stderr
    assert {p.name for p in (tmp_path / "nnzoo_work").iterdir()} == {"nnUNet_raw", "nnUNet_preprocessed",
                                                                      "nnUNet_results"}


def test_set_folders_are_honoured(workdir, capsys):
    assert main(["train", "4", "3d_fullres", "0"]) == 2
    out = capsys.readouterr()
    assert "working folder" not in out.out and os.environ["nnUNet_raw"] in out.err


def test_list_trainers_shows_every_registered_trainer(capsys):
    from nnzoo.trainers import list_trainers

    assert main(["list-trainers"]) == 0
    out = capsys.readouterr().out
    for info in list_trainers():
        assert info.name in out and info.description in out
    assert out.splitlines()[0].split()[:3] == ["trainer", "dims", "unlabeled"]


def test_ext_trainer_path(capsys):
    from nnzoo.trainers.nnunet_ext import EXT_TRAINER_DIR

    assert main(["ext-trainer-path"]) == 0
    assert capsys.readouterr().out.strip() == EXT_TRAINER_DIR


@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
@pytest.mark.parametrize("argv,message", [
    (["train", "502", "3d_fullres", "0"], "unknown configuration '3d_fullres' for plans nnUNetPlans; available: 2d"),
    (["train", "502", "2d", "7"], "fold 7 does not exist: the splits have 5 folds"),
    (["train", "502", "2d", "x"], "fold must be an integer or 'all'"),
    (["train", "502", "2d", "0", "-tr", "nnUNetTrainerCotr"], "Did you mean 'nnUNetTrainerCoTr'"),
    (["train", "502", "2d", "0", "-p", "nnUNetPlans_CoTr"], "nnUNetPlans_CoTr.json: plans not found"),
    (["train", "599", "2d", "0"], "unknown dataset id 599"),
    (["train", "502", "2d", "0", "--labeled", "0"], "--labeled must be a positive integer or a fraction"),
    (["predict", "-i", "in", "-o", "out", "-d", "502", "-c", "2d", "-tr", "nnUNetTrainerBoundaryAwre"],
     "Did you mean 'nnUNetTrainerBoundaryAware'"),
    (["predict", "-i", "in", "-o", "out", "-d", "502", "-c", "3d_fullres"], "nnUNetTrainer__nnUNetPlans__3d_fullres: "
                                                                             "no trained model"),
    (["predict", "-i", "in", "-o", "in/", "-d", "502", "-c", "2d"], "is the input folder; choose another one"),
])
def test_unknown_names_give_one_clear_error(in_prepared, argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_predict_checks_input_before_loading_the_model(in_prepared, tmp_path, capsys):
    """A model trained on PNGs refuses other image types; an empty input folder is refused."""
    import numpy as np
    import SimpleITK as sitk

    assert main(["train", "502", "2d", "3", "-device", "cpu", "--epochs", "1", "--iters", "1", "--no-val",
                 "--overwrite"]) == 0
    (tmp_path / "nii").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 32, 32), np.float32)), str(tmp_path / "nii" / "a.nrrd"))
    assert main(["predict", "-i", str(tmp_path / "nii"), "-o", str(tmp_path / "o"), "-d", "502", "-c", "2d",
                 "-f", "3"]) == 2
    assert "input images are .nrrd files, but this model reads images with NaturalImage2DIO" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "-d", "502", "-c", "2d"]) == 2
    assert "input folder" in capsys.readouterr().err


def test_evaluate_command(tmp_path, capsys):
    import json

    import numpy as np
    import SimpleITK as sitk

    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    a = np.zeros((8, 16, 16), np.uint8)
    a[2:6, 4:12, 4:12] = 1
    b = np.roll(a, 2, axis=2)
    for d, arr in ((ref, a), (pred, b)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.5, 0.5, 2.0))
        sitk.WriteImage(img, str(d / "c1.nii.gz"))
    (tmp_path / "labels.json").write_text(json.dumps({"labels": {"background": 0, "blob": 1}}))
    assert main(["evaluate", "-ref", str(ref), "-pred", str(pred), "--labels", str(tmp_path / "labels.json"),
                 "-o", str(tmp_path / "ev"), "-np", "1"]) == 0
    assert "blob" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["mean"]["1"]["Dice"] == 0.75 and summary["mean"]["1"]["HD"] == 1.0  # 2 voxels x 0.5 mm
    assert main(["evaluate", "-ref", str(ref), "-pred", str(tmp_path / "nope"), "--labels",
                 str(tmp_path / "labels.json")]) == 2


def test_readme_methods_table_is_the_registry(capsys):
    """The README's table is exactly `nnzoo list-trainers --markdown` (regenerate it after adding a method)."""
    from pathlib import Path

    from nnzoo.pipeline.methods import README_MARK, methods_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert readme.count(README_MARK) == 2
    assert readme.split(README_MARK)[1].strip() == methods_table()
    assert main(["list-trainers", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == methods_table()
