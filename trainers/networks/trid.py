"""TriD's random style injection (Chen et al., MICCAI 2023) as a parameter-free module on encoder stages.

TriD ("Treasure in Distribution") re-styles a feature map by replacing, per sample and channel,
its mean and standard deviation with values drawn from a uniform distribution; a per-channel
Bernoulli choice (probability drawn from ``Beta(alpha, alpha)``) decides which channels get the
random statistics and which keep their own. The official module (``TriD`` in
``networks/mixstyle.py`` of github.com/Chen-Ziyang/TriD) runs on the outputs of chosen ResNet
stages during training, each call with probability ``p``; no domain labels and no mixing across
the batch are involved.

- :func:`random_style_statistics`: ``mean ~ U(low, high)``, ``std ~ U(low, high)`` per ``(sample, channel)``.
- :func:`channel_choice`: ``lambda ~ Beta(alpha, alpha)``, then ``Bernoulli(lambda)`` per ``(sample, channel)``.
- :func:`restyle`: the feature map normalised with its own (detached) statistics and re-scaled with
  the convex combination ``weight * new + (1 - weight) * own`` of the statistics.
- :func:`trid`: one TriD call (with probability ``p``).
- :class:`RandomStyle` and :func:`attach_random_style`: the module hooked onto encoder stages
  (active only in training mode; no parameters, no buffers, so state dicts are the plan network's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["random_style_statistics", "channel_choice", "restyle", "trid", "RandomStyle", "attach_random_style",
           "random_style_modules"]


def random_style_statistics(shape: Sequence[int], *, mean_range: Sequence[float] = (0.0, 1.0),
                            std_range: Sequence[float] = (0.0, 1.0),
                            device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random feature statistics, one mean and one standard deviation per ``(sample, channel)``.

    Args:
        shape: ``(n, c, 1, ...)``, the shape the statistics broadcast with (a feature map's
            ``(n, c)`` followed by ones).
        mean_range: ``(low, high)`` of the uniform distribution of the means (official: ``(0, 1)``).
        std_range: ``(low, high)`` of the uniform distribution of the standard deviations (official:
            ``(0, 1)``; the official code calls them ``var_random`` but uses them as standard deviations).
        device: where the tensors are made.

    Returns:
        ``(mean, std)``, float32 tensors of ``shape``.
    """
    mean = torch.empty(tuple(shape), dtype=torch.float32, device=device).uniform_(*mean_range)
    std = torch.empty(tuple(shape), dtype=torch.float32, device=device).uniform_(*std_range)
    return mean, std


