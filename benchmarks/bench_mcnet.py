"""MC-Net+ train-step time versus nnU-Net's default trainer (same plans, patch and labeled batch).

Times ``train_step`` on synthetic batches (data loading excluded: it runs in background workers
during real training). The MC-Net+ step is one forward/backward of the shared encoder and three
decoders over the labeled batch concatenated with an unlabeled batch (default: as large as the
labeled one, the trainer's default), nnU-Net's loss per decoder and the mutual consistency term.
A second MC-Net+ row with an empty unlabeled batch isolates the cost of the three decoders. Prints ms/step (median after warm-up) and the ratios; the target is <= 1.5x.

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
    ap.add_argument("--unlabeled-batch-size", type=int, default=None, help="default: --batch-size")
    args = ap.parse_args(argv)

    device, plans, dataset_json, patch = tiny_setup(args)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from benchmarks.common import build_trainer, make_batch, time_interleaved
    from nnzoo.trainers.mcnet import nnUNetTrainerMCNet

    n_unl = args.batch_size if args.unlabeled_batch_size is None else args.unlabeled_batch_size

    with tempfile.TemporaryDirectory() as tmp:
        base = build_trainer(nnUNetTrainer, plans, args.configuration, dataset_json, device, Path(tmp) / "a")
        mc = build_trainer(nnUNetTrainerMCNet, plans, args.configuration, dataset_json, device, Path(tmp) / "b")
        mc0 = build_trainer(nnUNetTrainerMCNet, plans, args.configuration, dataset_json, device, Path(tmp) / "c")
        batch = make_batch(base, args.batch_size, device)
        shape = batch["data"].shape[1:]

        class _Unlabeled:
            def __init__(self, n: int) -> None:
                self.data = torch.randn(n, *shape, device=device)

            def __next__(self):
                return {"data": self.data}

        mc.dataloader_unlabeled = _Unlabeled(n_unl)
        mc0.dataloader_unlabeled = _Unlabeled(0)
        for t in (mc, mc0):
            t.current_epoch = t.num_epochs // 2
        trainers = {"base": base, "mc": mc, "mc0": mc0}
        times = time_interleaved(trainers, {k: batch for k in trainers}, args.steps, 1, args.warmup, device)

    mb, mm, m0 = (statistics.median(times[k]) for k in ("base", "mc", "mc0"))
    print(f"device={device} configuration={args.configuration} patch={patch} batch={args.batch_size} "
          f"unlabeled batch={n_unl} threads={args.threads} steps={args.steps} interleaved "
          f"(after {args.warmup} warm-up)")
    print(f"nnUNetTrainer       train_step: {mb:8.1f} ms/step (min {min(times['base']):.1f})")
    print(f"nnUNetTrainerMCNet  train_step: {mm:8.1f} ms/step (min {min(times['mc']):.1f})  "
          f"[{args.batch_size} labeled + {n_unl} unlabeled, 3 decoders]")
    print(f"nnUNetTrainerMCNet  train_step: {m0:8.1f} ms/step (min {min(times['mc0']):.1f})  "
          f"[{args.batch_size} labeled + 0 unlabeled: cost of the 3 decoders alone]")
    print(f"ratio MC-Net+ / nnUNetTrainer: {mm / mb:.2f}x (target <= 1.5x); decoders alone: {m0 / mb:.2f}x")


if __name__ == "__main__":
    main()
