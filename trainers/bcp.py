"""BCP: bidirectional copy-paste between labeled and unlabeled images (semi-supervised)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import nnunet_compat as compat
from .registry import register_trainer
from .semisup import EMATeacher, SemiSupervisedTrainer

__all__ = ["nnUNetTrainerBCP", "bcp_mask", "mix", "resize_nearest", "largest_component_per_class",
           "single_component_counts", "lcc_filter_counts", "masked_dice_ce", "bcp_region_loss", "halves", "unlabeled_halves",
           "one_object_classes", "bcp_stage1_loss", "bcp_stage2_loss", "STAGE1_KEY"]

#: checkpoint key of the best stage-1 weights (and optimizer state) and of the connectivity statistics
STAGE1_KEY = "nnzoo_bcp_stage1"


def bcp_mask(spatial_shape: tuple[int, ...], ratio: float = 2 / 3, device: torch.device | str = "cpu",
             rng: np.random.Generator | np.random.RandomState | None = None) -> torch.Tensor:
    """Copy-paste mask M: ones with one zero box of ``floor(ratio * size)`` voxels along every axis.

    Args:
        spatial_shape: patch shape (2D or 3D).
        ratio: box size relative to the patch (2/3 in the paper).
        device: device of the mask.
        rng: numpy random generator for the box position (default: numpy's global one).

    Returns:
        float tensor of shape ``(1, 1, *spatial_shape)``; the box lies entirely inside the patch,
        at a uniformly random position.
    """
    rng = rng if rng is not None else np.random
    box = [int(s * ratio) for s in spatial_shape]
    starts = [int(rng.randint(0, s - b + 1)) for s, b in zip(spatial_shape, box)]
    mask = torch.ones((1, 1, *spatial_shape), device=device)
    mask[(slice(None), slice(None), *(slice(a, a + b) for a, b in zip(starts, box)))] = 0
    return mask


def mix(inside_ones: torch.Tensor, inside_zeros: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``inside_ones * M + inside_zeros * (1 - M)`` for images or label maps (exact for integers)."""
    return torch.where(mask.bool(), inside_ones, inside_zeros)


def resize_nearest(x: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """Nearest ('nearest-exact', as nnU-Net's deep-supervision targets) resize of a mask or label map."""
    if tuple(x.shape[2:]) == tuple(spatial_shape):
        return x
    return F.interpolate(x.float(), size=tuple(spatial_shape), mode="nearest-exact").to(x.dtype)


def largest_component_per_class(seg: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """Keep, in every sample, only the largest connected component of each of ``classes``.

    Args:
        seg: integer label maps ``(N, *spatial)`` (2D images or 3D volumes); 0 is background.
        classes: the classes to filter (default: every foreground class present); other classes
            keep all their components.

    Returns:
        Same shape and dtype; voxels of removed components become background (0), as in the
        official code. Connectivity is full (8 in 2D, 26 in 3D, as skimage's default), computed
        with acvl_utils' ``remove_all_but_largest_component``.
    """
    from acvl_utils.morphology.morphology_helper import remove_all_but_largest_component

    out = seg.copy()
    for i, s in enumerate(seg):
        for c in (np.unique(s[s > 0]) if classes is None else classes):
            mask = s == c
            if mask.any():
                out[i][mask & ~remove_all_but_largest_component(mask)] = 0
    return out


def lcc_filter_counts(before: np.ndarray, after: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class: ``[samples containing it, samples where the filter removed some of it, voxels removed]``.

    Args:
        before: label maps ``(N, *spatial)`` before :func:`largest_component_per_class`.
        after: the same after it.
        num_classes: classes including background (row 0 stays zero).
    """
    counts = np.zeros((num_classes, 3), np.int64)
    flat_b, flat_a = before.reshape(len(before), -1), after.reshape(len(after), -1)
    for c in range(1, num_classes):
        removed = ((flat_b == c) & (flat_a != c)).sum(1)
        counts[c] = ((flat_b == c).any(1).sum(), (removed > 0).sum(), removed.sum())
    return counts


def single_component_counts(target: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class: ``[patches where it is one connected component, patches where it occurs]``.

    Args:
        target: label maps ``(N, 1, *spatial)`` or ``(N, *spatial)``.
        num_classes: classes including background.
    """
    import cc3d

    target = target[:, 0] if target.ndim > 2 and target.shape[1] == 1 else target
    counts = np.zeros((num_classes, 2), np.int64)
    for s in target:
        s = np.ascontiguousarray(s.astype(np.uint16))
        for c in np.unique(s[s > 0]):
            n = cc3d.connected_components(s == c, connectivity=8 if s.ndim == 2 else 26, return_N=True)[1]
            counts[int(c)] += (n == 1, 1)
    return counts


def masked_dice_ce(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None,
                   smooth: float = 1e-5, ddp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft Dice loss and cross-entropy restricted to a region.

    Dice is computed per class, background included, over the region of the whole batch (batch
    Dice), then averaged over classes; under DDP (``ddp``) its sums are gathered over all ranks
    first, as nnU-Net's batch Dice does, so the Dice is that of the global batch. CE is averaged
    over the region's voxels (per rank, as nnU-Net's CE). An empty region gives zero for both.

    Args:
        logits: ``(N, C, *spatial)``.
        target: integer labels ``(N, 1, *spatial)`` or ``(N, *spatial)``.
        region: ``(N or 1, 1, *spatial)`` 0/1 mask (None: everywhere).
        smooth: Dice smoothing term.
        ddp: reduce the Dice sums over the process group (with gradients, nnU-Net's ``AllGatherGrad``).

    Returns:
        ``(dice_loss, ce_loss)``, scalars.
    """
    logits = logits.float()
    if target.ndim == logits.ndim:
        target = target[:, 0]
    target = target.long()
    if region is None:
        region = torch.ones_like(logits[:, :1])
    region = region.float().expand_as(logits[:, :1])
    probs = torch.softmax(logits, 1)
    onehot = torch.zeros_like(probs).scatter_(1, target[:, None], 1.0)
    axes = [0, *range(2, logits.ndim)]
    inter = (probs * onehot * region).sum(axes)
    denom = ((probs + onehot) * region).sum(axes)
    if ddp:
        from nnunetv2.utilities.ddp_allgather import AllGatherGrad

        inter, denom = AllGatherGrad.apply(inter).sum(0), AllGatherGrad.apply(denom).sum(0)
    dice_loss = 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()
    ce = F.cross_entropy(logits, target, reduction="none")
    ce_loss = (ce * region[:, 0]).sum() / (region.sum() + 1e-8)
    return dice_loss, ce_loss


def bcp_region_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, weight_ones: float,
                    weight_zeros: float, ddp: bool = False) -> torch.Tensor:
    """BCP's loss of one mixed batch: ``(w1 (Dice+CE)[M=1] + w0 (Dice+CE)[M=0]) / 2``.

    Args:
        logits: ``(N, C, *spatial)``.
        target: mixed integer target ``(N, 1, *spatial)``.
        mask: copy-paste mask M ``(1, 1, *spatial)``.
        weight_ones: weight of the region where M = 1.
        weight_zeros: weight of the region where M = 0 (the box).
        ddp: see :func:`masked_dice_ce`.
    """
    d1, c1 = masked_dice_ce(logits, target, mask, ddp=ddp)
    d0, c0 = masked_dice_ce(logits, target, 1.0 - mask, ddp=ddp)
    return (weight_ones * (d1 + c1) + weight_zeros * (d0 + c0)) / 2


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Halves ``a, b`` of ``ceil(n / 2)`` samples each: an odd batch shares its middle sample (every
    sample is used), a batch of one is paired with itself."""
    n = x.shape[0]
    h = (n + 1) // 2
    return x[:h], x[n - h:]


def unlabeled_halves(unlabeled: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Halves ``u_a, u_b`` of ``h`` unlabeled samples each (:func:`halves`; an unlabeled batch of another
    size is cycled through to give ``2 h`` samples)."""
    u_a, u_b = halves(unlabeled)
    if u_a.shape[0] != h:  # unlabeled batch size differs: take as many as needed
        idx = torch.arange(2 * h, device=unlabeled.device) % unlabeled.shape[0]
        u_a, u_b = unlabeled[idx[:h]], unlabeled[idx[h:]]
    return u_a, u_b


def one_object_classes(counts: np.ndarray, min_single_fraction: float) -> list[int]:
    """Foreground classes that are one connected object in at least ``min_single_fraction`` of the patches
    they occur in (or never occurred), from :func:`single_component_counts` sums ``(classes, 2)``."""
    return [c for c in range(1, counts.shape[0])
            if counts[c, 1] == 0 or counts[c, 0] >= min_single_fraction * counts[c, 1]]


def bcp_stage1_loss(outputs, targets: Sequence[torch.Tensor], mask: torch.Tensor, *, weights: Sequence[float],
                    ddp: bool = False) -> torch.Tensor:
    """Loss of a labeled-only step: the mixed labeled pairs ``a M + b (1 - M)``, (Dice + CE) / 2 per output.

    Args:
        outputs: the network's output on the mixed images (deep-supervision list or tensor).
        targets: nnU-Net's targets of the labeled batch, one per output.
        mask: copy-paste mask M ``(1, 1, *patch)``, nearest-resized to every output.
        weights: deep-supervision weight of each output.
        ddp: see :func:`masked_dice_ce`.
    """
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    loss = 0.0
    for w, out, tgt in zip(weights, outputs, targets):
        y_a, y_b = halves(tgt)
        m = resize_nearest(mask, tuple(out.shape[2:]))
        dice, ce = masked_dice_ce(out, mix(y_a, y_b, m), ddp=ddp)
        loss = loss + w * (dice + ce) / 2
    return loss


def bcp_stage2_loss(outputs, targets: Sequence[torch.Tensor], mask: torch.Tensor, p_a: torch.Tensor,
                    p_b: torch.Tensor, *, weights: Sequence[float], unlabeled_weight: float,
                    ddp: bool = False) -> torch.Tensor:
    """Loss of a bidirectional copy-paste step.

    The student saw ``cat(X1, X2)`` with ``X1 = u_a M + l_a (1 - M)`` and ``X2 = l_b M + u_b (1 - M)``;
    targets are mixed alike from the pseudo-labels ``p_a, p_b`` and the labels, and each half gets
    :func:`bcp_region_loss` with ``unlabeled_weight`` on its pseudo-labelled region.

    Args:
        outputs: the student's output on ``cat(X1, X2)`` (deep-supervision list or tensor).
        targets: nnU-Net's targets of the labeled batch, one per output.
        mask: copy-paste mask M ``(1, 1, *patch)``.
        p_a, p_b: the teacher's pseudo-labels of ``u_a, u_b`` ``(h, 1, *patch)``.
        weights: deep-supervision weight of each output.
        unlabeled_weight: weight of pseudo-labelled voxels (``alpha``).
        ddp: see :func:`masked_dice_ce`.
    """
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    h = p_a.shape[0]
    loss = 0.0
    for w, out, tgt in zip(weights, outputs, targets):
        shape = tuple(out.shape[2:])
        m = resize_nearest(mask, shape)
        y_a, y_b = halves(tgt)
        y1 = mix(resize_nearest(p_a, shape), y_a, m)  # pseudo-labels where M = 1
        y2 = mix(y_b, resize_nearest(p_b, shape), m)  # ground truth where M = 1
        loss = loss + w * (bcp_region_loss(out[:h], y1, m, weight_ones=unlabeled_weight, weight_zeros=1.0, ddp=ddp)
                           + bcp_region_loss(out[h:], y2, m, weight_ones=1.0, weight_zeros=unlabeled_weight, ddp=ddp))
    return loss


@register_trainer(
    description="BCP: bidirectional copy-paste of labeled/unlabeled patches with an EMA teacher (semi-supervised)",
    paper="Bai, Chen, Li, Shen, Wang; Bidirectional Copy-Paste for Semi-Supervised Medical Image "
          "Segmentation, CVPR 2023",
    dims=("2d", "3d"),
    semi_supervised=True,
    official_code="https://github.com/DeepMed-Lab-ECNU/BCP",
)
class nnUNetTrainerBCP(SemiSupervisedTrainer):
    """BCP (Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical Image Segmentation",
    CVPR 2023; official code github.com/DeepMed-Lab-ECNU/BCP) on nnU-Net.

    Stage 1 (first ``PRETRAIN_FRACTION`` of the epochs, labeled data only): pairs of labeled
    patches are mixed, ``a * M + b * (1 - M)``, labels likewise, loss (Dice + CE) / 2. As in the
    official code, stage 2 starts student and teacher from the best stage-1 model (network and
    optimizer state), "best" by nnU-Net's own criterion for ``checkpoint_best`` (the EMA of the
    validation pseudo-Dice; official: the validation Dice every 200 iterations). The teacher is
    then the EMA of the student (``EMA_DECAY``); its argmax on the unlabeled patches, reduced to the
    largest connected component per class (per volume in 3D, per image in 2D), gives
    pseudo-labels; the reduction applies to the classes that are one connected object in at least
    ``LCC_MIN_SINGLE_FRACTION`` of the labeled patches they occur in (counted during stage 1), as the
    official datasets' structures are, and not to fragmented classes, which it would mostly delete. With labeled
    halves ``l_a, l_b`` and unlabeled halves ``u_a, u_b`` of the batches the student sees
    ``X1 = u_a M + l_a (1 - M)`` and ``X2 = l_b M + u_b (1 - M)``; targets are mixed alike, and
    each mixed batch's loss is (Dice + CE) / 2 per region (Dice background included, each region
    over its own mask), weight 1 on ground-truth voxels and ``UNLABELED_WEIGHT`` on pseudo-labelled
    ones; the two losses are summed. Mixing happens on the training device after nnU-Net's
    augmentation; with deep supervision each output is mixed and weighted with nnU-Net's
    deep-supervision weights, using a nearest-downsampled M. Inference uses the student (the
    network weights of the checkpoint) with plain nnU-Net prediction; the teacher is kept in the
    checkpoint (``nnzoo_teacher``) only to resume training.

    Labeled exposure: every step loads nnU-Net's full labeled batch of ``B`` patches (plus ``B``
    unlabeled ones), but, as in the official code, the labeled pixels the loss sees add up to half
    a batch: stage 1 mixes the two labeled halves into ``B / 2`` images; in stage 2 ``l_a`` fills
    the ``1 - M`` part of ``X1`` and ``l_b`` the ``M`` part of ``X2`` (``B / 2`` patches' worth of
    labeled pixels, the rest pseudo-labelled). Other semi-supervised trainers here put the whole
    labeled batch into their supervised loss.

    Which classes the largest-component filter acted on is logged at the end of every stage-2
    epoch and counted over the run (pseudo-labels with the class, pseudo-labels it changed,
    voxels it removed, per class); ``on_train_end`` writes the counts to the fold folder's
    ``bcp_lcc.json`` (under DDP rank 0's pseudo-labels only).

    Supported: plain label plans, 2D and 3D. Not supported (error): region-based plans, ignore label.

    nnzoo choices:
        - ``PRETRAIN_FRACTION = 0.2`` of the epochs for stage 1, one run with nnU-Net's poly
          learning rate across both stages, and the optimizer state carried over from the best
          stage-1 model. The official code differs per dataset: ACDC (2D) pre-trains 10000 and
          self-trains 30000 iterations (25 % stage 1), both at a constant learning rate of 0.01,
          and stage 2 loads the stage-1 optimizer state with the weights; LA (3D) pre-trains 2000
          and self-trains 15000 iterations (about 12 %), stage 2 with a new SGD optimizer and a
          step decay (x0.1 every 2500 iterations). nnzoo follows ACDC in carrying the optimizer
          over (the official 2D/4-class setting, like the benchmark), takes a fraction between the
          two and nnU-Net's poly schedule so that the total length and schedule equal the
          baseline's; the best stage-1 model is chosen by nnU-Net's EMA pseudo-Dice on its
          validation batches (official: validation Dice every 200 iterations);
        - ``LCC_MIN_SINGLE_FRACTION = 0.9``: the largest-component filter skips classes that are
          not one object in at least 90 % of the labeled patches they occur in (official: every
          class, ``LCC_MIN_SINGLE_FRACTION = 0`` restores that).

        What they change, measured on the low-label benchmark (5 seeds, 2026-12-06, README "nnzoo choices"): official filter
        +0.2 points mean foreground Dice [-0.1, +0.6], 25 % stage 1 +0.2 [-0.1, +0.4]; neither separable.

    Other deviations from the official code:
        - nnU-Net's network, augmentation, patch sampling and batch size; each batch is split in
          halves a/b (an odd batch shares its middle patch, a batch of one is paired with
          itself); X1 and X2 go through the student in one concatenated forward pass (identical to
          two passes with nnU-Net's instance norm);
        - the box position is uniform over all positions that fit (official: ``randint(0, size - box)``,
          never touching the far border); one mask per batch as in the official code;
        - Dice is nnU-Net's form (non-squared denominators, smooth 1e-5, batch Dice) for every
          class including background, masked per region (official ACDC: squared denominators;
          LA: per-sample); the stage-1 loss is this Dice + CE on the whole mixed patch (as the
          official LA code);
        - the teacher runs in eval mode and its floating-point buffers are averaged too (no
          difference for nnU-Net's instance-norm networks).
    """

    PRETRAIN_FRACTION = 0.2
    EMA_DECAY = 0.99
    UNLABELED_WEIGHT = 0.5
    MASK_RATIO = 2 / 3
    LCC_MIN_SINGLE_FRACTION = 0.9
    supports_regions = False
    supports_ignore_label = False
    unsupported_labels_reason = "copy-paste of region or partially annotated labels is undefined"
    stage1_best: dict | None = None
    component_counts: np.ndarray | None = None
    lcc_counts: np.ndarray | None = None
    _lcc_epoch: np.ndarray | None = None

    # ---------------------------------------------------------------- schedule
    @property
    def stage2_start_epoch(self) -> int:
        """First epoch of stage 2 (self-training with the teacher)."""
        return int(round(self.PRETRAIN_FRACTION * self.num_epochs))

    def in_stage2(self) -> bool:
        return self.current_epoch >= self.stage2_start_epoch

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.in_stage2() and self.teacher is None:
            self.start_stage2()

    def start_stage2(self) -> None:
        """Student (and its optimizer state) from the best stage-1 model, teacher = student."""
        if self.stage1_best is not None:
            compat.unwrap_network(self.network).load_state_dict(self.stage1_best["network"])
            self.optimizer.load_state_dict(self.stage1_best["optimizer"])
            origin = f"the best stage-1 model (epoch {self.stage1_best['epoch']}, EMA pseudo Dice " \
                     f"{self.stage1_best['ema']:.4f})"
        else:
            origin = "the student (no stage-1 epoch was validated)"
        if self.is_ddp:  # every rank counted its own patches: decide on the counts of all of them
            import torch.distributed as dist

            n = self.label_manager.num_segmentation_heads
            counts = torch.as_tensor(self.component_counts if self.component_counts is not None
                                     else np.zeros((n, 2), np.int64), device=self.device)
            dist.all_reduce(counts)
            self.component_counts = counts.cpu().numpy()
        self.teacher = EMATeacher(self.network)
        self.print_to_log_file(f"BCP stage 2 from epoch {self.current_epoch}: student and teacher from {origin}; "
                               f"largest-component filter on classes {self.lcc_classes()}")

    def on_epoch_end(self) -> None:
        epoch, ema = self.current_epoch, self.logger.get_value("ema_fg_dice", step=-1)
        if epoch < self.stage2_start_epoch and (self.stage1_best is None or ema > self.stage1_best["ema"]):
            state = {k: v.detach().cpu().clone() for k, v in compat.unwrap_network(self.network).state_dict().items()}
            self.stage1_best = {"network": state, "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                                "ema": float(ema), "epoch": epoch}
        super().on_epoch_end()

    def lcc_classes(self) -> list[int]:
        """Classes whose pseudo-labels are reduced to their largest component (see ``LCC_MIN_SINGLE_FRACTION``)."""
        n = self.label_manager.num_segmentation_heads
        counts = self.component_counts if self.component_counts is not None else np.zeros((n, 2), np.int64)
        return one_object_classes(counts, self.LCC_MIN_SINGLE_FRACTION)

    # ---------------------------------------------------------------- steps
    def _output_weights(self) -> list[float]:
        """Weight of each network output: nnU-Net's deep-supervision weights (``[1.0]`` without deep supervision)."""
        return compat.deep_supervision_weights(self.loss) or [1.0]

    def stage1_loss(self, outputs, targets: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """:func:`bcp_stage1_loss` with the deep-supervision weights of nnU-Net's loss."""
        return bcp_stage1_loss(outputs, targets, mask, weights=self._output_weights(), ddp=self.is_ddp)

    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher argmax, largest connected component per one-object class; ``(N, 1, *spatial)`` long."""
        seg = self.teacher.predict(images).argmax(1).to(torch.int16).cpu().numpy()
        classes = self.lcc_classes()
        out = largest_component_per_class(seg, classes)
        counts = lcc_filter_counts(seg, out, self.label_manager.num_segmentation_heads)
        self.lcc_counts = counts if self.lcc_counts is None else self.lcc_counts + counts
        self._lcc_epoch = counts if self._lcc_epoch is None else self._lcc_epoch + counts
        return torch.from_numpy(out).to(images.device).long()[:, None]

    def lcc_record(self) -> dict:
        """The largest-component filter's counts over the run, per class (written to ``bcp_lcc.json``)."""
        n = self.label_manager.num_segmentation_heads
        counts = self.lcc_counts if self.lcc_counts is not None else np.zeros((n, 3), np.int64)
        single = self.component_counts if self.component_counts is not None else np.zeros((n, 2), np.int64)
        names = {int(v): k for k, v in self.dataset_json["labels"].items() if isinstance(v, int)}
        filtered = self.lcc_classes()
        return {"min_single_fraction": self.LCC_MIN_SINGLE_FRACTION, "filtered_classes": filtered,
                "per_class": {str(c): {"name": names.get(c, str(c)), "filtered": c in filtered,
                                       "labeled_patches_one_object": int(single[c, 0]),
                                       "labeled_patches_with_class": int(single[c, 1]),
                                       "pseudo_labels_with_class": int(counts[c, 0]),
                                       "pseudo_labels_changed": int(counts[c, 1]),
                                       "voxels_removed": int(counts[c, 2])} for c in range(1, n)}}

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if self._lcc_epoch is not None:
            c = self._lcc_epoch
            acted = [f"class {k}: {c[k, 1]} of {c[k, 0]} pseudo-labels, {c[k, 2]} voxels removed"
                     for k in range(1, len(c)) if k in self.lcc_classes()]
            self.print_to_log_file("BCP largest-component filter this epoch (this rank): "
                                   + ("; ".join(acted) if acted else "no class filtered"))
            self._lcc_epoch = None

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.lcc_counts is not None and getattr(self, "local_rank", 0) == 0 and self.output_folder:
            import json
            import os

            path = os.path.join(self.output_folder, "bcp_lcc.json")
            with open(f"{path}.tmp-{os.getpid()}", "w") as f:
                json.dump(self.lcc_record(), f, indent=1)
            os.replace(f"{path}.tmp-{os.getpid()}", path)

    def stage2_inputs(self, data: torch.Tensor, unlabeled: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixed images ``cat(X1, X2)`` of a bidirectional copy-paste step and the teacher's pseudo-labels
        ``(p_a, p_b)`` of the unlabeled halves."""
        l_a, l_b = halves(data)
        h = l_a.shape[0]
        u_a, u_b = unlabeled_halves(unlabeled, h)
        plab = self.pseudo_labels(torch.cat((u_a, u_b)))
        return torch.cat((mix(u_a, l_a, mask), mix(l_b, u_b, mask))), plab[:h], plab[h:]

    def stage2_loss(self, outputs, targets: list[torch.Tensor], mask: torch.Tensor, p_a: torch.Tensor,
                    p_b: torch.Tensor) -> torch.Tensor:
        """:func:`bcp_stage2_loss` with the deep-supervision weights of nnU-Net's loss."""
        return bcp_stage2_loss(outputs, targets, mask, p_a, p_b, weights=self._output_weights(),
                               unlabeled_weight=self.UNLABELED_WEIGHT, ddp=self.is_ddp)

    def train_step(self, batch: dict) -> dict:
        data, target = self.batch_to_device(batch)
        targets = target if isinstance(target, list) else [target]
        mask = bcp_mask(tuple(data.shape[2:]), self.MASK_RATIO, data.device)
        if not self.in_stage2():
            full = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
            counts = single_component_counts(np.asarray(full.cpu()), self.label_manager.num_segmentation_heads)
            self.component_counts = counts if self.component_counts is None else self.component_counts + counts
            img_a, img_b = halves(data)
            return self.nnunet_step(mix(img_a, img_b, mask), targets, lambda net, x: net(x),
                                    lambda out, t: self.stage1_loss(out, t, mask))
        if self.teacher is None:
            self.start_stage2()
        unlabeled = self.next_unlabeled_batch()
        pseudo = {}

        def forward(net, _):
            mixed, pseudo["a"], pseudo["b"] = self.stage2_inputs(data, unlabeled.to(data.dtype), mask)
            return net(mixed)

        out = self.nnunet_step(data, targets, forward,
                               lambda out, t: self.stage2_loss(out, t, mask, pseudo["a"], pseudo["b"]))
        self.teacher.update(self.network, self.EMA_DECAY)
        return out

    # ---------------------------------------------------------------- checkpoints
    def _extra_checkpoint_state(self) -> dict:
        stage1 = {"best": self.stage1_best, "component_counts": self.component_counts, "lcc_counts": self.lcc_counts}
        return {**super()._extra_checkpoint_state(), STAGE1_KEY: stage1}

    def _restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super()._restore_extra_checkpoint_state(checkpoint)
        stage1 = checkpoint.get(STAGE1_KEY) or {}
        self.stage1_best = stage1.get("best")
        self.component_counts = stage1.get("component_counts")
        self.lcc_counts = stage1.get("lcc_counts")
