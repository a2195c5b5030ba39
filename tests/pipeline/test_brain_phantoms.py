"""Brain phantoms: determinism per seed, geometry and labels, contrasts, held-out test cases, labeled choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnzoo.pipeline import brain_phantoms as bp

SMALL = {"shape": (40, 48), "spacing": 4.5}


def test_same_seed_same_arrays_other_seed_differs():
    a = bp.make_subject(np.random.default_rng(3), acquisition="t2", **SMALL)
    b = bp.make_subject(np.random.default_rng(3), acquisition="t2", **SMALL)
    c = bp.make_subject(np.random.default_rng(4), acquisition="t2", **SMALL)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("acq", list(bp.ACQUISITIONS))
def test_labels_geometry_and_tissue_ordering(acq):
    params = bp.sample_subject(np.random.default_rng(11), acquisition=acq)
    json.dumps(params)  # the manifest stores it
    img, lab, sp = bp.render_subject(params, **SMALL)
    assert img.shape == lab.shape == SMALL["shape"] and sp == (4.5, 4.5)
    assert img.dtype == np.float32 and lab.dtype == np.uint8 and np.isfinite(img).all() and img.min() >= 0
    assert set(np.unique(lab)) == set(bp.LABELS)
    assert lab[0].max() == lab[-1].max() == 0  # brain inside the field of view
    mean = {c: img[lab == c].mean() for c in bp.LABELS}
    contrast = bp.ACQUISITIONS[acq]["contrast"]
    if contrast == "T1":
        assert mean[3] > mean[2] > mean[1]
    elif contrast == "T2":
        assert mean[1] > mean[2] > mean[3]
    else:  # FLAIR: grey > white > ventricles
        assert mean[2] > mean[3] > mean[1]


def test_2d_case_is_the_middle_slice_of_the_3d_case():
    params = bp.sample_subject(np.random.default_rng(5), acquisition="flair")
    img2, lab2, _ = bp.render_subject(params, dim=2, **SMALL)
    img3, lab3, sp3 = bp.render_subject(params, dim=3, num_slices=5, **SMALL)
    assert img3.shape == (*SMALL["shape"], 5) and sp3 == (4.5,) * 3
    assert np.array_equal(img3[..., 2], img2) and np.array_equal(lab3[..., 2], lab2)


def test_write_cohort_deterministic_disjoint_tests_and_labeled_choice(tmp_path):
    kw = {"num_train": 5, "num_test": 2, "seed": 2, **SMALL}
    m1 = bp.write_cohort(tmp_path / "a", **kw)
    assert bp.write_cohort(tmp_path / "b", jobs=2, **kw) == m1  # two worker processes: the same cohort, same files
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == json.loads(json.dumps(m1))
    names = {k: sorted(p.name for p in (tmp_path / "a" / k).iterdir())
             for k in ("images", "labels", "test_images", "test_labels")}
    assert names["images"] == names["labels"] == [f"sub{i:03d}.nii.gz" for i in range(5)]
    assert names["test_images"] == names["test_labels"] == [f"test{i:03d}.nii.gz" for i in range(2)]
    for sub in names:
        for f in names[sub]:
            x = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / sub / f)))
            y = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / sub / f)))
            assert np.array_equal(x, y)
    img = sitk.ReadImage(str(tmp_path / "a" / "images" / "sub000.nii.gz"))
    assert img.GetDimension() == 2 and img.GetSpacing() == (4.5, 4.5) and img.GetSize() == SMALL["shape"]
    # held-out test subjects are distinct draws, and all acquisitions appear in train and test
    train = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted((tmp_path / "a" / "images").iterdir())]
    test = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted((tmp_path / "a" / "test_images").iterdir())]
    assert not any(np.array_equal(x, y) for x in train for y in test)
    assert {p["field_seed"] for p in m1["train"].values()}.isdisjoint(p["field_seed"] for p in m1["test"].values())
    assert [p["acquisition"] for p in m1["test"].values()] == list(bp.ACQUISITIONS)[:2]
    assert m1["labeled_pool"] == [c for c, p in m1["train"].items() if p["acquisition"] in ("t1_3t", "t1_15t")]
    lab, unl = bp.choose_labeled(m1, 2, seed=0)
    assert lab == bp.choose_labeled(m1, 2, seed=0)[0] and sorted(lab + unl) == sorted(m1["train"])
    assert {m1["train"][c]["acquisition"] for c in lab} == {"t1_3t", "t1_15t"}  # balanced over labeled styles
    with pytest.raises(ValueError):
        bp.choose_labeled(m1, 3, seed=0)  # the pool (t1 styles among 5 subjects) holds 2
    with pytest.raises(ValueError):
        bp.write_cohort(tmp_path / "c", labeled_acquisitions=("nope",), **kw)


def test_choose_labeled_disjoint_across_seeds_and_balanced():
    """A 20-case T1 pool gives 5 seeds of 4 labeled cases with no case shared, each 2 + 2 over the styles."""
    acq = list(bp.ACQUISITIONS)
    train = {f"s{i:02d}": {"acquisition": acq[i % len(acq)]} for i in range(50)}
    manifest = {"train": train, "labeled_acquisitions": ["t1_3t", "t1_15t"],
                "labeled_pool": [c for c, v in train.items() if v["acquisition"] in ("t1_3t", "t1_15t")]}
    sets = [bp.choose_labeled(manifest, 4, seed=s)[0] for s in range(5)]
    assert sorted(c for x in sets for c in x) == sorted(manifest["labeled_pool"])
    assert all(sorted(train[c]["acquisition"] for c in x) == ["t1_15t", "t1_15t", "t1_3t", "t1_3t"] for x in sets)
    assert bp.disjoint_block(20, 4, 5) == (1, 0) and bp.disjoint_block(20, 4, 3) == (0, 3)
    with pytest.raises(ValueError, match="seed"):
        bp.disjoint_block(20, 4, -1)
