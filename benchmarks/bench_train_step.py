"""Train-step time of a registered trainer against nnUNetTrainer, next to its FLOP ratio at equal labeled exposure.

Both trainers are built from the same plans (the test suite's tiny nnU-Net plans with the given
patch and batch size) and run their real ``train_step`` on the same labeled batch; a
semi-supervised trainer also gets its unlabeled batch (``unlabeled_batch_size`` random images)
and is put into its main stage (teacher, critic). Steps of the two are interleaved so that load
changes affect both alike. Printed: median ms/step of each, the step ratio, the FLOP ratio of one
real step (``FlopCounterMode`` over everything the step computes: all decoders, teachers, critic
scores), and the overhead beyond the FLOPs (step ratio / FLOP ratio; the target is <= 1.15).

    python benchmarks/bench_train_step.py --trainer nnUNetTrainerMCNet --device cpu
    python benchmarks/bench_train_step.py --all --device cuda --patch 64 128 128
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def measure(name: str, args, device, plans, dataset_json, root: Path) -> dict:
    """ms/step, step ratio, FLOP ratio and overhead of trainer ``name`` against nnUNetTrainer."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from benchmarks.common import (
        build_trainer,
        is_semi_supervised,
        make_batch,
        prepare_for_steps,
        time_interleaved,
        train_step_flops,
    )
    from nnzoo.trainers import get_trainer_class
    from nnzoo.trainers.base import nnzoo_trainer_class

    torch.manual_seed(0)
    trainers = {"nnUNetTrainer": build_trainer(nnzoo_trainer_class(nnUNetTrainer), plans, args.configuration,
                                               dataset_json, device, root / "base"),
                name: build_trainer(nnzoo_trainer_class(get_trainer_class(name)), plans, args.configuration,
                                    dataset_json, device, root / "method")}
    batches = {k: make_batch(t, args.batch_size, device) for k, t in trainers.items()}
    prepare_for_steps(trainers[name], batches[name])
    flops = {k: train_step_flops(t, batches[k]) for k, t in trainers.items()}
    times = time_interleaved(trainers, batches, args.rounds, args.steps, args.warmup, device)
    ms = {k: statistics.median(v) for k, v in times.items()}
    step_ratio = ms[name] / ms["nnUNetTrainer"]
    flop_ratio = flops[name] / flops["nnUNetTrainer"]
    return {"trainer": name, "ms": round(ms[name], 1), "baseline_ms": round(ms["nnUNetTrainer"], 1),
            "step_ratio": round(step_ratio, 2), "flop_ratio": round(flop_ratio, 2),
            "overhead": round(step_ratio / flop_ratio, 2),
            "unlabeled": trainers[name].unlabeled_batch_size if is_semi_supervised(trainers[name]) else 0}


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO))
    from benchmarks.common import step_parser, tiny_setup
    from nnzoo.trainers import list_trainers

    ap = step_parser(__doc__)
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--trainer", help="a registered trainer")
    who.add_argument("--all", action="store_true", help="every registered trainer of the configuration's dims")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    device, plans, dataset_json, patch = tiny_setup(args)
    dim = "2d" if args.configuration == "2d" else "3d"
    names = [i.name for i in list_trainers() if i.name != "nnUNetTrainer" and dim in i.dims] if args.all \
        else [args.trainer]
    print(f"device={device} configuration={args.configuration} patch={patch} labeled batch={args.batch_size} "
          f"threads={args.threads} steps={args.steps}x{args.rounds} interleaved (after {args.warmup} warm-up)")
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            r = measure(name, args, device, plans, dataset_json, Path(tmp) / str(i))
            extra = f" + {r['unlabeled']} unlabeled" if r["unlabeled"] else ""
            print(f"{name}: {r['ms']:.1f} ms/step vs nnUNetTrainer {r['baseline_ms']:.1f} ms "
                  f"[{args.batch_size} labeled{extra}] -> step {r['step_ratio']:.2f}x, FLOPs {r['flop_ratio']:.2f}x, "
                  f"overhead beyond the FLOPs {r['overhead']:.2f}x (target <= 1.15)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
