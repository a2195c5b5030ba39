"""Tables and figure of the low-label benchmark (:mod:`benchmarks.low_label`) from its JSON of runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # loaded by path: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import bootstrap_interval, markdown_table, run_case_scores, save_figure, score_matrix

BASELINE = "nnUNetTrainer"
FULL = "all labels"

__all__ = ["summarise", "by_group", "group_gaps", "verdicts", "to_markdown", "write_report"]

#: a group's gap (all labels minus N labels, baseline) below this is reported as "no gap": a fraction
#: of a gap within the seed-to-seed spread would say nothing
MIN_GROUP_GAP = 0.02


def summarise(state: dict) -> dict:
    """Per (trainer, labels): Dice per seed, mean, min, max, paired difference to the baseline on the
    same labels and seed, and the fraction of the gap closed, each with a 95 % interval.

    The gap is ``mean(baseline on all labels) - mean(baseline on N labels)`` over seeds; a trainer
    closes ``mean_s(trainer_s - baseline_s) / gap`` of it. The intervals (``diff_ci``, ``closed_ci``:
    ``(estimate, lower, upper)``) are :func:`benchmarks.stats.bootstrap_interval`'s two-way bootstrap
    over seeds and test cases of the per-case differences (trainer minus baseline, same seed, same
    case); their estimates are means over cases of the per-case Dice, which equal the run means when
    every class is present in every case.
    """
    runs = list(state["runs"].values())
    rows: dict[tuple[str, str], dict] = {}
    for r in runs:
        row = rows.setdefault((r["trainer"], r["labels"]), {"trainer": r["trainer"], "labels": r["labels"],
                                                             "seeds": {}, "classes": {}, "train_s": []})
        row["seeds"][r["seed"]] = r["mean_fg"]
        row["train_s"].append(r["train_s"])
        for c, d in r["dice"].items():
            row["classes"].setdefault(c, []).append(d)
    low = next((k for k in rows if k[0] == BASELINE and k[1] != FULL), None)
    full = rows.get((BASELINE, FULL))
    scores: dict[tuple[str, str], dict[int, dict[str, float]]] = {}  # per row and seed: per-case Dice
    for r in runs:
        scores.setdefault((r["trainer"], r["labels"]), {})[r["seed"]] = run_case_scores(r)
    gap = None
    if low and full:
        gap = float(np.mean(list(full["seeds"].values())) - np.mean(list(rows[low]["seeds"].values())))
    for key, row in rows.items():
        v = np.array(list(row["seeds"].values()))
        row.update(mean=float(v.mean()), min=float(v.min()), max=float(v.max()), n=len(v),
                   class_means={c: float(np.mean(d)) for c, d in row["classes"].items()},
                   train_s_mean=float(np.mean(row["train_s"])))
        if low and key[1] == rows[low]["labels"] and key != low:
            row.update(_seed_differences(row, rows[low]))
            if gap is not None and gap > 0:  # no gap, nothing to close: the fraction would be meaningless
                row["gap_closed"] = float(row["diff_mean"] / gap)
            row.update(_intervals(scores, key, low))
    return {"rows": rows, "gap": gap, "low": low, "scores": scores}


def variant_effects(state: dict, summary: dict) -> list[dict]:
    """What each ``--variant`` row changes against its trainer's row (nnzoo's defaults), paired by seed and case.

    Returns one dict per variant row whose trainer ran on the same labels: ``variant``, ``trainer``,
    ``hparams``, ``diff_mean``/``diff_min``/``diff_max``/``wins``/``paired`` over the seeds both ran, and
    ``diff_ci`` (``(estimate, lower, upper)``, the two-way bootstrap of the per-case differences) when the
    runs hold per-case scores.
    """
    variants = (state.get("settings") or {}).get("variants") or {}
    rows, scores, out = summary["rows"], summary.get("scores", {}), []
    for key, row in rows.items():
        spec = variants.get(key[0])
        base_key = (spec["trainer"], key[1]) if spec else None
        per_seed = _seed_differences(row, rows[base_key]) if base_key in rows else {}
        if not per_seed:
            continue
        seeds, cases = _paired_cases(scores, key, base_key)
        effect = {"variant": key[0], "trainer": spec["trainer"], "labels": key[1], "hparams": spec.get("hparams", {}),
                  **per_seed}
        if cases:
            effect["diff_ci"] = bootstrap_interval(score_matrix(scores[key], seeds, cases)
                                                   - score_matrix(scores[base_key], seeds, cases))
        out.append(effect)
    return out


def _seed_differences(row: dict, base: dict) -> dict:
    """Per-seed paired differences of two rows' mean Dice (the seeds both ran): mean, min, max, wins, count."""
    diffs = np.array([row["seeds"][s] - base["seeds"][s] for s in row["seeds"] if s in base["seeds"]])
    if not len(diffs):
        return {}
    return {"diff_mean": float(diffs.mean()), "diff_min": float(diffs.min()), "diff_max": float(diffs.max()),
            "wins": int((diffs > 0).sum()), "paired": len(diffs)}


