"""BCP train-step time versus nnU-Net's default trainer (same plans, patch and batch).

Times ``train_step`` on synthetic batches (data loading excluded: it runs in background workers
during real training). The BCP step is a stage-2 step: teacher forward on the unlabeled batch,
largest-component pseudo-labels (CPU), one student forward/backward on the two mixed batches,
EMA update. Prints ms/step (median after warm-up) and the ratio; the target is <= 2.2x.

    python benchmarks/bench_bcp.py --device cpu [--configuration 3d_fullres] [--patch 32 32 32]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.common import step_parser, tiny_setup

    ap = step_parser(__doc__)
    args = ap.parse_args(argv)

    device, plans, dataset_json, patch = tiny_setup(args)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from benchmarks.common import RepeatBatch, build_trainer, make_batch, time_interleaved
    from nnzoo.trainers.bcp import nnUNetTrainerBCP
    from nnzoo.trainers.semisup import EMATeacher


    with tempfile.TemporaryDirectory() as tmp:
        base = build_trainer(nnUNetTrainer, plans, args.configuration, dataset_json, device, Path(tmp) / "a")
        bcp = build_trainer(nnUNetTrainerBCP, plans, args.configuration, dataset_json, device, Path(tmp) / "b")
        batch = make_batch(base, args.batch_size, device)
        unlabeled = torch.randn_like(batch["data"])

        bcp.dataloader_unlabeled = RepeatBatch(unlabeled)
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
