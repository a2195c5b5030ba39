"""Domains as data (issue 21): ``dataset create --domains``, domains.json through planning, ``evaluate --groups``
and the report's pictures (one label colour map with the demo, a legend, tick labels no larger than titles)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnzoo.pipeline.cli import main
from nnzoo.pipeline.errors import NnzooError
from nnzoo.pipeline.metrics import NO_GROUP, summarize_groups
from nnzoo.pipeline.synthetic import write_synthetic_folders
from nnzoo.trainers.domains import DOMAINS_FILE, dataset_domains

SRC_DOMAINS = {"case000": "T1", "case001": "T1", "case002": "T2", "unl000": "FLAIR"}


@pytest.fixture
def src(tmp_path):
    """3 labeled NIfTI cases (8x10x12) and 1 unlabeled image."""
    return write_synthetic_folders(tmp_path / "src", num_cases=3, shape=(8, 10, 12), num_classes=3, num_unlabeled=1,
                                   seed=1)


def _create(src, domains_file: Path, *extra: str, dataset_id: int = 71) -> int:
    return main(["dataset", "create", "--images", str(src["images"]), "--labels", str(src["labels"]), "--name", "Dom",
                 "--id", str(dataset_id), "--channel", "MR", "--unlabeled", str(src["unlabeled"]), "--domains",
                 str(domains_file), *extra])


def _raw() -> Path:
    return Path(os.environ["nnUNet_raw"])


# ------------------------------------------------------------------------------------------ dataset create
@pytest.mark.parametrize("kind", ["csv", "json"])
def test_create_stores_domains_of_labeled_and_unlabeled_cases(workdir, src, tmp_path, kind, capsys):
    f = tmp_path / f"d.{kind}"
    if kind == "csv":  # a header, spaces and a blank line are fine
        f.write_text("case,domain\n" + "".join(f" {c} , {d}\n" for c, d in SRC_DOMAINS.items()) + "\n")
    else:
        f.write_text(json.dumps(SRC_DOMAINS))
    assert _create(src, f) == 0
    stored = json.loads((_raw() / "Dataset071_Dom" / DOMAINS_FILE).read_text())
    assert stored == SRC_DOMAINS
    assert "domains FLAIR 1, T1 2, T2 1" in capsys.readouterr().out


@pytest.mark.parametrize("mapping,needles", [
    ({k: v for k, v in SRC_DOMAINS.items() if k != "unl000"}, ["no domain", "unl000"]),
    ({k: v for k, v in SRC_DOMAINS.items() if k != "case001"}, ["no domain", "case001"]),
    ({**SRC_DOMAINS, "case404": "T1"}, ["not in the dataset", "case404"]),
    ({"case000": "T1", "case404": "T1"}, ["case001, case002, unl000", "case404"]),
])
def test_create_refuses_a_domains_file_that_does_not_fit(workdir, src, tmp_path, capsys, mapping, needles):
    f = tmp_path / "d.json"
    f.write_text(json.dumps(mapping))
    assert _create(src, f) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --domains {f}: ")
    assert all(n in err[0] for n in needles), err[0]
    assert not list(_raw().iterdir()), "nothing may be written"


def test_hand_placed_domains_json_is_checked_with_the_raw_dataset(workdir, src, tmp_path):
    from nnzoo.pipeline.dataset import check_raw_dataset, raw_domains

    f = tmp_path / "d.json"
    f.write_text(json.dumps(SRC_DOMAINS))
    assert _create(src, f) == 0
    raw = _raw() / "Dataset071_Dom"
    dj, cases, unl = check_raw_dataset(raw, 1)
    assert raw_domains(raw, dj, cases, unl) == SRC_DOMAINS
    (raw / "labelsTs").mkdir()  # held-out cases may have a domain too (evaluate -d groups them)
    (raw / "labelsTs" / "test7.nii.gz").write_bytes(b"")
    (raw / DOMAINS_FILE).write_text(json.dumps({**SRC_DOMAINS, "test7": "T2"}))
    assert raw_domains(raw, dj, cases, unl)["test7"] == "T2"
    (raw / DOMAINS_FILE).write_text(json.dumps({**SRC_DOMAINS, "case002": None}))
    with pytest.raises(NnzooError, match="domain of 'case002' must be a string"):
        check_raw_dataset(raw, 1)
    (raw / DOMAINS_FILE).write_text(json.dumps({k: v for k, v in SRC_DOMAINS.items() if k != "case002"}))
    with pytest.raises(NnzooError, match=f"{raw / DOMAINS_FILE}: no domain for 1 case.*case002"):
        check_raw_dataset(raw, 1)


@pytest.mark.slow
def test_plan_copies_domains_beside_dataset_json_not_into_the_data_folder(workdir, tmp_path):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    src = write_synthetic_folders(tmp_path / "png", num_cases=5, shape=(16, 16), num_classes=3, file_ending=".png",
                                  num_unlabeled=1, seed=7)
    domains = {**{f"case{i:03d}": "A" if i < 3 else "B" for i in range(5)}, "unl000": "C"}
    (tmp_path / "d.json").write_text(json.dumps(domains))
    assert _create(src, tmp_path / "d.json", dataset_id=72) == 0
    assert main(["plan_and_preprocess", "-d", "72", "-c", "2d", "-np", "1"]) == 0
    pre = Path(os.environ["nnUNet_preprocessed"]) / "Dataset072_Dom"
    assert json.loads((pre / DOMAINS_FILE).read_text()) == domains
    assert not list(pre.rglob(f"*/{DOMAINS_FILE}")), "never inside a data folder"
    infer_dataset_class(str(pre / "nnUNetPlans_2d"))  # nnU-Net still recognises the data format
    os.rename(_raw() / "Dataset072_Dom" / DOMAINS_FILE, tmp_path / "moved.json")  # only the preprocessed copy
    assert dataset_domains(pre) == domains
    assert main(["plan_and_preprocess", "-d", "72", "-c", "2d", "-np", "1", "--no_pp"]) == 0  # no raw one: no copy
    assert not (pre / DOMAINS_FILE).exists() and dataset_domains(pre) is None


# ---------------------------------------------------------------------------------------------- evaluate
def _write(arr: np.ndarray, path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.uint8)), str(path))


def _reference() -> np.ndarray:
    ref = np.zeros((3, 10, 10), np.uint8)
    ref[:, 2:6, 2:6] = 1  # 48 voxels
    ref[:, 7:9, 7:9] = 2  # 12 voxels
    return ref


@pytest.fixture
def seg_folders(tmp_path):
    """References and predictions with known Dice: a1, a2 and x1 perfect; b1 half of label 1 (Dice 2/3), no label 2
    (Dice 0); ``ref`` also holds ``c9`` without a prediction."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    for case in ("a1", "a2", "x1", "b1", "c9"):
        _write(_reference(), ref_dir / f"{case}.nii.gz")
    for case in ("a1", "a2", "x1"):
        _write(_reference(), pred_dir / f"{case}.nii.gz")
    half = np.zeros((3, 10, 10), np.uint8)
    half[:, 2:6, 2:4] = 1  # 24 voxels, all inside the reference's label 1
    _write(half, pred_dir / "b1.nii.gz")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "ventricles": 1, "grey_matter": 2}}))
    return ref_dir, pred_dir, labels


