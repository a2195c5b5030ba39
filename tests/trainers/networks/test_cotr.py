"""CoTr network (trainers/networks/cotr.py): strides, shapes, DeTrans levels, plan architecture entry."""

from __future__ import annotations

import pytest
import torch

from nnzoo.trainers.networks.cotr import (
    ARCH_KEYS,
    COTR_CLASS_NAME,
    CoTr,
    cotr_plan_architecture,
    cotr_strides,
    total_stride,
)

TINY = {"stem_channels": 4, "stage_channels": (8, 16, 16), "blocks_per_stage": (1, 2, 1), "stem_kernel_size": 3,
        "d_model": 16, "n_heads": 2, "n_points": 2, "n_layers": 1, "ffn_dim": 32, "dropout": 0.1, "axis_order": "grid"}


def _net(ndim: int, ds: bool = True) -> CoTr:
    strides = cotr_strides([[1] * ndim] + [[2] * ndim] * 5, ndim)
    return CoTr(1, 3, conv_op=torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d, strides=strides, deep_supervision=ds,
                **TINY)


def test_paper_strides_and_plan_derived_strides():
    paper = [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert cotr_strides([[1, 1, 1]] + [[2, 2, 2]] * 5, 3) == paper  # isotropic 128^3-like plan
    assert cotr_strides([[1, 1, 1]] + [[2, 2, 2]] * 3 + [[1, 2, 2]] * 2, 3) == paper  # 48x192x192, spacing 1
    # anisotropic (thick slices): the first axis is pooled where nnU-Net pools it
    aniso = cotr_strides([[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], 3)
    assert aniso == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert cotr_strides([[1, 1]] + [[2, 2]] * 6, 2) == [(2, 2)] * 4
    # an axis the plan halves late keeps stride 1 where the plan does
    st = cotr_strides([[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2]], 3)
    assert st == [(1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2)] and total_stride(st) == (4, 16, 16)
    # short plans (tiny test plans): missing levels get stride 1, the stem's first-axis halving moves on
    st = cotr_strides([[1, 1, 1], [2, 2, 2], [2, 2, 2]], 3)
    assert st == [(1, 2, 2), (2, 2, 2), (2, 1, 1), (1, 1, 1)] and total_stride(st) == (4, 4, 4)


@pytest.mark.parametrize("ndim,patch", [(3, (16, 32, 48)), (2, (32, 48))])
def test_network_shapes_with_and_without_deep_supervision(ndim, patch):
    torch.manual_seed(0)
    net = _net(ndim)
    x = torch.randn(2, 1, *patch)
    outs = net(x)
    scales = net.deep_supervision_scales()
    assert isinstance(outs, list) and len(outs) == len(scales) == 4
    for o, s in zip(outs, scales):
        assert tuple(o.shape) == (2, 3, *[round(p * f) for p, f in zip(patch, s)])
    assert scales[-1] == ([0.25, 0.125, 0.125] if ndim == 3 else [0.125, 0.125])
    net.decoder.deep_supervision = False
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 3, *patch)


def test_state_dict_keys_identical_with_and_without_deep_supervision():
    assert list(_net(3, True).state_dict()) == list(_net(3, False).state_dict())


def test_detrans_skips_replace_the_two_deepest_levels():
    net = _net(3)
    skips = net.encoder(torch.randn(1, 1, 16, 32, 32))
    assert [tuple(s.shape[1:]) for s in skips] == [(4, 16, 16, 16), (8, 8, 8, 8), (16, 4, 4, 4), (16, 2, 2, 2)]


def test_plan_architecture_entry_builds_cotr_with_nnunets_builder():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    entry = cotr_plan_architecture([[1, 1, 1]] + [[2, 2, 2]] * 5, 3, TINY)
    assert list(entry["arch_kwargs"])[2:2 + len(ARCH_KEYS)] == list(ARCH_KEYS)
    assert entry["network_class_name"] == COTR_CLASS_NAME
    assert entry["arch_kwargs"]["strides"] == [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    net = get_network_from_plans(entry["network_class_name"], entry["arch_kwargs"], entry["_kw_requires_import"], 1, 3,
                                 deep_supervision=False)
    assert isinstance(net, CoTr) and net.encoder.output_channels == [4, 8, 16, 16]
    assert total_stride(net.encoder.strides) == (8, 16, 16)
