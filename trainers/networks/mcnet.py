"""MC-Net+ network: one encoder, three decoders that differ only in their upsampling.

Wu, Ge, Zhang, Xia, Wang, Cai, Gu, Zhang, "Mutual Consistency Learning for Semi-supervised
Medical Image Segmentation", Medical Image Analysis 2022 (official code: github ycwu1997/MC-Net,
``MCNet3d_v2`` / ``MCNet2d_v2``). The official backbones are a V-Net (3D) and a small U-Net (2D);
here the encoder is the plan's own (``PlainConvEncoder`` or ``ResidualEncoder``, see
:mod:`nnzoo.trainers.networks.common`) and each decoder is shaped like nnU-Net's ``UNetDecoder``
(:class:`~nnzoo.trainers.networks.common.UNetStyleDecoder`), with upsampling

- decoder 0: transposed convolution (nnU-Net's own decoder; used for inference),
- decoder 1: 1x1 convolution + (bi/tri)linear interpolation,
- decoder 2: 1x1 convolution + nearest interpolation.

``forward(x)`` returns decoder 0's output only (a deep-supervision list or one tensor, exactly
like a plain nnU-Net network, so nnU-Net's validation and predictor work unchanged);
``forward(x, all_decoders=True)`` returns the three decoders' outputs. All three decoders are
always built: state dicts do not depend on deep supervision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .common import EncoderDecoderNet, UNetStyleDecoder

__all__ = ["MCNET_UPSAMPLINGS", "MutualDecoders", "MCNet"]

#: upsampling of decoders 0, 1, 2 (decoder 0 is the inference decoder)
MCNET_UPSAMPLINGS = ("transpconv", "linear", "nearest")


class MutualDecoders(nn.Module):
    """The decoders of MC-Net+ on one shared encoder.

    Args:
        encoder: encoder with ``return_skips=True`` (referenced by the decoders, not registered).
        num_classes: output channels of every decoder.
        n_conv_per_stage: conv blocks per decoder stage.
        deep_supervision: initial deep-supervision flag (of every decoder).
        nonlin_first: see :class:`~nnzoo.trainers.networks.common.UNetStyleDecoder`.
        upsamplings: upsampling mode of each decoder (the first is the inference decoder).

    Attributes:
        deep_supervision: setting it sets it on every decoder (nnU-Net's ``set_deep_supervision_enabled``).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, n_conv_per_stage: int | Sequence[int],
                 deep_supervision: bool, nonlin_first: bool = False,
                 upsamplings: Sequence[str] = MCNET_UPSAMPLINGS) -> None:
        super().__init__()
        self.decoders = nn.ModuleList([
            UNetStyleDecoder(encoder, num_classes, n_conv_per_stage, deep_supervision, nonlin_first, mode)
            for mode in upsamplings])

    @property
    def deep_supervision(self) -> bool:
        return self.decoders[0].deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        for d in self.decoders:
            d.deep_supervision = enabled

    def forward(self, skips: Sequence[torch.Tensor], all_decoders: bool = False):
        """
        Args:
            skips: encoder outputs, highest resolution first.
            all_decoders: run every decoder instead of the first only.

        Returns:
            The first decoder's output, or a tuple with every decoder's output (each a list with
            deep supervision, else a tensor).
        """
        if not all_decoders:
            return self.decoders[0](skips)
        return tuple(d(skips) for d in self.decoders)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements of all decoders for one sample (training runs all of them)."""
        return sum((d.compute_conv_feature_map_size(input_size) for d in self.decoders), np.int64(0))


class MCNet(EncoderDecoderNet):
    """MC-Net+: plan encoder + :class:`MutualDecoders`.

    Args:
        encoder: encoder built from the plan (``return_skips=True``).
        num_classes: output channels.
        n_conv_per_stage_decoder: conv blocks per decoder stage.
        deep_supervision: see :class:`MutualDecoders`.
        nonlin_first: see :class:`MutualDecoders`.
        upsamplings: see :class:`MutualDecoders`.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, n_conv_per_stage_decoder: int | Sequence[int],
                 deep_supervision: bool = False, nonlin_first: bool = False,
                 upsamplings: Sequence[str] = MCNET_UPSAMPLINGS) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = MutualDecoders(encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                      nonlin_first, upsamplings)

    def forward(self, x: torch.Tensor, all_decoders: bool = False):
        """See :meth:`MutualDecoders.forward`."""
        return self.decoder(self.encoder(x), all_decoders)
