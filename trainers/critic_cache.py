"""The shape prior's critic cache: a pre-trained critic stored once per training set and reused
(:class:`~nnzoo.trainers.shape_prior.nnUNetTrainerShapePrior`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

__all__ = ["critic_cache_key", "save_critic_cache", "load_critic_cache", "duration"]


def critic_cache_key(fields: dict) -> str:
    """Cache key of a pre-trained critic: the SHA-256 (first 24 hex digits) of ``fields`` as canonical JSON.

    Args:
        fields: everything the critic depends on (labeled cases, configuration, patch size, critic
            hyperparameters...), JSON-serialisable.
    """
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def save_critic_cache(path: str | Path, state: dict, record: dict) -> None:
    """Write ``{"state_dict", "record"}`` to ``path`` atomically (temporary file in the same folder, renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"state_dict": {k: v.cpu() for k, v in state.items()}, "record": record}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_critic_cache(path: str | Path) -> tuple[dict, dict] | None:
    """``(state_dict, record)`` of a cached critic, or None when absent or unreadable."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return data["state_dict"], data["record"]
    except (OSError, KeyError, RuntimeError, EOFError, TypeError):
        return None


def duration(seconds: float) -> str:
    """Seconds in words: ``"42 s"``, ``"3.5 min"``, ``"2.1 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
