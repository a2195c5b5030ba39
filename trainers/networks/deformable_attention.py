"""Multi-scale deformable self-attention in pure PyTorch (2D and 3D), as used by CoTr's DeTrans.

Deformable attention (Zhu et al., "Deformable DETR", ICLR 2021; extended to 3D by Xie et al., "CoTr",
MICCAI 2021) lets every query attend to a handful of sampled locations per head and feature level
instead of to every token. The sampling here is :func:`torch.nn.functional.grid_sample` (bilinear in
2D, trilinear in 3D, zero padding, ``align_corners=False``), so no custom CUDA extension is needed
and the module runs on CPU and GPU alike.

Coordinate convention (``axis_order="grid"``, the default; the fix with respect to the official CoTr code):
    ``grid_sample`` reads the last dimension of its grid as ``(x, y[, z])`` where ``x`` indexes the
    *last* spatial axis (W), ``y`` the one before (H) and ``z`` the first (D). Reference points,
    offsets and offset normalisers are therefore all kept in that reversed order here:
    reference point of the voxel ``(d, h, w)`` of a level of shape ``(D, H, W)`` is
    ``((w + .5) / W, (h + .5) / H, (d + .5) / D)`` and an offset ``o`` (in voxels of level ``l``)
    is divided by ``(W_l, H_l, D_l)``. With ``align_corners=False`` that reference point is exactly
    the centre of the query's own voxel, so with zero offsets a query samples its own value. The
    official code builds reference points and normalisers in ``(d, w, h)`` order, so its zero-offset
    sampling point is not the query's voxel unless all sides are equal. ``axis_order="official"``
    reproduces that order (3D; in 2D both orders are Deformable DETR's ``(x, y)``) for comparison.

Sampling locations are formed and used in float32, also under autocast: in half precision the
normalised locations of large levels are off by up to a voxel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AXIS_ORDERS", "deformable_sample", "reference_points", "offset_normaliser", "MultiScaleDeformableAttention"]

#: ``"grid"``: reference points and offsets in ``grid_sample`` order; ``"official"``: the official CoTr order
AXIS_ORDERS = ("grid", "official")


def _axis_permutation(ndim: int, axis_order: str) -> list[int]:
    """Tensor axes (0 = first spatial axis) in the order of the sampling-location columns."""
    if axis_order not in AXIS_ORDERS:
        raise ValueError(f"axis_order must be one of {AXIS_ORDERS}, got {axis_order!r}")
    if axis_order == "official" and ndim == 3:
        return [0, 2, 1]  # (d, w, h), as the official get_reference_points and offset normaliser
    return list(range(ndim))[::-1]  # (x, y[, z]) = (w, h[, d])


def reference_points(spatial_shapes: Sequence[Sequence[int]], device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32, axis_order: str = "grid") -> torch.Tensor:
    """Normalised centre of every token of every level, as sampling-location columns.

    Args:
        spatial_shapes: shape of each level in tensor order, e.g. ``[(D0, H0, W0), (D1, H1, W1)]``;
            tokens are the levels flattened in C order and concatenated.
        device: device of the result.
        dtype: dtype of the result.
        axis_order: ``"grid"``: ``grid_sample`` order (x, y[, z]), column 0 belongs to the last
            spatial axis; ``"official"``: the official CoTr order (3D: (d, w, h)).

    Returns:
        ``(sum of voxels, ndim)`` tensor with values in ``(0, 1)``.
    """
    out = []
    for shape in spatial_shapes:
        axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) / n for n in shape]
        grids = torch.meshgrid(*axes, indexing="ij")
        out.append(torch.stack([grids[a].reshape(-1) for a in _axis_permutation(len(shape), axis_order)], -1))
    return torch.cat(out, 0)


def offset_normaliser(spatial_shapes: Sequence[Sequence[int]], device: torch.device | None = None,
                      axis_order: str = "grid") -> torch.Tensor:
    """``(levels, ndim)`` sizes dividing the offsets (in voxels) of each level, in the columns' axis order."""
    perm = _axis_permutation(len(spatial_shapes[0]), axis_order)
    return torch.tensor([[float(s[a]) for a in perm] for s in spatial_shapes], device=device, dtype=torch.float32)


