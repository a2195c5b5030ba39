"""Valid but unusual input that must keep working: spaces and non-ASCII in paths, symlinks, images
larger or at another spacing than training, references and predictions of other file types.

Each row of :data:`VALID` runs ``nnzoo`` in-process in the bad-input world (``bad_input_cases.py``,
fixture ``ctx`` in ``conftest.py``) and must succeed without an ``error:`` line.
:data:`VALID_ROWS_PER_COMMAND` is the count the README's reliability paragraph quotes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bad_input_builders import nii_shape  # noqa: E402
from bad_input_cases import MODEL, WORLD_NAME, Ctx, write_png  # noqa: E402

from nnzoo.pipeline.cli import main  # noqa: E402

#: rows of :data:`VALID` per command
VALID_ROWS_PER_COMMAND = {"dataset create": 4, "evaluate": 5, "predict": 1, "export-model": 1, "install-model": 1}


# ---------------------------------------------------------------------------------- valid but unusual
def _odd_path(c: Ctx) -> Path:
    return c.tmp / "a folder with spaces" / "ünïcödé 数据"


def _create_ok(c: Ctx, argv: list[str]) -> None:
    assert main(argv) == 0
    assert (Path(os.environ["nnUNet_raw"]) / "Dataset077_Bad" / "dataset.json").is_file()


def _valid_create_odd_path(c: Ctx):
    odd = _odd_path(c)
    shutil.copytree(c.src["images"], odd / "images")
    shutil.copytree(c.src["labels"], odd / "labels")
    _create_ok(c, c.create(images=odd / "images", labels=odd / "labels"))


def _valid_create_symlinks(c: Ctx):
    (c.tmp / "linked").symlink_to(c.src["images"], target_is_directory=True)
    labels = c.dir("label links")
    for f in c.src["labels"].iterdir():
        (labels / f.name).symlink_to(f)
    _create_ok(c, c.create(images=c.tmp / "linked", labels=labels))


def _valid_create_mixed_spacing(c: Ctx):
    for which in ("images", "labels"):  # one case at another spacing and size: nnU-Net resamples
        nii_shape(c, which, "case001", (12, 14, 9), spacing=(2.5, 0.7, 0.7), dtype=np.float32 if which == "images"
                   else np.uint8)
    _create_ok(c, c.create())


def _valid_create_names(c: Ctx):
    _create_ok(c, c.create("--name", "Bad", "--label", "1=lüver", "--label", "2=tümor"))
    dj = json.loads((Path(os.environ["nnUNet_raw"]) / "Dataset077_Bad" / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "lüver": 1, "tümor": 2}


def _valid_eval_odd_path(c: Ctx):
    odd = _odd_path(c)
    ref = Path(shutil.copytree(c.src["labels"], odd / "ref"))
    pred = Path(shutil.copytree(c.src["labels"], odd / "pred"))
    assert main(c.evaluate("-np", "1", "-o", str(odd / "eval out"), ref=ref, pred=pred)) == 0
    assert (odd / "eval out" / "summary.json").is_file()


def _valid_eval_symlinked(c: Ctx):
    (c.tmp / "pred link").symlink_to(c.pred, target_is_directory=True)
    assert main(c.evaluate("-np", "1", "-o", str(c.tmp / "ev"), pred=c.tmp / "pred link")) == 0
    res = json.loads((c.tmp / "ev" / "summary.json").read_text())
    assert res["foreground_mean"]["Dice"] == pytest.approx(1.0)


def _valid_eval_partial(c: Ctx):
    (c.pred / "case002.nii.gz").unlink()  # fewer predictions than references: listed, not an error
    assert main(c.evaluate("-np", "1", "-o", str(c.tmp / "ev"))) == 0
    assert json.loads((c.tmp / "ev" / "summary.json").read_text())["cases_without_prediction"] == ["case002"]


def _valid_eval_spacing(c: Ctx):
    import SimpleITK as sitk

    f = c.pred / "case001.nii.gz"
    img = sitk.ReadImage(str(f))
    img.SetSpacing((1.0, 1.0, 1.0005))  # rounding in another tool's writer
    sitk.WriteImage(img, str(f))
    assert main(c.evaluate("-np", "1", "-o", str(c.tmp / "ev"))) == 0


def _valid_predict_large_odd_path(c: Ctx):
    import SimpleITK as sitk

    inp = c.dir("a folder with spaces/ïnpüt 图像")
    arr = np.clip(np.random.default_rng(0).normal(100, 30, (40, 52)), 0, 255)
    write_png(inp / "big case.png", arr)  # 40x52: far larger than the 16x16 of training
    out = _odd_path(c) / "out"
    assert main(c.predict(inp=inp, out=out, model=True)) == 0
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "big case.png")))
    assert seg.shape == (40, 52)


def _valid_export_install_odd_path(c: Ctx):
    z = _odd_path(c) / "exported model.zip"
    assert main(c.export(out=z)) == 0
    shutil.rmtree(c.w.results / WORLD_NAME)
    assert main(["install-model", str(z)]) == 0
    assert (c.w.model / "fold_0" / "checkpoint_final.pth").is_file()


def _valid_install_symlink(c: Ctx):
    link = c.tmp / "link to ünï model.zip"
    link.symlink_to(c.model_zip())
    assert main(["install-model", str(link)]) == 0
    assert (c.w.results / "Dataset602_Other" / MODEL / "fold_0" / "checkpoint_final.pth").is_file()


def _valid_eval_other_file_types(c: Ctx):
    import SimpleITK as sitk

    ref = c.dir("ref nrrd")
    for f in c.src["labels"].iterdir():  # references as .nrrd, predictions as .nii.gz: matched by case name
        sitk.WriteImage(sitk.ReadImage(str(f)), str(ref / f.name.replace(".nii.gz", ".nrrd")))
    assert main(c.evaluate("-np", "1", "-o", str(c.tmp / "ev"), ref=ref)) == 0
    assert json.loads((c.tmp / "ev" / "summary.json").read_text())["foreground_mean"]["Dice"] == pytest.approx(1.0)


VALID = [
    ("dataset create", "path-with-spaces-and-non-ascii", _valid_create_odd_path),
    ("dataset create", "symlinked-folder-and-files", _valid_create_symlinks),
    ("dataset create", "case-at-another-spacing-and-size", _valid_create_mixed_spacing),
    ("dataset create", "non-ascii-label-names", _valid_create_names),
    ("evaluate", "path-with-spaces-and-non-ascii", _valid_eval_odd_path),
    ("evaluate", "symlinked-prediction-folder", _valid_eval_symlinked),
    ("evaluate", "fewer-predictions-than-references", _valid_eval_partial),
    ("evaluate", "spacing-differs-by-rounding", _valid_eval_spacing),
    ("evaluate", "reference-and-prediction-file-types-differ", _valid_eval_other_file_types),
    ("predict", "larger-image-odd-path", _valid_predict_large_odd_path),
    ("export-model", "odd-path", _valid_export_install_odd_path),
    ("install-model", "symlinked-zip-odd-name", _valid_install_symlink),
]


@pytest.mark.parametrize("command,rid,run", VALID, ids=[f"{c.replace(' ', '-')}:{r}" for c, r, _ in VALID])
def test_valid_unusual_input(ctx, capsys, command, rid, run):
    run(ctx)
    assert "error:" not in capsys.readouterr().err


def test_valid_rows_per_command_match_the_readme():
    """The count the README quotes is the table's."""
    assert dict(Counter(c for c, _, _ in VALID)) == VALID_ROWS_PER_COMMAND
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert f"{sum(VALID_ROWS_PER_COMMAND.values())} rows of valid but unusual input" in readme
