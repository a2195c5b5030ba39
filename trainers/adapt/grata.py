"""GraTa: gradient alignment of a pseudo (consistency) loss with an auxiliary (entropy) loss at test time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import NormAffineAdapter, first_output, make_optimizer

__all__ = ["GraTa", "grata_entropy", "weak_views", "strong_style", "cosine_lr_factor", "gradient_cosine"]


def grata_entropy(logits: torch.Tensor, *, multilabel: bool = False) -> torch.Tensor:
    """GraTa's auxiliary loss: mean entropy of the prediction (official, sigmoid: ``-(p log(p + 1e-6)).sum(1)``)."""
    if multilabel:
        p = torch.sigmoid(logits)
        return (-(p * torch.log(p + 1e-6)).sum(1)).mean()
    return (-(logits.softmax(1) * logits.log_softmax(1)).sum(1)).mean()


def weak_views(x: torch.Tensor) -> list[tuple[callable, callable]]:
    """GraTa's weak transforms (``Rotate_and_Flip``) of the last two axes, as ``(forward, inverse)`` pairs.

    Flips of each of the two axes, and rotations by 90, 180 and 270 degrees; where the two axes differ in
    size (nnU-Net patches are rarely square) only the 180-degree rotation (both flips) keeps the shape.
    """
    a, b = x.ndim - 2, x.ndim - 1
    views = [(lambda t: t.flip(b), lambda t: t.flip(b)), (lambda t: t.flip(a), lambda t: t.flip(a))]
    if x.shape[a] == x.shape[b]:
        views += [(lambda t: torch.rot90(t, 1, (a, b)), lambda t: torch.rot90(t, -1, (a, b))),
                  (lambda t: torch.rot90(t, 2, (a, b)), lambda t: torch.rot90(t, -2, (a, b))),
                  (lambda t: torch.rot90(t, 3, (a, b)), lambda t: torch.rot90(t, -3, (a, b)))]
    else:
        views.append((lambda t: t.flip(a, b), lambda t: t.flip(a, b)))
    return views


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _coin(g: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=g).item() < p


