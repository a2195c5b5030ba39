"""Mean Teacher: an EMA teacher, consistency of softmax outputs under input noise and dropout (semi-supervised baseline)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .registry import register_trainer
from .semisup import EMATeacher, SemiSupervisedTrainer, sigmoid_rampup

__all__ = ["nnUNetTrainerMeanTeacher", "consistency_mse", "noisy", "ramped_consistency_weight", "ema_decay",
           "mean_teacher_loss", "add_dropout", "loss_weights"]


def _dropout_after(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the block's output through its ``nnzoo_dropout``."""
    return module.nnzoo_dropout(output)


def _dropout_bottleneck(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a decoder: the bottleneck (last skip) through its ``nnzoo_bottleneck_dropout``."""
    skips = list(args[0])
    skips[-1] = module.nnzoo_bottleneck_dropout(skips[-1])
    return (skips, *args[1:])


def _dropout_before(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the module's input through its ``nnzoo_dropout``."""
    return (module.nnzoo_dropout(args[0]), *args[1:])


def _blocks(stage: nn.Module) -> list[nn.Module]:
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU

    return [m for m in stage.modules() if isinstance(m, ConvDropoutNormReLU)]


def add_dropout(network: nn.Module, *, stage_dropout: Sequence[float] = (), bottleneck: float = 0.0,
                output: float = 0.0) -> nn.Module:
    """Add SSL4MIS's dropout to an nnU-Net ``PlainConvUNet``/``ResidualEncoderUNet`` (in place).

    Element-wise ``nn.Dropout`` modules hang off the blocks through forward hooks: they hold no
    parameters, so state dicts keep the plan network's keys (checkpoints and nnU-Net's predictor
    load unchanged), and follow ``train()``/``eval()``.

    Args:
        network: the plan network (``encoder.stages``, ``decoder.seg_layers``).
        stage_dropout: per encoder stage (shallowest first; deeper stages take the last value),
            dropout on the output of the stage's first conv block, i.e. between its first and
            second convolution after the nonlinearity (SSL4MIS's 2D ``ConvBlock``:
            conv-BN-LeakyReLU-Dropout-conv-BN-LeakyReLU, probabilities 0.05, 0.1, 0.2, 0.3, 0.5).
        bottleneck: dropout on the bottleneck features the decoder starts from (SSL4MIS's
            ``unet_3D``: ``dropout1`` on ``center``, 0.3).
        output: dropout on the full-resolution features before the last segmentation head
            (``unet_3D``: ``dropout2`` before ``final``, 0.3).

    Returns:
        ``network``.

    Raises:
        ValueError: the network has no encoder stages with conv blocks but ``stage_dropout`` asks for them.
    """
    if any(p > 0 for p in stage_dropout):
        found = False
        for s, stage in enumerate(network.encoder.stages):
            p = float(stage_dropout[min(s, len(stage_dropout) - 1)])
            blocks = _blocks(stage)
            if p > 0 and blocks:
                if not hasattr(blocks[0], "nnzoo_dropout"):
                    blocks[0].register_forward_hook(_dropout_after)
                blocks[0].nnzoo_dropout = nn.Dropout(p)
                found = True
        if not found:
            raise ValueError("the network's encoder has no conv blocks to add dropout to")
    if bottleneck > 0:
        if not hasattr(network.decoder, "nnzoo_bottleneck_dropout"):
            network.decoder.register_forward_pre_hook(_dropout_bottleneck)
        network.decoder.nnzoo_bottleneck_dropout = nn.Dropout(bottleneck)
    if output > 0:
        head = network.decoder.seg_layers[-1]
        if not hasattr(head, "nnzoo_dropout"):
            head.register_forward_pre_hook(_dropout_before)
        head.nnzoo_dropout = nn.Dropout(output)
    return network


def loss_weights(*, official_supervised: float, official_consistency: float,
                 keep_nnunet_scale: bool) -> tuple[float, float]:
    """Weights ``(supervised, consistency)`` of nnzoo's Mean Teacher loss.

    SSL4MIS's loss is ``official_supervised * (Dice + CE) + official_consistency * MSE``
    (0.5 and the ramped 0.1). With ``keep_nnunet_scale`` the whole loss is divided by
    ``official_supervised``: nnU-Net's supervised loss keeps its full scale (the supervised step
    equals the baseline's) and the consistency term keeps the official weight *relative* to it.

    Returns:
        ``(1, official_consistency / official_supervised)`` or ``(official_supervised, official_consistency)``.
    """
    if keep_nnunet_scale:
        return 1.0, official_consistency / official_supervised
    return official_supervised, official_consistency


def noisy(images: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """The teacher's input: ``images + clamp(N(0, std^2), -clip, clip)`` (SSL4MIS's Mean Teacher)."""
    return images + torch.clamp(torch.randn_like(images) * std, -clip, clip)


def consistency_mse(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two probability maps, over every element (batch, classes, voxels)."""
    return torch.mean((student_probs.float() - teacher_probs.float()) ** 2)


def ramped_consistency_weight(progress: float, *, weight: float, rampup: float, warmup: float) -> float:
    """``weight * sigmoid_rampup(progress, rampup)``, 0 while ``progress < warmup`` (SSL4MIS's schedule).

    Args:
        progress: fraction of training done.
        weight: final weight of the consistency term.
        rampup: ramp length, as a fraction of training.
        warmup: fraction of training without consistency term.

    Returns:
        The consistency weight.
    """
    return 0.0 if progress < warmup else weight * sigmoid_rampup(progress, rampup)


def ema_decay(step: int, max_decay: float) -> float:
    """SSL4MIS's EMA decay of update ``step`` (0-based): ``min(1 - 1 / (step + 1), max_decay)``; the first
    update copies the student.

    Args:
        step: 0-based index of the teacher update.
        max_decay: the decay once ramped up (``EMA_DECAY``).
    """
    return min(1.0 - 1.0 / (step + 1), max_decay)


def mean_teacher_loss(outputs: torch.Tensor | Sequence[torch.Tensor], target, teacher_probs: torch.Tensor, *,
                      n_labeled: int, supervised_loss: Callable, probabilities: Callable[[torch.Tensor], torch.Tensor],
                      weight: float, supervised_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean Teacher's loss of one student pass over labeled + unlabeled images.

    ``supervised_weight * supervised_loss(student on labeled, target) + weight *
    consistency_mse(p(student on unlabeled), teacher_probs)``, the consistency on the
    full-resolution output only.

    Args:
        outputs: the student's outputs (deep-supervision list or tensor), the ``n_labeled`` labeled
            images first, then the unlabeled ones.
        target: nnU-Net's target of the labeled images.
        teacher_probs: the teacher's probabilities of the (noisy) unlabeled images.
        n_labeled: labeled images at the start of the batch.
        supervised_loss: nnU-Net's loss, ``(outputs, target) -> scalar``.
        probabilities: logits -> probabilities (softmax, or sigmoid for regions).
        weight: the consistency weight.
        supervised_weight: the supervised loss's weight.

    Returns:
        ``(total, {"supervised_loss": ..., "consistency_loss": ...})`` (the parts unweighted).
    """
    deep = isinstance(outputs, (list, tuple))
    full = outputs[0] if deep else outputs
    labeled = [o[:n_labeled] for o in outputs] if deep else outputs[:n_labeled]
    sup = supervised_loss(labeled, target)
    cons = consistency_mse(probabilities(full[n_labeled:]), teacher_probs)
    return supervised_weight * sup + weight * cons, {"supervised_loss": sup, "consistency_loss": cons}


@register_trainer(
    description="Mean Teacher: EMA teacher, MSE consistency of softmax outputs under input noise and dropout, "
                "sigmoid ramp-up (semi-supervised baseline)",
    paper="Tarvainen & Valpola, Mean teachers are better role models: Weight-averaged consistency targets improve "
          "semi-supervised deep learning results, NeurIPS 2017 (as in the SSL4MIS collection)",
    official_code="https://github.com/HiLab-git/SSL4MIS",
    dims=("2d", "3d"),
    semi_supervised=True,
)
class nnUNetTrainerMeanTeacher(SemiSupervisedTrainer):
    """Mean Teacher (Tarvainen & Valpola, NeurIPS 2017) as in SSL4MIS's ``train_mean_teacher_2D/3D.py``, on nnU-Net.

    Each step takes nnU-Net's labeled batch of ``B`` patches and ``B`` unlabeled patches; the
    student sees both in one pass, the teacher (an EMA of the student, decay
    ``min(1 - 1 / (step + 1), EMA_DECAY)`` at 0-based update ``step``) sees the unlabeled patches
    plus clipped Gaussian noise (``NOISE_STD``, ``NOISE_CLIP``). Loss::

        L_sup(student on labeled) + w(t) / SUPERVISED_WEIGHT * mean((softmax(student(u)) - softmax(teacher(u + noise)))^2)

    with ``L_sup`` nnU-Net's deep-supervised Dice + CE and ``w(t) = CONSISTENCY_WEIGHT *
    sigmoid_rampup(t, RAMPUP_FRACTION)`` over the fraction ``t`` of training done, zero for the
    first ``WARMUP_FRACTION_2D`` of it in 2D (SSL4MIS 2D: 0.1 ramped over all 30000 iterations,
    no consistency in the first 1000; SSL4MIS 3D: the same ramp, no warm-up, hence
    ``WARMUP_FRACTION_3D = 0``). Region plans use sigmoids instead of the softmax. Inference
    uses the student in eval mode (no dropout), as nnU-Net's predictor runs it.

    Loss scale: SSL4MIS minimises ``0.5 * (Dice + CE) + w(t) * MSE`` (``SUPERVISED_WEIGHT`` = 0.5).
    nnzoo divides that whole loss by 0.5 (``KEEP_NNUNET_LOSS_SCALE = True``): nnU-Net's
    supervised loss keeps its full scale, so the supervised step is the baseline's, and the
    consistency weight relative to it is the official one (0.1 / 0.5 = 0.2 once ramped up; the
    former ``L_sup + w(t) * MSE`` had half of it). ``KEEP_NNUNET_LOSS_SCALE = False`` uses the
    official form literally (``0.5 * L_sup + w(t) * MSE``: the same relative weight, half the
    step of the whole loss, i.e. half the effective learning rate). The literal form,
    measured on the low-label benchmark (5 seeds, 2026-12-06, README "nnzoo choices"): -0.4 points mean foreground Dice [-1.2, +0.2], not separable.

    Perturbations of the teacher, as in SSL4MIS: input noise *and* dropout. The student and the
    teacher are nnU-Net's plan network with SSL4MIS's dropout added (:func:`add_dropout`,
    element-wise, state dicts unchanged): 2D, as SSL4MIS's ``UNet``, after the first conv block
    of every encoder stage with ``ENCODER_DROPOUT_2D`` (0.05, 0.1, 0.2, 0.3, 0.5; deeper stages
    0.5); 3D, as SSL4MIS's ``unet_3D``, ``BOTTLENECK_DROPOUT_3D`` = 0.3 on the bottleneck features
    and ``OUTPUT_DROPOUT_3D`` = 0.3 before the output head. SSL4MIS never puts ``ema_model`` in
    eval mode (the 3D script calls ``ema_model.train()``), so its teacher predicts with dropout:
    here too (``TEACHER_TRAIN_MODE = True``). nnU-Net's InstanceNorm keeps no running statistics,
    so train and eval mode differ only by the dropout (with dropout 0 the teacher's train- and
    eval-mode predictions are identical; tested).

    Deviations from SSL4MIS:
        - nnU-Net's network (with the dropout above), augmentation, patch sampling, optimizer,
          poly schedule and deep-supervised Dice + CE (SSL4MIS: U-Net with batch norm, ``(Dice +
          CE) / 2`` on the full-resolution output; the consistency on the full-resolution output
          only, as here);
        - 2D dropout after the first conv block of each of nnU-Net's encoder stages: 2D plans
          often have more than SSL4MIS's five stages (the extra ones take 0.5);
        - the ramp and the warm-up are fractions of nnU-Net's schedule (SSL4MIS: ``iter // 150``
          over 200 steps of 30000 iterations, 1000 warm-up iterations in 2D);
        - the loss scale (above): the official relative weight at nnU-Net's supervised scale.
    """

    CONSISTENCY_WEIGHT = 0.1
    SUPERVISED_WEIGHT = 0.5
    KEEP_NNUNET_LOSS_SCALE = True
    RAMPUP_FRACTION = 1.0
    WARMUP_FRACTION_2D = 1000 / 30000
    WARMUP_FRACTION_3D = 0.0
    EMA_DECAY = 0.99
    NOISE_STD = 0.1
    NOISE_CLIP = 0.2
    ENCODER_DROPOUT_2D = (0.05, 0.1, 0.2, 0.3, 0.5)
    BOTTLENECK_DROPOUT_3D = 0.3
    OUTPUT_DROPOUT_3D = 0.3
    TEACHER_TRAIN_MODE = True
    ema_steps: int = 0
    _last_weight = 0.0

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's plan network with SSL4MIS's dropout (:func:`add_dropout`; 2D encoder, 3D bottleneck
        and output); the same state dict keys as the plan network."""
        net = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                 num_output_channels, enable_deep_supervision)
        if len(configuration_manager.patch_size) == 2:
            return add_dropout(net, stage_dropout=tuple(cls.ENCODER_DROPOUT_2D))
        return add_dropout(net, bottleneck=cls.BOTTLENECK_DROPOUT_3D, output=cls.OUTPUT_DROPOUT_3D)

    @property
    def warmup_fraction(self) -> float:
        """``WARMUP_FRACTION_2D`` or ``WARMUP_FRACTION_3D`` for this configuration."""
        return self.WARMUP_FRACTION_2D if len(self.configuration_manager.patch_size) == 2 else self.WARMUP_FRACTION_3D

    def training_progress(self) -> float:
        """Fraction of the schedule done, counted in steps (epochs x iterations)."""
        return self.ema_steps / max(1, self.num_epochs * self.num_iterations_per_epoch)

    def consistency_weight(self, progress: float | None = None) -> float:
        """The official ``w(t)`` (:func:`ramped_consistency_weight` with the class's settings; default: the
        current progress), before the loss-scale division (see :meth:`loss_weights`)."""
        t = self.training_progress() if progress is None else progress
        return ramped_consistency_weight(t, weight=self.CONSISTENCY_WEIGHT, rampup=self.RAMPUP_FRACTION,
                                         warmup=self.warmup_fraction)

    def loss_weights(self, progress: float | None = None) -> tuple[float, float]:
        """``(supervised, consistency)`` weights of the loss at ``progress`` (:func:`loss_weights`)."""
        return loss_weights(official_supervised=self.SUPERVISED_WEIGHT,
                            official_consistency=self.consistency_weight(progress),
                            keep_nnunet_scale=self.KEEP_NNUNET_LOSS_SCALE)

    def ema_decay(self, step: int) -> float:
        """:func:`ema_decay` with ``EMA_DECAY``."""
        return ema_decay(step, self.EMA_DECAY)

    @torch.no_grad()
    def teacher_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's probabilities of ``images + noise`` (:func:`noisy`), in train mode (dropout on) when
        ``TEACHER_TRAIN_MODE``, as SSL4MIS's ``ema_model``."""
        if self.teacher is None:
            self.teacher = EMATeacher(self.network)
        self.teacher.module.train(self.TEACHER_TRAIN_MODE)
        return self.probabilities(self.teacher.predict(noisy(images, self.NOISE_STD, self.NOISE_CLIP)))

    def train_step(self, batch: dict) -> dict:
        data, target = self.batch_to_device(batch)
        unlabeled = self.next_unlabeled_batch().to(data.dtype)
        if self.teacher is None:
            self.teacher = EMATeacher(self.network)
        n = data.shape[0]
        sup_w, weight = self.loss_weights()
        self._last_weight = weight / sup_w

        def forward(net, x):
            return net(x), self.teacher_probabilities(x[n:])

        def loss(outputs, target):
            out, teacher = outputs
            return mean_teacher_loss(out, target, teacher, n_labeled=n, supervised_loss=self.loss,
                                     probabilities=self.probabilities, weight=weight, supervised_weight=sup_w)

        out = self.nnunet_step_with_parts(torch.cat((data, unlabeled)), target, forward, loss)
        self.teacher.update(self.network, self.ema_decay(self.ema_steps))
        self.ema_steps += 1
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if train_outputs and "consistency_loss" in train_outputs[0]:
            c = sum(float(o["consistency_loss"]) for o in train_outputs) / len(train_outputs)
            self.print_to_log_file(f"train consistency loss (this rank): {c:.6f}, weight relative to the "
                                   f"supervised loss {self._last_weight:.4g}")

    def _extra_checkpoint_state(self) -> dict:
        return {**super()._extra_checkpoint_state(), "nnzoo_ema_steps": self.ema_steps}

    def _restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super()._restore_extra_checkpoint_state(checkpoint)
        self.ema_steps = int(checkpoint.get("nnzoo_ema_steps", 0))
