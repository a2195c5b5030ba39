"""What every test-time adaptation method shares: the per-case protocol, norm layers, entropy, hyperparameters.

A method adapts one fold's network (a plain ``nn.Module``, as nnU-Net's predictor holds it) on the tiles
of one case, then the case is predicted with the adapted network (and, for VPTTA, each tile's prompt):

.. code-block:: python

    adapter.begin_case(continual=False)      # the trained weights are loaded; snapshot them
    adapter.adapt(tiles, generator=gen)      # the case's sliding-window tiles, in their order
    with adapter.predicting():               # nnU-Net's sliding window, each tile through adapter.transform
        ...
    adapter.end_case(continual=False)        # the trained values back in the network (continual: kept aside)

Episodic (the default): every case starts from the trained state (weights, prompt, optimiser, memory
bank); continual: the adapted state is carried from case to case, as in the papers' continual setups.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.normalization import GroupNorm

from ..base import method_hyperparameters, parse_hyperparameters

__all__ = ["TestTimeAdapter", "NormAffineAdapter", "norm_layers", "norm_affine_parameters", "softmax_entropy",
           "binary_entropy", "batch_statistics", "first_output", "make_optimizer"]


def norm_layers(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """The normalisation layers of a network whose statistics are per channel (dim 1).

    Args:
        network: any network.

    Returns:
        ``[(name, module)]`` of every BatchNorm, InstanceNorm and GroupNorm layer, in module order
        (LayerNorm normalises the last dimensions, not channels, and is not included).
    """
    from torch.nn.modules.batchnorm import _NormBase

    return [(n, m) for n, m in network.named_modules() if isinstance(m, (_NormBase, GroupNorm))]


def norm_affine_parameters(network: nn.Module) -> dict[str, nn.Parameter]:
    """The affine scale and shift (``weight``, ``bias``) of every normalisation layer, by parameter name.

    Raises:
        ValueError: the network has no normalisation layer with affine parameters.
    """
    out = {}
    for name, m in norm_layers(network):
        for pn in ("weight", "bias"):
            p = getattr(m, pn, None)
            if isinstance(p, nn.Parameter):
                out[f"{name}.{pn}" if name else pn] = p
    if not out:
        raise ValueError(f"{type(network).__name__} has no normalisation layer with affine parameters to adapt")
    return out


def first_output(out) -> torch.Tensor:
    """The network's full-resolution logits (the first of a deep-supervision list, else the tensor)."""
    return out[0] if isinstance(out, (list, tuple)) else out


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over channels (dim 1) of logits, per voxel: ``-(p * log p).sum(1)``."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of independent sigmoid channels (nnU-Net's regions), summed over channels, per voxel."""
    p, logp, log1mp = torch.sigmoid(logits), nn.functional.logsigmoid(logits), nn.functional.logsigmoid(-logits)
    return -(p * logp + (1 - p) * log1mp).sum(1)


