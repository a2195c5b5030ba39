"""Mean Teacher: an EMA teacher, consistency of softmax outputs under input noise (semi-supervised baseline)."""

from __future__ import annotations

import torch

from .registry import register_trainer
from .semisup import EMATeacher, SemiSupervisedTrainer, sigmoid_rampup

__all__ = ["nnUNetTrainerMeanTeacher", "consistency_mse", "noisy"]


def noisy(images: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """The teacher's input: ``images + clamp(N(0, std^2), -clip, clip)`` (SSL4MIS's Mean Teacher)."""
    return images + torch.clamp(torch.randn_like(images) * std, -clip, clip)


def consistency_mse(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two probability maps, over every element (batch, classes, voxels)."""
    return torch.mean((student_probs.float() - teacher_probs.float()) ** 2)


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
        """``CONSISTENCY_WEIGHT * sigmoid_rampup(progress, RAMPUP_FRACTION)``, 0 during the warm-up."""
        t = self.training_progress() if progress is None else progress
        return 0.0 if t < self.WARMUP_FRACTION else self.CONSISTENCY_WEIGHT * sigmoid_rampup(t, self.RAMPUP_FRACTION)

    def ema_decay(self, step: int) -> float:
        """SSL4MIS's decay of update ``step`` (0-based): ``min(1 - 1 / (step + 1), EMA_DECAY)``; the first
        update copies the student."""
        return min(1.0 - 1.0 / (step + 1), self.EMA_DECAY)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)

    def train_step(self, batch: dict) -> dict:
        data, target = self.batch_to_device(batch)
        unlabeled = self.next_unlabeled_batch().to(data.dtype)
        if self.teacher is None:
            self.teacher = EMATeacher(self.network)
        n = data.shape[0]
        weight = self._last_weight = self.consistency_weight()
        parts = {}

        def forward(net, x):
            out = net(x)
            with torch.no_grad():
                teacher = self.probabilities(self.teacher.predict(noisy(x[n:], self.NOISE_STD, self.NOISE_CLIP)))
            return out, teacher

        def loss(outputs, target):
            out, teacher = outputs
            full = out[0] if isinstance(out, (list, tuple)) else out
            labeled = [o[:n] for o in out] if isinstance(out, (list, tuple)) else out[:n]
            parts["supervised_loss"] = self.loss(labeled, target)
            parts["consistency_loss"] = consistency_mse(self.probabilities(full[n:]), teacher)
            return parts["supervised_loss"] + weight * parts["consistency_loss"]

        out = self.nnunet_step(torch.cat((data, unlabeled)), target, forward, loss)
        self.teacher.update(self.network, self.ema_decay(self.ema_steps))
        self.ema_steps += 1
        return {**out, **{k: v.detach().cpu().numpy() for k, v in parts.items()}}

    def prepare_train_step_benchmark(self, unlabeled: torch.Tensor) -> None:
        """Unlabeled batches and a past warm-up schedule, so that ``train_step`` runs at its real cost."""
        super().prepare_train_step_benchmark(unlabeled)
        self.ema_steps = self.num_epochs * self.num_iterations_per_epoch // 2

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
