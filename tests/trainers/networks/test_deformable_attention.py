"""Properties of the pure-PyTorch multi-scale deformable attention (CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from nnzoo.trainers.networks.deformable_attention import (
    MultiScaleDeformableAttention,
    deformable_sample,
    reference_points,
)

SHAPES = {2: [(5, 7)], 3: [(5, 7, 9)]}


def _identity_attention(d_model: int, n_levels: int, n_points: int, ndim: int) -> MultiScaleDeformableAttention:
    """Attention with zero offsets, uniform weights and identity projections."""
    attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads=2, n_points=n_points, ndim=ndim)
    with torch.no_grad():
        for lin in (attn.sampling_offsets, attn.attention_weights):
            lin.weight.zero_()
            lin.bias.zero_()
        for lin in (attn.value_proj, attn.output_proj):
            lin.weight.copy_(torch.eye(d_model))
            lin.bias.zero_()
    return attn


def test_reference_points_are_voxel_centres_in_grid_sample_order():
    ref = reference_points([(2, 3, 4)])
    # token (d=1, h=2, w=3) is the last one; grid_sample order is (x=w, y=h, z=d)
    assert torch.allclose(ref[-1], torch.tensor([3.5 / 4, 2.5 / 3, 1.5 / 2]))
    # token (d=0, h=0, w=1): x moves fastest
    assert torch.allclose(ref[1], torch.tensor([1.5 / 4, 0.5 / 3, 0.5 / 2]))


@pytest.mark.parametrize("ndim", [2, 3])
def test_zero_offsets_sample_each_query_at_its_own_voxel(ndim):
    """Core sampler: zero offsets + equal weights return each token's own value (odd, unequal sides)."""
    torch.manual_seed(0)
    shapes = SHAPES[ndim]
    s = math.prod(shapes[0])
    n, m, dh, p = 2, 3, 4, 4
    value = torch.randn(n, s, m, dh)
    loc = reference_points(shapes)[None, :, None, None, None, :].expand(n, s, m, 1, p, ndim)
    w = torch.full((n, s, m, 1, p), 1.0 / p)
    out = deformable_sample(value, shapes, loc, w)
    assert out.shape == (n, s, m * dh)
    assert torch.allclose(out, value.reshape(n, s, m * dh), atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_module_zero_offsets_is_identity(ndim):
    torch.manual_seed(0)
    shapes = SHAPES[ndim]
    x = torch.randn(2, math.prod(shapes[0]), 8)
    attn = _identity_attention(8, 1, 3, ndim)
    out = attn(x + torch.randn_like(x), reference_points(shapes), x, shapes)  # query content is irrelevant here
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_module_zero_offsets_two_levels(ndim):
    """Two levels, second level all zero: queries of level 0 get half their own value (uniform weights)."""
    torch.manual_seed(0)
    shapes = [(5, 7, 9), (3, 4, 5)] if ndim == 3 else [(5, 7), (3, 4)]
    s0, s1 = math.prod(shapes[0]), math.prod(shapes[1])
    x = torch.cat([torch.randn(1, s0, 8), torch.zeros(1, s1, 8)], 1)
    attn = _identity_attention(8, 2, 2, ndim)
    out = attn(x, reference_points(shapes), x, shapes)
    assert torch.allclose(out[:, :s0], x[:, :s0] / 2, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_gradients_reach_offsets_and_attention_weights(ndim):
    torch.manual_seed(0)
    shapes = [(5, 7, 9), (3, 4, 5)] if ndim == 3 else [(5, 7), (3, 4)]
    s = sum(math.prod(sh) for sh in shapes)
    attn = MultiScaleDeformableAttention(8, 2, n_heads=2, n_points=3, ndim=ndim)
    with torch.no_grad():  # leave the zero init so that offsets/weights depend on the query
        attn.sampling_offsets.weight.normal_(0, 0.1)
        attn.attention_weights.weight.normal_(0, 0.1)
    x = torch.randn(2, s, 8)
    out = attn(x, reference_points(shapes), x, shapes)
    (out * torch.randn_like(out)).sum().backward()
    for lin in (attn.sampling_offsets, attn.attention_weights):
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
        assert lin.bias.grad.abs().sum() > 0


def test_offsets_are_in_voxels_of_each_axis():
    """An offset of +1 along x (last axis) samples the next voxel along W, not along D or H."""
    shapes = [(3, 5, 7)]
    s = math.prod(shapes[0])
    attn = _identity_attention(2, 1, 1, 3)
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 0.0] * 2))
    grid = torch.arange(s, dtype=torch.float32).reshape(1, s, 1).repeat(1, 1, 2)
    out = attn(grid, reference_points(shapes), grid, shapes).reshape(3, 5, 7, 2)
    ref = grid.reshape(3, 5, 7, 2)
    assert torch.allclose(out[:, :, :-1], ref[:, :, 1:], atol=1e-4)
    assert torch.allclose(out[:, :, -1], torch.zeros_like(out[:, :, -1]), atol=1e-4)  # zero padding