def _paired_cases(scores: dict, key: tuple[str, str], base: tuple[str, str]) -> tuple[list[int], list[str]]:
    """The seeds both rows ran and the test cases both scored in them."""
    seeds = sorted(set(scores.get(key, {})) & set(scores.get(base, {})))
    return seeds, sorted({c for s in seeds for c in scores[key][s]} & {c for s in seeds for c in scores[base][s]})


def _variant_table(state: dict, summary: dict) -> str:
    effects = variant_effects(state, summary)
    if not effects:
        return ""
    body = [[f"`{e['variant']}`", f"`{e['trainer']}`", ", ".join(f"`{k}={v}`" for k, v in e["hparams"].items()),
             e["labels"], f"{e['diff_mean']:+.4f} ({e['diff_min']:+.4f} … {e['diff_max']:+.4f}; {e['wins']}/{e['paired']})",
             _ci_cell(e)] for e in effects]
    head = ["variant", "against", "hyperparameters", "labeled", "Δ vs the trainer's defaults (paired; min–max; wins)",
            "Δ 95 % interval"]
    return ("\nEach `--variant` row against its trainer with nnzoo's defaults (same labeled cases, seeds and test "
            "cases; the same paired bootstrap):\n\n" + "\n".join(markdown_table(head, body)) + "\n")


def _intervals(scores: dict[tuple[str, str], dict[int, dict[str, float]]], key: tuple[str, str],
               low: tuple[str, str]) -> dict:
    """``diff_ci`` (and ``closed_ci`` when the all-labels baseline ran on the same seeds) of row ``key`` against
    the baseline ``low``, from ``scores`` (``{row: {seed: {case: Dice}}}``); empty when the runs hold none."""
    seeds, cases = _paired_cases(scores, key, low)
    if not seeds or not cases:
        return {}
    m, b = score_matrix(scores[key], seeds, cases), score_matrix(scores[low], seeds, cases)
    out = {"diff_ci": bootstrap_interval(m - b), "ci_seeds": len(seeds), "ci_cases": len(cases)}
    full = scores.get((BASELINE, FULL), {})
    if all(s in full for s in seeds):
        f = score_matrix(full, seeds, cases)

        def closed(m_, b_, f_):
            with np.errstate(all="ignore"):
                return np.nanmean(m_ - b_, axis=(-2, -1)) / np.nanmean(f_ - b_, axis=(-2, -1))

        out["closed_ci"] = bootstrap_interval(m, b, f, statistic=closed)
    return out


def by_group(state: dict) -> dict[tuple[str, str], dict[str, float]]:
    """Per (trainer, labels): mean foreground Dice over seeds and the test cases of each group (e.g. the
    acquisition style of a generated cohort; ``state["test_groups"]``: ``{case: group}``)."""
    groups = state.get("test_groups") or {}
    out: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in state["runs"].values():
        row = out.setdefault((r["trainer"], r["labels"]), {})
        for case_file, dice in r.get("per_case", {}).items():
            g = groups.get(case_file.split(".")[0])
            if g is not None and dice:
                row.setdefault(g, []).append(float(np.mean(list(dice.values()))))
    return {k: {g: float(np.mean(v)) for g, v in row.items()} for k, row in out.items() if row}


