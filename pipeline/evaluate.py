"""``evaluate``: every prediction of a folder against its reference, as JSON, CSV and an HTML report.

The output is a superset of nnU-Net's ``summary.json`` (``metric_per_case``, ``mean``,
``foreground_mean`` with nnU-Net's per-class ``Dice IoU TP FP FN TN n_ref n_pred``) plus HD95,
HD, ASSD, NSD and volumes (definitions in :mod:`nnzoo.pipeline.metrics`), a CSV with one row per
case and class and an HTML report (:mod:`nnzoo.pipeline.report`). Files are read with nnU-Net's
reader for the dataset (:mod:`nnzoo.pipeline.segio`).

Groups (domains: scanner, site, contrast): with a mapping ``{case: group}`` (``--groups FILE``, CSV
``case,domain`` or JSON, or by default the ``domains.json`` of the dataset ``-d`` names) the summary
also holds ``"groups": {group: {"n", "mean", "foreground_mean"}}`` (the same means over the
group's cases), each case its ``"group"``; the CSV gets a ``group`` column and
``summary_groups.csv`` the means per group and class; the report a table per group. Evaluated
cases the mapping does not name are grouped as ``(no group)`` and listed. A ``--groups`` file
must name at least one evaluated case and only cases of the reference folder; the dataset's
``domains.json`` also names training cases, so it is used for the cases it has and left out
(with a note) when it names none of the evaluated ones.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from nnzoo.trainers.domains import DOMAINS_FILE

from .errors import NnzooError, check_folder_can_be_made, read_json
from .metrics import (
    CSV_METRICS,
    NEW_METRICS,
    NO_GROUP,
    EvalLabels,
    binary_metrics,
    compute_pair_metrics,
    label_key,
    resolve_labels,
    summarize,
    summarize_groups,
    summary_table,
    surface_distances,
)
from .report import write_report
from .segio import FILE_ENDINGS, find_cases, read_segmentation, reader_for, split_ending
from .validate import read_case_mapping

__all__ = ["evaluate", "EvaluateOptions", "evaluate_case", "evaluate_folders", "save_summary_json", "save_csv", "save_groups_csv",
           "read_groups", "find_cases", "read_segmentation",
           "EvalLabels", "resolve_labels", "binary_metrics", "compute_pair_metrics", "surface_distances", "summarize",
           "summary_table", "label_key", "NEW_METRICS", "CSV_METRICS", "FILE_ENDINGS"]


def _allowed_values(labels: EvalLabels) -> set:
    """Background, every label value of the labels or regions, and the ignore label."""
    out = {0}
    for r in labels.labels_or_regions:
        out.update(r if isinstance(r, tuple) else (r,))
    if labels.ignore_label is not None:
        out.add(labels.ignore_label)
    return out


def _check_values(path: str, seg: np.ndarray, allowed: set) -> None:
    uniq = np.unique(seg)
    bad = [int(v) if float(v).is_integer() else v.item() for v in uniq if v not in allowed]
    if bad:
        shown = ", ".join(str(v) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise NnzooError(f"{path}: label values [{shown}] are not among the labels evaluated ({sorted(allowed)}); "
                         "wrong labels file or not a label map?")


def evaluate_case(reference_file: str, prediction_file: str, labels: EvalLabels, tolerance_mm: float = 1.0,
                  empty_distance: str = "diagonal", backend: str | None = None, reader_class=None,
                  check_values: bool = False) -> dict:
    """One case as nnU-Net's ``compute_metrics`` entry, with the extra metrics and geometry.

    Args:
        check_values: refuse files with values outside the labels (background, labels, region members, ignore).

    Returns:
        ``{"reference_file", "prediction_file", "case", "spacing", "shape", "metrics": {label_or_region: {...}}}``.

    Raises:
        NnzooError: unreadable files, prediction and reference of different shapes, or (``check_values``)
            values that are not labels.
    """
    ref, spacing = read_segmentation(reference_file, reader_class)
    pred, pred_spacing = read_segmentation(prediction_file, reader_class)
    if check_values:
        allowed = _allowed_values(labels)
        _check_values(reference_file, ref, allowed)
        _check_values(prediction_file, pred, allowed)
    if ref.shape != pred.shape:
        raise NnzooError(f"{prediction_file}: shape {pred.shape} differs from the reference's {ref.shape}")
    if not np.allclose(spacing, pred_spacing, rtol=1e-3, atol=1e-5):
        warnings.warn(f"{prediction_file}: spacing {pred_spacing} differs from the reference's {spacing}; "
                      "using the reference's", stacklevel=2)
    metrics = compute_pair_metrics(ref, pred, labels.labels_or_regions, spacing, tolerance_mm, labels.ignore_label,
                                   empty_distance, backend)
    case = split_ending(Path(reference_file).name)
    return {"reference_file": str(reference_file), "prediction_file": str(prediction_file),
            "case": case[0] if case else Path(reference_file).name, "spacing": list(spacing),
            "shape": list(ref.shape), "metrics": metrics}


def _json_ready(obj):
    if isinstance(obj, dict):
        return {(k if isinstance(k, str) else label_key(k)): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_summary_json(result: dict, path: str | os.PathLike) -> None:
    """Write ``result`` like nnU-Net's ``save_summary_json`` (label keys as strings, sorted keys).

    nnU-Net's ``load_summary_json`` reads the file back.
    """
    Path(path).write_text(json.dumps(_json_ready(result), sort_keys=True, indent=4))


def save_csv(result: dict, path: str | os.PathLike) -> None:
    """One row per case and label/region: case, (group, when grouped), label, name, then :data:`CSV_METRICS`."""
    names = result.get("class_names", {})
    grouped = bool(result.get("groups"))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", *(["group"] if grouped else []), "label", "name", *CSV_METRICS])
        for c in result["metric_per_case"]:
            for r, m in c["metrics"].items():
                key = label_key(r)
                w.writerow([c["case"], *([c["group"]] if grouped else []), key, names.get(key, key),
                            *[m[k] for k in CSV_METRICS]])


def save_groups_csv(result: dict, path: str | os.PathLike) -> None:
    """The means per group: one row per group and label/region, then the group's foreground mean
    (label ``foreground``, name ``mean``); columns group, n, label, name, then :data:`CSV_METRICS`."""
    names = result.get("class_names", {})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "n", "label", "name", *CSV_METRICS])
        for g, v in result["groups"].items():
            for r, m in v["mean"].items():
                key = label_key(r) if not isinstance(r, str) else r
                w.writerow([g, v["n"], key, names.get(key, key), *[m[k] for k in CSV_METRICS]])
            w.writerow([g, v["n"], "foreground", "mean", *[v["foreground_mean"][k] for k in CSV_METRICS]])


def read_groups(path: str | os.PathLike, flag: str = "--groups") -> dict[str, str]:
    """A mapping of cases to groups: CSV ``case,group`` (header ``case,domain`` allowed) or JSON ``{case: group}``.

    Raises:
        NnzooError: a folder, what :func:`nnzoo.trainers.domains.parse_domains_file` refuses, or a group named
            :data:`~nnzoo.pipeline.metrics.NO_GROUP`; the message starts with ``flag`` and the file.
    """
    groups = read_case_mapping(path, flag)
    odd = sorted(c for c, g in groups.items() if g == NO_GROUP)
    if odd:
        raise NnzooError(f"{flag} {path}: {NO_GROUP!r} is reserved for cases without a group (given for "
                         f"{', '.join(odd[:5])})")
    return groups


def _check_groups(groups: dict[str, str], evaluated: list[str], references: list[str], source: str) -> None:
    """A mapping given by the user names at least one evaluated case and only cases of the reference folder."""
    unknown = sorted(set(groups) - set(references))
    if unknown:
        raise NnzooError(f"{source}: {len(unknown)} case(s) are not in the reference folder: "
                         f"{', '.join(unknown[:10])}" + (" ..." if len(unknown) > 10 else ""))
    if not set(groups) & set(evaluated):
        raise NnzooError(f"{source}: names none of the {len(evaluated)} evaluated case(s) "
                         f"({', '.join(evaluated[:5])}{' ...' if len(evaluated) > 5 else ''})")


def _dataset_json_of(labels) -> dict | None:
    if isinstance(labels, dict) and "file_ending" in labels:
        return labels
    if isinstance(labels, (str, os.PathLike)):
        try:
            spec = json.loads(Path(labels).read_text())
        except (OSError, ValueError):
            return None
        return spec if isinstance(spec, dict) and "file_ending" in spec else None
    return None


def evaluate_folders(ref_dir: str | os.PathLike, pred_dir: str | os.PathLike, *, labels,
                     tolerance_mm: float = 1.0, output_dir: str | os.PathLike | None = None, num_processes: int = 1,
                     image_dir: str | os.PathLike | None = None, report: bool = True,
                     empty_distance: str = "diagonal", backend: str | None = None, check_values: bool = False,
                     groups: dict[str, str] | None = None, groups_source: str = "groups") -> dict:
    """Evaluate every prediction in ``pred_dir`` against the reference of the same case in ``ref_dir``.

    Args:
        ref_dir: reference label files (``CASE<ending>``, any nnU-Net ending).
        pred_dir: predicted label files; files of cases without a reference are an error, reference
            cases without a prediction are listed under ``cases_without_prediction``.
        labels: anything :func:`~nnzoo.pipeline.metrics.resolve_labels` accepts (dataset.json path
            or dict, labels dict, list of labels); a dataset.json also selects nnU-Net's reader.
        tolerance_mm: NSD tolerance in mm.
        output_dir: where ``summary.json``, ``summary.csv`` and ``report.html`` (+ PNGs) go; None: nothing written.
        num_processes: cases evaluated in parallel (spawned processes); 1, or fewer than two cases
            per process: in this process.
        image_dir: images for the report's overlays (``CASE_0000<ending>`` or ``CASE<ending>``), optional.
        report: write the HTML report (needs ``output_dir``).
        empty_distance: see :func:`~nnzoo.pipeline.metrics.binary_metrics`.
        backend: distance transform backend, see :func:`~nnzoo.pipeline.metrics.surface_distances`.
        check_values: refuse label files with values that are not among the labels (see :func:`evaluate_case`).
        groups: optional ``{case: group}``; it must name at least one evaluated case and only cases of
            ``ref_dir``; evaluated cases it does not name form the group ``(no group)``.
        groups_source: where ``groups`` came from, the start of its error messages.

    Returns:
        The summary: nnU-Net's ``{"metric_per_case", "mean", "foreground_mean"}`` (label keys as
        ints/tuples in memory) plus ``tolerance_mm``, ``empty_distance``, ``labels_or_regions``,
        ``class_names``, ``ignore_label``, ``cases_without_prediction`` and ``files``
        (the paths written); with ``groups`` also ``groups`` (see
        :func:`~nnzoo.pipeline.metrics.summarize_groups`), ``cases_without_group``, and each case's ``group``.

    Raises:
        NnzooError: missing folders, no prediction, a prediction without reference, unreadable files,
            groups that name no evaluated case or a case without reference.
    """
    lab = resolve_labels(labels)
    for d in (ref_dir, pred_dir):
        if Path(d).exists() and not Path(d).is_dir():
            raise NnzooError(f"{d}: not a folder (give the folder holding the label files)")
        if not Path(d).is_dir():
            raise NnzooError(f"{d}: folder not found")
    refs, preds = find_cases(ref_dir), find_cases(pred_dir)
    if not preds:
        raise NnzooError(f"{pred_dir}: no segmentation files ({', '.join(FILE_ENDINGS)})")
    orphans = sorted(set(preds) - set(refs))
    if orphans:
        raise NnzooError(f"{pred_dir}: no reference in {ref_dir} for {len(orphans)} case(s): {', '.join(orphans[:10])}")
    names = sorted(preds)
    if groups is not None:
        _check_groups(groups, names, sorted(refs), groups_source)
    reader = reader_for(_dataset_json_of(labels), refs[names[0]])
    jobs = [(str(refs[n]), str(preds[n]), lab, tolerance_mm, empty_distance, backend, reader, check_values)
            for n in names]
    if num_processes <= 1 or len(jobs) < 2 * num_processes:  # a few cases: cheaper than spawning workers
        per_case = [evaluate_case(*j) for j in jobs]
    else:
        with ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as ex:
            per_case = list(ex.map(evaluate_case, *zip(*jobs)))
    mean, foreground_mean = summarize(per_case, lab.labels_or_regions)
    result = {"metric_per_case": per_case, "mean": mean, "foreground_mean": foreground_mean,
              "tolerance_mm": float(tolerance_mm), "empty_distance": empty_distance,
              "labels_or_regions": [label_key(r) for r in lab.labels_or_regions],
              "class_names": {label_key(r): lab.names.get(label_key(r), label_key(r)) for r in lab.labels_or_regions},
              "ignore_label": lab.ignore_label, "cases_without_prediction": sorted(set(refs) - set(preds)),
              "files": {}}
    if groups is not None:
        for c in per_case:
            c["group"] = groups.get(c["case"], NO_GROUP)
        result["groups"] = summarize_groups(per_case, lab.labels_or_regions, groups)
        result["groups_source"] = groups_source
        result["cases_without_group"] = [c["case"] for c in per_case if c["case"] not in groups]
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        result["files"]["summary_json"] = str(out / "summary.json")
        result["files"]["csv"] = str(out / "summary.csv")
        if groups is not None:
            result["files"]["groups_csv"] = str(out / "summary_groups.csv")
            save_groups_csv(result, out / "summary_groups.csv")
        if report:
            result["files"]["html"] = str(out / "report.html")
            write_report(result, out, image_dir, reader)
        save_csv(result, out / "summary.csv")
        save_summary_json(result, out / "summary.json")
    return result


def _labels_from_file(path: Path, flag: str) -> EvalLabels:
    """The labels of a dataset.json or labels JSON, with errors that name the file.

    Raises:
        NnzooError: missing file, a folder, invalid JSON, values that are not integers, no foreground label.
    """
    try:
        spec = read_json(path, hint="give a dataset.json or a JSON file of labels", kind=(dict, list))
    except NnzooError as e:
        raise NnzooError(f"{flag}{e}") from None
    try:
        return resolve_labels(spec)
    except NnzooError as e:
        raise NnzooError(f"{flag}{path}: {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise NnzooError(f"{flag}{path}: labels must be integer values (or lists of them for regions): {e}") from None


def _dataset_groups(name: str, ref_dir, pred_dir) -> tuple[dict[str, str] | None, str]:
    """The dataset's ``domains.json`` (raw, else preprocessed) restricted to the reference cases, or None.

    It also names training cases: those are dropped, and a mapping that names none of the predicted
    cases gives no groups (a note is printed). Missing folders are left to :func:`evaluate_folders`.

    Raises:
        NnzooError: a domains.json that cannot be read.
    """
    files = [Path(os.environ[v]) / name / DOMAINS_FILE for v in ("nnUNet_raw", "nnUNet_preprocessed")]
    f = next((p for p in files if p.is_file()), None)
    if f is None or not (Path(ref_dir).is_dir() and Path(pred_dir).is_dir()):
        return None, "groups"
    groups = read_groups(f, flag="-d")
    refs, preds = find_cases(ref_dir), find_cases(pred_dir)
    groups = {c: g for c, g in groups.items() if c in refs}
    if not set(groups) & set(preds):
        print(f"Note: {f} names none of the predicted cases; no per-domain means (give them with --groups FILE)")
        return None, "groups"
    return groups, f"-d {name}: {f}"


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
    """What ``nnzoo evaluate`` is asked to do: one field per flag (``from_namespace`` for the CLI).

    Attributes:
        ref_dir: reference label files (``-ref``).
        pred_dir: predicted label files (``-pred``).
        dataset: dataset id or name, its dataset.json gives labels and reader (``-d``); or
        labels_file: a dataset.json or JSON of labels/regions (``--labels``).
        tolerance_mm: NSD tolerance in mm (``--tolerance``).
        output_dir: where the files go (``-o``; default ``<pred_dir>/evaluation``).
        num_processes: parallel cases (``-np``; default: cores, at most 4).
        image_dir: images for the report's overlays (``--images``).
        groups_file: CSV ``case,group`` or JSON ``{case: group}`` (``--groups``); default: the dataset's
            ``domains.json`` (raw, else preprocessed) when ``dataset`` is given and has one, used for the
            evaluated cases it names (none: no groups, and a note).
    """

    ref_dir: str | os.PathLike
    pred_dir: str | os.PathLike
    dataset: str | int | None = None
    labels_file: str | os.PathLike | None = None
    tolerance_mm: float = 1.0
    output_dir: str | os.PathLike | None = None
    num_processes: int | None = None
    image_dir: str | os.PathLike | None = None
    groups_file: str | os.PathLike | None = None

    @classmethod
    def from_namespace(cls, args) -> EvaluateOptions:
        """The options of an ``argparse`` namespace whose destinations are the field names."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def evaluate(options: EvaluateOptions) -> dict:
    """``nnzoo evaluate``: :func:`evaluate_folders` with the labels of a dataset or a labels file; prints the table.

    Args:
        options: the folders, labels, groups and outputs (:class:`EvaluateOptions`).

    Returns:
        The summary (see :func:`evaluate_folders`).

    Raises:
        NnzooError: neither or both of ``dataset`` and ``labels_file``, unknown dataset, an unreadable
            groups file, or any error of :func:`evaluate_folders`.
    """
    ref_dir, pred_dir, dataset, labels_file = options.ref_dir, options.pred_dir, options.dataset, options.labels_file
    tolerance_mm, output_dir, num_processes = options.tolerance_mm, options.output_dir, options.num_processes
    image_dir, groups_file = options.image_dir, options.groups_file
    if (dataset is None) == (labels_file is None):
        raise NnzooError("give either a dataset (-d) or a labels file (--labels)")
    if num_processes is not None and num_processes < 1:
        raise NnzooError(f"-np {num_processes}: the number of processes must be at least 1")
    if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise NnzooError(f"--tolerance {tolerance_mm}: the NSD tolerance must be a distance in mm (0 or more)")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise NnzooError(f"--images {image_dir}: " + ("not a folder" if Path(image_dir).exists() else "folder not found"))
    if dataset is not None:
        from .dataset import resolve_dataset_name
        from .env import setup_folders

        setup_folders(quiet=True)
        name = resolve_dataset_name(dataset)
        labels = Path(os.environ["nnUNet_raw"]) / name / "dataset.json"
        if not labels.is_file():
            labels = Path(os.environ["nnUNet_preprocessed"]) / name / "dataset.json"
        if not labels.is_file():
            raise NnzooError(f"{name}: no dataset.json in nnUNet_raw or nnUNet_preprocessed")
    else:
        labels = Path(labels_file)
    _labels_from_file(labels, "--labels " if labels_file is not None else "")
    groups, source = None, "groups"
    if groups_file is not None:
        groups, source = read_groups(groups_file), f"--groups {groups_file}"
    elif dataset is not None:
        groups, source = _dataset_groups(name, ref_dir, pred_dir)
    out = Path(output_dir) if output_dir else Path(pred_dir) / "evaluation"
    check_folder_can_be_made(out, flag=f"-o {out}" if output_dir else str(out))
    res = evaluate_folders(ref_dir, pred_dir, labels=labels, tolerance_mm=tolerance_mm, output_dir=out,
                           num_processes=num_processes or min(4, os.cpu_count() or 1), image_dir=image_dir,
                           check_values=True, groups=groups, groups_source=source)
    print(summary_table(res))
    if res.get("cases_without_group"):
        missing = res["cases_without_group"]
        print(f"{len(missing)} case(s) without a group in {source} are grouped as {NO_GROUP!r}: "
              f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    print(f"Wrote {', '.join(res['files'].values())}")
    return res
