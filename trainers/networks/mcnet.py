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

Dropout, as the official networks (it is what makes the decoders disagree during training; off
in eval mode): the 3D network (official V-Net) drops channels of the bottleneck features, once
for all decoders (``Dropout3d``, ``bottleneck_dropout``), and of each decoder's last features
before its output head (``decoder_dropout``); the 2D network (official U-Net) uses element-wise
dropout in the encoder with one probability per stage (``encoder_dropout``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .common import EncoderDecoderNet, UNetStyleDecoder, dropout_module, set_encoder_dropout

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
        decoder_dropout: channel dropout on each decoder's last features before its output head.

    Attributes:
        deep_supervision: setting it sets it on every decoder (nnU-Net's ``set_deep_supervision_enabled``).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, n_conv_per_stage: int | Sequence[int],
                 deep_supervision: bool, nonlin_first: bool = False,
                 upsamplings: Sequence[str] = MCNET_UPSAMPLINGS, decoder_dropout: float = 0.0) -> None:
        super().__init__()
        self.decoders = nn.ModuleList([
            UNetStyleDecoder(encoder, num_classes, n_conv_per_stage=n_conv_per_stage,
                             deep_supervision=deep_supervision, nonlin_first=nonlin_first, upsampling=mode,
                             output_dropout=dropout_module(encoder.conv_op, decoder_dropout, channelwise=True))
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
        bottleneck_dropout: channel dropout on the bottleneck features, shared by the decoders.
        decoder_dropout: see :class:`MutualDecoders`.
        encoder_dropout: element-wise dropout probability of each encoder stage, or None (see
            :func:`~nnzoo.trainers.networks.common.set_encoder_dropout`; state dicts are unchanged).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, n_conv_per_stage_decoder: int | Sequence[int],
                 deep_supervision: bool = False, nonlin_first: bool = False,
                 upsamplings: Sequence[str] = MCNET_UPSAMPLINGS, bottleneck_dropout: float = 0.0,
                 decoder_dropout: float = 0.0, encoder_dropout: Sequence[float] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        if encoder_dropout is not None:
            set_encoder_dropout(encoder, encoder_dropout)
        self.bottleneck_dropout = dropout_module(encoder.conv_op, bottleneck_dropout, channelwise=True)
        self.decoder = MutualDecoders(encoder, num_classes, n_conv_per_stage=n_conv_per_stage_decoder,
                                      deep_supervision=deep_supervision, nonlin_first=nonlin_first,
                                      upsamplings=upsamplings, decoder_dropout=decoder_dropout)

    def forward(self, x: torch.Tensor, all_decoders: bool = False):
        """See :meth:`MutualDecoders.forward`."""
        skips = self.encoder(x)
        return self.decoder([*skips[:-1], self.bottleneck_dropout(skips[-1])], all_decoders)
