"""MC-Net+: mutual consistency between three decoders with different upsampling (semi-supervised)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import PlanNetworkMixin
from .networks.mcnet import MCNet
from .registry import register_trainer
from .semisup import SemiSupervisedTrainer

__all__ = ["nnUNetTrainerMCNet", "sharpen", "mutual_consistency_loss", "sigmoid_rampup"]


def sigmoid_rampup(current: float, length: float) -> float:
    """Sigmoid-shaped ramp ``exp(-5 (1 - t)^2)``, ``t = clip(current / length, 0, 1)`` (Laine & Aila 2017).

    Args:
        current: progress, in the units of ``length``.
        length: ramp length; 0 means no ramp (always 1).

    Returns:
        A weight in ``[exp(-5), 1]`` (1 once ``current >= length``).
    """
    if length <= 0:
        return 1.0
    t = float(np.clip(current / length, 0.0, 1.0))
    return float(np.exp(-5.0 * (1.0 - t) ** 2))


def sharpen(p: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """MC-Net+'s sharpening ``s(p) = p^(1/T) / (p^(1/T) + (1 - p)^(1/T))``, element-wise.

    Every channel is sharpened on its own (no renormalisation across classes, as in the official
    code). Computed in float32 (``p^(1/T)`` underflows in half precision).

    Args:
        p: probabilities in ``[0, 1]``.
        temperature: ``T`` (0.1 in the paper); smaller is sharper, 1 is the identity.

    Returns:
        Sharpened probabilities, same shape, float32, differentiable.
    """
    p = p.float()
    e = 1.0 / temperature
    a = p ** e
    return a / (a + (1.0 - p) ** e)


def mutual_consistency_loss(probs: Sequence[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """MC-Net+'s mutual consistency ``sum_{i != j} MSE(p_i, s(p_j))``.

    Each MSE is the mean over all elements (batch, channels, voxels). Neither side is detached:
    as in the official code, gradients reach decoder ``i`` through ``p_i`` and decoder ``j``
    through its sharpened pseudo-label ``s(p_j)``.

    Args:
        probs: the decoders' probabilities, each ``(b, c, *spatial)`` and of the same shape.
        temperature: sharpening temperature.

    Returns:
        Scalar loss (float32).
    """
    probs = [p.float() for p in probs]
    sharp = [sharpen(p, temperature) for p in probs]
    loss = probs[0].new_zeros(())
    for i, p in enumerate(probs):
        for j, s in enumerate(sharp):
            if i != j:
                loss = loss + F.mse_loss(p, s)
    return loss


@register_trainer(
    description="MC-Net+: three decoders (transposed conv / linear / nearest upsampling) with mutual "
                "consistency on sharpened predictions (semi-supervised)",
    paper="Wu, Ge, Zhang, Xia, Wang, Cai, Gu, Zhang; Mutual Consistency Learning for Semi-supervised Medical "
          "Image Segmentation, Medical Image Analysis 2022",
    dims=("2d", "3d"),
    semi_supervised=True,
    planner="nnUNetPlannerMCNet",
)
class nnUNetTrainerMCNet(PlanNetworkMixin, SemiSupervisedTrainer):
    """MC-Net+ (Wu et al., "Mutual Consistency Learning for Semi-supervised Medical Image
    Segmentation", MedIA 2022; official code github.com/ycwu1997/MC-Net, ``mcnet3d_v2`` /
    ``mcnet2d_v2``) on nnU-Net.

    Network (:class:`~nnzoo.trainers.networks.mcnet.MCNet`): the plan's encoder (plain or
    residual) shared by three nnU-Net-shaped decoders that differ only in upsampling: transposed
    convolution (decoder 0), 1x1 conv + (bi/tri)linear, 1x1 conv + nearest. As in the official
    code the planned batch of ``B`` patches is half labeled, half unlabeled
    (``UNLABELED_FRACTION = 0.5``, see :meth:`~nnzoo.trainers.semisup.SemiSupervisedTrainer.batch_split`;
    ``B = 2`` gives one of each): each step runs one forward pass over the labeled patches
    (the last of nnU-Net's batch, which hold its foreground-oversampled ones) concatenated with
    the unlabeled patches; with nnU-Net's instance norm this equals separate passes. Loss::

        lambda * sum_d L_sup(decoder d on labeled images)
          + w * sigmoid_rampup(epoch, RAMPUP_FRACTION * num_epochs) * sum_{i != j} MSE(p_i, s(p_j))

    with ``p_d`` the softmax (sigmoid for region plans) probabilities of decoder ``d`` at full
    resolution on all images (labeled and unlabeled), ``s`` the sharpening with
    ``TEMPERATURE``, ``L_sup`` nnU-Net's deep-supervised loss (Dice + ``CE_WEIGHT`` x CE) and
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

    Deviations from the official code:
        - backbone: the plan's encoder with nnU-Net-shaped decoders (skip concatenation,
          conv-norm-nonlin blocks, deep supervision) instead of V-Net (3D, additive skips,
          batch norm, dropout) / the small 2D U-Net; nnU-Net's augmentation, patch sampling, poly
          learning rate and epochs;
        - upsampling of the interpolating decoders: 1x1 convolution then interpolation (the
          official 2D form; official 3D: interpolation then 3x3x3 conv + norm + ReLU); the
          decoders are built in the order transposed conv / linear / nearest, so decoder 0,
          used for inference, is the transposed-conv one in 2D too (official 2D: the bilinear
          decoder comes first and is used for testing);
        - supervised loss: nnU-Net's Dice + CE (``CE_WEIGHT = 1``) with deep supervision; the
          official loss is Dice only (set ``CE_WEIGHT = 0``; nnU-Net's Dice form, background
          excluded, batch Dice per plan);
        - ramp-up measured in epochs of nnU-Net's schedule (fractions above);
        - batch: nnU-Net's planned batch size, split in halves as the official code does (official
          3D: 2 labeled + 2 unlabeled; nnU-Net's usual 3D batch of 2 gives 1 + 1). A subclass with
          ``UNLABELED_FRACTION = None`` takes a full labeled plus a full unlabeled batch per step
          (twice the memory and time; plan for it).
    """

    TEMPERATURE = 0.1
    CONSISTENCY_WEIGHT_3D = 1.0
    CONSISTENCY_WEIGHT_2D = 0.1
    RAMPUP_FRACTION_3D = 0.4
    RAMPUP_FRACTION_2D = 1.0
    SUPERVISED_WEIGHT_3D = 0.5
    SUPERVISED_WEIGHT_2D = 1.0
    CE_WEIGHT = 1.0
    UNLABELED_FRACTION = 0.5
    network_class = MCNet
    _last_consistency_weight = 0.0

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
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities of a batch (softmax; sigmoid per region for region plans), float32."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)

    def compute_loss(self, outputs: Sequence, target: torch.Tensor | list[torch.Tensor], n_labeled: int,
                     consistency_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MC-Net+ loss of one forward pass over labeled + unlabeled images.

        Args:
            outputs: every decoder's output (a deep-supervision list or a tensor), batch = the
                ``n_labeled`` labeled images first, then the unlabeled ones.
            target: nnU-Net's target of the labeled images (tensor or deep-supervision list).
            n_labeled: number of labeled images at the start of the batch.
            consistency_weight: current weight of the consistency term.

        Returns:
            ``(total, supervised, consistency)`` with ``total = lambda * supervised + weight * consistency``.
        """
        supervised = 0.0
        probs = []
        for out in outputs:
            if isinstance(out, (list, tuple)):
                supervised = supervised + self.loss([o[:n_labeled] for o in out], target)
                full = out[0]
            else:
                supervised = supervised + self.loss(out[:n_labeled], target)
                full = out
            probs.append(self.probabilities(full))
        consistency = mutual_consistency_loss(probs, self.TEMPERATURE)
        total = self.supervised_weight * supervised + consistency_weight * consistency
        return total, supervised, consistency

    def train_step(self, batch: dict) -> dict:
        data, target = self.labeled_part(batch)
        unlabeled = self.next_unlabeled_batch()
        weight = self.consistency_weight()
        self._last_consistency_weight = weight
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            outputs = self.network(torch.cat((data, unlabeled.to(data.dtype))), all_decoders=True)
            total, supervised, consistency = self.compute_loss(outputs, target, data.shape[0], weight)
        self.optimizer_step(total)
        return {"loss": total.detach().cpu().numpy(), "supervised_loss": supervised.detach().cpu().numpy(),
                "consistency_loss": consistency.detach().cpu().numpy()}

    # ---------------------------------------------------------------- logging
    def on_train_start(self) -> None:
        super().on_train_start()
        if "MCNet" not in self.plans_manager.plans_name:
            self.print_to_log_file(
                f"WARNING: plans {self.plans_manager.plans_name!r} were budgeted for the plain U-Net; MC-Net+ "
                "trains three decoders on every patch and may not fit the planned GPU memory. "
                "Plan with nnUNetPlannerMCNet to budget for it.")

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if self.local_rank == 0 and train_outputs and "consistency_loss" in train_outputs[0]:
            s = float(np.mean([o["supervised_loss"] for o in train_outputs]))
            c = float(np.mean([o["consistency_loss"] for o in train_outputs]))
            self.print_to_log_file(f"train supervised loss (sum over decoders, this rank): {np.round(s, 4)}, "
                                   f"consistency loss: {np.round(c, 6)}, consistency weight: "
                                   f"{self._last_consistency_weight:.4g}")
