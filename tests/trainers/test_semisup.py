"""Tests of the semi-supervised base: EMA teacher, image-only unlabeled dataset, checkpoints."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import make_trainer, tiny_dataset_json, tiny_plans
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnzoo.trainers.nnunet_compat import unwrap_network
from nnzoo.trainers.semisup import TEACHER_KEY, EMATeacher, SemiSupervisedTrainer
from nnzoo.trainers.unlabeled_data import UnlabeledImageDataset, unlabeled_folder

PATCH = (16, 16, 16)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.Conv3d(4, 2, 1))


# ----------------------------------------------------------------------------- EMA teacher
def test_unwrap_compiled_and_ddp(tmp_path):
    net = _net()
    assert unwrap_network(net) is net
    assert unwrap_network(torch.compile(net)) is net  # compilation is lazy: nothing is compiled here
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(net)
        assert unwrap_network(ddp) is net
        teacher = EMATeacher(ddp)
        assert not isinstance(teacher.module, nn.parallel.DistributedDataParallel)
        assert not any(k.startswith("module.") for k in teacher.state_dict())
    finally:
        dist.destroy_process_group()


def test_ema_teacher_copy_and_update():
    student = _net()
    student(torch.randn(2, 1, 5, 5, 5)).sum().backward()  # student has grads and BN stats
    teacher = EMATeacher(student)
    assert all(not p.requires_grad and p.grad is None for p in teacher.module.parameters())
    assert not teacher.module.training
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.add_(2.0)
        student[1].num_batches_tracked.add_(5)
    s = student.state_dict()
    teacher.update(student, 0.99)
    t1 = teacher.state_dict()
    for k, v in t1.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, 0.99 * t0[k] + 0.01 * s[k])
        else:
            assert torch.equal(v, s[k])
    # the teacher is a copy: changing it leaves the student alone
    assert not torch.equal(t1["0.weight"], s["0.weight"])
    teacher.update(student, 0.0)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, s[k].to(v.dtype))
    teacher.update(student, 1.0)  # decay 1 keeps the teacher
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, s[k].to(v.dtype))


def test_ema_teacher_predict_takes_full_resolution_output():
    class DS(nn.Module):
        def forward(self, x):
            return [x * 2, x[..., ::2]]

    assert torch.equal(EMATeacher(DS()).predict(torch.ones(1, 1, 4)), torch.full((1, 1, 4), 2.0))


# ----------------------------------------------------------------------------- unlabeled dataset
def _save_cases(folder, names, shape=(1, 12, 14, 16), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for n in names:
        data = rng.normal(size=shape).astype(np.float32)
        seg = rng.integers(0, 3, size=(1, *shape[1:])).astype(np.int8)
        nnUNetDatasetBlosc2.save_case(data, seg, {"class_locations": {1: np.zeros((0, 4))}}, str(folder / n),
                                      chunks=shape, blocks=shape)


def test_unlabeled_dataset_reads_images_only(tmp_path):
    labeled, extra = tmp_path / "labeled", tmp_path / "extra"
    _save_cases(labeled, ["a", "b"])
    _save_cases(extra, ["a", "c"], seed=1)
    for folder in (labeled, extra):  # neither labels nor label-derived properties may be read
        for f in folder.iterdir():
            if f.name.endswith("_seg.b2nd") or f.suffix == ".pkl":
                f.unlink()
    ds = UnlabeledImageDataset([(str(labeled), "a"), (str(labeled), "b"), (str(extra), "a"), (str(extra), "c")])
    assert len(ds.identifiers) == 4 and len(set(ds.identifiers)) == 4
    data, seg, seg_prev, props = ds.load_case("c")
    assert data.shape == (1, 12, 14, 16) and seg.shape == (1, 12, 14, 16) and not np.any(seg)
    assert seg_prev is None and props == {"class_locations": {}}
    lm = PlansManager(tiny_plans()).get_label_manager(tiny_dataset_json())
    dl = nnUNetDataLoader(ds, 3, PATCH, PATCH, lm, oversample_foreground_percent=0.0)
    batch = next(dl)
    assert batch["data"].shape == (3, 1, *PATCH)
    assert set(batch["target"].unique().tolist()) <= {-1, 0}  # dummy zeros (-1: padding), no labels
    assert set(batch["keys"]) <= set(ds.identifiers)


def test_unlabeled_loader_of_ignore_label_plans_never_looks_up_class_locations(tmp_path):
    """An ignore label makes nnU-Net's loader sample annotated voxels: the unlabeled loader's label manager has none."""
    _save_cases(tmp_path / "x", ["a"])
    ds = UnlabeledImageDataset([(str(tmp_path / "x"), "a")])
    labels = {"background": 0, "a": 1, "b": 2, "ignore": 3}
    with_ignore = PlansManager(tiny_plans()).get_label_manager(tiny_dataset_json(labels=labels))
    with pytest.raises(KeyError):  # nnU-Net's loader with the dataset's own label manager
        next(nnUNetDataLoader(ds, 2, PATCH, PATCH, with_ignore, oversample_foreground_percent=0.0))
    t = make_trainer(SemiSupervisedTrainer, tmp_path, plans=tiny_plans(patch_size=PATCH),
                     dataset_json=tiny_dataset_json(labels=labels))
    no_ignore = t.unlabeled_label_manager()
    assert not no_ignore.has_ignore_label and no_ignore.foreground_labels == [1, 2]
    assert next(nnUNetDataLoader(ds, 2, PATCH, PATCH, no_ignore))["data"].shape == (2, 1, *PATCH)


# ----------------------------------------------------------------------------- trainer
def _trainer(tmp_path, cls=SemiSupervisedTrainer):
    t = make_trainer(cls, tmp_path, plans=tiny_plans(patch_size=PATCH))
    folder = tmp_path / "nnUNet_preprocessed" / "Dataset901_Tiny3d" / "nnUNetPlans_3d_fullres"
    folder.mkdir(parents=True, exist_ok=True)
    for k in ("case0", "case1"):  # initialize() only infers the dataset class from the file names
        (folder / f"{k}.b2nd").touch()
        (folder / f"{k}.pkl").touch()
    return t


def test_no_unlabeled_cases_is_a_clear_error(tmp_path):
    t = _trainer(tmp_path)
    t.unlabeled_train_keys = []
    with pytest.raises(RuntimeError, match="no unlabeled cases"):
        t.unlabeled_sources()
    t.unlabeled_train_keys = ["case1"]
    extra = unlabeled_folder(t.preprocessed_dataset_folder_base, t.configuration_manager.data_identifier)
    os.makedirs(extra)
    open(os.path.join(extra, "u0.b2nd"), "w").close()
    assert t.unlabeled_sources() == [(t.preprocessed_dataset_folder, "case1"), (extra, "u0")]


def test_checkpoint_round_trip_with_teacher(tmp_path):
    t = _trainer(tmp_path)
    t.initialize()
    t.teacher = EMATeacher(t.network)
    with torch.no_grad():
        for p in t.teacher.module.parameters():
            p.add_(torch.randn_like(p))
    path = os.path.join(t.output_folder, "checkpoint_latest.pth")
    t.save_checkpoint(path)
    assert [f for f in os.listdir(t.output_folder) if ".tmp-" in f] == []  # atomic write left no temp file
    ckpt = torch.load(path, weights_only=False)
    assert TEACHER_KEY in ckpt and "network_weights" in ckpt

    t2 = _trainer(tmp_path)
    t2.load_checkpoint(path)
    assert t2.teacher is not None
    for (k, a), b in zip(t.teacher.state_dict().items(), t2.teacher.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    for a, b in zip(t.network.state_dict().values(), t2.network.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert not torch.equal(next(t2.teacher.module.parameters()), next(t2.network.parameters()))

    # a checkpoint written before the teacher exists restores none
    t.teacher = None
    t.save_checkpoint(path)
    t3 = _trainer(tmp_path)
    t3.load_checkpoint(path)
    assert t3.teacher is None
