"""Segmentation metrics of label maps: Dice, IoU, HD95, HD, ASSD, NSD and volumes per class, and their means.

Counts (TP, FP, FN, TN) come from nnU-Net's ``compute_tp_fp_fn_tn`` and Dice/IoU follow nnU-Net's
``compute_metrics``, so they equal nnU-Net's ``summary.json`` by construction. Folders are
evaluated by :mod:`nnzoo.pipeline.evaluate`.

Definitions (``S_R``, ``S_P``: surface voxels of reference and prediction, i.e. the voxels of the
mask with at least one 6-neighbour (4 in 2D) outside it, the image border counting as outside --
``mask XOR erosion`` as in medpy; ``d(x, S)``: Euclidean distance in mm from voxel centre ``x`` to
the nearest voxel of ``S``, computed with an exact distance transform that honours the spacing):

* ``HD95``: 95th percentile of the pooled distances ``{d(p, S_R) : p in S_P} U {d(r, S_P) : r in S_R}``
  (medpy's ``hd95``; MONAI instead takes the max of the two directed 95th percentiles).
* ``HD``: the maximum of the same distances (Hausdorff distance).
* ``ASSD``: average symmetric surface distance, the mean of the same pooled distances (medpy's
  ``assd`` since 0.5 and MONAI's symmetric ``compute_average_surface_distance``).
* ``NSD``: normalised surface distance (surface Dice) at tolerance ``tau`` mm,
  ``(#{p: d(p, S_R) <= tau} + #{r: d(r, S_P) <= tau}) / (|S_P| + |S_R|)``. Surface elements are
  counted as voxels (as MONAI's ``compute_surface_dice`` default); DeepMind's surface-distance
  weights sub-voxel surfels by their area instead, which differs slightly on coarse grids.
* ``volume_ref_mm3`` / ``volume_pred_mm3``: voxel count times voxel volume.

Empty masks (per case and class):

=====================  ========  ========  ===============  =====================
reference / prediction  Dice/IoU  NSD       HD95, HD, ASSD   in means
=====================  ========  ========  ===============  =====================
both empty             NaN       NaN       NaN              skipped (nanmean), as nnU-Net
one of them empty      0         0         image diagonal   counted
=====================  ========  ========  ===============  =====================

The image diagonal (in mm) is the largest distance possible in the image, so a missed or
hallucinated structure is penalised instead of vanishing from the means; pass
``empty_distance="nan"`` to get NaN instead. Voxels of the ignore label (nnU-Net's ``ignore``)
are left out of all metrics: they are removed from the prediction mask and from the counts.
Axes of size 1 are dropped, so a 2D image stored as ``(1, H, W)`` is measured in 2D.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask

from .errors import NnzooError

__all__ = ["EvalLabels", "LabelOrRegion", "resolve_labels", "label_key", "surface_distances", "binary_metrics",
           "compute_pair_metrics", "summarize", "summarize_groups", "summary_table", "NEW_METRICS", "CSV_METRICS",
           "NO_GROUP"]

LabelOrRegion = Union[int, tuple]
NEW_METRICS = ("HD95", "HD", "ASSD", "NSD", "volume_ref_mm3", "volume_pred_mm3")
CSV_METRICS = ("Dice", "IoU", "HD95", "HD", "ASSD", "NSD", "volume_ref_mm3", "volume_pred_mm3",
               "TP", "FP", "FN", "TN", "n_ref", "n_pred")
_TIE = 1e-5  # relative slack of the NSD tolerance test (float32 distances)
#: the group of evaluated cases that a groups mapping does not name
NO_GROUP = "(no group)"


# ---------------------------------------------------------------------------------------------- labels
@dataclass
class EvalLabels:
    """What to evaluate: labels (ints) or regions (tuples of ints), their names, the ignore label."""

    labels_or_regions: list[LabelOrRegion]
    names: dict[str, str] = field(default_factory=dict)  # label_key -> name
    ignore_label: int | None = None


def label_key(label_or_region: LabelOrRegion) -> str:
    """nnU-Net's JSON key of a label (``"1"``) or region (``"(1, 2)"``)."""
    return str(int(label_or_region)) if np.isscalar(label_or_region) else str(tuple(int(i) for i in label_or_region))


