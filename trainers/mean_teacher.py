"""Mean Teacher: an EMA teacher, consistency of softmax outputs under input noise (semi-supervised baseline)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .registry import register_trainer
from .semisup import EMATeacher, SemiSupervisedTrainer, sigmoid_rampup

__all__ = ["nnUNetTrainerMeanTeacher", "consistency_mse", "noisy", "ramped_consistency_weight", "ema_decay",
           "mean_teacher_loss"]


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
                      weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean Teacher's loss of one student pass over labeled + unlabeled images.

    ``supervised_loss(student on labeled, target) + weight * consistency_mse(p(student on unlabeled),
    teacher_probs)``, the consistency on the full-resolution output only.

    Args:
        outputs: the student's outputs (deep-supervision list or tensor), the ``n_labeled`` labeled
            images first, then the unlabeled ones.
        target: nnU-Net's target of the labeled images.
        teacher_probs: the teacher's probabilities of the (noisy) unlabeled images.
        n_labeled: labeled images at the start of the batch.
        supervised_loss: nnU-Net's loss, ``(outputs, target) -> scalar``.
        probabilities: logits -> probabilities (softmax, or sigmoid for regions).
        weight: the consistency weight.

    Returns:
        ``(total, {"supervised_loss": ..., "consistency_loss": ...})``.
    """
    deep = isinstance(outputs, (list, tuple))
    full = outputs[0] if deep else outputs
    labeled = [o[:n_labeled] for o in outputs] if deep else outputs[:n_labeled]
    sup = supervised_loss(labeled, target)
    cons = consistency_mse(probabilities(full[n_labeled:]), teacher_probs)
    return sup + weight * cons, {"supervised_loss": sup, "consistency_loss": cons}


@register_trainer(
    description="Mean Teacher: EMA teacher, MSE consistency of softmax outputs under input noise, sigmoid "
                "ramp-up (semi-supervised baseline)",
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
    ``min(1 - 1 / (step + 1), EMA_DECAY)`` at 0-based update ``step``) sees the unlabeled patches plus clipped Gaussian noise
    (``NOISE_STD``, ``NOISE_CLIP``). Loss::

        L_sup(student on labeled) + w(t) * mean((softmax(student(u)) - softmax(teacher(u + noise)))^2)

    with ``L_sup`` nnU-Net's deep-supervised Dice + CE and ``w(t) = CONSISTENCY_WEIGHT *
    sigmoid_rampup(t, RAMPUP_FRACTION)`` over the fraction ``t`` of training done, zero for the
    first ``WARMUP_FRACTION`` of it (SSL4MIS: 0.1 ramped over all 30000 iterations, nothing in the
    first 1000). Region plans use sigmoids instead of the softmax. Inference uses the student.

    Deviations from SSL4MIS:
        - nnU-Net's network, augmentation, patch sampling, optimizer, poly schedule and
          deep-supervised Dice + CE (SSL4MIS: U-Net/V-Net, (Dice + CE) / 2, the consistency on the
          full-resolution output only, as here);
        - the ramp and the warm-up are fractions of nnU-Net's schedule (SSL4MIS: ``iter // 150``
          over 200 steps of 30000 iterations, 1000 warm-up iterations);
        - the teacher runs in eval mode (SSL4MIS keeps it in train mode: dropout/BN noise in the teacher).
    """

    CONSISTENCY_WEIGHT = 0.1
    RAMPUP_FRACTION = 1.0
    WARMUP_FRACTION = 1000 / 30000
    EMA_DECAY = 0.99
    NOISE_STD = 0.1
    NOISE_CLIP = 0.2
    ema_steps: int = 0
    _last_weight = 0.0

    def training_progress(self) -> float:
        """Fraction of the schedule done, counted in steps (epochs x iterations)."""
        return self.ema_steps / max(1, self.num_epochs * self.num_iterations_per_epoch)

    def consistency_weight(self, progress: float | None = None) -> float:
        """:func:`ramped_consistency_weight` with the class's settings (default: the current progress)."""
        t = self.training_progress() if progress is None else progress
        return ramped_consistency_weight(t, weight=self.CONSISTENCY_WEIGHT, rampup=self.RAMPUP_FRACTION,
                                         warmup=self.WARMUP_FRACTION)

    def ema_decay(self, step: int) -> float:
        """:func:`ema_decay` with ``EMA_DECAY``."""
        return ema_decay(step, self.EMA_DECAY)

    def train_step(self, batch: dict) -> dict:
        data, target = self.batch_to_device(batch)
        unlabeled = self.next_unlabeled_batch().to(data.dtype)
        if self.teacher is None:
            self.teacher = EMATeacher(self.network)
        n = data.shape[0]
        weight = self._last_weight = self.consistency_weight()

        def forward(net, x):
            out = net(x)
            with torch.no_grad():
                teacher = self.probabilities(self.teacher.predict(noisy(x[n:], self.NOISE_STD, self.NOISE_CLIP)))
            return out, teacher

        def loss(outputs, target):
            out, teacher = outputs
            return mean_teacher_loss(out, target, teacher, n_labeled=n, supervised_loss=self.loss,
                                     probabilities=self.probabilities, weight=weight)

        out = self.nnunet_step_with_parts(torch.cat((data, unlabeled)), target, forward, loss)
        self.teacher.update(self.network, self.ema_decay(self.ema_steps))
        self.ema_steps += 1
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if train_outputs and "consistency_loss" in train_outputs[0]:
            c = sum(float(o["consistency_loss"]) for o in train_outputs) / len(train_outputs)
            self.print_to_log_file(f"train consistency loss (this rank): {c:.6f}, weight {self._last_weight:.4g}")

    def _extra_checkpoint_state(self) -> dict:
        return {**super()._extra_checkpoint_state(), "nnzoo_ema_steps": self.ema_steps}

    def _restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super()._restore_extra_checkpoint_state(checkpoint)
        self.ema_steps = int(checkpoint.get("nnzoo_ema_steps", 0))
