"""DCAC: domain- and content-adaptive dynamic heads on the plan's U-Net, for 2D and 3D.

Paper: Hu, Liao, Zhang, Xia, "Domain and Content Adaptive Convolution based Multi-Source Domain
Generalization for Medical Image Segmentation", IEEE TMI 2023 (official code: github
ShishuaiHu/DCAC, on nnU-Net v1: ``nnunet/network_architecture/DCAC/DCAC_*.py``). Written from the
paper and that code's structure; no code is copied.

What the network does (official names in brackets):

- a domain classifier [``classifier_fc``]: one linear layer on the global average of every encoder
  stage's output, bottleneck first, all detached (the classification loss trains this layer only);
- the domain code: the one-hot domain of each training sample, or at test time the softmax of the
  classifier [``batch_dom_class``];
- every decoder level's 1x1 head projects to ``K = num_domains * num_classes`` channels, then norm
  and nonlinearity [``seg_outputs``];
- the domain-adaptive convolution (DAC): a per-sample 1x1 convolution ``K -> K`` whose weights and
  bias a 1x1 convolution generates from the domain code [``da_controller``];
  ``x <- leaky_relu(x - norm(DAC(x)))`` with a per-sample norm over channels and space;
- the content-adaptive convolution (CAC): three per-sample 1x1 convolutions ``K -> K -> K ->
  num_classes`` (norm and leaky ReLU between them) whose parameters a 1x1 convolution generates
  from the global average of the bottleneck [``controller``], giving the logits.

The generated DAC and CAC parameters are the same for every deep-supervision output, as in the
official ``forward`` (each decoder level has its own static projection to ``K`` channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import EncoderDecoderNet, UNetStyleDecoder

__all__ = ["DCACNet", "dynamic_param_count", "split_dynamic_params", "dynamic_conv", "sample_norm",
           "domain_adaptive_conv", "content_adaptive_head", "domain_code"]


def dynamic_param_count(channels: Sequence[int]) -> int:
    """Number of generated parameters of a stack of 1x1 convolutions ``channels[0] -> channels[1] -> ...``."""
    return sum(i * o + o for i, o in zip(channels[:-1], channels[1:]))


def split_dynamic_params(params: torch.Tensor, channels: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-sample weights and biases of a stack of 1x1 convolutions from generated parameters.

    The layout is the official ``parse_dynamic_params``': every layer's weights first (layer by
    layer, each ``out x in`` with the output channel major), then every layer's bias.

    Args:
        params: ``(N, P)`` generated parameters, ``P = dynamic_param_count(channels)``.
        channels: ``[in, hidden..., out]`` channels of the stack.

    Returns:
        One ``(weight (N, out, in), bias (N, out))`` pair per layer.

    Raises:
        ValueError: ``P`` does not fit ``channels``.
    """
    pairs = list(zip(channels[:-1], channels[1:]))
    sizes = [i * o for i, o in pairs] + [o for _, o in pairs]
    if params.dim() != 2 or params.shape[1] != sum(sizes):
        raise ValueError(f"expected (N, {sum(sizes)}) parameters for channels {list(channels)}, got "
                         f"{tuple(params.shape)}")
    parts = torch.split(params, sizes, dim=1)
    n = params.shape[0]
    return [(parts[k].reshape(n, o, i), parts[len(pairs) + k]) for k, (i, o) in enumerate(pairs)]


def dynamic_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution with its own weights for every sample, as one grouped convolution.

    The batch is folded into the channels and convolved with ``groups=N`` (the official
    ``heads_forward``).

    Args:
        x: ``(N, in, *spatial)``, 2 or 3 spatial axes.
        weight: ``(N, out, in)``.
        bias: ``(N, out)``.

    Returns:
        ``(N, out, *spatial)``: sample ``n`` is ``conv(x[n], weight[n], bias[n])``.
    """
    n, c_in, *spatial = x.shape
    c_out = weight.shape[1]
    conv = F.conv2d if len(spatial) == 2 else F.conv3d
    y = conv(x.reshape(1, n * c_in, *spatial), weight.reshape(n * c_out, c_in, *([1] * len(spatial))),
             bias.reshape(n * c_out), groups=n)
    return y.reshape(n, c_out, *spatial)


def sample_norm(x: torch.Tensor) -> torch.Tensor:
    """Normalise each sample over all its channels and voxels, no affine (the official ``group_norm``
    with one group per sample of the folded batch)."""
    return F.group_norm(x, 1)


def domain_adaptive_conv(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """DAC: ``leaky_relu(x - sample_norm(conv_theta(x)))`` with a per-sample 1x1 convolution ``K -> K``.

    Args:
        x: ``(N, K, *spatial)`` head features.
        params: ``(N, K*K + K)`` parameters generated from the domain code.
    """
    ((w, b),) = split_dynamic_params(params, [x.shape[1], x.shape[1]])
    return F.leaky_relu(x - sample_norm(dynamic_conv(x, w, b)))


def content_adaptive_head(x: torch.Tensor, params: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CAC: per-sample 1x1 convolutions ``K -> K -> K -> num_classes``, ``sample_norm`` and leaky ReLU between.

    Args:
        x: ``(N, K, *spatial)``.
        params: ``(N, dynamic_param_count([K, K, K, num_classes]))`` generated from the image's content.
        num_classes: output channels.

    Returns:
        ``(N, num_classes, *spatial)`` logits.
    """
    k = x.shape[1]
    layers = split_dynamic_params(params, [k, k, k, num_classes])
    for i, (w, b) in enumerate(layers):
        x = dynamic_conv(x, w, b)
        if i < len(layers) - 1:
            x = F.leaky_relu(sample_norm(x))
    return x


