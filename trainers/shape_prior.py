"""Shape prior: prior-aware pseudo-labeling with a WGAN shape critic (semi-supervised)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .base import PlanNetworkMixin
from .networks.shape_prior import (
    ShapeCritic,
    ShapeGenerator,
    TwinDecoderUNet,
    resize_to_critic,
    train_wgan_critic,
)
from .registry import register_trainer
from .semisup import SemiSupervisedTrainer

__all__ = ["nnUNetTrainerShapePrior", "CRITIC_KEY", "foreground_probabilities", "hard_pseudo_labels",
           "one_hot_foreground", "critic_updates", "critic_auc", "shape_prior_loss"]

CRITIC_KEY = "nnzoo_shape_critic"


def foreground_probabilities(probs: torch.Tensor, *, regions: bool) -> torch.Tensor:
    """The shape critic's channels of probabilities ``(B, C, ...)``: every region, or the classes without
    the background (channel 0)."""
    return probs if regions else probs[:, 1:]


def hard_pseudo_labels(logits: torch.Tensor, *, regions: bool) -> torch.Tensor:
    """Hard pseudo-labels in nnU-Net's target format: label map ``(B, 1, ...)`` (argmax) or regions
    ``(B, R, ...)`` (``sigmoid > 0.5``), float."""
    if regions:
        return (logits > 0).float()  # sigmoid > 0.5
    return logits.argmax(1, keepdim=True).float()


def one_hot_foreground(target: torch.Tensor, *, num_heads: int, regions: bool) -> torch.Tensor:
    """One channel per foreground class (one-hot of a ``(B, 1, ...)`` label map with ``num_heads`` classes)
    or per region (the region target as it is), float."""
    if regions:
        return target.float()
    return F.one_hot(target[:, 0].long(), num_heads).movedim(-1, 1)[:, 1:].float()


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


def shape_prior_loss(outputs: tuple, targets_l: list[torch.Tensor], *, supervised_loss: Callable,
                     shape_score: Callable[[list[torch.Tensor]], torch.Tensor], regions: bool,
                     deep_supervision: bool, supervised_weight: float,
                     shape_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Prior-aware pseudo-labeling's loss of one training pass.

    ``supervised_weight * L(D_l(x_l), y) + L(D_p(x_u), pseudo) + shape_weight * shape_score(D_p(x_u))``
    with ``pseudo`` the hard pseudo-labels of D_l's full-resolution logits on the unlabeled images,
    nearest-downsampled to D_p's deep-supervision scales.

    Args:
        outputs: the training pass ``network(cat(labeled, unlabeled), n_labeled=n)``: D_l's
            outputs on the labeled images, D_l's full-resolution logits on the unlabeled ones
            (no gradient) and D_p's outputs on the unlabeled ones at every scale.
        targets_l: nnU-Net's targets of the labeled images (deep-supervision list).
        supervised_loss: nnU-Net's loss, ``(outputs, targets) -> scalar``.
        shape_score: D_p's outputs (every scale) -> mean critic score.
        regions: region-based plans (sigmoid pseudo-labels).
        deep_supervision: the loss takes every scale (else the full-resolution output and target).
        supervised_weight: weight of the supervised term.
        shape_weight: weight of the shape term.

    Returns:
        ``(total, {"sup", "pseudo", "shape"})``, the parts as scalar tensors.
    """
    def loss(out, targets):
        if deep_supervision:
            return supervised_loss(out, targets)
        return supervised_loss(out[0] if isinstance(out, (list, tuple)) else out, targets[0])

    lab, pseudo_logits, dp = outputs
    l_s = loss(lab, targets_l)
    pseudo = hard_pseudo_labels(pseudo_logits, regions=regions)
    pseudo_targets = [pseudo] + [F.interpolate(pseudo, size=o.shape[2:], mode="nearest-exact") for o in dp[1:]]
    l_p = loss(dp if deep_supervision else dp[0], pseudo_targets)
    shape = shape_score(dp)
    total = supervised_weight * l_s + l_p + shape_weight * shape
    return total, {"sup": l_s, "pseudo": l_p, "shape": shape}


