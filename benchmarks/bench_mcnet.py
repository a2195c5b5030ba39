"""MC-Net+ train-step time versus nnU-Net's default trainer (same plans, patch and batch size).

Times ``train_step`` on synthetic batches (data loading excluded: it runs in background workers
during real training). The MC-Net+ step is one forward/backward of the shared encoder and three
decoders over the planned batch, shared as in the official code (``UNLABELED_FRACTION`` = 0.5:
half labeled, half unlabeled), nnU-Net's loss per decoder on the labeled patches and the mutual
consistency term on all. A second MC-Net+ row gives the cost of a full labeled batch plus a full
unlabeled batch (``UNLABELED_FRACTION = None``, twice the patches). Prints ms/step (median after
warm-up) and the ratios; the target is <= 1.5x.

    python benchmarks/bench_mcnet.py --device cpu [--configuration 3d_fullres] [--patch 32 32 32]
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

    from benchmarks.common import RepeatBatch, build_trainer, make_batch, time_interleaved, train_flops
    from nnzoo.trainers.mcnet import nnUNetTrainerMCNet
    from nnzoo.trainers.networks.mcnet import MCNet

    class MCNetFullBatches(nnUNetTrainerMCNet):
        UNLABELED_FRACTION = None

    with tempfile.TemporaryDirectory() as tmp:
        base = build_trainer(nnUNetTrainer, plans, args.configuration, dataset_json, device, Path(tmp) / "a")
        mc = build_trainer(nnUNetTrainerMCNet, plans, args.configuration, dataset_json, device, Path(tmp) / "b")
        full = build_trainer(MCNetFullBatches, plans, args.configuration, dataset_json, device, Path(tmp) / "c")
        batch = make_batch(base, args.batch_size, device)
        split = {}
        for t in (mc, full):
            split[t] = t.batch_split()
            t.dataloader_unlabeled = RepeatBatch(torch.randn(split[t][1], *batch["data"].shape[1:], device=device))
            t.current_epoch = t.num_epochs // 2
        trainers = {"base": base, "mc": mc, "full": full}
        times = time_interleaved(trainers, {k: batch for k in trainers}, args.steps, 1, args.warmup, device)

    mb, mm, mf = (statistics.median(times[k]) for k in ("base", "mc", "full"))
    arch = plans["configurations"][args.configuration]["architecture"]
    flop_ratio = train_flops(arch, [args.batch_size, 1, *patch], MCNet, all_decoders=True) / \
        train_flops(arch, [args.batch_size, 1, *patch])
    (nl, nu), (fl, fu) = split[mc], split[full]
    print(f"device={device} configuration={args.configuration} patch={patch} batch={args.batch_size} "
          f"threads={args.threads} steps={args.steps} interleaved (after {args.warmup} warm-up)")
    print(f"nnUNetTrainer       train_step: {mb:8.1f} ms/step (min {min(times['base']):.1f})  "
          f"[{args.batch_size} labeled]")
    print(f"nnUNetTrainerMCNet  train_step: {mm:8.1f} ms/step (min {min(times['mc']):.1f})  "
          f"[{nl} labeled + {nu} unlabeled, 3 decoders; the trainer's default]")
    print(f"MC-Net+ full batches train_step: {mf:8.1f} ms/step (min {min(times['full']):.1f})  "
          f"[{fl} labeled + {fu} unlabeled, 3 decoders]")
    print(f"ratio MC-Net+ / nnUNetTrainer: {mm / mb:.2f}x (target <= 1.5x); with full labeled + unlabeled "
          f"batches: {mf / mb:.2f}x; network FLOPs per step (same batch size): {flop_ratio:.2f}x")


if __name__ == "__main__":
    main()
