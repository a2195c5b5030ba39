"""Several training processes through PyTorch's distributed package: ``-num_gpus N`` and torchrun.

- ``nnzoo train ... -num_gpus N``: one node, N processes started with
  ``torch.multiprocessing.spawn`` (as ``nnUNetv2_train -num_gpus N`` does), rendezvous on
  127.0.0.1 (``MASTER_PORT``: the environment's, else a free port);
- ``torchrun [--nnodes M --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT]
  --nproc-per-node N -m nnzoo.pipeline train ...`` (or the ``nnzoo`` script path): the process group comes from torchrun's environment
  (``env://``: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

Backend NCCL on CUDA (device ``cuda:LOCAL_RANK``), Gloo on the CPU. Collectives and the
rendezvous time out after :data:`TIMEOUT`; a process that fails or dies stops the others
(``spawn`` terminates them; torchrun's agent does the same) and the error is reported as one line.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from collections.abc import Callable
from contextlib import contextmanager

from .errors import NnzooError

__all__ = ["TIMEOUT", "launched_by_torchrun", "backend_for", "spawn_processes", "process_group"]

#: timeout of the rendezvous and of every collective (PyTorch's own default for Gloo and NCCL)
TIMEOUT = datetime.timedelta(minutes=30)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (or another ``env://`` launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ and "LOCAL_RANK" in os.environ


def backend_for(device_type: str) -> str:
    """``nccl`` for CUDA, ``gloo`` otherwise."""
    return "nccl" if device_type == "cuda" else "gloo"


@contextmanager
def process_group(backend: str, rank: int | None = None, world_size: int | None = None):
    """Initialise the default process group from the environment (``env://``) and destroy it afterwards."""
    import torch.distributed as dist

    kwargs = {} if rank is None else {"rank": rank, "world_size": world_size}
    dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT, **kwargs)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, fn: Callable, args: tuple, world_size: int, backend: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    with process_group(backend, rank, world_size):
        fn(*args)
    # The run is complete (rank 0 wrote its checkpoints atomically) and the process group is destroyed: leave
    # without the interpreter's teardown, in which Gloo's worker threads can still release tensors of the DDP
    # reducer and abort the process ("terminate called without an active exception", seen once in CI on a
    # resumed 2-process CPU run that had finished) — which would report a finished run as a dead process.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_processes(fn: Callable, args: tuple, nprocs: int, device_type: str) -> None:
    """Run ``fn(*args)`` in ``nprocs`` processes of one process group on this node.

    Args:
        fn: a module-level function (pickled by reference for the spawned processes).
        args: its arguments (picklable).
        nprocs: number of processes.
        device_type: ``cuda`` (NCCL, one GPU per process) or ``cpu`` (Gloo).

    Raises:
        NnzooError: a process raised or died (its error in one line); ``nprocs`` exceeds the visible GPUs.
    """
    import torch
    import torch.multiprocessing as mp

    if device_type == "cuda" and nprocs > torch.cuda.device_count():
        raise NnzooError(f"-num_gpus {nprocs}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                         "(CUDA_VISIBLE_DEVICES)")
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    try:
        mp.spawn(_worker, args=(fn, args, nprocs, backend_for(device_type)), nprocs=nprocs, join=True)
    except mp.ProcessRaisedException as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        raise NnzooError(f"training process {e.error_index} of {nprocs} failed: {lines[-1].strip()}") from None
    except mp.ProcessExitedException as e:
        raise NnzooError(f"training process {e.error_index} of {nprocs} died (exit code {e.exit_code}); the other "
                         "processes were stopped; resume with --continue") from None
