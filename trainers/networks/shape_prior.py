"""Networks of the shape-prior trainer: a U-Net with twin decoders and a WGAN shape critic.

Chen et al., "Striving for Simplicity: Simple Yet Effective Prior-Aware Pseudo-Labeling for
Semi-Supervised Ultrasound Image Segmentation" (MICCAI 2024), official code
github.com/WUTCM-Lab/Shape-Prior-Semi-Seg.

- :class:`TwinDecoderUNet`: the plan's encoder (``PlainConvEncoder`` / ``ResidualEncoder``) shared
  by two nnU-Net-shaped decoders (:class:`~nnzoo.trainers.networks.common.UNetStyleDecoder`).
  ``label_decoder`` (D_l) upsamples by 1x1 convolution and (bi/tri)linear interpolation and learns from labels; ``decoder`` (D_p) upsamples with transposed
  convolutions like nnU-Net's ``UNetDecoder``, sees its bottleneck input through dropout and learns
  from D_l's hard pseudo-labels. ``forward(x)`` is D_p (inference); ``forward(x, n_labeled=n)``
  is the training pass (see :meth:`TwinDecoderUNet.forward`).
- :class:`ShapeCritic` / :class:`ShapeGenerator`: DCGAN-style WGAN critic and generator for 2D or
  3D masks of a fixed cubic size (a multiple of 16), one input channel per foreground class or
  region; :func:`train_wgan_critic` trains them with weight clipping and RMSprop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import EncoderDecoderNet, UNetStyleDecoder, dropout_module

__all__ = ["TwinDecoderUNet", "ShapeCritic", "ShapeGenerator", "resize_to_critic",
           "train_wgan_critic", "critic_auc", "critic_updates"]


class TwinDecoderUNet(EncoderDecoderNet):
    """Shared encoder, label decoder D_l (``label_decoder``) and pseudo-label decoder D_p (``decoder``).

    Args:
        encoder: encoder built from the plan (``return_skips=True``).
        num_classes: segmentation output channels.
        n_conv_per_stage_decoder: conv blocks per decoder stage.
        deep_supervision: initial deep-supervision flag (``network.decoder.deep_supervision``; D_l follows it).
        nonlin_first: conv -> nonlin -> norm in the decoders.
        dropout: dropout probability on D_p's bottleneck input.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, n_conv_per_stage_decoder: int | Sequence[int],
                 deep_supervision: bool = False, nonlin_first: bool = False, dropout: float = 0.3) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetStyleDecoder(encoder, num_classes, n_conv_per_stage=n_conv_per_stage_decoder,
                                        deep_supervision=deep_supervision, nonlin_first=nonlin_first,
                                        upsampling="transpconv",
                                        input_dropout=dropout_module(encoder.conv_op, dropout))
        self.label_decoder = UNetStyleDecoder(encoder, num_classes, n_conv_per_stage=n_conv_per_stage_decoder,
                                              deep_supervision=deep_supervision, nonlin_first=nonlin_first,
                                              upsampling="linear")

    def forward(self, x: torch.Tensor, n_labeled: int | None = None):
        """
        Args:
            x: images ``(B, C, *spatial)``.
            n_labeled: None for inference/validation (D_p only). For training, the first
                ``n_labeled`` samples are labeled and the rest unlabeled (one encoder pass for all).

        Returns:
            Inference: D_p logits (a list with deep supervision, else one tensor). Training: a tuple
            ``(D_l logits of the labeled samples (list with deep supervision), D_l full-resolution
            logits of the unlabeled samples computed without gradient, D_p logits of the unlabeled
            samples at every scale (list, highest resolution first))``.
        """
        skips = self.encoder(x)
        if n_labeled is None:
            return self.decoder(skips)
        if not 0 < n_labeled < x.shape[0]:
            raise ValueError(f"n_labeled must be in [1, {x.shape[0] - 1}], got {n_labeled}")
        ds = self.decoder.deep_supervision  # nnU-Net toggles this flag; D_l follows it
        lab = self.label_decoder([s[:n_labeled] for s in skips], deep_supervision=ds)
        unl = [s[n_labeled:] for s in skips]
        with torch.no_grad():
            pseudo_logits = self.label_decoder([s.detach() for s in unl], deep_supervision=False)
        return lab, pseudo_logits, self.decoder(unl, deep_supervision=True)


# ------------------------------------------------------------------------------------------ shape prior
def _ops(dim: int) -> tuple[type, type, type]:
    if dim == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d
    if dim == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d
    raise ValueError(f"dim must be 2 or 3, got {dim}")