@contextlib.contextmanager
def batch_statistics(network: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with the statistics of the batch they see (train and eval mode), as TENT's
    ``configure_model`` forces; running statistics and flags come back unchanged afterwards.

    InstanceNorm and GroupNorm layers (nnU-Net's default) use per-sample statistics anyway; nothing changes
    for them.
    """
    saved = []
    for _, m in norm_layers(network):
        if isinstance(m, _BatchNorm):
            saved.append((m, m.track_running_stats, m.running_mean, m.running_var))
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    try:
        yield
    finally:
        for m, track, mean, var in saved:
            m.track_running_stats, m.running_mean, m.running_var = track, mean, var


def make_optimizer(params: Sequence[torch.Tensor], *, name: str, lr: float, betas: tuple[float, float],
                   momentum: float, weight_decay: float, nesterov: bool = True) -> torch.optim.Optimizer:
    """The optimiser of the official code: ``adam``, ``adamw`` or ``sgd`` (Nesterov momentum).

    Raises:
        ValueError: another name.
    """
    key = name.lower()
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay)
    raise ValueError(f"OPTIMIZER={name!r}: one of adam, adamw, sgd")


class TestTimeAdapter:
    """Base of the methods: hyperparameters, the per-case protocol, timing.

    Args:
        network: the fold's network, holding the trained weights when a case begins.
        multilabel: the network predicts independent sigmoid channels (nnU-Net regions) instead of a softmax.
        source_stats: the recorded source statistics (:mod:`.source_stats`), for the methods that need them.
        hparams: ``{NAME: value}`` overrides of the UPPER_CASE hyperparameters (typed, see :meth:`parse`).
        autocast_dtype: precision of the adaptation forward/backward passes (None: float32).

    Raises:
        KeyError: an override that is not a hyperparameter of the method.
    """

    __test__ = False  # not a pytest class
    #: the ``--adapt`` value
    name = ""
    #: the method needs source statistics recorded with the model (``nnzoo source-stats``)
    needs_source_stats = False

    def __init__(self, network: nn.Module, *, multilabel: bool = False, source_stats: dict | None = None,
                 hparams: dict | None = None, autocast_dtype: torch.dtype | None = None) -> None:
        known = method_hyperparameters(type(self))
        for k, v in (hparams or {}).items():
            if k not in known:
                raise KeyError(f"{k} is not a hyperparameter of {type(self).__name__}")
            setattr(self, k, v)
        self.check_values(self.hyperparameters())
        self.network = network
        self.multilabel = multilabel
        self.source_stats = source_stats
        self.autocast_dtype = autocast_dtype
        self.seconds: list[float] = []
        #: how far the last case's adaptation moved what the method adapts (:meth:`relative_change`), set by
        #: :meth:`end_case`; None before the first case
        self.last_change: float | None = None

    @classmethod
    def parse(cls, items: dict[str, str]) -> dict:
        """Typed overrides from ``{NAME: text}`` (as ``--adapt-hparam NAME=VALUE``).

        Raises:
            KeyError: an unknown name (the message lists the method's hyperparameters).
            ValueError: a value that does not parse as the hyperparameter's type.
        """
        parsed = parse_hyperparameters(cls, items)
        cls.check_values({**method_hyperparameters(cls), **parsed})
        return parsed

    @classmethod
    def check_values(cls, hp: dict) -> None:
        """Values the method cannot run with.

        Raises:
            ValueError: naming the hyperparameter and the value.
        """
        for k, v in hp.items():
            if k == "OPTIMIZER" and str(v).lower() not in ("adam", "adamw", "sgd"):
                raise ValueError(f"OPTIMIZER={v!r}: one of adam, adamw, sgd")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise ValueError(f"{k}={v!r}: must not be negative")

    def hyperparameters(self) -> dict:
        """Every hyperparameter this adapter uses, with overrides applied."""
        return {k: getattr(self, k) for k in method_hyperparameters(type(self))}

    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def autocast(self):
        """Autocast context of the adaptation passes (a no-op in float32)."""
        dev = self.device().type
        return torch.autocast(dev, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    # --- the per-case protocol -------------------------------------------------------------------------------
    def begin_case(self, *, continual: bool) -> None:
        """Called with the trained weights loaded in the network, before :meth:`adapt`."""

    def adapt(self, tiles: Sequence[torch.Tensor] | Iterator[torch.Tensor], *, generator: torch.Generator) -> None:
        """Adapt on the case's tiles (each ``(1, C, *patch)``), timed into :attr:`seconds`.

        Args:
            tiles: the case's sliding-window tiles in the order they are predicted.
            generator: CPU random generator seeded from the case (random augmentations draw from it only).
        """
        start = time.perf_counter()
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                self._adapt(tiles, generator)
        finally:
            self.network.train(was_training)
        if self.device().type == "cuda":
            torch.cuda.synchronize(self.device())
        self.seconds.append(time.perf_counter() - start)

    def _adapt(self, tiles, generator: torch.Generator) -> None:  # pragma: no cover - subclasses define it
        raise NotImplementedError

    def predicting(self):
        """Context of the case's prediction (default: nothing changes)."""
        return contextlib.nullcontext()

    def transform(self, tile: torch.Tensor) -> torch.Tensor:
        """The tile the network predicts, called once per tile in sliding-window order (default: unchanged)."""
        return tile

    def end_case(self, *, continual: bool) -> None:
        """Called after the case's prediction: the trained values go back into the network."""

    def relative_change(self) -> float | None:
        """How far adaptation moved what the method adapts, relative to its trained (identity) value, for the case
        being predicted (continual: accumulated since the trained state); None where the method cannot say."""
        return None


class NormAffineAdapter(TestTimeAdapter):
    """A method that updates the normalisation layers' affine parameters (TENT, GraTa) with an optimiser.

    Only those parameters require gradients while adapting; the network's other parameters are frozen and
    their ``requires_grad`` flags restored afterwards. At :meth:`end_case` the trained values are copied back
    (bit for bit); with ``continual`` the adapted values and the optimiser carry over to the next case.
    """

    def __init__(self, network: nn.Module, **kwargs) -> None:
        super().__init__(network, **kwargs)
        self.params = norm_affine_parameters(network)
        self.optimizer: torch.optim.Optimizer | None = None
        self._trained: dict[str, torch.Tensor] = {}
        self._carried: dict[str, torch.Tensor] | None = None

    def build_optimizer(self) -> torch.optim.Optimizer:  # pragma: no cover - subclasses define it
        raise NotImplementedError

    def begin_case(self, *, continual: bool) -> None:
        self._trained = {k: p.detach().clone() for k, p in self.params.items()}
        if continual and self._carried is not None:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(self._carried[k])
        else:
            self.optimizer = None
        if self.optimizer is None:
            self.optimizer = self.build_optimizer()

    def predicting(self):
        return batch_statistics(self.network)

    def _adapt(self, tiles, generator: torch.Generator) -> None:
        flags = {p: p.requires_grad for p in self.network.parameters()}
        ours = {id(p) for p in self.params.values()}
        for p in self.network.parameters():
            p.requires_grad_(id(p) in ours)
        try:
            with batch_statistics(self.network):
                for tile in tiles:
                    self.adapt_tile(tile.detach().clone().to(self.device()), generator)
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)

    def adapt_tile(self, x: torch.Tensor, generator: torch.Generator) -> None:  # pragma: no cover
        raise NotImplementedError

    def relative_change(self) -> float | None:
        """``||θ - θ_trained|| / ||θ_trained||`` over every adapted affine parameter (L2 norms of all of them)."""
        if not self._trained:
            return None
        with torch.no_grad():
            num = sum(float((p.detach().float() - self._trained[k].float()).pow(2).sum()) for k, p in self.params.items())
            den = sum(float(t.float().pow(2).sum()) for t in self._trained.values())
        return (num / den) ** 0.5 if den > 0 else None

    def end_case(self, *, continual: bool) -> None:
        self.last_change = self.relative_change()
        if continual:
            self._carried = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self._trained[k])
        if not continual:
            self.optimizer = None
