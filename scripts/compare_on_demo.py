"""Dice per class of nnzoo's trainers on the demo dataset under one short budget.

Runs ``nnzoo demo`` for each (trainer, labeled) pair with the same epochs and iterations, each
into its own results folder (raw and preprocessed data are shared), and prints one table. The
full-label rows compare the supervised methods; the ``--labeled 2`` rows compare nnU-Net and the
semi-supervised trainers on the same two labeled cases (the fold's other training cases are
their unlabeled images).

    python scripts/compare_on_demo.py [--epochs 10 --iters 12] [--workdir nnzoo_work] [--only NAME ...]
                                      [--repeats N] [--reuse]

``--repeats N`` trains every pair N times (nnU-Net training is not seeded: the runs differ in
initialisation, sampling and augmentation) and prints the mean Dice per class with the range over
the runs, which tells method differences from run-to-run noise. ``--reuse`` takes the result of
a run whose folder already holds one (e.g. to add repeats to an earlier comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean

RUNS = [("nnUNetTrainer", None), ("nnUNetTrainerBoundaryAware", None), ("nnUNetTrainerCoTr", None),
        ("nnUNetTrainer", 2), ("nnUNetTrainerBCP", 2), ("nnUNetTrainerMCNet", 2),
        ("nnUNetTrainerShapePrior", 2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--workdir", default="nnzoo_work")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", nargs="*", default=None,
                    help="trainers to run: NAME, or NAME:LABELED such as nnUNetTrainer:2 or nnUNetTrainer:all "
                         "(default all)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per (trainer, labeled) pair")
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs found in the work folder")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    work = Path(args.workdir).resolve()
    rows = []
    for trainer, labeled in RUNS:
        if args.only and trainer not in args.only and f"{trainer}:{labeled or 'all'}" not in args.only:
            continue
        runs = []
        base_tag = f"{trainer}_labeled{labeled}" if labeled else trainer
        for r in range(args.repeats):
            tag = base_tag + (f"_run{r + 1}" if r else "")  # the first run keeps the folder name of single comparisons
            result = work / "compare" / tag / "demo" / f"demo_{trainer}.json"
            if args.reuse and result.is_file():
                print(f"=== {tag}: reusing {result}", flush=True)
            else:
                _run_demo(work, tag, trainer, labeled, args)
            runs.append(json.loads(result.read_text()))
        rows.append((trainer, labeled, runs))
    _print_table(rows, args)
    return 0


def _run_demo(work: Path, tag: str, trainer: str, labeled: int | None, args: argparse.Namespace) -> None:
    env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"),
               nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "compare" / tag / "nnUNet_results"))
    cmd = [sys.executable, "-m", "nnzoo.pipeline.cli", "demo", "-tr", trainer, "--epochs", str(args.epochs),
           "--iters", str(args.iters), "-device", args.device]
    if labeled:
        cmd += ["--labeled", str(labeled)]
    print(f"=== {tag}: {' '.join(cmd[3:])}", flush=True)
    subprocess.run(cmd, check=True, env=env)


def _print_table(rows: list, args: argparse.Namespace) -> None:
    names = list(rows[0][2][0]["dice"]) if rows else []
    print(f"\nDemo dataset (MNI152 tissues, 4 mm), fold 0, {args.epochs} epochs x {args.iters} iterations, "
          f"Dice on the 5 test cases, mean (min-max) over {args.repeats} run(s)")
    print("| trainer | labeled | " + " | ".join(names) + " | mean | time (s) |")
    print("|---|---|" + "---|" * (len(names) + 2))
    for trainer, labeled, runs in rows:
        cells = []
        for n in names:
            v = [r["dice"][n] for r in runs]
            cells.append(f"{mean(v):.3f}" + (f" ({min(v):.3f}-{max(v):.3f})" if len(v) > 1 else ""))
        overall = mean(mean(r["dice"].values()) for r in runs)
        print(f"| {trainer} | {labeled or 'all'} | " + " | ".join(cells)
              + f" | {overall:.3f} | {mean(r['seconds'] for r in runs):.0f} |")


if __name__ == "__main__":
    raise SystemExit(main())