@register_trainer(
    description="Shape prior: twin decoders, hard pseudo-labels and a frozen WGAN shape critic (semi-supervised)",
    paper="Chen et al., Striving for Simplicity: Simple Yet Effective Prior-Aware Pseudo-Labeling for "
          "Semi-Supervised Ultrasound Image Segmentation, MICCAI 2024",
    dims=("2d", "3d"),
    semi_supervised=True,
    official_code="https://github.com/WUTCM-Lab/Shape-Prior-Semi-Seg",
    quick_hparams={"CRITIC_EPOCHS": 1},  # the official 10001 critic epochs take hours on a CPU
)
class nnUNetTrainerShapePrior(PlanNetworkMixin, SemiSupervisedTrainer):
    """Prior-aware pseudo-labeling (Chen et al., "Striving for Simplicity: Simple Yet Effective
    Prior-Aware Pseudo-Labeling for Semi-Supervised Ultrasound Image Segmentation", MICCAI 2024;
    official code github.com/WUTCM-Lab/Shape-Prior-Semi-Seg) on nnU-Net.

    Shape prior: when training starts (inside ``nnzoo train``, before the segmenter's first
    step) a WGAN (DCGAN critic and generator, weight clipping ``CRITIC_CLIP``, RMSprop
    ``CRITIC_LR``, ``CRITIC_ITERS_PER_G`` critic updates per generator update, ``CRITIC_WARMUP_ITERS``
    for the first ``CRITIC_WARMUP_G_STEPS`` generator updates and every 500th) is trained on the
    labeled masks only: real = one-hot foreground masks (one channel per foreground class, or
    the regions) of patches from the labeled loader, resampled (bi/trilinearly) to
    ``CRITIC_SIZE_2D``² / ``CRITIC_SIZE_3D``³; fake = the generator's soft masks. The critic is
    then frozen (eval mode, no gradients); lower score = more realistic. It is saved in every
    checkpoint (``nnzoo_shape_critic``) and restored on ``--continue`` (never retrained); it is not
    part of the network weights and not needed for prediction.

    Segmenter (:class:`~nnzoo.trainers.networks.shape_prior.TwinDecoderUNet`): the plan's encoder,
    a label decoder D_l (linear-interpolation upsampling) trained on labels, and a pseudo-label
    decoder D_p (nnU-Net's transposed-conv upsampling, dropout ``DROPOUT`` on its bottleneck
    input) trained only on D_l's hard pseudo-labels of unlabeled patches (argmax of the softmax;
    ``sigmoid > 0.5`` per region), computed without gradient in the same pass. Loss::

        SUPERVISED_WEIGHT * L_s(D_l(x_l), y) + L_seg(D_p(x_u), pseudo) + SHAPE_WEIGHT * mean_s critic(p_s)

    with nnU-Net's Dice + CE (or BCE for regions) and deep-supervision weights for L_s and L_seg,
    and ``p_s`` D_p's probabilities (softmax foreground channels / region sigmoids) at every
    deep-supervision scale resampled to the critic's size; the critic score is averaged over
    samples and scales. Inference and validation use D_p (``network(x)``).

    Supported: 2D and 3D, plain label and region plans, ``--labeled N`` and ``imagesUnlabeled``.
    Not supported (error): the ignore label.

    Deviations from the official code:
        - nnU-Net's plan encoder, trained from scratch, instead of an ImageNet-pretrained
          ResNet-34 (not downloadable here); both decoders are nnU-Net-shaped (official: LinkNet-style
          blocks, side outputs of D_p from extra conv heads);
        - nnU-Net's losses, deep supervision (also on pseudo-labels at the coarser scales: the
          official code supervises only D_p's full-resolution output, the side outputs get the
          shape loss only), optimizer, schedule, augmentation and patches;
        - every step takes nnU-Net's full labeled batch plus as many unlabeled patches
          (``UNLABELED_BATCH_RATIO``) through one encoder pass, as the official code pairs a
          labeled and an unlabeled batch of the same size;
        - D_l is evaluated once on unlabeled patches without gradient for the pseudo-labels (the
          official forward also runs D_l a second time, unused); D_p is not run on labeled patches;
        - critic pre-training runs inside training, on a pool of ``CRITIC_POOL_BATCHES``
          labeled-loader batches (nnU-Net's augmented patches, including empty ones; official: a
          separate run on whole images resized to 64²): ``CRITIC_EPOCHS`` (official 10001) passes
          over the pool in batches of ``CRITIC_BATCH_SIZE``; ``CRITIC_HELD_OUT`` of the pool is kept
          out of training to measure how well the critic tells real from corrupted masks (AUC,
          logged; a warning below ``CRITIC_MIN_AUC``). On a CPU the official budget takes hours
          (about 0.2-0.7 s per critic update at 64²): shorten it with ``--hparam CRITIC_EPOCHS=N``
          and check the logged AUC;
          the generator ends in a softmax/sigmoid (official: tanh, fakes in [-1, 1] while masks
          lie in [0, 1]); real masks are nnU-Net's augmented patches, including empty ones;
        - 3D uses a 3D critic of width ``CRITIC_FEATURES_3D`` on 32³ masks; multi-class uses one
          critic input channel per foreground class (official: binary 2D only);
        - under DDP the critic of rank 0 is broadcast to all ranks.
    """

    SUPERVISED_WEIGHT = 2.0
    SHAPE_WEIGHT = 0.1
    DROPOUT = 0.3
    CRITIC_SIZE_2D = 64
    CRITIC_SIZE_3D = 32
    CRITIC_FEATURES_2D = 64
    CRITIC_FEATURES_3D = 32
    CRITIC_LATENT = 100
    CRITIC_EPOCHS = 10001
    CRITIC_BATCH_SIZE = 16
    CRITIC_POOL_BATCHES = 32
    CRITIC_HELD_OUT = 0.2
    CRITIC_MIN_AUC = 0.75
    CRITIC_LR = 5e-5
    CRITIC_CLIP = 0.01
    CRITIC_ITERS_PER_G = 5
    CRITIC_WARMUP_G_STEPS = 25
    CRITIC_WARMUP_ITERS = 100
    network_class = TwinDecoderUNet
    supports_ignore_label = False
    unsupported_labels_reason = "a shape prior cannot be learned from partially annotated masks"
    critic: ShapeCritic | None = None
    critic_auc: float = float("nan")

    @classmethod
    def extra_network_kwargs(cls, ndim: int) -> dict:
        """D_p's bottleneck dropout (``DROPOUT``)."""
        return {"dropout": cls.DROPOUT}

    # ---------------------------------------------------------------- masks
    def pseudo_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """:func:`hard_pseudo_labels` for this dataset's labels."""
        return hard_pseudo_labels(logits, regions=self.label_manager.has_regions)

    def real_masks(self, target: torch.Tensor) -> torch.Tensor:
        """:func:`one_hot_foreground` of an nnU-Net target for this dataset's labels."""
        lm = self.label_manager
        return one_hot_foreground(target, num_heads=lm.num_segmentation_heads, regions=lm.has_regions)

    # ---------------------------------------------------------------- shape critic
    @property
    def critic_size(self) -> int:
        return self.CRITIC_SIZE_2D if len(self.configuration_manager.patch_size) == 2 else self.CRITIC_SIZE_3D

    def _critic_args(self) -> tuple[int, int, int, int]:
        dim = len(self.configuration_manager.patch_size)
        n = self.label_manager.num_segmentation_heads
        channels = n if self.label_manager.has_regions else n - 1
        features = self.CRITIC_FEATURES_2D if dim == 2 else self.CRITIC_FEATURES_3D
        return dim, channels, self.critic_size, features

    def build_critic(self) -> ShapeCritic:
        """A fresh (untrained) critic for this configuration, on the training device."""
        return ShapeCritic(*self._critic_args()).to(self.device)

    def critic_steps(self, n_masks: int) -> int:
        """Critic updates of the pre-training (:func:`critic_updates`): ``CRITIC_EPOCHS`` passes over ``n_masks``
        masks in batches of ``CRITIC_BATCH_SIZE`` (the official run: 10001 epochs over the labeled masks)."""
        return critic_updates(n_masks, epochs=self.CRITIC_EPOCHS, batch_size=self.CRITIC_BATCH_SIZE)

    def critic_separation(self, critic: ShapeCritic, real: torch.Tensor, seed: int = 0) -> float:
        """:func:`critic_auc` of ``critic`` on ``real`` masks, on the training device."""
        return critic_auc(critic, real, device=self.device, seed=seed)

    def collect_real_masks(self, n_batches: int) -> torch.Tensor:
        """Critic-sized masks of ``n_batches`` batches of the labeled training loader."""
        masks = []
        for _ in range(n_batches):
            target = next(self.dataloader_train)["target"]
            target = target[0] if isinstance(target, list) else target
            masks.append(resize_to_critic(self.real_masks(target.to(self.device)), self.critic_size))
        return torch.cat(masks)

    def pretrain_critic(self, real: torch.Tensor | None = None) -> ShapeCritic:
        """Train the shape critic with a WGAN on labeled masks (``real``: a pool of critic-sized masks,
        default: collected from the labeled loader), freeze it and set ``self.critic``.

        Under DDP it is trained once, on rank 0, and broadcast to the other ranks."""
        import torch.distributed as dist

        t0 = time.time()
        dim, channels, size, features = self._critic_args()
        critic = ShapeCritic(dim, channels, size, features).to(self.device)
        stats, n_real, auc = None, 0, float("nan")
        if not self.is_ddp or dist.get_rank() == 0:
            if real is None:
                real = self.collect_real_masks(self.CRITIC_POOL_BATCHES)
            real = real.to(self.device)
            n_held = max(1, int(round(real.shape[0] * self.CRITIC_HELD_OUT))) if real.shape[0] > 1 else 0
            train, held = real[n_held:], real[:n_held]
            n_real = train.shape[0]
            generator = ShapeGenerator(dim, channels, size=size, features=features, latent_dim=self.CRITIC_LATENT,
                                       exclusive=not self.label_manager.has_regions).to(self.device)

            def sample_real(n: int) -> torch.Tensor:
                return train[torch.randint(0, train.shape[0], (n,), device=train.device)]

            stats = train_wgan_critic(critic, generator, sample_real=sample_real, steps=self.critic_steps(n_real),
                                      batch_size=self.CRITIC_BATCH_SIZE, lr=self.CRITIC_LR, clip=self.CRITIC_CLIP,
                                      iters_per_g=self.CRITIC_ITERS_PER_G, warmup_g_steps=self.CRITIC_WARMUP_G_STEPS,
                                      warmup_iters=self.CRITIC_WARMUP_ITERS)
            if n_held:
                auc = self.critic_separation(critic, held)
        if self.is_ddp:
            for t in critic.state_dict().values():
                dist.broadcast(t, src=0)
            critic.requires_grad_(False).eval()
        self.critic = critic
        if stats is not None:
            self.critic_auc = auc
            self.print_to_log_file(
                f"Shape critic: {stats['critic_steps']} critic / {stats['generator_steps']} generator updates on "
                f"{n_real} labeled masks of {size}^{dim} ({channels} channels) in {time.time() - t0:.1f} s; "
                f"W estimate {stats['wasserstein']:.4f}; real vs corrupted held-out masks: AUC {auc:.3f}"
                + (" (rank 0, broadcast to all ranks)" if self.is_ddp else ""))
            if auc < self.CRITIC_MIN_AUC:
                self.print_to_log_file(f"WARNING: the shape critic barely tells real from corrupted masks (AUC "
                                       f"{auc:.3f} < {self.CRITIC_MIN_AUC}); its shape term adds little. Train it "
                                       "longer (--hparam CRITIC_EPOCHS=...).")
        return critic

    def shape_score(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Mean critic score of D_p's outputs (every scale, every sample); differentiable w.r.t. them."""
        regions = self.label_manager.has_regions
        probs = torch.cat([resize_to_critic(foreground_probabilities(self.probabilities(o), regions=regions),
                                            self.critic_size) for o in outputs])
        return self.critic(probs).mean()

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.critic is None:  # a resumed run restored it in load_checkpoint
            self.pretrain_critic()
        else:
            self.print_to_log_file("Shape critic restored from the checkpoint (not retrained)")

    # ---------------------------------------------------------------- steps
    def compute_loss(self, outputs: tuple, targets_l: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Total loss of one step (:func:`shape_prior_loss` with this trainer's settings) and its parts
        (``sup``, ``pseudo``, ``shape``, detached floats)."""
        loss, parts = shape_prior_loss(outputs, targets_l, supervised_loss=self.loss, shape_score=self.shape_score,
                                       regions=self.label_manager.has_regions,
                                       deep_supervision=self.enable_deep_supervision,
                                       supervised_weight=self.SUPERVISED_WEIGHT, shape_weight=self.SHAPE_WEIGHT)
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    def train_step(self, batch: dict) -> dict:
        if self.critic is None:
            raise RuntimeError("the shape critic is not trained: call pretrain_critic() (on_train_start does)")
        data, target = self.batch_to_device(batch)
        targets = target if isinstance(target, list) else [target]
        unlabeled = self.next_unlabeled_batch()
        n_l = data.shape[0]
        return self.nnunet_step(torch.cat((data, unlabeled.to(data.dtype))), targets,
                                lambda net, x: net(x, n_labeled=n_l), lambda out, t: self.compute_loss(out, t)[0])

    # ---------------------------------------------------------------- checkpoints
    def _extra_checkpoint_state(self) -> dict:
        state = super()._extra_checkpoint_state()
        state[CRITIC_KEY] = self.critic.state_dict() if self.critic is not None else None
        return state

    def _restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super()._restore_extra_checkpoint_state(checkpoint)
        state = checkpoint.get(CRITIC_KEY)
        if state is not None:
            critic = self.build_critic()
            critic.load_state_dict(state)
            critic.requires_grad_(False)
            self.critic = critic.eval()
        else:
            self.critic = None
