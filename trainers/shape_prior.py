"""Shape prior: prior-aware pseudo-labeling with a WGAN shape critic (semi-supervised)."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import PlanNetworkMixin, method_hyperparameters
from .critic_cache import critic_cache_key, duration, load_critic_cache, save_critic_cache
from .files import write_json_atomic
from .networks.shape_prior import (
    ShapeCritic,
    ShapeGenerator,
    TwinDecoderUNet,
    critic_auc,
    critic_updates,
    resize_to_critic,
    train_wgan_critic,
)
from .registry import register_trainer
from .semisup import SemiSupervisedTrainer

__all__ = ["nnUNetTrainerShapePrior", "CRITIC_KEY", "CRITIC_RECORD_KEY", "CRITIC_JSON", "foreground_probabilities",
           "hard_pseudo_labels", "one_hot_foreground", "critic_updates", "critic_auc", "shape_prior_loss",
           "critic_cache_key", "save_critic_cache", "load_critic_cache"]

CRITIC_KEY = "nnzoo_shape_critic"
CRITIC_RECORD_KEY = "nnzoo_shape_critic_record"
#: written into the fold folder: how the critic was pre-trained (or reused) and its held-out AUC
CRITIC_JSON = "shape_critic.json"
#: hyperparameters that change only what is printed, not the critic (left out of the cache key)
_LOG_ONLY = ("CRITIC_CACHE", "CRITIC_LOG_PERCENT", "CRITIC_LOG_SECONDS", "CRITIC_ESTIMATE_UPDATES")


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

    Shape prior: as the official code (a separate WGAN run, ``airs/GAN/main.py``, whose critic the
    segmentation run loads), the critic is pre-trained once per training set and reused. When
    training starts, ``nnzoo train`` looks for it in
    ``<nnUNet_preprocessed>/<dataset>/shape_critics/<configuration>_<key>.pt`` (beside the
    configuration's data folder), the key hashing the fold's labeled cases (names, sizes and
    times of their preprocessed segmentations), plans, configuration, patch and batch size, label
    layout and every ``CRITIC_*`` setting (:meth:`critic_cache_fields`): folds, seeds and runs with
    the same labeled cases reuse it; otherwise it trains one and writes it there atomically
    (``CRITIC_CACHE = False``: always train, never cache). The WGAN: DCGAN critic and generator,
    weight clipping ``CRITIC_CLIP``, RMSprop ``CRITIC_LR``, ``CRITIC_ITERS_PER_G`` critic updates
    per generator update, ``CRITIC_WARMUP_ITERS`` for the first ``CRITIC_WARMUP_G_STEPS``
    generator updates and every 500th, a block ending at the end of an epoch as in the official
    loop; real = one-hot foreground masks (one channel per foreground class, or the regions) of
    ``CRITIC_POOL_BATCHES`` labeled-loader batches, resampled (bi/trilinearly) to
    ``CRITIC_SIZE_2D``² / ``CRITIC_SIZE_3D``³, in shuffled epochs of ``CRITIC_BATCH_SIZE``;
    fake = the generator's soft masks. Budget: ``CRITIC_EPOCHS`` epochs (official 10001) or, the
    nnzoo rule, until the AUC of the critic telling ``CRITIC_HELD_OUT`` held-out real masks (never
    trained on) from corrupted copies (:func:`critic_auc`) reaches ``CRITIC_MIN_AUC`` = 0.9,
    checked every ``CRITIC_AUC_EVERY`` updates once the generator warm-up is over, on half of the
    held-out masks; the AUC reported is measured on the other half (no selection on the reported
    masks). The threshold is high because these corruptions are easy: on 16² disks an untrained
    critic (width 8) already scored AUC 0.70, 0.86 after 10 updates, 0.92 after 80; at 32²
    (width 32) ellipses reached 1.0 after 50 updates (measured 2026-12, CPU). ``nnzoo train`` prints
    the budget, an estimate of its cost from the first ``CRITIC_ESTIMATE_UPDATES`` updates, a
    progress line every ``CRITIC_LOG_PERCENT`` % of the budget (or ``CRITIC_LOG_SECONDS``), and
    the AUC at the end, and records it all in the fold folder's ``shape_critic.json`` (``auc``,
    ``epochs``, ``critic_updates``, ``stopped_by``, ``auc_checks``, ``cache``, ``cache_hit``,
    ``seconds``...). The critic is then frozen (eval mode, no gradients; lower score = more
    realistic), saved in every checkpoint (``nnzoo_shape_critic``) and restored on
    ``--continue``; it is not part of the network weights and not needed for prediction.

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
        - critic pre-training on a pool of ``CRITIC_POOL_BATCHES`` labeled-loader batches
          (nnU-Net's augmented patches, including empty ones; official: whole images resized to
          64²), sampled per epoch without replacement, the last batch of an epoch smaller (as the
          official ``DataLoader``); the held-out masks come from the same labeled cases as the
          training masks (other patches and augmentations: with a few labeled cases no case can be
          spared); the AUC rule (above) is nnzoo's: the official run trains its 10001 epochs
          (about 0.5 s per critic update at 64² on a 2-core CPU, i.e. hours; minutes on a GPU);
          the generator ends in a softmax/sigmoid (official: tanh, fakes in [-1, 1] while masks
          lie in [0, 1]);
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
    CRITIC_MIN_AUC = 0.9
    CRITIC_AUC_EVERY = 250
    CRITIC_LR = 5e-5
    CRITIC_CLIP = 0.01
    CRITIC_ITERS_PER_G = 5
    CRITIC_WARMUP_G_STEPS = 25
    CRITIC_WARMUP_ITERS = 100
    CRITIC_CACHE = True
    CRITIC_LOG_PERCENT = 5
    CRITIC_LOG_SECONDS = 60
    CRITIC_ESTIMATE_UPDATES = 5
    network_class = TwinDecoderUNet
    supports_ignore_label = False
    unsupported_labels_reason = "a shape prior cannot be learned from partially annotated masks"
    critic: ShapeCritic | None = None
    critic_auc: float = float("nan")
    critic_record: dict | None = None
    labeled_train_keys: list[str] = []

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

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        self.labeled_train_keys = sorted(tr_keys)
        return tr_keys, val_keys

    def critic_cache_fields(self, real: torch.Tensor | None = None) -> dict:
        """What a pre-trained critic depends on (:func:`critic_cache_key`): the fold's labeled cases (names,
        sizes and modification times of their preprocessed segmentations), or the hash of ``real``
        masks given explicitly; dataset, plans, configuration, patch and batch size, label layout and
        every ``CRITIC_*`` hyperparameter except the logging ones. Folds, seeds and ``--continue``
        runs with the same labeled cases and settings share a critic."""
        if real is not None:
            source = {"masks_sha256": hashlib.sha256(real.detach().float().cpu().numpy().tobytes()).hexdigest(),
                      "shape": list(real.shape)}
        else:
            folder = Path(self.preprocessed_dataset_folder)
            cases = []
            for k in self.labeled_train_keys:
                files = sorted(folder.glob(f"{k}_seg.*"))
                cases.append([k, *[(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]])
            source = {"labeled_cases": cases}
        hparams = {k: v for k, v in method_hyperparameters(type(self)).items()
                   if k.startswith("CRITIC_") and k not in _LOG_ONLY}
        return {"source": source, "dataset": self.plans_manager.dataset_name,
                "plans": self.plans_manager.plans_name, "configuration": self.configuration_name,
                "data_identifier": self.configuration_manager.data_identifier,
                "patch_size": list(self.configuration_manager.patch_size), "batch_size": self.batch_size,
                "critic": list(self._critic_args()), "regions": self.label_manager.has_regions, "hparams": hparams}

    def critic_cache_path(self, real: torch.Tensor | None = None) -> Path:
        """``<nnUNet_preprocessed>/<dataset>/shape_critics/<configuration>_<key>.pt`` (beside the
        configuration's data folder, never in it: nnU-Net infers the dataset format from its files)."""
        key = critic_cache_key(self.critic_cache_fields(real))
        return Path(self.preprocessed_dataset_folder_base) / "shape_critics" / f"{self.configuration_name}_{key}.pt"

    def pretrain_critic(self, real: torch.Tensor | None = None) -> ShapeCritic:
        """The frozen shape critic: read from the cache (``CRITIC_CACHE``) or pre-trained with a WGAN on
        labeled masks (``real``: a pool of critic-sized masks, default: collected from the labeled
        loader) and cached; sets ``self.critic`` and ``self.critic_record`` and writes
        :data:`CRITIC_JSON` into the fold folder. Under DDP rank 0 does it and broadcasts the weights."""
        import torch.distributed as dist

        critic = self.build_critic()
        record = None
        if not self.is_ddp or dist.get_rank() == 0:
            path = self.critic_cache_path(real) if self.CRITIC_CACHE else None
            cached = load_critic_cache(path) if path is not None and path.is_file() else None
            if cached is not None:
                critic.load_state_dict(cached[0])
                record = {**cached[1], "cache": str(path), "cache_hit": True}
                self.print_to_log_file(f"Shape critic reused from {path} (pre-trained once for these labeled cases "
                                       f"and settings; held-out AUC {record['auc']:.3f}, "
                                       f"{record['critic_updates']} critic updates)")
            else:
                if real is None:
                    real = self.collect_real_masks(self.CRITIC_POOL_BATCHES)
                record = self._train_critic(critic, real.to(self.device), path)
                if path is not None:
                    save_critic_cache(path, critic.state_dict(), record)
                record = {**record, "cache": None if path is None else str(path), "cache_hit": False}
        if self.is_ddp:
            for t in critic.state_dict().values():
                dist.broadcast(t, src=0)
        self.critic = critic.requires_grad_(False).eval()
        if record is not None:
            self.critic_record = record
            self.critic_auc = float(record["auc"])
            self._write_critic_json()
        return self.critic

    def _train_critic(self, critic: ShapeCritic, real: torch.Tensor, cache: Path | None) -> dict:
        """WGAN pre-training of ``critic`` on ``real`` masks with progress, estimate and the AUC rule; the record."""
        t0 = time.time()
        dim, channels, size, features = self._critic_args()
        n_held = max(1, int(round(real.shape[0] * self.CRITIC_HELD_OUT))) if real.shape[0] > 1 else 0
        train, held = real[n_held:], real[:n_held]
        check, report = (held[: n_held // 2], held[n_held // 2:]) if n_held >= 2 else (held, held)
        per_epoch = math.ceil(train.shape[0] / self.CRITIC_BATCH_SIZE)
        budget = self.critic_steps(train.shape[0])
        rule = (f"stops early once the AUC on {check.shape[0]} held-out masks reaches {self.CRITIC_MIN_AUC} "
                f"(checked every {self.CRITIC_AUC_EVERY} updates after the warm-up)" if self.CRITIC_MIN_AUC > 0 and n_held else
                "no early stop")
        self.print_to_log_file(
            "Shape critic pre-training (once for these labeled cases and settings"
            + (f"; cached in {cache}" if cache is not None else "") + f"): budget {budget} critic updates = "
            f"{self.CRITIC_EPOCHS} epochs x {per_epoch} batches of up to {self.CRITIC_BATCH_SIZE} of {train.shape[0]} "
            f"labeled masks of {size}^{dim} ({channels} channels); {rule}")
        generator = ShapeGenerator(dim, channels, size=size, features=features, latent_dim=self.CRITIC_LATENT,
                                   exclusive=not self.label_manager.has_regions).to(self.device)
        order: list[torch.Tensor] = []

        def sample_real(n: int) -> torch.Tensor:  # epochs of shuffled batches, as the official DataLoader
            if not order:
                order.extend(torch.randperm(train.shape[0], device=train.device).split(self.CRITIC_BATCH_SIZE))
            return train[order.pop(0)]

        checks: list[list] = []
        state = {"next_log": budget * self.CRITIC_LOG_PERCENT / 100, "last_log": t0}

        def auc_of(masks: torch.Tensor) -> float:
            critic.eval()
            with torch.no_grad():
                for p in critic.parameters():
                    p.clamp_(-self.CRITIC_CLIP, self.CRITIC_CLIP)  # as before the next update
            auc = self.critic_separation(critic, masks)
            critic.train()
            return auc

        def callback(stats: dict) -> bool:
            done, now = stats["critic_steps"], time.time()
            per = (now - t0) / done
            if done == min(self.CRITIC_ESTIMATE_UPDATES, budget):
                self.print_to_log_file(f"Shape critic: {per:.3f} s per critic update (first {done}): at most "
                                       f"{duration(per * budget)} for the budget of {budget}")
            stop = False
            if (self.CRITIC_MIN_AUC > 0 and n_held and done % self.CRITIC_AUC_EVERY == 0 and done < budget
                    and stats["generator_steps"] >= self.CRITIC_WARMUP_G_STEPS):  # never inside the warm-up
                checks.append([done, auc_of(check)])
                stop = checks[-1][1] >= self.CRITIC_MIN_AUC
            if stop or done >= state["next_log"] or now - state["last_log"] >= self.CRITIC_LOG_SECONDS:
                while state["next_log"] <= done:
                    state["next_log"] += budget * self.CRITIC_LOG_PERCENT / 100
                state["last_log"] = now
                self.print_to_log_file(
                    f"Shape critic: {100 * done / budget:.0f}% of the budget ({done}/{budget} updates, "
                    f"{stats['generator_steps']} generator updates), {duration(now - t0)}, at most "
                    f"{duration(per * (budget - done))} left; W {stats['wasserstein']:.4f}"
                    + (f"; held-out AUC {checks[-1][1]:.3f} at {checks[-1][0]}" if checks else ""))
            return stop

        stats = train_wgan_critic(critic, generator, sample_real=sample_real, steps=budget,
                                  batch_size=self.CRITIC_BATCH_SIZE, lr=self.CRITIC_LR, clip=self.CRITIC_CLIP,
                                  iters_per_g=self.CRITIC_ITERS_PER_G, warmup_g_steps=self.CRITIC_WARMUP_G_STEPS,
                                  warmup_iters=self.CRITIC_WARMUP_ITERS, epoch_length=per_epoch, callback=callback)
        auc = self.critic_separation(critic, report) if n_held else float("nan")
        seconds = time.time() - t0
        record = {"auc": auc, "auc_masks": int(report.shape[0]), "auc_checks": checks,
                  "stopped_by": "auc" if stats["stopped_early"] else "budget", "min_auc": self.CRITIC_MIN_AUC,
                  "epochs": stats["critic_steps"] / per_epoch, "budget_epochs": self.CRITIC_EPOCHS,
                  "critic_updates": stats["critic_steps"], "generator_updates": stats["generator_steps"],
                  "budget_updates": budget, "train_masks": int(train.shape[0]), "size": size, "dim": dim,
                  "channels": channels, "wasserstein": stats["wasserstein"], "seconds": round(seconds, 1)}
        self.print_to_log_file(
            f"Shape critic: {stats['critic_steps']} critic / {stats['generator_steps']} generator updates on "
            f"{train.shape[0]} labeled masks of {size}^{dim} ({channels} channels) in {seconds:.1f} s "
            f"({record['epochs']:.1f} of {self.CRITIC_EPOCHS} epochs, stopped by the {record['stopped_by']}); "
            f"W estimate {stats['wasserstein']:.4f}; real vs corrupted held-out masks: AUC {auc:.3f}"
            + (" (rank 0, broadcast to all ranks)" if self.is_ddp else ""))
        if not auc >= self.CRITIC_MIN_AUC:
            self.print_to_log_file(f"WARNING: the shape critic barely tells real from corrupted masks (AUC "
                                   f"{auc:.3f} < {self.CRITIC_MIN_AUC}); its shape term adds little. Train it "
                                   "longer (--hparam CRITIC_EPOCHS=...).")
        return record

    def _write_critic_json(self) -> None:
        """:data:`CRITIC_JSON` in the fold folder (rank 0; atomic)."""
        if self.critic_record is None or getattr(self, "local_rank", 0) != 0 or not self.output_folder:
            return
        path = Path(self.output_folder) / CRITIC_JSON
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.critic_record, default=float)

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
            self._write_critic_json()

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
        state[CRITIC_RECORD_KEY] = self.critic_record
        return state

    def _restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super()._restore_extra_checkpoint_state(checkpoint)
        state = checkpoint.get(CRITIC_KEY)
        if state is not None:
            critic = self.build_critic()
            critic.load_state_dict(state)
            critic.requires_grad_(False)
            self.critic = critic.eval()
            record = checkpoint.get(CRITIC_RECORD_KEY)
            self.critic_record = None if record is None else {**record, "restored_from_checkpoint": True}
        else:
            self.critic = None
