"""C²SDG's networks: nnU-Net's U-Net with a learnable channel prompt after the first convolution, and the projector.

Hu, Liao, Xia, "Devil is in Channels: Contrastive Single Domain Generalization for Medical Image
Segmentation", MICCAI 2023 (official code: github ShishuaiHu/CCSDG, ``ccsdg/models/unet_ccsdg.py``).

The official network puts a prompt ``P`` of shape ``(2, C)`` between the ResNet stem convolution
(``conv1``) and its BatchNorm; ``softmax(P / tau)`` over the first axis splits the convolution's
``C`` channels into content features ``f * w[0]`` and style features ``f * w[1]``, and only the
content features continue into the network (in training and at test time). Here the prompt sits at
the same place of the plan's encoder: on the output of its first convolution (of the residual
encoder's stem, or of the first block of a plain encoder), before that convolution's norm, applied
by a forward hook so that every state-dict key of the plan's network is kept (plus ``channel_prompt``).

:class:`Projector` is the official training-only head that embeds content or style features for the
channel-level contrastive losses; it is not part of the segmentation network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from .common import EncoderDecoderNet

__all__ = ["prompt_weights", "split_channels", "first_convolution", "ChannelPromptUNet", "Projector",
           "projector_grid"]


def prompt_weights(prompt: torch.Tensor, tau: float) -> torch.Tensor:
    """Content/style weights of every channel: ``softmax(prompt / tau)`` over the first axis.

    Args:
        prompt: ``(2, C)`` logits (row 0 content, row 1 style).
        tau: softmax temperature (the official 0.1 makes most channels nearly one-hot).

    Returns:
        ``(2, C)`` weights summing to 1 per channel.
    """
    return torch.softmax(prompt / tau, dim=0)


def split_channels(features: torch.Tensor, prompt: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Content and style features ``(f * w[0], f * w[1])`` of ``features`` (``(b, C, *spatial)``).

    The two add up to ``features``. Weights are cast to the features' dtype (autocast).
    """
    w = prompt_weights(prompt, tau).to(features.dtype)
    shape = (1, features.shape[1]) + (1,) * (features.ndim - 2)
    return features * w[0].view(shape), features * w[1].view(shape)


def first_convolution(encoder: nn.Module) -> nn.Module:
    """The first convolution of a dynamic_network_architectures encoder (the stem's if it has one).

    Raises:
        ValueError: the encoder holds no convolution of its ``conv_op``.
    """
    stem = getattr(encoder, "stem", None)
    source = stem if stem is not None else encoder.stages[0]
    for m in source.modules():
        if isinstance(m, encoder.conv_op):
            return m
    raise ValueError("the encoder's first stage holds no convolution")


class ChannelPromptUNet(EncoderDecoderNet):
    """nnU-Net's U-Net (plan encoder + nnU-Net's ``UNetDecoder``) with C²SDG's channel prompt.

    The forward pass is the plan network's, except that the first convolution's output is
    multiplied by the content weights ``softmax(channel_prompt / tau)[0]`` (a forward hook on that
    convolution), before the convolution's norm, as the official prompt precedes ``bn1``. The style
    channels therefore never reach the segmentation path, neither in training nor at inference (the
    official test path is the same forward). Deep supervision and eval behaviour are nnU-Net's.

    Args:
        encoder: encoder built from the plan (``return_skips=True``).
        num_classes: segmentation output channels.
        n_conv_per_stage_decoder: conv blocks per decoder stage.
        deep_supervision: return one output per stage (highest resolution first).
        nonlin_first: conv -> nonlin -> norm in the decoder blocks.
        tau: temperature of the prompt's softmax (official 0.1).

    Attributes:
        channel_prompt: ``(2, C)`` parameter, ``C`` the first convolution's output channels,
            initialised ``randn`` as in the official code.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, n_conv_per_stage_decoder: int | Sequence[int],
                 deep_supervision: bool = False, nonlin_first: bool = False, tau: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                   nonlin_first=nonlin_first)
        self.tau = float(tau)
        conv = first_convolution(encoder)
        self.channel_prompt = nn.Parameter(torch.randn(2, conv.out_channels))
        object.__setattr__(self, "_stem_conv", conv)  # not a submodule of its own (it is the encoder's)
        conv.register_forward_hook(self._keep_content)

    def _keep_content(self, _conv: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        return split_channels(output, self.channel_prompt, self.tau)[0]

    def stem_features(self, x: torch.Tensor) -> torch.Tensor:
        """The first convolution's output before the prompt (its hook is bypassed)."""
        return self._stem_conv.forward(x)

    def split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Content and style features of :meth:`stem_features` output (see :func:`split_channels`)."""
        return split_channels(features, self.channel_prompt, self.tau)

    def forward(self, x: torch.Tensor):
        """Segmentation logits from the content channels (a list under deep supervision)."""
        return self.decoder(self.encoder(x))


def projector_grid(patch_size: Sequence[int], grid: int) -> tuple[int, ...]:
    """Spatial size of the projector's flattened map: ``min(grid, size // 2)`` per axis (at least 1).

    The official projector flattens its max-pooled map as it is (a 512x512 image gives 8x128x128
    = 131072 inputs to its linear layer); nnU-Net's patches (stride-1 stem, 3D) would make that
    layer far larger, so the map is max-pooled further to at most ``grid`` per axis.
    """
    return tuple(max(1, min(int(grid), int(s) // 2)) for s in patch_size)


class Projector(nn.Module):
    """C²SDG's projector: conv 3x3 -> BatchNorm -> ReLU -> max-pool 2 -> [adaptive max-pool] -> linear -> L2 norm.

    As the official ``Projector`` (64 -> 8 channels, BatchNorm, 1024 outputs, unit length), for
    2D or 3D, with an adaptive max-pool to ``grid`` so the linear layer does not depend on the
    patch size beyond it (identity when the pooled map already has that size).

    Args:
        in_channels: channels of the stem features.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        grid: spatial size fed to the linear layer (see :func:`projector_grid`).
        hidden_channels: channels after the convolution (official 8).
        out_features: embedding size (official 1024).
    """

    def __init__(self, in_channels: int, conv_op: type, *, grid: Sequence[int], hidden_channels: int = 8,
                 out_features: int = 1024) -> None:
        super().__init__()
        three_d = conv_op is nn.Conv3d
        self.conv = conv_op(in_channels, hidden_channels, kernel_size=3, stride=1, padding=1)
        self.bn = (nn.BatchNorm3d if three_d else nn.BatchNorm2d)(hidden_channels)
        self.pool = (nn.MaxPool3d if three_d else nn.MaxPool2d)(kernel_size=2, stride=2)
        self.grid = tuple(int(g) for g in grid)
        self.fit = (nn.AdaptiveMaxPool3d if three_d else nn.AdaptiveMaxPool2d)(self.grid)
        n_in = hidden_channels
        for g in self.grid:
            n_in *= g
        self.fc = nn.Linear(n_in, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, C, *spatial)`` features -> ``(b, out_features)`` unit-length embeddings."""
        x = self.pool(F.relu(self.bn(self.conv(x))))
        if tuple(x.shape[2:]) != self.grid:
            x = self.fit(x)
        return F.normalize(self.fc(x.flatten(1)), dim=1)
