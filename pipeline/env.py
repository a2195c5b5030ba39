"""Folders, device and thread settings, resolved once per command before nnU-Net is imported.

nnU-Net reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` from the
environment (and ``nnUNet_def_n_proc`` at import time), so nnzoo settles them first.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import NnzooError

__all__ = ["NNUNET_FOLDERS", "setup_folders", "resolve_device", "configure_workers"]

NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
DEFAULT_WORKDIR = "nnzoo_work"


def setup_folders(workdir: str | Path | None = None, quiet: bool = False) -> dict[str, str]:
    """Honour ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results``; fill unset ones from one working folder.

    Args:
        workdir: folder holding the unset ones (default ``./nnzoo_work``); printed once.
        quiet: do not print the folders chosen.

    Returns:
        The three folders, as set in ``os.environ``.
    """
    base = Path(workdir or DEFAULT_WORKDIR).resolve()
    chosen = {}
    for name in NNUNET_FOLDERS:
        if not os.environ.get(name):
            os.environ[name] = str(base / name)
            chosen[name] = os.environ[name]
        Path(os.environ[name]).mkdir(parents=True, exist_ok=True)
    if chosen and not quiet:
        print(f"nnzoo: {', '.join(chosen)} not set; using the working folder {base}")
    return {n: os.environ[n] for n in NNUNET_FOLDERS}


def configure_workers(device_type: str) -> None:
    """Set threads and nnU-Net's worker counts for this machine unless the user set them.

    The node's cores are shared by the training processes on it (``LOCAL_WORLD_SIZE``, set by
    torchrun and ``-num_gpus``). On CPU, torch uses each process's share of the cores and
    augmentation runs in the main process when there are at most 4 cores per process (background
    workers would compete with the training threads); on GPU, augmentation gets ``cores - 1``
    workers per process, at most 12 (nnU-Net's default). ``OMP_NUM_THREADS``, when set, keeps the
    thread count torch took from it (e.g. ``OMP_NUM_THREADS=1`` for jobs running side by side).
    """
    import torch

    cores = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(8, cores))))
    if device_type == "cuda":
        os.environ.setdefault("nnUNet_n_proc_DA", str(max(1, min(12, cores - 1))))
    else:
        os.environ.setdefault("nnUNet_n_proc_DA", "0" if cores <= 4 else str(min(8, cores // 2)))
        if not os.environ.get("OMP_NUM_THREADS"):  # the standard override: e.g. 1 per job when jobs share cores
            torch.set_num_threads(cores)


def resolve_device(name: str = "auto", local_rank: int | None = None):
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``mps`` as a ``torch.device``.

    Args:
        name: the device name.
        local_rank: under DDP, this process's rank on its node: CUDA becomes ``cuda:<local_rank>``.

    Raises:
        NnzooError: unknown name, CUDA asked for but not available, or no GPU for ``local_rank``.
    """
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda", "mps"):
        raise NnzooError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise NnzooError("device 'cuda' requested but torch sees no CUDA GPU; use -device cpu or auto")
    configure_workers(name)
    if name == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise NnzooError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible "
                             "on this node (torchrun --nproc-per-node must not exceed them)")
        return torch.device("cuda", local_rank)
    return torch.device(name)
