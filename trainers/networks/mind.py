"""MIND-SSC: a modality-independent neighbourhood descriptor as the network's input (DG-TTA's MIND pretraining).

Heinrich et al., "MIND: Modality independent neighbourhood descriptor for multi-modal deformable
registration", Medical Image Analysis 16(7), 2012, and its self-similarity-context variant (Heinrich et
al., "Towards realtime multimodal fusion for image-guided interventions using self-similarities",
MICCAI 2013); used as the segmentation network's input by Weihsbach, Kruse, Bigalke, Heinrich,
"DG-TTA: Out-of-domain medical image segmentation through augmentation and descriptor-driven domain
generalization and test-time adaptation", Sensors 2024 (official code: github multimodallearning/DG-TTA,
``dg_tta/mind.py``, ``dg_tta/pretraining/nnUNetTrainer_MIND.py``).

For every pair of face neighbours of a voxel that are not opposite each other (12 pairs in 3D, 4 in
2D), the squared difference of the image at the two neighbours is smoothed by a Gaussian (a patch
distance); the distances of a voxel, minus their minimum and divided by their mean (its local
variance), give the descriptor ``exp(-d / v)``. The descriptor only compares the image with itself
near every voxel, so it does not change under ``x -> a x + b`` for any ``a != 0``: a contrast that
inverts the tissue order (T1 -> T2) leaves it where the raw intensities move.

:func:`attach_mind` puts the descriptor in front of any network as a forward pre-hook (as the official
code does): the network's state dict is the plan network's, with ``K`` times its input channels.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["mind_pairs", "mind_channels", "gaussian_smooth", "mind_ssc", "attach_mind"]

#: the smallest local variance (relative to the sample's mean variance, as official) and an absolute floor
#: (a constant tile, e.g. background, has no variance at all; official: 0 / 0)
_VAR_CLAMP = (1e-3, 1e3)
_VAR_FLOOR = 1e-12


def mind_pairs(ndim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The neighbour pairs compared by MIND-SSC: face neighbours ``a, b`` of the centre with ``|a - b|^2 = 2``.

    Args:
        ndim: 2 or 3.

    Returns:
        ``[(offset a, offset b), ...]``, 4 pairs in 2D, 12 in 3D (offsets in {-1, 0, 1} per axis).

    Raises:
        ValueError: ``ndim`` not 2 or 3.
    """
    if ndim not in (2, 3):
        raise ValueError(f"MIND needs 2D or 3D images, got {ndim} spatial axes")
    faces = [tuple(s if i == axis else 0 for i in range(ndim)) for axis in range(ndim) for s in (-1, 1)]
    return [(a, b) for a, b in itertools.combinations(faces, 2) if sum((x - y) ** 2 for x, y in zip(a, b)) == 2]


def mind_channels(ndim: int) -> int:
    """Descriptor channels per image channel: 4 in 2D, 12 in 3D."""
    return len(mind_pairs(ndim))


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of every channel of a ``(B, C, *spatial)`` batch (replicate padding).

    The kernel has ``2 ceil(1.5 sigma) + 1`` taps, normalised to sum 1 (the official kernel size).
    """
    ndim = x.dim() - 2
    half = int(math.ceil(sigma * 1.5))
    t = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    w = torch.exp(-t ** 2 / (2 * sigma ** 2))
    w = w / w.sum()
    conv = F.conv2d if ndim == 2 else F.conv3d
    c = x.shape[1]
    for axis in range(ndim):
        shape = [1] * ndim
        shape[axis] = w.numel()
        pad = [0, 0] * ndim
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = half  # F.pad counts from the last axis
        x = conv(F.pad(x, pad, mode="replicate"), w.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return x


def mind_ssc(x: torch.Tensor, *, delta: int = 1, sigma: float = 1.0, noise: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """MIND-SSC descriptor of every channel of a batch of 2D or 3D images.

    Args:
        x: ``(B, C, *spatial)`` images.
        delta: neighbour distance in voxels (official 1).
        sigma: Gaussian of the patch distance, in voxels (official 1).
        noise: std of the Gaussian noise added to the neighbour differences (official 0.05; 0: none).
        generator: random generator of the noise.

    Returns:
        ``(B, C K, *spatial)`` in (0, 1], ``K`` = :func:`mind_channels` (channel ``c K + k``: pair ``k`` of image
        channel ``c``).
    """
    b, c, *spatial = x.shape
    ndim = len(spatial)
    pairs = mind_pairs(ndim)
    padded = F.pad(x.reshape(b * c, 1, *spatial), [delta] * (2 * ndim), mode="replicate")

    def shifted(offset: tuple[int, ...]) -> torch.Tensor:
        return padded[(..., *(slice(delta + o * delta, delta + o * delta + n) for o, n in zip(offset, spatial)))]

    diff = torch.cat([shifted(p) - shifted(q) for p, q in pairs], 1)
    if noise:
        diff = diff + noise * torch.randn(diff.shape, generator=generator, device=diff.device, dtype=diff.dtype)
    ssd = gaussian_smooth(diff ** 2, sigma)
    d = ssd - ssd.min(1, keepdim=True)[0]
    var = d.mean(1, keepdim=True)
    ref = var.flatten(1).mean(1).view(-1, *([1] * (ndim + 1)))  # per sample (official: over the batch)
    var = torch.maximum(torch.minimum(var, ref * _VAR_CLAMP[1]), ref * _VAR_CLAMP[0]).clamp_min(_VAR_FLOOR)
    return torch.exp(-d / var).reshape(b, c * len(pairs), *spatial)


def attach_mind(network: nn.Module, *, delta: int = 1, sigma: float = 1.0, noise: float = 0.05
                ) -> torch.utils.hooks.RemovableHandle:
    """Feed ``network`` the MIND-SSC descriptor of its input (a forward pre-hook).

    The network must take :func:`mind_channels` times the image channels. The noise is added in training
    mode only: in eval mode (validation, prediction) the descriptor is deterministic.

    Returns:
        The hook's handle.
    """
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (mind_ssc(args[0], delta=delta, sigma=sigma, noise=noise if module.training else 0.0), *args[1:])

    return network.register_forward_pre_hook(hook)
