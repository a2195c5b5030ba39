"""C²SDG (contrastive single domain generalisation) as an nnU-Net trainer: nnUNetTrainerC2SDG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import nnunet_compat as compat
from .base import NnzooTrainer, PlanNetworkMixin
from .networks.c2sdg import ChannelPromptUNet, Projector, projector_grid
from .registry import register_trainer

__all__ = ["fda_amplitude_swap", "fourier_style_view", "bezier_intensity_curve", "interp",
           "global_location_scale", "match_moments", "channel_contrastive_losses", "nnUNetTrainerC2SDG"]


def _spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    if x.ndim not in (4, 5):
        raise ValueError(f"expected a (b, c, x, y[, z]) tensor, got shape {tuple(x.shape)}")
    return tuple(range(2, x.ndim))


def fda_amplitude_swap(x: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """FDA: ``x`` with the low-frequency amplitude spectrum of ``target`` and its own phase.

    The spectra are taken per sample and channel over the spatial axes; after centring (fftshift)
    the amplitudes in the cube ``[c - b, c + b]`` on every axis (``c = n // 2`` the DC index,
    ``b = floor(min(spatial size) * beta)``) are replaced by ``target``'s, as the official
    ``low_freq_mutate_np`` does on the two image axes. The band is symmetric about DC, so the mixed
    spectrum stays Hermitian and the result (the real part of the inverse FFT) keeps ``x``'s phase.

    Args:
        x: ``(b, c, *spatial)`` images.
        target: images of the same shape giving the low-frequency amplitudes.
        beta: relative half-width of the band (official: 0.05 to 0.15); 0 returns ``x``.

    Returns:
        Float32 images of ``x``'s shape.
    """
    dims = _spatial_dims(x)
    if target.shape != x.shape:
        raise ValueError(f"target shape {tuple(target.shape)} differs from {tuple(x.shape)}")
    half = int(math.floor(min(x.shape[d] for d in dims) * beta))
    if beta <= 0:
        return x.float().clone()
    fx, ft = torch.fft.fftn(x.float(), dim=dims), torch.fft.fftn(target.float(), dim=dims)
    amp = torch.fft.fftshift(fx.abs(), dim=dims)
    amp_t = torch.fft.fftshift(ft.abs(), dim=dims)
    band = [slice(None), slice(None)] + [slice(max(0, x.shape[d] // 2 - half), x.shape[d] // 2 + half + 1)
                                         for d in dims]
    amp[tuple(band)] = amp_t[tuple(band)]
    amp = torch.fft.ifftshift(amp, dim=dims)
    return torch.fft.ifftn(torch.polar(amp, fx.angle()), dim=dims).real


def fourier_style_view(x: torch.Tensor, *, beta_min: float = 0.05, beta_range: float = 0.1,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The official FDA view: each sample takes the low-frequency amplitudes of the batch reversed.

    ``beta = round(beta_min + U(0, 1) * beta_range, 2)``, one value per batch, and the amplitude
    donor of sample ``i`` is sample ``b - 1 - i`` (official ``fourier_augmentation_reverse``; with a
    batch of 1, or for the middle sample of an odd batch, the view equals the input).
    """
    u = float(torch.rand((), generator=generator))
    return fda_amplitude_swap(x, x.flip(0), round(beta_min + u * beta_range, 2))


