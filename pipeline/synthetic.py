"""Synthetic segmentation datasets for tests, benchmarks and smoke runs (no download).

Images are smooth blobs of a few classes with noise; written as plain ``images/`` and
``labels/`` folders (the input of ``nnzoo dataset create``), optionally with unlabeled images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["make_synthetic_case", "write_synthetic_folders"]


def make_synthetic_case(shape: tuple[int, ...], num_classes: int, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
    """One image/label pair: nested ellipsoids (classes 1..num_classes-1) at random positions.

    Args:
        shape: spatial shape, 2D or 3D.
        num_classes: number of labels including background.
        rng: random generator.

    Returns:
        ``(image float32, label uint8)`` of ``shape``.
    """
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    label = np.zeros(shape, np.uint8)
    centre = np.array([rng.uniform(0.35, 0.65) * s for s in shape])
    radius = np.array([rng.uniform(0.25, 0.35) * s for s in shape])
    for c in range(1, num_classes):
        scale = 1.0 - 0.7 * (c - 1) / max(1, num_classes - 1)
        d = sum(((g - m) / (r * scale)) ** 2 for g, m, r in zip(grids, centre, radius))
        label[d <= 1.0] = c
    image = label.astype(np.float32) * 100.0 / max(1, num_classes - 1)
    image += rng.normal(0.0, 15.0, shape).astype(np.float32)
    return image, label


def write_synthetic_folders(root: str | Path, num_cases: int = 6, shape: tuple[int, ...] = (24, 28, 32),
                            num_classes: int = 3, num_unlabeled: int = 0, spacing: tuple[float, ...] | None = None,
                            file_ending: str = ".nii.gz", seed: int = 0) -> dict[str, Path]:
    """Write ``images/``, ``labels/`` (and ``unlabeled/``) folders of synthetic cases.

    Args:
        root: folder to create them in.
        num_cases: labeled cases.
        shape: spatial shape (2D shapes are written as 2D images).
        num_classes: labels including background.
        num_unlabeled: images without labels.
        spacing: voxel spacing in numpy axis order (default 1 mm).
        file_ending: ".nii.gz", ".nii", ".nrrd", ".mha" or ".png" (2D only).
        seed: random seed.

    Returns:
        ``{"images": Path, "labels": Path, "unlabeled": Path}``.
    """
    import SimpleITK as sitk

    root = Path(root)
    rng = np.random.default_rng(seed)
    folders = {k: root / k for k in ("images", "labels", "unlabeled")}
    for k in ("images", "labels"):
        folders[k].mkdir(parents=True, exist_ok=True)
    if num_unlabeled:
        folders["unlabeled"].mkdir(parents=True, exist_ok=True)
    spacing = spacing or (1.0,) * len(shape)

    def write(arr: np.ndarray, path: Path) -> None:
        if file_ending == ".png":
            if arr.dtype != np.uint8:
                arr = np.clip(arr + 50, 0, 255).astype(np.uint8)
            img = sitk.GetImageFromArray(arr)
        else:
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        sitk.WriteImage(img, str(path))

    for i in range(num_cases):
        image, label = make_synthetic_case(shape, num_classes, rng)
        write(image, folders["images"] / f"case{i:03d}{file_ending}")
        write(label, folders["labels"] / f"case{i:03d}{file_ending}")
    for i in range(num_unlabeled):
        image, _ = make_synthetic_case(shape, num_classes, rng)
        write(image, folders["unlabeled"] / f"unl{i:03d}{file_ending}")
    return folders
