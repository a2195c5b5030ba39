"""Functions the DDP tests run in spawned processes (importable there: spawn passes the parent's sys.path).

- :func:`train_rank`: one rank of an ``nnzoo train`` run (``nnzoo.pipeline.train.run_process``) that
  records every file it writes under ``nnUNet_results`` and saves its network and teacher weights.
- :func:`step_rank`: one DDP ``train_step`` of nnU-Net's baseline on this rank's share of a batch.
"""

from __future__ import annotations

import builtins
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def recorded_writes(root: str, writes: list[str]):
    """Record (not block) every file opened for writing, replaced or copied under ``root``."""
    real_open, real_replace, real_copy = builtins.open, os.replace, shutil.copyfile

    def under(p) -> bool:
        return str(Path(os.fspath(p)).resolve()).startswith(str(Path(root).resolve()))

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and under(file):
            writes.append(os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if under(dst):
            writes.append(os.fspath(dst))
        return real_replace(src, dst, *args, **kwargs)

    def copyfile(src, dst, *args, **kwargs):
        if under(dst):
            writes.append(os.fspath(dst))
        return real_copy(src, dst, *args, **kwargs)

    builtins.open, os.replace, shutil.copyfile = open_, replace, copyfile
    try:
        yield
    finally:
        builtins.open, os.replace, shutil.copyfile = real_open, real_replace, real_copy


def _env(rank: int, world: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))


def train_rank(rank: int, world: int, run, out_dir: str) -> None:
    """One rank of ``run``; saves ``{"network", "teacher", "writes"}`` to ``out_dir/rank<r>.pt``."""
    from nnzoo.pipeline.distributed import process_group
    from nnzoo.pipeline.train import run_process
    from nnzoo.trainers.nnunet_compat import unwrap_network

    _env(rank, world)
    os.environ.update(run.folders)
    writes: list[str] = []
    with recorded_writes(os.environ["nnUNet_results"], writes), process_group("gloo", rank, world):
        t = run_process(run)
    teacher = getattr(t, "teacher", None)
    critic = getattr(t, "critic", None)
    torch.save({"network": unwrap_network(t.network).state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else None,
                "critic": critic.state_dict() if critic is not None else None,
                "unlabeled": list(getattr(t, "unlabeled_train_keys", [])), "batch_size": t.batch_size,
                "writes": writes}, os.path.join(out_dir, f"rank{rank}.pt"))


def step_rank(rank: int, world: int, plans: dict, dataset_json: dict, batch: dict, out_dir: str) -> None:
    """One nnU-Net ``train_step`` on rank ``rank``'s half of ``batch`` under DDP; saves the weights after it."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnzoo.pipeline.distributed import process_group
    from nnzoo.trainers.base import nnzoo_trainer_class
    from nnzoo.trainers.nnunet_compat import unwrap_network

    _env(rank, world)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = os.path.join(out_dir, f"rank{rank}", k)
    with process_group("gloo", rank, world):
        trainer = build_step_trainer(nnzoo_trainer_class(nnUNetTrainer), plans, dataset_json)
        n = batch["data"].shape[0] // world
        part = {"data": batch["data"][rank * n:(rank + 1) * n],
                "target": [t[rank * n:(rank + 1) * n] for t in batch["target"]]}
        trainer.train_step(part)
        torch.save(unwrap_network(trainer.network).state_dict(), os.path.join(out_dir, f"step{rank}.pt"))


def build_step_trainer(cls: type, plans: dict, dataset_json: dict):
    """An initialized CPU trainer (weights seeded: the same on every process), in the current nnU-Net folders."""
    from nnzoo.trainers.nnunet_compat import build_trainer

    torch.manual_seed(0)
    t = build_trainer(cls, plans=plans, configuration="2d", fold=0, dataset_json=dataset_json,
                      device=torch.device("cpu"))
    Path(t.preprocessed_dataset_folder).mkdir(parents=True, exist_ok=True)
    (Path(t.preprocessed_dataset_folder) / "marker.b2nd").touch()
    t.initialize()
    return t


def gpu_rank(rank: int, world: int, plans: dict, dataset_json: dict, out_dir: str) -> None:
    """One nnU-Net train step on ``cuda:LOCAL_RANK`` in an NCCL process group (nnzoo's DDP code path)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from torch.nn.parallel import DistributedDataParallel

    from benchmarks.common import make_batch
    from nnzoo.pipeline.distributed import process_group
    from nnzoo.trainers.base import nnzoo_trainer_class

    _env(rank, world)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = os.path.join(out_dir, k)
    with process_group("nccl", rank, world):
        from nnzoo.trainers.nnunet_compat import build_trainer

        t = build_trainer(nnzoo_trainer_class(nnUNetTrainer), plans=plans, configuration="2d", fold=0,
                          dataset_json=dataset_json, device=torch.device("cuda"))
        Path(t.preprocessed_dataset_folder).mkdir(parents=True, exist_ok=True)
        (Path(t.preprocessed_dataset_folder) / "marker.b2nd").touch()
        t.initialize()
        loss = float(t.train_step(make_batch(t, t.batch_size, t.device))["loss"])
        torch.save({"device": str(t.device), "ddp": isinstance(t.network, DistributedDataParallel), "loss": loss},
                   os.path.join(out_dir, f"gpu{rank}.pt"))
