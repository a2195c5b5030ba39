"""BCP train-step time versus nnU-Net's default trainer (same plans, patch and batch).

Times ``train_step`` on synthetic batches (data loading excluded: it runs in background workers
during real training). The BCP step is a stage-2 step: teacher forward on the unlabeled batch,
largest-component pseudo-labels (CPU), one student forward/backward on the two mixed batches,
EMA update. Prints ms/step (median after warm-up) and the ratio; the target is <= 2.2x.

    python benchmarks/bench_bcp.py --device cpu [--configuration 3d_fullres] [--patch 32 32 32]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _make(trainer_class, root: Path, configuration: str, plans: dict, dataset_json: dict, device):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = str(root / k)
    p = copy.deepcopy(plans)
    p["continue_training"] = False
    t = trainer_class(plans=p, configuration=configuration, fold=0, dataset_json=dataset_json, device=device)
    folder = Path(t.preprocessed_dataset_folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "c.b2nd").touch()  # initialize() infers the dataset class from file names only
    (folder / "c.pkl").touch()
    t.initialize()
    return t


def _batch(t, batch_size: int, device):
    patch = tuple(t.configuration_manager.patch_size)
    data = torch.randn(batch_size, t.num_input_channels, *patch)
    target = torch.randint(0, t.label_manager.num_segmentation_heads, (batch_size, 1, *patch))
    scales = t._get_deep_supervision_scales()
    if scales is None:
        return {"data": data, "target": target}
    targets = [torch.nn.functional.interpolate(target.float(), size=[round(s * f) for s, f in zip(patch, sc)],
                                               mode="nearest-exact").long() for sc in scales]
    return {"data": data, "target": targets}


def _time(trainers, batch, steps: int, warmup: int, sync) -> list[list[float]]:
    """ms per train_step of each trainer; steps alternate between trainers so that load
    changes on a shared machine affect both alike."""
    out = [[] for _ in trainers]
    for i in range(warmup + steps):
        for t, times in zip(trainers, out):
            sync()
            t0 = time.perf_counter()
            t.train_step(batch)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return out


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
    sys.path.insert(0, str(REPO / "tests"))
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnzoo.trainers.bcp import nnUNetTrainerBCP
    from nnzoo.trainers.semisup import EMATeacher

    device = torch.device(args.device)
    plans = json.loads((REPO / "tests" / "data" / "tiny_plans.json").read_text())
    dataset_json = json.loads((REPO / "tests" / "data" / "tiny_dataset.json").read_text())
    patch = args.patch or ([32, 32, 32] if args.configuration == "3d_fullres" else [64, 64])
    plans["configurations"][args.configuration]["patch_size"] = patch
    plans["configurations"][args.configuration]["batch_size"] = args.batch_size
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    with tempfile.TemporaryDirectory() as tmp:
        base = _make(nnUNetTrainer, Path(tmp) / "a", args.configuration, plans, dataset_json, device)
        bcp = _make(nnUNetTrainerBCP, Path(tmp) / "b", args.configuration, plans, dataset_json, device)
        batch = _batch(base, args.batch_size, device)
        unlabeled = torch.randn_like(batch["data"])

        class _Unlabeled:
            def __next__(self):
                return {"data": unlabeled}

        bcp.dataloader_unlabeled = _Unlabeled()
        bcp.current_epoch = bcp.stage2_start_epoch
        bcp.teacher = EMATeacher(bcp.network)
        base.network.train()
        bcp.network.train()
        t_base, t_bcp = _time([base, bcp], batch, args.steps, args.warmup, sync)

    mb, mc = statistics.median(t_base), statistics.median(t_bcp)
    print(f"device={device} configuration={args.configuration} patch={patch} batch={args.batch_size} "
          f"threads={args.threads} steps={args.steps} interleaved (after {args.warmup} warm-up)")
    print(f"nnUNetTrainer     train_step: {mb:8.1f} ms/step (min {min(t_base):.1f})")
    print(f"nnUNetTrainerBCP  train_step: {mc:8.1f} ms/step (min {min(t_bcp):.1f})  [stage 2]")
    print(f"ratio BCP / nnUNetTrainer: {mc / mb:.2f}x (target <= 2.2x)")


if __name__ == "__main__":
    main()
