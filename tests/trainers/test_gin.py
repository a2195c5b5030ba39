"""Tests of GIN-IPA: B-spline blending masks, the three views, the KL consistency, the trainer's step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import deep_supervision_targets, make_trainer, tiny_plans

from nnzoo.trainers.augment import augmented_trainer_class
from nnzoo.trainers.gin import (
    N_VIEWS,
    bspline_kernel,
    gin_consistency_loss,
    gin_ipa_views,
    ipa_blend,
    ipa_blend_field,
    nnUNetTrainerGINIPA,
)
from nnzoo.trainers.registry import get_trainer_info

PATCH = {"2d": (32, 32), "3d_fullres": (16, 16, 16)}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- IPA masks
def test_bspline_kernel_hand_made_and_partition_of_unity():
    torch.testing.assert_close(bspline_kernel((2,), order=1), torch.tensor([0.5, 1.0, 0.5]))
    torch.testing.assert_close(bspline_kernel((2,), order=2), torch.tensor([0.25, 0.75, 0.75, 0.25]))
    k = bspline_kernel((5,), order=2)
    assert k.shape == (13,)
    total = torch.zeros(60)
    for j in range(0, 60 - 13, 5):  # kernels shifted by the spacing sum to 1 inside the grid
        total[j:j + 13] += k
    torch.testing.assert_close(total[15:40], torch.ones(25))
    k2 = bspline_kernel((3, 4))  # separable
    torch.testing.assert_close(k2, bspline_kernel((3,))[:, None] * bspline_kernel((4,))[None, :])


@pytest.mark.parametrize("size", [(64, 64), (16, 32, 32)])
def test_blend_field_range_shape_and_smoothness(size):
    m = ipa_blend_field(4, size, generator=_gen(0))
    assert m.shape == (4, 1, *size) and m.dtype == torch.float32
    flat = m.flatten(1)
    torch.testing.assert_close(flat.amin(1), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.amax(1), torch.ones(4))
    assert not torch.allclose(m[0], m[1])  # one mask per sample
    for axis, n in enumerate(size, start=2):  # smooth: 4 cells per axis, no jumps (white noise: ~1)
        assert float(m.diff(dim=axis).abs().amax()) < 1.5 * 4 / n
    torch.testing.assert_close(ipa_blend_field(4, size, generator=_gen(0)), m)


def test_blend_field_correlation_length_is_a_quarter_of_the_patch():
    m = ipa_blend_field(32, (64, 64), generator=_gen(1))
    c = m - m.mean((2, 3), keepdim=True)

    def autocorr(lag):
        return float((c[..., :-lag] * c[..., lag:]).mean() / c.pow(2).mean())

    assert autocorr(4) > 0.8 and autocorr(8) > 0.5  # smooth over 1/8 of the patch
    assert autocorr(32) < 0.1  # unrelated half a patch away
    # finer grids give shorter correlation lengths
    fine = ipa_blend_field(32, (64, 64), grid_cells=16, generator=_gen(1))
    cf = fine - fine.mean((2, 3), keepdim=True)
    assert float((cf[..., :-8] * cf[..., 8:]).mean() / cf.pow(2).mean()) < autocorr(8) - 0.2


def test_ipa_blend_hand_made():
    a, b = torch.full((1, 2, 3, 3), 2.0), torch.zeros(1, 2, 3, 3)
    m = torch.linspace(0, 1, 9).reshape(1, 1, 3, 3)
    v1, v2 = ipa_blend(a, b, m)
    torch.testing.assert_close(v1, 2 * m.expand(1, 2, 3, 3))
    torch.testing.assert_close(v2, 2 * (1 - m).expand(1, 2, 3, 3))
    torch.testing.assert_close(v1 + v2, a + b)


# ----------------------------------------------------------------------------- views and loss
def test_views_layout_and_cascade_channels():
    x = torch.randn(2, 3, 24, 24, generator=_gen(0))
    x[:, 1:] = (x[:, 1:] > 0).float()  # two "previous-stage segmentation" channels
    v = gin_ipa_views(x, n_image_channels=1, generator=_gen(2))
    assert v.shape == (N_VIEWS * 2, 3, 24, 24)
    torch.testing.assert_close(v[:, 1:], x[:, 1:].repeat(3, 1, 1, 1))  # copied into every view
    img = v[:, :1].reshape(3, 2, 1, 24, 24)
    assert all(not torch.allclose(img[i], img[j]) for i in range(3) for j in range(i + 1, 3))
    # the third view is plain GIN: it keeps every sample's Frobenius norm (the blends need not)
    torch.testing.assert_close(img[2].flatten(1).norm(dim=1), x[:, :1].flatten(1).norm(dim=1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gin_ipa_views(x, n_image_channels=1, generator=_gen(2)), v)
    assert gin_ipa_views(torch.randn(1, 1, 8, 8, 8), generator=_gen(0)).shape == (3, 1, 8, 8, 8)


def test_consistency_loss_hand_made():
    # two views, two classes, one voxel: p1 = (0.5, 0.5), p2 = (0.9, 0.1); mean (0.7, 0.3)
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]])).reshape(2, 2, 1, 1)
    expected = (0.7 * np.log(0.7 / 0.5) + 0.3 * np.log(0.3 / 0.5) + 0.7 * np.log(0.7 / 0.9)
                + 0.3 * np.log(0.3 / 0.1)) / 4  # KLDivLoss's mean over all 4 elements
    torch.testing.assert_close(gin_consistency_loss(logits, n_views=2), torch.tensor(expected, dtype=torch.float32))
    same = torch.randn(1, 3, 4, 4).repeat(3, 1, 1, 1)
    assert float(gin_consistency_loss(same)) == pytest.approx(0.0, abs=1e-7)
    assert float(gin_consistency_loss(same, regions=True)) == pytest.approx(0.0, abs=1e-7)
    diff = torch.randn(3, 3, 4, 4, generator=_gen(0))
    assert float(gin_consistency_loss(diff)) > 0 and float(gin_consistency_loss(diff, regions=True)) > 0
    with pytest.raises(ValueError, match="3 stacked views"):
        gin_consistency_loss(torch.zeros(4, 2, 3, 3))


def test_consistency_gradient_flows_through_the_mean():
    """As official, the mean prediction is not detached: the gradient differs from a detached-mean KL."""
    z = torch.randn(3, 2, 4, 4, generator=_gen(0), requires_grad=True)
    gin_consistency_loss(z).backward()
    g_full = z.grad.clone()
    z2 = z.detach().clone().requires_grad_(True)
    lp = torch.log_softmax(z2, 1)
    mean = lp.exp().reshape(3, 1, 2, 4, 4).mean(0).detach().repeat(3, 1, 1, 1)
    (mean * (mean.log() - lp)).mean().backward()
    assert not torch.allclose(g_full, z2.grad)


# ----------------------------------------------------------------------------- trainer
def _trainer(tmp_path, configuration="3d_fullres"):
    torch.manual_seed(0)
    return make_trainer(nnUNetTrainerGINIPA, tmp_path, configuration,
                        plans=tiny_plans(configuration, PATCH[configuration]), initialize=True)


def _batch(tr, configuration, b=2):
    patch = PATCH[configuration]
    label = torch.zeros(b, 1, *patch)
    label[(slice(None), slice(None), *(slice(s // 4, 3 * s // 4) for s in patch))] = 1
    label[(slice(None), slice(None), *(slice(3 * s // 8, 5 * s // 8) for s in patch))] = 2
    data = label + 0.3 * torch.randn(label.shape, generator=_gen(1))
    return {"data": data, "target": deep_supervision_targets(tr, label)}


def test_registered():
    info = get_trainer_info("nnUNetTrainerGINIPA")
    assert info.domain_generalisation and info.dims == ("2d", "3d") and not info.semi_supervised
    assert "cheng-01037" in info.official_code
    with pytest.raises(ValueError, match="already applies GIN"):
        augmented_trainer_class(nnUNetTrainerGINIPA, "gin")


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_train_step_every_parameter_and_parts(tmp_path, configuration):
    tr = _trainer(tmp_path, configuration)
    batch = _batch(tr, configuration)
    seen = []
    tr.network.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    tr.optimizer.zero_grad()
    tr.loss(tr.network(batch["data"]), batch["target"]).backward()
    # nnU-Net's own loss: the lowest head has weight 0 (nnU-Net makes it 1e-6 under DDP)
    unused_by_nnunet = {n for n, p in tr.network.named_parameters() if p.grad is None}
    tr.optimizer.zero_grad(set_to_none=True)
    views = tr.views(batch["data"])
    total, parts = tr.gin_ipa_loss(tr.network(views), batch["target"], 2)
    total.backward()
    assert {n for n, p in tr.network.named_parameters() if p.grad is None} <= unused_by_nnunet
    assert float(parts["consistency_loss"].detach()) > 0
    torch.testing.assert_close(total, parts["loss"] + 10.0 * parts["consistency_loss"])
    out = tr.train_step(batch)
    assert set(out) >= {"loss", "consistency_loss", "total_loss"}
    np.testing.assert_allclose(out["total_loss"], out["loss"] + 10.0 * out["consistency_loss"], rtol=1e-5)
    assert seen[-1].shape[0] == N_VIEWS * 2  # the network ran on the three views
    val = tr.validation_step({"data": batch["data"], "target": [t.clone() for t in batch["target"]]})
    assert np.isfinite(val["loss"])
    torch.testing.assert_close(seen[-1], batch["data"])  # validation sees the original images


def test_consistency_decreases_on_a_fixed_batch(tmp_path, monkeypatch):
    """Measured for the docstring: with the views fixed, a few steps make the views' predictions agree."""
    tr = _trainer(tmp_path, "2d")
    batch = _batch(tr, "2d")
    fixed = tr.views(batch["data"], generator=_gen(0))
    monkeypatch.setattr(tr, "views", lambda data, generator=None: fixed)
    cons = [float(tr.train_step(batch)["consistency_loss"]) for _ in range(6)]
    assert cons[0] > 0 and np.isfinite(cons).all()
    assert all(b < a for a, b in zip(cons, cons[1:])) and cons[-1] < 0.85 * cons[0], cons
