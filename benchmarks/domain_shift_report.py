"""Tables and figure of the domain-shift benchmark (:mod:`benchmarks.domain_shift`) from its JSON of runs."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # loaded by path: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import bootstrap_interval, markdown_table, run_case_scores, save_figure, score_matrix

__all__ = ["summarise", "to_markdown", "write_report", "MIN_GAP"]

SOURCE_ONLY, ORACLE = "source only", "oracle"
#: a target domain's gap (oracle minus source only) below this is "no gap": no share of it is reported
MIN_GAP = 0.02
#: the goal of issue 21: share of every target gap closed, and the largest loss on the source domains
GOAL_CLOSED, GOAL_SOURCE_LOSS = 0.5, 0.01


def _nanmean(x: np.ndarray, axis=None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def summarise(state: dict) -> dict:
    """Per row: Dice per domain over seeds, paired differences to source only (per seed and with 95 % bootstrap
    intervals over seeds and test cases), the share of each target domain's gap closed, failures.

    Returns:
        ``{"groups", "source", "targets", "rows": {key: {...}}, "gap": {domain: (est, lo, hi)}}``.
    """
    groups_of = state["test_groups"]
    source = [g for g in dict.fromkeys(groups_of.values()) if g in state["source_domains"]]
    targets = [g for g in dict.fromkeys(groups_of.values()) if g not in state["source_domains"]]
    pools = {**{g: [c for c, d in groups_of.items() if d == g] for g in source + targets},
             "source": [c for c, d in groups_of.items() if d in source],
             "target": [c for c, d in groups_of.items() if d in targets]}
    ok: dict[str, dict[int, dict[str, float]]] = {}
    rows: dict[str, dict] = {}
    for run in state["runs"].values():
        row = rows.setdefault(run["row"], {"key": run["row"], "trainer": run["trainer"], "augment": run.get("augment"),
                                           "failed": {}, "train_s": [], "predict_s": [], "adapt": run.get("adapt"),
                                           "hparams": run.get("hparams") or {}, "continual": run.get("continual"),
                                           "adapt_change": [], "adapt_s": [], "ensemble": run.get("ensemble")})
        if "failed" in run:
            row["failed"][run["seed"]] = run["failed"]
        else:
            ok.setdefault(run["row"], {})[run["seed"]] = run_case_scores(run)
            row["train_s"].append(run["train_s"])
            row["predict_s"].append(run.get("predict_s", float("nan")))
            if run.get("adapt_change") is not None:
                row["adapt_change"].append(run["adapt_change"])
                row["adapt_s"].append(run.get("adapt_s") or {})

    def matrix(key: str, seeds: list[int], cases: list[str]) -> np.ndarray:
        return score_matrix(ok[key], seeds, cases)

    def seeds_of(*keys: str) -> list[int]:
        common = set.intersection(*(set(ok.get(k, {})) for k in keys))
        return sorted(common)

    gap = {}
    ref = seeds_of(SOURCE_ONLY, ORACLE)
    for g in targets:
        if ref:
            gap[g] = bootstrap_interval(matrix(ORACLE, ref, pools[g]) - matrix(SOURCE_ONLY, ref, pools[g]))
    for key, row in rows.items():
        seeds = sorted(ok.get(key, {}))
        row["seeds"] = seeds
        row["dice"] = {}
        for g, cases in pools.items():
            if seeds:
                per_seed = _nanmean(matrix(key, seeds, cases), axis=1)
                row["dice"][g] = {"mean": float(np.mean(per_seed)), "per_seed": dict(zip(seeds, map(float, per_seed))),
                                  "sd": float(np.std(per_seed, ddof=1)) if len(seeds) > 1 else 0.0}
        row["train_s_mean"] = float(np.mean(row["train_s"])) if row["train_s"] else None
        row["predict_s_mean"] = float(np.mean(row["predict_s"])) if row["predict_s"] else None
        if row["adapt_change"]:  # mean over the runs' cases of each pool (cases are named as in test_groups)
            row["change"] = {g: float(np.mean([v for r in row["adapt_change"] for c, v in r.items() if c in cases]))
                             for g, cases in (("source", set(pools["source"])), ("target", set(pools["target"])))
                             if any(c in cases for r in row["adapt_change"] for c in r)}
            secs = [v for r in row["adapt_s"] for v in r.values()]
            row["adapt_s_mean"] = float(np.mean(secs)) if secs else None
        paired = seeds_of(key, SOURCE_ONLY)
        if key == SOURCE_ONLY or not paired:
            continue
        row["paired_seeds"] = paired
        row["diff"], row["diff_per_seed"] = {}, {}
        for g, cases in pools.items():
            d = matrix(key, paired, cases) - matrix(SOURCE_ONLY, paired, cases)
            row["diff"][g] = bootstrap_interval(d)
            row["diff_per_seed"][g] = dict(zip(paired, map(float, _nanmean(d, axis=1))))
        three = seeds_of(key, SOURCE_ONLY, ORACLE)
        row["closed"] = {}
        for g in targets:
            if not three or g not in gap or gap[g][0] < MIN_GAP:
                continue
            m, s, o = (matrix(k, three, pools[g]) for k in (key, SOURCE_ONLY, ORACLE))
            row["closed"][g] = bootstrap_interval(
                m, s, o, statistic=lambda m, s, o: _nanmean(m - s, axis=(-2, -1)) / _nanmean(o - s, axis=(-2, -1)))
    return {"groups": source + targets, "source": source, "targets": targets, "rows": rows, "gap": gap}


def _order(summary: dict) -> list[dict]:
    rows = summary["rows"]
    refs = [rows[k] for k in (SOURCE_ONLY, ORACLE) if k in rows]
    rest = [r for k, r in rows.items() if k not in (SOURCE_ONLY, ORACLE)]
    rest.sort(key=lambda r: (not r["seeds"], -r["dice"].get("target", {}).get("mean", 0.0)))
    return refs + rest


def _name(r: dict) -> str:
    if r.get("ensemble"):
        return ("`predict --ensemble` " + " + ".join(r["ensemble"]) + " `--ensemble-weighting agreement` (weighted per "
                "case by the two models' agreement)" + (f" + `--adapt {r['adapt']}` (each member adapted)"
                                                        if r.get("adapt") else ""))
    return {SOURCE_ONLY: f"`{r['trainer']}`, source labels (source only)",
            ORACLE: f"`{r['trainer']}`, all labels (oracle)"}.get(r["key"], f"`{r['trainer']}`"
                                                                     + (f" + `--augment {r['augment']}`"
                                                                        if r.get("augment") else "")
                                                                     + (", source labels" if r["key"].startswith(
                                                                         f"{SOURCE_ONLY}+") else "")
                                                                     + (f" + `predict --adapt {r['adapt']}"
                                                                        + (" --adapt-continual` (per domain)"
                                                                           if r.get("continual") else "`")
                                                                        if r.get("adapt") else ""))


def _status(r: dict) -> str:
    if not r["failed"]:
        return ""
    n = len(r["failed"]) + len(r["seeds"])
    reasons = list(dict.fromkeys(r["failed"].values()))
    return f"failed ({len(r['failed'])}/{n} seeds): " + "; ".join(reasons).replace("|", "/")


def _ci(v: tuple[float, float, float], pct: bool = False) -> str:
    if pct:
        return f"{round(100 * v[0]):d} % [{round(100 * v[1]):d}, {round(100 * v[2]):d}]"
    return f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"


def goal_rows(summary: dict) -> list[str]:
    """Rows closing at least half of every target gap (where there is one) and losing at most 0.01 Dice on the
    source domains, on the mean over seeds."""
    out = []
    for r in _order(summary):
        if r["key"] in (SOURCE_ONLY, ORACLE) or not r.get("closed") or "diff" not in r:
            continue
        eps = 1e-9  # (shares and differences of floats)
        if (all(v[0] >= GOAL_CLOSED - eps for v in r["closed"].values())
                and r["diff"]["source"][0] >= -GOAL_SOURCE_LOSS - eps):
            out.append(r["key"])
    return out


def to_markdown(state: dict, summary: dict | None = None) -> str:
    s = summary or summarise(state)
    st, groups, targets = state["settings"], s["groups"], s["targets"]
    order = _order(s)

    def dice(r: dict, g: str) -> str:
        d = r["dice"].get(g)
        return f"{d['mean']:.3f} ± {d['sd']:.3f}" if d else "–"

    t1 = markdown_table(
        ["row", *groups, "source domains", "target domains", "train s/run", "predict s/run", "status"],
        ([_name(r), *(dice(r, g) for g in [*groups, "source", "target"]),
          f"{r['train_s_mean']:.0f}" if r["train_s_mean"] else "–",
          f"{r['predict_s_mean']:.0f}" if r.get("predict_s_mean") == r.get("predict_s_mean") and r.get("predict_s_mean")
          else "–", _status(r) or "ok"] for r in order))
    gap_line = ["gap (oracle − source only)", *(_ci(s["gap"][g]) if g in s["gap"] else "–" for g in targets), "–"]
    t2 = markdown_table(
        ["row", *(f"{g}: gap closed" for g in targets), "Δ source domains"],
        [gap_line, *([_name(r), *(_ci(r["closed"][g], pct=True) if g in r.get("closed", {}) else
                                  ("no gap" if g in s["gap"] and s["gap"][g][0] < MIN_GAP else "–") for g in targets),
                      _ci(r["diff"]["source"]) if "diff" in r else "–"]
                     for r in order if r["key"] not in (SOURCE_ONLY, ORACLE))])

    def per_seed(r: dict, g: str) -> str:
        return ", ".join(f"s{k} {v:+.3f}" for k, v in r["diff_per_seed"][g].items())

    t3 = markdown_table(
        ["row", *(f"Δ {g}" for g in groups), "Δ target domains, per seed", "Δ source domains, per seed"],
        ([_name(r), *(_ci(r["diff"][g]) for g in groups), per_seed(r, "target"), per_seed(r, "source")]
         for r in order if "diff" in r))
    adapted = [r for r in order if r.get("change")]
    t4 = markdown_table(
        ["row", "relative change, source-domain cases", "relative change, target-domain cases",
         "s adapting per case"],
        ([_name(r), *(f"{r['change'][g]:.2e}" if g in r["change"] else "–" for g in ("source", "target")),
          f"{r['adapt_s_mean']:.2f}" if r.get("adapt_s_mean") is not None else "–"] for r in adapted))
    pseudo: dict[str, dict[str, list[float]]] = {}
    for run in state["runs"].values():
        for g, v in (run.get("pseudo_label_dice") or {}).items():
            pseudo.setdefault(run["row"], {}).setdefault(g, []).append(v)
    t5 = markdown_table(
        ["row", *(f"{g}: pseudo-label Dice" for g in targets), "seeds"],
        ([_name(s["rows"][k]), *(f"{np.mean(v[g]):.3f}" if g in v else "–" for g in targets), str(max(map(len, v.values())))]
         for k, v in sorted(pseudo.items())))
    winners = goal_rows(s)
    hp = {r["key"]: r["hparams"] for r in s["rows"].values() if r["hparams"]}
    notes = [
        f"{st['config']}, seeds {st['seeds']}, {st['epochs']} × {st['iters']} iterations for every run, fold `all`; "
        + (f"cohort {st['source']}" if st.get("source") else
           f"generated brain phantoms ({st['num_train']} training, {st['num_test']} held-out test cases)"),
        f"source domains (labeled): {', '.join(s['source'])}; target domains (training images unlabeled, "
        f"in `imagesUnlabeled`; read by semi-supervised trainers only): {', '.join(targets)}",
        "Dice: mean foreground Dice of a domain's test cases, mean ± standard deviation over seeds",
        "Δ: paired difference to source only (same seed, same test cases); [ ]: 95 % interval, percentile "
        "bootstrap over seeds and test cases (4000 draws); gap closed: mean Δ / mean gap on the same draws"
        f" (\"no gap\": gap below {MIN_GAP})",
        f"goal (≥ {100 * GOAL_CLOSED:.0f} % of every target gap closed, ≥ −{GOAL_SOURCE_LOSS} on the source domains): "
        + (", ".join(f"`{k}`" for k in winners) if winners else "no row"),
    ]
    for key, why in (state.get("skipped") or {}).items():
        notes.append(f"row `{key}` not run: {why}")
    if state.get("jobs", 1) > 1:
        notes.append(f"{state['jobs']} runs side by side, each with 1/{state['jobs']} of the cores: train s/run are "
                     "times on shared cores")
    if hp:
        notes.append("hyperparameters set for this benchmark (--hparam / --quick): "
                     + "; ".join(f"`{k}` {v}" for k, v in hp.items()))
    notes.append(f"{state.get('date', '')}, {state.get('machine', '')}, wall time {state.get('wall_s', 0) / 60:.1f} min"
                 f" (estimated up front: {state.get('estimate_min', '?')} min); `{state.get('command', '')}`")
    return ("Mean foreground Dice per test domain:\n\n" + "\n".join(t1)
            + "\n\nShare of each target domain's gap closed, and the change on the source domains:\n\n" + "\n".join(t2)
            + "\n\nPaired differences to source only per domain:\n\n" + "\n".join(t3) + "\n\n"
            + ("How far test-time adaptation moved the model (`adaptation.json`: norm-layer affine parameters, "
               "||θ − θ_trained|| / ||θ_trained||, for TENT and GraTa; VPTTA: root mean square of prompt − 1; "
               "mean over the seeds' test cases; continual: accumulated along the domain's stream):\n\n"
               + "\n".join(t4) + "\n\n" if adapted else "")
            + ("Self-training's pseudo-labels of the unlabeled training images against those images' labels (which "
               "the run never saw; mean foreground Dice per domain, mean over seeds):\n\n" + "\n".join(t5) + "\n\n"
               if pseudo else "")
            + "\n".join(f"- {n}" for n in notes) + "\n")


def _short(key: str) -> str:
    """A row's label in the figure (``nnUNetTrainerX`` -> ``X``, ``nnUNetTrainer+gin`` -> ``nnU-Net+gin``)."""
    if key in (SOURCE_ONLY, ORACLE) or not key.startswith("nnUNetTrainer"):
        return key.replace(" + nnUNetTrainer", " + ")  # an ensemble row: source only + MIND (agreement)
    rest = key[len("nnUNetTrainer"):]
    return "nnU-Net" + rest if not rest or rest.startswith("+") else rest


