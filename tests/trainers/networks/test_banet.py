"""BA-Net network (trainers/networks/banet.py): boundary attention, gating, residual encoders."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_plans

from nnzoo.trainers.networks.banet import BoundaryAttention, BoundaryAwareUNet
from nnzoo.trainers.networks.common import network_from_arch


def _arch(configuration="3d_fullres"):
    return tiny_plans(configuration)["configurations"][configuration]["architecture"]


def _net(configuration="3d_fullres", ds=True, num_classes=3) -> BoundaryAwareUNet:
    a = _arch(configuration)
    return network_from_arch(BoundaryAwareUNet, a["network_class_name"], arch_kwargs=a["arch_kwargs"],
                             kw_requires_import=a["_kw_requires_import"], input_channels=1, num_classes=num_classes,
                             deep_supervision=ds)


def test_attention_gating_formula_applied_and_not_detached():
    torch.manual_seed(0)
    net = _net("2d")
    captured = []

    def hook(module, inputs, output):
        captured.append((inputs[0].detach(), inputs[1].detach(), output.detach()))

    seen_b, seen_up, seen_stage_in = [], [], []
    net.decoder.attention.register_forward_hook(hook)
    for s in range(2):
        net.decoder.boundary_layers[s].register_forward_hook(lambda m, i, o: seen_b.append(o.detach()))
        net.decoder.seg_transpconvs[s].register_forward_hook(lambda m, i, o: seen_up.append(o.detach()))
        net.decoder.seg_stages[s].register_forward_hook(lambda m, i, o: seen_stage_in.append(i[0].detach()))
    x = torch.randn(2, 1, 16, 16)
    net(x)
    assert len(captured) == 2
    for s, (x_in, b_in, out) in enumerate(captured):
        assert torch.equal(x_in, seen_up[s]) and torch.equal(b_in, seen_b[s])
        gated = (1 + torch.softmax(seen_b[s], 1)[:, 1:2]) * seen_up[s]
        torch.testing.assert_close(out, gated)
        c = gated.shape[1]
        torch.testing.assert_close(seen_stage_in[s][:, :c], gated)  # gated features enter the seg stage
    assert not torch.allclose(captured[-1][2], captured[-1][0])
    # segmentation loss alone reaches the boundary heads (attention not detached)
    net.zero_grad()
    net.decoder.deep_supervision = False
    net(x).sum().backward()
    assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
               for layer in net.decoder.boundary_layers)


def test_boundary_attention_module():
    x = torch.randn(1, 4, 3, 3)
    b = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(BoundaryAttention()(x, b), x * (1 + torch.sigmoid(b[:, 1:2] - b[:, 0:1])))


def test_residual_encoder_plan():
    kw = dict(_arch()["arch_kwargs"])
    kw.pop("n_conv_per_stage")
    kw.update(n_blocks_per_stage=[1, 2, 2], n_conv_per_stage_decoder=[1, 1])
    net = network_from_arch(BoundaryAwareUNet, "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                            arch_kwargs=kw, kw_requires_import=_arch()["_kw_requires_import"], input_channels=2,
                            num_classes=4, deep_supervision=True)
    assert type(net.encoder).__name__ == "ResidualEncoder"
    seg, bdr = net(torch.randn(1, 2, 16, 16, 16), return_boundary=True)
    assert [tuple(t.shape) for t in seg] == [(1, 4, 16, 16, 16), (1, 4, 8, 8, 8)]
    assert [tuple(t.shape) for t in bdr] == [(1, 2, 16, 16, 16), (1, 2, 8, 8, 8)]
    with pytest.raises(ValueError, match="PlainConvUNet and ResidualEncoderUNet"):
        network_from_arch(BoundaryAwareUNet, "some.Other", arch_kwargs=kw, kw_requires_import=(), input_channels=1,
                          num_classes=2)
