"""BA-Net: a U-Net encoder with a boundary decoder whose predictions gate a segmentation decoder.

Hu, Liao, Xia, "Boundary-Aware Network for Kidney Parsing" (KiPA 2022) and "Boundary-Aware Network
for Abdominal Multi-Organ Segmentation" (AMOS 2022). The encoder is the plan's own
(``PlainConvEncoder`` for ``PlainConvUNet`` plans, ``ResidualEncoder`` for ``ResidualEncoderUNet``
plans, built by dynamic_network_architectures); both decoders are shaped like nnU-Net's
``UNetDecoder`` (transposed-conv upsampling, skip concatenation, conv-norm-nonlin blocks).

At decoder stage ``s`` (coarse to fine)::

    y   = boundary_stages[s](cat(boundary_transpconvs[s](y), skip))
    b   = boundary_layers[s](y)                              # 2 logits: background / boundary
    x   = seg_transpconvs[s](x)
    x   = (1 + softmax(b)[:, 1:2]) * x                       # residual boundary attention (not detached)
    x   = seg_stages[s](cat(x, skip))
    seg = seg_layers[s](x)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from torch import nn

from .common import EncoderDecoderNet, convs_per_decoder_stage, decoder_stage_blocks, decoder_stage_sizes

__all__ = ["BoundaryAttention", "BoundaryAwareDecoder", "BoundaryAwareUNet"]

NUM_BOUNDARY_CHANNELS = 2


class BoundaryAttention(nn.Module):
    """Residual boundary attention ``(1 + softmax(b)[:, 1:2]) * x`` (no parameters).

    A module of its own so that the gating can be observed with forward hooks.
    """

    def forward(self, x: torch.Tensor, boundary_logits: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: upsampled segmentation-decoder features ``(b, c, *spatial)``.
            boundary_logits: boundary logits of the same stage ``(b, 2, *spatial)``.

        Returns:
            ``x`` scaled voxel-wise by ``1 + P(boundary)``.
        """
        p = torch.softmax(boundary_logits, 1)[:, 1:2]
        return x * (1 + p)


class BoundaryAwareDecoder(nn.Module):
    """Boundary decoder and boundary-gated segmentation decoder; reads its settings from the encoder.

    Every head is always built (state dicts do not depend on ``deep_supervision``). The encoder is
    referenced, not registered as a submodule (its weights live under ``encoder.`` only).

    Args:
        encoder: a dynamic_network_architectures encoder with ``return_skips=True``.
        num_classes: segmentation output channels (classes, or regions for sigmoid plans).
        n_conv_per_stage: conv blocks per decoder stage (int or one entry per stage, coarse to fine).
        deep_supervision: return one output per stage (highest resolution first) instead of one tensor.
        nonlin_first: conv -> nonlin -> norm instead of conv -> norm -> nonlin.

    Attributes:
        deep_supervision: nnU-Net's ``set_deep_supervision_enabled`` toggles this flag.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, n_conv_per_stage: int | Sequence[int],
                 deep_supervision: bool, nonlin_first: bool = False) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.num_classes = num_classes
        object.__setattr__(self, "_encoder", encoder)  # not a submodule
        n_convs = convs_per_decoder_stage(encoder, n_conv_per_stage)
        transp = get_matching_convtransp(conv_op=encoder.conv_op)
        mods: dict[str, list[nn.Module]] = {k: [] for k in (
            "seg_transpconvs", "seg_stages", "seg_layers", "boundary_transpconvs", "boundary_stages",
            "boundary_layers")}
        for s in range(1, len(n_convs) + 1):
            below, skip_ch = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            stride = encoder.strides[-s]
            for branch, n_out in (("seg", num_classes), ("boundary", NUM_BOUNDARY_CHANNELS)):
                mods[f"{branch}_transpconvs"].append(transp(below, skip_ch, stride, stride, bias=encoder.conv_bias))
                mods[f"{branch}_stages"].append(decoder_stage_blocks(encoder, n_convs[s - 1], s, nonlin_first))
                mods[f"{branch}_layers"].append(encoder.conv_op(skip_ch, n_out, 1, 1, 0, bias=True))
        for k, v in mods.items():
            setattr(self, k, nn.ModuleList(v))
        self.attention = BoundaryAttention()

    def forward(self, skips: Sequence[torch.Tensor], return_boundary: bool = False):
        """
        Args:
            skips: encoder outputs, highest resolution first, bottleneck last.
            return_boundary: also return the boundary logits.

        Returns:
            Segmentation logits: a list (highest resolution first) with deep supervision, else one
            tensor at full resolution. With ``return_boundary`` a tuple ``(seg, boundary)`` where
            ``boundary`` has the same structure with 2 channels.
        """
        x = y = skips[-1]
        n = len(self.seg_stages)
        seg: list[torch.Tensor] = []
        bdr: list[torch.Tensor] = []
        for s in range(n):
            skip = skips[-(s + 2)]
            y = self.boundary_stages[s](torch.cat((self.boundary_transpconvs[s](y), skip), 1))
            b = self.boundary_layers[s](y)
            x = self.attention(self.seg_transpconvs[s](x), b)
            x = self.seg_stages[s](torch.cat((x, skip), 1))
            last = s == n - 1
            if self.deep_supervision or last:
                seg.append(self.seg_layers[s](x))
                if return_boundary:
                    bdr.append(b)
        seg_out = seg[::-1] if self.deep_supervision else seg[0]
        if not return_boundary:
            return seg_out
        return seg_out, (bdr[::-1] if self.deep_supervision else bdr[0])

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Number of feature-map elements the decoders store for one sample (nnU-Net's VRAM proxy).

        Counts, per stage and per decoder, the conv blocks, the transposed conv and the heads
        (boundary heads always, segmentation heads as nnU-Net's decoder does), plus the attention
        map and the gated features of the segmentation decoder.

        Args:
            input_size: spatial size of the network input (no batch/channel axes).
        """
        enc = self._encoder
        sizes = decoder_stage_sizes(enc, input_size)
        total = np.int64(0)
        n = len(self.seg_stages)
        for s in range(n):
            size = sizes[s]
            vox = np.prod(size, dtype=np.int64)
            skip_ch = enc.output_channels[-(s + 2)]
            for stages in (self.seg_stages, self.boundary_stages):
                total += stages[s].compute_conv_feature_map_size(size)
            total += 2 * skip_ch * vox  # two transposed convs
            total += skip_ch * vox + 3 * vox  # gated features, softmax (2 ch) and 1 + p (1 ch)
            total += NUM_BOUNDARY_CHANNELS * vox  # boundary head, needed at every stage
            if self.deep_supervision or s == n - 1:
                total += self.num_classes * vox
        return total


class BoundaryAwareUNet(EncoderDecoderNet):
    """BA-Net: plan encoder + :class:`BoundaryAwareDecoder`.

    Args:
        encoder: encoder built from the plan (``return_skips=True``).
        num_classes: segmentation output channels.
        n_conv_per_stage_decoder: conv blocks per decoder stage.
        deep_supervision: see :class:`BoundaryAwareDecoder`.
        nonlin_first: see :class:`BoundaryAwareDecoder`.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, n_conv_per_stage_decoder: int | Sequence[int],
                 deep_supervision: bool = False, nonlin_first: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = BoundaryAwareDecoder(encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                            nonlin_first)

    def forward(self, x: torch.Tensor, return_boundary: bool = False):
        """See :meth:`BoundaryAwareDecoder.forward`."""
        return self.decoder(self.encoder(x), return_boundary)
