"""nnUNetTrainerTriD: TriD's random style injection on hand-made tensors, on the plan network and in a train step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import deep_supervision_targets, make_trainer, tiny_plans
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnzoo.trainers.networks.trid import (
    RandomStyle,
    attach_random_style,
    channel_choice,
    random_style_modules,
    random_style_statistics,
    restyle,
    trid,
)
from nnzoo.trainers.registry import get_trainer_info
from nnzoo.trainers.trid import nnUNetTrainerTriD

PATCH = {"2d": (32, 32), "3d_fullres": (8, 16, 16)}


def _stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, channel) mean and unbiased standard deviation over the spatial axes."""
    axes = tuple(range(2, t.ndim))
    return t.mean(axes), t.std(axes)


def _styled_input(n: int = 4, c: int = 16, size=(12, 12), mean: float = 5.0, std: float = 3.0) -> torch.Tensor:
    """Feature maps with statistics far outside TriD's U(0, 1) ranges."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, c, *size, generator=g) * std + mean


def test_random_statistics_lie_in_the_uniform_ranges():
    torch.manual_seed(0)
    mean, std = random_style_statistics((2000, 8, 1, 1, 1))
    assert mean.shape == std.shape == (2000, 8, 1, 1, 1) and mean.dtype == torch.float32
    for t in (mean, std):  # U(0, 1): inside the range and spread over all of it
        assert t.min() >= 0 and t.max() < 1 and t.min() < 0.01 and t.max() > 0.99
        assert abs(t.mean().item() - 0.5) < 0.01 and abs(t.var().item() - 1 / 12) < 0.005
    mean, std = random_style_statistics((500, 4, 1), mean_range=(2.0, 3.0), std_range=(0.5, 0.75))
    assert 2 <= mean.min() and mean.max() < 3 and 0.5 <= std.min() and std.max() < 0.75


def test_channel_choice_is_bernoulli_of_beta_0_1():
    """lambda ~ Beta(0.1, 0.1) (U-shaped: variance 1 / (4 (2 alpha + 1)) = 0.208, a uniform's is 0.083) and
    choice ~ Bernoulli(lambda): channels with lambda near 1 are chosen, those near 0 are not."""
    torch.manual_seed(0)
    choice, lam = channel_choice((20000, 8, 1, 1), alpha=0.1)
    assert set(choice.unique().tolist()) <= {0.0, 1.0} and choice.shape == lam.shape
    assert 0 <= lam.min() and lam.max() <= 1
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert abs(lam.var().item() - 1 / (4 * 1.2)) < 0.005
    assert abs(choice.mean().item() - 0.5) < 0.01
    # E[lambda | chosen] = E[lambda^2] / E[lambda] = (0.208 + 0.25) / 0.5
    assert abs(lam[choice == 1].mean().item() - (1 / 4.8 + 0.25) / 0.5) < 0.01
    assert lam[(lam > 0.99)].numel() and (choice[lam > 0.99] == 1).float().mean() > 0.98
    assert (choice[lam < 0.01] == 0).float().mean() > 0.98
    _, lam_1 = channel_choice((20000, 8, 1, 1), alpha=1.0)  # the alpha reaches the distribution
    assert abs(lam_1.var().item() - 1 / 12) < 0.005


@pytest.mark.parametrize("size", [(12, 12), (6, 8, 10)], ids=["2d", "3d"])
def test_restyle_is_a_convex_combination_of_own_and_new_statistics(size):
    x = _styled_input(2, 3, size)
    mu, sigma = _stats(x)
    new_mean = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]).view(2, 3, *[1] * len(size))
    new_std = torch.tensor([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]]).view_as(new_mean)
    weight = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.25]]).view_as(new_mean)
    out = restyle(x, mean=new_mean, std=new_std, weight=weight, eps=0.0)
    m, s = _stats(out)
    w = weight.flatten(1)
    assert torch.allclose(m, w * new_mean.flatten(1) + (1 - w) * mu, atol=1e-4)
    assert torch.allclose(s, w * new_std.flatten(1) + (1 - w) * sigma, atol=1e-4)
    assert torch.allclose(out[0, 1], x[0, 1], atol=1e-4) and torch.allclose(out[1, 0], x[1, 0], atol=1e-4)
    # the pattern inside each map is kept: a per-channel affine map of x
    z = (x - mu.view_as(new_mean)) / sigma.view_as(new_mean)
    assert torch.allclose((out - m.view_as(new_mean)) / s.view_as(new_mean), z, atol=1e-4)


def test_restyle_statistics_are_detached():
    """d sum(out) / dx = new_std / sigma per element (own statistics treated as constants, as officially);
    with gradients through the mean it would be 0 for every channel."""
    x = _styled_input(1, 2).requires_grad_(True)
    new_std = torch.tensor([0.5, 2.0]).view(1, 2, 1, 1)
    restyle(x, mean=torch.zeros(1, 2, 1, 1), std=new_std, weight=torch.ones(1, 2, 1, 1), eps=0.0).sum().backward()
    sigma = x.detach().std((2, 3), keepdim=True)
    assert torch.allclose(x.grad, (new_std / sigma).expand_as(x), rtol=1e-5)


def test_restyle_keeps_the_low_precision_dtype():
    x = _styled_input(2, 4).to(torch.bfloat16)
    ones = torch.ones(2, 4, 1, 1)
    assert restyle(x, mean=ones * 0.5, std=ones * 0.5, weight=ones).dtype == torch.bfloat16


def test_trid_each_channel_takes_random_or_own_statistics():
    torch.manual_seed(0)
    x = _styled_input(8, 32)
    out = trid(x, p=1.0, alpha=0.1)
    m, s = _stats(out)
    own = torch.isclose(out, x, atol=1e-3).flatten(2).all(-1)
    restyled = (m >= 0) & (m < 1) & (s < 1)  # x's channels have mean ~5, std ~3
    assert torch.equal(own | restyled, torch.ones_like(own)) and not (own & restyled).any()
    assert 0.3 < restyled.float().mean() < 0.7  # Bernoulli(1/2) per (sample, channel)


def test_trid_probability():
    x = _styled_input(2, 4)
    assert trid(x, p=0.0, alpha=0.1) is x
    torch.manual_seed(0)
    applied = [trid(x, p=0.5, alpha=0.1) is not x for _ in range(400)]
    assert 0.4 < np.mean(applied) < 0.6


def test_random_style_module_is_the_identity_in_eval_mode():
    module = RandomStyle(p=1.0, alpha=0.1)
    x = _styled_input(2, 4)
    assert not list(module.parameters()) and not list(module.buffers())
    module.eval()
    assert module(x) is x
    module.train()
    assert not torch.allclose(module(x), x)
    assert RandomStyle(p=0.0, alpha=0.1).train()(x) is x


def _plan_net(cfg: str):
    pm = PlansManager(tiny_plans(cfg, PATCH[cfg]))
    return pm, pm.get_configuration(cfg)


class _Recorder:
    """Forward hooks recording each encoder stage's output (after any TriD hook registered before them)."""

    def __init__(self, net):
        self.out: dict[int, torch.Tensor] = {}
        for s, stage in enumerate(net.encoder.stages):
            stage.register_forward_hook(lambda m, i, o, s=s: self.out.__setitem__(s, o.detach().clone()))


@pytest.mark.parametrize("cfg", ["2d", "3d_fullres"])
def test_the_perturbation_acts_at_the_chosen_stages_only(cfg):
    class AlwaysTriD(nnUNetTrainerTriD):
        P = 1.0

    pm, cm = _plan_net(cfg)
    torch.manual_seed(0)
    net = AlwaysTriD.build_network_architecture(pm, cm, 1, 3, True)
    torch.manual_seed(0)
    plain = nnUNetTrainer.build_network_architecture(pm, cm, 1, 3, True)
    assert list(net.state_dict()) == list(plain.state_dict())  # checkpoints interchange with nnU-Net's
    plain.load_state_dict(net.state_dict())
    assert [type(m) for m in random_style_modules(net)] == [RandomStyle, RandomStyle]
    rec, rec_plain = _Recorder(net), _Recorder(plain)
    x = torch.randn(2, 1, *PATCH[cfg])
    with torch.no_grad():
        y, y_plain = net.train()(x), plain.train()(x)
    assert torch.allclose(rec.out[0], rec_plain.out[0])  # stage 0 untouched
    m, s = _stats(rec.out[1])
    own = torch.isclose(rec.out[1], rec_plain.out[1], atol=1e-5).flatten(2).all(-1)
    assert (~own).any() and own.any()  # stage 1: some channels re-styled, others not
    assert ((m[~own] >= 0) & (m[~own] < 1) & (s[~own] < 1)).all()
    assert not torch.allclose(y[0], y_plain[0])
    with torch.no_grad():  # eval mode (validation, nnU-Net's predictor): the plain U-Net
        assert torch.equal(net.eval()(x)[0], plain.eval()(x)[0])


def test_instance_norm_removes_the_random_means_but_not_the_random_stds():
    """The carried-over finding (docstring table): on the plan network, new per-channel means at stage 1's
    output barely change stage 2's output (the conv turns a per-channel shift into a per-output-channel one,
    which InstanceNorm removes; only zero-padded borders keep a trace), new standard deviations do."""
    pm = PlansManager(tiny_plans("2d", (64, 64)))
    torch.manual_seed(0)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), 1, 3, False).train()
    rec = _Recorder(net)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        net(x)
    ref = rec.out[2]

    def change(keep_std: bool, keep_mean: bool) -> float:
        def hook(m, i, o):
            shape = (*o.shape[:2], 1, 1)
            mean, std = random_style_statistics(shape)
            mu, sigma = o.mean((2, 3), keepdim=True), o.std((2, 3), keepdim=True)
            return restyle(o, mean=mu if keep_mean else mean, std=sigma if keep_std else std,
                           weight=torch.ones(shape))
        torch.manual_seed(1)
        handle = net.encoder.stages[1].register_forward_hook(hook)
        with torch.no_grad():
            net(x)
        handle.remove()
        return ((rec.out[2] - ref).norm() / ref.norm()).item()

    means_only, stds_only = change(keep_std=True, keep_mean=False), change(keep_std=False, keep_mean=True)
    assert means_only < 0.15 < stds_only, (means_only, stds_only)