def test_rejects_bad_configuration():
    with pytest.raises(ValueError):
        MultiScaleDeformableAttention(10, 1, n_heads=3)
    with pytest.raises(ValueError):
        deformable_sample(torch.zeros(1, 5, 1, 2), [(2, 2)], torch.zeros(1, 5, 1, 1, 1, 2), torch.zeros(1, 5, 1, 1, 1))


def test_official_axis_order_reproduces_the_official_reference_points():
    """Official CoTr: reference points stacked (d/D, w/W, h/H) and offsets normalised by (D, W, H)."""
    from nnzoo.trainers.networks.deformable_attention import offset_normaliser

    shape = (2, 3, 4)
    off = reference_points([shape], axis_order="official").reshape(*shape, 3)
    grid = reference_points([shape], axis_order="grid").reshape(*shape, 3)
    d, h, w = 1, 2, 3
    assert off[d, h, w].tolist() == pytest.approx([(d + .5) / 2, (w + .5) / 4, (h + .5) / 3])
    assert grid[d, h, w].tolist() == pytest.approx([(w + .5) / 4, (h + .5) / 3, (d + .5) / 2])
    assert offset_normaliser([shape], axis_order="official").tolist() == [[2.0, 4.0, 3.0]]
    assert offset_normaliser([shape]).tolist() == [[4.0, 3.0, 2.0]]
    # 2D: both orders are Deformable DETR's (x, y)
    assert torch.equal(reference_points([(3, 5)], axis_order="official"), reference_points([(3, 5)]))
    # with the official order a zero-offset query does not sample its own voxel on a non-cubic level
    attn = MultiScaleDeformableAttention(4, 1, n_heads=1, n_points=1, ndim=3, axis_order="official")
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
    x = torch.randn(1, 24, 4)
    out = attn(x, reference_points([shape], axis_order="official"), x, [shape])
    ident = MultiScaleDeformableAttention(4, 1, n_heads=1, n_points=1, ndim=3)
    ident.load_state_dict(attn.state_dict())
    assert not torch.allclose(out, ident(x, reference_points([shape]), x, [shape]))


def test_sampling_locations_are_float32_under_autocast(monkeypatch):
    from nnzoo.trainers.networks import deformable_attention as da

    seen = {}
    real = da.deformable_sample

    def spy(value, shapes, locations, weights):
        seen["dtype"] = locations.dtype
        return real(value, shapes, locations, weights)

    monkeypatch.setattr(da, "deformable_sample", spy)
    attn = MultiScaleDeformableAttention(8, 1, n_heads=2, n_points=2, ndim=3)
    shape = (6, 40, 40)
    x = torch.randn(1, 6 * 40 * 40, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x, reference_points([shape]), x, [shape])
    assert seen["dtype"] == torch.float32