def bezier_intensity_curve(lo: float, hi: float, *, n_points: int = 4, n_times: int = 100000,
                           generator: torch.Generator | None = None,
                           device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A random monotone intensity mapping of ``[lo, hi]`` onto itself (official ``non_linear_transformation``).

    A Bezier curve through ``n_points`` control points, the ends ``(lo, lo)`` and ``(hi, hi)``, the
    inner x and y coordinates drawn uniformly in ``[lo, hi]``; its ``n_times`` samples' x and y
    are sorted separately, which makes the mapping increasing.

    Returns:
        ``(xvals, yvals)``, both increasing, float32, on ``device``.
    """
    xs, ys = [lo, hi], [lo, hi]
    for _ in range(n_points - 2):
        xs.insert(1, lo + float(torch.rand((), generator=generator)) * (hi - lo))
        ys.insert(1, lo + float(torch.rand((), generator=generator)) * (hi - lo))
    t = torch.linspace(0.0, 1.0, n_times, dtype=torch.float64)
    n = n_points - 1
    basis = torch.stack([math.comb(n, i) * t ** (n - i) * (1 - t) ** i for i in range(n_points)])
    xv = (torch.tensor(xs, dtype=torch.float64) @ basis).sort().values
    yv = (torch.tensor(ys, dtype=torch.float64) @ basis).sort().values
    return xv.float().to(device), yv.float().to(device)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``numpy.interp`` for tensors: piecewise-linear ``fp(xp)`` at ``x`` (``xp`` increasing; clamped outside)."""
    flat = x.reshape(-1).to(xp.dtype)
    idx = torch.searchsorted(xp, flat, right=True).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    width = x1 - x0
    t = torch.where(width > 0, (flat - x0) / width.clamp_min(torch.finfo(width.dtype).tiny), torch.zeros_like(flat))
    return (f0 + t.clamp(0, 1) * (f1 - f0)).reshape(x.shape)


def _percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """numpy's (linear) percentile of all elements (no 2**24-element limit as ``torch.quantile``)."""
    flat = x.reshape(-1)
    pos = q / 100 * (flat.numel() - 1)
    lo = torch.kthvalue(flat, int(math.floor(pos)) + 1).values
    hi = torch.kthvalue(flat, int(math.ceil(pos)) + 1).values
    return lo + (pos - math.floor(pos)) * (hi - lo)


def global_location_scale(x: torch.Tensor, *, value_range: float = 255.0, location_std: float = 0.5,
                          scale_std: float = 0.1, slide_limit: float = 20, n_times: int = 100000,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """The official global location-scale augmentation (GLA) of a whole batch, on its own value range.

    Official ``Global_Location_Scale_Augmentation`` on the batch ``(b, c, ...)`` with
    ``vrange=(0, 255)``: one random Bezier curve (:func:`bezier_intensity_curve`) between the batch's
    minimum and maximum, then ``clip(y * s + l, vrange)`` with ``s = clip(N(1, scale_std), 0.9, 1.1)``
    and ``l ~ N(0, location_std)`` clipped to ``[vmin - P20(y), vmax - P80(y)]``. Here ``vrange`` is
    the batch's own ``[min, max]`` (nnU-Net's images are normalised, not 0-255) and ``l`` is drawn in
    units of ``(max - min) / value_range`` (the official draws it in 0-255 intensity units).

    Returns:
        Float32 batch of ``x``'s shape, values in ``[min(x), max(x)]``, an increasing function of ``x``
        up to the final clip.
    """
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        return x.clone()
    xv, yv = bezier_intensity_curve(lo, hi, n_times=n_times, generator=generator, device=x.device)
    y = interp(x, xv, yv)
    scale = min(max(1.0 + scale_std * float(torch.randn((), generator=generator)), 0.9), 1.1)
    loc = location_std * float(torch.randn((), generator=generator)) * (hi - lo) / value_range
    loc = min(max(loc, lo - float(_percentile(y, slide_limit))), hi - float(_percentile(y, 100 - slide_limit)))
    return (y * scale + loc).clamp(lo, hi)


def match_moments(view: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``view`` standardised per sample and channel, then given ``reference``'s mean and std.

    The official code z-scores every view per image and channel (``normalize_image``:
    ``(v - mean) / (std + 1e-5)``); nnU-Net's inputs are normalised per case, not per patch, so
    the views are brought to the original patch's statistics instead.
    """
    dims = _spatial_dims(view)
    mv, sv = view.mean(dims, keepdim=True), view.std(dims, keepdim=True, unbiased=False)
    mr, sr = reference.mean(dims, keepdim=True), reference.std(dims, keepdim=True, unbiased=False)
    return (view - mv) / (sv + eps) * sr + mr


def channel_contrastive_losses(content: Sequence[torch.Tensor],
                               style: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """C²SDG's channel-level losses on projected views: ``(content_loss, style_loss)``.

    ``content_loss = sum_{i != j} mean|c_i - c_j|`` pulls the content embeddings of the views
    together; ``style_loss = -sum_{i != j} mean|s_i - s_j|`` pushes the style embeddings apart
    (negative). Ordered pairs, as the official code writes both directions of every pair.

    Args:
        content: content embeddings of each view, ``(b, d)`` each.
        style: style embeddings of the same views.

    Returns:
        Two scalars (float32).
    """
    if len(content) != len(style) or len(content) < 2:
        raise ValueError("need the same number (>= 2) of content and style embeddings")

    def pairs(z: Sequence[torch.Tensor]) -> torch.Tensor:
        return sum(F.l1_loss(z[i].float(), z[j].float()) for i in range(len(z)) for j in range(len(z)) if i != j)

    return pairs(content), -pairs(style)


@register_trainer(
    description="C²SDG: channel prompt splits stem channels into content/style; contrastive losses on FDA+GLA views",
    paper="Hu, Liao, Xia, Devil is in Channels: Contrastive Single Domain Generalization for Medical Image "
    "Segmentation, MICCAI 2023",
    official_code="https://github.com/ShishuaiHu/CCSDG",
    dims=("2d", "3d"),
    domain_generalisation=True,
)
class nnUNetTrainerC2SDG(PlanNetworkMixin, NnzooTrainer):
    """C²SDG (Hu, Liao, Xia, MICCAI 2023; official code github ShishuaiHu/CCSDG) on nnU-Net's U-Net.

    Network: :class:`~nnzoo.trainers.networks.c2sdg.ChannelPromptUNet`, the plan's U-Net (plain or
    residual encoder) with a ``(2, C)`` channel prompt on the first convolution's ``C`` channels;
    ``softmax(prompt / PROMPT_TAU)`` splits them into content and style, and only the content
    channels continue into the U-Net, in training and at inference (the official test path is the
    same forward). Each training iteration, as the official ``train_unet_ccsdg.py``:

    1. two style views of the augmented batch (on the device, after nnU-Net's augmentation, as the
       official makes them after its own): FDA (:func:`fourier_style_view`, low-frequency
       amplitudes of the reversed batch, band ``FDA_BETA_MIN + U * FDA_BETA_RANGE``) and global
       location-scale (:func:`global_location_scale`); the local (label-wise) variant the official
       computes is unused there and is not made here;
    2. a prompt step: the first convolution's output of the three views (original, FDA, GLA) is
       split by the prompt, content and style features go through :class:`Projector`, and
       ``CONTENT_LOSS_WEIGHT * content_loss + STYLE_LOSS_WEIGHT * style_loss``
       (:func:`channel_contrastive_losses`) updates only the prompt and the projector with their own
       SGD (``PROMPT_LR``, momentum 0.99, Nesterov, constant learning rate as official);
    3. three segmentation steps, each one nnU-Net ``train_step`` (its loss, deep supervision, AMP,
       clipping, SGD and poly schedule), on the FDA view, the GLA view and the original batch, in
       that order. The returned ``loss`` is the last (original images), as the official logs.

    How each part was carried over to nnU-Net's InstanceNorm networks, and deviations:
        - Prompt position: the official prompt multiplies the output of ResNet's ``conv1``, before
          ``bn1``; here it multiplies the output of the plan encoder's first convolution, before its
          InstanceNorm (forward hook; state dict = plan network + ``channel_prompt``). A norm right
          after a per-channel scale cancels it (BatchNorm in training, InstanceNorm always), except
          through the norm's eps: a channel scaled by ``w`` leaves the norm with gain
          ``w*sigma / sqrt(w^2 sigma^2 + eps)``. With the official ``tau = 0.1`` and ``randn``
          initialisation most weights are ~1 or far below ``sqrt(eps)``, so the prompt is a channel
          switch in both networks. Measured on the tiny test plans (32 stem channels, He init,
          random input, 5 seeds): after the InstanceNorm 23 % (2D) / 19 % (3D) of the channels have
          gain < 0.01 (off), 66 % / 64 % gain > 0.99, the rest in between; adding noise to the conv weights of the most style-assigned channel moves the eval
          logits by at most 0 (2D) / 3e-5 (3D), of the most content-assigned channel by 1.3-3.8 (2D)
          / 2.0-2.4 (3D). The segmentation loss thus moves the prompt only through channels near the
          switch point (in the official BatchNorm network as well).
        - The contrastive losses act on the features before the norm, as official, where the
          prompt's scale is not cancelled. Measured (tiny plans, batch 2 of smoothed noise, 20 prompt
          steps on one batch, seed 0): content loss 0.044 -> 0.029 (2D) / 0.025 -> 0.019 (3D), style
          term -0.041 -> -0.074 / -0.027 -> -0.071; in those 20 steps the content weights moved by at
          most 0.011 / 0.007 and no channel changed side: with ``tau = 0.1`` the saturated softmax leaves the
          prompt slow and the projector does most of the early decrease.
        - Style views: FDA and GLA follow the official functions on all spatial axes (2D and 3D;
          FDA's band is a cube of half-width ``floor(min(size) * beta)``). GLA's value range is the
          batch's ``[min, max]`` instead of ``(0, 255)``, its location shift scaled accordingly.
          The official z-scores every view per image and channel; nnU-Net's inputs are normalised
          per case, so the views get the original patch's mean and std (:func:`match_moments`) and
          the original batch is left as nnU-Net made it. As in the official code, this
          standardisation undoes GLA's affine part except where its clip bites and FDA's DC swap:
          the Bezier curve and FDA's other low frequencies make the views differ.
        - Projector: the official conv-BN-ReLU-maxpool-linear(1024)-L2 head, plus an adaptive
          max-pool to at most ``PROJECTOR_GRID_2D``/``PROJECTOR_GRID_3D`` per axis (the official
          linear layer takes 8x128x128 inputs from its 512x512 images; nnU-Net's stride-1 stems and 3D
          patches would make it gigantic; defaults 16 and 8 give 2048 / 4096 inputs: on one CPU
          thread a prompt step took 0.19 s on a 64x64 batch of 2 (0.89 s with grid 32) and 1.1 s on
          32^3 (3.8 s with grid 16)). It is a training-only module of the trainer (not of the
          network, as official), saved in the checkpoint with the prompt optimiser for resuming
          (the official saves neither).
        - Under DDP the prompt and projector gradients are averaged over the ranks before the
          prompt step (one all-reduce); the first convolution runs without gradient in that step
          (the official computes and then discards its gradient).
        - The segmentation optimiser is nnU-Net's (SGD 1e-2, momentum 0.99, Nesterov, weight decay
          3e-5, poly per epoch, clipping 12) on all network parameters, prompt included, as the
          official optimiser holds ``model.parameters()``; nnU-Net's Dice+CE with deep supervision
          replaces the official two-channel BCE.
        - With a batch of 1 the FDA view is the batch itself (official behaviour too).
        - Cost: an iteration is three nnU-Net steps plus a prompt step (official), measured on one
          CPU thread at batch 2: 0.61 s against nnU-Net's 0.15 s (2D 64x64), 4.4 s against 1.4 s
          (3D 32^3); the style views take 0.01-0.04 s of it.
    """

    PROMPT_TAU = 0.1
    PROMPT_LR = 1e-2
    PROMPT_MOMENTUM = 0.99
    CONTENT_LOSS_WEIGHT = 1.0
    STYLE_LOSS_WEIGHT = 1.0
    FDA_BETA_MIN = 0.05
    FDA_BETA_RANGE = 0.1
    PROJECTOR_CHANNELS = 8
    PROJECTOR_DIM = 1024
    PROJECTOR_GRID_2D = 16
    PROJECTOR_GRID_3D = 8

    network_class = ChannelPromptUNet
    projector: Projector | None = None
    prompt_optimizer: torch.optim.Optimizer | None = None
    prompt_grad_scaler = None

    @classmethod
    def extra_network_kwargs(cls, ndim: int) -> dict:
        return {"tau": cls.PROMPT_TAU}

    def initialize(self) -> None:
        """nnU-Net's initialisation, then the projector and the prompt optimiser on the training device."""
        super().initialize()
        net = compat.unwrap_network(self.network)
        patch = [int(p) for p in self.configuration_manager.patch_size]
        grid = self.PROJECTOR_GRID_3D if len(patch) == 3 else self.PROJECTOR_GRID_2D
        self.projector = Projector(net.channel_prompt.shape[1], net.encoder.conv_op, grid=projector_grid(patch, grid),
                                   hidden_channels=self.PROJECTOR_CHANNELS,
                                   out_features=self.PROJECTOR_DIM).to(self.device)
        self.prompt_optimizer = torch.optim.SGD([*self.projector.parameters(), net.channel_prompt], lr=self.PROMPT_LR,
                                                momentum=self.PROMPT_MOMENTUM, nesterov=True)
        if self.grad_scaler is not None:
            self.prompt_grad_scaler = torch.amp.GradScaler("cuda")

    def style_views(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fda, gla)`` views of a batch, with the batch's per-sample, per-channel mean and std.

        Only the image channels are changed; channels beyond them (a cascade's previous-stage
        segmentation) are passed on as they are.
        """
        names = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
        n = len(names) or data.shape[1]
        img, rest = data[:, :n], data[:, n:]
        with torch.no_grad():
            fda = fourier_style_view(img, beta_min=self.FDA_BETA_MIN, beta_range=self.FDA_BETA_RANGE)
            gla = global_location_scale(img)
            return tuple(torch.cat([match_moments(v, img).to(data.dtype), rest], 1) for v in (fda, gla))

    def prompt_step(self, views: Sequence[torch.Tensor]) -> dict:
        """One step of the prompt optimiser on the channel-level contrastive losses of ``views``.

        Returns:
            ``content_loss`` and ``style_loss`` (negative) as numpy float32 scalars.
        """
        net = compat.unwrap_network(self.network)
        self.prompt_optimizer.zero_grad(set_to_none=True)
        cuda = self.device.type == "cuda"
        with torch.autocast(self.device.type, enabled=True) if cuda else nullcontext():
            with torch.no_grad():  # only the prompt and the projector are updated here
                feats = net.stem_features(torch.cat(list(views))).chunk(len(views))
            split = [net.split(f) for f in feats]
            content, style = channel_contrastive_losses([self.projector(c) for c, _ in split],
                                                        [self.projector(s) for _, s in split])
            total = self.CONTENT_LOSS_WEIGHT * content + self.STYLE_LOSS_WEIGHT * style
        params = [p for g in self.prompt_optimizer.param_groups for p in g["params"]]
        scaler = self.prompt_grad_scaler
        (scaler.scale(total) if scaler is not None else total).backward()
        if self.is_ddp:  # the prompt step bypasses DDP's forward: average its gradients by hand
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            offset = 0
            for p, g in zip(params, grads):
                p.grad = flat[offset:offset + g.numel()].view_as(p).clone()
                offset += g.numel()
        if scaler is not None:
            scaler.step(self.prompt_optimizer)
            scaler.update()
        else:
            self.prompt_optimizer.step()
        return {"content_loss": content.detach().float().cpu().numpy(),
                "style_loss": style.detach().float().cpu().numpy()}

    def train_step(self, batch: dict) -> dict:
        """Prompt step on (original, FDA, GLA), then nnU-Net steps on FDA, GLA and the original batch.

        Returns:
            ``loss`` (original batch), ``loss_fda``, ``loss_gla``, ``content_loss``, ``style_loss``.
        """
        data, target = self.batch_to_device(batch)
        fda, gla = self.style_views(data)
        out = self.prompt_step([data, fda, gla])
        for name, view in (("loss_fda", fda), ("loss_gla", gla), ("loss", data)):
            out[name] = self.nnunet_step(view, target, lambda net, x: net(x), lambda o, t: self.loss(o, t))["loss"]
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if self.local_rank == 0 and train_outputs and "content_loss" in train_outputs[0]:
            parts = {k: float(np.mean([o[k] for o in train_outputs]))
                     for k in ("loss_fda", "loss_gla", "content_loss", "style_loss")}
            self.print_to_log_file("C2SDG (this rank): " + ", ".join(f"{k} {v:.4f}" for k, v in parts.items()))

    def _extra_checkpoint_state(self) -> dict:
        state = super()._extra_checkpoint_state()
        if self.projector is not None:
            state["c2sdg_projector"] = self.projector.state_dict()
            state["c2sdg_prompt_optimizer"] = self.prompt_optimizer.state_dict()
        return state

    def _restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super()._restore_extra_checkpoint_state(checkpoint)
        if isinstance(checkpoint, dict) and "c2sdg_projector" in checkpoint and self.projector is not None:
            self.projector.load_state_dict(checkpoint["c2sdg_projector"])
            self.prompt_optimizer.load_state_dict(checkpoint["c2sdg_prompt_optimizer"])
