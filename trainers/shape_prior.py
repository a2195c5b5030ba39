"""Shape prior: prior-aware pseudo-labeling with a WGAN shape critic (semi-supervised)."""

from __future__ import annotations

import math
import time

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

__all__ = ["nnUNetTrainerShapePrior", "CRITIC_KEY"]

CRITIC_KEY = "nnzoo_shape_critic"


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
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities: softmax without background (labels) or sigmoid (regions)."""
        if self.label_manager.has_regions:
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), 1)[:, 1:]

    def pseudo_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Hard pseudo-labels in nnU-Net's target format: label map ``(B, 1, ...)`` or regions ``(B, R, ...)``."""
        if self.label_manager.has_regions:
            return (logits > 0).float()  # sigmoid > 0.5
        return logits.argmax(1, keepdim=True).float()

    def real_masks(self, target: torch.Tensor) -> torch.Tensor:
        """One channel per foreground class (one-hot) or region, float, from an nnU-Net target."""
        if self.label_manager.has_regions:
            return target.float()
        n = self.label_manager.num_segmentation_heads
        return F.one_hot(target[:, 0].long(), n).movedim(-1, 1)[:, 1:].float()

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
        """Critic updates of the pre-training: ``CRITIC_EPOCHS`` passes over ``n_masks`` masks in batches of
        ``CRITIC_BATCH_SIZE`` (the official run: 10001 epochs over the labeled masks)."""
        return max(1, self.CRITIC_EPOCHS * math.ceil(n_masks / self.CRITIC_BATCH_SIZE))

    def critic_separation(self, critic: ShapeCritic, real: torch.Tensor, seed: int = 0) -> float:
        """AUC of the critic telling real masks from corrupted copies of them (lower score = more real).

        Corruptions: 15 % of the voxels flipped, or the mask replaced by thresholded smooth noise
        (blobs of the same size). 0.5 = chance (ties count half), 1 = every real mask scores below every
        corrupted one.
        """
        g = torch.Generator(device="cpu").manual_seed(seed)
        real = real.float().cpu()
        flipped = torch.where(torch.rand(real.shape, generator=g) < 0.15, 1 - real, real)
        coarse = torch.rand((real.shape[0], real.shape[1], *[4] * (real.ndim - 2)), generator=g)
        blobs = (resize_to_critic(coarse, real.shape[-1]) > 0.6).float()
        with torch.no_grad():
            s_real = critic(real.to(self.device)).cpu()
            s_bad = torch.cat([critic(x.to(self.device)).cpu() for x in (flipped, blobs)])
        below = (s_real[:, None] < s_bad[None, :]).float().mean()
        ties = (s_real[:, None] == s_bad[None, :]).float().mean()
        return float(below + 0.5 * ties)

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
            generator = ShapeGenerator(dim, channels, size, features, self.CRITIC_LATENT,
                                       exclusive=not self.label_manager.has_regions).to(self.device)

            def sample_real(n: int) -> torch.Tensor:
                return train[torch.randint(0, train.shape[0], (n,), device=train.device)]

            stats = train_wgan_critic(critic, generator, sample_real, self.critic_steps(n_real), self.CRITIC_BATCH_SIZE,
                                      self.CRITIC_LR, self.CRITIC_CLIP, self.CRITIC_ITERS_PER_G,
                                      self.CRITIC_WARMUP_G_STEPS, self.CRITIC_WARMUP_ITERS)
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

    def prepare_train_step_benchmark(self, unlabeled: torch.Tensor) -> None:
        """Unlabeled batches, and an (untrained, frozen) critic for a trainer built without data, so that
        ``train_step`` runs at its real cost."""
        super().prepare_train_step_benchmark(unlabeled)
        if self.critic is None:
            self.critic = self.build_critic().requires_grad_(False).eval()

    def shape_score(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Mean critic score of D_p's outputs (every scale, every sample); differentiable w.r.t. them."""
        probs = torch.cat([resize_to_critic(self.probabilities(o), self.critic_size) for o in outputs])
        return self.critic(probs).mean()

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.critic is None:  # a resumed run restored it in load_checkpoint
            self.pretrain_critic()
        else:
            self.print_to_log_file("Shape critic restored from the checkpoint (not retrained)")

    # ---------------------------------------------------------------- steps
    def _loss(self, outputs: list[torch.Tensor] | torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        if self.enable_deep_supervision:
            return self.loss(outputs, targets)
        return self.loss(outputs[0] if isinstance(outputs, (list, tuple)) else outputs, targets[0])

    def compute_loss(self, outputs: tuple, targets_l: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Total loss of one step and its parts (``sup``, ``pseudo``, ``shape``, detached floats).

        Args:
            outputs: the training pass ``network(cat(labeled, unlabeled), n_labeled=n)``: D_l's
                outputs on the labeled images, D_l's full-resolution logits on the unlabeled ones
                (no gradient) and D_p's outputs on the unlabeled ones at every scale.
            targets_l: nnU-Net's targets of the labeled images (deep-supervision list).
        """
        lab, pseudo_logits, dp = outputs
        l_s = self._loss(lab, targets_l)
        pseudo = self.pseudo_labels(pseudo_logits)
        pseudo_targets = [pseudo] + [F.interpolate(pseudo, size=o.shape[2:], mode="nearest-exact") for o in dp[1:]]
        l_p = self._loss(dp if self.enable_deep_supervision else dp[0], pseudo_targets)
        shape = self.shape_score(dp)
        loss = self.SUPERVISED_WEIGHT * l_s + l_p + self.SHAPE_WEIGHT * shape
        return loss, {"sup": float(l_s.detach()), "pseudo": float(l_p.detach()), "shape": float(shape.detach())}

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
