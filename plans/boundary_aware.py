"""Planners for BA-Net: nnU-Net's planners that account for the boundary decoder's memory.

The default planners keep nnU-Net's patch and batch (the official BA-Net trains with nnU-Net's
plans) and record the memory BA-Net needs there; the ``...Fit`` planners shrink patch and batch
until BA-Net fits the GPU memory target.
"""

from __future__ import annotations

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL,
    nnUNetPlannerResEncM,
)

from .base import MethodPlannerMixin, NetworkEstimateMixin, SharedPreprocessingMixin
from .registry import register_planner

__all__ = ["nnUNetPlannerBoundaryAware", "nnUNetPlannerBoundaryAwareFit", "nnUNetPlannerBoundaryAwareResEncM",
           "nnUNetPlannerBoundaryAwareResEncMFit", "nnUNetPlannerBoundaryAwareResEncL",
           "nnUNetPlannerBoundaryAwareResEncLFit"]


class _BoundaryAware(MethodPlannerMixin, NetworkEstimateMixin, SharedPreprocessingMixin):
    """BA-Net's memory (both decoders, boundary heads, attention maps; see
    ``BoundaryAwareDecoder.compute_conv_feature_map_size``); shares the base plans' 2d/3d_fullres data."""

    @classmethod
    def network_class(cls) -> type:
        from nnzoo.trainers.networks.banet import BoundaryAwareUNet

        return BoundaryAwareUNet


@register_planner
class nnUNetPlannerBoundaryAware(_BoundaryAware, ExperimentPlanner):
    """nnU-Net's default planner for ``nnUNetTrainerBoundaryAware``: nnU-Net's patch and batch, as the
    official code; plans ``nnUNetPlans_BANet`` record BA-Net's memory there (about 1.8x the U-Net's)."""

    PLANS_NAME = "nnUNetPlans_BANet"


@register_planner
class nnUNetPlannerBoundaryAwareFit(_BoundaryAware, ExperimentPlanner):
    """nnU-Net's default planner with patch/batch shrunk until BA-Net's two decoders fit the GPU memory
    target (plans ``nnUNetPlans_BANet``, for GPUs smaller than BA-Net needs at nnU-Net's patch)."""

    PLANS_NAME = "nnUNetPlans_BANet"
    FIT_MEMORY = True


@register_planner
class nnUNetPlannerBoundaryAwareResEncM(_BoundaryAware, nnUNetPlannerResEncM):
    """nnU-Net's ResEnc-M planner (residual encoder, 8 GB) for BA-Net; plans ``nnUNetResEncUNetMPlans_BANet``."""

    PLANS_NAME = "nnUNetResEncUNetMPlans_BANet"


@register_planner
class nnUNetPlannerBoundaryAwareResEncMFit(_BoundaryAware, nnUNetPlannerResEncM):
    """ResEnc-M planner with patch/batch shrunk until BA-Net fits the memory target."""

    PLANS_NAME = "nnUNetResEncUNetMPlans_BANet"
    FIT_MEMORY = True


@register_planner
class nnUNetPlannerBoundaryAwareResEncL(_BoundaryAware, nnUNetPlannerResEncL):
    """nnU-Net's ResEnc-L planner (residual encoder, 24 GB) for BA-Net; plans ``nnUNetResEncUNetLPlans_BANet``."""

    PLANS_NAME = "nnUNetResEncUNetLPlans_BANet"


@register_planner
class nnUNetPlannerBoundaryAwareResEncLFit(_BoundaryAware, nnUNetPlannerResEncL):
    """ResEnc-L planner with patch/batch shrunk until BA-Net fits the memory target."""

    PLANS_NAME = "nnUNetResEncUNetLPlans_BANet"
    FIT_MEMORY = True
