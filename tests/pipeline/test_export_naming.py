"""``nnzoo export-model`` naming the model as nnU-Net does (``-d -c -tr -p [--labeled N]``) instead of ``-m``.

The model folders are built without training (:func:`build_model_folder`: nnU-Net's tiny test plans,
an initialised trainer per fold, its checkpoint and nnzoo's run metadata); a few seconds each.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

DATASET = "Dataset901_Tiny3d"  # tests/data/tiny_plans.json's dataset
MODEL = "nnUNetTrainer__nnUNetPlans__{}"


def build_model_folder(tmp_path: Path, *, configuration: str = "2d", folds: tuple[int, ...] = (0,),
                       labeled: int | None = None, trainer_class: type | None = None,
                       augment: str | None = None) -> Path:
    """A model folder as ``nnzoo train`` leaves it, written without training.

    For each fold an nnU-Net trainer is built on the CPU from the tiny test plans (each fold's
    network randomly initialised, so folds differ), initialised and checkpointed
    (``fold_<f>/checkpoint_final.pth``, ``nnzoo_run.json``); ``plans.json`` and ``dataset.json`` are
    copied in. With ``augment``/``labeled`` the folder gets nnzoo's ``_<augment>``/``_labeled<N>`` suffix.

    Args:
        tmp_path: the test's tmp_path (conftest points nnU-Net's folders into it).
        configuration: ``2d`` or ``3d_fullres``.
        folds: the folds to write.
        labeled: a label budget for the folder name.
        augment: an augmentation (``--augment``) for the folder name.
        trainer_class: the trainer (default nnU-Net's ``nnUNetTrainer``).

    Returns:
        The model folder under ``nnUNet_results``.
    """
    import torch
    from helpers import make_trainer, tiny_dataset_json, tiny_plans
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    cls = trainer_class or nnUNetTrainer
    model = None
    for f in folds:
        torch.manual_seed(100 + f)
        trainer = make_trainer(cls, tmp_path, configuration, fold=f, initialize=True)
        fold = Path(trainer.output_folder)
        trainer.save_checkpoint(str(fold / "checkpoint_final.pth"))
        (fold / "nnzoo_run.json").write_text(json.dumps({"trainer": cls.__name__, "configuration": configuration,
                                                         "fold": f}))
        for log in fold.glob("training_log_*.txt"):
            log.unlink()
        model = fold.parent
    (model / "plans.json").write_text(json.dumps(tiny_plans(configuration)))
    (model / "dataset.json").write_text(json.dumps(tiny_dataset_json()))
    if labeled is not None or augment is not None:
        from nnzoo.pipeline.experiment import model_folder_suffix

        target = model.with_name(model.name + model_folder_suffix(augment=augment, labeled=labeled))
        shutil.move(model, target)
        model = target
    return model


def _export(*args: str) -> int:
    from nnzoo.pipeline.cli import main

    return main(["export-model", *args])


def _names(zip_file: Path) -> list[str]:
    with zipfile.ZipFile(zip_file) as z:
        return sorted(z.namelist())


def test_names_give_the_same_zip_as_the_folder(tmp_path, capsys):
    model = build_model_folder(tmp_path, folds=(0, 1))
    assert _export("-m", str(model), "-o", str(tmp_path / "by_folder.zip")) == 0
    assert _export("-d", "901", "-c", "2d", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans", "-f", "0", "1",
                   "-o", str(tmp_path / "by_name.zip")) == 0
    assert _export("-d", DATASET, "-c", "2d", "-o", str(tmp_path / "by_dataset_name.zip")) == 0  # default -tr, -p
    names = _names(tmp_path / "by_folder.zip")
    assert f"{DATASET}/{MODEL.format('2d')}/fold_1/checkpoint_final.pth" in names
    assert _names(tmp_path / "by_name.zip") == names == _names(tmp_path / "by_dataset_name.zip")


def test_labeled_names_the_label_budget_folder(tmp_path, capsys):
    build_model_folder(tmp_path, labeled=4)
    assert _export("-d", "901", "-c", "2d", "--labeled", "4", "-o", str(tmp_path / "m.zip")) == 0
    assert f"{DATASET}/{MODEL.format('2d')}_labeled4/fold_0/checkpoint_final.pth" in _names(tmp_path / "m.zip")
    assert _export("-d", "901", "-c", "2d", "-o", str(tmp_path / "all.zip")) == 2  # the full-label model: none
    err = capsys.readouterr().err
    assert f"{MODEL.format('2d')}: no trained model" in err and f"{MODEL.format('2d')}_labeled4" in err


def _error(capsys, *args: str) -> str:
    assert _export(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("args, expected", [
    ([], ["-m FOLDER", "-d DATASET -c CONFIGURATION"]),
    (["-c", "2d"], ["-m FOLDER", "(-c needs -d)"]),
    (["-tr", "nnUNetTrainer", "--labeled", "4"], ["(-tr --labeled need -d)"]),
    (["-d", "901"], ["-d 901", "-c"]),
    (["-m", "MODEL", "-d", "901", "-c", "2d"], ["-m", "not both", "-d -c given too"]),
    (["-m", "MODEL", "-tr", "nnUNetTrainerBCP"], ["not both", "-tr given too"]),
    (["-d", "902", "-c", "2d"], ["unknown dataset id 902"]),
    (["-d", "901", "-c", "2d", "-tr", "nnUNetTrainerBoundryAware"], ["nnUNetTrainerBoundryAware",
                                                                     "nnUNetTrainerBoundaryAware"]),
    (["-d", "901", "-c", "3d_fullres"], [f"{MODEL.format('3d_fullres')}: no trained model", MODEL.format("2d")]),
    (["-d", "901", "-c", "2d", "-p", "OtherPlans"], ["nnUNetTrainer__OtherPlans__2d: no trained model"]),
    (["-d", "901", "-c", "2d", "--labeled", "0"], ["--labeled", "'0'"]),
    (["-d", "901", "-c", "2d", "-f", "3"], ["fold_3", "not found"]),
])
def test_naming_errors(tmp_path, capsys, args, expected):
    model = build_model_folder(tmp_path)
    args = [str(model) if a == "MODEL" else a for a in args]
    err = _error(capsys, *args, "-o", str(tmp_path / "m.zip"))
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "m.zip").exists()


def test_issue_example_names_the_trainers_plans(tmp_path, capsys):
    """``export-model -d 861 -c 2d -tr nnUNetTrainerBoundaryAware`` looks for the trainer's planner's plans."""
    from nnzoo.pipeline.experiment import default_plans_name

    (tmp_path / "nnUNet_results" / "Dataset861_Issue" / "nnUNetTrainer__nnUNetPlans__2d").mkdir(parents=True)
    err = _error(capsys, "-d", "861", "-c", "2d", "-tr", "nnUNetTrainerBoundaryAware", "-o", str(tmp_path / "m.zip"))
    plans = default_plans_name("nnUNetTrainerBoundaryAware")
    assert f"Dataset861_Issue/nnUNetTrainerBoundaryAware__{plans}__2d: no trained model" in err
    assert "models of Dataset861_Issue: nnUNetTrainer__nnUNetPlans__2d" in err
    assert "required" not in err
