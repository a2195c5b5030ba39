"""The fast predictor (pipeline/inference.py): nnU-Net's mirroring maths, reduced precision that really acts,
``--exact`` as nnU-Net's own predictor, and the same segmentations as ``--exact`` on a trained model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import dataset_dir, tiny_plans
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnzoo.pipeline.cli import main
from nnzoo.pipeline.inference import (
    NnzooPredictor,
    fast_dtype,
    make_predictor,
    mirror_combinations,
    mirrored_forward,
)


def _net(configuration: str) -> torch.nn.Module:
    arch = tiny_plans(configuration)["configurations"][configuration]["architecture"]
    torch.manual_seed(0)
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3,
                                  deep_supervision=False).eval()


def test_mirror_combinations_are_nnunets_eight_in_3d():
    assert mirror_combinations(None) == [()]
    assert mirror_combinations((0, 1)) == [(), (2,), (3,), (2, 3)]
    assert len(mirror_combinations((0, 1, 2))) == 8 and mirror_combinations((0, 1, 2))[-1] == (2, 3, 4)


@pytest.mark.parametrize("configuration,patch,axes", [("2d", (16, 24), (0, 1)), ("3d_fullres", (8, 16, 16), (0, 1, 2))])
@pytest.mark.parametrize("batch", [False, True])
def test_float32_mirrored_forward_is_nnunets_mirroring(configuration, patch, axes, batch):
    """In float32 the mean over mirrors equals nnU-Net's ``_internal_maybe_mirror_and_predict`` (sequential or batched)."""
    net = _net(configuration)
    x = torch.randn(1, 1, *patch)
    ref = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=True)
    ref.network, ref.allowed_mirroring_axes = net, axes
    expected = ref._internal_maybe_mirror_and_predict(x)
    with torch.inference_mode():
        ours = mirrored_forward(net, x, mirror_axes=axes, dtype=None, batch=batch)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mirror axes"):
        mirrored_forward(net, x, mirror_axes=(len(patch),), dtype=None, batch=batch)


def test_reduced_precision_acts_in_the_convolutions_and_sums_stay_float32():
    net = _net("2d")
    seen = []
    net.encoder.stages[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(1, 1, 16, 24)
    with torch.inference_mode():
        out = mirrored_forward(net, x, mirror_axes=(0, 1), dtype=torch.bfloat16, batch=False)
        ref = mirrored_forward(net, x, mirror_axes=(0, 1), dtype=None, batch=False)
    assert seen[:4] == [torch.bfloat16] * 4 and seen[4:] == [torch.float32] * 4
    assert out.dtype == torch.float32 and not torch.equal(out, ref)  # it did run in another precision
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.95


def test_fast_dtype_per_device(monkeypatch):
    assert fast_dtype(torch.device("cuda")) == torch.float16
    assert fast_dtype(torch.device("mps")) is None
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert fast_dtype(torch.device("cpu")) is None  # emulated bfloat16 would be slower: float32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert fast_dtype(torch.device("cpu")) == torch.bfloat16


def test_exact_is_nnunets_predictor_and_fast_is_nnzoos():
    cpu = torch.device("cpu")
    exact = make_predictor(exact=True, device=cpu, step_size=0.5, use_mirroring=True)
    assert type(exact) is nnUNetPredictor
    fast = make_predictor(exact=False, device=cpu, step_size=0.25, use_mirroring=False)
    assert isinstance(fast, NnzooPredictor) and fast.dtype == fast_dtype(cpu) and not fast.batch_mirrors
    assert (fast.tile_step_size, fast.use_mirroring) == (0.25, False)


def _dice(a: np.ndarray, b: np.ndarray, c: int) -> float:
    s = (a == c).sum() + (b == c).sum()
    return 1.0 if s == 0 else 2.0 * ((a == c) & (b == c)).sum() / s


@pytest.mark.slow
@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_fast_prediction_agrees_with_exact_on_a_trained_model(in_prepared, tmp_path):
    """Issue 25's tolerance on a model trained until it segments (60 iterations): argmax agreement ≥ 99.9 %
    of the voxels and per-class Dice between the two ≥ 0.995, with mirroring."""
    did = str(in_prepared["id"])
    assert main(["train", did, "2d", "4", "-device", "cpu", "--epochs", "3", "--iters", "20", "--no-val",
                 "--overwrite", "--seed", "0"]) == 0
    inp = tmp_path / "in"
    inp.mkdir()
    for f in sorted(in_prepared["src"]["images"].iterdir()):
        shutil.copy(f, inp / f.name)
    outs = {}
    for name, flags in (("fast", []), ("exact", ["--exact"])):
        outs[name] = tmp_path / name
        assert main(["predict", "-i", str(inp), "-o", str(outs[name]), "-d", did, "-c", "2d", "-f", "4",
                     "-device", "cpu", *flags]) == 0
    labels = json.loads((dataset_dir("nnUNet_raw", in_prepared["id"]) / "dataset.json").read_text())["labels"]
    fast = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in sorted(outs["fast"].glob("*.png"))])
    exact = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in sorted(outs["exact"].glob("*.png"))])
    assert fast.shape == exact.shape and len(fast) == 6
    assert (exact > 0).mean() > 0.05  # the model segments something: the agreement is not that of empty maps
    assert (fast == exact).mean() >= 0.999
    for c in (v for v in labels.values() if v != 0):
        assert _dice(fast, exact, c) >= 0.995, c


def test_cases_run_in_process_on_the_cpu_unless_exact():
    from nnzoo.pipeline.predict import PredictOptions, in_process

    o = PredictOptions(input_dir="i", output_dir="o")
    assert in_process(o, torch.device("cpu"))
    assert not in_process(PredictOptions(input_dir="i", output_dir="o", exact=True), torch.device("cpu"))
    assert not in_process(o, torch.device("cuda"))
