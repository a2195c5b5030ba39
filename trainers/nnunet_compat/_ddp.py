"""nnunetv2 internals of distributed training (see :mod:`nnzoo.trainers.nnunet_compat`)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ._data import unwrap_network


def nnunet_trainer_module():
    """The module that defines ``nnUNetTrainer`` (its globals are patched by :func:`ddp_wrapping`)."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as module

    return module


def ddp_device(requested: torch.device) -> torch.device:
    """The device of this process under DDP: ``cuda:LOCAL_RANK`` for CUDA, else the requested one.

    Why internal: under DDP nnU-Net's constructor sets ``cuda:<global rank>`` (a device that does
    not exist on a second node) whatever device was asked for; nnzoo sets it back afterwards.
    """
    if requested.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return requested


@contextmanager
def ddp_wrapping(device: torch.device) -> Iterator[None]:
    """While active, nnU-Net's ``initialize`` wraps the network in DDP with ``device``'s ids.

    Why internal: ``nnUNetTrainer.initialize`` calls ``DDP(network, device_ids=[self.local_rank])``
    with the *global* rank and no way to pass a CPU module (Gloo); the module global ``DDP`` is
    replaced for the duration of the call by one that uses ``device`` (no ids on CPU).
    """
    module = nnunet_trainer_module()
    original = module.DDP

    def wrap(network: nn.Module, device_ids=None, **kwargs):
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        return original(network, device_ids=ids, **kwargs)

    module.DDP = wrap
    try:
        yield
    finally:
        module.DDP = original


@contextmanager
def writes_of_this_rank(trainer) -> Iterator[None]:
    """Send the files that nnU-Net's ``on_train_start`` writes on every rank to a scratch folder on ranks > 0.

    Why internal: ``on_train_start`` saves ``plans.json``, ``dataset.json`` and the fingerprint into
    ``output_folder_base`` on every rank; only rank 0 may write the model folder.
    """
    if trainer.local_rank == 0:
        yield
        return
    real = trainer.output_folder_base
    with tempfile.TemporaryDirectory(prefix="nnzoo-rank-") as scratch:
        trainer.output_folder_base = scratch
        try:
            yield
        finally:
            trainer.output_folder_base = real


@contextmanager
def validation_on_rank_zero(trainer) -> Iterator[bool]:
    """Run nnU-Net's final validation as a single process on rank 0 (yields whether to run it here).

    Why internal: under DDP ``perform_actual_validation`` spreads the validation cases over ranks
    and each rank exports its share; nnzoo's rule is that rank 0 alone writes the model folder.
    On rank 0 the trainer is made non-distributed (plain module, ``is_ddp`` off) for the call, so
    it runs no collective: the other ranks need not wait for it.
    """
    if not trainer.is_ddp:
        yield True
        return
    if trainer.local_rank != 0:
        yield False
        return
    network, trainer.network, trainer.is_ddp = trainer.network, unwrap_network(trainer.network), False
    try:
        yield True
    finally:
        trainer.network, trainer.is_ddp = network, True


#: the file nnU-Net's ``do_split`` creates in the preprocessed dataset folder when it is missing
SPLITS_FILE = "splits_final.json"


def wait_for_splits(trainer, *, timeout_s: float = 600.0, poll_s: float = 0.05) -> None:
    """On ranks > 0 of a DDP run: wait until rank 0 has written the cross-validation split file.

    Why internal: ``nnUNetTrainer.do_split`` creates ``splits_final.json`` (with ``save_json``, not
    atomically) on every rank that finds it missing; under DDP a rank could read it while another
    is writing it (``JSONDecodeError``), or two ranks write it at once. Ranks > 0 call this before
    ``do_split``, so only rank 0 creates the file and the others read it complete. Nothing to wait for
    with fold ``all`` (no split) or outside DDP.

    Raises:
        RuntimeError: the file is not there, complete, within ``timeout_s`` seconds (the message names it).
    """
    if not trainer.is_ddp or trainer.local_rank == 0 or trainer.fold == "all":
        return
    path = os.path.join(trainer.preprocessed_dataset_folder_base, SPLITS_FILE)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with open(path) as f:
                json.load(f)
            return
        except (FileNotFoundError, json.JSONDecodeError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {trainer.local_rank}: {path} was not written by rank 0 within "
                                   f"{timeout_s:.0f} s") from None
            time.sleep(poll_s)
