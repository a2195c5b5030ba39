"""TENT: test-time entropy minimisation of the normalisation layers' affine parameters."""

from __future__ import annotations

import torch

from .base import NormAffineAdapter, binary_entropy, first_output, make_optimizer, softmax_entropy

__all__ = ["Tent", "entropy_loss"]


def entropy_loss(logits: torch.Tensor, *, multilabel: bool = False) -> torch.Tensor:
    """Mean prediction entropy over the batch and every voxel (TENT's loss).

    Args:
        logits: ``(N, K, *spatial)``.
        multilabel: independent sigmoid channels (nnU-Net regions) instead of a softmax.

    Returns:
        A scalar.
    """
    return (binary_entropy(logits) if multilabel else softmax_entropy(logits)).mean()


class Tent(NormAffineAdapter):
    """TENT (Wang et al., *Tent: Fully Test-time Adaptation by Entropy Minimization*, ICLR 2021); official code
    github.com/DequanWang/tent (``tent.py``, ``conf.py``, ``cfgs/tent.yaml``).

    As the official code: the loss is the mean softmax entropy of the prediction; only the normalisation layers'
    affine scale and shift are updated (``collect_params``), by Adam (lr 1e-3, betas (0.9, 0.999), no weight
    decay; SGD with Nesterov momentum 0.9 as the alternative), ``STEPS`` updates per batch; BatchNorm layers
    normalise with batch statistics (``configure_model``).

    Carried over to nnU-Net:
        - A "batch" is one sliding-window tile of the case (batch size 1, the official ``cfgs`` use 200
          images): the case's tiles are adapted on in sliding-window order, then the whole case is predicted
          with the adapted network. The official ``forward`` returns the outputs of the forward pass that
          computed the loss (before that batch's update); predicting after the pass gives every tile of the
          case the same network, so that overlapping tiles agree.
        - nnU-Net's networks use InstanceNorm (``affine=True``), which normalises per sample already: nothing
          to force; BatchNorm networks (``nnUNetTrainerBN``) get TENT's batch statistics, restored afterwards.
        - Region-based models (sigmoid outputs): the binary entropy of each region, summed over regions.
        - Dropout stays off (nnU-Net's networks have none); the network stays in eval mode.
        - Measured (2026-12-06, a tiny plan-built 2D network, 8 tiles ``2.5 x + 1`` of smooth images): the mean
          prediction entropy went from 0.894 to 0.886 with one step per tile, to 0.849 with ``STEPS=5``
          (``tests/trainers/test_adapt_methods.py``).
        - Measured on the domain-shift benchmark's 2D models (64 x 64 phantoms: one tile per case, 3 seeds;
          ``adaptation.json``'s relative change): the affine parameters move by 0.14 % per case, 0.4-0.6 %
          after a 10-case continual stream per domain; Dice within 0.002 of plain prediction on every style.
          Beyond the official settings (``benchmarks/adapt_sweep.py``, validation cases, seed 0): lr 1e-2 with
          50 steps moves the parameters by 25-34 % and changes a style's Dice by -5 to +6 points, T2 by < 1.
        - Episodic by default (the official default ``MODEL.EPISODIC`` is False: continual, ``--adapt-continual``).
    """

    name = "tent"
    OPTIMIZER = "adam"
    LR = 1e-3
    BETA = 0.9
    MOMENTUM = 0.9
    WD = 0.0
    STEPS = 1

    def build_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(list(self.params.values()), name=self.OPTIMIZER, lr=self.LR, betas=(self.BETA, 0.999),
                              momentum=self.MOMENTUM, weight_decay=self.WD)

    def adapt_tile(self, x: torch.Tensor, generator: torch.Generator) -> None:
        for _ in range(self.STEPS):
            with self.autocast():
                logits = first_output(self.network(x))
            loss = entropy_loss(logits.float(), multilabel=self.multilabel)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
