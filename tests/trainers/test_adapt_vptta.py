"""VPTTA's parts on hand-made tensors, and that its prompts move the features' statistics towards the source's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers of test_adapt_methods (--import-mode=importlib)
from test_adapt_methods import make, one_thread, smooth_images, tiny_network  # noqa: E402, F401 - fixture

from nnzoo.trainers.adapt import VPTTA, record_source_statistics  # noqa: E402
from nnzoo.trainers.adapt.vptta import (  # noqa: E402
    PromptMemory,
    alignment_loss,
    apply_prompt,
    prompt_shape,
    source_gap,
    warmup_moment,
)


def test_prompt_has_the_official_parameter_count_and_the_memory_bank_the_official_size():
    # official: 512x512 RGB fundus images, prompt_alpha 0.01 -> a 1x3x5x5 prompt (75 parameters)
    assert prompt_shape((512, 512), 0.01) == (5, 5)
    net = tiny_network()
    stats = record_source_statistics(net, [t[0] for t in smooth_images(2, (32, 32), seed=0)])
    v = VPTTA(net, source_stats=stats, patch_size=(512, 512), num_input_channels=3)
    assert v.num_prompt_parameters == 75
    assert (v.MEMORY_SIZE, v.NEIGHBOURS, v.PROMPT_ALPHA, v.WARM_N, v.LR, v.ITERS) == (40, 16, 0.01, 5, 0.05, 1)
    assert prompt_shape((128, 128, 128), 0.01) == (1, 1, 1) and prompt_shape((40, 224, 192), 0.01) == (1, 2, 1)
    memory = PromptMemory(v.MEMORY_SIZE)
    for i in range(50):
        memory.push(torch.full((4,), float(i + 1)), torch.full((1, 3, 5, 5), float(i)))
    assert len(memory) == 40
    assert float(memory.prompts[0].mean()) == 10.0  # the oldest went first


def test_memory_bank_returns_the_attention_weighted_mean_of_the_nearest_prompts():
    memory = PromptMemory(10)
    memory.push(torch.tensor([1.0, 0.0]), torch.full((1, 1, 1), 2.0))
    memory.push(torch.tensor([0.0, 1.0]), torch.full((1, 1, 1), 4.0))
    memory.push(torch.tensor([-1.0, 0.0]), torch.full((1, 1, 1), 100.0))
    # nearest two of [1, 1]: cosine 0.7071 each -> equal weights
    assert float(memory.neighbours(torch.tensor([1.0, 1.0]), 2)) == pytest.approx(3.0)
    # of [1, 0]: cosines 1 and 0 -> softmax([5, 0]) weights
    w = torch.softmax(torch.tensor([1.0, 0.0]) / 0.2, 0)
    assert float(memory.neighbours(torch.tensor([1.0, 0.0]), 2)) == pytest.approx(float(2 * w[0] + 4 * w[1]))


@pytest.mark.parametrize("shape", [(8, 6), (4, 6, 5)])
def test_prompt_scales_the_low_frequency_amplitude_and_keeps_the_phase(shape):
    x = torch.full((1, 2, *shape), 3.0)
    x[:, 1] = -1.5
    prompt = torch.ones((1, 2, *[1] * len(shape)))
    same, key = apply_prompt(x, prompt)
    assert torch.allclose(same, x, atol=1e-5)
    n = torch.tensor(shape).prod()
    assert torch.allclose(key.flatten(), torch.tensor([3.0, 1.5]) * n)  # |DC| = |sum|
    prompt[0, 0], prompt[0, 1] = 2.0, 0.5
    scaled, _ = apply_prompt(x, prompt)  # a constant image has only the DC component
    assert torch.allclose(scaled[:, 0], torch.full(shape, 6.0), atol=1e-5)
    assert torch.allclose(scaled[:, 1], torch.full(shape, -0.75), atol=1e-5)
    # a zero-mean image is untouched by a DC-only prompt
    y = torch.randn(1, 2, *shape)
    y -= y.mean(dim=tuple(range(2, y.ndim)), keepdim=True)
    assert torch.allclose(apply_prompt(y, prompt)[0], y, atol=1e-5)


def test_alignment_loss_and_warmup_on_hand_made_features():
    x = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]]]])  # mean 2, unbiased std 1.1547
    var = x.var()
    assert float(alignment_loss(x, torch.tensor([2.0]), var.view(1), 0.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(alignment_loss(x, torch.tensor([3.0]), var.view(1), 0.0)) == pytest.approx(1.0)
    # test statistics weigh 1 / (sqrt(n) / 5 + 1): 5/6 for the first sample, 1/2 after 25
    assert warmup_moment(1, 5) == pytest.approx(5 / 6) and warmup_moment(25, 5) == pytest.approx(0.5)
    assert float(alignment_loss(x, torch.tensor([3.0]), var.view(1), 0.5)) == pytest.approx(0.5)


def test_missing_or_foreign_source_statistics_are_clear_errors():
    net = tiny_network()
    with pytest.raises(ValueError, match="needs the source statistics"):
        VPTTA(net, source_stats=None, patch_size=(32, 32), num_input_channels=1)
    with pytest.raises(ValueError, match="no entry for normalisation layer"):
        VPTTA(net, source_stats={"format": 1, "layers": {}}, patch_size=(32, 32), num_input_channels=1)


def test_prompts_move_the_feature_statistics_towards_the_source():
    """The docstring's measurement: source statistics of smooth images, target images with their low
    frequencies amplified (a contrast/bias-field shift); 10 prompt steps per tile with a 4x4 prompt."""
    net = tiny_network()
    source = [t[0] for t in smooth_images(8, (32, 32), seed=11)]
    stats = record_source_statistics(net, source)
    target = [2.5 * t + 1.0 for t in smooth_images(4, (32, 32), seed=12)]
    before = sum(source_gap(net, t, stats) for t in target) / len(target)
    v = make("vptta", net, stats=stats, ITERS=10, PROMPT_ALPHA=0.125)
    v.begin_case(continual=False)
    v.adapt(target, generator=torch.Generator().manual_seed(0))
    with v.predicting():
        after = sum(source_gap(net, v.transform(t), stats) for t in target) / len(target)
    v.end_case(continual=False)
    print(f"source gap before {before:.3f}, after {after:.3f}")
    assert after < 0.9 * before
