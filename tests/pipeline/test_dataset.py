"""`nnzoo dataset create` and the input checks: one test per kind of bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnzoo.pipeline.cli import main
from nnzoo.pipeline.dataset import LabelSpec, create_dataset
from nnzoo.pipeline.errors import NnzooError
from nnzoo.pipeline.synthetic import write_synthetic_folders


def _write(arr, path, spacing=(1.0, 1.0, 1.0), origin=None, direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    if origin is not None:
        img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def src(tmp_path):
    return write_synthetic_folders(tmp_path / "src", num_cases=3, shape=(8, 10, 12), num_classes=3, seed=1)


def _create(src, **kw):
    kw.setdefault("channels", ["MR"])
    return create_dataset(src["images"], src["labels"], name="Toy", dataset_id=7, **kw)


@pytest.mark.slow
def test_create_writes_valid_nnunet_raw_folder(workdir, src):
    target = _create(src, label_spec=LabelSpec(names={1: "outer"}))
    dj = json.loads((target / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "outer": 1, "label_2": 2}
    assert dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz" and dj["channel_names"] == {"0": "MR"}
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == [f"case00{i}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == [f"case00{i}.nii.gz" for i in range(3)]
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(target), 1)  # nnU-Net's own check accepts it


def test_create_multichannel_and_unlabeled(workdir, tmp_path):
    src = write_synthetic_folders(tmp_path / "s", num_cases=2, shape=(6, 8, 8), num_unlabeled=2, seed=2)
    for f in list(src["images"].iterdir()):  # two channels: case_0000, case_0001
        stem = f.name[:-7]
        f.rename(src["images"] / f"{stem}_0000.nii.gz")
        sitk.WriteImage(sitk.ReadImage(str(src["images"] / f"{stem}_0000.nii.gz")),
                        str(src["images"] / f"{stem}_0001.nii.gz"))
    for f in list(src["unlabeled"].iterdir()):
        stem = f.name[:-7]
        sitk.WriteImage(sitk.ReadImage(str(f)), str(src["unlabeled"] / f"{stem}_0001.nii.gz"))
        f.rename(src["unlabeled"] / f"{stem}_0000.nii.gz")
    target = create_dataset(src["images"], src["labels"], name="Multi", dataset_id=8, channels=["T1", "T2"],
                            unlabeled=src["unlabeled"])
    assert len(list((target / "imagesTr").iterdir())) == 4
    assert sorted(p.name for p in (target / "imagesUnlabeled").iterdir()) == [
        "unl000_0000.nii.gz", "unl000_0001.nii.gz", "unl001_0000.nii.gz", "unl001_0001.nii.gz"]
    assert json.loads((target / "dataset.json").read_text())["numUnlabeled"] == 2


def _expect(src, match, **kw):
    with pytest.raises(NnzooError, match=match):
        _create(src, **kw)
    assert not list((__import__("pathlib").Path(os.environ["nnUNet_raw"])).glob("Dataset007*"))


def test_size_mismatch(workdir, src):
    _write(np.zeros((8, 10, 11), np.uint8), src["labels"] / "case001.nii.gz")
    _expect(src, r"case001\.nii\.gz: shape \(8, 10, 11\) != \(8, 10, 12\)")


def test_spacing_mismatch(workdir, src):
    lab = sitk.ReadImage(str(src["labels"] / "case000.nii.gz"))
    lab.SetSpacing((1.0, 1.0, 2.5))
    sitk.WriteImage(lab, str(src["labels"] / "case000.nii.gz"))
    _expect(src, r"labels/case000\.nii\.gz: spacing")


def test_origin_mismatch(workdir, src):
    lab = sitk.ReadImage(str(src["labels"] / "case002.nii.gz"))
    lab.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(lab, str(src["labels"] / "case002.nii.gz"))
    _expect(src, r"case002\.nii\.gz: origin")


def test_direction_mismatch(workdir, src):
    lab = sitk.ReadImage(str(src["labels"] / "case002.nii.gz"))
    lab.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(lab, str(src["labels"] / "case002.nii.gz"))
    _expect(src, r"case002\.nii\.gz: direction")


def test_missing_channel_file(workdir, src):
    for f in list(src["images"].iterdir()):
        f.rename(src["images"] / f"{f.name[:-7]}_0000.nii.gz")
        if f.name != "case001.nii.gz":
            sitk.WriteImage(sitk.ReadImage(str(src["images"] / f"{f.name[:-7]}_0000.nii.gz")),
                            str(src["images"] / f"{f.name[:-7]}_0001.nii.gz"))
    _expect(src, r"case 'case001'.*missing channel file\(s\) case001_0001\.nii\.gz", channels=["T1", "T2"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_image(workdir, src, bad):
    import nibabel as nib

    f = src["images"] / "case000.nii.gz"
    nii = nib.load(f)
    img = np.asanyarray(nii.dataobj).astype(np.float32)
    img[2, 3, 4] = bad
    nib.save(nib.Nifti1Image(img, nii.affine), f)  # SimpleITK's NIfTI writer would drop NaN/Inf
    _expect(src, r"images/case000\.nii\.gz: contains [01] NaN and [01] Inf voxels")


def test_label_values_not_declared(workdir, src):
    """plan_and_preprocess checks labels against dataset.json."""
    target = _create(src)
    dj = json.loads((target / "dataset.json").read_text())
    del dj["labels"]["label_2"]
    (target / "dataset.json").write_text(json.dumps(dj))
    assert main(["plan_and_preprocess", "-d", "7", "-c", "3d_fullres", "--no_pp"]) == 2
    with pytest.raises(NnzooError, match=r"labelsTr/case00\d\.nii\.gz: label values \[2\] are not declared"):
        from nnzoo.pipeline.plan import plan_and_preprocess

        plan_and_preprocess(7, configurations=["3d_fullres"], preprocess=False)


def test_non_integer_labels(workdir, src):
    _write(np.full((8, 10, 12), 0.5, np.float32), src["labels"] / "case000.nii.gz")
    _expect(src, r"case000\.nii\.gz: label values must be integers")


def test_unreadable_file(workdir, src):
    (src["images"] / "case001.nii.gz").write_bytes(b"this is not a nifti file at all" * 10)
    _expect(src, r"images/case001\.nii\.gz: cannot be read as an image")


def test_empty_file(workdir, src):
    (src["labels"] / "case002.nii.gz").write_bytes(b"")
    _expect(src, r"labels/case002\.nii\.gz: file is empty")


def test_empty_images_folder(workdir, src):
    for f in src["images"].iterdir():
        f.unlink()
    _expect(src, r"images folder .* is empty")


def test_unmatched_cases(workdir, src):
    (src["labels"] / "case001.nii.gz").unlink()
    _expect(src, r"images without label .*case001")


def test_existing_dataset_id_is_not_touched(workdir, src):
    target = _create(src)
    before = sorted(p.name for p in target.rglob("*"))
    with pytest.raises(NnzooError, match="already used by Dataset007_Toy"):
        create_dataset(src["images"], src["labels"], name="Other", dataset_id=7, channels=["MR"])
    assert sorted(p.name for p in target.rglob("*")) == before


def test_cli_prints_one_error_line(workdir, src, capsys):
    (src["labels"] / "case002.nii.gz").write_bytes(b"")
    rc = main(["dataset", "create", "--images", str(src["images"]), "--labels", str(src["labels"]),
               "--name", "Toy", "--id", "7", "--channel", "MR"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err and "case002.nii.gz: file is empty" in err
