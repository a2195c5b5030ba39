"""Training throughput of nnzoo's DDP path: samples/s with 1 and with N processes, and the scaling efficiency.

Every process runs nnzoo's code path for ``nnzoo train -num_gpus N``: a process group (Gloo on
the CPU, NCCL on CUDA; also for one process), nnU-Net's trainer with nnzoo's DDP fixes (DDP
wrapper for this process's device, the planned global batch split over the ranks) and real
``train_step`` s on synthetic batches (data loading excluded: it runs in background workers in
real training). On the CPU each process gets ``cores / N`` torch threads, so 1 and N processes
use the same cores. Printed per world size: median step time (the slowest rank's), global
samples/s, the speed-up over the first world size and the scaling efficiency = speed-up / ideal
speed-up, where the ideal is N on CUDA (one GPU per process) and 1 on the CPU (the same cores,
split over the processes).

    python benchmarks/bench_ddp.py --device cpu [--world-sizes 1 2] [--configuration 2d --patch 128 128 --batch-size 4]
    python benchmarks/bench_ddp.py --device cuda --world-sizes 1
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _worker(rank: int, world: int, args: argparse.Namespace, root: str, out: str) -> None:
    sys.path.insert(0, str(REPO))
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from benchmarks.common import build_trainer, make_batch, sync, tiny_setup
    from nnzoo.pipeline.distributed import backend_for, process_group
    from nnzoo.trainers.base import nnzoo_trainer_class

    args.threads = max(1, (os.cpu_count() or 1) // world) if args.device == "cpu" else 1
    device, plans, dataset_json, _ = tiny_setup(args)
    with process_group(backend_for(device.type), rank, world):
        torch.manual_seed(rank)
        trainer = build_trainer(nnzoo_trainer_class(nnUNetTrainer), plans, args.configuration, dataset_json, device,
                                Path(root) / f"rank{rank}")
        batch = make_batch(trainer, trainer.batch_size, trainer.device, seed=rank)
        times = []
        for i in range(args.warmup + args.steps):
            torch.distributed.barrier()
            sync(trainer.device)
            t0 = time.perf_counter()
            trainer.train_step(batch)
            sync(trainer.device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, times)
    if rank == 0:  # a step ends when the slowest rank is done
        step = statistics.median(max(ts) for ts in zip(*gathered))
        Path(out).write_text(f"{step}")


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO))
    from benchmarks.common import step_parser

    ap = step_parser(__doc__)
    ap.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    if args.batch_size < max(args.world_sizes):
        raise SystemExit(f"--batch-size {args.batch_size} must be at least the largest world size")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.world_sizes:
            os.environ["MASTER_PORT"] = _port()
            out = Path(tmp) / f"w{world}.txt"
            torch.multiprocessing.spawn(_worker, args=(world, args, str(Path(tmp) / f"w{world}"), str(out)),
                                        nprocs=world, join=True)
            results[world] = float(out.read_text())
    print(f"device={args.device} configuration={args.configuration} patch={args.patch or 'default'} global batch="
          f"{args.batch_size} steps={args.steps} (after {args.warmup} warm-up); backend "
          f"{'nccl' if args.device == 'cuda' else 'gloo'}; CPU threads per process = cores / processes")
    w0 = args.world_sizes[0]
    base = args.batch_size / results[w0]
    for world, step in results.items():
        sps = args.batch_size / step
        ideal = world / w0 if args.device == "cuda" else 1.0
        print(f"{world} process(es): {step * 1000:.1f} ms/step, {sps:.2f} samples/s, speed-up {sps / base:.2f}x, "
              f"scaling efficiency {sps / base / ideal:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
