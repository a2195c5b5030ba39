"""Shared network pieces (trainers/networks/common.py): plan encoders, selectable upsampling, nnU-Net-shaped decoder."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_plans
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnzoo.trainers.networks.common import EncoderDecoderNet, UNetStyleDecoder, Upsampling, network_from_arch


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_interpolating_upsampling_matches_conv_after_interpolation(mode):
    torch.manual_seed(0)
    up = Upsampling(mode, torch.nn.Conv3d, in_channels=4, out_channels=2, stride=(1, 2, 2), bias=True)
    x = torch.randn(1, 4, 3, 4, 5)
    y = up(x, (3, 8, 10))
    assert y.shape == (1, 2, 3, 8, 10)
    kw = {"align_corners": True} if mode == "linear" else {}
    ref = up.conv(torch.nn.functional.interpolate(x, size=(3, 8, 10), mode="trilinear" if mode == "linear"
                                                  else "nearest", **kw))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="upsampling mode"):
        Upsampling("bicubic", torch.nn.Conv3d, in_channels=4, out_channels=2, stride=2)


class _PlainUNet(EncoderDecoderNet):
    """The plan's encoder + one transposed-conv UNetStyleDecoder: nnU-Net's PlainConvUNet rebuilt."""

    def __init__(self, encoder, num_classes, *, n_conv_per_stage_decoder, deep_supervision=False, nonlin_first=False):
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetStyleDecoder(encoder, num_classes, n_conv_per_stage=n_conv_per_stage_decoder,
                                        deep_supervision=deep_supervision, nonlin_first=nonlin_first)

    def forward(self, x):
        return self.decoder(self.encoder(x))


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_transpconv_decoder_is_nnunets_unet(configuration):
    """With nnU-Net's weights, the plan encoder + UNetStyleDecoder computes nnU-Net's PlainConvUNet exactly."""
    arch = tiny_plans(configuration)["configurations"][configuration]["architecture"]
    args = (arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3)
    torch.manual_seed(0)
    ref = get_network_from_plans(*args, deep_supervision=True)
    ours = network_from_arch(_PlainUNet, args[0], arch_kwargs=args[1], kw_requires_import=args[2], input_channels=1,
                             num_classes=3, deep_supervision=True)
    renamed = {}
    for k, v in ref.state_dict().items():
        if k.startswith("decoder.encoder."):  # nnU-Net's decoder also registers the encoder
            continue
        if k.startswith("decoder.transpconvs."):
            i, rest = k[len("decoder.transpconvs."):].split(".", 1)
            k = f"decoder.upsamplings.{i}.conv.{rest}"
        renamed[k] = v
    assert set(renamed) == set(ours.state_dict())
    ours.load_state_dict(renamed)
    x = torch.randn(2, 1, *tiny_plans(configuration)["configurations"][configuration]["patch_size"])
    ref.eval()
    ours.eval()
    with torch.no_grad():
        for a, b in zip(ref(x), ours(x)):
            torch.testing.assert_close(a, b)
    assert ours.compute_conv_feature_map_size(x.shape[2:]) > 0
