"""Train-step time and peak memory of nnUNetTrainerCoTr against nnUNetTrainer on the same plan and patch.

Each trainer runs in its own child process (so allocator state and peak memory are separate): the
network and loss are built by the trainer class from the same nnU-Net plan (default U-Net topology
for the patch, as ``ExperimentPlanner`` makes it), and ``trainer.train_step`` (forward, loss with
deep supervision, backward, gradient clipping, SGD step; autocast + GradScaler on CUDA) runs on
random data after warm-up steps. Printed: median ms/step, peak memory and the CoTr/nnU-Net ratios.

Peak memory: CUDA ``torch.cuda.max_memory_allocated`` over the timed steps (parameters, gradients,
optimizer state, activations); CPU: increase of the process' peak resident set size (``VmHWM``,
reset just before the network is built) over its resident size at that point, over warm-up and
timed steps: the same items plus CPU allocator slack (a coarser figure than CUDA's).

Usage::

    python benchmarks/bench_cotr.py --device cpu --threads 1
    python benchmarks/bench_cotr.py --device cuda --patch 48,192,192 --batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--patch", default=None, help="comma-separated patch (default: 32,64,64 on CPU, 48,192,192 on CUDA)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=3, help="segmentation classes incl. background")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 1 on CPU, 5 on CUDA)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--worker", choices=["nnUNetTrainer", "nnUNetTrainerCoTr"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _make_plans(patch: list[int], batch: int) -> tuple[dict, str]:
    """One-configuration nnU-Net plans with the default plain U-Net topology for ``patch`` (spacing 1)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    ndim = len(patch)
    _, pool, kernels, padded, _ = get_pool_and_conv_props([1.0] * ndim, patch, 4, 999999)
    if list(padded) != list(patch):
        raise SystemExit(f"patch {patch} is not valid for nnU-Net's U-Net (would be padded to {list(padded)})")
    n = len(pool)
    conv = f"torch.nn.modules.conv.Conv{ndim}d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{ndim}d"
    arch = {"n_stages": n, "features_per_stage": [min(320 if ndim == 3 else 512, 32 * 2 ** i) for i in range(n)],
            "conv_op": conv, "kernel_sizes": [list(k) for k in kernels], "strides": [list(s) for s in pool],
            "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
            "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    cfg = "3d_fullres" if ndim == 3 else "2d"
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    config = {"data_identifier": f"nnUNetPlans_{cfg}", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": batch, "patch_size": list(patch), "median_image_size_in_voxels": list(patch),
              "spacing": [1.0] * ndim, "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
              "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": resampling, "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": resampling,
              "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                               "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
              "batch_dice": True}
    plans = {"dataset_name": "Dataset997_Bench", "plans_name": "nnUNetPlans", "configurations": {cfg: config},
             "original_median_spacing_after_transp": [1.0] * 3, "original_median_shape_after_transp": [*patch, 1][:3],
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {}}
    return plans, cfg


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _worker(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_cotr_") as tmp:
        return _measure(args, Path(tmp))


def _measure(args: argparse.Namespace, tmp: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from benchmarks.common import build_trainer, make_batch, time_steps
    from nnzoo.trainers.cotr import nnUNetTrainerCoTr
    from nnzoo.trainers.nnunet_compat import deep_supervision_scales

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    patch = [int(v) for v in args.patch.split(",")]
    plans, cfg = _make_plans(patch, args.batch)
    labels = {"background": 0, **{f"c{i}": i for i in range(1, args.classes)}}
    dataset_json = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 10, "file_ending": ".nii.gz"}
    cls = {"nnUNetTrainer": nnUNetTrainer, "nnUNetTrainerCoTr": nnUNetTrainerCoTr}[args.worker]
    if device.type == "cpu":
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")
        base = _rss_kib("VmRSS")
    trainer = build_trainer(cls, plans, cfg, dataset_json, device, tmp)
    scales = deep_supervision_scales(trainer)
    batch = make_batch(trainer, args.batch, device)
    trainer.network.train()

    time_steps(trainer, batch, args.warmup, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = time_steps(trainer, batch, args.steps, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = (_rss_kib("VmHWM") - base) / 1024
    return {"ms": statistics.median(times), "peak_mib": peak,
            "params_m": sum(p.numel() for p in trainer.network.parameters()) / 1e6,
            "ds_outputs": len(scales)}


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    args.patch = args.patch or ("48,192,192" if cuda else "32,64,64")
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    res = {}
    for name in ("nnUNetTrainer", "nnUNetTrainerCoTr"):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--device", args.device, "--patch",
               args.patch, "--batch", str(args.batch), "--classes", str(args.classes), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if out.returncode:
            sys.stderr.write(out.stdout + out.stderr)
            return out.returncode
        res[name] = json.loads(out.stdout.strip().splitlines()[-1])
    mem = "torch.cuda.max_memory_allocated" if cuda else "peak RSS increase from network build to last step"
    print(f"device {args.device}, threads {args.threads}, patch [{args.patch}], batch {args.batch}, "
          f"{args.classes} classes, median of {args.steps} train steps after {args.warmup} warm-up; memory: {mem}")
    for name, r in res.items():
        print(f"  {name:<18} {r['ms']:9.1f} ms/step  {r['peak_mib']:9.1f} MiB  {r['params_m']:6.2f}M params  "
              f"{r['ds_outputs']} DS outputs")
    a, b = res["nnUNetTrainer"], res["nnUNetTrainerCoTr"]
    print(f"  ratio CoTr / nnU-Net: time {b['ms'] / a['ms']:.2f}x, memory {b['peak_mib'] / max(a['peak_mib'], 1e-9):.2f}x "
          f"(target: time <= 1.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
