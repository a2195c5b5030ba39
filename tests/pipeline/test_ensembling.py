"""Agreement-weighted ensembling (``nnzoo.pipeline.ensembling``): the rule on hand-made arrays, the merge of two
hand-made prediction folders (the CLI runs on trained models are in ``test_selection.py``)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnzoo.pipeline.ensembling import WEIGHTS_FILE, agreement, merge_by_agreement, mix
from nnzoo.pipeline.errors import NnzooError

DATA = Path(__file__).parents[1] / "data"


def test_agreement_is_the_mean_foreground_dice():
    a = np.zeros((4, 4), dtype=np.uint8)
    b = np.zeros((4, 4), dtype=np.uint8)
    a[:2] = 1  # 8 voxels of label 1
    b[:1] = 1  # 4 of them
    a[3, :2] = 2
    b[3, 2:] = 2  # label 2 disjoint
    assert agreement(a, b, [1, 2]) == pytest.approx((2 * 4 / 12 + 0.0) / 2)
    assert agreement(a, a, [1, 2]) == 1.0
    assert agreement(a, b, [1, 2, 3]) == pytest.approx((2 * 4 / 12 + 0.0 + 1.0) / 3)  # label 3 in neither: agreed
    assert agreement(a, b, []) == 1.0
    with pytest.raises(ValueError, match="shapes"):
        agreement(a, b[:2], [1])


def test_mix_weights_the_specialist_by_the_weight():
    p, q = np.array([[0.9, 0.1]], dtype=np.float16), np.array([[0.2, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(mix(p, q, 1.0), p.astype(np.float32))
    np.testing.assert_allclose(mix(p, q, 0.0), q)
    np.testing.assert_allclose(mix(p, q, 0.25), 0.25 * p.astype(np.float32) + 0.75 * q, rtol=1e-6)
    assert mix(p, q, 0.5).dtype == np.float32
    with pytest.raises(ValueError, match="weight 1.5"):
        mix(p, q, 1.5)
    with pytest.raises(ValueError, match="shapes"):
        mix(p, q[:, :1], 0.5)


def _one_hot(seg: np.ndarray, num_classes: int, sure: float = 0.9) -> np.ndarray:
    """Probabilities (C, 1, H, W) whose argmax is ``seg``: ``sure`` on the label, the rest spread."""
    rest = (1.0 - sure) / (num_classes - 1)
    p = np.full((num_classes, 1, *seg.shape), rest, dtype=np.float32)
    for k in range(num_classes):
        p[k, 0][seg == k] = sure
    return p


def _member(folder: Path, cases: dict[str, np.ndarray], sure: float, properties: dict) -> Path:
    folder.mkdir(parents=True)
    for case, seg in cases.items():
        np.savez_compressed(folder / f"{case}.npz", probabilities=_one_hot(seg, 3, sure))
        (folder / f"{case}.pkl").write_bytes(pickle.dumps(properties))
    return folder


@pytest.fixture
def properties(tmp_path):
    """nnU-Net's image properties of a 1 x 8 x 8 NIfTI image (what a prediction's .pkl holds)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    f = tmp_path / "img.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 8, 8), dtype=np.float32)), str(f))
    return SimpleITKIO().read_images([str(f)])[1]


def test_merge_by_agreement_follows_the_specialist_where_they_agree_and_the_generalist_where_not(tmp_path,
                                                                                                   properties):
    plans = json.loads((DATA / "tiny_plans.json").read_text())
    dataset = json.loads((DATA / "tiny_dataset.json").read_text())
    base = np.zeros((8, 8), dtype=np.uint8)
    base[2:6, 2:6] = 1
    base[3:5, 3:5] = 2
    shifted = np.roll(base, 1, axis=1)  # a small disagreement: the specialist (more confident) decides
    wrong = np.zeros((8, 8), dtype=np.uint8)
    wrong[0:2, :] = 2  # nothing in common: the generalist decides
    specialist = _member(tmp_path / "s", {"same": base, "near": shifted, "far": wrong}, 0.95, properties)
    generalist = _member(tmp_path / "g", {"same": base, "near": base, "far": base}, 0.6, properties)
    weights = merge_by_agreement([specialist, generalist], tmp_path / "out", dataset_json=dataset, plans=plans)

    def seg(case):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz")))[0]

    assert weights["same"]["agreement"] == 1.0 and weights["same"]["weights"] == [1.0, 0.0]
    np.testing.assert_array_equal(seg("same"), base)
    assert weights["far"]["agreement"] == 0.0 and weights["far"]["weights"] == [0.0, 1.0]
    np.testing.assert_array_equal(seg("far"), base)
    a = weights["near"]["agreement"]
    assert a == pytest.approx(agreement(shifted, base, [1, 2]), abs=1e-6) and 0.3 < a < 1
    np.testing.assert_array_equal(seg("near"), shifted)  # a*0.95 + (1-a)*0.2 beats a*0.025 + (1-a)*0.6 here
    record = json.loads((tmp_path / "out" / WEIGHTS_FILE).read_text())
    assert record["weighting"] == "agreement" and record["cases"] == weights
    assert record["members"] == [str(specialist), str(generalist)]


def test_merge_by_agreement_refuses_mismatched_members(tmp_path, properties):
    plans = json.loads((DATA / "tiny_plans.json").read_text())
    dataset = json.loads((DATA / "tiny_dataset.json").read_text())
    seg = np.zeros((8, 8), dtype=np.uint8)
    a = _member(tmp_path / "a", {"c1": seg, "c2": seg}, 0.9, properties)
    b = _member(tmp_path / "b", {"c1": seg}, 0.9, properties)
    with pytest.raises(NnzooError, match="differ in cases .*c2"):
        merge_by_agreement([a, b], tmp_path / "out", dataset_json=dataset, plans=plans)
    with pytest.raises(NnzooError, match="takes 2 models"):
        merge_by_agreement([a], tmp_path / "out", dataset_json=dataset, plans=plans)
    assert not (tmp_path / "out").exists()
