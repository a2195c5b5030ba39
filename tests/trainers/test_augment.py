"""Tests of the composable input augmentation (``--augment gin``): GIN maths and the trainer wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_trainer, tiny_dataset_json, tiny_plans
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnzoo.trainers.augment import AUGMENTATIONS, augmented_trainer_class, gin_augment, image_channel_count
from nnzoo.trainers.base import NnzooTrainer, method_hyperparameters, nnzoo_trainer_class
from nnzoo.trainers.semisup import SemiSupervisedTrainer

PATCH = {"2d": (32, 32), "3d_fullres": (16, 16, 16)}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(shape, seed=0) -> torch.Tensor:
    """Smooth-ish image with structure: a bright square/cube on noise."""
    x = torch.randn(shape, generator=_gen(seed)) * 0.3
    sl = tuple(slice(s // 4, 3 * s // 4) for s in shape[2:])
    x[(slice(None), slice(None), *sl)] += 2.0
    return x


# ----------------------------------------------------------------------------- GIN maths
@pytest.mark.parametrize("shape", [(2, 1, 24, 20), (2, 2, 8, 12, 10)])
def test_gin_shape_dtype_device_and_draws_differ(shape):
    x = _image(shape)
    a, b = gin_augment(x), gin_augment(x)
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert torch.isfinite(a).all()
    assert not torch.allclose(a, b)  # a new network every call
    assert not torch.allclose(a, x)
    half = gin_augment(x.double())
    assert half.dtype == torch.float64


def test_gin_fixed_generator_reproduces():
    x = _image((2, 1, 16, 16))
    torch.testing.assert_close(gin_augment(x, generator=_gen(3)), gin_augment(x, generator=_gen(3)))
    assert not torch.allclose(gin_augment(x, generator=_gen(3)), gin_augment(x, generator=_gen(4)))


@pytest.mark.parametrize("ndim", [2, 3])
def test_gin_keeps_every_samples_frobenius_norm(ndim):
    """Official ``out_norm='frob'``: every sample's norm over channels and voxels is its input's."""
    x = _image((3, 2, *([10] * ndim)))
    x[1] *= 7.0  # samples of very different norms
    for seed in range(5):
        y = gin_augment(x, generator=_gen(seed))
        torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-4, atol=1e-4)
    # without the normalisation the random network's scale shows (N(0,1) kernels grow the norm)
    ratios = [float(gin_augment(x, frobenius_norm=False, generator=_gen(s)).flatten(1).norm(dim=1)[0]
                    / x[0].norm()) for s in range(5)]
    assert max(abs(r - 1) for r in ratios) > 0.1


def test_gin_1x1_kernels_act_voxelwise_3x3_do_not():
    """Kernel size 1: a point-wise random non-linear intensity map, so it commutes with shuffling the
    voxels; kernel size 3 mixes neighbours, so it does not."""
    x = _image((1, 1, 12, 12))
    perm = torch.randperm(144, generator=_gen(1))

    def shuffle(t):
        return t.flatten(2)[..., perm].reshape(t.shape)

    y1 = gin_augment(x, kernel_sizes=(1,), generator=_gen(5))
    torch.testing.assert_close(gin_augment(shuffle(x), kernel_sizes=(1,), generator=_gen(5)), shuffle(y1))
    y3 = gin_augment(x, kernel_sizes=(3,), generator=_gen(5))
    assert not torch.allclose(gin_augment(shuffle(x), kernel_sizes=(3,), generator=_gen(5)), shuffle(y3), atol=1e-3)
    # a constant image stays constant under point-wise maps
    c = gin_augment(torch.full((1, 1, 6, 6), 2.0), kernel_sizes=(1,), generator=_gen(2))
    assert float(c.std()) < 1e-5


def test_gin_draws_a_network_per_sample():
    x = _image((1, 1, 16, 16)).repeat(4, 1, 1, 1)
    y = gin_augment(x, generator=_gen(0))
    assert all(not torch.allclose(y[0], y[i]) for i in range(1, 4))


def test_gin_intensity_histogram_changes_geometry_stays():
    """The views' intensities are remapped (histograms differ) while the structure stays in place."""
    x = _image((1, 1, 32, 32))
    inside = torch.zeros_like(x, dtype=torch.bool)
    inside[..., 8:24, 8:24] = True
    bins = torch.linspace(-6, 6, 25)
    h_in = torch.histogram(x.flatten(), bins).hist
    tv, contrasts = [], []
    for seed in range(20):
        y = gin_augment(x, generator=_gen(seed))
        h = torch.histogram(y.flatten().clamp(-6, 6), bins).hist
        tv.append(float((h - h_in).abs().sum() / (2 * h_in.sum())))
        contrasts.append(abs(float(y[inside].mean() - y[~inside].mean())) / float(y.std()))
    assert np.median(tv) > 0.2  # total variation distance of the histograms
    assert np.median(contrasts) > 0.3  # the square still stands out from the background


def test_gin_can_reorder_or_invert_intensity_levels():
    """Non-monotone random maps: on a three-level image some draws change the order of the levels
    (a T1 -> T2-like contrast flip), which no monotone intensity augmentation does."""
    x = torch.zeros(1, 1, 24, 48)
    x[..., 16:32] = 1.0
    x[..., 32:] = 2.0
    x += 0.01 * torch.randn(x.shape, generator=_gen(0))
    changed = 0
    for seed in range(60):
        y = gin_augment(x, generator=_gen(seed))
        means = [float(y[..., a + 6:a + 10].mean()) for a in (0, 16, 32)]  # band centres
        changed += not (means[0] < means[1] < means[2])
    assert 5 <= changed <= 55  # measured: 23 % of draws (official kernels (1, 3))


