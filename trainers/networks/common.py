"""Building blocks shared by nnzoo networks: the plan's encoder and an nnU-Net-shaped decoder.

- :func:`resolve_arch_kwargs` / :func:`encoder_from_plan`: the encoder of a plan's architecture
  (``PlainConvEncoder`` for ``PlainConvUNet`` plans, ``ResidualEncoder`` for
  ``ResidualEncoderUNet`` plans, from dynamic_network_architectures, ``return_skips=True``).
- :func:`initialize_network`: nnU-Net's He initialisation (plus zeroed last norm of residual blocks).
- :func:`network_from_arch`: any :class:`EncoderDecoderNet` (the plan's encoder plus the method's
  decoders) built from a plan's ``architecture`` entry and initialised as nnU-Net does.
- :func:`convs_per_decoder_stage`, :func:`decoder_stage_blocks`, :func:`decoder_stage_sizes`: the
  pieces every nnU-Net-shaped decoder stage is made of, and its sizes for memory estimates.
- :class:`Upsampling` and :class:`UNetStyleDecoder`: a decoder shaped like nnU-Net's
  ``UNetDecoder`` (upsample, concatenate the skip, conv-norm-nonlin blocks, 1x1 heads, deep
  supervision) whose upsampling is selectable: ``"transpconv"`` (nnU-Net's transposed convolution),
  ``"linear"`` ((bi/tri)linear interpolation) or ``"nearest"`` (nearest-neighbour interpolation);
  the interpolating variants reduce channels with a 1x1 convolution first.

Any nnzoo network that needs "the plan's encoder plus a U-Net decoder" can use these; the decoder
reads every setting (conv op, norm, nonlin, kernel sizes, strides, channels) from the encoder.
"""

from __future__ import annotations

import pydoc
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import (
    ConvDropoutNormReLU,
    StackedConvBlocks,
)
from dynamic_network_architectures.initialization.weight_init import (
    InitWeights_He,
    init_last_bn_before_add_to_0,
)
from torch import nn

__all__ = ["UPSAMPLING_MODES", "resolve_arch_kwargs", "encoder_from_plan", "initialize_network", "network_from_arch",
           "convs_per_decoder_stage", "decoder_stage_blocks", "decoder_stage_sizes", "EncoderDecoderNet",
           "Upsampling", "UNetStyleDecoder", "dropout_module", "set_encoder_dropout"]

#: upsampling variants of :class:`Upsampling`
UPSAMPLING_MODES = ("transpconv", "linear", "nearest")


def resolve_arch_kwargs(arch_kwargs: dict, kw_requires_import: Sequence[str]) -> dict:
    """Copy of a plan's ``arch_kwargs`` with the dotted import paths replaced by the objects.

    Raises:
        ImportError: a path cannot be imported.
    """
    kw = dict(arch_kwargs)
    for k in kw_requires_import:
        if isinstance(kw.get(k), str):
            located = pydoc.locate(kw[k])
            if located is None:
                raise ImportError(f"cannot import {kw[k]!r} (plan key {k!r})")
            kw[k] = located
    return kw


def encoder_from_plan(arch_class_name: str, arch_kwargs: dict, input_channels: int,
                      kw_requires_import: Sequence[str] = ()) -> tuple[nn.Module, bool]:
    """The encoder of a plan's architecture, returning skips.

    Args:
        arch_class_name: the plan's ``network_class_name`` (``...PlainConvUNet`` or ``...ResidualEncoderUNet``).
        arch_kwargs: the plan's ``arch_kwargs`` (import paths are resolved if listed in ``kw_requires_import``).
        input_channels: image channels.
        kw_requires_import: keys of ``arch_kwargs`` given as dotted import paths.

    Returns:
        ``(encoder, residual)``: the encoder and whether it is a residual encoder.

    Raises:
        ValueError: any other network class.
    """
    kw = resolve_arch_kwargs(arch_kwargs, kw_requires_import)
    common = (input_channels, kw["n_stages"], kw["features_per_stage"], kw["conv_op"], kw["kernel_sizes"],
              kw["strides"])
    tail = dict(conv_bias=kw.get("conv_bias", False), norm_op=kw.get("norm_op"),
                norm_op_kwargs=kw.get("norm_op_kwargs"), dropout_op=kw.get("dropout_op"),
                dropout_op_kwargs=kw.get("dropout_op_kwargs"), nonlin=kw.get("nonlin"),
                nonlin_kwargs=kw.get("nonlin_kwargs"), return_skips=True)
    short = arch_class_name.rsplit(".", 1)[-1]
    if short == "PlainConvUNet":
        return PlainConvEncoder(*common, kw["n_conv_per_stage"], nonlin_first=kw.get("nonlin_first", False),
                                **tail), False
    if short == "ResidualEncoderUNet":
        return ResidualEncoder(*common, kw["n_blocks_per_stage"], block=kw.get("block") or BasicBlockD,
                               bottleneck_channels=kw.get("bottleneck_channels"),
                               stem_channels=kw.get("stem_channels"), **tail), True
    raise ValueError(f"supported plan networks: PlainConvUNet and ResidualEncoderUNet, got {arch_class_name!r}")


