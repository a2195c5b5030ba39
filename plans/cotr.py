"""Planners for CoTr: nnU-Net's planner with CoTr's memory (CNN and deformable Transformer) and architecture."""

from __future__ import annotations

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from .base import MethodPlannerMixin, NetworkEstimateMixin, SharedPreprocessingMixin
from .registry import register_planner

__all__ = ["nnUNetPlannerCoTr", "nnUNetPlannerCoTrFit"]


class _CoTr(MethodPlannerMixin, NetworkEstimateMixin, SharedPreprocessingMixin):
    """CoTr's memory estimate and architecture entry on top of nnU-Net's planning.

    The architecture is ``nnUNetTrainerCoTr.network_kwargs()`` (the trainer's hyperparameters). The
    estimate is :func:`~nnzoo.trainers.networks.cotr.estimate_train_memory_elements`
    (convolutions plus the Transformer's tokens x d_model x layers activations and sampling
    tensors) for the CoTr strides derived from the U-Net nnU-Net plans for the patch. Every
    configuration's ``architecture`` entry is replaced by CoTr's
    (:func:`~nnzoo.trainers.networks.cotr.cotr_plan_architecture`), which the trainer and nnU-Net's
    predictor build the network from. nnU-Net's patches are divisible by CoTr's total stride (its
    strides are a subset of the U-Net's poolings).
    """

    PLANS_NAME = "nnUNetPlans_CoTr"

    def method_estimate(self, patch_size, input_channels: int, output_channels: int, arch_class_name: str,
                        arch_kwargs: dict, arch_kwargs_req_import) -> int:
        from nnzoo.trainers.cotr import nnUNetTrainerCoTr
        from nnzoo.trainers.networks.cotr import cotr_strides, estimate_train_memory_elements

        arch = nnUNetTrainerCoTr.network_kwargs()
        strides = cotr_strides(arch_kwargs["strides"], len(patch_size), 1 + len(arch["stage_channels"]))
        return self.patches_per_sample() * estimate_train_memory_elements(
            patch_size, strides, input_channels=input_channels, num_classes=output_channels, **arch)

    def method_architecture(self, configuration: dict) -> dict:
        from nnzoo.trainers.cotr import nnUNetTrainerCoTr
        from nnzoo.trainers.networks.cotr import cotr_plan_architecture

        return cotr_plan_architecture(configuration["architecture"]["arch_kwargs"]["strides"],
                                      len(configuration["patch_size"]), nnUNetTrainerCoTr.network_kwargs())

@register_planner
class nnUNetPlannerCoTr(_CoTr, ExperimentPlanner):
    """nnU-Net's default planner for ``nnUNetTrainerCoTr``: nnU-Net's patch and batch (the official code
    trains with nnU-Net's plans, 48x192x192 on BCV) and the CoTr architecture; plans ``nnUNetPlans_CoTr``
    record CoTr's memory there. 2d and 3d_fullres reuse ``nnUNetPlans``' preprocessed data."""


@register_planner
class nnUNetPlannerCoTrFit(_CoTr, ExperimentPlanner):
    """As :class:`nnUNetPlannerCoTr`, but patch and batch shrink until CoTr fits the GPU memory target
    (plans ``nnUNetPlans_CoTr``, for GPUs smaller than CoTr needs at nnU-Net's patch)."""

    FIT_MEMORY = True
