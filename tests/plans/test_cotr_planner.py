"""Tests of the CoTr planner: divisible patches, memory budget with the Transformer, usable plans."""

from __future__ import annotations

import pydoc

import numpy as np
import pytest
import torch
from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as dep
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnzoo.plans.cotr import nnUNetPlannerCoTr, plan_cotr_patch
from nnzoo.plans.registry import get_planner_class
from nnzoo.trainers.cotr import nnUNetTrainerCoTr, strides_for_configuration
from nnzoo.trainers.networks.cotr import CoTr, estimate_train_memory_elements, total_stride

N_CASES = 4


class _TinyTrainer(nnUNetTrainerCoTr):
    STEM_CHANNELS, STAGE_CHANNELS, BLOCKS_PER_STAGE, STEM_KERNEL_SIZE = 4, (8, 16, 16), (1, 1, 1), 3
    D_MODEL, N_HEADS, N_POINTS, N_LAYERS, FFN_DIM = 16, 2, 2, 1, 32


@pytest.fixture
def toy_planner(monkeypatch):
    """Factory of CoTr planners on a 4-case dataset of a given median shape, without files on disk."""
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2},
                    "numTraining": N_CASES, "file_ending": ".nii.gz"}
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # nnU-Net's own estimate calls torch.set_num_threads with it
    monkeypatch.setattr(dep, "maybe_convert_to_dataset_name", lambda _: "Dataset998_Toy")
    monkeypatch.setattr(dep, "nnUNet_raw", "/nonexistent/raw")
    monkeypatch.setattr(dep, "nnUNet_preprocessed", "/nonexistent/preprocessed")
    monkeypatch.setattr(dep, "isfile", lambda f: f.endswith("dataset_fingerprint.json"))
    monkeypatch.setattr(dep, "get_filenames_of_train_images_and_targets", lambda *a: {})
    threads = torch.get_num_threads()

    def make(median, spacing, gb=8.0):
        fingerprint = {"median_relative_size_after_cropping": 1.0, "spacings": [list(spacing)] * N_CASES,
                       "shapes_after_crop": [list(median)] * N_CASES}
        monkeypatch.setattr(dep, "load_json",
                            lambda f: fingerprint if f.endswith("dataset_fingerprint.json") else dataset_json)
        return nnUNetPlannerCoTr(998, gpu_memory_target_in_gb=gb)

    yield make
    torch.set_num_threads(threads)


def _plan(planner, median, spacing) -> dict:
    return planner.get_plans_for_configuration(np.array(spacing, dtype=float), np.array(median, dtype=float),
                                               planner.generate_data_identifier("3d_fullres" if len(spacing) == 3 else "2d"),
                                               float(N_CASES * np.prod(median)), {})


def _check_fits(plan: dict, planner, ndim: int) -> float:
    """Patch divisible by the strides the trainer derives; estimate within nnU-Net's scaled reference."""
    cm = ConfigurationManager(plan)
    strides = strides_for_configuration(cm)
    assert [list(s) for s in strides] == plan["architecture"]["arch_kwargs"]["strides"]
    div = total_stride(strides)
    assert all(p % d == 0 and p >= d for p, d in zip(plan["patch_size"], div))
    est = estimate_train_memory_elements(plan["patch_size"], strides, 1, 3, **nnUNetTrainerCoTr.network_kwargs())
    reference = (planner.UNet_reference_val_3d if ndim == 3 else planner.UNet_reference_val_2d) * \
        planner.UNet_vram_target_GB / planner.UNet_reference_val_corresp_GB
    ref_bs = planner.UNet_reference_val_corresp_bs_3d if ndim == 3 else planner.UNet_reference_val_corresp_bs_2d
    assert plan["batch_size"] >= 2
    assert est * plan["batch_size"] / ref_bs <= reference
    return est


def test_defaults_and_shared_preprocessing(toy_planner):
    planner = toy_planner((64, 64, 64), (1.0, 1.0, 1.0))
    assert planner.plans_identifier == "nnUNetPlans_CoTr"
    assert planner.generate_data_identifier("3d_fullres") == "nnUNetPlans_3d_fullres"
    assert planner.generate_data_identifier("2d") == "nnUNetPlans_2d"
    assert planner.generate_data_identifier("3d_lowres") == "nnUNetPlans_CoTr_3d_lowres"
    assert get_planner_class("nnUNetPlannerCoTr") is nnUNetPlannerCoTr


@pytest.mark.parametrize("median,spacing", [((128, 128, 128), (1.0, 1.0, 1.0)),
                                            ((120, 400, 400), (2.5, 0.8, 0.8)),
                                            ((24, 256, 256), (5.0, 1.2, 1.2))])
def test_3d_plans_are_divisible_and_within_budget(toy_planner, median, spacing):
    planner = toy_planner(median, spacing)
    plan = _plan(planner, median, spacing)
    _check_fits(plan, planner, 3)
    assert plan["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert pydoc.locate(plan["architecture"]["network_class_name"]) is CoTr


def test_2d_plan(toy_planner):
    planner = toy_planner((1, 512, 512), (1.0, 0.7, 0.7))
    plan = _plan(planner, (512, 512), (0.7, 0.7))
    _check_fits(plan, planner, 2)
    assert plan["architecture"]["arch_kwargs"]["strides"] == [[2, 2]] * 4


def test_transformer_memory_shrinks_the_patch(toy_planner):
    """With a small target the patch shrinks; the Transformer's share of the estimate is substantial."""
    median, spacing = (128, 128, 128), (1.0, 1.0, 1.0)
    big = _plan(toy_planner(median, spacing, 8.0), median, spacing)
    planner = toy_planner(median, spacing, 2.0)
    small = _plan(planner, median, spacing)
    est = _check_fits(small, planner, 3)
    assert np.prod(small["patch_size"]) < np.prod(big["patch_size"])
    strides = strides_for_configuration(ConfigurationManager(small))
    kw = nnUNetTrainerCoTr.network_kwargs()
    conv_only = estimate_train_memory_elements(small["patch_size"], strides, 1, 3, **{**kw, "n_layers": 0})
    assert est > 1.2 * conv_only
    # the search is the pure function's
    res = plan_cotr_patch(spacing, median, 1, 3, kw, 560e6 * 2 / 8, 2, approximate_n_voxels_dataset=None)
    assert res["patch_size"] == tuple(small["patch_size"])


def test_plan_builds_the_trainer_network(toy_planner):
    median, spacing = (20, 40, 36), (2.0, 1.0, 1.0)
    planner = toy_planner(median, spacing)
    plan = _plan(planner, median, spacing)
    _check_fits(plan, planner, 3)
    plans = {"dataset_name": "Dataset998_Toy", "plans_name": "nnUNetPlans_CoTr", "configurations": {"3d_fullres": plan},
             "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": list(median),
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "experiment_planner_used": "nnUNetPlannerCoTr", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {}}
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    net = nnUNetTrainerCoTr.build_network_architecture(pm, cm, 1, 3, enable_deep_supervision=False)
    # nnU-Net's generic builder understands the architecture entry too
    generic = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=False)
    assert list(net.state_dict()) == list(generic.state_dict())
    net = _TinyTrainer.build_network_architecture(pm, cm, 1, 3, enable_deep_supervision=False)  # cheap forward
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, *plan["patch_size"]))
    assert tuple(out.shape) == (1, 3, *plan["patch_size"])
