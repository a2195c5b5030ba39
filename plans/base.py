"""Shared pieces for nnzoo's method planners."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["SharedPreprocessingMixin", "NetworkEstimateMixin", "estimate_network_feature_maps"]


def estimate_network_feature_maps(network_class: type, patch_size: Sequence[int], input_channels: int,
                                  output_channels: int, arch_class_name: str, arch_kwargs: dict,
                                  arch_kwargs_req_import: Sequence[str], **network_kwargs) -> np.int64:
    """nnU-Net's VRAM proxy (stored feature-map elements per sample) for a method network.

    The network is built by :func:`~nnzoo.trainers.networks.common.network_from_arch` on the
    ``meta`` device (no memory, no initialisation) with deep supervision off, as nnU-Net does for
    its own estimate, and asked for ``compute_conv_feature_map_size(patch_size)``.

    Args:
        network_class: an :class:`~nnzoo.trainers.networks.common.EncoderDecoderNet` subclass.
        patch_size: spatial patch size.
        input_channels: image channels.
        output_channels: segmentation heads.
        arch_class_name: plan ``network_class_name`` (PlainConvUNet or ResidualEncoderUNet).
        arch_kwargs: plan ``arch_kwargs``.
        arch_kwargs_req_import: keys of ``arch_kwargs`` given as import paths.
        network_kwargs: further arguments of ``network_class``.

    Returns:
        The estimate, comparable with ``ExperimentPlanner.static_estimate_VRAM_usage``.
    """
    from nnzoo.trainers.networks.common import network_from_arch

    with torch.device("meta"):
        net = network_from_arch(network_class, arch_class_name, arch_kwargs, arch_kwargs_req_import, input_channels,
                                output_channels, deep_supervision=False, allow_init=False, **network_kwargs)
    return np.int64(net.compute_conv_feature_map_size(list(patch_size)))


class NetworkEstimateMixin:
    """Replaces an nnU-Net planner's VRAM estimate by that of a method network.

    Subclasses implement :meth:`network_class` (imported lazily: planning does not need the
    trainers until it estimates); patch and batch size are then chosen by nnU-Net's own search
    against the same reference, so the plan fits the method's memory rather than the U-Net's.
    """

    @classmethod
    def network_class(cls) -> type:
        raise NotImplementedError

    def static_estimate_VRAM_usage(self, patch_size, input_channels, output_channels, arch_class_name, arch_kwargs,
                                   arch_kwargs_req_import):
        return estimate_network_feature_maps(self.network_class(), patch_size, input_channels, output_channels,
                                             arch_class_name, arch_kwargs, arch_kwargs_req_import)


class SharedPreprocessingMixin:
    """Point a method planner's configurations at the base plans' preprocessed data.

    A method planner that changes only network, patch and batch size (not spacing,
    normalisation or resampling) produces the same preprocessed arrays as the planner it
    derives from for ``2d`` and ``3d_fullres``. With this mixin those configurations use the
    base plans' data identifier (``nnUNetPlans_3d_fullres``...), so the dataset is stored once;
    ``nnzoo plan_and_preprocess`` skips preprocessing a configuration whose data folder is
    complete and identical. ``3d_lowres`` keeps its own folder: its spacing derives from the
    method's fullres patch, as in nnU-Net's ResEnc planners.

    Attributes:
        BASE_PLANS_NAME: plans name of the planner whose preprocessing is shared.
    """

    BASE_PLANS_NAME = "nnUNetPlans"

    SHARED_CONFIGURATIONS = ("2d", "3d_fullres")

    def generate_data_identifier(self, configuration_name: str) -> str:
        if configuration_name in self.SHARED_CONFIGURATIONS:
            return f"{self.BASE_PLANS_NAME}_{configuration_name}"
        return f"{self.plans_identifier}_{configuration_name}"