def domain_code(domain_logits: torch.Tensor, domain_index: torch.Tensor | None = None) -> torch.Tensor:
    """The code the DAC parameters are generated from: one-hot of a known domain, else the classifier's softmax.

    Args:
        domain_logits: ``(N, D)`` classifier logits.
        domain_index: ``(N,)`` domain of each sample, ``-1`` where unknown (None: all unknown).

    Returns:
        ``(N, D)`` codes in the logits' dtype.
    """
    soft = torch.softmax(domain_logits, 1)
    if domain_index is None:
        return soft
    known = domain_index >= 0
    hard = F.one_hot(domain_index.clamp(min=0), domain_logits.shape[1]).to(soft.dtype)
    return torch.where(known[:, None], hard, soft)


class DCACNet(EncoderDecoderNet):
    """The plan's encoder, an nnU-Net-shaped decoder and DCAC's dynamic heads (see the module docstring).

    Args:
        encoder: a dynamic_network_architectures encoder with ``return_skips=True``.
        num_classes: segmentation outputs.
        n_conv_per_stage_decoder: conv blocks per decoder stage.
        deep_supervision: one output per decoder stage (highest resolution first) instead of one tensor.
        nonlin_first: the plan's block order for the decoder stages.
        num_domains: source domains (length of the domain code), at least 1.

    Attributes:
        decoder: its ``seg_layers`` are the static heads ``conv 1x1 -> norm -> nonlin`` to ``K`` channels;
            ``decoder.deep_supervision`` is nnU-Net's switch.
        domain_classifier: linear layer on the pooled, detached encoder features.
        domain_controller: 1x1 convolution generating the DAC parameters from the domain code.
        content_controller: 1x1 convolution generating the CAC parameters from the pooled bottleneck.

    Raises:
        ValueError: ``num_domains < 1``.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, n_conv_per_stage_decoder: int | Sequence[int],
                 deep_supervision: bool, nonlin_first: bool = False, num_domains: int) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be at least 1, got {num_domains}")
        self.num_classes, self.num_domains = num_classes, num_domains
        self.head_channels = k = num_domains * num_classes
        self.encoder = encoder
        self.decoder = UNetStyleDecoder(encoder, k, n_conv_per_stage=n_conv_per_stage_decoder,
                                        deep_supervision=deep_supervision, nonlin_first=nonlin_first)
        for s, conv in enumerate(self.decoder.seg_layers):
            self.decoder.seg_layers[s] = nn.Sequential(conv, encoder.norm_op(k, **(encoder.norm_op_kwargs or {})),
                                                       encoder.nonlin(**(encoder.nonlin_kwargs or {})))
        conv_op = encoder.conv_op
        self.domain_classifier = nn.Linear(int(sum(encoder.output_channels)), num_domains)
        self.domain_controller = conv_op(num_domains, dynamic_param_count([k, k]), 1)
        self.content_controller = conv_op(encoder.output_channels[-1], dynamic_param_count([k, k, k, num_classes]), 1)

    def forward(self, x: torch.Tensor, domain_index: torch.Tensor | None = None,
                return_domain_logits: bool = False):
        """
        Args:
            x: ``(N, C, *spatial)`` images.
            domain_index: ``(N,)`` known domain per sample (``-1``: unknown); None at test time: the
                classifier's softmax is the code.
            return_domain_logits: also return the classifier's logits.

        Returns:
            Logits: a list (highest resolution first) with deep supervision, else one tensor; with
            ``return_domain_logits`` the pair ``(logits, domain_logits)``.
        """
        skips = self.encoder(x)
        spatial = tuple(range(2, x.dim()))
        pooled = torch.cat([s.detach().mean(spatial) for s in skips[::-1]], 1)
        domain_logits = self.domain_classifier(pooled)
        code = domain_code(domain_logits, domain_index)
        ones = (1,) * len(spatial)
        da_params = self.domain_controller(code.reshape(*code.shape, *ones)).flatten(1)
        ca_params = self.content_controller(skips[-1].mean(spatial, keepdim=True)).flatten(1)
        feats = self.decoder(skips)

        def head(h: torch.Tensor) -> torch.Tensor:
            return content_adaptive_head(domain_adaptive_conv(h, da_params), ca_params, self.num_classes)

        out = [head(h) for h in feats] if isinstance(feats, list) else head(feats)
        return (out, domain_logits) if return_domain_logits else out