def resolve_labels(spec) -> EvalLabels:
    """Labels or regions to evaluate, from a dataset.json, its path, a ``labels`` dict or a list.

    Args:
        spec: an :class:`EvalLabels`; a path to / dict of a dataset.json (nnU-Net's rules: regions when
            a value is a list of several labels, ``ignore`` is the ignore label, background left out);
            a dict ``{name: value}`` like dataset.json's ``labels``; or a list of ints / tuples.

    Returns:
        :class:`EvalLabels`.

    Raises:
        NnzooError: unreadable file or no foreground label.
    """
    if isinstance(spec, EvalLabels):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        try:
            spec = json.loads(Path(spec).read_text())
        except (OSError, ValueError) as e:
            raise NnzooError(f"{spec}: cannot read labels ({e})") from None
    if isinstance(spec, dict):
        labels = spec.get("labels", spec)
        ignore = labels.get("ignore")
        regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
        out, names = [], {}
        for name, v in labels.items():
            if name == "ignore":
                continue
            vals = tuple(int(i) for i in v) if isinstance(v, (list, tuple)) else (int(v),)
            if set(vals) == {0}:
                continue
            item = vals if regions else vals[0]
            out.append(item)
            names[label_key(item)] = str(name)
        if not regions:
            out = sorted(out)
        result = EvalLabels(out, names, None if ignore is None else int(ignore))
    else:
        items = [int(i) if np.isscalar(i) else tuple(int(j) for j in i) for i in spec]
        result = EvalLabels(items, {label_key(i): label_key(i) for i in items})
    if not result.labels_or_regions:
        raise NnzooError("no foreground label or region to evaluate")
    return result


