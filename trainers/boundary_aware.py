"""BA-Net (boundary-aware network) as an nnU-Net trainer: boundary decoder, boundary attention, boundary loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import nn

from . import nnunet_compat as compat
from .base import NnzooTrainer, PlanNetworkMixin
from .networks.banet import BoundaryAwareUNet
from .registry import register_trainer

__all__ = ["BOUNDARY_IGNORE", "label_boundary", "region_boundary", "downsample_boundary", "batch_boundary_targets",
           "nnUNetTrainerBoundaryAware"]

#: value of ignored voxels in boundary targets (the boundary classes are 0 and 1)
BOUNDARY_IGNORE = 2


def _min_pool(x: torch.Tensor) -> torch.Tensor:
    """Minimum over the full 3x3 (2D) or 3x3x3 (3D) neighbourhood; outside the array counts as +inf."""
    pool = {4: F.max_pool2d, 5: F.max_pool3d}.get(x.ndim)
    if pool is None:
        raise ValueError(f"expected a (b, c, x, y[, z]) tensor, got shape {tuple(x.shape)}")
    return -pool(-x, kernel_size=3, stride=1, padding=1)  # max_pool pads with -inf


def label_boundary(label: torch.Tensor, ignore_label: int | None = None,
                   ignore_value: int = BOUNDARY_IGNORE) -> torch.Tensor:
    """Boundary ground truth of a label map: ``label > min(label over the 3x3(x3) neighbourhood)``.

    This is the inner one-voxel shell of every class at every interface with a lower class
    (the union over levels of ``mask - erosion(mask)`` with ``mask = label > level``, as in
    BA-Net's ``get_boundary`` with width 3). Voxels next to the patch border are judged only by
    their neighbours inside the patch. Ignored voxels never make a neighbour a boundary voxel and
    are themselves marked ``ignore_value``.

    Args:
        label: ``(b, 1, x, y[, z])`` integer-valued label map (any dtype).
        ignore_label: label value to ignore, or None.
        ignore_value: value written at ignored voxels.

    Returns:
        ``(b, 1, x, y[, z])`` float tensor with 0 (no boundary), 1 (boundary), ``ignore_value``.
    """
    lab = label.float()
    ignored = None
    if ignore_label is not None:
        ignored = label == ignore_label
        lab = lab.masked_fill(ignored, float("inf"))
    out = (lab > _min_pool(lab)).float()
    if ignored is not None:
        out.masked_fill_(ignored, float(ignore_value))
    return out


def region_boundary(regions: torch.Tensor, ignore_mask: torch.Tensor | None = None,
                    ignore_value: int = BOUNDARY_IGNORE) -> torch.Tensor:
    """Boundary ground truth of region (sigmoid) targets: union of the inner shells of all regions.

    A voxel is boundary if, for some region channel, it lies inside the region and a neighbour
    lies outside. For nested regions (BraTS-style) this equals :func:`label_boundary` of the
    label map the regions were built from.

    Args:
        regions: ``(b, r, x, y[, z])`` binary region channels (bool or float).
        ignore_mask: ``(b, 1, x, y[, z])`` binary, true at ignored voxels, or None.
        ignore_value: value written at ignored voxels.

    Returns:
        ``(b, 1, x, y[, z])`` float tensor with 0, 1 and ``ignore_value``.
    """
    r = regions.float()
    ignored = None
    if ignore_mask is not None:
        ignored = ignore_mask.bool()
        r = r.masked_fill(ignored, float("inf"))
    out = (r > _min_pool(r)).any(1, keepdim=True).float()
    if ignored is not None:
        out.masked_fill_(ignored, float(ignore_value))
    return out


def downsample_boundary(boundary: torch.Tensor, targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """Nearest-downsample a full-resolution boundary map to the shape of every deep-supervision target.

    Uses ``nearest-exact`` like nnU-Net's ``DownsampleSegForDSTransform``.

    Args:
        boundary: ``(b, 1, *spatial)`` boundary map at the resolution of ``targets[0]``.
        targets: deep-supervision targets, highest resolution first.

    Returns:
        One boundary map per target.
    """
    out = [boundary]
    for t in targets[1:]:
        size = tuple(t.shape[2:])
        out.append(boundary if size == tuple(boundary.shape[2:])
                   else F.interpolate(boundary, size=size, mode="nearest-exact"))
    return out


def batch_boundary_targets(target: torch.Tensor | list[torch.Tensor], *, has_regions: bool,
                           ignore_label: int | None = None,
                           has_ignore_channel: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """Boundary ground truth for an nnU-Net batch target, with the structure of ``target``.

    Computed (without gradient) from the full-resolution target (:func:`label_boundary` or
    :func:`region_boundary`) and nearest-downsampled to every deep-supervision scale
    (:func:`downsample_boundary`).

    Args:
        target: nnU-Net's batch target: one tensor, or a list (deep supervision, highest
            resolution first). Label plans: ``(b, 1, ...)`` labels; region plans: ``(b, r, ...)``
            region channels, plus a last ignore channel if ``has_ignore_channel``.
        has_regions: region-based (sigmoid) plans.
        ignore_label: the ignore label of label plans, or None.
        has_ignore_channel: region plans whose target ends with an ignore channel.

    Returns:
        Boundary maps ``(b, 1, ...)`` (0, 1, :data:`BOUNDARY_IGNORE`), one per target.
    """
    targets = target if isinstance(target, (list, tuple)) else [target]
    full = targets[0]
    with torch.no_grad():
        if has_regions:
            bdr = region_boundary(full[:, :-1], full[:, -1:]) if has_ignore_channel else region_boundary(full)
        else:
            bdr = label_boundary(full, ignore_label)
        out = downsample_boundary(bdr, list(targets))
    return out if isinstance(target, (list, tuple)) else out[0]


@register_trainer(
    description="BA-Net: boundary decoder whose boundary maps gate the segmentation decoder, Dice+CE on both",
    paper="Hu, Liao, Ye, Xia, Boundary-Aware Network for Kidney Parsing, KiPA 2022 (MICCAI 2022 challenges, "
    "Springer 2023, pp. 9-17); Hu, Liao, Xia, Boundary-Aware Network for Abdominal Multi-Organ Segmentation, "
    "arXiv:2208.13774, 2022",
    dims=("2d", "3d"),
    planner="nnUNetPlannerBoundaryAware",
    official_code="https://github.com/ShishuaiHu/BA-Net",
    benchmark="bench_boundary_aware",
)
class nnUNetTrainerBoundaryAware(PlanNetworkMixin, NnzooTrainer):
    """BA-Net: boundary-aware U-Net trained with deep-supervised Dice+CE on segmentation and boundaries.

    Hu, Liao, Ye, Xia, "Boundary-Aware Network for Kidney Parsing", KiPA 2022 (MICCAI 2022 challenges,
    Springer 2023) and Hu, Liao, Xia, "Boundary-Aware Network for Abdominal Multi-Organ Segmentation",
    arXiv:2208.13774 (official code: github ShishuaiHu/BA-Net, branches kipa22/amos22, built on
    nnU-Net v1). Network: :class:`nnzoo.trainers.networks.banet.BoundaryAwareUNet`
    (the plan's encoder, plain or residual, so one trainer serves nnU-Net and ResEnc plans). Loss:
    nnU-Net's loss on the segmentation outputs plus ``BOUNDARY_LOSS_WEIGHT`` times deep-supervised
    Dice+CE (softmax, 2 classes, background excluded from Dice) on the boundary outputs, with
    nnU-Net's scale weights. The boundary ground truth is computed in the training step from the
    full-resolution target (:func:`label_boundary`, :func:`region_boundary`) and nearest-downsampled
    to every deep-supervision scale.

    Plan with ``nnUNetPlannerBoundaryAware`` (plain U-Net plans) or
    ``nnUNetPlannerBoundaryAwareResEncM``/``...ResEncL`` (residual-encoder plans): they budget GPU
    memory for the second decoder (about 1.8x the plain U-Net's feature maps at equal patch size).

    Deviations from the official code:
        - nnU-Net v2 building blocks (encoder from the plan incl. residual encoders, v2 decoder
          blocks, v2 data augmentation, 5 folds) instead of nnU-Net v1's Generic_UNet, 4-fold split.
        - Boundary ground truth is computed on the training device after augmentation
          (official: with skimage on the CPU in the augmentation pipeline); same binary map
          (``label > min over the 3x3(x3) neighbourhood``, patch borders not boundary).
        - Region-based (sigmoid) plans: boundary = union of the inner shells of all region
          channels (the official code has no regions). The segmentation term is nnU-Net's
          Dice+BCE; the boundary term stays a 2-class softmax Dice+CE.
        - Ignore label (not in the official code): ignored voxels create no boundary and are
          excluded from both loss terms (boundary target value ``BOUNDARY_IGNORE``).
        - The boundary heads output logits and the attention uses ``softmax`` of them, as in the
          official code; the attention map is not detached (as official).
        - Logging: ``loss`` is the segmentation loss (as the official ``run_iteration`` returns,
          comparable with the validation loss); the boundary loss is logged separately.
        - Decoder blocks follow the plan (conv bias, norm, kernel sizes, ``n_conv_per_stage_decoder``)
          like nnU-Net v2's ``UNetDecoder``; the v1 code used bias-free transposed convolutions.
        - The official, disabled, consistency loss (``cons_cond = False``) is not implemented.
    """

    BOUNDARY_LOSS_WEIGHT = 1.0
    network_class = BoundaryAwareUNet
    boundary_loss: nn.Module | None = None

    def _build_loss(self) -> nn.Module:
        seg_loss = super()._build_loss()
        has_ignore = self.label_manager.ignore_label is not None
        loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                               "do_bg": False, "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=1,
                              ignore_label=BOUNDARY_IGNORE if has_ignore else None,
                              dice_class=MemoryEfficientSoftDiceLoss)
        if compat.do_i_compile(self):
            loss.dc = torch.compile(loss.dc)
        if isinstance(seg_loss, DeepSupervisionWrapper):  # same scale weights as the segmentation loss
            loss = DeepSupervisionWrapper(loss, seg_loss.weight_factors)
        self.boundary_loss = loss
        return seg_loss

    def boundary_targets(self, target: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """:func:`batch_boundary_targets` of a batch target for this dataset's labels."""
        lm = self.label_manager
        return batch_boundary_targets(target, has_regions=lm.has_regions, ignore_label=lm.ignore_label,
                                      has_ignore_channel=lm.has_regions and lm.has_ignore_label)

    def train_step(self, batch: dict) -> dict:
        """One optimisation step (nnU-Net's ``train_step``) on segmentation + boundary loss.

        Returns:
            ``loss`` (segmentation loss, as logged by the official code), ``boundary_loss`` and
            ``total_loss`` (the optimised sum), as numpy scalars.
        """
        data, target = self.batch_to_device(batch)
        bdr_target = self.boundary_targets(target)

        def loss(outputs, target):
            seg_out, bdr_out = outputs
            seg, bdr = self.loss(seg_out, target), self.boundary_loss(bdr_out, bdr_target)
            return seg + self.BOUNDARY_LOSS_WEIGHT * bdr, {"loss": seg, "boundary_loss": bdr}

        return self.nnunet_step_with_parts(data, target, lambda net, x: net(x, return_boundary=True), loss,
                                           total_key="total_loss")

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if self.local_rank == 0 and train_outputs and "boundary_loss" in train_outputs[0]:
            b = float(np.mean([o["boundary_loss"] for o in train_outputs]))
            self.print_to_log_file(f"train boundary loss (this rank): {np.round(b, decimals=4)}")
