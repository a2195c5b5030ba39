"""Planner for MC-Net+: nnU-Net's planner with a memory estimate for three decoders and the unlabeled batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from .base import SharedPreprocessingMixin
from .registry import register_planner

__all__ = ["estimate_mcnet_feature_maps", "nnUNetPlannerMCNet"]


def estimate_mcnet_feature_maps(patch_size: Sequence[int], input_channels: int, output_channels: int,
                                arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str],
                                unlabeled_per_labeled: float = 1.0) -> np.int64:
    """nnU-Net's VRAM proxy for one *labeled* sample of MC-Net+ on a plan architecture.

    Counts the shared encoder and all three decoders (network built on the ``meta`` device) and
    scales by ``1 + unlabeled_per_labeled``: every labeled sample travels with that many unlabeled
    ones through the same forward pass, so nnU-Net's batch size keeps meaning "labeled cases".

    Returns:
        The estimate, comparable with ``ExperimentPlanner.static_estimate_VRAM_usage``.
    """
    from nnzoo.trainers.networks.mcnet import build_mcnet_from_arch

    with torch.device("meta"):
        net = build_mcnet_from_arch(arch_class_name, arch_kwargs, arch_kwargs_req_import, input_channels,
                                    output_channels, deep_supervision=False, allow_init=False)
    return np.int64(net.compute_conv_feature_map_size(list(patch_size)) * (1.0 + unlabeled_per_labeled))


@register_planner
class nnUNetPlannerMCNet(SharedPreprocessingMixin, ExperimentPlanner):
    """nnU-Net's default planner with patch/batch budgeted for ``nnUNetTrainerMCNet``.

    MC-Net+ stores the feature maps of three decoders and forwards an unlabeled batch as large as
    the labeled one, so at equal patch size it needs several times the plain U-Net's memory.
    Plans are written as ``nnUNetPlans_MCNet``; 2d and 3d_fullres reuse ``nnUNetPlans``' data.

    Attributes:
        UNLABELED_PER_LABELED: unlabeled samples per labeled one in a training batch.
    """

    UNLABELED_PER_LABELED = 1.0

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlans_MCNet",
                 overwrite_target_spacing: list[float] | tuple[float, ...] | None = None,
                 suppress_transpose: bool = False) -> None:
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)

    def static_estimate_VRAM_usage(self, patch_size, input_channels, output_channels, arch_class_name, arch_kwargs,
                                   arch_kwargs_req_import):
        return estimate_mcnet_feature_maps(patch_size, input_channels, output_channels, arch_class_name,
                                           arch_kwargs, arch_kwargs_req_import, self.UNLABELED_PER_LABELED)
