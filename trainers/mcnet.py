"""MC-Net+: mutual consistency between three decoders with different upsampling (semi-supervised)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import PlanNetworkMixin
from .networks.mcnet import MCNet
from .registry import register_trainer
from .semisup import SemiSupervisedTrainer, sigmoid_rampup

__all__ = ["nnUNetTrainerMCNet", "sharpen", "mutual_consistency_loss", "mcnet_loss", "sigmoid_rampup"]


def sharpen(p: torch.Tensor, temperature: float = 0.1, over_classes: bool = False) -> torch.Tensor:
    """MC-Net+'s sharpening of probabilities ``(b, c, ...)``.

    ``over_classes=False`` (the official code): every channel on its own,
    ``s(p) = p^(1/T) / (p^(1/T) + (1 - p)^(1/T))``. With more than two mutually exclusive classes
    this pushes every class whose probability is below 0.5 towards 0, including the most probable
    one when no class reaches 0.5 (e.g. ``(0.4, 0.35, 0.25)`` becomes almost all zeros), so the
    pseudo-label no longer sums to one. ``over_classes=True``: ``s(p)_c = p_c^(1/T) / sum_k p_k^(1/T)``,
    which equals the official formula for two classes (where ``p_0 = 1 - p_1``) and keeps the
    argmax and a distribution for more. Computed in float32 (``p^(1/T)`` underflows in half precision).

    Args:
        p: probabilities in ``[0, 1]`` (softmax over channel 1 for ``over_classes``).
        temperature: ``T`` (0.1 in the paper); smaller is sharper, 1 is the identity.
        over_classes: renormalise over the channel axis instead of per channel.

    Returns:
        Sharpened probabilities, same shape, float32, differentiable.
    """
    p = p.float()
    e = 1.0 / temperature
    if over_classes:  # in log space: p^(1/T) underflows for small p
        return torch.softmax(torch.log(p.clamp_min(1e-12)) * e, 1)
    a = p ** e
    return a / (a + (1.0 - p) ** e)


def mutual_consistency_loss(probs: Sequence[torch.Tensor], temperature: float = 0.1,
                            over_classes: bool = False) -> torch.Tensor:
    """MC-Net+'s mutual consistency ``sum_{i != j} MSE(p_i, s(p_j))``.

    Each MSE is the mean over all elements (batch, channels, voxels). Neither side is detached:
    as in the official code, gradients reach decoder ``i`` through ``p_i`` and decoder ``j``
    through its sharpened pseudo-label ``s(p_j)``.

    Args:
        probs: the decoders' probabilities, each ``(b, c, *spatial)`` and of the same shape.
        temperature: sharpening temperature.
        over_classes: see :func:`sharpen`.

    Returns:
        Scalar loss (float32).
    """
    probs = [p.float() for p in probs]
    sharp = [sharpen(p, temperature, over_classes) for p in probs]
    loss = probs[0].new_zeros(())
    for i, p in enumerate(probs):
        for j, s in enumerate(sharp):
            if i != j:
                loss = loss + F.mse_loss(p, s)
    return loss


def mcnet_loss(outputs: Sequence, target, *, n_labeled: int, supervised_loss: Callable,
               probabilities: Callable[[torch.Tensor], torch.Tensor], temperature: float, over_classes: bool,
               supervised_weight: float, consistency_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MC-Net+ loss of one forward pass over labeled + unlabeled images.

    ``supervised_weight * sum_d supervised_loss(decoder d on labeled) + consistency_weight *
    mutual_consistency_loss(p_d at full resolution on all images)``.

    Args:
        outputs: every decoder's output (a deep-supervision list or a tensor), batch = the
            ``n_labeled`` labeled images first, then the unlabeled ones.
        target: nnU-Net's target of the labeled images (tensor or deep-supervision list).
        n_labeled: number of labeled images at the start of the batch.
        supervised_loss: nnU-Net's loss, ``(outputs, target) -> scalar``.
        probabilities: logits -> probabilities (softmax, or sigmoid for regions), float32.
        temperature: sharpening temperature.
        over_classes: see :func:`sharpen`.
        supervised_weight: ``lambda`` of the official code.
        consistency_weight: current weight of the consistency term.

    Returns:
        ``(total, supervised, consistency)``.
    """
    supervised = 0.0
    probs = []
    for out in outputs:
        if isinstance(out, (list, tuple)):
            supervised = supervised + supervised_loss([o[:n_labeled] for o in out], target)
            full = out[0]
        else:
            supervised = supervised + supervised_loss(out[:n_labeled], target)
            full = out
        probs.append(probabilities(full))
    consistency = mutual_consistency_loss(probs, temperature, over_classes)
    total = supervised_weight * supervised + consistency_weight * consistency
    return total, supervised, consistency


