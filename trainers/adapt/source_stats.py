"""Source statistics of a trained network: per normalisation layer, the per-channel mean and variance of its input.

BatchNorm networks keep running statistics; nnU-Net's InstanceNorm networks keep none, and VPTTA aligns the
statistics of test features to the source's. :func:`record_source_statistics` runs training patches through
the network and accumulates, for every normalisation layer, the per-channel mean and variance of the layer's
input over every voxel of every patch (the pooled statistics a BatchNorm layer in that place would track), and
also the mean per-patch variance. :func:`random_patches` cuts patches out of preprocessed cases. The result is a
JSON-able dict, written beside the checkpoint as ``source_stats.json`` (:data:`FILE_NAME`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import first_output, norm_layers

__all__ = ["FILE_NAME", "FORMAT", "record_source_statistics", "random_patches", "save_source_statistics",
           "load_source_statistics"]

FILE_NAME = "source_stats.json"
FORMAT = 1


class _Accumulator:
    def __init__(self) -> None:
        self.n = 0  # voxels per channel
        self.patches = 0
        self.sum = self.sumsq = self.inst_var = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        dims = (0, *range(2, x.ndim))
        s, sq = x.sum(dims), (x * x).sum(dims)
        iv = x.flatten(2).var(2, unbiased=False).sum(0)
        if self.sum is None:
            self.sum, self.sumsq, self.inst_var = s, sq, iv
        else:
            self.sum, self.sumsq, self.inst_var = self.sum + s, self.sumsq + sq, self.inst_var + iv
        self.n += x.numel() // x.shape[1]
        self.patches += x.shape[0]

    def result(self) -> dict:
        mean = self.sum / self.n
        var = (self.sumsq / self.n - mean * mean).clamp_min(0)
        return {"mean": mean.float().tolist(), "var": var.float().tolist(),
                "instance_var": (self.inst_var / self.patches).float().tolist()}


@torch.no_grad()
def record_source_statistics(network: nn.Module, patches: Iterable[torch.Tensor], *,
                             device: torch.device | str = "cpu", batch_size: int = 2) -> dict:
    """Per-channel statistics of every normalisation layer's input over ``patches``.

    Args:
        network: the trained network (unwrapped: no DDP, no ``torch.compile``); put in eval mode while
            recording, its mode restored afterwards.
        patches: ``(C, *patch)`` float tensors (preprocessed training patches, no augmentation).
        device: where the network runs.
        batch_size: patches per forward pass (the statistics do not depend on it).

    Returns:
        ``{"format": 1, "patches": n, "layers": {name: {"mean": [...], "var": [...], "instance_var": [...]}}}``
        with ``var`` the pooled variance over voxels of every patch, ``instance_var`` the mean per-patch
        variance.

    Raises:
        ValueError: the network has no normalisation layer, or no patch was given.
    """
    layers = norm_layers(network)
    if not layers:
        raise ValueError(f"{type(network).__name__} has no normalisation layer: nothing to record")
    acc = {name: _Accumulator() for name, _ in layers}
    handles = [m.register_forward_pre_hook(lambda mod, inp, name=name: acc[name].add(inp[0])) for name, m in layers]
    was_training = network.training
    network.eval()
    count = 0
    try:
        batch: list[torch.Tensor] = []
        for p in patches:
            batch.append(torch.as_tensor(p, dtype=torch.float32))
            if len(batch) == batch_size:
                first_output(network(torch.stack(batch).to(device)))
                count += len(batch)
                batch = []
        if batch:
            first_output(network(torch.stack(batch).to(device)))
            count += len(batch)
    finally:
        for h in handles:
            h.remove()
        network.train(was_training)
    if count == 0:
        raise ValueError("no training patch to record source statistics from")
    return {"format": FORMAT, "patches": count, "layers": {n: a.result() for n, a in acc.items()}}


def random_patches(cases: Iterable[np.ndarray], patch_size: tuple[int, ...], *, per_case: int,
                   generator: np.random.Generator) -> Iterator[torch.Tensor]:
    """Random patches of preprocessed cases (zero-padded where a case is smaller than the patch).

    Args:
        cases: ``(C, *spatial)`` arrays (3D spatial; a 2D ``patch_size`` cuts a random slice of the first axis).
        patch_size: the configuration's patch size (2 or 3 axes).
        per_case: patches per case.
        generator: numpy generator drawing the positions.

    Yields:
        ``(C, *patch_size)`` float32 tensors.
    """
    for data in cases:
        data = np.asarray(data)
        for _ in range(per_case):
            arr = data
            if len(patch_size) == data.ndim - 2:
                arr = data[:, int(generator.integers(data.shape[1]))]
            spatial = arr.shape[1:]
            pads = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(patch_size, spatial)]
            if any(p[1] for p in pads):
                arr = np.pad(arr, pads)
            starts = [int(generator.integers(s - p + 1)) for s, p in zip(arr.shape[1:], patch_size)]
            sl = (slice(None), *[slice(b, b + p) for b, p in zip(starts, patch_size)])
            yield torch.from_numpy(np.ascontiguousarray(arr[sl], dtype=np.float32))


def save_source_statistics(stats: dict, path: str | Path, **provenance) -> Path:
    """Write ``stats`` (plus provenance entries such as the checkpoint and cases used) as JSON, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**stats, **provenance}))
    tmp.replace(path)
    return path


def load_source_statistics(path: str | Path) -> dict:
    """Read a ``source_stats.json``.

    Raises:
        ValueError: not a source-statistics file of a known format.
    """
    try:
        stats = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable as source statistics ({e})") from None
    if not isinstance(stats, dict) or stats.get("format") != FORMAT or not isinstance(stats.get("layers"), dict):
        raise ValueError(f"{path}: not a source-statistics file (format {FORMAT}); record it again")
    return stats
