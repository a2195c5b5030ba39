"""Planner for MC-Net+: nnU-Net's planner with a memory estimate for the shared encoder and three decoders."""

from __future__ import annotations

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from .base import NetworkEstimateMixin, SharedPreprocessingMixin
from .registry import register_planner

__all__ = ["nnUNetPlannerMCNet"]


@register_planner
class nnUNetPlannerMCNet(NetworkEstimateMixin, SharedPreprocessingMixin, ExperimentPlanner):
    """nnU-Net's default planner with patch/batch budgeted for ``nnUNetTrainerMCNet``.

    MC-Net+ stores the feature maps of the shared encoder and three decoders for every patch of
    the batch (labeled and unlabeled patches share the planned batch), so at equal patch size it
    needs about three times the plain U-Net's memory; the estimate is
    ``MCNet.compute_conv_feature_map_size`` and nnU-Net's search shrinks patch and batch to fit.
    Plans are written as ``nnUNetPlans_MCNet``; 2d and 3d_fullres reuse ``nnUNetPlans``' data.
    """

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlans_MCNet",
                 overwrite_target_spacing: list[float] | tuple[float, ...] | None = None,
                 suppress_transpose: bool = False) -> None:
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)

    @classmethod
    def network_class(cls) -> type:
        from nnzoo.trainers.networks.mcnet import MCNet

        return MCNet
