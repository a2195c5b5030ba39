"""nnUNetTrainerMIND: the MIND-SSC descriptor on hand-made tensors, on the plan network and in a train step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_trainer, tiny_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnzoo.trainers.mind import nnUNetTrainerMIND
from nnzoo.trainers.networks.mind import attach_mind, gaussian_smooth, mind_channels, mind_pairs, mind_ssc
from nnzoo.trainers.registry import get_trainer_info

PATCH = {"2d": (32, 32), "3d_fullres": (8, 16, 16)}


def _reference_mind_2d(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """MIND-SSC of one 2D image written out with loops (delta 1, no noise): the pairs (up, left), (up, right),
    (down, left), (down, right) in the order of :func:`mind_pairs`."""
    h, w = img.shape
    p = np.pad(img, 1, mode="edge")
    pairs = mind_pairs(2)
    d = np.zeros((len(pairs), h, w))
    for k, (a, b) in enumerate(pairs):
        for i in range(h):
            for j in range(w):
                d[k, i, j] = (p[1 + i + a[0], 1 + j + a[1]] - p[1 + i + b[0], 1 + j + b[1]]) ** 2
    half = int(np.ceil(1.5 * sigma))
    t = np.arange(-half, half + 1)
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    for axis in (1, 2):  # separable smoothing with replicate padding
        pad = [(0, 0)] * 3
        pad[axis] = (half, half)
        q = np.pad(d, pad, mode="edge")
        d = sum(g[n] * np.take(q, np.arange(n, n + d.shape[axis]), axis=axis) for n in range(len(g)))
    d = d - d.min(0, keepdims=True)
    v = d.mean(0, keepdims=True)
    v = np.clip(v, v.mean() * 1e-3, v.mean() * 1e3)
    return np.exp(-d / v)


def test_the_neighbour_pairs_are_those_of_mind_ssc():
    """Face neighbours at squared distance 2 (never opposite ones): 4 pairs in 2D, 12 in 3D."""
    assert mind_channels(2) == 4 and mind_channels(3) == 12
    for ndim in (2, 3):
        pairs = mind_pairs(ndim)
        assert len(set(pairs)) == len(pairs)
        for a, b in pairs:
            assert sum(map(abs, a)) == sum(map(abs, b)) == 1
            assert sum((x - y) ** 2 for x, y in zip(a, b)) == 2
    with pytest.raises(ValueError, match="2D or 3D"):
        mind_pairs(1)


def test_descriptor_equals_a_loop_written_reference():
    img = np.random.default_rng(0).normal(size=(7, 9))
    ours = mind_ssc(torch.tensor(img, dtype=torch.float64)[None, None])[0].numpy()
    assert ours.shape == (4, 7, 9)
    np.testing.assert_allclose(ours, _reference_mind_2d(img), rtol=1e-6, atol=1e-9)


def test_gaussian_smoothing_keeps_constants_and_mass():
    x = torch.full((1, 2, 6, 7, 5), 3.0)
    assert torch.allclose(gaussian_smooth(x, 1.0), x)
    spike = torch.zeros(1, 1, 11, 11)
    spike[0, 0, 5, 5] = 1.0
    out = gaussian_smooth(spike, 1.0)
    assert out.sum().item() == pytest.approx(1.0) and out[0, 0, 5, 5] == out.max()
    assert torch.allclose(out, out.flip(-1)) and torch.allclose(out, out.transpose(-1, -2))


@pytest.mark.parametrize("shape", [(2, 1, 12, 10), (2, 2, 6, 8, 7)])
def test_a_contrast_change_does_not_move_the_descriptor(shape):
    """``a x + b`` with a negative ``a`` (a T1 -> T2-like inversion) gives the same descriptor; a non-linear map
    of the intensities does change it; values lie in (0, 1] and at least one pair per voxel is 1."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m = mind_ssc(x)
    assert m.shape == (shape[0], shape[1] * mind_channels(len(shape) - 2), *shape[2:])
    torch.testing.assert_close(mind_ssc(-2.5 * x + 7.0), m)
    assert not torch.allclose(mind_ssc(x ** 2), m, atol=1e-3)
    assert m.min() > 0 and m.max() <= 1
    k = mind_channels(len(shape) - 2)
    per_channel = m.reshape(shape[0], shape[1], k, *shape[2:])
    assert torch.allclose(per_channel.max(2).values, torch.ones(()).double())


def test_constant_tiles_and_batch_companions():
    """A constant tile (background) gives ones, not NaN; a sample's descriptor does not depend on the batch."""
    assert torch.equal(mind_ssc(torch.zeros(1, 1, 8, 8)), torch.ones(1, 4, 8, 8))
    x = torch.randn(1, 1, 10, 10, generator=torch.Generator().manual_seed(2))
    companion = 100 * torch.randn(1, 1, 10, 10, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mind_ssc(torch.cat([x, companion]))[:1], mind_ssc(x))


def test_noise_only_in_training_mode():
    net = torch.nn.Conv2d(4, 1, 1)
    attach_mind(net, noise=0.05)
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    net.eval()
    assert torch.equal(net(x), net(x))
    torch.testing.assert_close(net(x), torch.nn.functional.conv2d(mind_ssc(x), net.weight, net.bias))
    net.train()
    assert not torch.equal(net(x), net(x))
    assert mind_ssc(x, noise=0.05, generator=torch.Generator().manual_seed(5)).ne(mind_ssc(x)).any()


@pytest.mark.parametrize("cfg", ["2d", "3d_fullres"])
def test_the_plan_network_takes_the_descriptor(cfg):
    """The network is the plan's with K input channels per image channel; the hook feeds it the descriptor of
    the image, so a 1-channel batch runs; the state dict has the plan network's keys."""
    pm = PlansManager(tiny_plans(cfg, PATCH[cfg]))
    cm = pm.get_configuration(cfg)
    net = nnUNetTrainerMIND.build_network_architecture(pm, cm, 1, 3, False).eval()
    k = mind_channels(len(PATCH[cfg]))
    first = next(m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    assert first.in_channels == k
    x = torch.randn(2, 1, *PATCH[cfg])
    with torch.no_grad():
        out = net(x)
        net._forward_pre_hooks.clear()  # the same network without the hook, given the descriptor directly
        assert torch.equal(net(mind_ssc(x)), out)
    assert out.shape == (2, 3, *PATCH[cfg])


def test_trainer_turns_mirroring_off_and_is_registered(tmp_path):
    t = make_trainer(nnUNetTrainerMIND, tmp_path, configuration="2d")
    *_, mirror_axes = t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes is None and t.inference_allowed_mirroring_axes is None
    on = make_trainer(type("M", (nnUNetTrainerMIND,), {"MIRRORING": True}), tmp_path, configuration="2d")
    *_, mirror_axes = on.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes == (0, 1) and on.inference_allowed_mirroring_axes == (0, 1)
    info = get_trainer_info("nnUNetTrainerMIND")
    assert info.domain_generalisation and "DG-TTA" in info.paper and info.dims == ("2d", "3d")
