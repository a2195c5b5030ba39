"""nnUNetTrainerCoTr at the Python level (tiny widths, CPU); the network itself: tests/trainers/networks/test_cotr.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_trainer, tiny_dataset_json, tiny_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnzoo.trainers import nnunet_compat as compat
from nnzoo.trainers.cotr import nnUNetTrainerCoTr, strides_for_configuration
from nnzoo.trainers.networks.cotr import cotr_plan_architecture, deep_supervision_scales
from nnzoo.trainers.registry import get_trainer_info


class TinyCoTrTrainer(nnUNetTrainerCoTr):
    STEM_CHANNELS = 4
    STAGE_CHANNELS = (8, 16, 16)
    BLOCKS_PER_STAGE = (1, 2, 1)
    STEM_KERNEL_SIZE = 3
    D_MODEL = 16
    N_HEADS = 2
    N_POINTS = 2
    N_LAYERS = 1
    FFN_DIM = 32


def _deep_plans(configuration: str) -> dict:
    """Tiny plans whose pooling allows CoTr's full 4 downsamplings (3d: 16x32x32, 2d: 32x32)."""
    ndim = 3 if configuration.startswith("3d") else 2
    plans = tiny_plans(configuration, patch_size=(16, 32, 32) if ndim == 3 else (32, 32))
    plans["configurations"][configuration]["architecture"]["arch_kwargs"]["strides"] = [[1] * ndim] + [[2] * ndim] * 5
    return plans






def test_cotr_plans_strides_are_used_as_stored():
    plans = tiny_plans("3d_fullres", patch_size=(8, 32, 32))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = "nnzoo.trainers.networks.cotr.CoTr"
    arch["arch_kwargs"]["strides"] = [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    cm = PlansManager(plans).get_configuration("3d_fullres")
    assert strides_for_configuration(cm) == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]








def test_paper_configuration_parameter_count():
    """The paper's 3D CoTr has 41.87M parameters (14 BCV classes); the defaults reproduce it."""
    plans = tiny_plans("3d_fullres", patch_size=(48, 192, 192))
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"] = [[1, 1, 1]] + [[2, 2, 2]] * 5
    pm = PlansManager(plans)
    net = nnUNetTrainerCoTr.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 14, False)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n / 1e6 - 41.87) < 0.05
    assert net.encoder.strides == [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]


def test_build_rejects_patch_not_divisible_by_total_stride():
    plans = tiny_plans("3d_fullres", patch_size=(24, 28, 30))  # tiny plan pooling -> total stride 4
    pm = PlansManager(plans)
    with pytest.raises(ValueError, match=r"\[24, 28, 30\].*\[4, 4, 4\]"):
        TinyCoTrTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3)


def test_predictor_style_build_on_default_tiny_plans():
    """Built as nnU-Net's predictor does (DS off) from an unmodified nnU-Net plan: one full-res tensor."""
    for cfg, patch in (("3d_fullres", (24, 28, 32)), ("2d", (28, 32))):
        pm = PlansManager(tiny_plans(cfg))
        net = TinyCoTrTrainer.build_network_architecture(pm, pm.get_configuration(cfg), 1, 3,
                                                         enable_deep_supervision=False)
        net.eval()
        with torch.no_grad():
            out = net(torch.randn(1, 1, *patch))
        assert isinstance(out, torch.Tensor) and tuple(out.shape) == (1, 3, *patch)


def test_registered():
    info = get_trainer_info("nnUNetTrainerCoTr")
    assert info.cls is nnUNetTrainerCoTr and info.planner == "nnUNetPlannerCoTr" and set(info.dims) == {"2d", "3d"}


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_train_step_on_cpu(tmp_path, configuration):
    torch.manual_seed(0)
    trainer = make_trainer(TinyCoTrTrainer, tmp_path, configuration, plans=_deep_plans(configuration),
                           dataset_json=tiny_dataset_json(), initialize=True)
    patch = list(trainer.configuration_manager.patch_size)
    scales = compat.deep_supervision_scales(trainer)
    strides = trainer.network.encoder.strides
    assert scales == deep_supervision_scales(strides) and len(scales) == 4
    assert np.allclose(trainer.loss.weight_factors, np.array([1, 0.5, 0.25, 0.125]) / 1.875)
    seg = torch.randint(0, 3, (2, 1, *patch)).float()
    target = [torch.nn.functional.interpolate(seg, size=[round(p * f) for p, f in zip(patch, s)], mode="nearest")
              for s in scales]
    batch = {"data": torch.randn(2, 1, *patch), "target": target}
    before = [p.detach().clone() for p in trainer.network.parameters()]
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    changed = [not torch.equal(b, p.detach()) for b, p in zip(before, trainer.network.parameters())]
    assert all(changed)  # every parameter (all heads, offsets, attention weights) got a gradient step
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    with torch.no_grad():
        pred = trainer.network(batch["data"])
    assert isinstance(pred, torch.Tensor) and tuple(pred.shape) == (2, 3, *patch)


def test_network_is_built_from_what_the_planner_wrote():
    """On a CoTr plan the plan's widths win over the class attributes (trainer and predictor build the same)."""
    plans = tiny_plans("3d_fullres", patch_size=(16, 32, 32))
    tiny = {**nnUNetTrainerCoTr.network_kwargs(), "stem_channels": 4, "stage_channels": [8, 12, 12], "blocks_per_stage": [1, 1, 1],
            "stem_kernel_size": 3, "d_model": 12, "n_heads": 2, "n_points": 1, "n_layers": 1, "ffn_dim": 8}
    plans["configurations"]["3d_fullres"]["architecture"] = cotr_plan_architecture([[1, 1, 1]] + [[2, 2, 2]] * 4, 3,
                                                                                   tiny)
    pm = PlansManager(plans)
    net = nnUNetTrainerCoTr.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, False)
    assert net.encoder.output_channels == [4, 8, 12, 12] and net.encoder.detrans.d_model == 12
    assert nnUNetTrainerCoTr.STAGE_CHANNELS == (192, 384, 384)  # the class attributes were not used
    net.eval()
    with torch.no_grad():
        assert tuple(net(torch.randn(1, 1, 16, 32, 32)).shape) == (1, 3, 16, 32, 32)
