"""Test-time adaptation methods (``nnzoo.trainers.adapt``) on tiny plan-built nnU-Net networks and hand-made tensors."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_plans
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnzoo.trainers.adapt import (
    METHODS,
    GraTa,
    Tent,
    adapter_class,
    norm_affine_parameters,
    parse_adapt_hparams,
    random_patches,
    record_source_statistics,
)
from nnzoo.trainers.adapt.base import batch_statistics

PATCH = {"2d": (32, 32), "3d": (16, 16, 16)}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (on the shared 2-core machine, 2 threads were 100x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_network(dim: str = "2d", seed: int = 0) -> torch.nn.Module:
    cfg = "2d" if dim == "2d" else "3d_fullres"
    pm = PlansManager(tiny_plans(cfg, PATCH[dim]))
    cm = pm.get_configuration(cfg)
    torch.manual_seed(seed)
    net = nnUNetTrainer.build_network_architecture(pm, cm, 1, 3, enable_deep_supervision=False)
    # trained-like affine parameters (nnU-Net initialises them to 1 and 0)
    with torch.no_grad():
        for p in norm_affine_parameters(net).values():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def smooth_images(n: int, shape: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn((1, 1, *[s // 4 for s in shape]), generator=g)
        mode = "bilinear" if len(shape) == 2 else "trilinear"
        out.append(torch.nn.functional.interpolate(x, size=shape, mode=mode, align_corners=False))
    return out


def make(name: str, net, dim: str = "2d", stats: dict | None = None, **hparams):
    cls = adapter_class(name)
    kwargs = {}
    if cls.needs_source_stats:
        if stats is None:
            stats = record_source_statistics(net, [t[0] for t in smooth_images(4, PATCH[dim], seed=99)])
        kwargs = dict(source_stats=stats, patch_size=PATCH[dim], num_input_channels=1)
    return cls(net, hparams=hparams, **kwargs)


def run_case(adapter, tiles, *, seed: int, continual: bool = False) -> torch.Tensor:
    """The protocol the predictor runs for one case and fold; returns the stacked predictions of the tiles."""
    adapter.begin_case(continual=continual)
    adapter.adapt(tiles, generator=torch.Generator().manual_seed(seed))
    with adapter.predicting(), torch.no_grad():
        out = torch.cat([adapter.network(adapter.transform(t)) for t in tiles])
    adapter.end_case(continual=continual)
    return out


def state(net) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- hyperparameters and names ------------------------------------------------------------------------------------
def test_parse_adapt_hparams_types_and_errors():
    assert parse_adapt_hparams("tent", ["LR=0.01", "STEPS=2"]) == {"LR": 0.01, "STEPS": 2}
    assert parse_adapt_hparams("VPTTA", ["MEMORY_SIZE=8"]) == {"MEMORY_SIZE": 8}
    with pytest.raises(KeyError, match="--adapt bogus: one of tent, vptta, grata"):
        adapter_class("bogus")
    with pytest.raises(KeyError, match="NOPE is not a hyperparameter of Tent.*LR"):
        parse_adapt_hparams("tent", ["NOPE=1"])
    with pytest.raises(ValueError, match="STEPS='x': expected a int"):
        parse_adapt_hparams("tent", ["STEPS=x"])
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_adapt_hparams("grata", ["LR"])
    with pytest.raises(ValueError, match="given twice"):
        parse_adapt_hparams("grata", ["LR=1", "LR=2"])


def test_official_defaults_are_the_hyperparameters():
    assert Tent(tiny_network()).hyperparameters() == {"OPTIMIZER": "adam", "LR": 1e-3, "BETA": 0.9, "MOMENTUM": 0.9,
                                                      "WD": 0.0, "STEPS": 1}
    g = GraTa(tiny_network()).hyperparameters()
    assert (g["LR"], g["BETA2"], g["AUX_LOSS"], g["PSEUDO_LOSS"]) == (1e-4, 0.999, "ent", "consis")
    with pytest.raises(ValueError, match="AUX_LOSS='rotate': only 'ent'"):
        GraTa(tiny_network(), hparams={"AUX_LOSS": "rotate"})
    with pytest.raises(ValueError, match="OPTIMIZER='rmsprop': one of adam"):
        parse_adapt_hparams("vptta", ["OPTIMIZER=rmsprop"])
    with pytest.raises(ValueError, match="STEPS=-1: must not be negative"):
        parse_adapt_hparams("tent", ["STEPS=-1"])


# --- the per-case protocol ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(METHODS))
def test_episodic_leaves_the_network_bit_identical_and_cases_independent(name):
    net = tiny_network()
    trained = state(net)
    adapter = make(name, net)
    a, b, c = (smooth_images(3, PATCH["2d"], seed=s) for s in (1, 2, 3))
    outputs = []
    for tiles, seed in ((a, 1), (b, 2), (c, 3)):
        assert_same_state(state(net), trained)  # before every case
        outputs.append(run_case(adapter, tiles, seed=seed))
    assert_same_state(state(net), trained)
    alone = run_case(make(name, tiny_network()), c, seed=3)
    assert torch.equal(outputs[2], alone)
    # and adaptation did change the prediction (the test above can fail)
    with torch.no_grad():
        plain = torch.cat([net(t) for t in c])
    assert not torch.equal(alone, plain)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_continual_carries_state_between_cases(name):
    adapter = make(name, tiny_network())
    a, c = smooth_images(3, PATCH["2d"], seed=1), smooth_images(3, PATCH["2d"], seed=3)
    run_case(adapter, a, seed=1, continual=True)
    after_a = run_case(adapter, c, seed=3, continual=True)
    alone = run_case(make(name, tiny_network()), c, seed=3, continual=True)
    assert not torch.equal(after_a, alone)
    assert_same_state(state(adapter.network), state(tiny_network()))  # the network itself is restored


@pytest.mark.parametrize("name,zero", [("tent", "STEPS"), ("grata", "STEPS"), ("vptta", "ITERS")])
@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_zero_steps_reproduce_plain_prediction_exactly(name, zero, dim):
    net = tiny_network(dim)
    tiles = smooth_images(2, PATCH[dim], seed=5)
    with torch.no_grad():
        plain = torch.cat([net(t) for t in tiles])
    out = run_case(make(name, net, dim, **{zero: 0}), tiles, seed=5)
    assert torch.equal(out, plain)


@pytest.mark.parametrize("name,zero", [("tent", "STEPS"), ("grata", "STEPS"), ("vptta", "ITERS")])
def test_relative_change_says_how_far_adaptation_moved(name, zero):
    tiles = smooth_images(3, PATCH["2d"], seed=4)
    still = make(name, tiny_network(), **{zero: 0})
    run_case(still, tiles, seed=4)
    assert still.last_change == 0.0  # nothing adapted: no change
    adapter = make(name, tiny_network())
    adapter.begin_case(continual=False)
    adapter.adapt(tiles, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = _expected_change(adapter, name)
    adapter.end_case(continual=False)
    assert expected > 0 and adapter.last_change == pytest.approx(float(expected), rel=1e-5)
    if name != "vptta":  # continual: the change accumulates from the trained state over the cases
        first = make(name, tiny_network())
        run_case(first, tiles, seed=4, continual=True)
        one = first.last_change
        run_case(first, smooth_images(3, PATCH["2d"], seed=6), seed=6, continual=True)
        assert first.last_change > one


def _expected_change(adapter, name: str) -> torch.Tensor:
    if name == "vptta":  # root mean square of prompt - 1 over the tiles' prompts
        expected = torch.stack([(p - 1).pow(2).mean() for p in adapter.tile_prompts]).mean().sqrt()
    else:  # ||θ - θ_trained|| / ||θ_trained|| over the norm affine parameters, read before they are restored
        expected = (sum((p - adapter._trained[k]).pow(2).sum() for k, p in adapter.params.items())
                    / sum(t.pow(2).sum() for t in adapter._trained.values())).sqrt()
    return expected


@pytest.mark.parametrize("name", ["tent", "grata"])
def test_norm_affine_methods_change_only_norm_affine_parameters(name):
    net = tiny_network("3d")
    trained = state(net)
    adapter = make(name, net, "3d")
    affine = set(adapter.params)
    assert affine and all(k.rsplit(".", 1)[-1] in ("weight", "bias") and ".norm." in k for k in affine)
    adapter.begin_case(continual=False)
    adapter.adapt(smooth_images(2, PATCH["3d"], seed=7), generator=torch.Generator().manual_seed(7))
    ours = {id(p) for p in adapter.params.values()}
    changed = {k for k, v in net.state_dict(keep_vars=True).items() if not torch.equal(v, trained[k])}
    assert changed and all(id(v) in ours for k, v in net.state_dict(keep_vars=True).items() if k in changed)
    assert all(p.requires_grad for p in net.parameters())  # flags restored
    adapter.end_case(continual=False)
    assert_same_state(state(net), trained)


def test_batchnorm_uses_batch_statistics_while_adapting_and_keeps_its_buffers():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.BatchNorm2d(2), torch.nn.Conv2d(2, 3, 1))
    net[1].running_mean.fill_(5.0)
    net.eval()
    before = state(net)
    x = torch.randn(1, 1, 8, 8)
    with batch_statistics(net):
        y = net[1](net[0](x))
    assert y.mean().abs() < 1e-5  # normalised with the batch's own mean, not the running 5.0
    assert_same_state(state(net), before)
    run_case(Tent(net), [x], seed=0)
    assert_same_state(state(net), before)


# --- source statistics --------------------------------------------------------------------------------------------
def test_source_statistics_are_the_pooled_channel_statistics_of_the_norm_inputs():
    net = torch.nn.Sequential(torch.nn.InstanceNorm2d(2, affine=True))
    p1 = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), -1.0)])
    p2 = torch.stack([torch.full((4, 4), 3.0), torch.tensor([[1.0, -1.0] * 2] * 4)])
    stats = record_source_statistics(net, [p1, p2], batch_size=1)
    layer = stats["layers"]["0"]
    assert stats["patches"] == 2
    assert layer["mean"] == pytest.approx([2.0, -0.5])
    assert layer["var"] == pytest.approx([1.0, 0.75])
    assert layer["instance_var"] == pytest.approx([0.0, 0.5])
    assert record_source_statistics(net, [p1, p2], batch_size=2)["layers"] == stats["layers"]


def test_random_patches_cut_2d_slices_and_pad_small_cases():
    import numpy as np

    case = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)
    g = np.random.default_rng(0)
    two_d = list(random_patches([case], (4, 8), per_case=3, generator=g))
    assert len(two_d) == 3 and all(p.shape == (2, 4, 8) for p in two_d)
    assert all(float(p[:, :, 6:].abs().sum()) == 0 for p in two_d)  # zero-padded beyond the case
    three_d = next(random_patches([case], (2, 2, 2), per_case=1, generator=g))
    assert three_d.shape == (2, 2, 2, 2)


def test_tent_lowers_the_prediction_entropy_of_the_case():
    """The docstring's figure: 8 shifted tiles, mean entropy 0.894 before, 0.886 after one step per tile."""
    from nnzoo.trainers.adapt.tent import entropy_loss

    net = tiny_network()
    tiles = [2.5 * t + 1.0 for t in smooth_images(8, PATCH["2d"], seed=12)]

    def mean_entropy() -> float:
        with torch.no_grad():
            return sum(float(entropy_loss(net(t))) for t in tiles) / len(tiles)

    before = mean_entropy()
    adapter = make("tent", net)
    adapter.begin_case(continual=False)
    adapter.adapt(tiles, generator=torch.Generator().manual_seed(0))
    after = mean_entropy()
    adapter.end_case(continual=False)
    assert after < before - 0.005
    assert mean_entropy() == before
