"""nnUNetTrainerC2SDG: prompt split, style views, contrastive losses, prompt optimiser, training step (CPU, tiny)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import deep_supervision_targets, make_trainer, tiny_dataset_json, tiny_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnzoo.trainers.c2sdg import (
    bezier_intensity_curve,
    channel_contrastive_losses,
    fda_amplitude_swap,
    fourier_style_view,
    global_location_scale,
    interp,
    match_moments,
    nnUNetTrainerC2SDG,
)
from nnzoo.trainers.networks.c2sdg import Projector, projector_grid, split_channels
from nnzoo.trainers.registry import get_trainer_info

PATCH = {"2d": (32, 32), "3d": (8, 16, 16)}


def _network(dim: str = "2d", seed: int = 0):
    cfg = "2d" if dim == "2d" else "3d_fullres"
    pm = PlansManager(tiny_plans(cfg, PATCH[dim]))
    torch.manual_seed(seed)
    return nnUNetTrainerC2SDG.build_network_architecture(pm, pm.get_configuration(cfg), 1, 3,
                                                         enable_deep_supervision=False)


def _trainer(tmp_path, dim: str = "2d"):
    cfg = "2d" if dim == "2d" else "3d_fullres"
    plans = tiny_plans(cfg, PATCH[dim])
    plans["configurations"][cfg]["batch_size"] = 2
    torch.manual_seed(0)
    return make_trainer(nnUNetTrainerC2SDG, tmp_path, cfg, plans=plans, initialize=True)


def _smooth_batch(dim: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, *PATCH[dim], generator=g)
    pool = torch.nn.functional.avg_pool2d if dim == "2d" else torch.nn.functional.avg_pool3d
    return pool(x, 3, 1, 1) * 3


def test_registered_as_domain_generalisation():
    info = get_trainer_info("nnUNetTrainerC2SDG")
    assert info.domain_generalisation and not info.semi_supervised and not info.needs_domains
    assert info.dims == ("2d", "3d") and "CCSDG" in info.official_code


# ------------------------------------------------------------------------------------------------ prompt
def test_split_channels_by_hand():
    f = torch.arange(1.0, 4.0).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    prompt = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])  # tau 0.1: channel 0 content, 1 style, 2 half
    content, style = split_channels(f, prompt, 0.1)
    w = float(1 / (1 + np.exp(-20.0)))
    torch.testing.assert_close(content[0, :, 0, 0], torch.tensor([1 * w, 2 * (1 - w), 1.5]))
    torch.testing.assert_close(style[0, :, 0, 0], torch.tensor([1 * (1 - w), 2 * w, 1.5]))
    torch.testing.assert_close(content + style, f)


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_style_channels_never_reach_the_segmentation(dim):
    """The prompt sits before the first InstanceNorm: a style channel (weight ~e^-100) is switched off by the
    norm's eps, so its convolution weights do not matter; a content channel's do."""
    net = _network(dim).eval()
    with torch.no_grad():
        net.channel_prompt.zero_()
        net.channel_prompt[1, 0] = 5.0  # channel 0: style
        net.channel_prompt[0, 1:] = 5.0  # the others: content
    conv = net._stem_conv
    x = torch.randn(2, 1, *PATCH[dim])
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(net.stem_features(x), conv.forward(x))  # the raw output, before the prompt
        for ch, changes in ((0, False), (1, True)):
            old = conv.weight[ch].clone()
            conv.weight[ch] += 1.0
            diff = (net(x) - ref).abs().max().item()
            conv.weight[ch] = old
            assert (diff > 1e-2) == changes, (ch, diff)


def test_state_dict_is_the_plan_network_plus_the_prompt():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    cm = PlansManager(tiny_plans("2d", PATCH["2d"])).get_configuration("2d")
    plain = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                   cm.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=True)
    ours = _network("2d")
    assert set(ours.state_dict()) - set(plain.state_dict()) == {"channel_prompt"}
    assert set(plain.state_dict()) <= set(ours.state_dict())


# ------------------------------------------------------------------------------------------------ style views
def _band_mask(shape: tuple[int, ...], half: int) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    m[tuple(slice(n // 2 - half, n // 2 + half + 1) for n in shape)] = True
    return torch.fft.ifftshift(m)


@pytest.mark.parametrize("shape", [(20, 24), (9, 12, 16)])
def test_fda_replaces_low_band_amplitude_only_and_keeps_phase(shape):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 1, *shape, generator=g), torch.randn(2, 1, *shape, generator=g) * 3 + 1
    out = fda_amplitude_swap(x, t, 0.25)
    dims = tuple(range(2, 2 + len(shape)))
    fo, fx, ft = (torch.fft.fftn(v.double(), dim=dims) for v in (out, x, t))
    band = _band_mask(shape, int(min(shape) * 0.25))
    assert 1 < band.sum() < band.numel()
    torch.testing.assert_close(fo.abs()[..., band], ft.abs()[..., band], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(fo.abs()[..., ~band], fx.abs()[..., ~band], atol=1e-3, rtol=1e-4)
    ok = fx.abs() > 1e-2
    dphase = torch.remainder(fo.angle() - fx.angle() + np.pi, 2 * np.pi) - np.pi
    assert dphase[ok].abs().max() < 1e-3
    assert not torch.allclose(out, x, atol=1e-2)


def test_fda_view_swaps_within_the_reversed_batch():
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(fourier_style_view(x), x, atol=1e-5, rtol=0)  # batch 1: its own amplitudes
    pair = torch.cat([torch.randn(1, 1, 16, 16), 5 * torch.randn(1, 1, 16, 16) + 2])
    view = fourier_style_view(pair, beta_min=0.2, beta_range=0.0)
    dc = torch.fft.fftn(view, dim=(2, 3))[:, 0, 0, 0].abs()
    torch.testing.assert_close(dc, torch.fft.fftn(pair, dim=(2, 3))[:, 0, 0, 0].abs().flip(0), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fda_amplitude_swap(pair, pair.flip(0), 0.0), pair)


def test_bezier_curve_and_interp():
    xv, yv = bezier_intensity_curve(-2.0, 3.0, n_times=1000, generator=torch.Generator().manual_seed(1))
    assert (xv.diff() >= 0).all() and (yv.diff() >= 0).all()
    torch.testing.assert_close(torch.stack([xv[0], xv[-1], yv[0], yv[-1]]), torch.tensor([-2.0, 3.0, -2.0, 3.0]))
    xp, fp = torch.tensor([0.0, 1.0, 1.0, 3.0]), torch.tensor([0.0, 2.0, 4.0, 5.0])
    q = torch.tensor([-1.0, 0.5, 2.0, 3.0, 9.0])
    torch.testing.assert_close(interp(q, xp, fp), torch.tensor(np.interp(q.numpy(), xp.numpy(), fp.numpy()),
                                                                dtype=torch.float32))


def test_global_location_scale_is_monotone_within_range_and_changes_intensities():
    x = torch.linspace(-3, 5, 2 * 1 * 8 * 8).view(2, 1, 8, 8)
    outs = [global_location_scale(x, n_times=2000, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    for y in outs:
        assert y.shape == x.shape and y.min() >= -3 and y.max() <= 5
        assert (y.flatten().diff() >= -1e-5).all()  # x is increasing in memory order: so is y
    assert max((y - x).abs().max().item() for y in outs) > 0.2
    torch.testing.assert_close(outs[0], global_location_scale(x, n_times=2000, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(global_location_scale(torch.ones(1, 1, 4, 4)), torch.ones(1, 1, 4, 4))


def test_match_moments_takes_the_reference_statistics():
    ref = torch.randn(2, 2, 6, 6) * torch.tensor([1.0, 4.0]).view(1, 2, 1, 1) + 3
    out = match_moments(torch.rand(2, 2, 6, 6) * 10, ref)
    torch.testing.assert_close(out.mean((2, 3)), ref.mean((2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std((2, 3), unbiased=False), ref.std((2, 3), unbiased=False), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ losses
def test_contrastive_losses_known_values():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    content, style = channel_contrastive_losses([a, b, a], [b, b, b])
    assert content.item() == pytest.approx(4.0)  # ordered pairs: 2 * (|a-b| + |a-a| + |b-a|) = 2 * (1 + 0 + 1)
    assert style.item() == 0.0
    _, style = channel_contrastive_losses([a, a], [a, b])
    assert style.item() == pytest.approx(-2.0)  # pushing apart is rewarded
    with pytest.raises(ValueError):
        channel_contrastive_losses([a], [a])


def test_projector_output_is_unit_length_and_patch_independent():
    assert projector_grid((40, 12), 16) == (16, 6)
    proj = Projector(4, torch.nn.Conv3d, grid=projector_grid((16, 16, 16), 4), out_features=5)
    z = proj(torch.randn(3, 4, 16, 16, 16))
    assert z.shape == (3, 5)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))


# ------------------------------------------------------------------------------------------------ trainer
def test_prompt_step_updates_only_prompt_and_projector_and_lowers_the_loss(tmp_path):
    t = _trainer(tmp_path)
    x = _smooth_batch("2d")
    torch.manual_seed(1)
    fda, gla = t.style_views(x)
    net_before = {k: v.clone() for k, v in t.network.state_dict().items()}
    proj_before = {k: v.clone() for k, v in t.projector.state_dict().items()}
    losses = [t.prompt_step([x, fda, gla]) for _ in range(4)]
    for v in (fda, gla):  # the views keep each image channel's mean and std
        torch.testing.assert_close(v.mean((2, 3)), x.mean((2, 3)), atol=1e-4, rtol=0)
        assert not torch.allclose(v, x, atol=1e-3)
    onehot = (x > 0).float()  # a cascade's segmentation channel after the image channel is left alone
    for v in t.style_views(torch.cat([x, onehot], 1)):
        assert torch.equal(v[:, 1:], onehot)
    changed = {k for k, v in t.network.state_dict().items() if not torch.equal(v, net_before[k])}
    assert changed == {"channel_prompt"}
    assert all(not torch.equal(v, proj_before[k]) for k, v in t.projector.state_dict().items()
               if k.endswith("weight"))  # (the conv bias before BatchNorm has no gradient)
    total = [float(o["content_loss"] + o["style_loss"]) for o in losses]
    assert total[-1] < total[0]
    assert all(float(o["style_loss"]) <= 0 for o in losses)


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_train_step_runs_three_segmentation_steps(tmp_path, dim):
    t = _trainer(tmp_path, dim)
    label = torch.nn.functional.interpolate(torch.randint(0, 3, (2, 1, *[s // 4 for s in PATCH[dim]])).float(),
                                            size=PATCH[dim], mode="nearest")
    batch = {"data": _smooth_batch(dim), "target": deep_supervision_targets(t, label)}
    before = {k: v.clone() for k, v in t.network.named_parameters()}
    out = t.train_step(batch)
    assert set(out) == {"loss", "loss_fda", "loss_gla", "content_loss", "style_loss"}
    assert all(np.isfinite(v) for v in out.values())
    moved = {k for k, p in t.network.named_parameters() if not torch.equal(p, before[k])}
    with_grad = {k for k, p in t.network.named_parameters() if p.grad is not None}
    assert "channel_prompt" in moved and moved == with_grad  # (the lowest DS head has weight 0 in nnU-Net)
    held = [p for g in t.optimizer.param_groups for p in g["params"]]  # nnU-Net's optimizer: the prompt too
    assert len(held) == len(before) and any(p is t.network.channel_prompt for p in held)


def test_checkpoint_keeps_projector_and_prompt_optimizer(tmp_path):
    t = _trainer(tmp_path)
    x = _smooth_batch("2d")
    t.prompt_step([x, *t.style_views(x)])
    path = str(tmp_path / "ckpt.pth")
    t.save_checkpoint(path)
    u = make_trainer(nnUNetTrainerC2SDG, tmp_path, "2d", plans=t.plans_manager.plans,
                     dataset_json=tiny_dataset_json(), initialize=True)
    u.load_checkpoint(path)
    for k, v in t.projector.state_dict().items():
        assert torch.equal(v, u.projector.state_dict()[k]), k
    assert u.prompt_optimizer.state_dict()["state"].keys() == t.prompt_optimizer.state_dict()["state"].keys()
    assert torch.equal(u.network.channel_prompt, t.network.channel_prompt)
