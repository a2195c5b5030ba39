"""Planners for BA-Net: nnU-Net's planners with a memory estimate that counts the boundary decoder."""

from __future__ import annotations

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL,
    nnUNetPlannerResEncM,
)

from .base import NetworkEstimateMixin, SharedPreprocessingMixin
from .registry import register_planner

__all__ = ["nnUNetPlannerBoundaryAware", "nnUNetPlannerBoundaryAwareResEncM",
           "nnUNetPlannerBoundaryAwareResEncL"]


class _BoundaryAwareEstimate(NetworkEstimateMixin, SharedPreprocessingMixin):
    """Replaces the planner's VRAM estimate with BA-Net's; shares the base plans' 2d/3d_fullres data.

    The estimate counts both decoders, the boundary heads and the attention maps (see
    ``BoundaryAwareDecoder.compute_conv_feature_map_size``). ``3d_lowres`` keeps its own data
    identifier: its spacing is derived from the (smaller) BA-Net fullres patch and may differ from
    the base plans' lowres spacing.
    """

    @classmethod
    def network_class(cls) -> type:
        from nnzoo.trainers.networks.banet import BoundaryAwareUNet

        return BoundaryAwareUNet


@register_planner
class nnUNetPlannerBoundaryAware(_BoundaryAwareEstimate, ExperimentPlanner):
    """nnU-Net's default planner (plain U-Net) with patch/batch size budgeted for BA-Net's two decoders.

    For ``nnUNetTrainerBoundaryAware``. Plans are written as ``nnUNetPlans_BANet``; 2d and
    3d_fullres reuse ``nnUNetPlans``' preprocessed data.
    """

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlans_BANet",
                 overwrite_target_spacing: list[float] | tuple[float, ...] | None = None,
                 suppress_transpose: bool = False) -> None:
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)


@register_planner
class nnUNetPlannerBoundaryAwareResEncM(_BoundaryAwareEstimate, nnUNetPlannerResEncM):
    """nnU-Net's ResEnc-M planner (residual encoder, 8 GB) budgeted for BA-Net; plans ``nnUNetResEncUNetMPlans_BANet``."""

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetResEncUNetMPlans_BANet",
                 overwrite_target_spacing: list[float] | tuple[float, ...] | None = None,
                 suppress_transpose: bool = False) -> None:
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)


@register_planner
class nnUNetPlannerBoundaryAwareResEncL(_BoundaryAwareEstimate, nnUNetPlannerResEncL):
    """nnU-Net's ResEnc-L planner (residual encoder, 24 GB) budgeted for BA-Net; plans ``nnUNetResEncUNetLPlans_BANet``."""

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 24,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetResEncUNetLPlans_BANet",
                 overwrite_target_spacing: list[float] | tuple[float, ...] | None = None,
                 suppress_transpose: bool = False) -> None:
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
