"""Method planners: nnU-Net's patch by default with the method's memory recorded; ``...Fit`` planners fit the budget.

Parametrized over every registered nnzoo planner, on a planner's view of a toy dataset (no files).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TOY_MEDIAN as MEDIAN
from helpers import TOY_N_CASES as N_CASES
from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as dep
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnzoo.plans.base import MEMORY_KEY, memory_note
from nnzoo.plans.registry import get_planner_class, list_planners, plans_name_of
from nnzoo.trainers.cotr import nnUNetTrainerCoTr, strides_for_configuration
from nnzoo.trainers.networks.cotr import ARCH_KEYS, COTR_CLASS_NAME, total_stride

PLANNERS = list_planners()
OFFICIAL = [p for p in PLANNERS if not get_planner_class(p).FIT_MEMORY]
FIT = [p for p in PLANNERS if get_planner_class(p).FIT_MEMORY]


def _base(cls: type) -> type:
    """The nnU-Net planner a method planner derives from."""
    return next(b for b in cls.__mro__ if b.__module__.startswith("nnunetv2."))


def _plan(planner, spacing=(1.0, 1.0, 1.0), median=MEDIAN) -> dict:
    return planner.get_plans_for_configuration(np.array(spacing), np.array(median), "nnUNetPlans_3d_fullres",
                                               float(N_CASES * np.prod(median)), {})


def _memory(planner, plan: dict, estimate: float) -> float:
    """nnU-Net's criterion, in units of its memory reference: estimate scaled by the batch size."""
    reference = planner.UNet_reference_val_3d * planner.UNet_vram_target_GB / planner.UNet_reference_val_corresp_GB
    return estimate * plan["batch_size"] / planner.UNet_reference_val_corresp_bs_3d / reference


