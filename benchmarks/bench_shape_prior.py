"""Shape-prior train-step time versus nnU-Net's default trainer (same plans, patch and batch).

Times ``train_step`` on synthetic batches (data loading excluded: it runs in background workers
during real training). The shape-prior step: one encoder pass over the labeled and unlabeled
halves of the planned batch, D_l with gradient on the labeled half and without on the unlabeled
half (pseudo-labels), D_p on the unlabeled half at every scale, the frozen critic on D_p's
resampled probabilities, one backward pass. The critic's one-off pre-training is timed separately
(``--critic-steps`` updates, scaled to the default ``CRITIC_STEPS``). Prints ms/step (median after
warm-up) and the ratio; the target is <= 1.6x.

    python benchmarks/bench_shape_prior.py --device cpu [--configuration 3d_fullres] [--patch 32 32 32]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.common import step_parser, tiny_setup

    ap = step_parser(__doc__)
    ap.add_argument("--critic-steps", type=int, default=20, help="critic pre-training updates to time")
    args = ap.parse_args(argv)

    device, plans, dataset_json, patch = tiny_setup(args)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from benchmarks.common import RepeatBatch, build_trainer, make_batch, sync, time_interleaved
    from nnzoo.trainers.networks.shape_prior import resize_to_critic
    from nnzoo.trainers.shape_prior import nnUNetTrainerShapePrior


    with tempfile.TemporaryDirectory() as tmp:
        base = build_trainer(nnUNetTrainer, plans, args.configuration, dataset_json, device, Path(tmp) / "a")
        sp = build_trainer(nnUNetTrainerShapePrior, plans, args.configuration, dataset_json, device, Path(tmp) / "b")
        batch = make_batch(base, args.batch_size, device)
        n_l, n_u = sp.batch_split()
        unlabeled = torch.randn(n_u, *batch["data"].shape[1:], device=device)

        sp.dataloader_unlabeled = RepeatBatch(unlabeled)
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        pool = resize_to_critic(sp.real_masks(target), sp.critic_size)
        sp.CRITIC_STEPS = args.critic_steps
        sync(device)
        t0 = time.perf_counter()
        sp.pretrain_critic(real=pool)
        sync(device)
        t_critic = time.perf_counter() - t0
        trainers = {"base": base, "sp": sp}
        times = time_interleaved(trainers, {k: batch for k in trainers}, args.steps, 1, args.warmup, device)
        t_base, t_sp = times["base"], times["sp"]

    mb, ms = statistics.median(t_base), statistics.median(t_sp)
    full = t_critic / args.critic_steps * nnUNetTrainerShapePrior.CRITIC_STEPS
    print(f"device={device} configuration={args.configuration} patch={patch} batch={args.batch_size} "
          f"({n_l} labeled + {n_u} unlabeled) threads={args.threads} steps={args.steps} interleaved "
          f"(after {args.warmup} warm-up)")
    print(f"nnUNetTrainer            train_step: {mb:8.1f} ms/step (min {min(t_base):.1f})")
    print(f"nnUNetTrainerShapePrior  train_step: {ms:8.1f} ms/step (min {min(t_sp):.1f})")
    print(f"critic pre-training: {1000 * t_critic / args.critic_steps:.1f} ms/update, "
          f"~{full:.0f} s for {nnUNetTrainerShapePrior.CRITIC_STEPS} updates (once per run)")
    print(f"ratio ShapePrior / nnUNetTrainer: {ms / mb:.2f}x (target <= 1.6x)")


if __name__ == "__main__":
    main()
