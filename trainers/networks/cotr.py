"""CoTr: residual CNN encoder, deformable Transformer (DeTrans) and residual decoder, for 2D and 3D.

Paper: Xie, Zhang, Shen, Xia, "CoTr: Efficiently Bridging CNN and Transformer for 3D Medical Image
Segmentation", MICCAI 2021 (official code: github YtongXie/CoTr, on nnU-Net v1). Written from the
paper and that code's structure; no code is copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .deformable_attention import MultiScaleDeformableAttention, reference_points

__all__ = ["ARCH_KEYS", "COTR_CLASS_NAME", "CoTr", "CoTrEncoder", "CoTrDecoder", "DeTrans", "cotr_strides",
           "total_stride", "deep_supervision_scales", "sine_position_encoding", "estimate_train_memory_elements",
           "cotr_plan_architecture"]

#: keywords of :class:`CoTrEncoder` that describe the architecture (widths, depths, DeTrans settings); the
#: paper's values are declared once, as ``nnUNetTrainerCoTr``'s hyperparameters (``network_kwargs()``)
ARCH_KEYS = ("stem_channels", "stage_channels", "blocks_per_stage", "stem_kernel_size", "d_model", "n_heads",
             "n_points", "n_layers", "ffn_dim", "dropout", "axis_order")


def cotr_strides(plan_strides: Sequence[Sequence[int]], ndim: int, n_down: int = 4) -> list[tuple[int, ...]]:
    """CoTr's per-level strides (stem first), derived from a plan's pooling.

    CoTr downsamples ``n_down = 4`` times (stem + 3 residual stages). Level ``i`` takes the stride
    of the plan's ``i``-th pooling operation (leading all-ones entries skipped, missing ones = 1),
    so the network downsamples where nnU-Net's plan does: an axis that nnU-Net pools late (coarse
    through-plane spacing) or less often (short patch axis) is treated alike. In 3D the stem never
    strides the first axis (the paper's stem stride is (1, 2, 2); the first axis is the
    through-plane one after nnU-Net's transpose): a halving the plan puts there moves to the first
    later level that does not halve that axis, or is dropped if there is none. On isotropic plans
    and on the usual anisotropic ones this gives the paper's ``(1, 2, 2), (2, 2, 2) x 3`` (total
    ``(8, 16, 16)``); in 2D ``(2, 2) x 4`` (total 16), i.e. the stem strides both axes.

    Args:
        plan_strides: the plan's pooling strides (``architecture.arch_kwargs.strides`` of nnU-Net's
            U-Net plans), one entry per stage.
        ndim: 2 or 3.
        n_down: number of downsampling levels (stem + residual stages).

    Returns:
        ``n_down`` stride tuples (stem first).
    """
    ops = [tuple([int(s)] * ndim) if isinstance(s, int) else tuple(int(v) for v in s) for s in plan_strides]
    ops = [o for o in ops if any(v != 1 for v in o)][:n_down]
    ops += [(1,) * ndim] * (n_down - len(ops))
    first = [o[0] for o in ops]
    if ndim == 3 and first[0] != 1:
        moved, first[0] = first[0], 1
        free = [i for i in range(1, n_down) if first[i] == 1]
        if free:
            first[free[0]] = moved
    return [(f, *o[1:]) for f, o in zip(first, ops)] if ndim == 3 else ops


def total_stride(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Per-axis product of ``strides``: what the patch size must be divisible by."""
    return tuple(math.prod(int(s[a]) for s in strides) for a in range(len(strides[0])))


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """Scale of each CoTr output relative to the input, highest resolution first.

    Outputs: full resolution, then the decoder's heads at levels ``0 .. n-2`` (stem level first);
    the deepest level has no head.
    """
    scales, acc = [[1.0] * len(strides[0])], [1] * len(strides[0])
    for s in strides[:-1]:
        acc = [a * b for a, b in zip(acc, s)]
        scales.append([1.0 / a for a in acc])
    return scales


