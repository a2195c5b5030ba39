"""GIN-IPA as an nnU-Net trainer: random shallow convolutions, interventional blending, consistency loss.

The maths are plain functions: :func:`~nnzoo.trainers.augment.gin_augment` (GIN, shared with
``--augment gin``), :func:`bspline_kernel`, :func:`ipa_blend_field`, :func:`ipa_blend`,
:func:`gin_ipa_views` and :func:`gin_consistency_loss`; :class:`nnUNetTrainerGINIPA` runs them in
nnU-Net's training step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .augment import _draw, gin_augment, image_channel_count
from .base import NnzooTrainer
from .registry import register_trainer

__all__ = ["N_VIEWS", "bspline_kernel", "ipa_blend_field", "ipa_blend", "gin_ipa_views", "gin_consistency_loss",
           "nnUNetTrainerGINIPA"]

#: views of every image the network sees in a step (official: 3, "a trick from Xu et al.")
N_VIEWS = 3


def bspline_kernel(spacing: tuple[int, ...], order: int = 2) -> torch.Tensor:
    """Separable B-spline kernel of a control-point grid with the given spacing.

    The 1D kernel is a box of width ``s`` convolved ``order`` times with a box of width ``s``
    normalised to sum 1 (iterated mean filtering, as the official ``bspline_kernel_2d``): support
    ``(order + 1) (s - 1) + 1``, peak-free partition of unity (the kernels shifted by multiples of
    ``s`` sum to 1 away from the grid's ends).

    Args:
        spacing: control-point spacing per axis (voxels, >= 1).
        order: spline order (official 2).

    Returns:
        float32 tensor of shape ``((order + 1) (s_d - 1) + 1 for each axis)``.
    """
    kernel = torch.ones(())
    for s in spacing:
        k = torch.ones(1, 1, s)
        box = torch.ones(1, 1, s) / s
        for _ in range(order):
            k = F.conv1d(k, box, padding=s - 1)
        kernel = kernel[..., None] * k[0, 0]
    return kernel


def ipa_blend_field(batch: int, size: tuple[int, ...], *, grid_cells: int = 4, downscale: int = 2, order: int = 2,
                    device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """Smooth random blending masks in [0, 1], one per sample (IPA's pseudo-correlation maps).

    As the official ``AdvBias`` with ``init_mode='gaussian'`` followed by ``rescale_intensity``:
    N(0, 1) values on a control-point grid (``grid_cells`` intervals per axis over the image at
    ``1 / downscale`` resolution, plus one control point beyond each side), scaled by their maximum
    absolute value and then to unit L2 norm per sample, interpolated with an order-``order``
    B-spline (:func:`bspline_kernel`, transposed convolution), cropped centrally, upsampled
    (bi/trilinear) to ``size``, exponentiated and min-max rescaled to [0, 1] per sample.

    Args:
        batch: number of masks.
        size: spatial size ``(X, Y)`` or ``(X, Y, Z)``.
        grid_cells: control-point intervals per axis (official: spacing 24 at half of 192 voxels = 4).
        downscale: resolution factor the spline is evaluated at (official 2).
        order: B-spline order (official 2).
        device: device of the result.
        generator: random generator, or None for the global one.

    Returns:
        ``(batch, 1, *size)`` float32 masks with minimum 0 and maximum 1 per sample.
    """
    low = [max(1, math.ceil(s / downscale)) for s in size]
    spacing = [max(1, math.ceil(n / grid_cells)) for n in low]
    n_cp = [math.ceil(n / s) + 2 for n, s in zip(low, spacing)]
    param = _draw("normal", (batch, 1, *n_cp), torch.device(device), generator)
    flat = param.reshape(batch, -1)
    flat = flat / (flat.abs().amax(1, keepdim=True) + 1e-20)
    flat = flat / torch.sqrt(1e-6 + flat.pow(2).sum(1, keepdim=True))
    kernel = bspline_kernel(tuple(spacing), order).to(param.device)[None, None]
    conv_t = F.conv_transpose2d if len(size) == 2 else F.conv_transpose3d
    field = conv_t(flat.reshape(param.shape), kernel, stride=tuple(spacing))
    crop = tuple(slice((f - n) // 2, (f - n) // 2 + n) for f, n in zip(field.shape[2:], low))
    field = field[(slice(None), slice(None), *crop)]
    if tuple(field.shape[2:]) != tuple(size):
        field = F.interpolate(field, size=tuple(size), mode="bilinear" if len(size) == 2 else "trilinear",
                              align_corners=True)
    field = torch.exp(field).reshape(batch, -1)
    lo, hi = field.amin(1, keepdim=True), field.amax(1, keepdim=True)
    field = (field - lo + 1e-20) / (hi - lo + 1e-20)
    return field.reshape(batch, 1, *size)


def ipa_blend(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IPA's two complementary spatially-variable blends of two views.

    Args:
        a: first view ``(B, C, *spatial)``.
        b: second view, same shape.
        mask: ``(B, 1, *spatial)`` weights in [0, 1] (broadcast over channels).

    Returns:
        ``(a * m + b * (1 - m), a * (1 - m) + b * m)``.
    """
    return a * mask + b * (1 - mask), a * (1 - mask) + b * mask


def gin_ipa_views(x: torch.Tensor, *, n_image_channels: int | None = None, gin_kwargs: dict | None = None,
                  ipa_kwargs: dict | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The three views of a batch GIN-IPA trains on, stacked along the batch: ``(3 B, C, *spatial)``.

    As the official ``set_input_aug_sup``: three independent GIN views ``g1, g2, g3``
    (:func:`~nnzoo.trainers.augment.gin_augment`); the first two are blended with one random mask
    per sample (:func:`ipa_blend_field`) into ``g1 m + g2 (1 - m)`` and ``g1 (1 - m) + g2 m``; the
    third stays as it is. Channels after ``n_image_channels`` (a cascade's previous-stage
    segmentation) are copied unchanged into every view.

    Args:
        x: ``(B, C, *spatial)`` images.
        n_image_channels: leading channels that are images (None: all).
        gin_kwargs: keyword arguments of :func:`~nnzoo.trainers.augment.gin_augment`.
        ipa_kwargs: keyword arguments of :func:`ipa_blend_field` (``grid_cells``, ``downscale``, ``order``).
        generator: random generator for every draw, or None.

    Returns:
        The views in order blend 1, blend 2, GIN 3 (each ``B`` samples).
    """
    n = x.shape[1] if n_image_channels is None else n_image_channels
    img, rest = x[:, :n], x[:, n:]
    g1, g2, g3 = (gin_augment(img, generator=generator, **(gin_kwargs or {})) for _ in range(N_VIEWS))
    mask = ipa_blend_field(x.shape[0], tuple(x.shape[2:]), device=x.device, generator=generator,
                           **(ipa_kwargs or {})).to(x.dtype)
    v1, v2 = ipa_blend(g1, g2, mask)
    views = torch.cat([v1, v2, g3], 0)
    return torch.cat([views, rest.repeat(N_VIEWS, *([1] * (x.ndim - 1)))], 1) if rest.shape[1] else views


def gin_consistency_loss(logits: torch.Tensor, *, n_views: int = N_VIEWS, regions: bool = False) -> torch.Tensor:
    """KL divergence of every view's prediction from the views' mean prediction (official ``'kld'``).

    With ``p_v`` the class probabilities of view ``v`` and ``p̄`` their mean over the views, the
    official ``torch.nn.KLDivLoss()(log p_v, p̄)`` (default reduction: the mean over every element
    of the stacked views, classes included) is ``mean(p̄ (log p̄ - log p_v))``. ``p̄`` is not detached
    (as official). Region-based plans: every region channel is a two-class (in/out) distribution
    of sigmoid probabilities.

    Args:
        logits: ``(n_views B, C, *spatial)`` logits, the views stacked along the batch.
        n_views: number of views.
        regions: sigmoid (region) outputs instead of softmax over classes.

    Returns:
        The scalar loss (float32, >= 0; 0 when all views agree).

    Raises:
        ValueError: the batch is not a multiple of ``n_views``.
    """
    if logits.shape[0] % n_views:
        raise ValueError(f"batch of {logits.shape[0]} is not {n_views} stacked views")
    z = logits.float()
    if regions:
        log_p = torch.cat([F.logsigmoid(z), F.logsigmoid(-z)], 1)
    else:
        log_p = F.log_softmax(z, 1)
    p = log_p.exp()
    mean = p.reshape(n_views, -1, *p.shape[1:]).mean(0)
    mean = mean.repeat(n_views, *([1] * (p.ndim - 1)))
    return (torch.xlogy(mean, mean) - mean * log_p).mean()  # F.kl_div(log_p, mean, reduction="mean")


@register_trainer(
    description="GIN-IPA: random shallow convolutions + interventional blending of two views + KL consistency",
    paper="Ouyang, Chen, Li, Li, Qin, Bai, Rueckert, Causality-inspired single-source domain generalization for "
    "medical image segmentation, IEEE TMI 42(4):1095-1106, 2023 (early access 2022; arXiv:2111.12525)",
    dims=("2d", "3d"),
    official_code="https://github.com/cheng-01037/Causality-Medical-Image-Domain-Generalization",
    domain_generalisation=True,
)
class nnUNetTrainerGINIPA(NnzooTrainer):
    """GIN-IPA: trains on random-convolution views of every image, blended by smooth random masks.

    Ouyang, Chen, Li, Li, Qin, Bai, Rueckert, "Causality-inspired single-source domain generalization for
    medical image segmentation", IEEE TMI 42(4), 2023, early access 2022 (official code: github
    cheng-01037/Causality-Medical-Image-Domain-Generalization, ``models/exp_trainer.py``,
    ``models/imagefilter*.py``, ``biasfield_interpolate_cchen/adv_bias.py``). Every step, after
    nnU-Net's own augmentation, each image of the batch becomes three views (:func:`gin_ipa_views`):
    two GIN views blended by a smooth random mask and its complement (IPA) and a third GIN view; the
    network (nnU-Net's, unchanged) runs on the ``3 B`` views at once. Loss: nnU-Net's loss
    (Dice + CE with deep supervision) on the first view, plus ``CONSISTENCY_WEIGHT`` (official
    10) times :func:`gin_consistency_loss` over the three views. Validation and inference see the
    original images.

    Carried over (official hyperparameters): GIN with 4 layers, 2 intermediate channels, kernel
    sizes drawn from {1, 3}, N(0, 1) kernels and shifts, leaky ReLU, ``alpha ~ U(0, 1)`` mixing
    with the input and the Frobenius-norm rescaling; IPA masks from N(0, 1) control points with
    4 intervals per axis at half resolution (official: spacing 24 on 192 / 2 voxels), order-2
    B-spline, ``exp`` and min-max to [0, 1]; the seg loss on view 1 only; the KL consistency with
    weight 10 and ``KLDivLoss``'s element-wise mean.

    Deviations from the official code:
        - Channels: the official network is an ImageNet-style 3-channel EfficientNet U-Net fed a
          grey slice tiled 3 times, and GIN maps 3 -> 3 channels. Here GIN maps the plan's ``C``
          image channels to ``C`` (each output channel a different random non-linear function of all
          input channels, as there); the Frobenius norm is per sample over all channels. Channels a
          cascade appends (previous-stage segmentation) are left unchanged.
        - Dimensions: the official code is 2D (IPA had no 3D release; GIN has a 3D version). One code
          path here: GIN with ``conv3d`` for 3D patches, IPA's control-point grid and B-spline in 3D
          with 4 intervals per axis of the patch.
        - IPA grid relative to the patch (4 intervals per axis at half resolution) instead of a fixed
          spacing of 24 pixels (192 px slices); the mask is cropped centrally from the spline and
          interpolated to the patch (the official crop centres the image between control points up
          to one voxel and upsamples by 192 / 97).
        - Deep supervision: the segmentation loss is nnU-Net's deep-supervised loss on view 1's
          outputs at every scale (the official network has one output); the consistency term uses
          the highest-resolution output only (the official one). Every parameter still gets a
          gradient every step (DDP).
        - Region-based plans: the consistency treats every region as a two-class sigmoid
          distribution (the official code is softmax only); the ignore label only affects the
          segmentation loss (consistency needs no label).
        - Optimiser, learning rate schedule, base augmentation and batch size are nnU-Net's
          (official: Adam 3e-4, 2000 epochs, "strongbright" photometric augmentation, batch 20). The
          network sees ``3 B`` patches per step (as official: 3 x 20), so it needs about three
          times the activation memory of nnU-Net's plan for the same batch size.

    Measured (CPU, 2026-12; ``tests/trainers/test_gin.py``, ``test_augment.py`` and the brain phantom of
    ``nnzoo.pipeline.brain_phantoms``, a 64 x 64 ``t1_3t`` slice, z-scored as nnU-Net does):
        - GIN acts on intensities: the views' histograms (both z-scored) differ from the input's by a
          total-variation distance of 0.43 (median of 50 draws; 0 = identical); the order of the four
          label classes' mean intensities changes in 38 % of 200 draws and is inverted (Spearman < 0,
          a T1 -> T2-like contrast flip) in 21 %; the classes stay separable (mean pairwise
          |Δ mean| / pooled std 1.56, input 3.1). The labels are passed through untouched.
        - IPA masks span [0, 1] per sample and are smooth over a quarter of the patch: lag
          autocorrelation 0.93 / 0.74 / 0.22 / -0.21 at 4 / 8 / 16 / 32 px of 64.
        - The consistency loss acts: on the tiny test plans (batch 2, fixed views) it is > 0 and falls
          in 6 steps from 0.0325 to 0.0256 (2D, 32 x 32) and from 0.0205 to 0.0145 (3D, 16^3) while the
          segmentation loss falls from 1.16 to 0.24 (2D).

    Attributes:
        CONSISTENCY_WEIGHT: weight of the KL consistency (official ``lambda_consist`` 10).
        GIN_N_LAYERS, GIN_INTERM_CHANNELS, GIN_KERNEL_SIZES, GIN_FROBENIUS_NORM: see
            :func:`~nnzoo.trainers.augment.gin_augment` (official 4, 2, (1, 3), True).
        IPA_GRID_CELLS, IPA_DOWNSCALE, IPA_SPLINE_ORDER: see :func:`ipa_blend_field` (official 4, 2, 2).
    """

    CONSISTENCY_WEIGHT = 10.0
    GIN_N_LAYERS = 4
    GIN_INTERM_CHANNELS = 2
    GIN_KERNEL_SIZES = (1, 3)
    GIN_FROBENIUS_NORM = True
    IPA_GRID_CELLS = 4
    IPA_DOWNSCALE = 2
    IPA_SPLINE_ORDER = 2
    #: GIN is part of the method: ``--augment gin`` on top is refused (see ``augmented_trainer_class``)
    applied_augmentations: tuple[str, ...] = ("gin",)

    def views(self, data: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """:func:`gin_ipa_views` of a batch with this trainer's hyperparameters."""
        gin_kwargs = {"n_layers": self.GIN_N_LAYERS, "interm_channels": self.GIN_INTERM_CHANNELS,
                      "kernel_sizes": tuple(self.GIN_KERNEL_SIZES), "frobenius_norm": self.GIN_FROBENIUS_NORM}
        ipa_kwargs = {"grid_cells": self.IPA_GRID_CELLS, "downscale": self.IPA_DOWNSCALE,
                      "order": self.IPA_SPLINE_ORDER}
        return gin_ipa_views(data, n_image_channels=image_channel_count(self.dataset_json, data.shape[1]),
                             gin_kwargs=gin_kwargs, ipa_kwargs=ipa_kwargs, generator=generator)

    def gin_ipa_loss(self, outputs, target, batch_size: int) -> tuple[torch.Tensor, dict]:
        """Segmentation loss on view 1 (every deep-supervision output) + weighted consistency (full resolution).

        Args:
            outputs: the network's output for the ``3 B`` views (tensor or deep-supervision list).
            target: nnU-Net's target for the ``B`` original images.
            batch_size: ``B``.

        Returns:
            ``(total, {"loss": segmentation loss, "consistency_loss": unweighted consistency})``.
        """
        ds = isinstance(outputs, (list, tuple))
        outs = list(outputs) if ds else [outputs]
        first = [o[:batch_size] for o in outs]
        seg = self.loss(first if ds else first[0], target)
        cons = gin_consistency_loss(outs[0], regions=self.label_manager.has_regions)
        return seg + self.CONSISTENCY_WEIGHT * cons, {"loss": seg, "consistency_loss": cons}

    def train_step(self, batch: dict) -> dict:
        """One nnU-Net step on the three views of the batch.

        Returns:
            ``loss`` (segmentation loss on view 1, comparable with the validation loss),
            ``consistency_loss`` (unweighted) and ``total_loss`` (optimised), numpy scalars.
        """
        data, target = self.batch_to_device(batch)
        b = data.shape[0]
        with torch.no_grad():
            views = self.views(data)
        return self.nnunet_step_with_parts(views, target, lambda net, x: net(x),
                                           lambda out, t: self.gin_ipa_loss(out, t, b), total_key="total_loss")

    def on_train_start(self) -> None:
        super().on_train_start()
        self.print_to_log_file(f"GIN-IPA: the network sees {N_VIEWS} views of each of the {self.batch_size} patches "
                               f"per step; consistency weight {self.CONSISTENCY_WEIGHT}")

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if self.local_rank == 0 and train_outputs and "consistency_loss" in train_outputs[0]:
            c = float(np.mean([o["consistency_loss"] for o in train_outputs]))
            self.print_to_log_file(f"train consistency loss (this rank, unweighted): {np.round(c, decimals=5)}")
