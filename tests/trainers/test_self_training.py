"""Self-training (trainers/self_training.py): pseudo-labels by nnU-Net's sliding window, stage 2 batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import dataset_dir, deep_supervision_targets, make_trainer, tiny_dataset_json, tiny_plans

from nnzoo.trainers.nnunet_compat import build_trainer
from nnzoo.trainers.self_training import (
    PSEUDO_DONE,
    nnUNetTrainerSelfTraining,
    pseudo_label_folder,
    self_training_loss,
)


class _SignNet(torch.nn.Module):
    """Class 1 where the image is positive, class 0 elsewhere, class 2 never (a rule to check pseudo-labels)."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = torch.nn.Module()  # nnU-Net toggles decoder.deep_supervision
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return torch.cat((-10 * x, 10 * x, torch.full_like(x, -100.0)), 1) * self.scale


def test_schedule_and_unsupported_labels(tmp_path):
    t = make_trainer(nnUNetTrainerSelfTraining, tmp_path, "2d")
    t.num_epochs = 10
    assert t.pseudo_label_epoch == 5
    with pytest.raises(NotImplementedError, match="ignore label"):
        make_trainer(nnUNetTrainerSelfTraining, tmp_path, "2d",
                     dataset_json=tiny_dataset_json(labels={"background": 0, "a": 1, "ignore": 2}))


