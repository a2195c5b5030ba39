"""nnunetv2 internals of the predictor's sliding window (see :mod:`nnzoo.trainers.nnunet_compat`)."""

from __future__ import annotations

import torch


class MirroredForwardMixin:
    """For a subclass of ``nnUNetPredictor``: each patch of nnU-Net's sliding window goes through
    ``self.mirrored_forward(patch)`` (the network and its mirrored copies, averaged) instead of
    nnU-Net's one-forward-per-mirror loop; the sliding window, Gaussian weighting, fold averaging and
    export stay nnU-Net's.

    Why internal: the per-patch step is the private ``nnUNetPredictor._internal_maybe_mirror_and_predict``,
    called by the private ``_internal_predict_sliding_window_return_logits``; a predictor that runs the
    mirrors in another precision or in one batch has no other place to do it.
    """

    def mirrored_forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - subclasses define it
        raise NotImplementedError

    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.mirrored_forward(x)


def sliding_window_tiles(predictor, input_image: torch.Tensor) -> list[torch.Tensor]:
    """The tiles nnU-Net's sliding window feeds the network for ``input_image`` (``(C, *spatial)``), each
    ``(1, C, *patch)``, in nnU-Net's order (what a test-time adaptation adapts on before the same window predicts).

    Why internal: the padding and the tile positions are computed inside
    ``nnUNetPredictor.predict_sliding_window_return_logits`` (``pad_nd_image`` to the patch size, then the
    private ``_internal_get_sliding_window_slicers``); there is no public query for them.
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    data, _ = pad_nd_image(input_image, predictor.configuration_manager.patch_size, "constant", {"value": 0}, True,
                           None)
    return [data[s][None] for s in predictor._internal_get_sliding_window_slicers(data.shape[1:])]