def sine_position_encoding(shape: Sequence[int], d_model: int, device: torch.device | None = None,
                           temperature: float = 10000.0) -> torch.Tensor:
    """Normalised sine/cosine position encoding of a 2D or 3D grid (CoTr's ``v2`` encoding).

    Each axis gets its own block of features (``d_model / ndim``, rounded to even; the first axis
    takes the remainder); positions are voxel centres scaled to ``(0, 2*pi)``; feature ``j`` of a
    block uses the frequency ``temperature ** (ndim * (j // ndim) / F)`` as in the official code
    (for 2D this is DETR's encoding) and alternates sine and cosine.

    Args:
        shape: spatial shape in tensor order.
        d_model: width of the encoding; must be even.
        device: device of the result.
        temperature: frequency base.

    Returns:
        ``(prod(shape), d_model)`` tensor, tokens in C order.

    Raises:
        ValueError: ``d_model`` is odd.
    """
    ndim = len(shape)
    if d_model % 2:
        raise ValueError(f"d_model must be even for the sine position encoding, got {d_model}")
    base = (d_model // ndim) // 2 * 2
    feats = [d_model - base * (ndim - 1)] + [base] * (ndim - 1)
    coords = torch.meshgrid(*[(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n * 2 * math.pi
                              for n in shape], indexing="ij")
    parts = []
    for c, f in zip(coords, feats):
        j = torch.arange(f, device=device, dtype=torch.float32)
        freq = temperature ** (ndim * torch.div(j, ndim, rounding_mode="floor") / f)
        pos = c.reshape(-1, 1) / freq
        parts.append(torch.stack([pos[:, 0::2].sin(), pos[:, 1::2].cos()], -1).flatten(1))
    return torch.cat(parts, 1)


class _EncoderLayer(nn.Module):
    """Post-norm Transformer encoder layer with deformable self-attention and a GELU FFN."""

    def __init__(self, d_model: int, *, n_heads: int, n_points: int, n_levels: int, ffn_dim: int, dropout: float,
                 ndim: int, axis_order: str) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads=n_heads, n_points=n_points,
                                                       ndim=ndim, axis_order=axis_order)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.act = nn.GELU()
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shapes: list) -> torch.Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, ref, src, shapes)))
        ffn = self.linear2(self.dropout2(self.act(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeTrans(nn.Module):
    """CoTr's deformable Transformer over several feature levels of equal width ``d_model``.

    Tokens of all levels are concatenated; each layer lets every token attend (deformably) to all
    levels; the queries carry the sine position encoding plus a learned per-level embedding.

    Args:
        d_model: token width (= channels of the levels).
        n_levels: number of levels.
        n_heads: attention heads.
        n_points: sampling points per head and level.
        n_layers: number of encoder layers.
        ffn_dim: hidden width of the feed-forward network.
        dropout: dropout rate in the layers.
        ndim: 2 or 3.
        axis_order: order of reference points and offsets (see
            :func:`~nnzoo.trainers.networks.deformable_attention.reference_points`).
    """

    def __init__(self, d_model: int, *, n_levels: int, n_heads: int, n_points: int, n_layers: int, ffn_dim: int,
                 dropout: float, ndim: int, axis_order: str = "grid") -> None:
        super().__init__()
        self.d_model = d_model
        self.axis_order = axis_order
        self.layers = nn.ModuleList([_EncoderLayer(d_model, n_heads=n_heads, n_points=n_points, n_levels=n_levels,
                                                   ffn_dim=ffn_dim, dropout=dropout, ndim=ndim, axis_order=axis_order)
                                     for _ in range(n_layers)])
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        for layer in self.layers:
            for lin in (layer.linear1, layer.linear2):
                nn.init.xavier_uniform_(lin.weight)
        nn.init.normal_(self.level_embed)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Feature maps ``(N, d_model, *shape_l)`` in, same shapes out."""
        shapes = [tuple(f.shape[2:]) for f in feats]
        src = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1)
        pos = torch.cat([sine_position_encoding(s, self.d_model, f.device) + self.level_embed[i]
                         for i, (s, f) in enumerate(zip(shapes, feats))], 0)[None].to(src.dtype)
        ref = reference_points(shapes, src.device, axis_order=self.axis_order)
        for layer in self.layers:
            src = layer(src, pos, ref, shapes)
        outs, start = [], 0
        for f, s in zip(feats, shapes):
            n = math.prod(s)
            outs.append(src[:, start:start + n].transpose(1, 2).reshape(f.shape))
            start += n
        return outs


class _ConvNormAct(nn.Sequential):
    def __init__(self, enc: CoTrEncoder, cin: int, cout: int, kernel: int, stride, act: bool = True) -> None:
        layers = [enc.conv_op(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                  enc.norm_op(cout, **enc.norm_op_kwargs)]
        if act:
            layers.append(enc.nonlin(**enc.nonlin_kwargs))
        super().__init__(*layers)


class _EncoderBlock(nn.Module):
    """conv3 + norm, plus the (projected when stride or width change) input, then the activation."""

    def __init__(self, enc: CoTrEncoder, cin: int, cout: int, stride) -> None:
        super().__init__()
        self.conv = _ConvNormAct(enc, cin, cout, 3, stride, act=False)
        self.proj = None
        if any(s != 1 for s in stride) or cin != cout:
            self.proj = _ConvNormAct(enc, cin, cout, 1, stride, act=False)
        self.act = enc.nonlin(**enc.nonlin_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) + (x if self.proj is None else self.proj(x)))


class _DecoderBlock(nn.Module):
    """Two conv3-norm-act layers with an identity shortcut (no activation after the sum)."""

    def __init__(self, enc: CoTrEncoder, ch: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(_ConvNormAct(enc, ch, ch, 3, 1), _ConvNormAct(enc, ch, ch, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.convs(x)


class CoTrEncoder(nn.Module):
    """Residual CNN encoder followed by DeTrans over its two deepest levels.

    Levels: 0 = stem (``stem_kernel_size`` conv, stride ``strides[0]``), then one residual stage per
    entry of ``stage_channels`` (first block strided). :meth:`forward` returns the skip list
    ``[stem, stage1, ..., DeTrans(stage n-1), DeTrans(stage n)]``: the CNN features of the shallow
    levels and the Transformer's output for the two deepest ones, as in the official code.

    Args:
        input_channels: image channels.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        strides: ``1 + len(stage_channels)`` stride tuples (see :func:`cotr_strides`).
        stem_channels: stem width.
        stage_channels: width of each residual stage; the last two must equal ``d_model``.
        blocks_per_stage: residual blocks per stage.
        stem_kernel_size: stem kernel size.
        d_model, n_heads, n_points, n_layers, ffn_dim, dropout, axis_order: DeTrans settings.
        norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: normalisation and activation (default:
            instance norm with affine parameters, LeakyReLU(0.01)).

    Raises:
        ValueError: inconsistent lengths or widths.
    """

    def __init__(self, input_channels: int, *, conv_op: type, strides: Sequence[Sequence[int]],
                 stem_channels: int, stage_channels: Sequence[int], blocks_per_stage: Sequence[int],
                 stem_kernel_size: int, d_model: int, n_heads: int, n_points: int, n_layers: int, ffn_dim: int,
                 dropout: float, axis_order: str, norm_op: type | None = None, norm_op_kwargs: dict | None = None,
                 nonlin: type | None = None, nonlin_kwargs: dict | None = None) -> None:
        super().__init__()
        self.ndim = 3 if conv_op is nn.Conv3d else 2
        if len(stage_channels) < 2 or len(blocks_per_stage) != len(stage_channels):
            raise ValueError("need >= 2 stages and one block count per stage")
        if len(strides) != len(stage_channels) + 1:
            raise ValueError(f"need {len(stage_channels) + 1} strides (stem + stages), got {len(strides)}")
        if any(c != d_model for c in stage_channels[-2:]):
            raise ValueError(f"the two deepest stages feed DeTrans and must have d_model={d_model} channels")
        self.conv_op = conv_op
        self.norm_op = norm_op or (nn.InstanceNorm3d if self.ndim == 3 else nn.InstanceNorm2d)
        self.norm_op_kwargs = dict(norm_op_kwargs if norm_op_kwargs is not None else {"eps": 1e-5, "affine": True})
        self.nonlin = nonlin or nn.LeakyReLU
        self.nonlin_kwargs = dict(nonlin_kwargs if nonlin_kwargs is not None else {"negative_slope": 1e-2,
                                                                                      "inplace": True})
        self.strides = [tuple(int(v) for v in s) for s in strides]
        self.output_channels = [stem_channels, *stage_channels]
        self.stem = _ConvNormAct(self, input_channels, stem_channels, stem_kernel_size, self.strides[0])
        stages, cin = [], stem_channels
        for cout, nb, st in zip(stage_channels, blocks_per_stage, self.strides[1:]):
            blocks = [_EncoderBlock(self, cin, cout, st)] + [_EncoderBlock(self, cout, cout, (1,) * self.ndim)
                                                             for _ in range(nb - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.detrans = DeTrans(d_model, n_levels=2, n_heads=n_heads, n_points=n_points, n_layers=n_layers,
                               ffn_dim=ffn_dim, dropout=dropout, ndim=self.ndim, axis_order=axis_order)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.stem(x)]
        for stage in self.stages:
            skips.append(stage(skips[-1]))
        return skips[:-2] + self.detrans(skips[-2:])


class CoTrDecoder(nn.Module):
    """Transposed conv up, additive skip, residual block and segmentation head per level.

    Every head is always built; with ``deep_supervision`` the forward returns
    ``[full resolution, level 0, level 1, ...]`` logits (highest resolution first), otherwise the
    full-resolution logits only. Full resolution = level-0 features upsampled (linear interpolation)
    by the stem stride, then a 1x1 conv.

    Args:
        encoder: the :class:`CoTrEncoder` (widths, strides and ops are read from it).
        num_classes: output channels.
        deep_supervision: initial value of the ``deep_supervision`` flag.
    """

    def __init__(self, encoder: CoTrEncoder, num_classes: int, deep_supervision: bool = True) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        ch, st = encoder.output_channels, encoder.strides
        tconv = nn.ConvTranspose3d if encoder.ndim == 3 else nn.ConvTranspose2d
        n = len(ch) - 1
        self.transpconvs = nn.ModuleList([tconv(ch[lv + 1], ch[lv], st[lv + 1], st[lv + 1], bias=False)
                                          for lv in range(n)])
        self.blocks = nn.ModuleList([_DecoderBlock(encoder, ch[lv]) for lv in range(n)])
        self.seg_layers = nn.ModuleList([encoder.conv_op(ch[lv], num_classes, 1) for lv in range(n)])
        if all(s == 1 for s in st[0]):
            self.upsample = nn.Identity()
        else:
            self.upsample = nn.Upsample(scale_factor=tuple(float(s) for s in st[0]),
                                        mode="trilinear" if encoder.ndim == 3 else "bilinear")
        self.final = encoder.conv_op(ch[0], num_classes, 1)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x, ds = skips[-1], []
        for lv in range(len(self.blocks) - 1, -1, -1):
            x = self.blocks[lv](self.transpconvs[lv](x) + skips[lv])
            if self.deep_supervision:
                ds.append(self.seg_layers[lv](x))
        out = self.final(self.upsample(x))
        return [out, *reversed(ds)] if self.deep_supervision else out


class CoTr(nn.Module):
    """CoTr (Xie et al., MICCAI 2021): CNN encoder + deformable Transformer + CNN decoder.

    Xie, Zhang, Shen, Xia, "CoTr: Efficiently Bridging CNN and Transformer for 3D Medical Image
    Segmentation", MICCAI 2021. Architecture as in the official code (``ResTranUnet``): stem conv
    7^3 (64 ch, stride (1,2,2)), residual stages 3x192, 3x384, 2x384 (stride 2, one 3^3 conv per block,
    1x1 projection), DeTrans (d_model 384, 6 heads, 4 points, 6 post-norm layers, FFN 1536 GELU,
    dropout 0.1, sine position encoding + level embedding) over the two deepest levels, decoder
    ``transposed conv -> + skip -> residual block -> head`` down to the stem level, then upsample by
    the stem stride and a 1x1 conv. Constructor keywords are compatible with nnU-Net's
    ``get_network_from_plans``.

    Deviations from the official code:
        - deformable attention sampling points are in ``grid_sample`` order, so the reference point
          is the query's own voxel (the official code mixes (d, w, h) and (x, y, z));
          ``axis_order="official"`` reproduces the official order for comparison;
        - sampling locations are formed and sampled in float32 also under autocast;
        - no padding mask / valid ratios (patches are never padded inside the network);
        - 2D variant through ``conv_op=nn.Conv2d`` and strides derived from the plan
          (:func:`cotr_strides`) instead of hard-coded ones; any number of input channels;
        - no weight standardisation option; instance norm + LeakyReLU(0.01) by default.

    Args:
        input_channels: image channels.
        num_classes: output channels.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        strides: stem + stage strides (see :func:`cotr_strides`).
        deep_supervision: return the list of deep-supervision outputs.
        **kwargs: further :class:`CoTrEncoder` arguments (widths, depths, DeTrans settings: see
            :data:`ARCH_KEYS`; optional ops); ``nnUNetTrainerCoTr.network_kwargs()`` gives the paper's.
    """

    def __init__(self, input_channels: int, num_classes: int, *, conv_op: type, strides: Sequence[Sequence[int]],
                 deep_supervision: bool = True, **kwargs) -> None:
        super().__init__()
        self.encoder = CoTrEncoder(input_channels, conv_op=conv_op, strides=strides, **kwargs)
        self.decoder = CoTrDecoder(self.encoder, num_classes, deep_supervision)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

    def deep_supervision_scales(self) -> list[list[float]]:
        """Scale of each deep-supervision output relative to the input, highest resolution first."""
        return deep_supervision_scales(self.encoder.strides)


def estimate_train_memory_elements(patch_size: Sequence[int], strides: Sequence[Sequence[int]], *,
                                   input_channels: int, num_classes: int, stem_channels: int,
                                   stage_channels: Sequence[int], blocks_per_stage: Sequence[int], d_model: int,
                                   n_heads: int, n_points: int, n_layers: int, ffn_dim: int, **_: object) -> int:
    """Training activation memory of one sample, in nnU-Net's units (conv feature-map elements).

    nnU-Net's planner counts the output elements of every convolution (each stands for the conv,
    norm and in-place activation outputs it keeps for backward, in mixed precision). Here:
    convolutions of encoder and decoder (incl. projections, transposed convs, heads and the
    upsampled full-resolution map) count once each; the Transformer counts, per layer and token,
    the tensors it keeps (q/v/out projections, residuals, norms: ~8 x d_model; FFN: 3 x ffn_dim;
    offsets, logits, weights and grids: n_heads x levels x points x (3 ndim + 2)) plus the sampled
    values (d_model x levels x points, stored in float32, so twice), and that sum is halved to
    match the conv unit, which already covers two stored tensors.

    Args:
        patch_size: patch in voxels.
        strides: stem + stage strides.
        input_channels: image channels (unused by the count, kept for a uniform signature).
        num_classes: output channels.
        stem_channels, stage_channels, blocks_per_stage, d_model, n_heads, n_points, n_layers, ffn_dim:
            architecture (see :class:`CoTrEncoder`).

    Returns:
        Estimated element count (compare with nnU-Net's ``UNet_reference_val_*``).
    """
    ndim = len(patch_size)
    sizes, cur = [], list(patch_size)
    for s in strides:
        cur = [c // t for c, t in zip(cur, s)]
        sizes.append(math.prod(cur))
    ch = [stem_channels, *stage_channels]
    conv = ch[0] * sizes[0]
    for lv, nb in enumerate(blocks_per_stage, start=1):
        conv += ch[lv] * sizes[lv] * (nb + 1)  # blocks + projection
    for lv in range(len(ch) - 1):  # decoder: transposed conv, 2 convs, head
        conv += ch[lv] * sizes[lv] * 3 + num_classes * sizes[lv]
    full = math.prod(patch_size)
    conv += ch[0] * full + num_classes * full  # upsampled level-0 map and final conv
    tokens = sizes[-1] + sizes[-2]
    n_levels = 2
    per_token = (8 * d_model + 3 * ffn_dim + n_heads * n_levels * n_points * (3 * ndim + 2)
                 + 2 * d_model * n_levels * n_points)
    return int(conv + n_layers * tokens * per_token // 2)


COTR_CLASS_NAME = f"{CoTr.__module__}.{CoTr.__name__}"


def cotr_plan_architecture(unet_strides: Sequence[Sequence[int]], ndim: int, arch: dict) -> dict:
    """The ``architecture`` entry of a plan that describes a CoTr network.

    nnU-Net's ``get_network_from_plans`` builds :class:`CoTr` from it (``network_class_name`` is
    :data:`COTR_CLASS_NAME`, the keywords are CoTr's), so trainer and predictor build the network
    the plan describes.

    Args:
        unet_strides: the pooling strides of the U-Net nnU-Net planned for the same patch; CoTr's
            strides are derived from them (:func:`cotr_strides`).
        ndim: 2 or 3.
        arch: CoTr's widths and DeTrans settings (the keys of :data:`ARCH_KEYS`; the paper's:
            ``nnUNetTrainerCoTr.network_kwargs()``).

    Returns:
        ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}``.
    """
    arch = {k: arch[k] for k in ARCH_KEYS}
    strides = cotr_strides(unet_strides, ndim, 1 + len(arch["stage_channels"]))
    dim = f"{ndim}d"
    return {
        "network_class_name": COTR_CLASS_NAME,
        "arch_kwargs": {
            "conv_op": f"torch.nn.modules.conv.Conv{dim}",
            "strides": [list(s) for s in strides],
            **{k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()},
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"negative_slope": 1e-2, "inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "nonlin"],
    }