def _stage2_inputs(t, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(2, 1, 16, 16, generator=g)
    targets = deep_supervision_targets(t, torch.randint(0, 3, (2, 1, 16, 16), generator=g).float())
    p_data = torch.randn(2, 1, 16, 16, generator=g)
    p_targets = deep_supervision_targets(t, torch.randint(0, 3, (2, 1, 16, 16), generator=g).float())
    return data, targets, p_data, p_targets


def test_stage2_labeled_gradient_equals_a_supervised_step(tmp_path):
    """The labeled patches' gradient in stage 2 is a supervised step's (one loss over 2B patches halves it)."""
    t = make_trainer(nnUNetTrainerSelfTraining, tmp_path, "2d", plans=tiny_plans("2d", (16, 16)), initialize=True)
    data, targets, p_data, p_targets = _stage2_inputs(t)
    with torch.no_grad():
        outs = t.network(torch.cat((data, p_data)))
    leaves = [o.clone().requires_grad_(True) for o in outs]
    total, parts = self_training_loss(leaves, targets, p_targets, n_labeled=2, loss=t.loss)
    total.backward()
    sup_leaves = [o[:2].clone().requires_grad_(True) for o in outs]
    t.loss(sup_leaves, targets).backward()  # nnU-Net's supervised step on the labeled patches alone
    for stage2, sup in zip(leaves, sup_leaves):
        if sup.grad is not None and sup.grad.abs().max() > 0:
            torch.testing.assert_close(stage2.grad[:2], sup.grad)
    assert any(s.grad is not None and s.grad.abs().max() > 0 for s in sup_leaves)
    assert any(o.grad[2:].abs().max() > 0 for o in leaves)  # the pseudo-labeled patches are trained too
    # the old form, one loss over both halves, halves the labeled cross-entropy gradient: not equal
    old = [o.clone().requires_grad_(True) for o in outs]
    t.loss(old, [torch.cat((a, b)) for a, b in zip(targets, p_targets)]).backward()
    assert not torch.allclose(old[0].grad[:2], leaves[0].grad[:2], rtol=0.05, atol=0)


def test_stage2_step_is_the_labeled_batch_plus_as_many_pseudo_labeled(tmp_path):
    t = make_trainer(nnUNetTrainerSelfTraining, tmp_path, "2d", plans=tiny_plans("2d", (16, 16)), initialize=True)
    data, targets, p_data, p_targets = _stage2_inputs(t)

    class _Pseudo:
        def __next__(self):
            return {"data": p_data, "target": p_targets}

    seen = []
    real = t.network.forward
    t.network.forward = lambda x: (seen.append(x.detach().clone()), real(x))[1]
    t.train_step({"data": data, "target": targets})  # stage 1: nnU-Net's step on the labels only
    assert seen[-1].shape[0] == 2
    t.dataloader_pseudo = _Pseudo()
    with torch.no_grad():  # nnU-Net's loss of each half, with the weights before the step
        lab = t.loss(real(data), targets)
        pse = t.loss(real(p_data), p_targets)
    out = t.train_step({"data": data, "target": targets})
    torch.testing.assert_close(seen[-1], torch.cat((data, p_data)))
    assert float(out["labeled_loss"]) == pytest.approx(float(lab), rel=1e-5)
    assert float(out["pseudo_loss"]) == pytest.approx(float(pse), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(lab) + float(pse), rel=1e-5)
    t.PSEUDO_WEIGHT = 0.25  # the step weights the pseudo-label term with the trainer's PSEUDO_WEIGHT
    with torch.no_grad():
        lab, pse = t.loss(real(data), targets), t.loss(real(p_data), p_targets)
    out = t.train_step({"data": data, "target": targets})
    assert float(out["loss"]) == pytest.approx(float(lab) + 0.25 * float(pse), rel=1e-5)


def test_self_training_loss_on_hand_made_outputs():
    """Labeled rows first, each term averaged over its own rows, the pseudo term times ``pseudo_weight``."""
    def mse(out, target):
        if isinstance(out, list):  # a deep-supervision list: one term per output
            return sum(((o - t) ** 2).mean() for o, t in zip(out, target))
        return ((out - target) ** 2).mean()

    out = torch.tensor([[1.0], [2.0], [4.0]])  # 1 labeled row, then 2 pseudo-labeled rows
    total, parts = self_training_loss(out, torch.zeros(1, 1), torch.zeros(2, 1), n_labeled=1, loss=mse,
                                      pseudo_weight=0.5)
    assert float(parts["labeled_loss"]) == 1.0  # 1^2
    assert float(parts["pseudo_loss"]) == 10.0  # (2^2 + 4^2) / 2
    assert float(total) == 1.0 + 0.5 * 10.0
    # deep supervision: every output split the same way
    total, parts = self_training_loss([out, 10 * out], [torch.zeros(1, 1)] * 2, [torch.zeros(2, 1)] * 2,
                                      n_labeled=1, loss=mse)
    assert float(parts["labeled_loss"]) == 1.0 + 100.0 and float(parts["pseudo_loss"]) == 10.0 + 1000.0
    assert float(total) == 101.0 + 1010.0


def test_pseudo_label_folder_is_per_model_folder_path_not_per_name(tmp_path):
    """Two runs of one trainer, dataset and fold under two ``nnUNet_results`` get two pseudo-label folders (one
    never resumes from the other's labels); the same model folder, however spelled, always gets the same one."""
    from nnzoo.trainers.self_training import pseudo_label_dir

    pre = tmp_path / "pre" / "Dataset001_X"
    name = "nnUNetTrainerSelfTraining__nnUNetPlans__2d"
    a = pseudo_label_dir(pre, tmp_path / "results_a" / "Dataset001_X" / name, 0)
    b = pseudo_label_dir(pre, tmp_path / "results_b" / "Dataset001_X" / name, 0)
    assert a != b and a.parent.parent == b.parent.parent == pre / "pseudo_labels"
    assert a.name == b.name == "fold_0" and a.parent.name.startswith(name + "-") and len(a.parent.name) == len(name) + 9
    assert pseudo_label_dir(pre, tmp_path / "results_a" / "x" / ".." / "Dataset001_X" / name, 0) == a
    assert pseudo_label_dir(pre, tmp_path / "results_a" / "Dataset001_X" / name, "all") == a.parent / "fold_all"


@pytest.mark.slow
@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_pseudo_labels_come_from_the_sliding_window_of_the_current_model(in_prepared, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    ds = dataset_dir("nnUNet_preprocessed", in_prepared["id"])
    plans = json.loads((ds / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((ds / "dataset.json").read_text())
    t = build_trainer(nnUNetTrainerSelfTraining, plans=plans, configuration="2d", fold=0, dataset_json=dataset_json,
                      device=torch.device("cpu"))
    t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch = 2, 1, 1
    t.initialize()
    t.network = _SignNet()
    t.dataloader_train, t.dataloader_val = t.get_dataloaders()
    t.current_epoch = t.pseudo_label_epoch  # 1
    folder = pseudo_label_folder(t)
    (folder).mkdir(parents=True, exist_ok=True)
    (folder / PSEUDO_DONE).write_text("{}")  # a stale marker of an earlier run
    t.current_epoch = 0
    t.on_train_start = type(t).on_train_start.__get__(t)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setattr(nnUNetTrainer, "on_train_start", lambda self: None)
    t.on_train_start()
    assert not (folder / PSEUDO_DONE).exists()  # a fresh run never reuses old pseudo-labels
    t.current_epoch = t.pseudo_label_epoch
    t.on_train_epoch_start()
    marker = json.loads((folder / PSEUDO_DONE).read_text())
    assert sorted(marker["cases"]) == sorted(i for _, i in t.unlabeled_case_sources) and len(marker["cases"]) == 2
    from nnzoo.trainers.unlabeled_data import UnlabeledImageDataset

    images = UnlabeledImageDataset(t.unlabeled_case_sources)
    for ident in images.identifiers:
        img = np.asarray(images.load_case(ident)[0][:])
        seg = np.load(folder / f"{ident}.npy")
        assert seg.shape == img.shape  # the whole preprocessed image (sliding window), one channel
        np.testing.assert_array_equal(seg[0], (img[0] > 0).astype(seg.dtype))
    # the pseudo-labeled loader gives labeled-sized batches of those images with their labels
    batch = next(t.dataloader_pseudo)
    target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
    assert batch["data"].shape[0] == t.batch_size and set(np.unique(target.numpy())) <= {0.0, 1.0}
    log = Path(t.log_file).read_text()
    assert "Pseudo-labels of 2 unlabeled cases (epoch 1)" in log
    # a resumed run in stage 2 reuses them
    t.dataloader_pseudo = None
    t.on_train_epoch_start()
    assert "reused from" in Path(t.log_file).read_text()
    t.on_train_end = lambda: None
    from nnzoo.trainers import nnunet_compat as compat

    compat.shutdown_augmenter(t.dataloader_pseudo)