def group_gaps(state: dict) -> dict[str, dict]:
    """Per test-case group: the gap (baseline on all labels minus baseline on ``N`` labels, group means)
    and, per trainer on ``N`` labels, the fraction of it closed, ``(trainer - baseline) / gap``.

    Groups whose gap is below :data:`MIN_GROUP_GAP` get ``gap`` only (no fraction). Shows *where* a
    method gains: e.g. on the acquisitions the labeled cases do not come from.
    """
    table = by_group(state)
    low = next((k for k in table if k[0] == BASELINE and k[1] != FULL), None)
    full = table.get((BASELINE, FULL))
    if low is None or full is None:
        return {}
    out: dict[str, dict] = {}
    for g, f in full.items():
        if g not in table[low]:
            continue
        gap = f - table[low][g]
        entry: dict = {"gap": gap, "closed": {}}
        if gap >= MIN_GROUP_GAP:
            for (trainer, labels), row in table.items():
                if labels == low[1] and trainer != BASELINE and g in row:
                    entry["closed"][trainer] = (row[g] - table[low][g]) / gap
        out[g] = entry
    return out


def _gap_table(state: dict, summary: dict) -> str:
    gaps = group_gaps(state)
    if not gaps:
        return ""
    groups = list(gaps)
    present = {t for e in gaps.values() for t in e["closed"]}
    trainers = [r["trainer"] for r in sorted(summary["rows"].values(), key=lambda r: -r["mean"])
                if r["trainer"] in present and r["labels"] != FULL]
    lines = markdown_table(
        ["", *groups],
        [["gap (all labels − low labels)", *(f"{gaps[g]['gap']:+.3f}" for g in groups)],
         *([f"`{t}`", *(f"{round(100 * gaps[g]['closed'][t]):d} %" if t in gaps[g]["closed"] else "no gap"
                        for g in groups)] for t in trainers)])
    return ("\nShare of each group's gap closed (group means; \"no gap\": below "
            f"{MIN_GROUP_GAP:.2f}):\n\n" + "\n".join(lines) + "\n")


def _pseudo_label_table(state: dict) -> str:
    """Each run's ``pseudo_labels`` (``{case: Dice}``, scored when the run finished), per trainer and group."""
    groups_of = state.get("train_groups") or {}
    per: dict[str, dict[str, list[float]]] = {}
    for r in state["runs"].values():
        for case, d in (r.get("pseudo_labels") or {}).items():
            trainer = r["trainer"]
            per.setdefault(trainer, {}).setdefault(groups_of.get(case, "all"), []).append(d)
    if not per:
        return ""
    groups = list(dict.fromkeys(g for row in per.values() for g in row))
    lines = markdown_table(["trainer", *groups],
                           ([f"`{t}`", *(f"{np.mean(row[g]):.3f} (n={len(row[g])})" if g in row else "–" for g in groups)]
                            for t, row in per.items()))
    return ("\nPseudo-labels the trainer wrote for its unlabeled training cases, scored against their labels "
            "(which no run sees; mean foreground Dice per group, all seeds):\n\n" + "\n".join(lines) + "\n")


def _group_table(state: dict, summary: dict) -> str:
    table = by_group(state)
    if not table:
        return ""
    groups = list(dict.fromkeys(g for row in table.values() for g in row))
    order = sorted(summary["rows"].values(), key=lambda r: (r["labels"] != FULL, r["trainer"] != BASELINE, -r["mean"]))
    lines = markdown_table(["trainer", "labeled", *groups],
                           ([f"`{r['trainer']}`", r["labels"],
                             *(f"{row[g]:.3f}" if g in row else "–" for g in groups)]
                            for r in order for row in [table.get((r["trainer"], r["labels"]), {})]))
    return ("\nMean foreground Dice per test-case group (mean over seeds and the group's test cases):\n\n"
            + "\n".join(lines) + "\n")