@register_trainer(
    description="MC-Net+: three decoders (transposed conv / linear / nearest upsampling) with mutual "
                "consistency on sharpened predictions (semi-supervised)",
    paper="Wu, Ge, Zhang, Xia, Wang, Cai, Gu, Zhang; Mutual Consistency Learning for Semi-supervised Medical "
          "Image Segmentation, Medical Image Analysis 2022",
    dims=("2d", "3d"),
    semi_supervised=True,
    planner="nnUNetPlannerMCNet",
    official_code="https://github.com/ycwu1997/MC-Net",
)
class nnUNetTrainerMCNet(PlanNetworkMixin, SemiSupervisedTrainer):
    """MC-Net+ (Wu et al., "Mutual Consistency Learning for Semi-supervised Medical Image
    Segmentation", MedIA 2022; official code github.com/ycwu1997/MC-Net, ``mcnet3d_v2`` /
    ``mcnet2d_v2``) on nnU-Net.

    Network (:class:`~nnzoo.trainers.networks.mcnet.MCNet`): the plan's encoder (plain or
    residual) shared by three nnU-Net-shaped decoders that differ only in upsampling: transposed
    convolution (decoder 0), 1x1 conv + (bi/tri)linear, 1x1 conv + nearest; with the official
    dropout: 3D ``Dropout3d(BOTTLENECK_DROPOUT_3D)`` on the shared bottleneck features and
    ``Dropout3d(DECODER_DROPOUT_3D)`` on each decoder's last features, 2D element-wise dropout in
    the encoder with ``ENCODER_DROPOUT_2D`` per stage (0.05 ... 0.5), active in training only. As
    in the official code (3D: 2 labeled + 2 unlabeled) each step takes nnU-Net's full labeled
    batch of ``B`` patches plus ``B`` unlabeled patches, in one forward pass (with nnU-Net's
    instance norm this equals separate passes). Loss::

        lambda * sum_d L_sup(decoder d on labeled images)
          + w * sigmoid_rampup(epoch, RAMPUP_FRACTION * num_epochs) * sum_{i != j} MSE(p_i, s(p_j))

    with ``p_d`` the softmax (sigmoid for region plans) probabilities of decoder ``d`` at full
    resolution on all images (labeled and unlabeled), ``s`` the sharpening with ``TEMPERATURE``
    (per channel as the official code for two classes and regions; for more than two classes
    renormalised over the classes, see :func:`sharpen`), ``L_sup`` nnU-Net's deep-supervised loss
    (Dice + ``CE_WEIGHT`` x CE) and
    ``lambda``, ``w`` and the ramp the official values: 3D ``SUPERVISED_WEIGHT_3D`` = 0.5,
    ``CONSISTENCY_WEIGHT_3D`` = 1, 2D ``SUPERVISED_WEIGHT_2D`` = 1, ``CONSISTENCY_WEIGHT_2D`` = 0.1.

    Ramp mapping: the official weight is ``sigmoid_rampup(iteration // 150, L)``; 3D: ``L = 40``,
    i.e. 6000 of 15000 iterations -> ``RAMPUP_FRACTION_3D = 0.4``; 2D: ``L = 200``, i.e. 30000 of
    30000 iterations -> ``RAMPUP_FRACTION_2D = 1.0``. Here progress is nnU-Net's epoch
    (``current_epoch``), the ramp length ``RAMPUP_FRACTION * num_epochs`` epochs.

    Deep supervision: nnU-Net's deep-supervised loss (scale weights, lowest output weight 0, or
    1e-6 under DDP, as nnU-Net) on each decoder's labeled outputs; the consistency term uses the
    full-resolution outputs only. Every parameter gets a gradient each step under DDP (as in
    nnU-Net). Validation and inference use decoder 0 only (``network(x)``); the predictor builds
    the same network (all three decoders, identical state dict) and gets one tensor.

    Supported: label, region and ignore-label plans (the supervised term is nnU-Net's loss; the
    consistency covers every voxel), 2D and 3D, ``--labeled N`` and ``imagesUnlabeled``.

    nnzoo choices (not in the official code, which has no setting for them; both act in the
    4-class benchmark, so its MC-Net+ results are for this variant):
        - renormalised sharpening with more than two classes, ``s(p)_c = p_c^(1/T) / sum_k
          p_k^(1/T)`` (:func:`sharpen`). The official code sharpens each softmax channel on its
          own, also in its 4-class ACDC 2D script (``train_mcnet_2d.py``); with more than two
          classes that sends every class below 0.5 towards 0, the winning one too when no class
          reaches 0.5, so the pseudo-label stops being a distribution. The two forms are identical
          for two classes; ``SHARPEN_PER_CHANNEL = True`` restores the official one;
        - ``CE_WEIGHT = 1``: the supervised loss is nnU-Net's Dice + CE; the official loss is Dice
          only (the scripts compute CE but only log it; ``CE_WEIGHT = 0`` restores that). Kept so
          that the supervised term equals the nnU-Net baseline's.

        What they change, measured on the low-label benchmark (5 seeds, 2026-12-06, README "nnzoo choices"): official
        per-channel sharpening +0.2 points mean foreground Dice [-0.2, +0.4], Dice only -0.3
        [-0.9, +0.3]; neither separable.

    Deviations from the official code:
        - backbone: the plan's encoder with nnU-Net-shaped decoders (skip concatenation,
          conv-norm-nonlin blocks, deep supervision) instead of V-Net (3D, additive skips,
          batch norm) / the small 2D U-Net; nnU-Net's augmentation, patch sampling, poly
          learning rate and epochs;
        - 2D encoder dropout sits after every convolution of a stage (nnU-Net's
          ``ConvDropoutNormReLU`` position: conv -> dropout -> norm) instead of once between the
          stage's two convolutions; stages beyond the fifth take the last probability (0.5);
        - upsampling of the interpolating decoders: 1x1 convolution then interpolation (the
          official 2D form; official 3D: interpolation then 3x3x3 conv + norm + ReLU); the
          decoders are built in the order transposed conv / linear / nearest, so decoder 0,
          used for inference, is the transposed-conv one in 2D too (official 2D: the bilinear
          decoder comes first and is used for testing);
        - nnU-Net's Dice form (background excluded, batch Dice per plan) with deep supervision;
        - ramp-up measured in epochs of nnU-Net's schedule (fractions above);
        - batch: nnU-Net's planned batch size of labeled patches plus as many unlabeled ones
          (official 2D: 12 + 12 of a batch of 24; 3D: 2 + 2); the default planner keeps nnU-Net's
          patch and reports the memory needed, ``nnUNetPlannerMCNetFit`` shrinks patch and batch
          to fit a smaller GPU.
    """

    TEMPERATURE = 0.1
    CONSISTENCY_WEIGHT_3D = 1.0
    CONSISTENCY_WEIGHT_2D = 0.1
    RAMPUP_FRACTION_3D = 0.4
    RAMPUP_FRACTION_2D = 1.0
    SUPERVISED_WEIGHT_3D = 0.5
    SUPERVISED_WEIGHT_2D = 1.0
    CE_WEIGHT = 1.0
    BOTTLENECK_DROPOUT_3D = 0.5
    DECODER_DROPOUT_3D = 0.5
    ENCODER_DROPOUT_2D = (0.05, 0.1, 0.2, 0.3, 0.5)
    SHARPEN_PER_CHANNEL = False
    network_class = MCNet
    _last_consistency_weight = 0.0

    @classmethod
    def extra_network_kwargs(cls, ndim: int) -> dict:
        """The official dropout: channel dropout at the 3D bottleneck and decoder outputs, encoder dropout in 2D."""
        if ndim == 3:
            return {"bottleneck_dropout": cls.BOTTLENECK_DROPOUT_3D, "decoder_dropout": cls.DECODER_DROPOUT_3D}
        return {"encoder_dropout": tuple(cls.ENCODER_DROPOUT_2D)}

    @property
    def sharpen_over_classes(self) -> bool:
        """Renormalised sharpening: more than two mutually exclusive classes, unless ``SHARPEN_PER_CHANNEL``."""
        return (not self.SHARPEN_PER_CHANNEL and not self.label_manager.has_regions
                and self.label_manager.num_segmentation_heads > 2)

    # ---------------------------------------------------------------- loss
    def _build_loss(self) -> nn.Module:
        loss = super()._build_loss()
        inner = getattr(loss, "loss", loss)  # DeepSupervisionWrapper -> DC_and_CE / DC_and_BCE
        if hasattr(inner, "weight_ce"):
            inner.weight_ce = self.CE_WEIGHT
        return loss

    # ---------------------------------------------------------------- schedule
    @property
    def is_3d(self) -> bool:
        return len(self.configuration_manager.patch_size) == 3

    @property
    def supervised_weight(self) -> float:
        """``lambda`` of the official code (0.5 in 3D, 1 in 2D)."""
        return self.SUPERVISED_WEIGHT_3D if self.is_3d else self.SUPERVISED_WEIGHT_2D

    def consistency_weight(self, epoch: float | None = None) -> float:
        """``w * sigmoid_rampup(epoch, RAMPUP_FRACTION * num_epochs)`` (default: the current epoch)."""
        epoch = self.current_epoch if epoch is None else epoch
        w, frac = ((self.CONSISTENCY_WEIGHT_3D, self.RAMPUP_FRACTION_3D) if self.is_3d
                   else (self.CONSISTENCY_WEIGHT_2D, self.RAMPUP_FRACTION_2D))
        return w * sigmoid_rampup(epoch, frac * self.num_epochs)

    # ---------------------------------------------------------------- steps
    def compute_loss(self, outputs: Sequence, target: torch.Tensor | list[torch.Tensor], n_labeled: int,
                     consistency_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`mcnet_loss` with this trainer's loss, probabilities and settings."""
        return mcnet_loss(outputs, target, n_labeled=n_labeled, supervised_loss=self.loss,
                          probabilities=self.probabilities, temperature=self.TEMPERATURE,
                          over_classes=self.sharpen_over_classes, supervised_weight=self.supervised_weight,
                          consistency_weight=consistency_weight)

    def train_step(self, batch: dict) -> dict:
        data, target = self.batch_to_device(batch)
        unlabeled = self.next_unlabeled_batch()
        weight = self.consistency_weight()
        self._last_consistency_weight = weight

        def loss(outputs, target):
            total, sup, cons = self.compute_loss(outputs, target, data.shape[0], weight)
            return total, {"supervised_loss": sup, "consistency_loss": cons}

        return self.nnunet_step_with_parts(torch.cat((data, unlabeled.to(data.dtype))), target,
                                           lambda net, x: net(x, all_decoders=True), loss)

    # ---------------------------------------------------------------- logging
    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if self.local_rank == 0 and train_outputs and "consistency_loss" in train_outputs[0]:
            s = float(np.mean([o["supervised_loss"] for o in train_outputs]))
            c = float(np.mean([o["consistency_loss"] for o in train_outputs]))
            self.print_to_log_file(f"train supervised loss (sum over decoders, this rank): {np.round(s, 4)}, "
                                   f"consistency loss: {np.round(c, 6)}, consistency weight: "
                                   f"{self._last_consistency_weight:.4g}")
