"""Shape-prior networks (trainers/networks/shape_prior.py): the WGAN critic and generator."""

from __future__ import annotations

import pytest
import torch

from nnzoo.trainers.networks.shape_prior import (
    ShapeCritic,
    ShapeGenerator,
    resize_to_critic,
    train_wgan_critic,
)


def _disks(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.rand(n, 2, generator=g) * size * 0.5 + size * 0.25
    r = torch.rand(n, generator=g) * size * 0.15 + size * 0.15
    d = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
    return (d < r[:, None, None] ** 2).float()[:, None]


@pytest.mark.slow
def test_critic_ranks_real_masks_below_noisy_masks():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    size = 32
    pool, real = _disks(256, size, g), _disks(64, size, g)
    noisy = (real + (torch.rand(real.shape, generator=g) < 0.2).float()) % 2  # 20 % of the pixels flipped
    blobs = (torch.rand(real.shape, generator=g) < 0.3).float()
    critic = ShapeCritic(2, 1, size, 16)
    generator = ShapeGenerator(2, 1, size=size, features=16, latent_dim=100, exclusive=True)
    stats = train_wgan_critic(critic, generator, sample_real=lambda n: pool[torch.randint(0, len(pool), (n,))],
                              steps=100, batch_size=16, warmup_g_steps=1, warmup_iters=20)
    assert stats["critic_steps"] == 100 and stats["generator_steps"] > 1
    assert not critic.training and not any(p.requires_grad for p in critic.parameters())
    assert all(p.abs().max() <= 0.01 + 1e-7 for p in critic.parameters())  # weight clipping
    with torch.no_grad():
        s_real, s_noisy, s_blobs = critic(real), critic(noisy), critic(blobs)
    assert s_real.shape == (64,)
    assert s_real.mean() < s_noisy.mean() and s_real.mean() < s_blobs.mean()
    assert (s_real < s_noisy).float().mean() > 0.8  # per mask, not only on average


@pytest.mark.parametrize("dim,exclusive", [(2, True), (3, True), (3, False)])
def test_critic_and_generator_shapes(dim, exclusive):
    c = ShapeCritic(dim, 2, 16, 4)
    g = ShapeGenerator(dim, 2, size=16, features=4, latent_dim=8, exclusive=exclusive)
    fake = g(torch.randn(3, 8))
    assert fake.shape == (3, 2, *([16] * dim))
    assert fake.min() >= 0 and fake.max() <= 1
    if exclusive:
        assert fake.sum(1).max() <= 1 + 1e-5  # foreground probabilities of a softmax
    assert c(fake).shape == (3,)
    with pytest.raises(ValueError, match="multiple of 16"):
        ShapeCritic(dim, 1, 24)
    x = torch.rand(2, 2, *([7] * dim))
    assert resize_to_critic(x, 16).shape == (2, 2, *([16] * dim))
