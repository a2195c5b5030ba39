"""Planners for MC-Net+: nnU-Net's planner with the memory of its shared encoder, three decoders and unlabeled batch."""

from __future__ import annotations

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from .base import MethodPlannerMixin, NetworkEstimateMixin, SharedPreprocessingMixin
from .registry import register_planner

__all__ = ["nnUNetPlannerMCNet", "nnUNetPlannerMCNetFit"]


class _MCNet(MethodPlannerMixin, NetworkEstimateMixin, SharedPreprocessingMixin):
    """MC-Net+ stores the feature maps of the shared encoder and three decoders for every patch, and
    each step adds ``UNLABELED_BATCH_RATIO`` unlabeled patches per labeled one (the trainer's; 1 by
    default, so 2 patches per planned batch element): at equal patch size about six times the plain
    U-Net's memory (``MCNet.compute_conv_feature_map_size``)."""

    PLANS_NAME = "nnUNetPlans_MCNet"

    @classmethod
    def patches_per_sample(cls) -> float:
        """1 labeled + ``nnUNetTrainerMCNet.UNLABELED_BATCH_RATIO`` unlabeled patches per planned batch element."""
        from nnzoo.trainers.mcnet import nnUNetTrainerMCNet

        return 1 + nnUNetTrainerMCNet.UNLABELED_BATCH_RATIO

    @classmethod
    def network_class(cls) -> type:
        from nnzoo.trainers.networks.mcnet import MCNet

        return MCNet


@register_planner
class nnUNetPlannerMCNet(_MCNet, ExperimentPlanner):
    """nnU-Net's default planner for ``nnUNetTrainerMCNet``: nnU-Net's patch and labeled batch (what the
    supervised baseline sees), plans ``nnUNetPlans_MCNet`` recording MC-Net+'s memory there; 2d and
    3d_fullres reuse ``nnUNetPlans``' data."""


@register_planner
class nnUNetPlannerMCNetFit(_MCNet, ExperimentPlanner):
    """As :class:`nnUNetPlannerMCNet`, but patch and batch shrink until MC-Net+ (three decoders, labeled +
    unlabeled patches) fits the GPU memory target."""

    FIT_MEMORY = True
