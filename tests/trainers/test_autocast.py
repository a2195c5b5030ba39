"""Every registered trainer under CPU bfloat16 autocast: training steps and prediction.

nnU-Net's ``train_step`` autocasts the forward pass and the loss only on CUDA (float16 with a
``GradScaler``); on CPU it runs in float32, so without a GPU no nnzoo trainer's mixed-precision
path (teachers, critics, pseudo-labels, deformable attention's ``grid_sample``) ever runs. The
closest stand-in here is CPU autocast to bfloat16, which exercises the same dtype plumbing
(low-precision activations meeting float32 parameters, buffers, targets and custom ops).

Each registered trainer and dimensionality (tiny plans, batch 2) is checked for:

- two training steps with ``train_step`` inside ``torch.autocast("cpu", dtype=torch.bfloat16)``,
  semi-supervised trainers in their main stage (:func:`benchmarks.common.prepare_semi_supervised_stage`:
  EMA teacher, BCP's copy-paste with pseudo-labels, self-training's pseudo-labeled batch, the shape
  critic): finite float32 losses; every parameter that got a gradient has a finite float32 gradient
  and stays float32, so does the optimizer state, so do the teacher's and the critic's weights;
  the student's, the teacher's and the critic's convolutions and linear layers really produced
  bfloat16 outputs (forward hooks), so the test cannot pass with autocast silently inactive.
- nnU-Net's validation step under the same autocast: finite float32 loss and counts;
- prediction (eval mode, deep supervision off) under the same autocast: one finite tensor of the
  expected shape (bfloat16 inside autocast is expected), usable after ``.float()`` for argmax,
  whose argmax agrees with the float32 prediction of the same network on most voxels (see
  :data:`MIN_ARGMAX_AGREEMENT`).

The whole ``train_step`` (backward, gradient clipping, optimizer step, EMA update included) runs
under autocast, not only the forward and loss as nnU-Net's CUDA path does: autocast changes only
the ops on its lists, and those (convolutions, matmuls, losses, ``grid_sample``) occur in the
forward passes and losses, where nnU-Net's own autocast region would be; backward ops run in the
dtypes of their forward ops either way. It differs from CUDA float16 in two respects: CPU autocast
keeps softmax in the input dtype (CUDA runs it in float32), so it is the stricter of the two there;
and it has float32's range, so float16 overflow (values above 65504) and the ``GradScaler`` (nnU-Net
makes none for a CPU trainer; bfloat16 needs none) are not exercised.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import batch_keys, deep_supervision_targets, make_trainer, tiny_plans
from torch import nn

from nnzoo.trainers import list_trainers

REPO = Path(__file__).resolve().parents[2]

CASES = [(info.name, dim) for info in list_trainers() for dim in info.dims]
PATCH = {"2d": (32, 32), "3d": (16, 16, 16)}  # divisible by every network's total stride
BATCH = 2
LOW = torch.bfloat16

#: Fraction of voxels on which the argmax of the bfloat16 prediction must equal the float32 one.
#: bfloat16 keeps 8 significant bits (relative error ~0.4 % per op), so the two differ only where the
#: float32 logits of two classes nearly tie; on these untrained networks (logits of similar size for
#: every class) that is a few percent of the voxels at most (measured: 98.8-99.6 %), while a real dtype bug (wrong buffer,
#: wrong order of a cast, a saturated or truncated activation) scrambles far more than 5 %.
MIN_ARGMAX_AGREEMENT = 0.95


def bf16_autocast():
    """CPU autocast to bfloat16 (the stand-in for nnU-Net's CUDA float16 autocast)."""
    return torch.autocast("cpu", dtype=LOW)


class LayerDtypes:
    """Forward hooks on every convolution and linear layer of some modules, recording the dtypes of their
    outputs (the layers autocast runs in low precision)."""

    LAYERS = (nn.modules.conv._ConvNd, nn.Linear)

    def __init__(self, **modules: nn.Module | None) -> None:
        self.seen: dict[str, set[torch.dtype]] = {k: set() for k, m in modules.items() if m is not None}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, module in modules.items()
                        if module is not None for m in module.modules() if isinstance(m, self.LAYERS)]

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.seen[name].add(output.dtype)
        return hook

    def __enter__(self) -> LayerDtypes:
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def assert_low_precision(self) -> None:
        """Every watched module ran its layers, all of them in bfloat16."""
        for name, dtypes in self.seen.items():
            assert dtypes, f"the {name}'s layers never ran"
            assert dtypes == {LOW}, f"the {name}'s layers produced {dtypes} under autocast, expected {LOW}"


