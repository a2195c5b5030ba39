"""nnzoo.pipeline.evaluate: metric conventions, hand-made distances, cross-checks with medpy and a
KD-tree implementation, label/region handling, and the folder API (JSON superset of nnU-Net's
summary.json, CSV, HTML)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion, generate_binary_structure
from scipy.spatial import cKDTree

from nnzoo.pipeline.errors import NnzooError
from nnzoo.pipeline.evaluate import (
    binary_metrics,
    compute_pair_metrics,
    evaluate_case,
    evaluate_folders,
    resolve_labels,
    surface_distances,
)
from nnzoo.pipeline.metrics import dice
from nnzoo.pipeline.report import find_image

BACKENDS = ["edt", "scipy"]


def _kdtree_metrics(ref: np.ndarray, pred: np.ndarray, spacing, tol: float) -> dict:
    """Independent reference: surfaces by scipy erosion, distances by a KD-tree on mm coordinates."""
    fp = generate_binary_structure(ref.ndim, 1)
    surf = [m & ~binary_erosion(m, fp, border_value=0) for m in (ref, pred)]
    pts = [np.argwhere(s) * np.asarray(spacing, float) for s in surf]
    d_pred = cKDTree(pts[0]).query(pts[1])[0]
    d_ref = cKDTree(pts[1]).query(pts[0])[0]
    pooled = np.concatenate([d_pred, d_ref])
    return {"HD95": np.percentile(pooled, 95), "HD": pooled.max(), "ASSD": pooled.mean(),
            "NSD": np.mean(pooled <= tol + 1e-9)}


def _random_pair(rng, shape):
    """Blobby random masks (smoothed noise), one of them touching the image border."""
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(rng.normal(size=shape), 1.5) > 0.05
    b = gaussian_filter(rng.normal(size=shape), 1.5) > 0.0
    a[(0,) * len(shape)] = b[(-1,) * len(shape)] = True
    return a, b


# ------------------------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("shape", [(8, 9), (5, 6, 7)])
def test_empty_conventions(shape):
    spacing = (2.0,) + (1.0,) * (len(shape) - 1)
    empty, full = np.zeros(shape, bool), np.zeros(shape, bool)
    full[(slice(1, 3),) * len(shape)] = True
    both = binary_metrics(empty, empty, spacing)
    assert all(math.isnan(both[k]) for k in ("Dice", "IoU", "NSD", "HD95", "HD", "ASSD"))
    assert both["volume_ref_mm3"] == both["volume_pred_mm3"] == 0 and both["TN"] == empty.size
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))
    for ref, pred in ((empty, full), (full, empty)):
        m = binary_metrics(ref, pred, spacing)
        assert m["Dice"] == m["IoU"] == m["NSD"] == 0.0
        assert m["HD95"] == m["HD"] == m["ASSD"] == pytest.approx(diagonal)
        assert math.isnan(binary_metrics(ref, pred, spacing, empty_distance="nan")["HD95"])
    m = binary_metrics(full, full, spacing)
    assert m["Dice"] == m["NSD"] == 1.0 and m["HD95"] == m["ASSD"] == 0.0
    assert m["volume_ref_mm3"] == pytest.approx(2.0 * 2 ** len(shape))
    with pytest.raises(ValueError):
        binary_metrics(full, empty, spacing, empty_distance="zero")
    with pytest.raises(ValueError):
        surface_distances(full, empty, spacing)


# -------------------------------------------------------------------------------------- known distances
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_offset_planes_and_cubes(backend, axis):
    """Planes k voxels apart: every distance is k * spacing; offset cubes: HD = k * spacing."""
    spacing, k, shape = (2.5, 0.7, 1.3), 3, (14, 15, 16)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    idx = [slice(None)] * 3
    idx[axis] = 4
    a[tuple(idx)] = True
    idx[axis] = 4 + k
    b[tuple(idx)] = True
    m = binary_metrics(a, b, spacing, tolerance_mm=k * spacing[axis], backend=backend)
    for key in ("HD95", "HD", "ASSD"):
        assert m[key] == pytest.approx(k * spacing[axis], rel=1e-5)
    assert m["NSD"] == 1.0 and m["Dice"] == 0.0
    assert binary_metrics(a, b, spacing, tolerance_mm=0.99 * k * spacing[axis], backend=backend)["NSD"] == 0.0
    a[:], b[:] = False, False
    box = [slice(3, 10)] * 3
    a[tuple(box)] = True
    box[axis] = slice(3 + k, 10 + k)
    b[tuple(box)] = True
    m = binary_metrics(a, b, spacing, backend=backend)
    assert m["HD"] == pytest.approx(k * spacing[axis], rel=1e-5)
    assert m["Dice"] == pytest.approx(2 * 7 ** 2 * (7 - k) / (2 * 7 ** 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nsd_hand_example_2d(backend):
    """Lines; pooled distances worked out by hand: pred [0,0,0,0,6,6,6,6], ref [0,0,0,0,1,2,3,4] mm."""
    ref, pred = np.zeros((12, 12), bool), np.zeros((12, 12), bool)
    ref[5, 2:10] = True
    pred[5, 2:6] = True
    pred[8, 6:10] = True
    spacing = (2.0, 1.0)
    d_pred, d_ref = surface_distances(ref, pred, spacing, backend=backend)
    assert sorted(d_pred) == pytest.approx([0, 0, 0, 0, 6, 6, 6, 6])
    assert sorted(d_ref) == pytest.approx([0, 0, 0, 0, 1, 2, 3, 4])
    assert binary_metrics(ref, pred, spacing, 2.0, backend=backend)["NSD"] == pytest.approx(10 / 16)
    m = binary_metrics(ref, pred, spacing, 4.0, backend=backend)
    assert m["NSD"] == pytest.approx(12 / 16)
    assert (m["HD"], m["HD95"], m["ASSD"]) == pytest.approx((6.0, 6.0, 34 / 16))


# ------------------------------------------------------------------------------------------ cross-checks
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,spacing", [((23, 31), (0.7, 1.9)), ((11, 14, 17), (3.0, 0.8, 1.1))])
def test_random_masks_match_medpy_and_kdtree(backend, shape, spacing):
    from medpy.metric import binary as mb

    rng = np.random.default_rng(len(shape))
    for _ in range(3):
        ref, pred = _random_pair(rng, shape)
        m = binary_metrics(ref, pred, spacing, tolerance_mm=1.5, backend=backend)
        assert m["HD95"] == pytest.approx(mb.hd95(pred, ref, voxelspacing=spacing), rel=1e-5)
        assert m["HD"] == pytest.approx(mb.hd(pred, ref, voxelspacing=spacing), rel=1e-5)
        assert m["ASSD"] == pytest.approx(mb.assd(pred, ref, voxelspacing=spacing), rel=1e-5)
        assert m["Dice"] == pytest.approx(mb.dc(pred, ref))
        assert m["IoU"] == pytest.approx(mb.jc(pred, ref))
        kd = _kdtree_metrics(ref, pred, spacing, 1.5)
        for k in ("HD95", "HD", "ASSD", "NSD"):
            assert m[k] == pytest.approx(kd[k], rel=1e-5, abs=1e-9), k


def test_singleton_axis_is_2d():
    rng = np.random.default_rng(5)
    ref, pred = _random_pair(rng, (20, 24))
    two_d = compute_pair_metrics(ref.astype(np.uint8), pred.astype(np.uint8), [1], (0.5, 0.9))
    three_d = compute_pair_metrics(ref[None].astype(np.uint8), pred[None].astype(np.uint8), [1], (5.0, 0.5, 0.9))
    assert three_d[1]["HD95"] == pytest.approx(two_d[1]["HD95"])
    assert three_d[1]["volume_ref_mm3"] == pytest.approx(two_d[1]["volume_ref_mm3"])


# ------------------------------------------------------------------------------------ labels and regions
def test_resolve_labels_and_regions_and_ignore():
    lab = resolve_labels({"labels": {"background": 0, "liver": 1, "tumor": 2, "ignore": 3}})
    assert lab.labels_or_regions == [1, 2] and lab.ignore_label == 3 and lab.names == {"1": "liver", "2": "tumor"}
    reg = resolve_labels({"labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2]})
    assert reg.labels_or_regions == [(1, 2), (2,)] and reg.names["(1, 2)"] == "whole"
    assert resolve_labels([1, (1, 2)]).labels_or_regions == [1, (1, 2)]
    with pytest.raises(NnzooError):
        resolve_labels({"labels": {"background": 0}})

    ref = np.zeros((10, 10), np.uint8)
    ref[2:6, 2:6], ref[3:5, 3:5], ref[7:, 7:] = 1, 2, 3  # label 3 = ignore
    pred = ref.copy()
    pred[pred == 3] = 1  # predictions inside the ignore area do not count
    m = compute_pair_metrics(ref, pred, {"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}}, (1.0, 1.0))
    assert m[1]["Dice"] == 1.0 and m[1]["FP"] == 0 and m[1]["TN"] == 100 - 9 - 12
    m = compute_pair_metrics(ref, pred, [(1, 2)], (1.0, 1.0))
    assert m[(1, 2)]["n_ref"] == 16 and m[(1, 2)]["n_pred"] == 25


# ------------------------------------------------------------------------------------------------ folders
def _write(arr, path, spacing):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path):
    """4 cases (13x16x18, spacing 2.0/0.8/1.1): labels 1 and 2, one case with label 2 missing in the prediction."""
    rng = np.random.default_rng(0)
    spacing = (2.0, 0.8, 1.1)
    dirs = {k: tmp_path / k for k in ("ref", "pred", "img")}
    for d in dirs.values():
        d.mkdir()
    for i in range(4):
        a, b = _random_pair(rng, (13, 16, 18))
        ref = a.astype(np.uint8)
        ref[4:8, 5:10, 5:12] = 2
        pred = b.astype(np.uint8)
        if i != 3:
            pred[4:8, 6:10, 5:13] = 2
        _write(ref, dirs["ref"] / f"case{i}.nii.gz", spacing)
        _write(pred, dirs["pred"] / f"case{i}.nii.gz", spacing)
        _write(ref * 50 + rng.integers(0, 30, ref.shape), dirs["img"] / f"case{i}_0000.nii.gz", spacing)
    _write(ref, dirs["ref"] / "unpredicted.nii.gz", spacing)
    return dirs, spacing


def test_evaluate_case_reads_spacing(folders):
    from nnzoo.pipeline.evaluate import read_segmentation

    dirs, spacing = folders
    out = evaluate_case(str(dirs["ref"] / "case0.nii.gz"), str(dirs["pred"] / "case0.nii.gz"), resolve_labels([1, 2]))
    assert out["spacing"] == pytest.approx(spacing) and out["case"] == "case0"
    ref, _ = read_segmentation(dirs["ref"] / "case0.nii.gz")
    pred, _ = read_segmentation(dirs["pred"] / "case0.nii.gz")
    assert out["metrics"][2] == compute_pair_metrics(ref, pred, [2], out["spacing"])[2]


@pytest.mark.slow
def test_evaluate_folders_superset_of_nnunet(folders, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    dirs, _ = folders
    ds = {"labels": {"background": 0, "organ": 1, "lesion": 2}}
    res = evaluate_folders(dirs["ref"], dirs["pred"], labels=ds, tolerance_mm=2.0, output_dir=tmp_path / "out",
                           num_processes=2, image_dir=dirs["img"])
    assert res["cases_without_prediction"] == ["unpredicted"]
    compute_metrics_on_folder(str(dirs["ref"]), str(dirs["pred"]), str(tmp_path / "nn.json"), SimpleITKIO(),
                              ".nii.gz", [1, 2], num_processes=1)
    ours = load_summary_json(res["files"]["summary_json"])  # nnU-Net's own loader reads our file
    theirs = load_summary_json(str(tmp_path / "nn.json"))
    assert set(theirs) <= set(ours)
    for a, b in zip(ours["metric_per_case"], theirs["metric_per_case"]):
        assert a["prediction_file"] == b["prediction_file"]
        for r in (1, 2):
            assert set(b["metrics"][r]) <= set(a["metrics"][r])
            for k, v in b["metrics"][r].items():
                assert a["metrics"][r][k] == pytest.approx(v, nan_ok=True), k
    for r in (1, 2):
        for k, v in theirs["mean"][r].items():
            assert ours["mean"][r][k] == pytest.approx(v)
    for k, v in theirs["foreground_mean"].items():
        assert ours["foreground_mean"][k] == pytest.approx(v)
    assert ours["mean"][2]["NSD"] == pytest.approx(np.mean([c["metrics"][2]["NSD"] for c in ours["metric_per_case"]]))
    assert ours["metric_per_case"][3]["metrics"][2]["Dice"] == 0.0  # label 2 missing in the prediction
    assert ours["tolerance_mm"] == 2.0 and ours["class_names"] == {"1": "organ", "2": "lesion"}

    with open(res["files"]["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 2 and rows[0]["case"] == "case0" and rows[1]["name"] == "lesion"
    assert float(rows[1]["HD95"]) == pytest.approx(ours["metric_per_case"][0]["metrics"][2]["HD95"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "lesion" in html and "case3" in html
    for png in ("boxplots.png", "overlay_best.png", "overlay_worst.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    json.loads((tmp_path / "out" / "summary.json").read_text().replace("NaN", "null"))


def test_evaluate_folders_errors_and_no_output(folders, tmp_path):
    from nnzoo.pipeline.metrics import summary_table

    dirs, spacing = folders
    res = evaluate_folders(dirs["ref"], dirs["pred"], labels=[1, 2], num_processes=1)
    assert res["files"] == {} and len(res["metric_per_case"]) == 4
    table = summary_table(res)
    assert "foreground mean" in table and f"{res['foreground_mean']['Dice']:.4f}" in table
    (tmp_path / "labels.json").write_text("[2]")
    for _ in range(2):  # writing into the prediction folder: the report's PNGs are not taken for cases
        res = evaluate_folders(dirs["ref"], dirs["pred"], labels=tmp_path / "labels.json", output_dir=dirs["pred"])
        assert list(res["mean"]) == [2] and len(res["metric_per_case"]) == 4
    _write(np.zeros((3, 4, 5)), dirs["pred"] / "stranger.nii.gz", spacing)
    with pytest.raises(NnzooError, match="no reference"):
        evaluate_folders(dirs["ref"], dirs["pred"], labels=[1])
    _write(np.zeros((3, 4, 5)), dirs["ref"] / "stranger.nii.gz", spacing[:2] + (1.0,))
    _write(np.zeros((3, 4, 6)), dirs["pred"] / "stranger.nii.gz", spacing)
    with pytest.raises(NnzooError, match="shape"):
        evaluate_folders(dirs["ref"], dirs["pred"], labels=[1])
    with pytest.raises(NnzooError, match="not found"):
        evaluate_folders(tmp_path / "nope", dirs["pred"], labels=[1])
    assert find_image(dirs["img"], "case1").name == "case1_0000.nii.gz"
    assert find_image(dirs["img"], "nope") is None and find_image(None, "case1") is None


def test_dice_alone_equals_binary_metrics_and_is_nan_for_two_empty_masks():
    ref = np.zeros((6, 6), bool)
    ref[:3] = True
    pred = np.zeros((6, 6), bool)
    pred[1:4] = True
    assert dice(ref, pred) == pytest.approx(binary_metrics(ref, pred, (1.0, 1.0))["Dice"]) == pytest.approx(2 / 3)
    assert math.isnan(dice(np.zeros((3, 3), bool), np.zeros((3, 3), bool)))
