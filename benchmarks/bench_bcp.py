"""BCP train-step time versus nnU-Net's default trainer (same plans, patch and batch).

Times ``train_step`` on synthetic batches (data loading excluded: it runs in background workers
during real training). The BCP step is a stage-2 step: teacher forward on the unlabeled batch,
largest-component pseudo-labels (CPU), one student forward/backward on the two mixed batches,
EMA update. Prints ms/step (median after warm-up) and the ratio; the target is <= 2.2x.

    python benchmarks/bench_bcp.py --device cpu [--configuration 3d_fullres] [--patch 32 32 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configuration", default="3d_fullres", choices=["3d_fullres", "2d"])
    ap.add_argument("--patch", type=int, nargs="+", default=None, help="patch size (default 32^3 / 64^2)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ.setdefault("nnUNet_compile", "0")
    sys.path.insert(0, str(REPO))
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from benchmarks.common import build_trainer, make_batch, time_interleaved
    from nnzoo.trainers.bcp import nnUNetTrainerBCP
    from nnzoo.trainers.semisup import EMATeacher

    device = torch.device(args.device)
    plans = json.loads((REPO / "tests" / "data" / "tiny_plans.json").read_text())
    dataset_json = json.loads((REPO / "tests" / "data" / "tiny_dataset.json").read_text())
    patch = args.patch or ([32, 32, 32] if args.configuration == "3d_fullres" else [64, 64])
    plans["configurations"][args.configuration]["patch_size"] = patch
    plans["configurations"][args.configuration]["batch_size"] = args.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        base = build_trainer(nnUNetTrainer, plans, args.configuration, dataset_json, device, Path(tmp) / "a")
        bcp = build_trainer(nnUNetTrainerBCP, plans, args.configuration, dataset_json, device, Path(tmp) / "b")
        batch = make_batch(base, args.batch_size, device)
        unlabeled = torch.randn_like(batch["data"])

        class _Unlabeled:
            def __next__(self):
                return {"data": unlabeled}

        bcp.dataloader_unlabeled = _Unlabeled()
        bcp.current_epoch = bcp.stage2_start_epoch
        bcp.teacher = EMATeacher(bcp.network)
        times = time_interleaved({"base": base, "bcp": bcp}, {"base": batch, "bcp": batch}, args.steps, 1, args.warmup,
                                 device)
        t_base, t_bcp = times["base"], times["bcp"]

    mb, mc = statistics.median(t_base), statistics.median(t_bcp)
    print(f"device={device} configuration={args.configuration} patch={patch} batch={args.batch_size} "
          f"threads={args.threads} steps={args.steps} interleaved (after {args.warmup} warm-up)")
    print(f"nnUNetTrainer     train_step: {mb:8.1f} ms/step (min {min(t_base):.1f})")
    print(f"nnUNetTrainerBCP  train_step: {mc:8.1f} ms/step (min {min(t_bcp):.1f})  [stage 2]")
    print(f"ratio BCP / nnUNetTrainer: {mc / mb:.2f}x (target <= 2.2x)")


if __name__ == "__main__":
    main()
