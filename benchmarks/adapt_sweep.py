"""Test-time adaptation beyond the official settings, chosen on validation cases and never on test cases.

Diagnostic beside the domain-shift benchmark (:mod:`benchmarks.domain_shift`): does any setting of
``nnzoo predict --adapt`` close the target gaps, or do the official ones only act too little? It runs on
a finished domain-shift work folder and never reads its test cases:

1. **Validation cases**: the cohort's *training* cases with their labels, grouped by domain. The
   target domains' training images were unlabeled for every trained row but the oracle (their labels
   are read here only, to score); the source domains' were seen, labeled, in training (their scores
   say whether adaptation harms images the model knows, not how it generalises).
2. **Runs**: for each model (``--models``: rows of the benchmark, seed ``--seed``) plain prediction and
   every setting of :data:`GRID` (or ``--setting METHOD[:NAME=VALUE,...]``), episodic, through the
   ``nnzoo`` CLI; ``nnzoo evaluate --groups`` gives the mean foreground Dice per domain.
3. **Report** (``adapt_sweep.md`` / ``.json`` in ``--out``): Dice per domain, the change against plain
   prediction, how far the adaptation moved the model (``adaptation.json``'s mean relative change) and the
   seconds per run.

Usage::

    python benchmarks/adapt_sweep.py --out /work/bench/domain_shift          # after benchmarks/domain_shift.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import cohort, stats
from benchmarks.domain_shift import DG_TTA_MODEL, SOURCE_ONLY, _tag

#: settings per method: the official one first, then more steps, a larger learning rate, a larger prompt
GRID: dict[str, list[dict[str, str]]] = {
    "tent": [{}, {"STEPS": "10"}, {"STEPS": "50"}, {"LR": "0.01"}, {"LR": "0.01", "STEPS": "10"},
             {"LR": "0.01", "STEPS": "50"}],
    "vptta": [{}, {"ITERS": "10"}, {"PROMPT_ALPHA": "0.1"}, {"PROMPT_ALPHA": "0.1", "ITERS": "10"},
              {"PROMPT_ALPHA": "0.25", "ITERS": "10"}, {"PROMPT_ALPHA": "0.25", "ITERS": "10", "LR": "0.2"}],
    "grata": [{}, {"STEPS": "10"}, {"LR": "0.001"}, {"LR": "0.001", "STEPS": "10"}, {"LR": "0.01", "STEPS": "10"}],
}


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    """``METHOD[:NAME=VALUE,...]`` -> ``(method, {NAME: VALUE})``.

    Raises:
        SystemExit: an item that is not ``NAME=VALUE``.
    """
    method, _, rest = text.partition(":")
    hp = {}
    for item in filter(None, rest.split(",")):
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise SystemExit(f"error: --setting {text}: {item!r} is not NAME=VALUE")
        hp[name] = value
    return method, hp


def setting_name(method: str | None, hp: dict[str, str]) -> str:
    return "plain" if method is None else method + ("" if not hp else " " + " ".join(f"{k}={v}" for k, v in hp.items()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--out", required=True, help="a finished domain-shift work folder (domain_shift.json)")
    ap.add_argument("--models", nargs="+", default=[SOURCE_ONLY, DG_TTA_MODEL], metavar="ROW",
                    help=f"benchmark rows whose models adapt (default: {SOURCE_ONLY!r} {DG_TTA_MODEL})")
    ap.add_argument("--seed", type=int, default=0, help="the rows' seed (default 0)")
    ap.add_argument("--setting", action="append", default=None, metavar="METHOD[:NAME=VALUE,...]",
                    help="run these settings instead of the built-in grid (repeatable)")
    ap.add_argument("--dataset-id", type=int, default=960, help="the benchmark's source dataset id (default 960)")
    a = ap.parse_args(argv)
    a.settings = ([parse_setting(s) for s in a.setting] if a.setting
                  else [(m, hp) for m, grid in GRID.items() for hp in grid])
    return a


def validation_folder(root: Path, state: dict) -> Path:
    """``root/validation`` with ``validation_images/``, ``validation_labels/`` (links to the cohort's training
    cases) and ``domains.json``."""
    src = Path(state["settings"]["source"]) if state["settings"].get("source") else root / "cohort"
    val = root / "validation"
    groups = state["train_groups"]
    for sub in ("images", "labels"):
        cohort.link_cases(val / f"validation_{sub}", (f for c, f in cohort.cases(src / sub).items() if c in groups))
    (val / "domains.json").write_text(json.dumps(groups))
    return val


def run_setting(root: Path, val: Path, *, row: dict, seed: int, did: int, config: str, device: str,
                method: str | None, hp: dict[str, str]) -> dict:
    """Predict and score the validation cases with one model and setting."""
    tag = f"{_tag(row['key'], seed)}__{setting_name(method, hp).replace(' ', '_').replace('=', '-')}"
    extra = ["--augment", row["augment"]] if row.get("augment") else []
    adapt = [] if method is None else ["--adapt", method, *(x for k, v in hp.items() for x in ("--adapt-hparam",
                                                                                                f"{k}={v}"))]
    r = cohort.predict_evaluate(root, val, did=did, trainer=row["trainer"], config=config, device=device, jobs=1,
                                results=root / "nnUNet_results" / _tag(row["key"], seed), tag=tag, extra=extra,
                                predict_extra=adapt, split="validation", groups=val / "domains.json")
    return {"dice": r["groups"], "change": r.get("adapt_mean_change"), "seconds": r["predict_s"]}


def to_markdown(result: dict) -> str:
    """Per model: a table of every setting's Dice per domain and its change against plain prediction."""
    lines = []
    for model, runs in result["runs"].items():
        plain = runs["plain"]["dice"]
        domains = sorted(plain, key=lambda d: (d not in result["source_domains"], d))
        lines += [f"**{model}** (seed {result['seed']}), mean foreground Dice of the validation cases per domain "
                  "(Δ against plain prediction):", ""]
        lines += stats.markdown_table(
            ["setting", *(f"{d}{' (seen in training)' if d in result['source_domains'] else ''}" for d in domains),
             "relative change", "s"],
            [[name, *(f"{r['dice'][d]:.3f}" + ("" if name == "plain" else f" ({r['dice'][d] - plain[d]:+.3f})")
                      for d in domains),
              "–" if r["change"] is None else f"{r['change']:.2e}", f"{r['seconds']:.0f}"]
             for name, r in runs.items()])
        lines.append("")
    lines.append(f"- validation cases: the cohort's {result['n_cases']} training cases (their labels scored here; "
                 "never the test cases); episodic adaptation; relative change: `adaptation.json`'s mean")
    lines.append(f"- {result['date']}, {result['machine']}, `{result['command']}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    state_file = Path(a.out).resolve() / "domain_shift.json"
    if not state_file.is_file():
        raise SystemExit(f"error: --out {a.out}: no domain_shift.json; run benchmarks/domain_shift.py there first")
    root = cohort.work_folder(a.out)
    state = json.loads(state_file.read_text())
    rows = state.get("rows", {})
    missing = [m for m in a.models if f"{m}|{a.seed}" not in state["runs"] or "failed" in state["runs"][f"{m}|{a.seed}"]]
    if missing:
        raise SystemExit(f"error: --models {' '.join(missing)}: no finished run of that row with seed {a.seed} "
                         f"in {state_file}")
    val = validation_folder(root, state)
    st = state["settings"]
    result = {"seed": a.seed, "source_domains": state["source_domains"], "n_cases": len(cohort.cases(val / "validation_images")),
              "runs": {}}
    todo = [(m, None, {}) for m in a.models] + [(m, meth, hp) for m in a.models for meth, hp in a.settings]
    print(f"{len(todo)} predictions of {result['n_cases']} validation cases", flush=True)
    for i, (model, method, hp) in enumerate(todo, 1):
        r = run_setting(root, val, row=rows[model], seed=a.seed, did=a.dataset_id, config=st["config"],
                        device=st["device"], method=method, hp=hp)
        result["runs"].setdefault(model, {})[setting_name(method, hp)] = r
        print(f"[{i}/{len(todo)}] {model}, {setting_name(method, hp)}: "
              + ", ".join(f"{d} {v:.3f}" for d, v in r["dice"].items()), flush=True)
    result.update(date=time.strftime("%Y-%m-%d"), machine=cohort.machine(),
                  command="python benchmarks/adapt_sweep.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    (root / "adapt_sweep.json").write_text(json.dumps(result, indent=1))
    md = to_markdown(result)
    (root / "adapt_sweep.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