def _ci_cell(r: dict) -> str:
    """``[lower, upper]`` of the paired difference and whether it is above, below or around zero."""
    if "diff_ci" not in r:
        return "–"
    _, lo, hi = r["diff_ci"]
    verdict = "above 0" if lo > 0 else "below 0" if hi < 0 else "includes 0"
    return f"[{lo:+.4f}, {hi:+.4f}] {verdict}"


def verdicts(summary: dict) -> list[str]:
    """One line per trainer on ``N`` labels: better than, worse than or not separable from the baseline (95 %
    interval), and the best gap share, the issue's goal being every trainer above with the best closing half."""
    rows = [r for r in summary["rows"].values() if "diff_ci" in r]
    if not rows:
        return []
    above = [r["trainer"] for r in rows if r["diff_ci"][1] > 0]
    below = [r["trainer"] for r in rows if r["diff_ci"][2] < 0]
    tied = [r["trainer"] for r in rows if r["trainer"] not in above + below]
    out = [f"above {BASELINE} (95 % interval above 0): " + (", ".join(f"`{t}`" for t in above) or "none"),
           "not separable from it (interval includes 0): " + (", ".join(f"`{t}`" for t in tied) or "none"),
           "below it (interval below 0): " + (", ".join(f"`{t}`" for t in below) or "none")]
    best = max((r for r in rows if "gap_closed" in r), key=lambda r: r["gap_closed"], default=None)
    if best is not None:
        out.append(f"largest share of the gap closed: `{best['trainer']}` {round(100 * best['gap_closed']):d} %"
                   + (" (goal: ≥ 50 %)" if best["gap_closed"] < 0.5 else " (≥ 50 %)"))
    return out


def to_markdown(state: dict, summary: dict | None = None) -> str:
    summary = summary or summarise(state)
    st = state["settings"]
    rows, gap = summary["rows"], summary["gap"]
    classes = sorted({c for r in rows.values() for c in r["class_means"]}, key=int)
    names = state.get("label_names", {})
    head = ["trainer", "labeled", "mean fg Dice (min–max)", *[names.get(c, f"class {c}") for c in classes],
            f"Δ vs {BASELINE} (paired; min–max; wins)", "Δ 95 % interval", "gap closed [95 %]", "train s/run"]
    order = sorted(rows.values(), key=lambda r: (r["labels"] != FULL, r["trainer"] != BASELINE, -r["mean"]))
    body = []
    for r in order:
        diff = (f"{r['diff_mean']:+.4f} ({r['diff_min']:+.4f} … {r['diff_max']:+.4f}; {r['wins']}/{r['paired']})"
                if "diff_mean" in r else "–")
        closed = f"{round(100 * r['gap_closed']):d} %" if "gap_closed" in r else "–"
        if "closed_ci" in r and "gap_closed" in r:
            closed += f" [{round(100 * r['closed_ci'][1]):d}, {round(100 * r['closed_ci'][2]):d}]"
        body.append([f"`{r['trainer']}`", r["labels"], f"{r['mean']:.4f} ({r['min']:.4f}–{r['max']:.4f})",
                     *(f"{r['class_means'].get(c, float('nan')):.3f}" for c in classes), diff, _ci_cell(r), closed,
                     f"{r['train_s_mean']:.0f}"])
    lines = markdown_table(head, body)
    quick = {r["trainer"]: r["quick_hparams"] for r in state["runs"].values() if r.get("quick_hparams")}
    notes = [f"{st['config']}, {st['labeled']} labeled cases per seed, seeds {st['seeds']}, "
             f"{st['epochs']} × {st['iters']} iterations for every run, fold `all`, "
             f"test cases held out ({st['num_test']} generated)" if not st.get("source") else
             f"{st['config']}, {st['labeled']} labeled cases per seed, seeds {st['seeds']}, "
             f"{st['epochs']} × {st['iters']} iterations, source {st['source']}",
             f"gap (all labels − {st['labeled']} labels, {BASELINE}): "
             + (f"{gap:+.4f} mean foreground Dice" if gap is not None else "not measured")
             + (" (no gap: the fraction closed is not reported)" if gap is not None and gap <= 0 else "")]
    if state.get("labeled_groups"):
        every = sorted(set((state.get("train_groups") or {}).values()))
        notes.append(f"labeled cases drawn from {', '.join(state['labeled_groups'])} only; unlabeled and test cases "
                     f"from {', '.join(every) if every else 'every group'}"
                     if set(state["labeled_groups"]) != set(every) else
                     "labeled, unlabeled and test cases drawn from the same groups: " + ", ".join(every))
    if state.get("jobs", 1) > 1:
        notes.append(f"{state['jobs']} runs side by side, each with 1/{state['jobs']} of the cores: train s/run are "
                     "times on shared cores")
    if quick:
        notes.append("hyperparameters set for this benchmark (--hparam / --quick): " + "; ".join(f"`{t}` {q}" for t, q in quick.items()))
    critic = sorted((r["seed"], r["method_records"]["shape_critic"]) for r in state["runs"].values()
                    if (r.get("method_records") or {}).get("shape_critic"))
    if critic:
        notes.append("shape critic (`nnUNetTrainerShapePrior`), held-out AUC per seed: " + "; ".join(
            f"seed {s_}: {c.get('auc', float('nan')):.3f} after {c.get('critic_updates', '?')} updates "
            f"(stopped by {c.get('stopped_by', '?')}{', cached' if c.get('cache_hit') else ''})" for s_, c in critic))
    ci_n = next((r for r in rows.values() if "ci_seeds" in r), None)
    if ci_n:
        notes.append(f"95 % intervals: percentile bootstrap over seeds and test cases drawn independently ({ci_n['ci_seeds']} "
                     f"seeds x {ci_n['ci_cases']} cases, 4000 draws) of the per-case paired differences")
    notes += verdicts(summary)
    notes.append(f"{state.get('date', '')}, {state.get('machine', '')}, wall time {state.get('wall_s', 0) / 60:.1f} min; "
                 f"`{state.get('command', '')}`")
    return ("\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
            + _variant_table(state, summary) + _group_table(state, summary) + _gap_table(state, summary)
            + _pseudo_label_table(state))


