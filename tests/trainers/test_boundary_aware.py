"""Tests of BA-Net: boundary ground truth, network, loss and train step of nnUNetTrainerBoundaryAware."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer, tiny_dataset_json, tiny_plans
from skimage.morphology import erosion

from nnzoo.trainers.boundary_aware import (
    BOUNDARY_IGNORE,
    label_boundary,
    nnUNetTrainerBoundaryAware,
    region_boundary,
)
from nnzoo.trainers.networks.banet import BoundaryAwareUNet
from nnzoo.trainers.nnunet_compat import deep_supervision_scales

PATCH = {"3d_fullres": (16, 16, 16), "2d": (16, 16)}


def _t(a) -> torch.Tensor:
    """(x, y[, z]) array -> (1, 1, x, y[, z]) float tensor."""
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)[None, None]


def _official_style_boundary(label: np.ndarray) -> np.ndarray:
    """Reference: union over class levels of ``mask - erosion(mask)`` with a 3x3(x3) footprint."""
    out = np.zeros(label.shape, dtype=bool)
    classes = np.unique(label)
    for level in classes[:-1]:
        mask = (label > level).astype(np.uint8)
        out |= (mask - erosion(mask, np.ones((3,) * label.ndim, dtype=bool))) > 0
    return out


# ----------------------------------------------------------------------------- boundary ground truth

def test_boundary_2d_touching_classes_hand_made():
    lab = [[0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 1, 2, 2, 0],
           [0, 1, 1, 2, 2, 0],
           [0, 0, 0, 0, 0, 0]]
    # inner shell of every class: the 1/2 interface is marked on the class-2 side only
    expected = [[0, 0, 0, 0, 0, 0],
                [0, 1, 1, 1, 1, 0],
                [0, 1, 0, 0, 1, 0],
                [0, 1, 0, 1, 1, 0],
                [0, 1, 1, 1, 1, 0],
                [0, 0, 0, 0, 0, 0]]
    out = label_boundary(_t(lab))
    assert out.shape == (1, 1, 6, 6)
    np.testing.assert_array_equal(out[0, 0].numpy(), np.array(expected))


def test_boundary_2d_multiclass_diagonal_contact():
    # classes 1 and 3 touch only diagonally ((1, 1)-(2, 2)): the 8-neighbourhood counts
    lab = np.zeros((5, 5))
    lab[0:2, 0:2] = 1
    lab[2:5, 2:5] = 3
    lab[1, 1] = 1
    expected = np.zeros((5, 5))
    expected[0:2, 0:2] = [[0, 1], [1, 1]]  # (0, 0) sees only class-1 and out-of-patch neighbours
    expected[2, 2:5] = 1
    expected[2:5, 2] = 1
    out = label_boundary(_t(lab))[0, 0].numpy()
    np.testing.assert_array_equal(out, expected)


def test_boundary_patch_border_is_not_boundary():
    assert label_boundary(torch.ones(2, 1, 5, 6)).sum() == 0
    assert label_boundary(torch.full((1, 1, 4, 4, 4), 2.0)).sum() == 0
    lab = torch.ones(1, 1, 5, 6)
    lab[..., :2] = 2  # class 2 along the left border
    out = label_boundary(lab)[0, 0]
    assert out[:, 1].eq(1).all() and out[:, 0].eq(0).all() and out[:, 2:].eq(0).all()


def test_boundary_3d_nested_cubes_hand_made():
    lab = np.zeros((7, 7, 7))
    lab[1:6, 1:6, 1:6] = 1
    lab[2:5, 2:5, 2:5] = 2
    out = label_boundary(_t(lab))[0, 0].numpy()
    # class 1 lies entirely on the shell of its 5-cube (98 voxels, all touching 0); every class-2 voxel
    # but the centre touches class 1 in the 26-neighbourhood (26 voxels)
    expected = np.zeros((7, 7, 7))
    expected[1:6, 1:6, 1:6] = 1
    expected[3, 3, 3] = 0
    np.testing.assert_array_equal(out, expected)
    assert out.sum() == 98 + 26


@pytest.mark.parametrize("shape", [(9, 11), (6, 7, 8)])
def test_boundary_matches_official_erosion_definition(shape):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, size=(2, *shape))
    lab[0, : shape[0] // 2] = 0  # some uniform areas
    out = label_boundary(torch.as_tensor(lab)[:, None])
    for b in range(2):
        np.testing.assert_array_equal(out[b, 0].numpy().astype(bool), _official_style_boundary(lab[b]))


def test_boundary_ignore_label():
    lab = [[1, 1, 3, 3],
           [1, 1, 3, 3],
           [0, 0, 0, 3]]
    out = label_boundary(_t(lab), ignore_label=3)[0, 0].numpy()
    expected = [[0, 0, BOUNDARY_IGNORE, BOUNDARY_IGNORE],
                [1, 1, BOUNDARY_IGNORE, BOUNDARY_IGNORE],
                [0, 0, 0, BOUNDARY_IGNORE]]
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.float32))
    # an ignored label below a class must not create boundary either
    lab2 = torch.tensor([[2.0, 2, 1, 1], [2, 2, 1, 1]])[None, None]
    out2 = label_boundary(lab2, ignore_label=1)[0, 0]
    assert out2[:, :2].eq(0).all() and out2[:, 2:].eq(BOUNDARY_IGNORE).all()


def test_region_boundary_nested_regions_equal_label_boundary():
    rng = np.random.default_rng(1)
    lab = torch.as_tensor(rng.integers(0, 3, size=(2, 1, 6, 7, 5))).float()
    regions = torch.cat([lab > 0, lab == 2], 1)  # whole = {1, 2}, core = {2}
    torch.testing.assert_close(region_boundary(regions), label_boundary(lab))
    ignore = torch.zeros_like(lab, dtype=torch.bool)
    ignore[..., :2] = True
    out = region_boundary(regions, ignore)
    assert out[ignore].eq(BOUNDARY_IGNORE).all()
    assert set(out[~ignore].unique().tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------- network











# ----------------------------------------------------------------------------- trainer

def _trainer(tmp_path: Path, configuration="3d_fullres", dataset_json=None):
    torch.manual_seed(0)
    plans = tiny_plans(configuration, patch_size=PATCH[configuration])
    return make_trainer(nnUNetTrainerBoundaryAware, tmp_path, configuration, plans=plans, dataset_json=dataset_json,
                        initialize=True)


def _batch(tr, label: torch.Tensor) -> dict:
    """Batch as nnU-Net's data loader delivers it: target list, one nearest-downsampled map per DS scale."""
    spatial = label.shape[2:]
    targets = []
    for scale in deep_supervision_scales(tr):
        size = [round(i * s) for i, s in zip(spatial, scale)]
        targets.append(label if list(size) == list(spatial) else
                       F.interpolate(label.float(), size=size, mode="nearest-exact").to(label.dtype))
    data = torch.randn(label.shape[0], 1, *spatial) + label[:, :1].float()
    return {"data": data, "target": targets}


