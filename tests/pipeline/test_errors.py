"""The error contract at the CLI: every class of bad input a user can produce gets one ``error:`` line.

Classes: geometry, files, labels, folders, flags, models, checkpoints. Each case checks the exit
status, that stderr is exactly one line starting with ``error:`` naming the file, flag or value,
that no traceback is printed, and (where something was there before) that nothing was changed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnzoo.pipeline.cli import main
from nnzoo.pipeline.synthetic import write_synthetic_folders


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


@pytest.fixture
def src(tmp_path):
    return write_synthetic_folders(tmp_path / "src", num_cases=3, shape=(8, 10, 12), num_classes=3, seed=1)


def _create(src, *extra: str) -> int:
    return main(["dataset", "create", "--images", str(src["images"]), "--labels", str(src["labels"]),
                 "--name", "Bad", "--id", "77", "--channel", "MR", *extra])


# ------------------------------------------------------------------------------------------ geometry
def test_geometry_mismatch(workdir, src, capsys):
    img = sitk.ReadImage(str(src["labels"] / "case001.nii.gz"))
    img.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(img, str(src["labels"] / "case001.nii.gz"))
    assert _create(src) == 2
    _one_error_line(capsys, "case001.nii.gz", "spacing")
    assert not list(Path(os.environ["nnUNet_raw"]).glob("Dataset077*"))


# ------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("damage,needle", [("missing", "does not exist"), ("garbage", "cannot be read"),
                                           ("empty", "file is empty"), ("type", "unsupported file type")])
def test_bad_files(workdir, src, capsys, damage, needle):
    if damage == "missing":
        shutil.rmtree(src["images"])
    elif damage == "garbage":
        (src["images"] / "case000.nii.gz").write_bytes(b"\x00garbage" * 50)
    elif damage == "empty":
        (src["images"] / "case000.nii.gz").write_bytes(b"")
    else:
        (src["images"] / "notes.txt").write_text("hello")
    assert _create(src) == 2
    _one_error_line(capsys, needle)


# ------------------------------------------------------------------------------------------ labels
def test_labels(workdir, src, capsys):
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(src["labels"] / "case002.nii.gz"))).astype(np.float32)
    arr[0, 0, 0] = 0.5
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(src["labels"] / "case002.nii.gz"))
    assert _create(src) == 2
    _one_error_line(capsys, "case002.nii.gz", "integers")


def test_bad_label_flags(workdir, src, capsys):
    assert _create(src, "--label", "one=liver") == 2
    _one_error_line(capsys, "--label")
    assert _create(src, "--ignore-label", "1") == 2
    _one_error_line(capsys, "--ignore-label 1", "highest")
    assert _create(src, "--region", "whole=1,9") == 2
    _one_error_line(capsys, "--region whole", "[9]")


def test_regions_and_ignore_label_are_written_by_nnunet(workdir, src, capsys):
    assert _create(src, "--region", "whole=1,2", "--region", "core=2") == 0
    dj = json.loads(next(Path(os.environ["nnUNet_raw"]).glob("Dataset077*/dataset.json")).read_text())
    assert dj["labels"] == {"background": 0, "whole": [1, 2], "core": [2]} and dj["regions_class_order"] == [1, 2]


# ------------------------------------------------------------------------------------------ folders and flags
@pytest.fixture
def fold0_untrained():
    """Fold 0 of Dataset502 without models, whatever other tests of the session trained there (moved aside
    and put back)."""
    moved = []
    for fold in (Path(os.environ["nnUNet_results"]) / "Dataset502_Toy2d").glob("*/fold_0"):
        aside = fold.with_name("fold_0.aside-by-test")
        fold.rename(aside)
        moved.append((aside, fold))
    yield
    for aside, fold in moved:
        shutil.rmtree(fold, ignore_errors=True)
        aside.rename(fold)


@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
@pytest.mark.parametrize("argv,needles", [
    (["train", "502", "2d", "0", "--labeled", "30"], ["--labeled 30", "only 4 training cases"]),
    (["train", "502", "2d", "0", "--labeled", "abc"], ["--labeled", "'abc'"]),
    (["train", "502", "2d", "0", "--epochs", "0"], ["--epochs must be at least 1"]),
    (["train", "502", "2d", "0", "-num_gpus", "3", "-device", "cpu"], ["3 training processes", "batch size is 2"]),
    (["train", "502", "2d", "0", "--val"], ["checkpoint_final.pth: not found"]),
    (["train", "502", "2d", "0", "--val", "--continue"], ["--continue and --val"]),
    (["train", "502", "2d", "0", "--val_best", "--disable_checkpointing"], ["--val_best"]),
    (["train", "502", "2d", "0", "-pretrained_weights", "/nonexistent.pth"], ["/nonexistent.pth", "not found"]),
    (["train", "502", "2d", "0", "--val-it", "3"], ["unrecognized arguments: --val-it"]),  # no abbreviations
    (["train", "502", "2d", "0", "-device", "gpu"], ["invalid choice: 'gpu'"]),
    (["evaluate", "-ref", "/nonexistent", "-pred", "/nonexistent2", "-d", "502"], ["/nonexistent", "not found"]),
    (["train", "502", "2d", "0", "-tr", "nnUNetTrainerBCP", "--hparam", "EMA_DECAY"], ["--hparam", "NAME=VALUE"]),
    (["train", "502", "2d", "0", "-tr", "nnUNetTrainerBCP", "--hparam", "EMA=0.9"],
     ["--hparam EMA is not a hyperparameter of nnUNetTrainerBCP", "EMA_DECAY"]),
    (["train", "502", "2d", "0", "-tr", "nnUNetTrainerBCP", "--hparam", "EMA_DECAY=high"],
     ["EMA_DECAY='high'", "expected a float"]),
    (["train", "502", "2d", "0", "--hparam", "X=1"], ["X is not a hyperparameter of nnUNetTrainer", "none"]),
])
def test_bad_flags_and_folders(in_prepared, fold0_untrained, capsys, argv, needles):
    results = Path(os.environ["nnUNet_results"])
    before = _snapshot(results)
    assert main(argv) == 2
    _one_error_line(capsys, *needles)
    assert _snapshot(results) == before


@pytest.mark.slow
@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_unsupported_labels_are_refused_before_the_trainer_is_built(in_prepared, tmp_path, capsys):
    """BCP on an ignore-label dataset: one line, and no result folder or log file is created."""
    src = write_synthetic_folders(tmp_path / "ign", num_cases=5, shape=(32, 32), num_classes=4, file_ending=".png",
                                  seed=5)
    assert main(["dataset", "create", "--images", str(src["images"]), "--labels", str(src["labels"]), "--name",
                 "Ign", "--id", "78", "--channel", "img", "--ignore-label", "3"]) == 0
    assert main(["plan_and_preprocess", "-d", "78", "-c", "2d", "-np", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "78", "2d", "0", "-tr", "nnUNetTrainerBCP", "-device", "cpu", "--labeled", "2"]) == 2
    _one_error_line(capsys, "nnUNetTrainerBCP does not support the ignore label")
    assert not (Path(os.environ["nnUNet_results"]) / "Dataset078_Ign").exists()


# ------------------------------------------------------------------------------------------ models and checkpoints
@pytest.fixture(scope="module")
def trained(prepared_2d):
    """prepared_2d with fold 4 of nnUNetTrainer trained for one iteration."""
    from helpers import nnunet_folders

    with nnunet_folders(prepared_2d["base"]):
        assert main(["train", "502", "2d", "4", "-device", "cpu", "--epochs", "1", "--iters", "1", "--no-val",
                     "--overwrite"]) == 0
    return prepared_2d


@pytest.fixture
def in_trained(trained):
    from helpers import nnunet_folders

    with nnunet_folders(trained["base"]):
        yield trained


@pytest.mark.slow
def test_models(in_trained, fold0_untrained, tmp_path, capsys):
    inp = in_trained["src"]["images"]
    fold = Path(os.environ["nnUNet_results"]) / "Dataset502_Toy2d" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_4"
    # fold 0 without models whatever ran before (fold 1 is trained by test_methods_cli when it runs first)
    assert main(["predict", "-i", str(inp), "-o", str(tmp_path / "o"), "-d", "502", "-c", "2d", "-f", "0"]) == 2
    _one_error_line(capsys, "fold_0", "not found")
    assert main(["predict", "-i", str(inp), "-o", str(tmp_path / "o"), "-d", "502", "-c", "2d", "-tr",
                 "nnUNetTrainerMCNet"]) == 2
    _one_error_line(capsys, "no trained model")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "case000.png").write_bytes(b"mine")
    assert main(["predict", "-i", str(inp), "-o", str(tmp_path / "o"), "-d", "502", "-c", "2d", "-f", "4"]) == 2
    _one_error_line(capsys, "already exist", "--overwrite")
    assert (tmp_path / "o" / "case000.png").read_bytes() == b"mine"
    # the model refuses to be trained over without --continue/--overwrite
    before = _snapshot(fold)
    assert main(["train", "502", "2d", "4", "-device", "cpu"]) == 2
    _one_error_line(capsys, "already holds", "checkpoint_final.pth", "--continue")
    assert _snapshot(fold) == before


@pytest.mark.slow
def test_checkpoints(in_trained, fold0_untrained, tmp_path, capsys):
    fold = Path(os.environ["nnUNet_results"]) / "Dataset502_Toy2d" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_4"
    good = (fold / "checkpoint_final.pth").read_bytes()
    try:
        (fold / "checkpoint_final.pth").write_bytes(good[: len(good) // 3])  # truncated by a full disk
        assert main(["predict", "-i", str(in_trained["src"]["images"]), "-o", str(tmp_path / "o"), "-d", "502",
                     "-c", "2d", "-f", "4"]) == 2
        _one_error_line(capsys, "checkpoint_final.pth", "not a readable checkpoint")
        assert main(["train", "502", "2d", "4", "-device", "cpu", "--continue"]) == 2
        _one_error_line(capsys, "checkpoint_final.pth", "not a readable checkpoint")
        assert main(["train", "502", "2d", "0", "-device", "cpu", "-pretrained_weights",
                     str(fold / "checkpoint_final.pth")]) == 2
        _one_error_line(capsys, "not a readable checkpoint")
    finally:
        (fold / "checkpoint_final.pth").write_bytes(good)