def plot(state: dict, summary: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summary["rows"].values(), key=lambda r: (r["labels"] != FULL, r["trainer"] != BASELINE, -r["mean"]))
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2, 4.2))
    for i, r in enumerate(rows):
        v = list(r["seeds"].values())
        ax.bar(i, r["mean"], color="#9ecae1" if r["labels"] == FULL else "#c7e9c0", edgecolor="k", width=0.6)
        ax.errorbar(i, r["mean"], yerr=[[r["mean"] - r["min"]], [r["max"] - r["mean"]]], color="k", capsize=4)
        ax.scatter([i] * len(v), v, color="k", s=12, zorder=3)
    low = summary["low"]
    if low:
        ax.axhline(summary["rows"][low]["mean"], color="#d62728", ls="--", lw=1, label=f"{BASELINE}, {low[1]} labeled")
    full = summary["rows"].get((BASELINE, FULL))
    if full:
        ax.axhline(full["mean"], color="#1f77b4", ls=":", lw=1, label=f"{BASELINE}, all labels")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['trainer'].replace('nnUNetTrainer', '') or 'nnU-Net'}\n{r['labels']}" for r in rows],
                       fontsize=8)
    lo = min(r["min"] for r in rows)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(r["max"] for r in rows) + 0.03))
    ax.set_ylabel("mean foreground Dice (test cases)")
    st = state["settings"]
    ax.set_title(f"Low-label benchmark ({st['config']}, {st['labeled']} labeled, {len(st['seeds'])} seeds; "
                 "bars: mean, whiskers: min–max, dots: seeds)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, png)


def write_report(state: dict, root: Path) -> str:
    """Write ``low_label.md`` and ``low_label.png`` into ``root``; returns the Markdown."""
    summary = summarise(state)
    md = to_markdown(state, summary)
    (root / "low_label.md").write_text(md)
    plot(state, summary, root / "low_label.png")
    return md