def initialize_network(network: nn.Module, residual: bool) -> nn.Module:
    """nnU-Net's initialisation: He (neg. slope 1e-2); residual nets also zero the last norm of each block."""
    network.apply(InitWeights_He(1e-2))
    if residual:
        network.apply(init_last_bn_before_add_to_0)
    return network


def network_from_arch(network_class: type[nn.Module], arch_class_name: str, *, arch_kwargs: dict,
                      kw_requires_import: Sequence[str], input_channels: int, num_classes: int,
                      deep_supervision: bool = True, allow_init: bool = True, encoder_kwargs: dict | None = None,
                      **network_kwargs) -> nn.Module:
    """A method network around the encoder of a plan's ``architecture`` entry.

    Args:
        network_class: called as ``network_class(encoder, num_classes, n_conv_per_stage_decoder=...,
            deep_supervision=..., nonlin_first=..., **network_kwargs)``.
        arch_class_name: the plan's ``network_class_name`` (PlainConvUNet or ResidualEncoderUNet).
        arch_kwargs: the plan's ``arch_kwargs``.
        kw_requires_import: keys of ``arch_kwargs`` given as dotted import paths.
        input_channels: image channels.
        num_classes: segmentation output channels (classes or regions).
        deep_supervision: initial deep-supervision flag.
        allow_init: apply :func:`initialize_network` (off for ``meta``-device memory estimates).
        encoder_kwargs: entries replacing the plan's ``arch_kwargs`` for the encoder (e.g. ``dropout_op``).
        network_kwargs: further arguments of ``network_class``.

    Returns:
        The network.

    Raises:
        ValueError: unsupported plan network class.
    """
    kw = {**arch_kwargs, **(encoder_kwargs or {})}
    encoder, residual = encoder_from_plan(arch_class_name, kw, input_channels,
                                          [k for k in kw_requires_import if k not in (encoder_kwargs or {})])
    nonlin_first = bool(arch_kwargs.get("nonlin_first", False)) and not residual  # residual blocks: norm first
    net = network_class(encoder, num_classes, n_conv_per_stage_decoder=arch_kwargs["n_conv_per_stage_decoder"],
                        deep_supervision=deep_supervision, nonlin_first=nonlin_first, **network_kwargs)
    return initialize_network(net, residual) if allow_init else net


def convs_per_decoder_stage(encoder: nn.Module, n_conv_per_stage: int | Sequence[int]) -> list[int]:
    """Conv blocks of each decoder stage (coarse to fine) for an encoder with ``n`` stages.

    Raises:
        ValueError: a sequence whose length is not ``n - 1``.
    """
    n_dec = len(encoder.output_channels) - 1
    if isinstance(n_conv_per_stage, int):
        return [n_conv_per_stage] * n_dec
    if len(n_conv_per_stage) != n_dec:
        raise ValueError(f"n_conv_per_stage needs {n_dec} entries, got {list(n_conv_per_stage)}")
    return list(n_conv_per_stage)


def decoder_stage_blocks(encoder: nn.Module, n_convs: int, s: int, nonlin_first: bool) -> StackedConvBlocks:
    """Conv blocks of decoder stage ``s`` (1 = coarsest): ``2 * skip`` channels in, ``skip`` out.

    Conv op, bias, norm, dropout, nonlinearity and kernel size are the encoder's (those of the
    skip's stage), as in nnU-Net's ``UNetDecoder``.
    """
    skip_ch = encoder.output_channels[-(s + 1)]
    return StackedConvBlocks(n_convs, encoder.conv_op, 2 * skip_ch, skip_ch, encoder.kernel_sizes[-(s + 1)], 1,
                             encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op,
                             encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs, nonlin_first)


