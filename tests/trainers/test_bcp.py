"""Tests of BCP: mask, mixing, region losses, pseudo-labels, steps and a real training run whose
unlabeled cases have no label files."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import make_trainer, tiny_plans

from nnzoo.trainers.bcp import (
    bcp_mask,
    bcp_region_loss,
    bcp_stage2_loss,
    halves,
    largest_component_per_class,
    masked_dice_ce,
    mix,
    nnUNetTrainerBCP,
    resize_nearest,
)
from nnzoo.trainers.semisup import TEACHER_KEY, EMATeacher

PATCH = {"3d_fullres": (16, 16, 16), "2d": (16, 16)}


# ----------------------------------------------------------------------------- mask and mixing
@pytest.mark.parametrize("shape", [(16, 20, 24), (9, 12), (3, 3, 3)])
def test_mask_geometry(shape):
    rng = np.random.RandomState(0)
    box = [int(s * 2 / 3) for s in shape]
    starts_seen = [set() for _ in shape]
    for _ in range(150):
        m = bcp_mask(shape, rng=rng)
        assert m.shape == (1, 1, *shape)
        m = m[0, 0].numpy()
        assert set(np.unique(m).tolist()) <= {0.0, 1.0}
        zeros = np.argwhere(m == 0)
        assert len(zeros) == math.prod(box)  # one full box, nothing else
        lo, hi = zeros.min(0), zeros.max(0)
        assert (hi - lo + 1).tolist() == box
        for d, s in enumerate(shape):
            assert 0 <= lo[d] and hi[d] < s
            starts_seen[d].add(int(lo[d]))
    for d, s in enumerate(shape):  # every position that fits is drawn, including both borders
        assert starts_seen[d] == set(range(s - box[d] + 1))


def test_mix_images_and_targets():
    m = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]])[None]  # (1, 1, 1, 4)
    a = torch.arange(8.0).reshape(2, 1, 1, 4)
    b = -torch.arange(8.0).reshape(2, 1, 1, 4) - 1
    assert mix(a, b, m).tolist() == [[[[0.0, -2.0, -3.0, 3.0]]], [[[4.0, -6.0, -7.0, 7.0]]]]
    ya = torch.full((2, 1, 1, 4), 2, dtype=torch.long)
    yb = torch.ones((2, 1, 1, 4), dtype=torch.long)
    y = mix(ya, yb, m)
    assert y.dtype == torch.long and y[0, 0, 0].tolist() == [2, 1, 1, 2]
    # nearest downsampling of M for deep supervision keeps it binary
    m3 = bcp_mask((16, 16, 16), rng=np.random.RandomState(1))
    m_low = resize_nearest(m3, (8, 8, 8))
    assert m_low.shape == (1, 1, 8, 8, 8) and set(m_low.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(m_low, m3[..., 1::2, 1::2, 1::2])  # nearest-exact picks the centre voxels


# ----------------------------------------------------------------------------- losses
def _logits(*probs_class1: float) -> torch.Tensor:
    """Two-class logits ``(1, 2, 1, n)`` whose softmax gives class 1 the probabilities ``probs_class1``."""
    p = torch.tensor(probs_class1, dtype=torch.float64)
    return torch.stack((torch.log(1 - p), torch.log(p)))[None, :, None].float()


def test_masked_dice_ce_on_hand_made_tensors():
    """Batch Dice (background included) and CE over the region only, against values computed by hand
    (per-sample Dice would give 0.667, Dice without background 0.429, CE over every pixel another value)."""
    # two samples of two pixels; class-1 probabilities 0.75, 0.25 | 0.5, ~1; labels 1, 1 | 0, 1; the
    # last pixel lies outside the region
    logits = torch.cat((_logits(0.75, 0.25), _logits(0.5, 1 - 1e-6)))
    target = torch.tensor([[[[1, 1]]], [[[0, 1]]]])
    region = torch.tensor([[[[1.0, 1.0]]], [[[1.0, 0.0]]]])
    dice, ce = masked_dice_ce(logits, target, region)
    # over the three region pixels of the whole batch: class 0 p = (0.25, 0.75, 0.5), one-hot (0, 0, 1):
    # 2 * 0.5 / (1.5 + 1) = 0.4; class 1 p = (0.75, 0.25, 0.5), one-hot (1, 1, 0): 2 * 1 / (1.5 + 2) = 4 / 7
    assert float(dice) == pytest.approx(1 - (0.4 + 4 / 7) / 2, abs=1e-5)  # 0.5143
    # CE: -log of the true class's probability, mean over the region: (log 4/3 + log 4 + log 2) / 3
    assert float(ce) == pytest.approx(math.log(32 / 3) / 3, abs=1e-5)  # 0.7890
    # only the region counts
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 1, 4, 5))
    region = torch.zeros(1, 1, 4, 5)
    region[..., 1:3, :] = 1
    dice, ce = masked_dice_ce(logits, target, region)
    logits2 = logits.clone()
    logits2[..., 0, :] = 100 * torch.randn(2, 3, 5)
    torch.testing.assert_close(masked_dice_ce(logits2, target, region), (dice, ce))
    # an empty region gives zero; uniform logits give CE = log(C)
    d0, c0 = masked_dice_ce(logits, target, torch.zeros_like(region))
    assert abs(float(d0)) < 1e-6 and float(c0) == 0.0
    torch.testing.assert_close(masked_dice_ce(torch.zeros(1, 3, 4, 5), target[:1])[1], torch.tensor(math.log(3)))


def test_background_is_part_of_the_region_dice():
    # region holding only background, predicted as class 1: Dice must penalise it
    target = torch.zeros(1, 1, 2, 2, dtype=torch.long)
    wrong = torch.zeros(1, 2, 2, 2)
    wrong[:, 1] = 20
    right = torch.zeros(1, 2, 2, 2)
    right[:, 0] = 20
    assert float(masked_dice_ce(wrong, target)[0]) > 0.9
    assert float(masked_dice_ce(right, target)[0]) < 1e-3


def test_alpha_weighted_region_loss():
    """``(w1 (Dice+CE)[M=1] + w0 (Dice+CE)[M=0]) / 2`` on a hand-made case: a perfect prediction where
    M = 1 and uniform probabilities where M = 0, whose region loss is Dice 0.5 + CE log 2. Fails if the
    weights are swapped, the regions are exchanged or the halving is dropped."""
    m = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    target = torch.tensor([0, 1, 0, 1]).view(1, 1, 1, 4)
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = 30.0  # M = 1: right with certainty; M = 0: 0.5 / 0.5
    uniform = (0.5 + math.log(2)) / 2  # Dice of each class 2 * 0.5 / (1 + 1) = 0.5; CE log 2; halved

    def loss(mask, w1, w0):
        return float(bcp_region_loss(logits, target, mask, weight_ones=w1, weight_zeros=w0))

    assert loss(m, 0.5, 1.0) == pytest.approx(uniform, abs=1e-4)
    assert loss(m, 1.0, 0.5) == pytest.approx(0.5 * uniform, abs=1e-4)
    assert loss(m, 7.0, 0.0) < 1e-4  # only the perfect region weighted
    assert loss(1 - m, 0.5, 1.0) == pytest.approx(0.5 * uniform, abs=1e-4)  # uniform pixels now where M = 1


# ----------------------------------------------------------------------------- pseudo-labels
def test_largest_component_per_class_2d_per_image():
    seg = np.zeros((2, 8, 8), np.int16)
    seg[0, 0:2, 0:2] = 1          # small component of class 1
    seg[0, 4:8, 4:8] = 1          # large component of class 1
    seg[0, 0:3, 5:8] = 2          # only component of class 2
    seg[0, 7, 0] = 2              # tiny second component of class 2
    seg[1, 0:2, 0:2] = 1          # image 2: its own largest component is the small one
    seg[1, 3, 3] = 1
    seg[1, 4, 4] = 1              # diagonal neighbour of (3, 3): same component (8-connectivity)
    out = largest_component_per_class(seg)
    expected = seg.copy()
    expected[0, 0:2, 0:2] = 0
    expected[0, 7, 0] = 0
    expected[1, 3, 3] = expected[1, 4, 4] = 0
    np.testing.assert_array_equal(out, expected)


def test_largest_component_per_class_3d():
    seg = np.zeros((1, 6, 6, 6), np.int16)
    seg[0, :2, :2, :2] = 1
    seg[0, 3:, 3:, 3:] = 1
    seg[0, 2, 2, 2] = 2
    out = largest_component_per_class(seg)
    assert out[0, 0, 0, 0] == 1 or out[0, 5, 5, 5] == 1
    # (2,2,2) touches both class-1 cubes diagonally but is class 2: classes are separate
    assert out[0, 2, 2, 2] == 2 and (out == 1).sum() == 27 and out[0, 0, 0, 0] == 0
    assert not largest_component_per_class(np.zeros((2, 3, 3), np.int16)).any()


# ----------------------------------------------------------------------------- train steps
def _trainer(tmp_path, configuration="3d_fullres"):
    t = make_trainer(nnUNetTrainerBCP, tmp_path, configuration,
                     plans=tiny_plans(configuration, patch_size=PATCH[configuration]))
    folder = tmp_path / "nnUNet_preprocessed" / "Dataset901_Tiny3d" / t.configuration_manager.data_identifier
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "c.b2nd").touch()
    (folder / "c.pkl").touch()
    t.initialize()
    return t


def _batch(t, configuration, b=2):
    patch = PATCH[configuration]
    data = torch.randn(b, 1, *patch)
    target = torch.randint(0, 3, (b, 1, *patch))
    targets = [target] + [resize_nearest(target, tuple(s // f for s in patch)) for f in (2, 4)]
    return data, targets


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_stage2_step_every_parameter_gets_a_gradient_and_teacher_follows(tmp_path, configuration):
    t = _trainer(tmp_path, configuration)
    t.teacher = EMATeacher(t.network)
    data, targets = _batch(t, configuration)
    unlabeled = torch.randn_like(data)
    t.optimizer.zero_grad()
    mask = bcp_mask(tuple(data.shape[2:]), t.MASK_RATIO)
    mixed, p_a, p_b = t.stage2_inputs(data, unlabeled, mask)
    loss = t.stage2_loss(t.network(mixed), targets, mask, p_a, p_b)
    loss.backward()
    missing = [n for n, p in t.network.named_parameters() if p.grad is None]
    assert missing == []  # DDP needs every parameter in the graph
    assert all(not p.requires_grad for p in t.teacher.module.parameters())
    # full train step: the teacher moves by the EMA rule
    t.current_epoch = t.stage2_start_epoch
    t0 = [p.clone() for p in t.teacher.module.parameters()]
    t.dataloader_unlabeled = iter([{"data": unlabeled}])
    out = t.train_step({"data": data, "target": targets})
    assert np.isfinite(out["loss"])
    for a, p, s in zip(t0, t.teacher.module.parameters(), t.network.parameters()):
        torch.testing.assert_close(p, 0.99 * a + 0.01 * s.detach())


def test_output_weights_are_the_loss_weights(tmp_path):
    t = _trainer(tmp_path)
    w = t._output_weights()
    n = len(t.network(torch.zeros(1, 1, *t.configuration_manager.patch_size)))
    expected = np.array([1 / 2 ** i for i in range(n)])
    expected[-1] = 0
    np.testing.assert_allclose(w, expected / expected.sum())  # nnU-Net's formula, read from the loss
    t.loss = torch.nn.MSELoss()  # no deep supervision: one output of weight 1
    assert t._output_weights() == [1.0]


def test_stage1_step_uses_labeled_data_only(tmp_path):
    t = _trainer(tmp_path)
    t.num_epochs = 10
    t.current_epoch = 0
    assert not t.in_stage2() and t.stage2_start_epoch == 2
    t.dataloader_unlabeled = None  # would fail if touched
    data, targets = _batch(t, "3d_fullres")
    out = t.train_step({"data": data, "target": targets})
    assert np.isfinite(out["loss"]) and t.teacher is None
    # a batch of one is mixed with itself
    t.optimizer.zero_grad()
    mask = bcp_mask(tuple(data.shape[2:]), t.MASK_RATIO)
    a, b = halves(data[:1])
    t.stage1_loss(t.network(mix(a, b, mask)), [x[:1] for x in targets], mask).backward()
    assert all(p.grad is not None for p in t.network.parameters())


def test_regions_and_ignore_label_are_rejected(tmp_path):
    from helpers import tiny_dataset_json

    with pytest.raises(NotImplementedError, match="ignore label"):
        make_trainer(nnUNetTrainerBCP, tmp_path,
                     dataset_json=tiny_dataset_json(labels={"background": 0, "a": 1, "ignore": 2}))
    with pytest.raises(NotImplementedError, match="region"):
        make_trainer(nnUNetTrainerBCP, tmp_path, dataset_json=tiny_dataset_json(
            labels={"background": 0, "a": [1, 2], "b": 2}, regions_class_order=[1, 2]))


# ----------------------------------------------------------------------------- real training run
DATASET_ID, DATASET = 987, "Dataset987_SemiTiny"


def _build_dataset(root):
    """6 labeled 16x20x24 cases + 2 unlabeled images, planned and preprocessed by nnU-Net's API."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    from nnzoo.pipeline.synthetic import write_synthetic_folders
    from nnzoo.pipeline.unlabeled import preprocess_unlabeled

    src = write_synthetic_folders(root / "src", num_cases=6, shape=(16, 20, 24), num_unlabeled=2, seed=3)
    raw = root / "nnUNet_raw" / DATASET
    for d in ("imagesTr", "labelsTr", "imagesUnlabeled"):
        (raw / d).mkdir(parents=True)
    for p in sorted(src["images"].iterdir()):
        case = p.name[: -len(".nii.gz")]
        shutil.copy(p, raw / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(src["labels"] / p.name, raw / "labelsTr" / p.name)
    for p in sorted(src["unlabeled"].iterdir()):
        shutil.copy(p, raw / "imagesUnlabeled" / f"{p.name[: -len('.nii.gz')]}_0000.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": {
        "background": 0, "a": 1, "b": 2}, "numTraining": 6, "file_ending": ".nii.gz"}))
    extract_fingerprint_dataset(DATASET_ID, num_processes=1, check_dataset_integrity=False, clean=True, verbose=False)
    plan_experiment_dataset(DATASET_ID)
    preprocess_dataset(DATASET_ID, configurations=("2d", "3d_fullres"), num_processes=(1,), verbose=False,
                       show_progress_bar=False)
    written = preprocess_unlabeled(DATASET, "nnUNetPlans", configurations=["2d", "3d_fullres"], num_processes=1)
    assert written == {"2d": 2, "3d_fullres": 2}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bcp_data")
    with pytest.MonkeyPatch.context() as mp:
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            mp.setenv(k, str(root / k))
        mp.setenv("nnUNet_n_proc_DA", "1")  # nnU-Net's planner sets torch's thread count from it
        _build_dataset(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)  # the module's data and models off the disk


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_training_never_reads_unlabeled_label_files(dataset_root, monkeypatch, configuration):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, str(dataset_root / k))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    pp = dataset_root / "nnUNet_preprocessed" / DATASET
    plans = json.loads((pp / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((pp / "dataset.json").read_text())

    from nnzoo.trainers.nnunet_compat import build_trainer

    def new_trainer():
        p = json.loads(json.dumps(plans))
        p["configurations"]["2d"]["batch_size"] = 2  # keep the 2D run fast
        t = build_trainer(nnUNetTrainerBCP, plans=p, configuration=configuration, fold=0, dataset_json=dataset_json,
                          device=torch.device("cpu"))
        t.labeled_budget = 2
        t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch = 2, 2, 1
        t.PRETRAIN_FRACTION = 0.5  # epoch 0: stage 1, epoch 1: stage 2
        return t

    t = new_trainer()
    labeled, val = t.do_split()
    unlabeled = t.unlabeled_train_keys
    assert len(labeled) == 2 and len(unlabeled) == 2
    # move every label of the fold's unlabeled cases (and their label-derived properties) away
    folder = pp / t.configuration_manager.data_identifier
    stash = dataset_root / f"stash_{configuration}"
    stash.mkdir()
    hidden = [folder / f"{k}{suffix}" for k in unlabeled for suffix in ("_seg.b2nd", ".pkl")]
    for f in hidden:
        f.rename(stash / f.name)
    try:
        t.run_training()
    finally:
        for f in hidden:
            (stash / f.name).rename(f)
    assert t.teacher is not None
    record = json.loads((dataset_root / "nnUNet_results" / DATASET / os.path.basename(t.output_folder_base)
                         / "fold_0" / "labeled_split.json").read_text())
    assert record["labeled"] == labeled and record["unlabeled"] == unlabeled
    ckpt = torch.load(os.path.join(t.output_folder, "checkpoint_final.pth"), weights_only=False)
    assert ckpt[TEACHER_KEY] is not None
    losses = t.logger.get_checkpoint()["train_losses"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    # resume: the teacher and the recorded split come back
    t2 = new_trainer()
    t2.labeled_budget = None
    t2.load_checkpoint(os.path.join(t.output_folder, "checkpoint_final.pth"))
    for a, b in zip(t.teacher.state_dict().values(), t2.teacher.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert t2.do_split()[0] == labeled and t2.unlabeled_train_keys == unlabeled


# ----------------------------------------------------------------------------- stage 2 start and the LCC filter
def test_single_component_counts_on_hand_made_patches():
    from nnzoo.trainers.bcp import single_component_counts

    t = np.zeros((3, 1, 8, 8), np.int16)
    t[0, 0, :2, :2] = 1              # class 1: one object
    t[0, 0, 5:, 5:] = 2
    t[0, 0, 0, 7] = 2                # class 2: two objects
    t[1, 0, 3:5, 3:5] = 1            # class 1: one object; class 2 absent
    t[2, 0, 0, 0] = 1
    t[2, 0, 1, 1] = 1                # diagonal neighbours: one object (8-connectivity)
    counts = single_component_counts(t, 3)
    np.testing.assert_array_equal(counts, [[0, 0], [3, 3], [0, 1]])


def test_lcc_applies_only_to_classes_that_are_one_object(tmp_path):
    t = _trainer(tmp_path, "2d")
    assert t.lcc_classes() == [1, 2]  # nothing counted yet: the official behaviour
    t.component_counts = np.array([[0, 0], [10, 10], [5, 10]])
    assert t.lcc_classes() == [1]  # class 2 is fragmented in half of the labeled patches
    t.LCC_MIN_SINGLE_FRACTION = 0.0  # the official filter on every class
    assert t.lcc_classes() == [1, 2]
    # the filter in the pseudo-labels: class 1 reduced to its largest component, class 2 kept whole
    t.LCC_MIN_SINGLE_FRACTION = 0.9
    seg = np.zeros((1, 16, 16), np.int64)
    seg[0, :3, :3] = 1
    seg[0, 8:, 8:] = 1
    seg[0, 0, 10] = seg[0, 5, 14] = 2

    class _Teacher:
        def predict(self, x):
            return torch.nn.functional.one_hot(torch.from_numpy(seg), 3).movedim(-1, 1).float()

    t.teacher = _Teacher()
    plab = t.pseudo_labels(torch.zeros(1, 1, 16, 16))[:, 0].numpy()
    assert (plab[0, :3, :3] == 0).all() and (plab[0, 8:, 8:] == 1).all()
    assert plab[0, 0, 10] == 2 and plab[0, 5, 14] == 2
    # what the filter did is counted per class: class 1 lost its 3x3 component, class 2 was not filtered
    np.testing.assert_array_equal(t.lcc_counts, [[0, 0, 0], [1, 1, 9], [1, 0, 0]])
    t.pseudo_labels(torch.zeros(1, 1, 16, 16))
    record = t.lcc_record()
    assert record["filtered_classes"] == [1]
    assert record["per_class"]["1"] == {"name": "a", "filtered": True, "labeled_patches_one_object": 10,
                                        "labeled_patches_with_class": 10, "pseudo_labels_with_class": 2,
                                        "pseudo_labels_changed": 2, "voxels_removed": 18}
    assert record["per_class"]["2"]["filtered"] is False and record["per_class"]["2"]["voxels_removed"] == 0


def test_stage1_steps_count_components_and_stage2_starts_from_the_best_stage1_model(tmp_path, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    def epoch_end(self):  # nnU-Net's on_epoch_end without plots and checkpoints
        self.current_epoch += 1

    monkeypatch.setattr(nnUNetTrainer, "on_epoch_end", epoch_end)
    t = _trainer(tmp_path, "3d_fullres")
    t.num_epochs = 15  # stage 2 from epoch 3
    net = t.network
    snapshots = []
    for epoch, ema in enumerate((0.3, 0.6, 0.5)):
        data, targets = _batch(t, "3d_fullres")
        t.train_step({"data": data, "target": targets})  # stage 1: a real optimizer step
        assert t.component_counts is not None and t.component_counts[1:, 1].sum() > 0
        snapshots.append(({k: v.clone() for k, v in net.state_dict().items()},
                          torch.optim.SGD([torch.zeros(1)]).state_dict()))
        t.logger.log("ema_fg_dice", ema, epoch)
        t.on_epoch_end()
    assert t.stage1_best["epoch"] == 1 and t.stage1_best["ema"] == 0.6
    best = snapshots[1][0]
    momentum_at_best = {k: v["momentum_buffer"].clone() for k, v in t.stage1_best["optimizer"]["state"].items()}
    assert t.current_epoch == 3 and t.in_stage2()
    t.start_stage2()
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, best[k])  # the student restarts from epoch 1's weights ...
    for k, v in t.optimizer.state_dict()["state"].items():
        torch.testing.assert_close(v["momentum_buffer"], momentum_at_best[k])  # ... and optimizer state
    for k, v in t.teacher.module.state_dict().items():
        torch.testing.assert_close(v, best[k])  # teacher = that student
    log = open(t.log_file).read()
    assert "from the best stage-1 model (epoch 1, EMA pseudo Dice 0.6000)" in log


def test_stage1_state_survives_a_checkpoint(tmp_path):
    t = _trainer(tmp_path, "2d")
    t.component_counts = np.array([[0, 0], [4, 5], [1, 5]])
    t.stage1_best = {"network": {k: v.clone() for k, v in t.network.state_dict().items()},
                     "optimizer": t.optimizer.state_dict(), "ema": 0.7, "epoch": 3}
    path = str(tmp_path / "ck.pth")
    t.save_checkpoint(path)
    t2 = _trainer(tmp_path, "2d")
    t2.load_checkpoint(path)
    np.testing.assert_array_equal(t2.component_counts, t.component_counts)
    assert t2.stage1_best["epoch"] == 3 and t2.stage1_best["ema"] == 0.7
    assert t2.lcc_classes() == t.lcc_classes() == []


# ----------------------------------------------------------------------------- stage-2 wiring (issue 23)
def _box_mask(shape=(8, 8)) -> torch.Tensor:
    """M: ones with a zero box in the top-left quarter (the copy-paste box)."""
    m = torch.ones(1, 1, *shape)
    m[..., : shape[0] // 2, : shape[1] // 2] = 0
    return m


def test_stage2_inputs_paste_the_labeled_box_into_the_unlabeled_image_and_the_reverse(tmp_path):
    """Official BCP: X1 = u_a M + l_a (1 - M) (the labeled box pasted into an unlabeled image),
    X2 = l_b M + u_b (1 - M) (the unlabeled box pasted into a labeled image). Fails if the arguments
    of either mix are swapped."""
    t = _trainer(tmp_path, "2d")
    t.teacher = EMATeacher(t.network)
    mask = _box_mask(PATCH["2d"])
    labeled = torch.full((2, 1, *PATCH["2d"]), 1.0)
    unlabeled = torch.full((2, 1, *PATCH["2d"]), 2.0)
    mixed, p_a, p_b = t.stage2_inputs(labeled, unlabeled, mask)
    inside = mask[0, 0] == 0
    x1, x2 = mixed[0, 0], mixed[1, 0]
    assert (x1[inside] == 1).all() and (x1[~inside] == 2).all()
    assert (x2[inside] == 2).all() and (x2[~inside] == 1).all()
    assert p_a.shape == p_b.shape == (1, 1, *PATCH["2d"])


def _perfect_logits(target: torch.Tensor, classes: int = 2, margin: float = 30.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(target[:, 0].long(), classes).movedim(-1, 1).float() * margin


def test_stage2_loss_weights_the_pseudo_labelled_region_of_each_mixed_image():
    """alpha (the unlabeled weight) acts on the pseudo-labelled region of each mixed image only: where
    M = 1 in X1 (the unlabeled image around the pasted labeled box), where M = 0 in X2 (the pasted
    unlabeled box). A prediction wrong only there gives a loss proportional to alpha; wrong only in
    the labeled region, a loss that does not depend on alpha. Fails if (alpha, 1) are swapped in
    either image or the pseudo-labels and labels are mixed the other way round."""
    mask = _box_mask()
    p = torch.ones(1, 1, 8, 8, dtype=torch.long)  # pseudo-labels: class 1 everywhere
    y = torch.zeros(2, 1, 8, 8, dtype=torch.long)  # labels: class 0 everywhere
    m = mask.bool()
    y1 = torch.where(m, p, y[:1])  # the targets the official code builds
    y2 = torch.where(m, y[1:], p)

    def loss(first_wrong_where: torch.Tensor | None, second_wrong_where: torch.Tensor | None, alpha: float):
        def logits(target, wrong):
            t = target.clone()
            if wrong is not None:
                t[wrong.expand_as(t)] = 1 - t[wrong.expand_as(t)]
            return _perfect_logits(t)

        out = torch.cat((logits(y1, first_wrong_where), logits(y2, second_wrong_where)))
        return float(bcp_stage2_loss(out, [y], mask, p, p, weights=[1.0], unlabeled_weight=alpha))

    assert loss(None, None, 0.5) < 1e-6  # perfect everywhere: no loss
    pseudo_1, labeled_1 = m, ~m  # X1: pseudo-labels where M = 1
    pseudo_2, labeled_2 = ~m, m  # X2: pseudo-labels where M = 0
    for first, second in ((pseudo_1, None), (None, pseudo_2)):  # wrong only on pseudo-labels: loss ∝ alpha
        assert loss(first, second, 0.5) == pytest.approx(0.5 * loss(first, second, 1.0), rel=1e-4)
        assert loss(first, second, 1.0) > 0.1
    for first, second in ((labeled_1, None), (None, labeled_2)):  # wrong only on labels: alpha plays no part
        assert loss(first, second, 0.5) == pytest.approx(loss(first, second, 1.0), rel=1e-4)
        assert loss(first, second, 1.0) > 0.1