def _trainer(name: str, dim: str, tmp_path: Path):
    """An initialized trainer on the tiny plans (batch 2), semi-supervised ones in their main stage."""
    info = next(i for i in list_trainers() if i.name == name)
    cfg = "2d" if dim == "2d" else "3d_fullres"
    plans = tiny_plans(cfg, PATCH[dim])
    plans["configurations"][cfg]["batch_size"] = BATCH
    torch.manual_seed(0)
    trainer = make_trainer(info.cls, tmp_path, cfg, plans=plans, initialize=True)
    if info.semi_supervised:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from benchmarks.common import prepare_semi_supervised_stage

        prepare_semi_supervised_stage(trainer, torch.randn(trainer.unlabeled_batch_size, 1, *PATCH[dim]))
    return trainer


def _batch(trainer, dim: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (BATCH, 1, *[s // 4 for s in PATCH[dim]]), generator=g).float()
    label = nn.functional.interpolate(label, size=PATCH[dim], mode="nearest")
    return {"data": torch.randn(BATCH, 1, *PATCH[dim], generator=g),
            "target": deep_supervision_targets(trainer, label), "keys": batch_keys(BATCH)}  # as nnU-Net's loader


def _assert_float32_and_finite(what: str, named_tensors) -> None:
    for k, t in named_tensors:
        if torch.is_tensor(t) and t.is_floating_point():
            assert t.dtype == torch.float32, f"{what} {k} is {t.dtype}"
            assert torch.isfinite(t).all(), f"{what} {k} is not finite"


def _teacher(trainer) -> nn.Module | None:
    teacher = getattr(trainer, "teacher", None)
    return teacher.module if teacher is not None else None


def _train_and_check(trainer, dim: str, autocast=bf16_autocast, steps: int = 2) -> None:
    """``steps`` training steps under ``autocast`` with every check of the contract (see module docstring)."""
    trainer.network.train()
    critic = getattr(trainer, "critic", None)
    for step in range(steps):  # the second step sees an updated EMA teacher and the optimizer's momentum
        batch = _batch(trainer, dim, seed=step)
        # the teacher is made in the first step (Mean Teacher, BCP): watched from the second one
        with LayerDtypes(network=trainer.network, teacher=_teacher(trainer), critic=critic) as layers, autocast():
            out = trainer.train_step(batch)
        layers.assert_low_precision()
        for k, v in out.items():
            v = np.asarray(v)
            assert v.dtype == np.float32 and np.isfinite(v).all(), f"step {step}: {k} = {v!r}"

    with_grad = [(k, p) for k, p in trainer.network.named_parameters() if p.grad is not None]
    assert with_grad, "no parameter received a gradient"
    _assert_float32_and_finite("gradient of", [(k, p.grad) for k, p in with_grad])
    _assert_float32_and_finite("parameter", trainer.network.named_parameters())
    _assert_float32_and_finite("buffer", trainer.network.named_buffers())
    state = trainer.optimizer.state_dict()["state"]
    assert state, "the optimizer kept no state"
    _assert_float32_and_finite("optimizer state", [(f"{i}.{k}", v) for i, s in state.items() for k, v in s.items()])
    for owner, module in (("teacher", _teacher(trainer)), ("critic", critic)):
        if module is not None:
            _assert_float32_and_finite(f"{owner} parameter", module.named_parameters())
            _assert_float32_and_finite(f"{owner} buffer", module.named_buffers())
    if _teacher(trainer) is not None:  # the EMA update ran: the teacher is not the student
        student = dict(trainer.network.named_parameters())
        assert any(not torch.equal(p, student[k]) for k, p in _teacher(trainer).named_parameters())


@pytest.mark.parametrize("name,dim", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_train_steps_under_bf16_autocast(name, dim, tmp_path):
    _train_and_check(_trainer(name, dim, tmp_path), dim)


@pytest.mark.parametrize("name,dim", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_prediction_under_bf16_autocast(name, dim, tmp_path):
    trainer = _trainer(name, dim, tmp_path)
    trainer.network.eval()
    with bf16_autocast():  # nnU-Net's other autocast site: the validation step (deep supervision on)
        val = trainer.validation_step(_batch(trainer, dim, seed=2))
    for k, v in val.items():
        v = np.asarray(v)
        assert v.dtype == np.float32 and np.isfinite(v).all(), f"validation step: {k} = {v!r}"

    trainer.set_deep_supervision_enabled(False)
    net = trainer.network
    x = torch.randn(BATCH, 1, *PATCH[dim], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
        with LayerDtypes(network=net) as layers, bf16_autocast():
            y = net(x)
    layers.assert_low_precision()
    heads = trainer.label_manager.num_segmentation_heads
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (BATCH, heads, *PATCH[dim])
    assert y.dtype in (LOW, torch.float32), y.dtype  # bfloat16 from the last convolution, or float32
    assert torch.isfinite(y).all()
    assert ref.dtype == torch.float32
    seg = y.float().argmax(1)
    agreement = (seg == ref.argmax(1)).float().mean().item()
    print(f"{name}-{dim}: prediction {y.dtype}, argmax agrees with float32 on {agreement:.2%} of the voxels, "
          f"max |logit difference| {(y.float() - ref).abs().max().item():.3g} (|logits| up to "
          f"{ref.abs().max().item():.3g})")
    assert agreement >= MIN_ARGMAX_AGREEMENT, f"bf16 and float32 argmax agree on {agreement:.1%} of the voxels"


def _first_conv(net: nn.Module) -> nn.Module:
    return next(m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd))


def test_the_checks_can_fail(tmp_path):
    """The checks catch autocast being inactive, a layer that leaves bfloat16 weights behind and a float32
    buffer mixed with a bfloat16 activation (nnU-Net's baseline trainer with a sabotaged first convolution)."""
    from contextlib import nullcontext

    with pytest.raises(AssertionError, match="produced .*float32"):  # autocast inactive: the test is not vacuous
        _train_and_check(_trainer("nnUNetTrainer", "2d", tmp_path), "2d", autocast=nullcontext, steps=1)

    trainer = _trainer("nnUNetTrainer", "2d", tmp_path)
    conv = _first_conv(trainer.network)

    def weights_to_bf16(module, _inputs):  # silent: runs, but leaves a bfloat16 parameter (and gradient)
        module.weight.data = module.weight.data.to(LOW)

    conv.register_forward_pre_hook(weights_to_bf16)
    with pytest.raises(AssertionError, match="bfloat16"):
        _train_and_check(trainer, "2d", steps=1)

    trainer = _trainer("nnUNetTrainer", "2d", tmp_path)
    conv = _first_conv(trainer.network)
    conv.register_buffer("acc", torch.zeros(1))

    def into_float32_buffer(module, _inputs, output):  # loud: a float32 buffer meets a bfloat16 activation
        return module.acc.expand_as(output).clone().index_add_(0, torch.arange(output.shape[0]), output)

    conv.register_forward_hook(into_float32_buffer)
    with pytest.raises(RuntimeError, match="same scalar type"):
        _train_and_check(trainer, "2d", steps=1)