def _evaluate(ref_dir, pred_dir, out, *extra) -> int:
    return main(["evaluate", "-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out), "-np", "1", *extra])


def _check_groups(out: Path, *, no_group: bool) -> None:
    res = json.loads((out / "summary.json").read_text())
    g = res["groups"]
    assert sorted(g) == sorted(["A", "B"] + ([NO_GROUP] if no_group else []))  # (summary.json's keys are sorted)
    assert g["A"]["n"] == 2 and g["B"]["n"] == 1
    assert g["A"]["foreground_mean"]["Dice"] == pytest.approx(1.0)
    assert g["B"]["mean"]["1"]["Dice"] == pytest.approx(2 / 3)
    assert g["B"]["mean"]["2"]["Dice"] == 0.0
    assert g["B"]["foreground_mean"]["Dice"] == pytest.approx(1 / 3)
    assert g["B"]["mean"]["1"]["n_pred"] == 24 and g["B"]["mean"]["1"]["n_ref"] == 48
    if no_group:
        assert g[NO_GROUP]["n"] == 1 and res["cases_without_group"] == ["x1"]
    assert res["mean"]["1"]["Dice"] == pytest.approx((3 + 2 / 3) / 4)  # the overall means are unchanged
    assert {c["case"]: c["group"] for c in res["metric_per_case"]}["b1"] == "B"
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["case"], r["group"]) for r in rows} >= {("a1", "A"), ("b1", "B")}
    with open(out / "summary_groups.csv") as f:
        rows = {(r["group"], r["label"]): r for r in csv.DictReader(f)}
    assert float(rows["B", "foreground"]["Dice"]) == pytest.approx(1 / 3)
    assert float(rows["B", "1"]["Dice"]) == pytest.approx(2 / 3) and rows["B", "1"]["name"] == "ventricles"
    assert rows["A", "2"]["n"] == "2"
    html = (out / "report.html").read_text()
    assert "Mean per group" in html and "B (1 case)" in html and "A (2 cases)" in html
    assert (NO_GROUP in html) == no_group


