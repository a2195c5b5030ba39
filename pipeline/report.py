"""The HTML report of :func:`nnzoo.pipeline.evaluate.evaluate_folders`.

One self-contained ``report.html`` (PNGs embedded as data URIs and also saved beside it): the mean
of every metric per class and over the foreground, the same per group when the evaluation was
grouped (domains), box plots per class, overlays of image, reference and prediction for the best
and worst case (by mean foreground Dice) with a legend of the classes, and the table of every case
and class. Plots are drawn with matplotlib's Agg backend. Label colours come from one map,
:data:`LABEL_COLOURS`, shared with the demo's overview picture (:mod:`nnzoo.pipeline.demo`).
"""

from __future__ import annotations

import base64
import html
import math
import os
import warnings
from pathlib import Path

import numpy as np

from .metrics import label_key
from .segio import FILE_ENDINGS, read_images, read_segmentation

__all__ = ["write_report", "case_scores", "find_image", "LABEL_COLOURS", "LABEL_ALPHA", "label_colour", "label_rgba",
           "legend_handles", "boxplot_figure", "overlay_figure"]

TABLE_METRICS = ("Dice", "IoU", "HD95", "HD", "ASSD", "NSD", "volume_ref_mm3", "volume_pred_mm3")
BOX_METRICS = ("Dice", "NSD", "HD95", "ASSD")
#: RGB of label value ``v``: ``LABEL_COLOURS[(v - 1) % 10]`` (report overlays and the demo's overview alike)
LABEL_COLOURS = ((0.95, 0.2, 0.15), (0.2, 0.6, 1.0), (1.0, 0.85, 0.1), (0.3, 0.8, 0.3), (0.75, 0.4, 0.95),
                 (1.0, 0.55, 0.1), (0.0, 0.85, 0.85), (0.95, 0.45, 0.75), (0.65, 0.45, 0.25), (0.7, 0.7, 0.7))
#: opacity of labels drawn over an image
LABEL_ALPHA = 0.5
TITLE_SIZE, TICK_SIZE = 10, 8  # points: tick labels never larger than the titles


def label_colour(value: int) -> tuple[float, float, float]:
    """The RGB colour of a (non-zero) label value."""
    return LABEL_COLOURS[(int(value) - 1) % len(LABEL_COLOURS)]


def label_rgba(seg: np.ndarray, alpha: float = LABEL_ALPHA) -> np.ndarray:
    """A 2D label map as an RGBA image: each label in its :func:`label_colour`, background transparent."""
    seg = np.asarray(seg).astype(np.int64)
    out = np.zeros(seg.shape + (4,), float)
    for v in np.unique(seg):
        if v != 0:
            out[seg == v] = (*label_colour(v), alpha)
    return out


def legend_handles(label_names: dict[int, str]) -> list:
    """Legend patches ``colour -> class name`` (underscores shown as spaces), in label order."""
    from matplotlib.patches import Patch

    return [Patch(color=label_colour(v), label=str(n).replace("_", " ")) for v, n in sorted(label_names.items())]


def case_scores(result: dict) -> list[tuple[str, float]]:
    """``(case, mean foreground Dice)`` of every case, NaN classes skipped; NaN when all are NaN."""
    out = []
    for c in result["metric_per_case"]:
        d = [m["Dice"] for m in c["metrics"].values() if not math.isnan(m["Dice"])]
        out.append((c["case"], float(np.mean(d)) if d else math.nan))
    return out


def find_image(image_dir: str | os.PathLike | None, case: str) -> Path | None:
    """The first channel of ``case`` in ``image_dir`` (``CASE_0000<ending>`` or ``CASE<ending>``)."""
    if image_dir is None:
        return None
    for stem in (f"{case}_0000", case):
        for e in FILE_ENDINGS:
            f = Path(image_dir) / f"{stem}{e}"
            if f.is_file():
                return f
    return None


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "&ndash;"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def boxplot_figure(result: dict):
    """The box plots per class of every metric of :data:`BOX_METRICS` (a matplotlib figure; close it after use)."""
    plt = _plt()
    keys = list(result["mean"].keys())
    names = [str(result["class_names"].get(_key(k), _key(k))).replace("_", " ") for k in keys]
    fig, axes = plt.subplots(1, len(BOX_METRICS), figsize=(3.2 * len(BOX_METRICS), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], BOX_METRICS):
        data = []
        for k in keys:
            vals = np.array([c["metrics"][k][metric] for c in result["metric_per_case"]], float)
            data.append(vals[~np.isnan(vals)])
        ax.boxplot([d if d.size else [np.nan] for d in data])
        ax.set_xticks(range(1, len(keys) + 1))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.tick_params(axis="both", labelsize=TICK_SIZE)
        ax.set_title(metric + ("" if metric in ("Dice", "NSD") else " (mm)"), fontsize=TITLE_SIZE)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _boxplots(result: dict, png: Path) -> None:
    fig = boxplot_figure(result)
    fig.savefig(png, dpi=90)
    _plt().close(fig)