def test_gin_rejects_bad_input():
    with pytest.raises(ValueError, match="X, Y"):
        gin_augment(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="odd"):
        gin_augment(torch.zeros(1, 1, 4, 4), kernel_sizes=(2,))
    with pytest.raises(ValueError, match="layers"):
        gin_augment(torch.zeros(1, 1, 4, 4), n_layers=1)


def test_image_channel_count_leaves_cascade_channels():
    assert image_channel_count(tiny_dataset_json(), 1) == 1
    assert image_channel_count(tiny_dataset_json(), 4) == 1  # 3 one-hot channels of the previous stage
    assert image_channel_count({}, 2) == 2


# ----------------------------------------------------------------------------- trainer wrapper
class _Recorder(NnzooTrainer):
    """Records what reaches the trainer's own train step."""

    def train_step(self, batch: dict) -> dict:
        self.seen = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
        return {"loss": np.array(0.0)}


class _SemiRecorder(SemiSupervisedTrainer):
    def train_step(self, batch: dict) -> dict:
        self.seen = {"data": batch["data"].clone(), "target": batch["target"], "unlabeled": self.next_unlabeled_batch()}
        return {"loss": np.array(0.0)}


def test_unknown_or_none_augmentation():
    assert AUGMENTATIONS == ("gin",)
    assert augmented_trainer_class(nnUNetTrainer, None) is nnUNetTrainer
    with pytest.raises(ValueError, match="accepted: gin"):
        augmented_trainer_class(nnUNetTrainer, "randconv")


def test_class_keeps_name_and_logs_hparams():
    base = nnzoo_trainer_class(nnUNetTrainer)
    cls = augmented_trainer_class(base, "gin")
    assert cls.__name__ == "nnUNetTrainer" and cls.__module__ == base.__module__ and issubclass(cls, base)
    hp = method_hyperparameters(cls)
    assert hp["GIN_N_LAYERS"] == 4 and hp["GIN_INTERM_CHANNELS"] == 2 and hp["GIN_KERNEL_SIZES"] == (1, 3)
    assert "GIN_N_LAYERS" not in method_hyperparameters(base)
    with pytest.raises(ValueError, match="already applies"):
        augmented_trainer_class(cls, "gin")


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_labeled_batch_is_augmented_labels_untouched(tmp_path, configuration):
    cls = augmented_trainer_class(_Recorder, "gin")
    tr = make_trainer(cls, tmp_path, configuration, plans=tiny_plans(configuration, PATCH[configuration]))
    data = _image((2, 1, *PATCH[configuration]))
    target = [torch.randint(0, 3, (2, 1, *PATCH[configuration]))]
    t0 = target[0].clone()
    tr.train_step({"data": data, "target": target, "keys": ["a", "b"]})
    seen = tr.seen
    assert seen["data"].shape == data.shape and not torch.allclose(seen["data"], data)
    torch.testing.assert_close(seen["data"].flatten(1).norm(dim=1), data.flatten(1).norm(dim=1), rtol=1e-4, atol=1e-4)
    assert seen["target"] is target and torch.equal(target[0], t0) and seen["keys"] == ["a", "b"]
    # probability 0: nothing changes
    cls.GIN_PROBABILITY = 0.0
    tr.train_step({"data": data, "target": target})
    torch.testing.assert_close(tr.seen["data"], data)


def test_semi_supervised_unlabeled_images_are_augmented(tmp_path):
    cls = augmented_trainer_class(_SemiRecorder, "gin")
    tr = make_trainer(cls, tmp_path, plans=tiny_plans("3d_fullres", PATCH["3d_fullres"]))
    data, unl = _image((2, 1, 16, 16, 16)), _image((2, 1, 16, 16, 16), seed=1)
    tr.dataloader_unlabeled = iter([{"data": unl}])
    tr.train_step({"data": data, "target": [torch.zeros(2, 1, 16, 16, 16)]})
    assert not torch.allclose(tr.seen["data"], data)
    assert tr.seen["unlabeled"].shape == unl.shape and not torch.allclose(tr.seen["unlabeled"], unl)
    # the plain (non-augmented) semi-supervised trainer passes them through
    plain = make_trainer(_SemiRecorder, tmp_path, plans=tiny_plans("3d_fullres", PATCH["3d_fullres"]))
    plain.dataloader_unlabeled = iter([{"data": unl}])
    plain.train_step({"data": data, "target": None})
    torch.testing.assert_close(plain.seen["unlabeled"], unl)


def test_validation_and_prediction_see_original_images(tmp_path):
    cls = augmented_trainer_class(nnzoo_trainer_class(nnUNetTrainer), "gin")
    tr = make_trainer(cls, tmp_path, plans=tiny_plans("3d_fullres", PATCH["3d_fullres"]), initialize=True)
    inputs = []
    tr.network.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach().clone()))
    data = _image((2, 1, 16, 16, 16))
    target = [torch.randint(0, 3, (2, 1, 16, 16, 16))] + [torch.randint(0, 3, (2, 1, *s)) for s in
                                                         ((8, 8, 8), (4, 4, 4))][: len(tr.loss.weight_factors) - 1]
    out = tr.validation_step({"data": data, "target": target})
    assert np.isfinite(out["loss"])
    torch.testing.assert_close(inputs[-1], data)
    tr.train_step({"data": data, "target": target})  # training does see GIN views
    assert not torch.allclose(inputs[-1], data)
    assert cls.build_network_architecture is nnUNetTrainer.build_network_architecture