def channel_choice(shape: Sequence[int], *, alpha: float,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which ``(sample, channel)`` entries take the random statistics.

    ``lambda ~ Beta(alpha, alpha)`` per entry, then ``choice ~ Bernoulli(lambda)`` (official). Since
    every entry draws its own ``lambda``, ``choice`` is distributed as ``Bernoulli(1/2)`` for any alpha.

    Args:
        shape: shape of the choice (``(n, c, 1, ...)``).
        alpha: both parameters of the Beta distribution (official 0.1).
        device: where the tensors are made.

    Returns:
        ``(choice, lam)``: the 0/1 float32 choice and the Beta draws it was sampled from.
    """
    a = torch.tensor(float(alpha), device=device)
    lam = torch.distributions.Beta(a, a).sample(tuple(shape))
    return torch.bernoulli(lam), lam


def restyle(x: torch.Tensor, *, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor,
            eps: float = 1e-6) -> torch.Tensor:
    """``x`` with its per-``(sample, channel)`` statistics replaced by a convex combination with new ones.

    ``(x - mu) / sigma * (w * std + (1 - w) * sigma) + (w * mean + (1 - w) * mu)`` where ``mu`` and
    ``sigma = sqrt(var + eps)`` (unbiased variance) are ``x``'s own statistics over the spatial axes,
    detached (gradients flow through ``x`` only, as in the official code). Computed in float32 and
    returned in ``x``'s dtype (autocast keeps its low-precision activations).

    Args:
        x: ``(n, c, *spatial)``, 2D or 3D.
        mean: new means, broadcastable to ``(n, c, 1, ...)``.
        std: new standard deviations, same shape.
        weight: weight of the new statistics in ``[0, 1]``, same shape (TriD: 0 or 1).
        eps: added to the variance.

    Returns:
        A tensor like ``x``.
    """
    xf = x.float()
    axes = tuple(range(2, x.ndim))
    mu = xf.mean(dim=axes, keepdim=True).detach()
    sigma = (xf.var(dim=axes, keepdim=True) + eps).sqrt().detach()
    weight = weight.to(xf)
    new_mean = weight * mean.to(xf) + (1 - weight) * mu
    new_std = weight * std.to(xf) + (1 - weight) * sigma
    return ((xf - mu) / sigma * new_std + new_mean).to(x.dtype)


def trid(x: torch.Tensor, *, p: float, alpha: float, mean_range: Sequence[float] = (0.0, 1.0),
         std_range: Sequence[float] = (0.0, 1.0), eps: float = 1e-6) -> torch.Tensor:
    """One call of TriD's random style injection: with probability ``p`` every ``(sample, channel)`` of
    ``x`` takes uniformly drawn statistics or keeps its own (:func:`channel_choice`), else ``x`` is
    returned unchanged.

    Args:
        x: ``(n, c, *spatial)``.
        p: probability of re-styling at this call (official 0.5; one draw per call, as the official
            ``random.random() > p``; here from torch's generator so ``torch.manual_seed`` fixes it).
        alpha: Beta parameter of :func:`channel_choice` (official 0.1).
        mean_range: uniform range of the new means.
        std_range: uniform range of the new standard deviations.
        eps: added to the variance.

    Returns:
        The re-styled tensor, or ``x`` itself.
    """
    if p <= 0 or torch.rand(()).item() >= p:
        return x
    shape = (*x.shape[:2], *([1] * (x.ndim - 2)))
    mean, std = random_style_statistics(shape, mean_range=mean_range, std_range=std_range, device=x.device)
    choice, _ = channel_choice(shape, alpha=alpha, device=x.device)
    return restyle(x, mean=mean, std=std, weight=choice, eps=eps)


class RandomStyle(nn.Module):
    """TriD as a module: :func:`trid` in training mode, the identity in eval mode. No parameters or buffers.

    Args:
        p: probability of re-styling per call.
        alpha: Beta parameter of the per-channel choice.
        mean_range: uniform range of the new means.
        std_range: uniform range of the new standard deviations.
        eps: added to the variance.
    """

    def __init__(self, *, p: float, alpha: float, mean_range: Sequence[float] = (0.0, 1.0),
                 std_range: Sequence[float] = (0.0, 1.0), eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.alpha, self.eps = float(p), float(alpha), float(eps)
        self.mean_range = tuple(float(v) for v in mean_range)
        self.std_range = tuple(float(v) for v in std_range)

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}, mean_range={self.mean_range}, std_range={self.std_range}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return trid(x, p=self.p, alpha=self.alpha, mean_range=self.mean_range, std_range=self.std_range,
                    eps=self.eps)

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: the hooked module's output through this module."""
        return self(output)


def attach_random_style(network: nn.Module, stages: Sequence[int], **kwargs) -> list[RandomStyle]:
    """Hook a :class:`RandomStyle` onto the output of encoder stages of a plan network.

    The output of ``network.encoder.stages[s]`` (after its last conv -> norm -> nonlinearity, the
    point where the official code applies TriD to a ResNet stage's output) is re-styled; it feeds
    both the next encoder stage and the decoder's skip connection, as in the official network. The
    modules are kept in ``network.random_style`` (a ``ModuleList`` without parameters or buffers:
    ``train()``/``eval()`` reach them, state dict keys are unchanged).

    Args:
        network: a network with ``encoder.stages`` (nnU-Net's ``PlainConvUNet``,
            ``ResidualEncoderUNet`` or an nnzoo plan-encoder network).
        stages: encoder stage indices (0 = full resolution).
        kwargs: arguments of :class:`RandomStyle`.

    Returns:
        The attached modules, one per stage.

    Raises:
        ValueError: the network already has them, has no ``encoder.stages``, or a stage index is out of range.
    """
    if hasattr(network, "random_style"):
        raise ValueError("random style modules are already attached to this network")
    encoder_stages = getattr(getattr(network, "encoder", None), "stages", None)
    if encoder_stages is None:
        raise ValueError(f"{type(network).__name__} has no encoder.stages to attach TriD to")
    n = len(encoder_stages)
    bad = [s for s in stages if not 0 <= int(s) < n]
    if bad:
        raise ValueError(f"stages {list(stages)} requested, the encoder has stages 0..{n - 1}")
    modules = [RandomStyle(**kwargs) for _ in stages]
    for s, module in zip(stages, modules):
        encoder_stages[int(s)].register_forward_hook(module.hook)
    network.random_style = nn.ModuleList(modules)
    return modules


def random_style_modules(network: nn.Module) -> list[RandomStyle]:
    """The :class:`RandomStyle` modules attached to ``network`` (DDP/compile wrappers are looked through)."""
    return [m for m in network.modules() if isinstance(m, RandomStyle)]
