"""The contract every registered trainer keeps, checked on tiny 2D and 3D plans on CPU.

The network is built exactly as nnU-Net's predictor builds it (the trainer class's
``build_network_architecture`` with managers from the plans); deep-supervision outputs match the
trainer's scales, highest resolution first; eval mode returns one tensor; state_dict keys do not
depend on deep supervision.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import deep_supervision_targets, make_trainer, tiny_dataset_json, tiny_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnzoo.trainers import list_trainers
from nnzoo.trainers.nnunet_compat import deep_supervision_scales

REPO = Path(__file__).resolve().parents[2]

CASES = [(info.name, dim) for info in list_trainers() for dim in info.dims]
PATCH = {"2d": (32, 32), "3d": (16, 32, 32)}


def _plans(dim: str) -> tuple[dict, str]:
    cfg = "2d" if dim == "2d" else "3d_fullres"
    return tiny_plans(cfg, PATCH[dim]), cfg


def _build(cls, plans: dict, cfg: str, deep_supervision: bool):
    pm = PlansManager(plans)
    cm = pm.get_configuration(cfg)
    dj = tiny_dataset_json()
    return cls.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dj),
                                          pm.get_label_manager(dj).num_segmentation_heads,
                                          enable_deep_supervision=deep_supervision)


@pytest.mark.parametrize("name,dim", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_trainer_contract(name, dim, tmp_path):
    info = next(i for i in list_trainers() if i.name == name)
    cls = info.cls
    sig = inspect.signature(cls.build_network_architecture)
    assert list(sig.parameters)[-5:] == ["plans_manager", "configuration_manager", "num_input_channels",
                                         "num_output_channels", "enable_deep_supervision"]
    plans, cfg = _plans(dim)
    torch.manual_seed(0)
    net = _build(cls, plans, cfg, deep_supervision=True)
    net_nods = _build(cls, plans, cfg, deep_supervision=False)
    assert list(net.state_dict()) == list(net_nods.state_dict()), "state_dict keys depend on deep supervision"

    trainer = make_trainer(cls, tmp_path, cfg, plans=plans)
    scales = deep_supervision_scales(trainer)
    patch = np.array(PATCH[dim])
    x = torch.randn(2, 1, *PATCH[dim])

    net.train()
    out = net(x)
    assert isinstance(out, (list, tuple)), "deep supervision on: a list of outputs"
    assert len(out) == len(scales)
    num_heads = 3  # background, a, b
    for o, s in zip(out, scales):
        expected = tuple(int(round(p * f)) for p, f in zip(patch, s))
        assert tuple(o.shape) == (2, num_heads, *expected)
    sizes = [int(np.prod(o.shape[2:])) for o in out]
    assert sizes == sorted(sizes, reverse=True), "highest resolution first"

    net.load_state_dict(net_nods.state_dict())  # strict: same heads either way
    net.decoder.deep_supervision = False
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (2, num_heads, *PATCH[dim])


SEMI = [(info.name, dim) for info in list_trainers() if info.semi_supervised for dim in info.dims]


@pytest.mark.parametrize("name,dim", SEMI, ids=[f"{n}-{d}" for n, d in SEMI])
def test_semi_supervised_step_uses_every_labeled_patch_of_the_baseline_batch(name, dim, tmp_path):
    """In its semi-supervised stage a trainer's step still learns from all ``B`` labeled patches of
    nnU-Net's batch (each one moves the loss), plus unlabeled ones: never a smaller labeled share."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks.common import prepare_semi_supervised_stage

    info = next(i for i in list_trainers() if i.name == name)
    plans, cfg = _plans(dim)
    plans["configurations"][cfg]["batch_size"] = 3
    torch.manual_seed(0)
    trainer = make_trainer(info.cls, tmp_path, cfg, plans=plans, initialize=True)
    assert trainer.batch_size == 3 and trainer.unlabeled_batch_size >= trainer.batch_size
    prepare_semi_supervised_stage(trainer, torch.randn(trainer.unlabeled_batch_size, 1, *PATCH[dim]))
    label = torch.randint(0, 3, (3, 1, *[s // 4 for s in PATCH[dim]])).float()
    label = torch.nn.functional.interpolate(label, size=PATCH[dim], mode="nearest")
    targets = deep_supervision_targets(trainer, label)
    data = torch.randn(3, 1, *PATCH[dim], requires_grad=True)
    out = trainer.train_step({"data": data, "target": targets})
    assert np.isfinite(out["loss"])
    assert data.grad is not None
    per_patch = data.grad.flatten(1).abs().sum(1)
    assert (per_patch > 0).all(), f"labeled patches without influence on the step: {per_patch.tolist()}"