def plot(state: dict, summary: dict, png: Path) -> None:
    """One line per row, readable with many rows: Dice per test domain (annotated heat map), the share of each
    target gap closed and the change on the source domains (95 % intervals; dotted: the goal's bounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _order(summary) if r["seeds"]]
    groups, targets = summary["groups"], summary["targets"]
    n = len(rows)
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(15, 1.6 + 0.34 * n), sharey=True,
                                     gridspec_kw={"width_ratios": [len(groups) + 1, 3, 2]})
    dice = np.array([[r["dice"][g]["mean"] for g in groups] for r in rows])
    ax.imshow(dice, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(n):
        for j in range(len(groups)):
            ax.text(j, i, f"{dice[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="k" if dice[i, j] > 0.6 else "w")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{g}\n(source)" if g in summary["source"] else g for g in groups], fontsize=9)
    ax.set_yticks(range(n))
    ax.set_yticklabels([_short(r["key"]) for r in rows], fontsize=9)
    ax.set_title("mean foreground Dice per test domain\n(mean over seeds)", fontsize=10)
    h = 0.8 / max(1, len(targets))
    colors = plt.cm.tab10(np.arange(len(targets)) % 10)
    for i, r in enumerate(rows):
        for k, g in enumerate(targets):
            if g in r.get("closed", {}):
                est, lo, hi = r["closed"][g]
                y = i - 0.4 + h * (k + 0.5)
                bx.barh(y, 100 * est, h, color=colors[k], label=g)
                bx.errorbar(100 * est, y, xerr=[[100 * (est - lo)], [100 * (hi - est)]], color="k", capsize=2, lw=0.8)
        if "diff" in r:
            est, lo, hi = r["diff"]["source"]
            cx.errorbar(100 * est, i, xerr=[[100 * (est - lo)], [100 * (hi - est)]], fmt="o", color="k", ms=4,
                        capsize=2, lw=0.8)
    handles, labels = bx.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    bx.legend(seen.values(), seen.keys(), fontsize=8, loc="lower right")
    bx.axvline(0, color="k", lw=0.8)
    bx.axvline(100 * GOAL_CLOSED, color="#888", ls=":", lw=1)
    bx.set_xlabel("% of the gap (oracle − source only) closed", fontsize=9)
    bx.set_title("gap closed per target domain\n(95 % bootstrap interval; dotted: goal)", fontsize=10)
    cx.axvline(0, color="k", lw=0.8)
    cx.axvline(-100 * GOAL_SOURCE_LOSS, color="#888", ls=":", lw=1)
    cx.set_xlabel("Δ Dice points on the source domains", fontsize=9)
    cx.set_title("change on the source domains\n(95 % interval; dotted: goal)", fontsize=10)
    for a in (bx, cx):
        a.grid(axis="x", color="#ddd", lw=0.5)
    ax.set_ylim(n - 0.5, -0.5)
    st = state["settings"]
    fig.suptitle(f"Domain-shift benchmark ({st['config']}, {len(st['seeds'])} seeds, "
                 f"{st['epochs']} × {st['iters']} iterations)", fontsize=11)
    save_figure(fig, png)


def write_report(state: dict, root: Path) -> str:
    """Write ``domain_shift.md`` and ``domain_shift.png`` into ``root``; returns the Markdown."""
    summary = summarise(state)
    md = to_markdown(state, summary)
    (root / "domain_shift.md").write_text(md)
    plot(state, summary, root / "domain_shift.png")
    return md