@pytest.mark.slow
def test_evaluate_groups_file_gives_means_per_group(seg_folders, tmp_path, capsys):
    ref_dir, pred_dir, labels = seg_folders
    groups = tmp_path / "g.csv"
    groups.write_text("case,domain\na1,A\na2,A\nb1,B\nc9,B\n")  # c9: a reference without prediction, allowed
    assert _evaluate(ref_dir, pred_dir, tmp_path / "out", "--labels", str(labels), "--groups", str(groups)) == 0
    out = capsys.readouterr().out
    assert "B (n=1)" in out and "1 case(s) without a group" in out and "x1" in out
    _check_groups(tmp_path / "out", no_group=True)


@pytest.mark.slow
def test_evaluate_defaults_to_the_datasets_domains(seg_folders, workdir, tmp_path, capsys):
    ref_dir, pred_dir, _ = seg_folders
    images = tmp_path / "images"
    images.mkdir()
    for f in ref_dir.iterdir():
        _write(_reference() * 40, images / f.name)
    dom = tmp_path / "d.json"
    dom.write_text(json.dumps({"a1": "A", "a2": "A", "b1": "B", "x1": "A", "c9": "C"}))
    assert main(["dataset", "create", "--images", str(images), "--labels", str(ref_dir), "--name", "Grp", "--id", "73",
                 "--channel", "MR", "--label", "1=ventricles", "--label", "2=grey_matter", "--domains", str(dom)]) == 0
    assert _evaluate(ref_dir, pred_dir, tmp_path / "d", "-d", "73") == 0
    res = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert {g: v["n"] for g, v in res["groups"].items()} == {"A": 3, "B": 1}  # c9 has no prediction: no group C
    assert res["groups"]["B"]["foreground_mean"]["Dice"] == pytest.approx(1 / 3)
    assert res["groups_source"].endswith(DOMAINS_FILE)
    # --groups wins over the dataset's domains
    (tmp_path / "g.json").write_text(json.dumps({"a1": "A", "a2": "A", "b1": "B"}))
    assert _evaluate(ref_dir, pred_dir, tmp_path / "g", "-d", "73", "--groups", str(tmp_path / "g.json")) == 0
    _check_groups(tmp_path / "g", no_group=True)
    # predictions of cases the dataset's domains.json does not name (e.g. a test set): no groups, a note
    other_ref, other_pred = tmp_path / "ref2", tmp_path / "pred2"
    for d in (other_ref, other_pred):
        d.mkdir()
        _write(_reference(), d / "new1.nii.gz")
    capsys.readouterr()
    assert _evaluate(other_ref, other_pred, tmp_path / "n", "-d", "73") == 0
    assert "names none of the predicted cases" in capsys.readouterr().out
    assert "groups" not in json.loads((tmp_path / "n" / "summary.json").read_text())


def test_groups_errors_name_the_file_and_cases(seg_folders, tmp_path):
    from nnzoo.pipeline.evaluate import evaluate_folders

    ref_dir, pred_dir, _ = seg_folders
    with pytest.raises(NnzooError, match="src: 1 case.*not in the reference folder: zz"):
        evaluate_folders(ref_dir, pred_dir, labels=[1, 2], groups={"a1": "A", "zz": "B"}, groups_source="src")
    with pytest.raises(NnzooError, match="src: names none of the 4 evaluated case"):
        evaluate_folders(ref_dir, pred_dir, labels=[1, 2], groups={"c9": "B"}, groups_source="src")