def _estimates(planner, plan: dict) -> tuple[float, float]:
    a = plan["architecture"]
    args = (plan["patch_size"], 1, 3, a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"])
    return float(ExperimentPlanner.static_estimate_VRAM_usage(*args)), float(planner.method_estimate(*args))


def test_every_fit_planner_has_an_official_twin():
    assert sorted(p[:-3] for p in FIT) == sorted(p for p in OFFICIAL if p + "Fit" in FIT)
    for p in FIT:
        assert plans_name_of(p) == plans_name_of(p[:-3])  # same plans: `-tr` finds either


@pytest.mark.parametrize("name", PLANNERS)
def test_names_and_shared_preprocessing(toy_dataset, name):
    planner = get_planner_class(name)(999)
    assert planner.plans_identifier == get_planner_class(name).PLANS_NAME
    assert planner.generate_data_identifier("3d_fullres") == "nnUNetPlans_3d_fullres"
    assert planner.generate_data_identifier("2d") == "nnUNetPlans_2d"
    assert planner.generate_data_identifier("3d_lowres") == f"{planner.plans_identifier}_3d_lowres"


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_planners_keep_nnunets_patch_and_record_the_memory(toy_dataset, monkeypatch, name):
    cls = get_planner_class(name)
    base_plan, plan = _plan(_base(cls)(999)), _plan(cls(999))
    assert (plan["patch_size"], plan["batch_size"]) == (base_plan["patch_size"], base_plan["batch_size"])
    saved = {}
    monkeypatch.setattr(dep, "save_json", lambda obj, f, sort_keys=False: saved.update(obj))
    monkeypatch.setattr(dep, "maybe_mkdir_p", lambda f: None)
    planner = cls(999)
    planner.save_plans({"configurations": {"3d_fullres": plan}})
    note = saved[MEMORY_KEY]["3d_fullres"]
    unet, method = _estimates(planner, base_plan)
    assert note["method_vs_unet"] == pytest.approx(method / unet, rel=1e-3) and note["method_vs_unet"] > 1.1
    assert note["gpu_memory_target_gb"] == pytest.approx(planner.UNet_vram_target_GB * method / unet, abs=0.05)


@pytest.mark.parametrize("name", FIT)
def test_fit_planners_fit_the_budget_where_nnunets_plan_does_not(toy_dataset, name):
    cls = get_planner_class(name)
    base = _base(cls)(999, gpu_memory_target_in_gb=1.0)
    fit = cls(999, gpu_memory_target_in_gb=1.0)  # a small target, so that the budget binds on the toy dataset
    base_plan, fit_plan = _plan(base), _plan(fit)
    assert _memory(base, base_plan, _estimates(fit, base_plan)[0]) <= 1  # the U-Net fits its own plan
    assert _memory(fit, base_plan, _estimates(fit, base_plan)[1]) > 1  # the method does not fit it
    assert _memory(fit, fit_plan, _estimates(fit, fit_plan)[1]) <= 1  # the method fits its own plan
    assert np.prod(fit_plan["patch_size"]) < np.prod(base_plan["patch_size"]) and fit_plan["batch_size"] >= 2


@pytest.mark.parametrize("name", ["nnUNetPlannerCoTr", "nnUNetPlannerCoTrFit"])
@pytest.mark.parametrize("spacing,median", [((1.0, 1.0, 1.0), (128, 128, 128)), ((2.5, 0.8, 0.8), (120, 400, 400)),
                                            ((5.0, 1.2, 1.2), (24, 256, 256))])
def test_cotr_plans_describe_a_buildable_cotr(toy_dataset, monkeypatch, name, spacing, median):
    """The saved plan's architecture is CoTr's; its patch is divisible by CoTr's total stride."""
    saved = {}
    monkeypatch.setattr(dep, "save_json", lambda obj, f, sort_keys=False: saved.update(obj))
    monkeypatch.setattr(dep, "maybe_mkdir_p", lambda f: None)
    planner = get_planner_class(name)(999)
    plan = _plan(planner, spacing, median)
    planner.save_plans({"configurations": {"3d_fullres": plan}})
    cfg = saved["configurations"]["3d_fullres"]
    assert cfg["architecture"]["network_class_name"] == COTR_CLASS_NAME
    plans = {"dataset_name": "Dataset999_Toy", "plans_name": "nnUNetPlans_CoTr", "configurations": {"3d_fullres": cfg},
             "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": list(median),
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "experiment_planner_used": name, "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {}}
    cm = PlansManager(plans).get_configuration("3d_fullres")
    strides = strides_for_configuration(cm)
    assert all(p % d == 0 for p, d in zip(cfg["patch_size"], total_stride(strides)))
    with torch.device("meta"):
        net = nnUNetTrainerCoTr.build_network_architecture(PlansManager(plans), cm, 1, 3, enable_deep_supervision=False)
        generic = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                         cm.network_arch_init_kwargs_req_import, 1, 3, allow_init=False,
                                         deep_supervision=False)
    assert list(net.state_dict()) == list(generic.state_dict())
    assert [tuple(s) for s in net.encoder.strides] == [tuple(s) for s in strides]
    arch = cfg["architecture"]["arch_kwargs"]
    assert {k: arch[k] for k in ARCH_KEYS} == {k: list(v) if isinstance(v, tuple) else v
                                               for k, v in nnUNetTrainerCoTr.network_kwargs().items()}


@pytest.mark.parametrize("name", ["nnUNetPlannerMCNet", "nnUNetPlannerMCNetFit"])
def test_mcnet_planners_count_the_trainers_unlabeled_patches(monkeypatch, name):
    """The planners' patches per batch element are the trainer's labeled + unlabeled patches (one declaration)."""
    from nnzoo.trainers.mcnet import nnUNetTrainerMCNet

    cls = get_planner_class(name)
    assert cls.patches_per_sample() == 1 + nnUNetTrainerMCNet.UNLABELED_BATCH_RATIO == 2
    monkeypatch.setattr(nnUNetTrainerMCNet, "UNLABELED_BATCH_RATIO", 2.0)
    assert cls.patches_per_sample() == 3


def test_memory_note_follows_the_unlabeled_patches_of_the_run():
    note = {"patch_size": [32, 32, 32], "batch_size": 2, "patches_per_sample": 2, "method_vs_unet": 6.0,
            "gpu_memory_target_gb": 48.0}
    plans = {MEMORY_KEY: {"3d_fullres": note}}
    assert memory_note(plans, "3d_fullres") == note and memory_note(plans, "2d") is None
    assert memory_note(plans, "3d_fullres", 2.0) == note
    three = memory_note(plans, "3d_fullres", 3.0)  # --hparam UNLABELED_BATCH_RATIO=2
    assert three["method_vs_unet"] == 9.0 and three["gpu_memory_target_gb"] == 72.0
    old = {k: v for k, v in note.items() if k != "patches_per_sample"}  # plans written before the field
    assert memory_note({MEMORY_KEY: {"3d_fullres": old}}, "3d_fullres", 3.0) == old
