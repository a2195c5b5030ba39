"""Benchmark: train-step time and peak memory of nnUNetTrainerBoundaryAware against nnUNetTrainer.

Both trainers are built from the same plans (a plain-U-Net configuration made from the command-line
arguments) and run their real ``train_step`` (network, loss, backward, optimiser step; BA-Net also
computes its boundary ground truth) on the same random batch. Steps of the two trainers are
interleaved in rounds so that a busy machine slows both alike; the medians and their ratio are
printed. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU only the feature-map
estimate nnU-Net's planner uses is printed (process RSS is not a reliable CPU peak).

Usage::

    python benchmarks/bench_boundary_aware.py --device cpu --threads 2
    python benchmarks/bench_boundary_aware.py --device cuda --patch 128 128 128 --stages 6
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


def make_plans(dim: int, patch: list[int], stages: int, batch: int) -> tuple[dict, str]:
    """nnU-Net plans (from tests/data/tiny_plans.json) with a plain U-Net of ``stages`` stages."""
    plans = json.loads((REPO / "tests" / "data" / "tiny_plans.json").read_text())
    cfg = "3d_fullres" if dim == 3 else "2d"
    c = plans["configurations"][cfg]
    max_feat = 320 if dim == 3 else 512
    k = c["architecture"]["arch_kwargs"]
    k.update(n_stages=stages, features_per_stage=[min(32 * 2 ** i, max_feat) for i in range(stages)],
             kernel_sizes=[[3] * dim] * stages, strides=[[1] * dim] + [[2] * dim] * (stages - 1),
             n_conv_per_stage=[2] * stages, n_conv_per_stage_decoder=[2] * (stages - 1))
    c["patch_size"] = list(patch)
    c["batch_size"] = batch
    return plans, cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dim", type=int, default=3, choices=[2, 3])
    p.add_argument("--patch", type=int, nargs="+", default=None,
                   help="patch size (default CPU: 32^3 / 128^2, CUDA: 128^3 / 512^2)")
    p.add_argument("--stages", type=int, default=None, help="U-Net stages (default CPU 4, CUDA 6)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=3, help="steps per trainer per round")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--compile", action="store_true", help="allow nnU-Net's torch.compile on CUDA")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    if not args.compile:
        os.environ["nnUNet_compile"] = "false"
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    patch = args.patch or [(32 if cpu else 128) if args.dim == 3 else (128 if cpu else 512)] * args.dim
    args.stages = args.stages or (4 if cpu else 6)
    if len(patch) != args.dim:
        p.error(f"--patch needs {args.dim} values")

    sys.path.insert(0, str(REPO))
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from benchmarks.common import build_trainer, make_batch, time_interleaved, time_steps, train_flops
    from nnzoo.plans.base import estimate_network_feature_maps
    from nnzoo.trainers.boundary_aware import nnUNetTrainerBoundaryAware
    from nnzoo.trainers.networks.banet import BoundaryAwareUNet

    plans, cfg = make_plans(args.dim, patch, args.stages, args.batch)
    dataset_json = json.loads((REPO / "tests" / "data" / "tiny_dataset.json").read_text())
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in (("nnUNetTrainer", nnUNetTrainer), ("nnUNetTrainerBoundaryAware", nnUNetTrainerBoundaryAware)):
            torch.manual_seed(0)
            trainers[name] = build_trainer(cls, plans, cfg, dataset_json, device, Path(tmp) / name)
    batch = make_batch(trainers["nnUNetTrainer"], args.batch, device)

    peaks: dict[str, int] = {}
    for name, tr in trainers.items():  # warm-up, and peak memory of a steady-state step
        time_steps(tr, batch, args.warmup, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            time_steps(tr, batch, 1, device)
            peaks[name] = torch.cuda.max_memory_allocated()
    times = time_interleaved(trainers, {k: batch for k in trainers}, args.rounds, args.steps, 0, device)

    arch = plans["configurations"][cfg]["architecture"]
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    os.environ["nnUNet_n_proc_DA"] = str(max(1, int(os.environ["nnUNet_n_proc_DA"])))
    est = {"nnUNetTrainer": ExperimentPlanner.static_estimate_VRAM_usage(
        patch, 1, 3, arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"]),
        "nnUNetTrainerBoundaryAware": estimate_network_feature_maps(
            BoundaryAwareUNet, patch, input_channels=1, output_channels=3, arch_class_name=arch["network_class_name"],
            arch_kwargs=arch["arch_kwargs"], arch_kwargs_req_import=arch["_kw_requires_import"])}

    shape = [args.batch, 1, *patch]
    flops = {"nnUNetTrainer": train_flops(arch, shape),
             "nnUNetTrainerBoundaryAware": train_flops(arch, shape, BoundaryAwareUNet, return_boundary=True)}

    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} torch threads"
    print(f"device: {dev}; torch {torch.__version__}; {args.dim}D patch {patch}, {args.stages} stages, "
          f"batch {args.batch}; {args.rounds}x{args.steps} timed steps per trainer after {args.warmup} warm-up")
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    for name in trainers:
        mem = f", peak {peaks[name] / 2 ** 20:.0f} MiB" if name in peaks else ""
        print(f"{name:28s} {med[name]:9.1f} ms/step (min {min(times[name]):.1f}){mem}, "
              f"{flops[name] / 1e9:.0f} GFLOP/step, planner feature-map estimate {float(est[name]):.3g}")
    b, a = "nnUNetTrainerBoundaryAware", "nnUNetTrainer"
    line = (f"ratio BA/plain: step time {med[b] / med[a]:.2f}x of medians, {best[b] / best[a]:.2f}x of minima "
            f"(target <= 1.30x)")
    if peaks:
        line += f", peak memory {peaks[b] / peaks[a]:.2f}x"
    line += f", FLOPs {flops[b] / flops[a]:.2f}x, feature-map estimate {float(est[b]) / float(est[a]):.2f}x"
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
