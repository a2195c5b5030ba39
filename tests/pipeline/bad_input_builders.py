"""Builders of careless input for the bad-input rows (``test_bad_input.py``) and the valid-but-unusual rows
(``test_valid_unusual_input.py``): odd shapes and label values, extra channels, damaged prediction inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from bad_input_cases import Ctx, damage, write_nii, write_png

__all__ = ["nii_shape", "label_values", "two_channel_src", "png_label", "pred_dir_with"]


def nii_shape(c: Ctx, which: str, case: str, shape, spacing=(1.0, 1.0, 1.0), dtype=np.uint8, value=1):
    arr = np.zeros(shape, dtype)
    arr[1:3, 1:3, 1:3] = value
    return write_nii(c.src[which] / f"{case}.nii.gz", arr, spacing)


def label_values(c: Ctx, folder: Path, case: str, value, dtype=np.int16) -> Path:
    import SimpleITK as sitk

    f = folder / f"{case}.nii.gz"
    img = sitk.ReadImage(str(f))
    arr = sitk.GetArrayFromImage(img).astype(dtype)
    arr[0, 0, 0] = value
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(f))
    return f


def two_channel_src(c: Ctx, drop: str | None = None):
    folder = c.dir("mc")
    for f in sorted(c.src["images"].iterdir()):
        case = f.name[: -len(".nii.gz")]
        for ch in (0, 1):
            shutil.copy(f, folder / f"{case}_{ch:04d}.nii.gz")
    if drop:
        (folder / drop).unlink()
    return folder


def png_label(c: Ctx, folder: Path, case: str, value: int) -> Path:
    import SimpleITK as sitk

    f = folder / f"{case}.png"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
    arr[0, 0] = value
    return write_png(f, arr)


def pred_dir_with(c: Ctx, kind: str) -> Path:
    """The world's input images plus one damaged or odd input case."""
    inp = Path(shutil.copytree(c.w.images, c.tmp / "inp"))
    if kind == "rgb":
        write_png(inp / "case000.png", np.zeros((16, 16, 3)), vector=True)
    elif kind == "extra_channel":
        shutil.copy(inp / "case000.png", inp / "case000_0001.png")
        (inp / "case000.png").rename(inp / "case000_0000.png")
    elif kind == "nii":
        for f in inp.iterdir():
            f.unlink()
        write_nii(inp / "case000.nii.gz", np.zeros((16, 16), np.float32))
    else:
        damage(inp / "case001.png", kind)
    return inp
