"""BCP: bidirectional copy-paste between labeled and unlabeled images (semi-supervised)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .registry import register_trainer
from .semisup import EMATeacher, SemiSupervisedTrainer

__all__ = ["nnUNetTrainerBCP", "bcp_mask", "mix", "resize_nearest", "largest_component_per_class",
           "masked_dice_ce", "bcp_region_loss"]


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


def largest_component_per_class(seg: np.ndarray) -> np.ndarray:
    """Keep, in every sample, only the largest connected component of each foreground class.

    Args:
        seg: integer label maps ``(N, *spatial)`` (2D images or 3D volumes); 0 is background.

    Returns:
        Same shape and dtype; voxels of removed components become background (0), as in the
        official code. Connectivity is full (8 in 2D, 26 in 3D, as skimage's default).
    """
    import cc3d

    out = np.zeros_like(seg)
    for i, s in enumerate(seg):
        s = np.ascontiguousarray(s)
        if not s.any():
            continue
        labels, n = cc3d.connected_components(s.astype(np.uint16, copy=False),
                                              connectivity=8 if s.ndim == 2 else 26, return_N=True)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        comp_class = np.zeros(n + 1, dtype=np.int64)
        comp_class[labels.ravel()] = s.ravel()
        comp_class = comp_class[1:]
        order = np.lexsort((sizes, comp_class))  # by class, then size: last of each class = largest
        sorted_class = comp_class[order]
        last = np.r_[sorted_class[1:] != sorted_class[:-1], True]
        keep = np.zeros(n + 1, dtype=bool)
        keep[order[last] + 1] = True
        out[i] = np.where(keep[labels], s, 0)
    return out


def masked_dice_ce(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None,
                   smooth: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft Dice loss and cross-entropy restricted to a region.

    Dice is computed per class, background included, over the region of the whole batch (batch
    Dice), then averaged over classes; CE is averaged over the region's voxels. An empty region
    gives zero for both.

    Args:
        logits: ``(N, C, *spatial)``.
        target: integer labels ``(N, 1, *spatial)`` or ``(N, *spatial)``.
        region: ``(N or 1, 1, *spatial)`` 0/1 mask (None: everywhere).
        smooth: Dice smoothing term.

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
    dice_loss = 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()
    ce = F.cross_entropy(logits, target, reduction="none")
    ce_loss = (ce * region[:, 0]).sum() / (region.sum() + 1e-8)
    return dice_loss, ce_loss


def bcp_region_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight_ones: float,
                    weight_zeros: float) -> torch.Tensor:
    """BCP's loss of one mixed batch: ``(w1 (Dice+CE)[M=1] + w0 (Dice+CE)[M=0]) / 2``.

    Args:
        logits: ``(N, C, *spatial)``.
        target: mixed integer target ``(N, 1, *spatial)``.
        mask: copy-paste mask M ``(1, 1, *spatial)``.
        weight_ones: weight of the region where M = 1.
        weight_zeros: weight of the region where M = 0 (the box).
    """
    d1, c1 = masked_dice_ce(logits, target, mask)
    d0, c0 = masked_dice_ce(logits, target, 1.0 - mask)
    return (weight_ones * (d1 + c1) + weight_zeros * (d0 + c0)) / 2


@register_trainer(
    description="BCP: bidirectional copy-paste of labeled/unlabeled patches with an EMA teacher (semi-supervised)",
    paper="Bai, Chen, Li, Shen, Wang; Bidirectional Copy-Paste for Semi-Supervised Medical Image "
          "Segmentation, CVPR 2023",
    dims=("2d", "3d"),
    semi_supervised=True,
)
class nnUNetTrainerBCP(SemiSupervisedTrainer):
    """BCP (Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical Image Segmentation",
    CVPR 2023; official code github.com/DeepMed-Lab-ECNU/BCP) on nnU-Net.

    Stage 1 (first ``PRETRAIN_FRACTION`` of the epochs, labeled data only): pairs of labeled
    patches are mixed, ``a * M + b * (1 - M)``, labels likewise, loss (Dice + CE) / 2. Stage 2:
    the teacher, initialised from the student at the stage switch, is the EMA of the student
    (``EMA_DECAY``); its argmax on the unlabeled patches, reduced to the largest connected
    component per class (per volume in 3D, per image in 2D), gives pseudo-labels. With labeled
    halves ``l_a, l_b`` and unlabeled halves ``u_a, u_b`` of the batches the student sees
    ``X1 = u_a M + l_a (1 - M)`` and ``X2 = l_b M + u_b (1 - M)``; targets are mixed alike, and
    each mixed batch's loss is (Dice + CE) / 2 per region (Dice background included, each region
    over its own mask), weight 1 on ground-truth voxels and ``UNLABELED_WEIGHT`` on pseudo-labelled
    ones; the two losses are summed. Mixing happens on the training device after nnU-Net's
    augmentation; with deep supervision each output is mixed and weighted with nnU-Net's
    deep-supervision weights, using a nearest-downsampled M. Inference uses the student (the
    network weights of the checkpoint) with plain nnU-Net prediction; the teacher is kept in the
    checkpoint (``nnzoo_teacher``) only to resume training.

    Supported: plain label plans, 2D and 3D. Not supported (error): region-based plans, ignore label.

    Deviations from the official code:
        - one training run with nnU-Net's poly learning-rate schedule across both stages (official:
          separate runs, the learning rate restarts for self-training); stage 2 starts from the
          last stage-1 weights, not from the best stage-1 validation checkpoint;
        - nnU-Net's network, augmentation, patch sampling and batch size; each batch is split in
          halves a/b (a batch of one is paired with itself); X1 and X2 go through the student in
          one concatenated forward pass (identical to two passes with nnU-Net's instance norm);
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
    supports_regions = False
    supports_ignore_label = False
    unsupported_labels_reason = "copy-paste of region or partially annotated labels is undefined"


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
            self.teacher = EMATeacher(self.network)
            self.print_to_log_file(f"BCP stage 2 from epoch {self.current_epoch}: teacher initialised from the student")

    def _ds_weights(self, n: int) -> list[float]:
        if n == 1:
            return [1.0]
        w = np.array([1 / (2 ** i) for i in range(n)])
        w[-1] = 0  # as nnU-Net; the output stays in the graph (weight 0), so DDP sees a gradient
        return list(w / w.sum())

    # ---------------------------------------------------------------- steps
    @staticmethod
    def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.shape[0] // 2
        if h == 0:
            return x, x
        return x[:h], x[h:2 * h]

    def stage1_loss(self, data: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """Loss of a labeled-only step: mixed labeled pairs, (Dice + CE) / 2 per output."""
        img_a, img_b = self._halves(data)
        mask = bcp_mask(tuple(data.shape[2:]), self.MASK_RATIO, data.device)
        outputs = self.network(mix(img_a, img_b, mask))
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        loss = 0.0
        for w, out, tgt in zip(self._ds_weights(len(outputs)), outputs, targets):
            y_a, y_b = self._halves(tgt)
            m = resize_nearest(mask, tuple(out.shape[2:]))
            dice, ce = masked_dice_ce(out, mix(y_a, y_b, m))
            loss = loss + w * (dice + ce) / 2
        return loss

    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher argmax, largest connected component per class; ``(N, 1, *spatial)`` long."""
        seg = self.teacher.predict(images).argmax(1).to(torch.int16).cpu().numpy()
        return torch.from_numpy(largest_component_per_class(seg)).to(images.device).long()[:, None]

    def stage2_loss(self, data: torch.Tensor, targets: list[torch.Tensor], unlabeled: torch.Tensor) -> torch.Tensor:
        """Loss of a bidirectional copy-paste step (teacher pseudo-labels on ``unlabeled``)."""
        l_a, l_b = self._halves(data)
        u_a, u_b = self._halves(unlabeled)
        h = l_a.shape[0]
        if u_a.shape[0] != h:  # unlabeled batch size differs: take as many as needed
            idx = torch.arange(2 * h, device=unlabeled.device) % unlabeled.shape[0]
            u_a, u_b = unlabeled[idx[:h]], unlabeled[idx[h:]]
        plab = self.pseudo_labels(torch.cat((u_a, u_b)))
        p_a, p_b = plab[:h], plab[h:]
        mask = bcp_mask(tuple(data.shape[2:]), self.MASK_RATIO, data.device)
        x1 = mix(u_a, l_a, mask)
        x2 = mix(l_b, u_b, mask)
        outputs = self.network(torch.cat((x1, x2)))
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        alpha = self.UNLABELED_WEIGHT
        loss = 0.0
        for w, out, tgt in zip(self._ds_weights(len(outputs)), outputs, targets):
            shape = tuple(out.shape[2:])
            m = resize_nearest(mask, shape)
            y_a, y_b = self._halves(tgt)
            y1 = mix(resize_nearest(p_a, shape), y_a, m)  # pseudo-labels where M = 1
            y2 = mix(y_b, resize_nearest(p_b, shape), m)  # ground truth where M = 1
            loss = loss + w * (bcp_region_loss(out[:h], y1, m, alpha, 1.0)
                               + bcp_region_loss(out[h:], y2, m, 1.0, alpha))
        return loss

    def train_step(self, batch: dict) -> dict:
        data, target = self.batch_to_device(batch)
        targets = target if isinstance(target, list) else [target]
        stage2 = self.in_stage2()
        if stage2 and self.teacher is None:
            self.teacher = EMATeacher(self.network)
        unlabeled = self.next_unlabeled_batch() if stage2 else None
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.stage2_loss(data, targets, unlabeled) if stage2 else self.stage1_loss(data, targets)
        self.optimizer_step(loss)
        if stage2:
            self.teacher.update(self.network, self.EMA_DECAY)
        return {"loss": loss.detach().cpu().numpy()}
