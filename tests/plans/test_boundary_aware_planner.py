"""Tests of BA-Net's planners: memory estimate with the boundary decoder, budget, shared preprocessing."""

from __future__ import annotations

import numpy as np
from helpers import TOY_MEDIAN as MEDIAN
from helpers import TOY_N_CASES as N_CASES
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnzoo.plans.base import estimate_network_feature_maps
from nnzoo.plans.boundary_aware import nnUNetPlannerBoundaryAware, nnUNetPlannerBoundaryAwareResEncM
from nnzoo.plans.registry import get_planner_class
from nnzoo.trainers.networks.banet import BoundaryAwareUNet


def _plan(planner) -> dict:
    return planner.get_plans_for_configuration(np.array([1.0, 1.0, 1.0]), np.array(MEDIAN), "nnUNetPlans_3d_fullres",
                                               float(N_CASES * np.prod(MEDIAN)), {})


def _banet_estimate(plan: dict) -> float:
    a = plan["architecture"]
    return float(estimate_network_feature_maps(BoundaryAwareUNet, plan["patch_size"], 1, 3, a["network_class_name"],
                                               a["arch_kwargs"], a["_kw_requires_import"]))


def _plain_estimate(plan: dict) -> float:
    a = plan["architecture"]
    return float(ExperimentPlanner.static_estimate_VRAM_usage(plan["patch_size"], 1, 3, a["network_class_name"],
                                                              a["arch_kwargs"], a["_kw_requires_import"]))


def test_defaults_and_shared_preprocessing(toy_dataset):
    planner = nnUNetPlannerBoundaryAware(999)
    assert planner.plans_identifier == "nnUNetPlans_BANet"
    assert planner.generate_data_identifier("3d_fullres") == "nnUNetPlans_3d_fullres"
    assert planner.generate_data_identifier("2d") == "nnUNetPlans_2d"
    # lowres spacing follows the (smaller) BA-Net fullres patch: own data
    assert planner.generate_data_identifier("3d_lowres") == "nnUNetPlans_BANet_3d_lowres"
    for name in ("nnUNetPlannerBoundaryAware", "nnUNetPlannerBoundaryAwareResEncM",
                 "nnUNetPlannerBoundaryAwareResEncL"):
        assert get_planner_class(name).__name__ == name


def test_estimate_counts_the_boundary_decoder(toy_dataset):
    plan = _plan(ExperimentPlanner(999, gpu_memory_target_in_gb=1))
    plain, banet = _plain_estimate(plan), _banet_estimate(plan)
    # the encoder is shared, the decoder doubled plus heads and attention maps
    assert 1.5 * plain < banet < 2.5 * plain


def test_banet_plan_fits_budget_where_plain_plan_does_not(toy_dataset):
    gb = 1.0  # small target so that the budget binds on the toy dataset
    plain_planner = ExperimentPlanner(999, gpu_memory_target_in_gb=gb)
    ba_planner = nnUNetPlannerBoundaryAware(999, gpu_memory_target_in_gb=gb)
    plain_plan, ba_plan = _plan(plain_planner), _plan(ba_planner)
    reference = ba_planner.UNet_reference_val_3d * gb / ba_planner.UNet_reference_val_corresp_GB
    ref_bs = ba_planner.UNet_reference_val_corresp_bs_3d

    def memory(estimate: float, plan: dict) -> float:  # nnU-Net's criterion: estimate scaled by batch size
        return estimate * plan["batch_size"] / ref_bs

    assert np.prod(plain_plan["patch_size"]) < np.prod(MEDIAN)  # the budget binds for the plain U-Net
    assert memory(_plain_estimate(plain_plan), plain_plan) <= reference
    assert memory(_banet_estimate(plain_plan), plain_plan) > reference  # plain plan used with BA-Net
    assert memory(_banet_estimate(ba_plan), ba_plan) <= reference  # BA-Net plan with BA-Net
    assert np.prod(ba_plan["patch_size"]) < np.prod(plain_plan["patch_size"])
    assert ba_plan["batch_size"] >= 2
    assert ba_plan["architecture"]["network_class_name"].endswith("PlainConvUNet")


def test_resenc_variant(toy_dataset):
    planner = nnUNetPlannerBoundaryAwareResEncM(999)
    assert planner.plans_identifier == "nnUNetResEncUNetMPlans_BANet"
    assert planner.generate_data_identifier("3d_fullres") == "nnUNetPlans_3d_fullres"
    plan = _plan(planner)
    assert plan["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    reference = planner.UNet_reference_val_3d * planner.UNet_vram_target_GB / planner.UNet_reference_val_corresp_GB
    assert _banet_estimate(plan) * plan["batch_size"] / planner.UNet_reference_val_corresp_bs_3d <= reference
