"""The demo's data: MNI152 tissues from nilearn's wheel, deformed cases with consistent geometry."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from nnzoo.pipeline.demo import DEMO_LABELS, DEMO_SPACING, make_demo_folders


def test_demo_cases_are_real_anatomy_with_all_tissues(tmp_path):
    folders = make_demo_folders(tmp_path, num_train=2, num_test=1, seed=1)
    imgs = sorted(folders["images"].glob("*.nii.gz"))
    assert [p.name for p in imgs] == ["mni000.nii.gz", "mni001.nii.gz"]
    assert [p.name for p in folders["test_labels"].glob("*.nii.gz")] == ["mni002.nii.gz"]
    arrays = []
    for f in imgs:
        img, lab = sitk.ReadImage(str(f)), sitk.ReadImage(str(folders["labels"] / f.name))
        assert img.GetSpacing() == (DEMO_SPACING,) * 3 and img.GetSize() == lab.GetSize()
        a, y = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
        assert set(np.unique(y)) == {0, *DEMO_LABELS}
        fractions = [(y == c).mean() for c in DEMO_LABELS]
        assert all(f > 0.02 for f in fractions), fractions  # CSF/other, grey and white matter all present
        assert a[y == 3].mean() > a[y == 2].mean() > a[y == 0].mean()  # T1: WM brighter than GM than air
        arrays.append(a)
    assert not np.allclose(arrays[0], arrays[1])  # random deformation / bias / contrast / noise per case
