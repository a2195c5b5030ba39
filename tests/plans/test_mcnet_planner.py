"""MC-Net+'s planner budgets the shared encoder and three decoders for every patch of the batch."""

from __future__ import annotations

import numpy as np
from helpers import TOY_MEDIAN as MEDIAN
from helpers import TOY_N_CASES as N_CASES
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnzoo.plans.base import estimate_network_feature_maps
from nnzoo.plans.mcnet import nnUNetPlannerMCNet
from nnzoo.plans.registry import get_planner_class
from nnzoo.trainers.networks.mcnet import MCNet


def _plan(planner) -> dict:
    return planner.get_plans_for_configuration(np.array([1.0, 1.0, 1.0]), np.array(MEDIAN), "nnUNetPlans_3d_fullres",
                                               float(N_CASES * np.prod(MEDIAN)), {})


def _estimates(plan: dict) -> tuple[float, float]:
    a = plan["architecture"]
    args = (plan["patch_size"], 1, 3, a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"])
    return float(ExperimentPlanner.static_estimate_VRAM_usage(*args)), float(estimate_network_feature_maps(MCNet, *args))


def test_mcnet_plan_fits_budget_where_plain_plan_does_not(toy_dataset):
    gb = 1.0
    plain_plan = _plan(ExperimentPlanner(999, gpu_memory_target_in_gb=gb))
    planner = nnUNetPlannerMCNet(999, gpu_memory_target_in_gb=gb)
    mc_plan = _plan(planner)
    assert planner.plans_identifier == "nnUNetPlans_MCNet" and get_planner_class("nnUNetPlannerMCNet") is nnUNetPlannerMCNet
    assert planner.generate_data_identifier("3d_fullres") == "nnUNetPlans_3d_fullres"
    reference = planner.UNet_reference_val_3d * gb / planner.UNet_reference_val_corresp_GB
    ref_bs = planner.UNet_reference_val_corresp_bs_3d
    plain, mc = _estimates(plain_plan)
    assert 1.8 * plain < mc < 4 * plain  # shared encoder + three decoders per patch
    assert plain * plain_plan["batch_size"] / ref_bs <= reference
    assert mc * plain_plan["batch_size"] / ref_bs > reference  # the plain plan used with MC-Net+
    assert _estimates(mc_plan)[1] * mc_plan["batch_size"] / ref_bs <= reference
    assert np.prod(mc_plan["patch_size"]) < np.prod(plain_plan["patch_size"])