def _labels(shape, n=3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lab = torch.zeros(shape)
    c = [s // 2 for s in shape[2:]]
    sl = tuple(slice(ci - 5, ci + 4) for ci in c)
    lab[(slice(None), slice(None), *sl)] = 1
    sl2 = tuple(slice(ci - 2, ci + 2) for ci in c)
    lab[(slice(None), slice(None), *sl2)] = n - 1
    noise = torch.rand(shape, generator=g) < 0.02
    return torch.where(noise, torch.zeros_like(lab), lab)


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_network_outputs_match_deep_supervision_scales(tmp_path, configuration):
    tr = _trainer(tmp_path, configuration)
    net = tr.network
    assert isinstance(net, BoundaryAwareUNet)
    patch = PATCH[configuration]
    x = torch.randn(2, 1, *patch)
    scales = deep_supervision_scales(tr)
    expected = [tuple(round(p * s) for p, s in zip(patch, sc)) for sc in scales]
    seg = net(x)
    assert [tuple(t.shape[2:]) for t in seg] == expected and all(t.shape[1] == 3 for t in seg)
    seg, bdr = net(x, return_boundary=True)
    assert [tuple(t.shape[2:]) for t in bdr] == expected and all(t.shape[1] == 2 for t in bdr)
    keys_ds = set(net.state_dict())
    # as the predictor builds and runs it
    pred_net = tr.build_network_architecture(tr.plans_manager, tr.configuration_manager, 1, 3,
                                             enable_deep_supervision=False)
    assert set(pred_net.state_dict()) == keys_ds
    pred_net.load_state_dict(net.state_dict())
    pred_net.eval()
    with torch.no_grad():
        out = pred_net(x)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 3, *patch)


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_train_step_runs_and_loss_decreases(tmp_path, configuration):
    tr = _trainer(tmp_path, configuration)
    batch = _batch(tr, _labels((2, 1, *PATCH[configuration])))
    totals = []
    for _ in range(5 if configuration == "3d_fullres" else 8):
        out = tr.train_step(batch)
        assert set(out) >= {"loss", "boundary_loss", "total_loss"}
        np.testing.assert_allclose(out["total_loss"], out["loss"] + out["boundary_loss"], rtol=1e-5)
        totals.append(float(out["total_loss"]))
    assert np.isfinite(totals).all()
    assert totals[-1] < totals[0]
    # nnU-Net's own validation step works unchanged (segmentation loss only), in train and eval mode
    val = tr.validation_step({"data": batch["data"], "target": [t.clone() for t in batch["target"]]})
    assert np.isfinite(val["loss"]) and val["tp_hard"].shape == (2,)
    tr.network.eval()
    val = tr.validation_step({"data": batch["data"], "target": [t.clone() for t in batch["target"]]})
    assert np.isfinite(val["loss"])


def test_boundary_targets_on_the_batch(tmp_path):
    tr = _trainer(tmp_path)
    batch = _batch(tr, _labels((2, 1, *PATCH["3d_fullres"])))
    bdr = tr.boundary_targets(batch["target"])
    assert [t.shape for t in bdr] == [t.shape for t in batch["target"]]
    torch.testing.assert_close(bdr[0], label_boundary(batch["target"][0]))
    torch.testing.assert_close(bdr[1], F.interpolate(bdr[0], size=bdr[1].shape[2:], mode="nearest-exact"))
    assert 0 < bdr[0].mean() < 0.5


def test_ignore_label_excluded_from_both_losses(tmp_path):
    dj = tiny_dataset_json(labels={"background": 0, "a": 1, "b": 2, "ignore": 3})
    tr = _trainer(tmp_path, dataset_json=dj)
    lab = _labels((2, 1, *PATCH["3d_fullres"]))
    lab[..., :5] = 3
    batch = _batch(tr, lab)
    bdr_t = tr.boundary_targets(batch["target"])
    assert bdr_t[0][lab == 3].eq(BOUNDARY_IGNORE).all()
    assert bdr_t[0][lab != 3].le(1).all() and bdr_t[0].eq(1).any()
    out = tr.train_step(batch)
    assert np.isfinite(out["total_loss"])
    # changing the predictions at ignored voxels changes neither loss term
    tr.network.eval()
    with torch.no_grad():
        seg, bdr = tr.network(batch["data"], return_boundary=True)
        seg2 = [s.clone() for s in seg]
        bdr2 = [b.clone() for b in bdr]
        for s, b, t in zip(seg2, bdr2, batch["target"]):
            m = (t == 3).expand_as(s)
            s[m] = 50.0
            b[(t == 3).expand_as(b)] = -50.0
        torch.testing.assert_close(tr.loss(seg, batch["target"]), tr.loss(seg2, batch["target"]))
        torch.testing.assert_close(tr.boundary_loss(bdr, bdr_t), tr.boundary_loss(bdr2, bdr_t))


@pytest.mark.parametrize("with_ignore", [False, True])
def test_region_based_plans(tmp_path, with_ignore):
    labels = {"background": 0, "whole": [1, 2], "core": 2}
    if with_ignore:
        labels["ignore"] = 3
    dj = tiny_dataset_json(labels=labels, regions_class_order=[1, 2])
    tr = _trainer(tmp_path, dataset_json=dj)
    assert tr.label_manager.has_regions
    lab = _labels((2, 1, *PATCH["3d_fullres"]))
    if with_ignore:
        lab[..., -4:] = 3
    chans = [(lab == 1) | (lab == 2), lab == 2] + ([lab == 3] if with_ignore else [])
    region_target = torch.cat(chans, 1)  # what ConvertSegmentationToRegionsTransform delivers
    batch = _batch(tr, region_target)
    bdr = tr.boundary_targets(batch["target"])
    expected = label_boundary(lab, 3 if with_ignore else None)
    torch.testing.assert_close(bdr[0], expected)
    seg = tr.network(batch["data"])
    assert seg[0].shape[1] == 2  # one sigmoid head per region
    out = tr.train_step(batch)
    assert np.isfinite(out["total_loss"]) and out["boundary_loss"] > 0


def test_registered_with_planner():
    from nnzoo.plans.registry import get_planner_class
    from nnzoo.trainers.registry import get_trainer_info

    info = get_trainer_info("nnUNetTrainerBoundaryAware")
    assert info.cls is nnUNetTrainerBoundaryAware and info.dims == ("2d", "3d")
    assert "Boundary-Aware" in info.paper
    assert get_planner_class(info.planner).__name__ == "nnUNetPlannerBoundaryAware"
    assert "Deviations from the official code" in nnUNetTrainerBoundaryAware.__doc__
