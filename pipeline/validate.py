"""Input checks that turn bad data into one clear error naming the file and the problem.

Every case is checked before nnU-Net touches it: files present and readable, not empty,
finite intensities, the same geometry (size, spacing, origin, direction) across channels and
label, and label values that dataset.json declares. Cases are read in threads (SimpleITK and
numpy release the GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .errors import NnzooError

__all__ = ["Case", "read_image", "check_case", "check_cases", "declared_label_values", "MAX_LISTED"]

MAX_LISTED = 20  # problems listed in one error message


@dataclass
class Case:
    """One case: its channel files (in channel order) and, if labeled, its label file."""

    name: str
    images: list[str]
    label: str | None = None


@dataclass
class _Image:
    array: np.ndarray
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


def read_image(path: str) -> _Image:
    """Read an image with SimpleITK.

    Raises:
        NnzooError: missing, unreadable or empty file.
    """
    import SimpleITK as sitk

    if not os.path.isfile(path):
        raise NnzooError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise NnzooError(f"{path}: file is empty")
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
        raise NnzooError(f"{path}: cannot be read as an image ({first})") from None
    size = tuple(img.GetSize())
    if img.GetNumberOfPixels() == 0 or 0 in size:
        raise NnzooError(f"{path}: image is empty (size {size})")
    if img.GetNumberOfComponentsPerPixel() > 1:
        if path.lower().endswith((".png", ".bmp", ".tif", ".tiff")):
            img = sitk.VectorIndexSelectionCast(img, 0)  # RGB(A) natural image: first channel, as nnU-Net's reader
        else:
            raise NnzooError(f"{path}: has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                             "store each channel in its own file (_0000, _0001, ...)")
    return _Image(sitk.GetArrayFromImage(img), size, tuple(img.GetSpacing()), tuple(img.GetOrigin()),
                  tuple(img.GetDirection()))


def _raw_nifti_values(path: str) -> np.ndarray:
    """Stored voxel values of a NIfTI file (ITK's NIfTI reader turns NaN and Inf into 0)."""
    import nibabel as nib

    return np.asanyarray(nib.load(path).dataobj)


def _geometry_problems(ref_path: str, ref: _Image, path: str, img: _Image) -> list[str]:
    what = []
    if img.size != ref.size:
        what.append(f"size {img.size} != {ref.size}")
    else:
        if not np.allclose(img.spacing, ref.spacing, rtol=1e-4, atol=1e-6):
            what.append(f"spacing {_fmt(img.spacing)} != {_fmt(ref.spacing)}")
        if not np.allclose(img.origin, ref.origin, atol=1e-3):
            what.append(f"origin {_fmt(img.origin)} != {_fmt(ref.origin)}")
        if not np.allclose(img.direction, ref.direction, atol=1e-3):
            what.append(f"direction {_fmt(img.direction)} != {_fmt(ref.direction)}")
    return [f"{path}: {w} of {os.path.basename(ref_path)}" for w in what]


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def check_case(case: Case, allowed_labels: set[int] | None = None) -> tuple[list[str], set[int]]:
    """Check one case.

    Args:
        case: the case's files.
        allowed_labels: label values dataset.json declares (None: only require non-negative integers).

    Returns:
        ``(problems, label values found)``; problems are messages that start with the file name.
    """
    problems: list[str] = []
    ref_path, ref = None, None
    for path in case.images:
        try:
            img = read_image(path)
        except NnzooError as e:
            problems.append(str(e))
            continue
        if np.issubdtype(img.array.dtype, np.floating):
            raw = _raw_nifti_values(path) if path.lower().endswith((".nii", ".nii.gz")) else img.array
            if not np.isfinite(raw).all():
                problems.append(f"{path}: contains {int(np.isnan(raw).sum())} NaN and {int(np.isinf(raw).sum())} "
                                "Inf voxels")
        if ref is None:
            ref_path, ref = path, img
        else:
            problems += _geometry_problems(ref_path, ref, path, img)
    values: set[int] = set()
    if case.label is not None:
        try:
            lab = read_image(case.label)
        except NnzooError as e:
            return problems + [str(e)], values
        if ref is not None:
            problems += _geometry_problems(ref_path, ref, case.label, lab)
        uniq = np.unique(lab.array)
        if np.issubdtype(uniq.dtype, np.floating) and not (np.isfinite(uniq).all() and np.all(uniq == np.round(uniq))):
            bad = [float(u) for u in uniq if not (np.isfinite(u) and u == round(u))][:5]
            problems.append(f"{case.label}: label values must be integers, found {bad}")
            return problems, values
        values = {int(u) for u in uniq}
        if min(values) < 0:
            problems.append(f"{case.label}: negative label values {sorted(v for v in values if v < 0)}")
        if allowed_labels is not None and not values <= allowed_labels:
            problems.append(f"{case.label}: label values {sorted(values - allowed_labels)} are not declared in "
                            f"dataset.json (declared: {sorted(allowed_labels)})")
    return problems, values


def check_cases(cases: list[Case], allowed_labels: set[int] | None = None, num_workers: int | None = None,
                what: str = "dataset") -> set[int]:
    """Check many cases in threads; raise one error listing every problem found.

    Args:
        cases: the cases.
        allowed_labels: declared label values, or None.
        num_workers: threads (default: number of cores).
        what: what is checked, for the error message.

    Returns:
        All label values found.

    Raises:
        NnzooError: at least one problem (up to :data:`MAX_LISTED` are listed).
    """
    if not cases:
        raise NnzooError(f"{what}: no cases to check")
    workers = max(1, num_workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as ex:
        results = list(ex.map(lambda c: check_case(c, allowed_labels), cases))
    problems = [p for r in results for p in r[0]]
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise NnzooError(f"{what}: {len(problems)} problem(s) found:\n  " + "\n  ".join(problems[:MAX_LISTED]) + more)
    return set().union(*(r[1] for r in results))


def declared_label_values(dataset_json: dict) -> set[int]:
    """Integer label values declared in a dataset.json (regions contribute their member labels)."""
    out: set[int] = set()
    for v in dataset_json["labels"].values():
        if isinstance(v, (list, tuple)):
            out.update(int(i) for i in v)
        else:
            out.add(int(v))
    return out