# ---------------------------------------------------------------------------------------- pair metrics
def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (``mask`` must have a zero border)."""
    inner = mask.copy()
    for ax in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[ax], hi[ax] = slice(1, None), slice(None, -1)
        inner[tuple(lo)] &= mask[tuple(hi)]
        inner[tuple(hi)] &= mask[tuple(lo)]
    return mask & ~inner


def _distance_to(features: np.ndarray, spacing: Sequence[float], backend: str, threads: int) -> np.ndarray:
    """Distance (mm) of every voxel to the nearest True voxel of ``features``."""
    if backend == "edt":
        import edt

        return edt.edt(np.ascontiguousarray(~features), anisotropy=tuple(float(s) for s in spacing),
                       black_border=False, parallel=threads)
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~features, sampling=spacing)


def _default_backend() -> str:
    try:
        import edt  # noqa: F401
    except ImportError:
        return "scipy"
    return "edt"


def _box(mask_a: np.ndarray, mask_b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``mask_a | mask_b`` (both non-empty together)."""
    union = mask_a | mask_b
    box = []
    for ax in range(union.ndim):
        proj = np.any(union, axis=tuple(i for i in range(union.ndim) if i != ax))
        idx = np.flatnonzero(proj)
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def surface_distances(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                      backend: str | None = None, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Distances between the surfaces of two non-empty binary masks.

    Both masks are cropped to the bounding box of their union and padded by one empty voxel, which
    gives the same result as working on the whole image (image border = outside) at a fraction of
    the cost.

    Args:
        mask_ref: reference mask, 2D or 3D, non-empty.
        mask_pred: predicted mask of the same shape, non-empty.
        spacing: voxel size in mm per axis, in array axis order.
        backend: ``"edt"`` (the ``edt`` package) or ``"scipy"`` (``distance_transform_edt``); default
            ``edt`` when installed.
        threads: threads of the ``edt`` backend.

    Returns:
        ``(d_pred_to_ref, d_ref_to_pred)``: for each prediction surface voxel the distance to the
        reference surface, and vice versa, in mm.

    Raises:
        ValueError: an empty mask or mismatched shapes.
    """
    mask_ref, mask_pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if mask_ref.shape != mask_pred.shape or len(spacing) != mask_ref.ndim:
        raise ValueError(f"shapes {mask_ref.shape}, {mask_pred.shape} and spacing {tuple(spacing)} do not match")
    if not mask_ref.any() or not mask_pred.any():
        raise ValueError("surface distances need two non-empty masks")
    backend = backend or _default_backend()
    box = _box(mask_ref, mask_pred)
    s_ref = _surface(np.pad(mask_ref[box], 1))
    s_pred = _surface(np.pad(mask_pred[box], 1))
    d_pred = _distance_to(s_ref, spacing, backend, threads)[s_pred]
    d_ref = _distance_to(s_pred, spacing, backend, threads)[s_ref]
    return d_pred.astype(np.float64), d_ref.astype(np.float64)


def dice(mask_ref: np.ndarray, mask_pred: np.ndarray) -> float:
    """Dice of two binary masks from nnU-Net's counts; NaN when both are empty (nnU-Net's convention)."""
    tp, fp, fn, _ = (int(v) for v in compute_tp_fp_fn_tn(np.asarray(mask_ref, bool), np.asarray(mask_pred, bool), None))
    return _dice(tp, fp, fn)


def _dice(tp: int, fp: int, fn: int) -> float:
    return math.nan if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def binary_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                   tolerance_mm: float = 1.0, ignore_mask: np.ndarray | None = None,
                   empty_distance: str = "diagonal", backend: str | None = None, threads: int = 1) -> dict:
    """All metrics of one binary reference/prediction pair (conventions in the module docstring).

    Args:
        mask_ref: reference mask.
        mask_pred: predicted mask, same shape.
        spacing: voxel size in mm, array axis order.
        tolerance_mm: NSD tolerance in mm.
        ignore_mask: voxels to leave out (nnU-Net's ignore label), or None.
        empty_distance: ``"diagonal"`` or ``"nan"``: HD95/HD/ASSD when exactly one mask is empty.
        backend: distance transform backend, see :func:`surface_distances`.
        threads: threads of the ``edt`` backend.

    Returns:
        ``{"Dice", "IoU", "HD95", "HD", "ASSD", "NSD", "volume_ref_mm3", "volume_pred_mm3",
        "TP", "FP", "FN", "TN", "n_ref", "n_pred"}`` (Python floats and ints).
    """
    mask_ref, mask_pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    spacing = [float(s) for s in spacing]
    ignore = None if ignore_mask is None else np.asarray(ignore_mask, bool)
    tp, fp, fn, tn = (int(v) for v in compute_tp_fp_fn_tn(mask_ref, mask_pred, ignore))
    if ignore is not None:  # ignored voxels are neither surface nor volume
        mask_ref, mask_pred = mask_ref & ~ignore, mask_pred & ~ignore
    n_ref, n_pred = tp + fn, tp + fp
    out: dict = {}
    out["Dice"] = _dice(tp, fp, fn)
    out["IoU"] = math.nan if tp + fp + fn == 0 else tp / (tp + fp + fn)
    if n_ref and n_pred:
        d_pred, d_ref = surface_distances(mask_ref, mask_pred, spacing, backend, threads)
        pooled = np.concatenate([d_pred, d_ref])
        out["HD95"] = float(np.percentile(pooled, 95))
        out["HD"] = float(pooled.max())
        out["ASSD"] = float(pooled.mean())
        out["NSD"] = float(np.count_nonzero(pooled <= tolerance_mm * (1 + _TIE)) / pooled.size)
    elif n_ref or n_pred:
        worst = math.sqrt(sum((n * s) ** 2 for n, s in zip(mask_ref.shape, spacing)))
        if empty_distance == "nan":
            worst = math.nan
        elif empty_distance != "diagonal":
            raise ValueError(f"empty_distance must be 'diagonal' or 'nan', not {empty_distance!r}")
        out["HD95"] = out["HD"] = out["ASSD"] = worst
        out["NSD"] = 0.0
    else:
        out["HD95"] = out["HD"] = out["ASSD"] = out["NSD"] = math.nan
    voxel = float(np.prod(spacing))
    out["volume_ref_mm3"], out["volume_pred_mm3"] = n_ref * voxel, n_pred * voxel
    out.update(TP=tp, FP=fp, FN=fn, TN=tn, n_ref=n_ref, n_pred=n_pred)
    return out


def compute_pair_metrics(ref_seg: np.ndarray, pred_seg: np.ndarray, labels_or_regions, spacing: Sequence[float],
                         tolerance_mm: float = 1.0, ignore_label: int | None = None,
                         empty_distance: str = "diagonal", backend: str | None = None,
                         threads: int = 1) -> dict:
    """Metrics of every label or region of one pair of label maps.

    Args:
        ref_seg: reference label map (integers), 2D or 3D; axes of size 1 are dropped.
        pred_seg: predicted label map, same shape.
        labels_or_regions: list of labels (ints) and/or regions (tuples of labels), or anything
            :func:`resolve_labels` accepts.
        spacing: voxel size in mm, array axis order (numpy z, y, x).
        tolerance_mm: NSD tolerance in mm.
        ignore_label: label of voxels to leave out, or None.
        empty_distance: see :func:`binary_metrics`.
        backend: distance transform backend, see :func:`surface_distances`.
        threads: threads of the ``edt`` backend.

    Returns:
        ``{label_or_region: metrics dict of binary_metrics}``.

    Raises:
        NnzooError: shapes or spacing do not match.
    """
    ref_seg, pred_seg = np.asarray(ref_seg), np.asarray(pred_seg)
    if ref_seg.shape != pred_seg.shape:
        raise NnzooError(f"reference shape {ref_seg.shape} != prediction shape {pred_seg.shape}")
    if len(spacing) != ref_seg.ndim:
        raise NnzooError(f"spacing {tuple(spacing)} does not match the image dimension {ref_seg.ndim}")
    keep = [i for i, n in enumerate(ref_seg.shape) if n > 1] or [0]
    shape = tuple(ref_seg.shape[i] for i in keep)
    ref_seg, pred_seg = ref_seg.reshape(shape), pred_seg.reshape(shape)
    spacing = [float(spacing[i]) for i in keep]
    if not isinstance(labels_or_regions, (list, tuple)):
        lab = resolve_labels(labels_or_regions)
        ignore_label = lab.ignore_label if ignore_label is None else ignore_label
        labels_or_regions = lab.labels_or_regions
    ignore = ref_seg == ignore_label if ignore_label is not None else None
    return {r: binary_metrics(region_or_label_to_mask(ref_seg, r), region_or_label_to_mask(pred_seg, r), spacing, tolerance_mm, ignore,
                              empty_distance, backend, threads)
            for r in labels_or_regions}


def summarize(per_case: list[dict], labels_or_regions: list[LabelOrRegion]) -> tuple[dict, dict]:
    """nnU-Net's aggregation: per class the NaN-ignoring mean over cases; foreground mean = mean of classes.

    Returns:
        ``(mean, foreground_mean)``: ``{label_or_region: {metric: value}}`` and ``{metric: value}``.
    """
    metrics = list(per_case[0]["metrics"][labels_or_regions[0]].keys())
    mean = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as in nnU-Net
        for r in labels_or_regions:
            mean[r] = {m: float(np.nanmean([c["metrics"][r][m] for c in per_case])) for m in metrics}
        fg = [r for r in labels_or_regions if not (np.isscalar(r) and int(r) == 0)]
        foreground_mean = {m: float(np.mean([mean[r][m] for r in fg])) for m in metrics}
    return mean, foreground_mean


def summarize_groups(per_case: list[dict], labels_or_regions: list[LabelOrRegion], groups: dict[str, str]
                     ) -> dict[str, dict]:
    """:func:`summarize` over the cases of each group (domain, site, scanner...).

    Args:
        per_case: the cases' entries (``"case"`` and ``"metrics"``).
        labels_or_regions: labels or regions, as for :func:`summarize`.
        groups: ``{case: group}``; cases it does not name form the group :data:`NO_GROUP`.

    Returns:
        ``{group: {"n": cases, "mean": {label_or_region: {metric: value}}, "foreground_mean": {metric: value}}}``
        in sorted group order, :data:`NO_GROUP` last.
    """
    members: dict[str, list[dict]] = {}
    for c in per_case:
        members.setdefault(groups.get(c["case"], NO_GROUP), []).append(c)
    out = {}
    for g in sorted(members, key=lambda g: (g == NO_GROUP, g)):
        mean, foreground_mean = summarize(members[g], labels_or_regions)
        out[g] = {"n": len(members[g]), "mean": mean, "foreground_mean": foreground_mean}
    return out


def summary_table(result: dict, metrics: tuple[str, ...] = ("Dice", "IoU", "HD95", "ASSD", "NSD")) -> str:
    """Plain-text table of the means per class and the foreground mean, for the terminal."""
    names = result["class_names"]
    key = lambda k: k if isinstance(k, str) else label_key(k)  # noqa: E731
    rows = [(names.get(key(k), key(k)), result["mean"][k]) for k in result["mean"]]
    rows.append(("foreground mean", result["foreground_mean"]))
    width = max(len(n) for n, _ in rows) + 2
    head = "".ljust(width) + "".join(m.rjust(10) for m in metrics)
    lines = [head] + [n.ljust(width) + "".join(f"{v[m]:10.4f}" for m in metrics) for n, v in rows]
    groups = result.get("groups") or {}
    if groups:
        rows = [(f"{g} (n={v['n']})", v["foreground_mean"]) for g, v in groups.items()]
        title = "foreground mean per group"
        width = max(len(title), *(len(n) for n, _ in rows)) + 2
        lines += ["", title.ljust(width) + "".join(m.rjust(10) for m in metrics)]
        lines += [n.ljust(width) + "".join(f"{v[m]:10.4f}" for m in metrics) for n, v in rows]
    return "\n".join(lines) + f"\n(NSD at {result['tolerance_mm']:g} mm; HD95 and ASSD in mm)"
