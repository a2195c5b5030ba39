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
"""

from __future__ import annotations

import itertools

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnzoo.trainers.nnunet_compat import MirroredForwardMixin

__all__ = ["fast_dtype", "mirror_combinations", "mirrored_forward", "make_predictor", "NnzooPredictor"]


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


def make_predictor(*, exact: bool, device: torch.device, step_size: float, use_mirroring: bool):
    """The predictor for ``nnzoo predict``: nnU-Net's (``exact``) or :class:`NnzooPredictor`.

    Args:
        exact: nnU-Net's predictor unchanged (float32 on the CPU; bit-identical to ``nnUNetv2_predict``).
        device: the prediction device.
        step_size: sliding-window step as a fraction of the patch size.
        use_mirroring: mirroring test-time augmentation.

    Returns:
        An ``nnUNetPredictor`` (not yet initialised with a model).
    """
    kwargs = dict(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                  perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                  verbose_preprocessing=False, allow_tqdm=True)
    if exact:
        return nnUNetPredictor(**kwargs)
    return NnzooPredictor(dtype=fast_dtype(device), batch_mirrors=device.type == "cuda", **kwargs)