def deformable_sample(value: torch.Tensor, spatial_shapes: Sequence[Sequence[int]],
                      sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Attention-weighted sum of values sampled at fractional locations of several levels.

    Args:
        value: ``(N, S, M, Dh)`` per-head values of all tokens (``S`` = sum of voxels of all levels).
        spatial_shapes: shape of each level in tensor order (``(D, H, W)`` or ``(H, W)``).
        sampling_locations: ``(N, Lq, M, L, P, ndim)`` normalised locations in ``[0, 1]``; ``grid_sample``
            reads the last dimension as ``(x, y[, z])`` (see module docstring).
        attention_weights: ``(N, Lq, M, L, P)`` weights (normally softmax-normalised over ``L*P``).

    Returns:
        ``(N, Lq, M * Dh)`` tensor.

    Raises:
        ValueError: the token count of ``value`` does not match ``spatial_shapes``.
    """
    n, s, m, dh = value.shape
    _, lq, _, n_levels, n_points, ndim = sampling_locations.shape
    sizes = [math.prod(shape) for shape in spatial_shapes]
    if sum(sizes) != s:
        raise ValueError(f"value has {s} tokens but spatial_shapes {list(spatial_shapes)} hold {sum(sizes)}")
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] range
    out = None
    for lvl, (v, shape) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes)):
        # (N, S_l, M, Dh) -> (N*M, Dh, *shape)
        v = v.permute(0, 2, 3, 1).reshape(n * m, dh, *shape)
        # (N, Lq, M, P, ndim) -> (N*M, Lq, P, ndim), plus a singleton depth axis in 3D
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, lq, n_points, ndim)
        if ndim == 3:
            g = g[:, None]
        # sampled in float32 (also under autocast): half-precision grids misplace points on large levels
        sampled = F.grid_sample(v.float(), g.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
        if ndim == 3:
            sampled = sampled[:, :, 0]  # (N*M, Dh, Lq, P)
        w = attention_weights[:, :, :, lvl].transpose(1, 2).reshape(n * m, 1, lq, n_points)
        contrib = (sampled * w.float()).sum(-1)  # (N*M, Dh, Lq)
        out = contrib if out is None else out + contrib
    return out.view(n, m * dh, lq).transpose(1, 2).to(value.dtype)


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention over flattened 2D or 3D feature levels.

    Each query predicts, per head, level and point, an offset (in voxels of that level) from its
    reference point and an attention logit; logits are softmax-normalised over levels x points per
    head. Initialisation follows Deformable DETR / CoTr: zero offset weights, offset biases pointing
    in one direction per head and growing with the point index, zero attention logits.

    Args:
        d_model: token width; must be divisible by ``n_heads``.
        n_levels: number of feature levels.
        n_heads: number of heads.
        n_points: sampling points per head and level.
        ndim: spatial dimensionality, 2 or 3.
        axis_order: see :func:`reference_points` (the reference points passed to :meth:`forward`
            must use the same order).

    Raises:
        ValueError: ``d_model`` not divisible by ``n_heads``, ``ndim`` not 2 or 3, unknown ``axis_order``.
    """

    def __init__(self, d_model: int = 384, n_levels: int = 2, *, n_heads: int = 6, n_points: int = 4,
                 ndim: int = 3, axis_order: str = "grid") -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        _axis_permutation(ndim, axis_order)  # validates
        self.d_model, self.n_levels, self.n_heads, self.n_points, self.ndim = d_model, n_levels, n_heads, n_points, ndim
        self.axis_order = axis_order
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * ndim)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR style initialisation (see class docstring)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        if self.ndim == 2:
            dirs = torch.stack([theta.cos(), theta.sin()], -1)
        else:  # CoTr's 3D directions
            dirs = torch.stack([theta.cos(), theta.sin() * theta.cos(), theta.sin() * theta.sin()], -1)
        dirs = dirs / dirs.abs().max(-1, keepdim=True)[0]
        grid = dirs[:, None, None, :].repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, ref_points: torch.Tensor, value_tokens: torch.Tensor,
                spatial_shapes: Sequence[Sequence[int]]) -> torch.Tensor:
        """Attend from ``query`` to ``value_tokens``.

        Args:
            query: ``(N, Lq, d_model)`` queries (tokens plus positional encoding for self-attention).
            ref_points: ``(Lq, ndim)`` or ``(N, Lq, ndim)`` normalised reference points in this
                module's axis order (see :func:`reference_points`); the same normalised point is
                used on every level.
            value_tokens: ``(N, S, d_model)`` flattened levels.
            spatial_shapes: shape of each level in tensor order.

        Returns:
            ``(N, Lq, d_model)`` tensor.
        """
        n, lq, _ = query.shape
        h, lvl, p, nd = self.n_heads, self.n_levels, self.n_points, self.ndim
        value = self.value_proj(value_tokens).view(n, value_tokens.shape[1], h, self.d_model // h)
        offsets = self.sampling_offsets(query).view(n, lq, h, lvl, p, nd)
        weights = self.attention_weights(query).view(n, lq, h, lvl * p).softmax(-1).view(n, lq, h, lvl, p)
        # offsets are in voxels of each level; normalise by the level's size (in float32, also under autocast)
        normaliser = offset_normaliser(spatial_shapes, query.device, self.axis_order)
        if ref_points.dim() == 2:
            ref_points = ref_points[None]
        loc = ref_points[:, :, None, None, None, :].float() + offsets.float() / normaliser[None, None, None, :, None, :]
        out = deformable_sample(value, spatial_shapes, loc, weights)
        return self.output_proj(out)