def decoder_stage_sizes(encoder: nn.Module, input_size: Sequence[int]) -> list[list[int]]:
    """Spatial size of every decoder stage's output, coarse to fine, for a network input of ``input_size``."""
    sizes = []
    for stride in encoder.strides[:-1]:
        input_size = [i // j for i, j in zip(input_size, stride)]
        sizes.append(input_size)
    return sizes[::-1]


class EncoderDecoderNet(nn.Module):
    """Base of nnzoo's plan-encoder networks: ``encoder`` plus one or more decoder submodules.

    :meth:`compute_conv_feature_map_size` (nnU-Net's VRAM proxy) sums the encoder's and every
    child module's estimate, so subclasses only register their decoders.
    """

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements of the encoder and all decoders for one sample of spatial size ``input_size``."""
        return sum((m.compute_conv_feature_map_size(input_size) for m in self.children()
                    if hasattr(m, "compute_conv_feature_map_size")), np.int64(0))


class Upsampling(nn.Module):
    """Upsampling of one decoder stage from ``in_channels`` to ``out_channels``.

    Args:
        mode: ``"transpconv"``: transposed convolution, kernel = stride (nnU-Net's ``UNetDecoder``);
            ``"linear"``: 1x1 convolution, then bilinear (2D) / trilinear (3D) interpolation
            (``align_corners=True``); ``"nearest"``: 1x1 convolution, then nearest interpolation.
            The 1x1 convolution before interpolation equals one after it (both are linear and
            act on different axes) at a fraction of the cost.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        in_channels: channels of the coarser input.
        out_channels: channels after upsampling.
        stride: the encoder stride being undone (int or one entry per axis).
        bias: bias of the (transposed) convolution.

    Raises:
        ValueError: unknown mode.
    """

    def __init__(self, mode: str, conv_op: type, *, in_channels: int, out_channels: int,
                 stride: int | Sequence[int], bias: bool = False) -> None:
        super().__init__()
        if mode not in UPSAMPLING_MODES:
            raise ValueError(f"upsampling mode must be one of {UPSAMPLING_MODES}, got {mode!r}")
        self.mode = mode
        if mode == "transpconv":
            self.conv = get_matching_convtransp(conv_op=conv_op)(in_channels, out_channels, stride, stride, bias=bias)
            self.interpolation = None
        else:
            self.conv = conv_op(in_channels, out_channels, 1, 1, 0, bias=bias)
            linear = "bilinear" if conv_op is nn.Conv2d else "trilinear"
            self.interpolation = linear if mode == "linear" else "nearest"

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """
        Args:
            x: ``(b, in_channels, *spatial)``.
            size: spatial size of the output (the skip connection's).

        Returns:
            ``(b, out_channels, *size)``.
        """
        x = self.conv(x)
        if self.interpolation is None:
            return x
        size = tuple(int(s) for s in size)
        if self.interpolation == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.interpolation, align_corners=True)


def dropout_module(conv_op: type, p: float, channelwise: bool = False) -> nn.Module:
    """``nn.Dropout`` (or ``Dropout2d``/``Dropout3d`` for ``channelwise``) with probability ``p``;
    ``nn.Identity`` for ``p == 0``. Dropout modules hold no parameters: state dicts do not depend on them."""
    if p <= 0:
        return nn.Identity()
    if not channelwise:
        return nn.Dropout(p)
    return nn.Dropout3d(p) if conv_op is nn.Conv3d else nn.Dropout2d(p)


class UNetStyleDecoder(nn.Module):
    """nnU-Net-shaped decoder with selectable upsampling; reads its settings from the encoder.

    Stage ``s`` (coarse to fine): ``x = stages[s](cat(upsamplings[s](x), skip))``, head
    ``seg_layers[s](x)``. Every head is always built (state dicts do not depend on
    ``deep_supervision`` or on the dropouts). The encoder is referenced, not registered as a submodule.

    Args:
        encoder: a dynamic_network_architectures encoder with ``return_skips=True``.
        num_classes: output channels.
        n_conv_per_stage: conv blocks per decoder stage (int or one entry per stage, coarse to fine).
        deep_supervision: return one output per stage (highest resolution first) instead of one tensor.
        nonlin_first: conv -> nonlin -> norm instead of conv -> norm -> nonlin.
        upsampling: one of :data:`UPSAMPLING_MODES`.
        input_dropout: applied to the bottleneck features this decoder starts from (default none).
        output_dropout: applied to the full-resolution features before the last head (default none).

    Attributes:
        deep_supervision: nnU-Net's ``set_deep_supervision_enabled`` toggles this flag.

    Raises:
        ValueError: wrong number of ``n_conv_per_stage`` entries or unknown upsampling.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, n_conv_per_stage: int | Sequence[int],
                 deep_supervision: bool, nonlin_first: bool = False, upsampling: str = "transpconv",
                 input_dropout: nn.Module | None = None, output_dropout: nn.Module | None = None) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.input_dropout = input_dropout or nn.Identity()
        self.output_dropout = output_dropout or nn.Identity()
        self.num_classes = num_classes
        self.upsampling = upsampling
        object.__setattr__(self, "_encoder", encoder)  # not a submodule
        n_convs = convs_per_decoder_stage(encoder, n_conv_per_stage)
        ups, stages, heads = [], [], []
        for s in range(1, len(n_convs) + 1):
            below, skip_ch = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            ups.append(Upsampling(upsampling, encoder.conv_op, in_channels=below, out_channels=skip_ch,
                                  stride=encoder.strides[-s], bias=encoder.conv_bias))
            stages.append(decoder_stage_blocks(encoder, n_convs[s - 1], s, nonlin_first))
            heads.append(encoder.conv_op(skip_ch, num_classes, 1, 1, 0, bias=True))
        self.upsamplings = nn.ModuleList(ups)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(heads)

    def forward(self, skips: Sequence[torch.Tensor],
                deep_supervision: bool | None = None) -> torch.Tensor | list[torch.Tensor]:
        """
        Args:
            skips: encoder outputs, highest resolution first, bottleneck last.
            deep_supervision: override of ``self.deep_supervision`` for this call.

        Returns:
            A list of logits (highest resolution first) with deep supervision, else one tensor at
            full resolution.
        """
        ds = self.deep_supervision if deep_supervision is None else deep_supervision
        x = self.input_dropout(skips[-1])
        n = len(self.stages)
        out: list[torch.Tensor] = []
        for s in range(n):
            skip = skips[-(s + 2)]
            x = self.stages[s](torch.cat((self.upsamplings[s](x, skip.shape[2:]), skip), 1))
            if s == n - 1:
                out.append(self.seg_layers[s](self.output_dropout(x)))
            elif ds:
                out.append(self.seg_layers[s](x))
        return out[::-1] if ds else out[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements this decoder stores for one sample (nnU-Net's VRAM proxy).

        Counts conv blocks, upsampled maps (plus the coarse 1x1-conv output of interpolating
        variants) and heads, as nnU-Net's ``UNetDecoder`` does.

        Args:
            input_size: spatial size of the network input (no batch/channel axes).
        """
        enc = self._encoder
        sizes = decoder_stage_sizes(enc, input_size)
        total = np.int64(0)
        n = len(self.stages)
        for s in range(n):
            size = sizes[s]
            skip_ch = enc.output_channels[-(s + 2)]
            total += self.stages[s].compute_conv_feature_map_size(size)
            total += np.prod([skip_ch, *size], dtype=np.int64)
            if self.upsampling != "transpconv":
                coarse = sizes[s - 1] if s > 0 else [i // j for i, j in zip(size, enc.strides[-1])]  # 1x1 conv output
                total += np.prod([skip_ch, *coarse], dtype=np.int64)
            if self.deep_supervision or s == n - 1:
                total += np.prod([self.num_classes, *size], dtype=np.int64)
        return total


def _dropout_after_conv(conv: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of :func:`set_encoder_dropout`: the conv's output through its ``encoder_dropout``."""
    return conv.encoder_dropout(output)


def set_encoder_dropout(encoder: nn.Module, probabilities: Sequence[float]) -> None:
    """Dropout after every convolution block of encoder stage ``s`` with ``probabilities[s]`` (the last
    value for deeper stages), at the position nnU-Net's ``ConvDropoutNormReLU`` gives it
    (conv -> dropout -> norm).

    The dropout is a parameter-free ``nn.Dropout`` attached to each block's ``conv`` with a forward
    hook, so state dicts keep the plan network's keys (checkpoints and ``-pretrained_weights``
    interchange) and it follows ``train()``/``eval()``. Works on plain-conv and residual encoders.

    Args:
        encoder: a dynamic_network_architectures encoder (``stages`` of ``ConvDropoutNormReLU`` blocks).
        probabilities: dropout probability per stage, shallowest first.

    Raises:
        ValueError: no probabilities, or the encoder has no convolution blocks.
    """
    if not probabilities:
        raise ValueError("encoder dropout needs at least one probability")
    found = False
    for s, stage in enumerate(encoder.stages):
        p = float(probabilities[min(s, len(probabilities) - 1)])
        for block in stage.modules():
            if isinstance(block, ConvDropoutNormReLU) and p > 0:
                if not hasattr(block.conv, "encoder_dropout"):
                    block.conv.register_forward_hook(_dropout_after_conv)
                block.conv.encoder_dropout = nn.Dropout(p)
                found = True
    if not found and any(float(p) > 0 for p in probabilities):
        raise ValueError("the encoder has no ConvDropoutNormReLU blocks to add dropout to")
