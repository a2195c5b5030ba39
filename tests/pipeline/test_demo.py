"""The demo (pipeline/demo.py): its cohort and its overview picture."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnzoo.pipeline.demo import DEMO_LABELS, make_demo_folders, save_overview


@pytest.mark.slow
def test_demo_cases_hold_every_class_and_acquisition(tmp_path):
    folders = make_demo_folders(tmp_path, num_train=5, num_test=2, seed=1)
    imgs = sorted(folders["images"].glob("*.nii.gz"))
    assert len(imgs) == 5 and len(list(folders["test_labels"].glob("*.nii.gz"))) == 2
    import json

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len({p["acquisition"] for p in manifest["train"].values()}) == 5  # every style is labeled in the demo
    for f in imgs:
        img, lab = sitk.ReadImage(str(f)), sitk.ReadImage(str(folders["labels"] / f.name))
        assert img.GetDimension() == 2 and img.GetSize() == lab.GetSize() and img.GetSpacing() == lab.GetSpacing()
        y = sitk.GetArrayFromImage(lab)
        assert set(np.unique(y)) == {0, *DEMO_LABELS}


def test_overview_shows_prediction_legend_and_dice(tmp_path, monkeypatch):
    y = np.zeros((32, 32), np.uint8)
    y[8:24, 8:24] = 2
    y[12:20, 12:20] = 3
    y[15:17, 10:14] = 1
    img = sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32))
    sitk.WriteImage(img, str(tmp_path / "img.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(y), str(tmp_path / "pred.nii.gz"))
    import matplotlib.figure

    seen = {}
    real = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        seen["titles"] = [ax.get_title() for ax in fig.axes]
        seen["legend"] = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
        return real(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    save_overview(tmp_path / "o.png", [("case1", tmp_path / "img.nii.gz", tmp_path / "pred.nii.gz",
                                        {"ventricles": 0.81, "grey_matter": 0.9, "white_matter": 0.77})])
    assert (tmp_path / "o.png").stat().st_size > 1000
    assert seen["legend"] == ["ventricles", "grey matter", "white matter"]
    assert "ventricles 0.81" in seen["titles"][0] and "white matter 0.77" in seen["titles"][0]
