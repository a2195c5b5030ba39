"""Dice per class of nnzoo's trainers on the demo dataset under one short budget.

Runs ``nnzoo demo`` for each (trainer, labeled) pair with the same epochs and iterations, each
into its own results folder (raw and preprocessed data are shared), and prints one table. The
full-label rows compare the supervised methods; the ``--labeled 2`` rows compare nnU-Net and the
semi-supervised trainers on the same two labeled cases (the fold's other training cases are
their unlabeled images).

    python scripts/compare_on_demo.py [--epochs 10 --iters 12] [--workdir nnzoo_work] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RUNS = [("nnUNetTrainer", None), ("nnUNetTrainerBoundaryAware", None), ("nnUNetTrainerCoTr", None),
        ("nnUNetTrainer", 2), ("nnUNetTrainerBCP", 2), ("nnUNetTrainerMCNet", 2),
        ("nnUNetTrainerShapePrior", 2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--workdir", default="nnzoo_work")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", nargs="*", default=None, help="trainer names to run (default all)")
    args = ap.parse_args(argv)
    work = Path(args.workdir).resolve()
    rows = []
    for trainer, labeled in RUNS:
        if args.only and trainer not in args.only:
            continue
        tag = f"{trainer}_labeled{labeled}" if labeled else trainer
        env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"),
                   nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
                   nnUNet_results=str(work / "compare" / tag / "nnUNet_results"))
        cmd = [sys.executable, "-m", "nnzoo.pipeline.cli", "demo", "-tr", trainer, "--epochs", str(args.epochs),
               "--iters", str(args.iters), "-device", args.device]
        if labeled:
            cmd += ["--labeled", str(labeled)]
        print(f"=== {tag}: {' '.join(cmd[3:])}", flush=True)
        subprocess.run(cmd, check=True, env=env)
        res = json.loads((work / "compare" / tag / "demo" / f"demo_{trainer}.json").read_text())
        rows.append((trainer, labeled, res))
    names = list(rows[0][2]["dice"]) if rows else []
    print(f"\nDemo dataset (MNI152 tissues, 4 mm), fold 0, {args.epochs} epochs x {args.iters} iterations, "
          "Dice on the 5 test cases")
    print("| trainer | labeled | " + " | ".join(names) + " | mean | time (s) |")
    print("|---|---|" + "---|" * (len(names) + 2))
    for trainer, labeled, res in rows:
        d = res["dice"]
        print(f"| {trainer} | {labeled or 'all'} | " + " | ".join(f"{d[n]:.3f}" for n in names)
              + f" | {sum(d.values()) / len(d):.3f} | {res['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