def _check_size(size: int) -> None:
    if size < 16 or size % 16:
        raise ValueError(f"critic size must be a multiple of 16 (>= 16), got {size}")


def _dcgan_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class ShapeCritic(nn.Module):
    """DCGAN critic for masks of ``size``^dim voxels: one score per sample, lower = more realistic.

    Stride-2 4-kernel convolutions (LeakyReLU 0.2, BatchNorm after the first) down to 4 voxels per
    axis, doubling the width, then a 4-kernel convolution to one score.

    Args:
        dim: 2 or 3.
        in_channels: mask channels (foreground classes or regions).
        size: input size per axis (multiple of 16).
        features: width of the first layer.
    """

    def __init__(self, dim: int, in_channels: int, size: int = 64, features: int = 64) -> None:
        super().__init__()
        _check_size(size)
        conv, _, bn = _ops(dim)
        self.dim, self.size, self.in_channels = dim, size, in_channels
        layers: list[nn.Module] = [conv(in_channels, features, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        cur, ch = size // 2, features
        while cur > 4:
            layers += [conv(ch, 2 * ch, 4, 2, 1, bias=False), bn(2 * ch), nn.LeakyReLU(0.2, inplace=True)]
            cur, ch = cur // 2, 2 * ch
        layers.append(conv(ch, 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` of masks ``(B, in_channels, size, ..., size)`` with values in [0, 1]."""
        return self.main(masks).flatten(1).mean(1)


class ShapeGenerator(nn.Module):
    """DCGAN generator of soft masks from ``latent_dim`` Gaussian noise (the critic's adversary).

    Args:
        dim: 2 or 3.
        out_channels: mask channels.
        size: output size per axis (multiple of 16).
        features: width of the last hidden layer.
        latent_dim: noise dimension.
        exclusive: softmax over ``out_channels + 1`` channels with the first (background) dropped
            (mutually exclusive classes) instead of a sigmoid per channel (regions).
    """

    def __init__(self, dim: int, out_channels: int, *, size: int = 64, features: int = 64, latent_dim: int = 100,
                 exclusive: bool = True) -> None:
        super().__init__()
        _check_size(size)
        _, convt, bn = _ops(dim)
        self.dim, self.latent_dim, self.exclusive = dim, latent_dim, exclusive
        ch, cur = features // 2, 4
        while cur != size:
            ch, cur = ch * 2, cur * 2
        layers: list[nn.Module] = [convt(latent_dim, ch, 4, 1, 0, bias=False), bn(ch), nn.ReLU(True)]
        cur = 4
        while cur < size // 2:
            layers += [convt(ch, ch // 2, 4, 2, 1, bias=False), bn(ch // 2), nn.ReLU(True)]
            ch, cur = ch // 2, cur * 2
        layers.append(convt(ch, out_channels + (1 if exclusive else 0), 4, 2, 1, bias=False))
        self.main = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Soft masks in [0, 1] from noise ``(B, latent_dim)``."""
        y = self.main(z.view(*z.shape, *([1] * self.dim)))
        return torch.softmax(y, 1)[:, 1:] if self.exclusive else torch.sigmoid(y)


def resize_to_critic(probs: torch.Tensor, size: int) -> torch.Tensor:
    """(Bi/tri)linear resampling of masks or probabilities ``(B, C, *spatial)`` to ``size`` per axis."""
    dim = probs.ndim - 2
    mode = "bilinear" if dim == 2 else "trilinear"
    return F.interpolate(probs.float(), size=(size,) * dim, mode=mode, align_corners=False)


def train_wgan_critic(critic: ShapeCritic, generator: ShapeGenerator, *, sample_real: Callable[[int], torch.Tensor],
                      steps: int, batch_size: int = 16, lr: float = 5e-5, clip: float = 0.01, iters_per_g: int = 5,
                      warmup_g_steps: int = 25, warmup_iters: int = 100, refresh_every: int = 500,
                      epoch_length: int | None = None,
                      callback: Callable[[dict], bool] | None = None) -> dict:
    """WGAN training (weight clipping, RMSprop) of ``critic`` against ``generator``; modifies both in place.

    The critic minimises ``D(real) - D(fake)`` (so real masks score low) with its weights clipped
    to ``[-clip, clip]`` before every update; after each block of critic updates the generator takes
    one step minimising ``D(G(z))``. A block is ``warmup_iters`` updates for the first
    ``warmup_g_steps`` generator steps and every ``refresh_every``-th, else ``iters_per_g``; with
    ``epoch_length`` a block also ends at the end of an epoch of that many updates (the official
    loop: ``while j < Diters and i < len(dataloader)``), so a small mask set gets a generator step
    at least once per epoch.

    Args:
        critic: the critic (left in eval mode, weights clipped, gradients off).
        generator: its adversary (left in eval mode).
        sample_real: ``n -> (m, C, size, ...)`` batch of real masks on the critic's device (``m <= n``).
        steps: total critic updates (the budget).
        batch_size: masks per update (and fakes per update).
        lr: RMSprop learning rate of both.
        clip: weight-clipping bound.
        iters_per_g, warmup_g_steps, warmup_iters, refresh_every: the update schedule.
        epoch_length: critic updates per epoch (None: blocks ignore epochs).
        callback: called after every critic update with ``{"critic_steps", "generator_steps",
            "wasserstein"}``; returning True stops the training there (e.g. an AUC rule).

    Returns:
        ``{"critic_steps", "generator_steps", "wasserstein", "stopped_early"}`` (``wasserstein``:
        the last ``D(fake) - D(real)`` estimate).
    """
    device = next(critic.parameters()).device
    opt_d = torch.optim.RMSprop(critic.parameters(), lr=lr)
    opt_g = torch.optim.RMSprop(generator.parameters(), lr=lr)
    critic.train()
    generator.train()
    done, g_steps, w, stop = 0, 0, float("nan"), False
    while done < steps and not stop:
        block = warmup_iters if g_steps < warmup_g_steps or g_steps % refresh_every == 0 else iters_per_g
        if epoch_length:
            block = min(block, epoch_length - done % epoch_length)
        critic.requires_grad_(True)
        for _ in range(min(block, steps - done)):
            with torch.no_grad():
                for p in critic.parameters():
                    p.clamp_(-clip, clip)
                fake = generator(torch.randn(batch_size, generator.latent_dim, device=device))
            d_real = critic(sample_real(batch_size)).mean()
            d_fake = critic(fake).mean()
            opt_d.zero_grad(set_to_none=True)
            (d_real - d_fake).backward()
            opt_d.step()
            done += 1
            w = float(d_fake.detach() - d_real.detach())
            if callback is not None and callback({"critic_steps": done, "generator_steps": g_steps,
                                                  "wasserstein": w}):
                stop = True
                break
        if stop:
            break
        critic.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        critic(generator(torch.randn(batch_size, generator.latent_dim, device=device))).mean().backward()
        opt_g.step()
        g_steps += 1
    with torch.no_grad():
        for p in critic.parameters():
            p.clamp_(-clip, clip)
    critic.requires_grad_(False)
    critic.eval()
    generator.eval()
    return {"critic_steps": done, "generator_steps": g_steps, "wasserstein": w, "stopped_early": stop}


def critic_updates(n_masks: int, *, epochs: int, batch_size: int) -> int:
    """Critic updates of ``epochs`` passes over ``n_masks`` masks in batches of ``batch_size`` (at least 1)."""
    return max(1, epochs * math.ceil(n_masks / batch_size))


def critic_auc(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, *,
               device: torch.device | str = "cpu", seed: int = 0) -> float:
    """AUC of a critic telling real masks from corrupted copies of them (lower score = more real).

    Corruptions: 15 % of the voxels flipped, or the mask replaced by thresholded smooth noise
    (blobs of the same size).

    Args:
        critic: masks ``(B, C, size, ...)`` -> scores ``(B,)``.
        real: real masks ``(B, C, size, ...)``.
        device: where the critic runs.
        seed: seed of the corruptions.

    Returns:
        0.5 = chance (ties count half), 1 = every real mask scores below every corrupted one.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    real = real.float().cpu()
    flipped = torch.where(torch.rand(real.shape, generator=g) < 0.15, 1 - real, real)
    coarse = torch.rand((real.shape[0], real.shape[1], *[4] * (real.ndim - 2)), generator=g)
    blobs = (resize_to_critic(coarse, real.shape[-1]) > 0.6).float()
    with torch.no_grad():
        s_real = critic(real.to(device)).cpu()
        s_bad = torch.cat([critic(x.to(device)).cpu() for x in (flipped, blobs)])
    below = (s_real[:, None] < s_bad[None, :]).float().mean()
    ties = (s_real[:, None] == s_bad[None, :]).float().mean()
    return float(below + 0.5 * ties)
