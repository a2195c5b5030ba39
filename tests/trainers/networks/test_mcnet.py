"""MC-Net+ network (trainers/networks/mcnet.py): the official dropout placement, on in training only."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_plans

from nnzoo.trainers.mcnet import nnUNetTrainerMCNet
from nnzoo.trainers.networks.common import network_from_arch
from nnzoo.trainers.networks.mcnet import MCNet

PATCH = {"3d_fullres": (16, 16, 16), "2d": (16, 16)}


def _net(configuration: str, **network_kwargs) -> MCNet:
    arch = tiny_plans(configuration)["configurations"][configuration]["architecture"]
    ndim = 3 if configuration == "3d_fullres" else 2
    kwargs = {**nnUNetTrainerMCNet.extra_network_kwargs(ndim), **network_kwargs}
    return network_from_arch(MCNet, arch["network_class_name"], arch_kwargs=arch["arch_kwargs"],
                             kw_requires_import=arch["_kw_requires_import"], input_channels=1, num_classes=3,
                             deep_supervision=False, **kwargs)


def test_3d_dropout_sits_at_the_shared_bottleneck_and_before_each_head():
    torch.manual_seed(0)
    net = _net("3d_fullres")
    assert isinstance(net.bottleneck_dropout, torch.nn.Dropout3d) and net.bottleneck_dropout.p == 0.5
    for d in net.decoder.decoders:
        assert isinstance(d.output_dropout, torch.nn.Dropout3d) and d.output_dropout.p == 0.5
    assert not any(isinstance(m, torch.nn.Dropout) for m in net.encoder.modules())  # V-Net encoder: none

    # the bottleneck is dropped once for all decoders: every decoder receives the same dropped features
    seen = []
    for d in net.decoder.decoders:
        d.register_forward_pre_hook(lambda m, args: seen.append(args[0][-1].detach().clone()))
    net.train()
    net(torch.randn(2, 1, *PATCH["3d_fullres"]), all_decoders=True)
    assert len(seen) == 3
    torch.testing.assert_close(seen[0], seen[1])
    torch.testing.assert_close(seen[0], seen[2])
    zero_channels = seen[0].flatten(2).abs().sum(-1) == 0
    assert zero_channels.any() and not zero_channels.all()  # whole channels dropped (Dropout3d)


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_dropout_is_active_in_training_and_off_in_eval(configuration):
    torch.manual_seed(0)
    net = _net(configuration)
    x = torch.randn(2, 1, *PATCH[configuration])
    net.train()
    with torch.no_grad():
        a = net(x, all_decoders=True)
        b = net(x, all_decoders=True)
    assert not torch.allclose(a[0], b[0])  # two training passes differ (dropout masks)
    net.eval()
    with torch.no_grad():
        c = net(x, all_decoders=True)
        d = net(x, all_decoders=True)
    for u, v in zip(c, d):
        torch.testing.assert_close(u, v)
    # without dropout, the training passes agree up to batch-statistics-free norms (instance norm)
    plain = _net(configuration, bottleneck_dropout=0.0, decoder_dropout=0.0) if configuration == "3d_fullres" \
        else _net(configuration, encoder_dropout=(0.0,))
    plain.train()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), plain(x))


def test_2d_encoder_dropout_has_one_probability_per_stage():
    net = _net("2d")
    expected = list(nnUNetTrainerMCNet.ENCODER_DROPOUT_2D)
    per_stage = []
    for stage in net.encoder.stages:
        ps = {m.p for m in stage.modules() if isinstance(m, torch.nn.Dropout)}
        assert len(ps) == 1
        per_stage.append(ps.pop())
    n = len(per_stage)
    assert per_stage == (expected + [expected[-1]] * n)[:n]  # deeper stages than entries: the last value
    assert not isinstance(net.bottleneck_dropout, torch.nn.Dropout)  # 2D: no bottleneck/head dropout
    assert all(isinstance(d.output_dropout, torch.nn.Identity) for d in net.decoder.decoders)


def test_dropout_keeps_the_state_dict_of_the_plan_network():
    with_dropout = _net("2d")
    assert any(isinstance(m, torch.nn.Dropout) for m in with_dropout.encoder.modules())
    arch = tiny_plans("2d")["configurations"]["2d"]["architecture"]
    without = network_from_arch(MCNet, arch["network_class_name"], arch_kwargs=arch["arch_kwargs"],
                                kw_requires_import=arch["_kw_requires_import"], input_channels=1, num_classes=3,
                                deep_supervision=False)
    assert list(with_dropout.state_dict()) == list(without.state_dict())
    without.load_state_dict(with_dropout.state_dict())  # checkpoints and pretrained weights interchange
    # the encoder's keys are those of nnU-Net's own network of the plan
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plain = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                   1, 3, deep_supervision=False)
    enc = [k for k in with_dropout.state_dict() if k.startswith("encoder.")]
    assert enc == [k for k in plain.state_dict() if k.startswith("encoder.")]


def test_encoder_dropout_follows_deepcopy_and_eval():
    import copy

    torch.manual_seed(0)
    net = _net("2d")
    twin = copy.deepcopy(net)  # EMA teachers and nnU-Net's checkpoints copy networks
    x = torch.randn(2, 1, *PATCH["2d"])
    twin.eval()
    net.train()
    with torch.no_grad():
        torch.testing.assert_close(twin(x), twin(x))
        assert not torch.allclose(net(x), net(x))
    drops = [m for m in twin.encoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and not any(m.training for m in drops)


def test_encoder_dropout_needs_probabilities():
    arch = tiny_plans("2d")["configurations"]["2d"]["architecture"]
    with pytest.raises(ValueError, match="at least one probability"):
        network_from_arch(MCNet, arch["network_class_name"], arch_kwargs=arch["arch_kwargs"],
                          kw_requires_import=arch["_kw_requires_import"], input_channels=1, num_classes=3,
                          encoder_dropout=())
