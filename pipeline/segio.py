"""Reading images and label maps with the reader/writer nnU-Net itself uses for a dataset.

nnU-Net picks a reader per dataset (``determine_reader_writer_from_dataset_json``: the dataset's
``overwrite_image_reader_writer``, else the first reader for its file ending that opens an example
file): SimpleITK for ``.nii.gz``/``.nrrd``/``.mha``, nibabel for ``.nii`` (which also reads
non-orthonormal direction cosines ITK refuses), 2D natural images, Tiff3DIO with its JSON spacing
sidecar. nnzoo's input checks and ``evaluate`` read through the same reader, so they see the
arrays and spacings nnU-Net sees.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from .errors import NnzooError

__all__ = ["FILE_ENDINGS", "split_ending", "reader_for", "read_images", "read_label", "read_segmentation",
           "find_cases"]


def _endings() -> tuple[str, ...]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    found = {e.lower() for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}
    return tuple(sorted(found, key=lambda e: (-len(e), e)))  # longest first: ".nii.gz" before ".gz"-less ".nii"


#: file endings nnU-Net's readers support, longest first
FILE_ENDINGS = _endings()
_REPORT_FILES = ("boxplots.png", "overlay_best.png", "overlay_worst.png")


def split_ending(filename: str, endings: tuple[str, ...] = FILE_ENDINGS) -> tuple[str, str] | None:
    """``("case", ".nii.gz")`` for a file name with one of ``endings``, None otherwise."""
    low = filename.lower()
    for e in endings:
        if low.endswith(e) and len(filename) > len(e):
            return filename[: -len(e)], filename[-len(e):]
    return None


def reader_for(dataset_json: dict | None, example_file: str | os.PathLike):
    """nnU-Net's reader/writer class for a dataset (or, without dataset.json, for the example's file ending).

    Raises:
        NnzooError: no nnU-Net reader opens files of this type.
    """
    from nnunetv2.imageio.reader_writer_registry import (
        determine_reader_writer_from_dataset_json,
        determine_reader_writer_from_file_ending,
    )

    example = str(example_file)
    parts = split_ending(Path(example).name)
    ending = dataset_json["file_ending"] if dataset_json is not None else (parts[1] if parts else None)
    if ending is None or ending.lower() not in FILE_ENDINGS:
        raise NnzooError(f"{example}: no nnU-Net reader for this file type (supported endings: {', '.join(FILE_ENDINGS)})")
    try:  # nnU-Net tries its readers on the example and prints a traceback for each that fails: keep them quiet
        with contextlib.redirect_stderr(io.StringIO()):
            if dataset_json is not None:
                return determine_reader_writer_from_dataset_json(dataset_json, example, verbose=False)
            return determine_reader_writer_from_file_ending(ending, example, verbose=False)
    except RuntimeError:  # the example itself is unreadable: pick by ending, the checks then name the file
        return determine_reader_writer_from_file_ending(ending, None, verbose=False)


def _call(path: str | os.PathLike, read):
    if not os.path.isfile(path):
        raise NnzooError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise NnzooError(f"{path}: file is empty")
    try:
        return read()
    except Exception as e:  # nnU-Net's readers raise RuntimeError, AssertionError, OSError... by reader and damage
        text = str(e).strip().splitlines()
        detail = text[-1].strip() if text else type(e).__name__
        raise NnzooError(f"{path}: cannot be read as an image ({detail[:200]})") from None


def read_images(path: str | os.PathLike, reader_class) -> tuple[np.ndarray, dict]:
    """``(C, *spatial)`` data of one image file and nnU-Net's properties (``spacing``, reader geometry).

    Raises:
        NnzooError: missing, empty or unreadable file.
    """
    return _call(path, lambda: reader_class().read_images([str(path)]))


def read_label(path: str | os.PathLike, reader_class) -> tuple[np.ndarray, dict]:
    """``(1, *spatial)`` label data of a file and nnU-Net's properties (``spacing``, reader geometry).

    Raises:
        NnzooError: missing, empty or unreadable file.
    """
    return _call(path, lambda: reader_class().read_seg(str(path)))


def read_segmentation(path: str | os.PathLike, reader_class=None) -> tuple[np.ndarray, tuple[float, ...]]:
    """A label map (spatial axes only) and its spacing (mm, same axis order) read as nnU-Net reads it.

    Args:
        path: label file.
        reader_class: nnU-Net reader/writer class (default: the one for the file's ending).

    Raises:
        NnzooError: missing, empty or unreadable file.
    """
    seg, props = read_label(path, reader_class or reader_for(None, path))
    seg = np.asarray(seg)
    if seg.shape[0] != 1:
        raise NnzooError(f"{path}: holds {seg.shape[0]} channels (or vector components) in one file (read as an "
                         f"array of shape {seg.shape}); a label map has one value per voxel")
    return seg[0], tuple(float(s) for s in props["spacing"])


def find_cases(folder: str | os.PathLike) -> dict[str, Path]:
    """``{case identifier: file}`` of the label files (any nnU-Net ending) in ``folder``.

    Hidden files, JSON sidecars and the report's own PNGs (``boxplots.png``, ``overlay_*.png``) are skipped.
    """
    out = {}
    for f in sorted(Path(folder).iterdir()):
        parts = split_ending(f.name) if f.is_file() else None
        if parts and not f.name.startswith(".") and f.name not in _REPORT_FILES:
            out.setdefault(parts[0], f)
    return out