def _key(k) -> str:
    return k if isinstance(k, str) else label_key(k)


def _slice(arr: np.ndarray, index: int | None) -> np.ndarray:
    arr = np.squeeze(arr)
    return arr if arr.ndim == 2 else arr[index]


def _value_names(result: dict) -> dict[int, str]:
    """``{label value: class name}`` of the plain labels evaluated (regions have no single value)."""
    names = result.get("class_names", {})
    return {int(k): names.get(_key(k), _key(k)) for k in result.get("labels_or_regions", [])
            if isinstance(k, (int, np.integer)) or (isinstance(k, str) and k.isdigit())}


def overlay_figure(case: dict, image_file: Path | None, title: str, label_names: dict[int, str],
                   reader_class=None):
    """Image, reference and prediction of one case (the slice with most foreground in 3D), labels in
    :data:`LABEL_COLOURS`, a legend naming the classes (a matplotlib figure; close it after use).

    Args:
        case: the case's entry of the summary (``reference_file``, ``prediction_file``).
        image_file: its first channel, or None (label maps only).
        title: the figure's title.
        label_names: ``{label value: class name}``; values present without a name are shown as ``label <v>``.
        reader_class: nnU-Net reader of the files (default: by file ending).
    """
    plt = _plt()
    ref, spacing = read_segmentation(case["reference_file"], reader_class)
    pred, _ = read_segmentation(case["prediction_file"], reader_class)
    img = None
    if image_file is not None:
        img = read_images(image_file, reader_class)[0][0] if reader_class else read_segmentation(image_file)[0]
        if img.shape != ref.shape:
            img = None
    sq = tuple(s for s, n in zip(spacing, ref.shape) if n > 1)
    index = None
    if np.squeeze(ref).ndim == 3:
        fg = (np.squeeze(ref) > 0) | (np.squeeze(pred) > 0)
        area = fg.reshape(fg.shape[0], -1).sum(1)
        index = int(np.argmax(area)) if area.any() else fg.shape[0] // 2
    aspect = sq[-2] / sq[-1] if len(sq) >= 2 else 1.0
    panels = ([("image", None)] if img is not None else []) + [("reference", ref), ("prediction", pred)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.9), squeeze=False)
    shown: set[int] = set()
    for ax, (name, lab) in zip(axes[0], panels):
        if img is not None:
            ax.imshow(_slice(img, index).astype(float), cmap="gray", aspect=aspect, interpolation="nearest")
        if lab is not None:
            s = _slice(lab, index).astype(np.int64)
            shown |= {int(v) for v in np.unique(s) if v > 0}
            ax.imshow(label_rgba(s, LABEL_ALPHA if img is not None else 1.0), aspect=aspect, interpolation="nearest")
        ax.set_title(name + (f" (slice {index})" if index is not None else ""), fontsize=9)
        ax.axis("off")
    names = {**{v: f"label {v}" for v in shown}, **label_names}
    handles = legend_handles(names)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    fig.tight_layout(rect=(0, 0.08 * (1 + (len(handles) - 1) // 6), 1, 1))
    return fig


def _overlay(case: dict, image_file: Path | None, title: str, png: Path, label_names: dict[int, str],
             reader_class=None) -> None:
    fig = overlay_figure(case, image_file, title, label_names, reader_class)
    fig.savefig(png, dpi=90)
    _plt().close(fig)


def _group_tables(result: dict) -> list[str]:
    """HTML of the means per group: one row per group (foreground mean), then a table per group and class."""
    groups = result.get("groups") or {}
    if not groups:
        return []
    names = result["class_names"]
    rows = [[g, v["n"], *[v["foreground_mean"][m] for m in TABLE_METRICS]] for g, v in groups.items()]
    source = result.get("groups_source")
    parts = ["<h2>Mean per group</h2><p class='note'>Foreground means over each group's cases"
             + (f" (groups from {html.escape(str(source))})" if source and source != "groups" else "") + "; the "
             "means per class follow.</p>" + _table(["group", "cases", *TABLE_METRICS], rows)]
    missing = result.get("cases_without_group") or []
    if missing:
        parts.append(f"<p class='note'>{len(missing)} evaluated case(s) without a group, shown as (no group): "
                     + html.escape(", ".join(missing[:20]) + (", ..." if len(missing) > 20 else "")) + "</p>")
    for g, v in groups.items():
        rows = [[_key(k), names.get(_key(k), _key(k)), *[m[x] for x in TABLE_METRICS]] for k, m in v["mean"].items()]
        rows.append(["foreground", "mean", *[v["foreground_mean"][m] for m in TABLE_METRICS]])
        parts.append(f"<h3>{html.escape(g)} ({v['n']} case{'s' if v['n'] != 1 else ''})</h3>"
                     + _table(["label", "name", *TABLE_METRICS], rows))
    return parts


def _embed(png: Path, alt: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_CSS = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right;font-size:13px}th{background:#eee}"
        "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}.note{color:#555;font-size:13px}")


def write_report(result: dict, output_dir: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                 reader_class=None) -> Path:
    """Write ``report.html``, ``boxplots.png`` and ``overlay_best.png`` / ``overlay_worst.png``.

    Args:
        result: the summary returned by :func:`nnzoo.pipeline.evaluate.evaluate_folders`.
        output_dir: folder to write into.
        image_dir: images for the overlays; without it the overlays show the label maps only.
        reader_class: nnU-Net reader of the files (default: by file ending).

    Returns:
        Path of ``report.html``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = result["class_names"]
    keys = list(result["mean"].keys())
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>nnzoo evaluation</title>"
             f"<style>{_CSS}</style></head><body><h1>nnzoo evaluation</h1>"]
    cases = result["metric_per_case"]
    parts.append(f"<p>{len(cases)} case(s); NSD tolerance {result['tolerance_mm']:g} mm; "
                 f"distances in mm, volumes in mm&sup3;.</p>")
    missing = result.get("cases_without_prediction") or []
    if missing:
        parts.append(f"<p class='note'>{len(missing)} reference case(s) without a prediction (not evaluated): "
                     + html.escape(", ".join(missing[:20]) + (", ..." if len(missing) > 20 else "")) + "</p>")
    rows = [[_key(k), names.get(_key(k), _key(k)), *[result["mean"][k][m] for m in TABLE_METRICS]] for k in keys]
    rows.append(["foreground", "mean", *[result["foreground_mean"][m] for m in TABLE_METRICS]])
    parts.append("<h2>Mean per class</h2>" + _table(["label", "name", *TABLE_METRICS], rows))
    parts.append("<p class='note'>Means skip NaN (both masks empty). When only one mask is empty, Dice and NSD "
                 f"are 0 and the distances are {html.escape(str(result.get('empty_distance', 'diagonal')))} "
                 "(image diagonal). HD95: 95th percentile of the pooled symmetric surface distances (medpy); "
                 "ASSD: mean of the same pooled distances.</p>")
    parts += _group_tables(result)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _boxplots(result, out / "boxplots.png")
    parts.append("<h2>Distribution per class</h2>" + _embed(out / "boxplots.png", "box plots"))
    scored = [(n, s) for n, s in case_scores(result) if not math.isnan(s)]
    if scored:
        by_name = {c["case"]: c for c in cases}
        best, worst = max(scored, key=lambda t: t[1]), min(scored, key=lambda t: t[1])
        picks = [("best", best)] + ([("worst", worst)] if worst[0] != best[0] else [])
        parts.append("<h2>Best and worst case (mean foreground Dice)</h2>")
        for tag, (name, score) in picks:
            png = out / f"overlay_{tag}.png"
            _overlay(by_name[name], find_image(image_dir, name), f"{tag}: {name} (Dice {score:.3f})", png,
                     _value_names(result), reader_class)
            parts.append(f"<h3>{tag}: {html.escape(name)}, Dice {score:.3f}</h3>" + _embed(png, f"{tag} case"))
        if image_dir is None:
            parts.append("<p class='note'>No image folder given: overlays show the label maps only.</p>")
    grouped = bool(result.get("groups"))
    rows = [[c["case"], *([c["group"]] if grouped else []), names.get(_key(k), _key(k)), *[m[x] for x in TABLE_METRICS]]
            for c in cases for k, m in c["metrics"].items()]
    parts.append("<h2>Every case</h2>" + _table(["case", *(["group"] if grouped else []), "class", *TABLE_METRICS],
                                                rows))
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path
