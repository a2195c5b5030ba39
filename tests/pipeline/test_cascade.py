"""The cascade end to end: 3d_lowres (5 folds) -> 3d_cascade_fullres; predict runs the first stage itself.

The toy dataset is too small for nnU-Net to plan a cascade, so the two configurations are added
to its plans by hand (as nnU-Net writes them) and the low-resolution data is preprocessed with
nnU-Net's own ``preprocess_dataset``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnzoo.pipeline.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    from helpers import nnunet_folders, prepare_dataset
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    prep = prepare_dataset(tmp_path_factory.mktemp("cascade"), 3, 505)
    with nnunet_folders(prep["base"]), pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_n_proc_DA", "1")
        pre = Path(os.environ["nnUNet_preprocessed"]) / "Dataset505_Toy3d"
        plans = json.loads((pre / "nnUNetPlans.json").read_text())
        full = plans["configurations"]["3d_fullres"]
        low = copy.deepcopy(full)
        low.update(data_identifier="nnUNetPlans_3d_lowres", spacing=[s * 2 for s in full["spacing"]],
                   patch_size=[8, 12, 12], next_stage=["3d_cascade_fullres"], batch_size=2)
        plans["configurations"]["3d_lowres"] = low
        plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
        (pre / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
        preprocess_dataset(505, "nnUNetPlans", ["3d_lowres"], [1], verbose=False)
        mp.setenv("nnUNet_n_proc_DA", "0")
        for fold in range(5):  # the lowres validations export the next stage's inputs for every case
            assert main(["train", "505", "3d_lowres", str(fold), "-device", "cpu", "--epochs", "1", "--iters", "2"]) == 0
        assert main(["train", "505", "3d_cascade_fullres", "0", "-device", "cpu", "--epochs", "1", "--iters", "2",
                     "--no-val"]) == 0
    yield prep
    shutil.rmtree(prep["base"].parent, ignore_errors=True)  # the module's models off the disk


def test_cascade_predicts_its_first_stage_or_takes_it(cascade, tmp_path, capsys):
    from helpers import nnunet_folders

    with nnunet_folders(cascade["base"]):
        images = cascade["src"]["images"]
        capsys.readouterr()
        assert main(["predict", "-i", str(images), "-o", str(tmp_path / "auto"), "-d", "505", "-c",
                     "3d_cascade_fullres", "-f", "0", "-device", "cpu", "--disable-tta"]) == 0
        assert "cascade: predicting the 3d_lowres stage first" in capsys.readouterr().out
        assert main(["predict", "-i", str(images), "-o", str(tmp_path / "low"), "-d", "505", "-c", "3d_lowres", "-f",
                     "0", "-device", "cpu", "--disable-tta"]) == 0
        assert main(["predict", "-i", str(images), "-o", str(tmp_path / "given"), "-d", "505", "-c",
                     "3d_cascade_fullres", "-f", "0", "-device", "cpu", "--disable-tta", "-prev_stage_predictions",
                     str(tmp_path / "low")]) == 0
        for f in sorted(images.iterdir()):
            ref = sitk.ReadImage(str(f))
            a, b = (sitk.ReadImage(str(tmp_path / d / f.name)) for d in ("auto", "given"))
            assert a.GetSize() == ref.GetSize() and a.GetSpacing() == ref.GetSpacing()
            np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        capsys.readouterr()
        assert main(["predict", "-i", str(images), "-o", str(tmp_path / "x"), "-d", "505", "-c", "3d_cascade_fullres",
                     "-f", "0", "-prev_stage_predictions", str(tmp_path / "nope")]) == 2
        assert "no 3d_lowres segmentation" in capsys.readouterr().err


def test_semi_supervised_trainers_refuse_the_cascade_up_front(cascade, capsys):
    from helpers import nnunet_folders

    with nnunet_folders(cascade["base"]):
        assert main(["train", "505", "3d_cascade_fullres", "1", "-tr", "nnUNetTrainerMCNet", "-p", "nnUNetPlans", "-device", "cpu",
                     "--labeled", "2"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: nnUNetTrainerMCNet does not support cascaded configurations")
        assert not list((Path(os.environ["nnUNet_results"]) / "Dataset505_Toy3d").glob("nnUNetTrainerMCNet*"))