def test_stages_outside_the_encoder_are_refused():
    class Deep(nnUNetTrainerTriD):
        STAGES = (1, 7)

    pm, cm = _plan_net("2d")
    with pytest.raises(ValueError, match=r"Deep: STAGES=1,7 .*patch \[32, 32\].*0\.\.2"):
        Deep.build_network_architecture(pm, cm, 1, 3, True)
    net = nnUNetTrainer.build_network_architecture(pm, cm, 1, 3, True)
    attach_random_style(net, (1,), p=0.5, alpha=0.1)
    with pytest.raises(ValueError, match="already attached"):
        attach_random_style(net, (1,), p=0.5, alpha=0.1)


def test_registered():
    info = get_trainer_info("nnUNetTrainerTriD")
    assert info.cls is nnUNetTrainerTriD and info.domain_generalisation and not info.needs_domains
    assert set(info.dims) == {"2d", "3d"} and not info.semi_supervised


@pytest.mark.parametrize("cfg", ["2d", "3d_fullres"])
def test_train_step(tmp_path, cfg):
    plans = tiny_plans(cfg, PATCH[cfg])
    plans["configurations"][cfg]["batch_size"] = 2
    torch.manual_seed(0)
    trainer = make_trainer(nnUNetTrainerTriD, tmp_path, cfg, plans=plans, initialize=True)
    assert len(random_style_modules(trainer.network)) == 2
    label = torch.randint(0, 3, (2, 1, *[p // 4 for p in PATCH[cfg]])).float()
    label = torch.nn.functional.interpolate(label, size=PATCH[cfg], mode="nearest")
    batch = {"data": torch.randn(2, 1, *PATCH[cfg]), "target": deep_supervision_targets(trainer, label)}
    before = {k: p.detach().clone() for k, p in trainer.network.named_parameters()}
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    unchanged = {k for k, p in trainer.network.named_parameters() if torch.equal(before[k], p.detach())}
    assert unchanged <= {"decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias"}  # nnU-Net weighs this head 0
    val = trainer.validation_step(batch)  # eval mode: the plain network
    assert np.isfinite(val["loss"])