def _low_or_high(g: torch.Generator, lo: float, hi: float) -> float:
    """batchgenerators' factor draw: half the time from ``(lo, 1)``, else from ``(max(lo, 1), hi)``."""
    if _coin(g, 0.5) and lo < 1:
        return _uniform(g, lo, 1.0)
    return _uniform(g, max(lo, 1.0), hi)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one channel ``(*spatial)`` over every axis (radius 4 sigma, edges replicated)."""
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    out = x[None, None]
    nd = x.ndim
    for axis in range(nd):
        shape = [1, 1] + [1] * nd
        shape[2 + axis] = k.numel()
        pad = [0, 0] * nd
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius
        out = F.pad(out, pad, mode="replicate")
        out = (F.conv2d if nd == 2 else F.conv3d)(out, k.view(shape))
    return out[0, 0]


def _to_unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    flat = x.flatten(1)
    lo, hi = flat.min(1).values.view(-1, *[1] * (x.ndim - 1)), flat.max(1).values.view(-1, *[1] * (x.ndim - 1))
    return (x - lo) / (hi - lo).clamp_min(1e-8), lo, hi


def strong_style(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """GraTa's strong style augmentation (``get_strong_style_transform``, batchgenerators) of ``(N, C, *spatial)``.

    Each sample is scaled to [0, 1] (the official images are), then per channel: multiplicative brightness
    (0.5-1.5, p 0.75), contrast (0.5-1.5, range preserved, p 0.75), inverted gamma (0.5-2, p 0.75); Gaussian
    noise (std drawn from 0-0.05, p 0.5); Gaussian blur (sigma 0.5-1.5 per channel, p 0.5 per sample and per
    channel); then rescaled to [0, 1] (``normalize_image_to_0_1``) and mapped back to the sample's original
    intensity range (nnU-Net's inputs are z-scored or CT-normalised, not in [0, 1]). All random draws come from
    ``generator``.
    """
    g = generator
    unit, lo, hi = _to_unit(x.float())
    out = unit.clone()
    for n in range(out.shape[0]):
        s = out[n]
        if _coin(g, 0.75):
            for c in range(s.shape[0]):
                s[c] *= _uniform(g, 0.5, 1.5)
        if _coin(g, 0.75):
            for c in range(s.shape[0]):
                f = _low_or_high(g, 0.5, 1.5)
                mn, mi, ma = s[c].mean(), s[c].min(), s[c].max()
                s[c] = ((s[c] - mn) * f + mn).clamp(mi, ma)
        if _coin(g, 0.75):
            s.neg_()
            for c in range(s.shape[0]):
                gamma = _low_or_high(g, 0.5, 2.0)
                mi = s[c].min()
                rng = s[c].max() - mi + 1e-7
                s[c] = ((s[c] - mi) / rng).pow(gamma) * rng + mi
            s.neg_()
        if _coin(g, 0.5):
            std = _uniform(g, 0.0, 0.05)
            s += std * torch.randn(s.shape, generator=g).to(s.device)
        if _coin(g, 0.5):
            for c in range(s.shape[0]):
                if _coin(g, 0.5):
                    s[c] = _gaussian_blur(s[c], _uniform(g, 0.5, 1.5))
        out[n] = s
    out, _, _ = _to_unit(out)
    return (out * (hi - lo) + lo).to(x.dtype)


def gradient_cosine(a: list[torch.Tensor], b: list[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarity of two gradients given as lists of tensors (GraTa's ``get_cosine``)."""
    inner = sum((x * y).sum() for x, y in zip(a, b))
    na = torch.linalg.vector_norm(torch.stack([x.norm() for x in a]))
    nb = torch.linalg.vector_norm(torch.stack([y.norm() for y in b]))
    return inner / (na * nb + eps)


def cosine_lr_factor(cosine: torch.Tensor | float) -> torch.Tensor | float:
    """GraTa's learning-rate factor ``(cos + 1)^2 / 4`` (``custom_activation``): 1 aligned, 0 opposed."""
    return (cosine + 1) ** 2 / 4


class GraTa(NormAffineAdapter):
    """GraTa (Chen et al., *Gradient Alignment Improves Test-Time Adaptation for Medical Image Segmentation*,
    AAAI 2025); official code github.com/Chen-Ziyang/GraTa (``TTA.py``, ``custom_optimizers/grata.py``,
    ``dataloaders/aug/style_aug.py``, ``run.sh``).

    As the official code, per batch: the auxiliary gradient (entropy, ``AUX_LOSS="ent"``) is taken and
    subtracted from the parameters (``w - g_aux``, step 1); at the perturbed parameters the pseudo gradient
    (``PSEUDO_LOSS="consis"``: the prediction of a strongly style-augmented copy against the mean probability
    of the image and its weak flips/rotations) is taken; the parameters are restored; the base optimiser
    (Adam, lr 1e-4, betas (0.9, 0.999)) steps along the pseudo gradient with the learning rate scaled by
    ``(cos + 1)^2 / 4`` of the cosine between the two gradients. Only the normalisation layers' affine
    parameters are updated; BatchNorm layers use batch statistics.

    Carried over to nnU-Net:
        - One batch is one sliding-window tile; the case's tiles are adapted on in order, then the whole case
          is predicted with the adapted network (official: each image right after its step).
        - Softmax networks: pseudo labels are mean softmax probabilities and the pseudo loss the soft cross
          entropy (official, sigmoid outputs: mean sigmoid and ``BCEWithLogitsLoss``, kept for region models).
        - Weak views: the two flips and three rotations of the last two axes where they are equal in size;
          otherwise the two flips and the 180-degree rotation (:func:`weak_views`). 3D patches: in-plane.
        - Strong style augmentation on [0, 1]-scaled tiles, mapped back to the tile's intensity range
          (:func:`strong_style`); blur by separable convolution with replicated edges (scipy: reflected).
        - Measured (2026-12-06, a tiny untrained plan-built 2D network, 8 shifted tiles): the cosine between the
          auxiliary and pseudo gradients was -0.80 (learning-rate factor 0.01), so the entropy moved by < 1e-4;
          the step itself is checked exactly against a hand computation (``tests/trainers/test_adapt_grata.py``).
        - Measured on the domain-shift benchmark's 2D models (64 x 64 phantoms, 3 seeds; ``adaptation.json``'s
          relative change): the affine parameters move by 0.0005-0.0024 % per case (continual, a 10-case
          stream per domain: 0.002-0.008 %); Dice within 0.001 of plain prediction on every style.
          Beyond the official settings (``benchmarks/adapt_sweep.py``, validation cases, seed 0): lr 1e-2 with
          10 steps moves the parameters by < 1.3 % and FLAIR by at most +1.7 points.
        - Only ``ent``/``consis`` (the official defaults): the other official losses need extra heads.
    """

    name = "grata"
    OPTIMIZER = "adam"
    LR = 1e-4
    BETA1 = 0.9
    BETA2 = 0.999
    MOMENTUM = 0.99
    AUX_LOSS = "ent"
    PSEUDO_LOSS = "consis"
    STEPS = 1

    def __init__(self, network, **kwargs) -> None:
        super().__init__(network, **kwargs)
        self.last_cosine: float | None = None

    @classmethod
    def check_values(cls, hp: dict) -> None:
        super().check_values(hp)
        for k, ok in (("AUX_LOSS", "ent"), ("PSEUDO_LOSS", "consis")):
            if hp[k] != ok:
                raise ValueError(f"{k}={hp[k]!r}: only {ok!r} (the official default) is supported; the other "
                                 "official losses need extra network heads")

    def build_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(list(self.params.values()), name=self.OPTIMIZER, lr=self.LR,
                              betas=(self.BETA1, self.BETA2), momentum=self.MOMENTUM, weight_decay=0.0)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return first_output(self.network(x)).float()

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multilabel else logits.softmax(1)

    def pseudo_loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The consistency loss of a strongly augmented copy against the weak views' mean probabilities."""
        with torch.no_grad():
            probs = [self._probabilities(self._forward(x))]
            for fwd, inv in weak_views(x):
                probs.append(inv(self._probabilities(self._forward(fwd(x)))))
            target = torch.stack(probs).mean(0)
        logits = self._forward(strong_style(x, generator))
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, target)
        return -(target * logits.log_softmax(1)).sum(1).mean()

    def adapt_tile(self, x: torch.Tensor, generator: torch.Generator) -> None:
        params = list(self.params.values())
        for _ in range(self.STEPS):
            self.optimizer.zero_grad()
            grata_entropy(self._forward(x), multilabel=self.multilabel).backward()
            old = [p.detach().clone() for p in params]
            aux = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
            with torch.no_grad():
                for p, g in zip(params, aux):
                    p.sub_(g)
            self.optimizer.zero_grad()
            self.pseudo_loss(x, generator).backward()
            pse = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            cosine = gradient_cosine(aux, pse)
            with torch.no_grad():
                for p, o in zip(params, old):
                    p.copy_(o)
            self.last_cosine = float(cosine)
            for group in self.optimizer.param_groups:
                group["lr"] = self.LR * float(cosine_lr_factor(cosine))
            self.optimizer.step()
        self.optimizer.zero_grad()
