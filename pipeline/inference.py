"""The predictor ``nnzoo predict`` runs: nnU-Net's, fast by default, exactly nnU-Net's with ``--exact``.

The fast path changes one thing in nnU-Net's prediction: the precision of the network. Where the
hardware runs reduced precision natively (CPUs with AVX-512 BF16 or AMX: ``bfloat16``; CUDA GPUs:
``float16``, as nnU-Net's own autocast), the network runs under ``torch.autocast`` in it; every
mirrored prediction is cast back to float32 before the mirrors are averaged, so only the
convolutions lose precision, not the sums. Sliding window, Gaussian weighting, fold averaging,
resampling and export stay nnU-Net's (:class:`~nnzoo.trainers.nnunet_compat.MirroredForwardMixin`).

On GPUs the mirrored copies of a patch share one forward pass (a batch of 4 in 2D, 8 in 3D); on the
CPU they run one after another, as in nnU-Net: measured on the 2-core development machine
(2026-12-06, one thread, 2D 128² and 3D 32×48×48 patches of a 3-stage ``PlainConvUNet``), one batched
forward took 1.1–1.5× as long as the sequential ones, in float32 and bfloat16 alike, and
channels-last memory layout was slower too. On the CPU the cases also run one after another in the
``nnzoo predict`` process instead of nnU-Net's worker processes (:func:`nnzoo.pipeline.predict.in_process`).
``--exact`` runs nnU-Net's ``nnUNetPredictor`` and worker processes unchanged, whose outputs are
bit-identical to ``nnUNetv2_predict``'s.

``--adapt`` (:class:`AdaptingPredictor`): test-time adaptation of each fold on each case's tiles before nnU-Net's
sliding window predicts the case (:mod:`nnzoo.trainers.adapt`); not with ``--exact``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnzoo.trainers.nnunet_compat import MirroredForwardMixin, unwrap_network

__all__ = ["fast_dtype", "mirror_combinations", "mirrored_forward", "make_predictor", "NnzooPredictor", "Adaptation",
           "AdaptingPredictor", "case_seed"]


def _cpu_runs_bfloat16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (AVX-512 BF16 or AMX); elsewhere bfloat16
    convolutions are emulated and slower than float32."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a probe that fails means: not known to be supported
            continue
    return False


def fast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision the fast path runs the network in on ``device`` (None: float32).

    Args:
        device: the prediction device.

    Returns:
        ``torch.float16`` on CUDA, ``torch.bfloat16`` on a CPU with bfloat16 instructions, else None.
    """
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _cpu_runs_bfloat16():
        return torch.bfloat16
    return None


def mirror_combinations(mirror_axes: tuple[int, ...] | list[int] | None) -> list[tuple[int, ...]]:
    """Tensor axes to flip for each prediction of nnU-Net's mirroring (first: no flip).

    Args:
        mirror_axes: spatial axes allowed for mirroring (0 = first spatial axis), or None for none.

    Returns:
        ``[(), (2,), (3,), (2, 3), ...]``: every non-empty combination of the axes, shifted past batch
        and channel, after the unflipped one (the 2**k predictions nnU-Net averages).
    """
    axes = [a + 2 for a in (mirror_axes or ())]
    return [()] + [c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]


def mirrored_forward(network: torch.nn.Module, x: torch.Tensor, *, mirror_axes, dtype: torch.dtype | None,
                     batch: bool) -> torch.Tensor:
    """The mean of the network's predictions of ``x`` and its mirrored copies, in float32.

    Args:
        network: the network (eval mode).
        x: one patch ``(1, C, *spatial)`` (or several).
        mirror_axes: spatial axes to mirror (None or empty: the plain prediction only).
        dtype: autocast precision of the network (None: float32).
        batch: run all mirrored copies in one forward pass instead of one after another.

    Returns:
        The averaged logits, ``(N, K, *spatial)`` float32.

    Raises:
        ValueError: a mirror axis beyond the patch's spatial axes.
    """
    combos = mirror_combinations(mirror_axes)
    if any(a >= x.ndim for c in combos for a in c):
        raise ValueError(f"mirror axes {mirror_axes} do not fit a {x.ndim - 2}D patch")
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        if batch and len(combos) > 1:
            n = x.shape[0]
            out = network(torch.cat([torch.flip(x, c) if c else x for c in combos])).float()
            total = sum(torch.flip(out[i * n:(i + 1) * n], c) if c else out[i * n:(i + 1) * n]
                        for i, c in enumerate(combos))
        else:
            total = sum(torch.flip(network(torch.flip(x, c)).float(), c) if c else network(x).float() for c in combos)
    return total / len(combos)