def test_summarize_groups_by_hand():
    def case(name, d1, d2):
        return {"case": name, "metrics": {1: {"Dice": d1}, 2: {"Dice": d2}}}

    per_case = [case("p", 1.0, math.nan), case("q", 0.5, 0.25), case("r", 0.0, 1.0), case("s", 0.2, 0.4)]
    g = summarize_groups(per_case, [1, 2], {"p": "X", "q": "X", "r": "Y"})
    assert list(g) == ["X", "Y", NO_GROUP]
    assert g["X"]["n"] == 2 and g["X"]["mean"][1]["Dice"] == 0.75
    assert g["X"]["mean"][2]["Dice"] == 0.25  # NaN (both masks empty) skipped, as in the overall mean
    assert g["X"]["foreground_mean"]["Dice"] == 0.5
    assert g["Y"]["foreground_mean"]["Dice"] == 0.5 and g[NO_GROUP]["mean"][2]["Dice"] == 0.4


# ------------------------------------------------------------------------------------------------ pictures
def test_boxplot_tick_labels_are_not_larger_than_titles():
    import matplotlib.pyplot as plt

    from nnzoo.pipeline.report import boxplot_figure

    per_case = [{"case": f"c{i}", "metrics": {k: {"Dice": 0.1 * i + k / 10, "NSD": 0.5, "HD95": float(i), "ASSD": 1.0}
                                              for k in (1, 2)}} for i in range(4)]
    result = {"mean": {1: {}, 2: {}}, "class_names": {"1": "white_matter", "2": "grey_matter"},
              "metric_per_case": per_case}
    fig = boxplot_figure(result)
    try:
        titles = [ax.title.get_fontsize() for ax in fig.axes]
        ticks = [t.get_fontsize() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()]
        assert ticks and max(ticks) <= min(titles)
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["white matter", "grey matter"]
    finally:
        plt.close(fig)


def test_overlay_has_a_legend_in_the_demos_colours(tmp_path, monkeypatch):
    import matplotlib.figure
    import matplotlib.pyplot as plt

    from nnzoo.pipeline.demo import DEMO_LABELS, save_overview
    from nnzoo.pipeline.report import overlay_figure

    y = np.zeros((1, 24, 24), np.uint8)
    y[0, 4:20, 4:20] = 2
    y[0, 8:16, 8:16] = 3
    y[0, 10:12, 5:8] = 1
    _write(y, tmp_path / "seg.nii.gz")
    _write(y * 40, tmp_path / "img.nii.gz")
    seen = {}
    real = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        seen["legend"] = {t.get_text(): tuple(p.get_facecolor()[:3])
                          for lg in fig.legends for t, p in zip(lg.get_texts(), lg.get_patches())}
        seen["layer"] = fig.axes[0].get_images()[1].get_array()
        return real(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    save_overview(tmp_path / "o.png", [("c", tmp_path / "img.nii.gz", tmp_path / "seg.nii.gz", {})])
    demo_legend, demo_layer = seen["legend"], seen["layer"]
    case = {"reference_file": str(tmp_path / "seg.nii.gz"), "prediction_file": str(tmp_path / "seg.nii.gz")}
    fig = overlay_figure(case, tmp_path / "img.nii.gz", "best", DEMO_LABELS)
    try:
        legend = {t.get_text(): tuple(p.get_facecolor()[:3])
                  for lg in fig.legends for t, p in zip(lg.get_texts(), lg.get_patches())}
        assert list(legend) == ["ventricles", "grey matter", "white matter"]
        assert legend == demo_legend
        assert len(set(legend.values())) == 3
        layer = fig.axes[1].get_images()[1].get_array()  # the reference panel's labels
        for v in (1, 2, 3):  # each class drawn in the same colour as in the demo's overview
            at = tuple(np.argwhere(y[0] == v)[0])
            assert np.allclose(layer[at][:3], demo_layer[at][:3])
            assert np.allclose(layer[at][:3], legend[DEMO_LABELS[v].replace("_", " ")], atol=1e-6)
        assert layer[0, 0][3] == 0  # background transparent
    finally:
        plt.close(fig)
