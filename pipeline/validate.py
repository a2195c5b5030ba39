"""Input checks that turn bad data into one clear error naming the file and the problem.

Every case is checked before nnU-Net touches it, with the reader nnU-Net will use for the dataset
(:mod:`nnzoo.pipeline.segio`): files present and readable, not empty, finite intensities, the
same geometry across channels and label (shape and spacing; origin and direction for ITK files,
the affine for nibabel files), and label values that dataset.json declares. Cases are read in
threads (the readers and numpy release the GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .errors import NnzooError
from .segio import read_images, read_label, reader_for

__all__ = ["Case", "check_case", "check_cases", "check_domains", "read_case_mapping", "declared_label_values",
           "MAX_LISTED"]

MAX_LISTED = 20  # problems listed in one error message


@dataclass
class Case:
    """One case: its channel files (in channel order) and, if labeled, its label file."""

    name: str
    images: list[str]
    label: str | None = None


def _raw_nifti_values(path: str) -> np.ndarray:
    """Stored voxel values of a NIfTI file (ITK's NIfTI reader turns NaN and Inf into 0)."""
    import nibabel as nib

    return np.asanyarray(nib.load(path).dataobj)


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in np.ravel(v)) + ")"


def _geometry(props: dict) -> dict[str, np.ndarray]:
    """The geometry a reader reports: spacing, plus origin/direction (ITK) or the affine (nibabel)."""
    out = {"spacing": np.asarray(props["spacing"], float)}
    sitk = props.get("sitk_stuff")
    if sitk:
        out["origin"] = np.asarray(sitk["origin"], float)
        out["direction"] = np.asarray(sitk["direction"], float)
    nib = props.get("nibabel_stuff")
    if nib:
        out["affine"] = np.asarray(nib["original_affine"], float)
    return out


_TOLERANCE = {"spacing": dict(rtol=1e-4, atol=1e-6), "origin": dict(atol=1e-3), "direction": dict(atol=1e-3),
              "affine": dict(atol=1e-3)}


def _geometry_problems(ref_path: str, ref: tuple, path: str, other: tuple) -> list[str]:
    (ref_shape, ref_geo), (shape, geo) = ref, other
    if shape != ref_shape:
        return [f"{path}: shape {shape} != {ref_shape} of {os.path.basename(ref_path)}"]
    return [f"{path}: {k} {_fmt(geo[k])} != {_fmt(ref_geo[k])} of {os.path.basename(ref_path)}"
            for k in ref_geo if k in geo and not np.allclose(geo[k], ref_geo[k], **_TOLERANCE[k])]


def _several_channels(shape: tuple[int, ...]) -> str:
    return (f"holds {shape[0]} channels (or vector components) in one file (read as an array of shape {tuple(shape)}); "
            "nnU-Net needs one file per channel (CASE_0000, CASE_0001, ...) and label files with one value per voxel")