class NnzooPredictor(MirroredForwardMixin, nnUNetPredictor):
    """nnU-Net's ``nnUNetPredictor`` with the network in reduced precision and, optionally, the mirrors batched.

    Args:
        dtype: autocast precision of the network (None: float32).
        batch_mirrors: run a patch's mirrored copies in one forward pass.
        **kwargs: ``nnUNetPredictor``'s arguments.
    """

    def __init__(self, *, dtype: torch.dtype | None, batch_mirrors: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dtype = dtype
        self.batch_mirrors = batch_mirrors

    def mirrored_forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = self.allowed_mirroring_axes if self.use_mirroring else None
        return mirrored_forward(self.network, x, mirror_axes=axes, dtype=self.dtype, batch=self.batch_mirrors)


@dataclass(frozen=True)
class Adaptation:
    """Test-time adaptation of a prediction run (``nnzoo predict --adapt``).

    Attributes:
        method: ``tent``, ``vptta`` or ``grata`` (:data:`nnzoo.trainers.adapt.METHODS`).
        hparams: typed hyperparameter overrides.
        continual: carry the adapted state from case to case (default: every case from the trained state).
        source_stats: per fold, the recorded source statistics (None where the method needs none).
    """

    method: str
    hparams: dict = field(default_factory=dict)
    continual: bool = False
    source_stats: tuple = ()


def case_seed(data: torch.Tensor) -> int:
    """A seed from a case's preprocessed data alone (so a case's adaptation does not depend on the other cases,
    their order, sharding or ``--continue``)."""
    digest = hashlib.blake2b(data.detach().cpu().contiguous().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2 ** 62)


class AdaptingPredictorMixin:
    """For :class:`NnzooPredictor`: per case and fold, adapt the network on the case's sliding-window tiles before
    nnU-Net's sliding window predicts it (:mod:`nnzoo.trainers.adapt`).

    nnU-Net's ``predict_logits_from_preprocessed_data`` loads each fold's weights (``load_state_dict``) and calls
    ``predict_sliding_window_return_logits`` per fold; this hooks that call: the fold's adapter (one per fold,
    each adapted on its own) adapts on the padded case's tiles in sliding-window order (the slicers are nnU-Net's
    own), then nnU-Net's sliding window runs with the adapted network, every tile through the adapter's
    ``transform`` (VPTTA's prompt); afterwards the trained values go back into the network. The random draws
    come from a generator seeded from the case's data and the fold. Adaptation runs in float32, or bfloat16
    where the prediction's reduced precision is bfloat16 and on GPUs that have it (float16 would need a gradient
    scaler).

    The tiles must be nnU-Net's own, in its order (VPTTA predicts each tile with the prompt adapted on it): they
    come from :func:`~nnzoo.trainers.nnunet_compat.sliding_window_tiles`, the seam's entry for the padding and the
    private slicers of nnU-Net's sliding window.
    """

    adaptation: Adaptation | None = None

    def enable_adaptation(self, adaptation: Adaptation | None) -> None:
        self.adaptation = adaptation
        self._adapters: dict[int, object] = {}
        self._adapter = None
        #: ``(case, seconds spent adapting, relative change or None)`` per case, all folds (change: their mean)
        self.adaptation_seconds: list[tuple[str | None, float, float | None]] = []
        self.current_case: str | None = None

    def _fold_adapter(self, index: int):
        if index not in self._adapters:
            from nnzoo.trainers.adapt import adapter_class

            a = self.adaptation
            cls = adapter_class(a.method)
            kwargs = {}
            if cls.needs_source_stats:
                kwargs = dict(source_stats=a.source_stats[index], num_input_channels=self._num_input_channels(),
                              patch_size=tuple(self.configuration_manager.patch_size))
            dtype = getattr(self, "dtype", None)
            autocast = torch.bfloat16 if (dtype == torch.bfloat16 or (
                self.device.type == "cuda" and torch.cuda.is_bf16_supported())) else None
            self._adapters[index] = cls(unwrap_network(self.network), multilabel=self.label_manager.has_regions,
                                        hparams=a.hparams, autocast_dtype=autocast, **kwargs)
        return self._adapters[index]

    def _num_input_channels(self) -> int:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        return determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        if self.adaptation is None:
            return super().predict_logits_from_preprocessed_data(data)
        self._seed = case_seed(data)
        self._fold = -1
        self._case_seconds = 0.0
        self._case_changes: list[float] = []
        out = super().predict_logits_from_preprocessed_data(data)
        change = sum(self._case_changes) / len(self._case_changes) if self._case_changes else None
        self.adaptation_seconds.append((self.current_case, self._case_seconds, change))
        return out

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        if self.adaptation is None:
            return super().predict_sliding_window_return_logits(input_image)
        from nnzoo.trainers import nnunet_compat as compat

        self._fold += 1
        continual = self.adaptation.continual
        self.network = self.network.to(self.device)
        tiles = iter(compat.sliding_window_tiles(self, input_image))
        # nnU-Net runs prediction in inference mode; adapting needs autograd and tensors made outside it
        with torch.inference_mode(False):
            adapter = self._fold_adapter(self._fold)
            adapter.begin_case(continual=continual)
        try:
            adapter.adapt(tiles, generator=torch.Generator().manual_seed(self._seed + self._fold))
            self._case_seconds += adapter.seconds[-1]
            self._adapter = adapter
            with adapter.predicting():
                return super().predict_sliding_window_return_logits(input_image)
        finally:
            self._adapter = None
            with torch.inference_mode(False):
                adapter.end_case(continual=continual)
            if adapter.last_change is not None:
                self._case_changes.append(adapter.last_change)

    def mirrored_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._adapter is not None:
            x = self._adapter.transform(x)
        return super().mirrored_forward(x)

    def predict_from_data_iterator(self, data_iterator, *args, **kwargs):
        def named(it):
            for item in it:
                ofile = item.get("ofile") if isinstance(item, dict) else None
                self.current_case = os.path.basename(ofile) if ofile else None
                yield item

        return super().predict_from_data_iterator(named(data_iterator), *args, **kwargs)


class AdaptingPredictor(AdaptingPredictorMixin, NnzooPredictor):
    """:class:`NnzooPredictor` with test-time adaptation (``nnzoo predict --adapt``).

    Args:
        adaptation: the method, hyperparameters, mode and source statistics.
        **kwargs: :class:`NnzooPredictor`'s arguments.
    """

    def __init__(self, *, adaptation: Adaptation, **kwargs) -> None:
        super().__init__(**kwargs)
        self.enable_adaptation(adaptation)


def make_predictor(*, exact: bool, device: torch.device, step_size: float, use_mirroring: bool,
                   adaptation: Adaptation | None = None):
    """The predictor for ``nnzoo predict``: nnU-Net's (``exact``) or :class:`NnzooPredictor`.

    Args:
        exact: nnU-Net's predictor unchanged (float32 on the CPU; bit-identical to ``nnUNetv2_predict``).
        device: the prediction device.
        step_size: sliding-window step as a fraction of the patch size.
        use_mirroring: mirroring test-time augmentation.
        adaptation: test-time adaptation (:class:`AdaptingPredictor`; not with ``exact``).

    Returns:
        An ``nnUNetPredictor`` (not yet initialised with a model).
    """
    kwargs = dict(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                  perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                  verbose_preprocessing=False, allow_tqdm=True)
    if exact:
        if adaptation is not None:
            raise ValueError("test-time adaptation runs in nnzoo's predictor, not nnU-Net's (exact)")
        return nnUNetPredictor(**kwargs)
    if adaptation is not None:
        return AdaptingPredictor(adaptation=adaptation, dtype=fast_dtype(device), batch_mirrors=device.type == "cuda",
                                 **kwargs)
    return NnzooPredictor(dtype=fast_dtype(device), batch_mirrors=device.type == "cuda", **kwargs)
