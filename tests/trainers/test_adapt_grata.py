"""GraTa's parts on hand-made tensors: the cosine learning rate, the alignment step, the weak and strong views."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers of test_adapt_methods (--import-mode=importlib)
from test_adapt_methods import one_thread, smooth_images, tiny_network  # noqa: E402, F401 - fixture

from nnzoo.trainers.adapt import GraTa  # noqa: E402
from nnzoo.trainers.adapt.grata import (  # noqa: E402
    cosine_lr_factor,
    gradient_cosine,
    grata_entropy,
    strong_style,
    weak_views,
)


def test_cosine_learning_rate_factor_and_gradient_cosine():
    assert (cosine_lr_factor(1.0), cosine_lr_factor(0.0), cosine_lr_factor(-1.0)) == (1.0, 0.25, 0.0)
    a = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    b = [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]
    assert float(gradient_cosine(a, b)) == pytest.approx(2 ** -0.5)
    assert float(gradient_cosine(a, [-t for t in a])) == pytest.approx(-1.0)


def test_entropy_of_certain_and_uniform_predictions():
    certain = torch.tensor([[[[50.0]], [[0.0]], [[0.0]]]])
    uniform = torch.zeros(1, 3, 1, 1)
    assert float(grata_entropy(certain)) == pytest.approx(0.0, abs=1e-6)
    assert float(grata_entropy(uniform)) == pytest.approx(float(torch.log(torch.tensor(3.0))))


@pytest.mark.parametrize("shape,n", [((6, 6), 5), ((6, 8), 3), ((4, 6, 6), 5)])
def test_weak_views_invert_exactly(shape, n):
    x = torch.randn(1, 2, *shape)
    views = weak_views(x)
    assert len(views) == n
    for fwd, inv in views:
        y = fwd(x)
        assert y.shape == x.shape and not torch.equal(y, x)
        assert torch.equal(inv(y), x)


def test_strong_style_is_seeded_and_keeps_the_intensity_range():
    x = smooth_images(1, (16, 16), seed=0)[0].repeat(2, 2, 1, 1) * 3 + 1
    a = strong_style(x, torch.Generator().manual_seed(4))
    b = strong_style(x, torch.Generator().manual_seed(4))
    c = strong_style(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for n in range(2):
        assert float(a[n].min()) == pytest.approx(float(x[n].min()), abs=1e-4)
        assert float(a[n].max()) == pytest.approx(float(x[n].max()), abs=1e-4)
    assert not torch.allclose(a, x, atol=1e-2)


def test_grata_steps_along_the_pseudo_gradient_scaled_by_the_cosine():
    """One step with SGD without momentum: the update is -lr * (cos + 1)^2 / 4 * (pseudo gradient at w - g_aux)."""
    net = tiny_network()
    tile = smooth_images(1, (32, 32), seed=3)[0]
    g = GraTa(net, hparams={"OPTIMIZER": "sgd", "MOMENTUM": 0.0, "LR": 0.1})
    params = list(g.params.values())
    w0 = [p.detach().clone() for p in params]
    g.begin_case(continual=False)
    # the expected step, computed by hand with the same random draws
    g.network.zero_grad()
    grata_entropy(g._forward(tile)).backward()
    aux = [p.grad.clone() for p in params]
    with torch.no_grad():
        for p, a in zip(params, aux):
            p.sub_(a)
    g.network.zero_grad()
    g.pseudo_loss(tile, torch.Generator().manual_seed(8)).backward()
    pse = [p.grad.clone() for p in params]
    with torch.no_grad():
        for p, w in zip(params, w0):
            p.copy_(w)
    g.network.zero_grad()
    cos = float(gradient_cosine(aux, pse))
    g.adapt([tile], generator=torch.Generator().manual_seed(8))
    assert g.last_cosine == pytest.approx(cos, abs=1e-5)
    for p, w, d in zip(params, w0, pse):
        assert torch.allclose(p.detach(), w - 0.1 * cosine_lr_factor(cos) * d, atol=1e-6)
    g.end_case(continual=False)
    assert all(torch.equal(p, w) for p, w in zip(params, w0))