def check_case(case: Case, allowed_labels: set[int] | None = None, reader_class=None) -> tuple[list[str], set[int]]:
    """Check one case.

    Args:
        case: the case's files.
        allowed_labels: label values dataset.json declares (None: only require non-negative integers).
        reader_class: nnU-Net reader/writer class (default: the one for the first file's ending).

    Returns:
        ``(problems, label values found)``; problems are messages that start with the file name.
    """
    problems: list[str] = []
    ref_path, ref = None, None
    try:
        reader_class = reader_class or reader_for(None, case.images[0])
    except NnzooError as e:
        return [str(e)], set()
    for path in case.images:
        try:
            data, props = read_images(path, reader_class)
        except NnzooError as e:
            problems.append(str(e))
            continue
        if data.shape[0] != 1:
            problems.append(f"{path}: {_several_channels(data.shape)}")
            continue
        if np.issubdtype(data.dtype, np.floating):
            try:
                raw = _raw_nifti_values(path) if path.lower().endswith((".nii", ".nii.gz")) else data
            except Exception as e:  # noqa: BLE001 - a truncated .gz that ITK read in part: EOFError, OSError...
                problems.append(f"{path}: cannot be read as an image ({type(e).__name__}: {str(e)[:200]})")
                continue
            if not np.isfinite(raw).all():
                problems.append(f"{path}: contains {int(np.isnan(raw).sum())} NaN and {int(np.isinf(raw).sum())} "
                                "Inf voxels")
        this = (tuple(data.shape[1:]), _geometry(props))
        if ref is None:
            ref_path, ref = path, this
        else:
            problems += _geometry_problems(ref_path, ref, path, this)
    values: set[int] = set()
    if case.label is not None:
        try:
            seg, props = read_label(case.label, reader_class)
        except NnzooError as e:
            return problems + [str(e)], values
        if seg.shape[0] != 1:
            return problems + [f"{case.label}: {_several_channels(seg.shape)}"], values
        if ref is not None:
            problems += _geometry_problems(ref_path, ref, case.label, (tuple(seg.shape[1:]), _geometry(props)))
        uniq = np.unique(seg)
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
                what: str = "dataset", reader_class=None) -> set[int]:
    """Check many cases in threads; raise one error listing every problem found.

    Args:
        cases: the cases.
        allowed_labels: declared label values, or None.
        num_workers: threads (default: number of cores).
        what: what is checked, for the error message.
        reader_class: nnU-Net reader/writer class for all cases (default: by file ending).

    Returns:
        All label values found.

    Raises:
        NnzooError: at least one problem (up to :data:`MAX_LISTED` are listed).
    """
    if not cases:
        raise NnzooError(f"{what}: no cases to check")
    workers = max(1, num_workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as ex:
        results = list(ex.map(lambda c: check_case(c, allowed_labels, reader_class), cases))
    problems = [p for r in results for p in r[0]]
    if len(problems) == 1:
        raise NnzooError(problems[0])
    if problems:
        more = f"; ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise NnzooError(f"{what}: {len(problems)} problems: " + "; ".join(problems[:MAX_LISTED]) + more)
    return set().union(*(r[1] for r in results))


def declared_label_values(dataset_json: dict) -> set[int]:
    """Integer label values declared in a dataset.json (regions contribute their member labels)."""
    labels = dataset_json.get("labels") if isinstance(dataset_json, dict) else None
    if not isinstance(labels, dict):
        raise NnzooError(f"'labels' must map names to label values (e.g. {{\"background\": 0, "
                         f"\"liver\": 1}}), got {labels!r:.100}")
    out: set[int] = set()
    for name, v in labels.items():
        try:
            if isinstance(v, (list, tuple)):
                out.update(int(i) for i in v)
            else:
                out.add(int(v))
        except (TypeError, ValueError):
            raise NnzooError(f"label {name!r} has the value {v!r}, not an integer "
                             "(or a list of integers for a region)") from None
    return out


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


def read_case_mapping(path, flag: str) -> dict[str, str]:
    """A user's ``{case: domain}`` file (CSV ``case,domain`` or JSON), read by
    :func:`nnzoo.trainers.domains.parse_domains_file`.

    Raises:
        NnzooError: a folder, or what ``parse_domains_file`` refuses; the message starts with ``flag`` and the path.
    """
    from pathlib import Path

    from nnzoo.trainers.domains import DomainsError, parse_domains_file

    if Path(path).is_dir():
        raise NnzooError(f"{flag} {path}: a folder, not a CSV or JSON file")
    try:
        return parse_domains_file(path)
    except DomainsError as e:
        raise NnzooError(f"{flag} {e}") from None


def check_domains(domains: dict[str, str], required: list[str], *, source: str,
                  allowed: list[str] | None = None) -> None:
    """A mapping ``{case: domain}`` covers every required case and names no other case.

    Args:
        domains: the mapping.
        required: cases that must have a domain (labeled and unlabeled training cases).
        source: what the mapping came from (file and flag), the start of the error message.
        allowed: further cases the mapping may name without having to (e.g. ``imagesTs``).

    Raises:
        NnzooError: one message naming the cases without a domain and the cases that do not exist.
    """
    missing = sorted(set(required) - set(domains))
    unknown = sorted(set(domains) - set(required) - set(allowed or ()))
    problems = []
    if missing:
        problems.append(f"no domain for {len(missing)} case(s) of the dataset: {_listed(missing)}")
    if unknown:
        problems.append(f"names {len(unknown)} case(s) that are not in the dataset: {_listed(unknown)}")
    if problems:
        raise NnzooError(f"{source}: " + "; ".join(problems))
