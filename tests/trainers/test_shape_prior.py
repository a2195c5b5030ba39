"""Tests of the shape-prior trainer: critic training, twin decoders, losses, steps and checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import deep_supervision_targets, make_trainer, tiny_dataset_json, tiny_plans

from nnzoo.pipeline.cli import main
from nnzoo.trainers.base import NnzooTrainer
from nnzoo.trainers.networks.shape_prior import (
    TwinDecoderUNet,
    resize_to_critic,
)
from nnzoo.trainers.nnunet_compat import deep_supervision_scales
from nnzoo.trainers.shape_prior import (
    CRITIC_KEY,
    foreground_probabilities,
    nnUNetTrainerShapePrior,
    shape_prior_loss,
)

PATCH = {"3d_fullres": (16, 16, 16), "2d": (32, 32)}


class _TinyShapePrior(nnUNetTrainerShapePrior):
    CRITIC_SIZE_2D = 16
    CRITIC_SIZE_3D = 16
    CRITIC_FEATURES_2D = 8
    CRITIC_FEATURES_3D = 4
    CRITIC_EPOCHS = 3
    CRITIC_BATCH_SIZE = 4
    CRITIC_WARMUP_G_STEPS = 1
    CRITIC_WARMUP_ITERS = 2


def _trainer(tmp_path, cfg="2d", dataset_json=None, cls=_TinyShapePrior):
    return make_trainer(cls, tmp_path, cfg, plans=tiny_plans(cfg, PATCH[cfg]), dataset_json=dataset_json,
                        initialize=True)




def _batch(trainer, batch_size: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    patch = PATCH["2d" if len(trainer.configuration_manager.patch_size) == 2 else "3d_fullres"]
    label = torch.randint(0, 3, (batch_size, 1, *[p // 4 for p in patch]), generator=g).float()
    label = torch.nn.functional.interpolate(label, size=patch, mode="nearest")
    targets = deep_supervision_targets(trainer, label)
    return {"data": torch.randn(batch_size, 1, *patch, generator=g), "target": targets}


class _Unlabeled:
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __next__(self) -> dict:
        return {"data": self.x}


# ----------------------------------------------------------------------------- critic




# ----------------------------------------------------------------------------- network
@pytest.mark.parametrize("cfg", ["2d", "3d_fullres"])
def test_twin_decoder_training_forward(cfg, tmp_path):
    tr = _trainer(tmp_path, cfg)
    net = tr.network
    assert isinstance(net, TwinDecoderUNet)
    assert {k.split(".")[0] for k in net.state_dict()} == {"encoder", "decoder", "label_decoder"}
    x = torch.randn(3, 1, *PATCH[cfg])
    lab, pseudo_logits, dp = net(x, n_labeled=2)
    n_scales = len(deep_supervision_scales(tr))
    assert len(lab) == n_scales and lab[0].shape == (2, 3, *PATCH[cfg])
    assert pseudo_logits.shape == (1, 3, *PATCH[cfg]) and not pseudo_logits.requires_grad
    assert len(dp) == n_scales and dp[0].shape == (1, 3, *PATCH[cfg])
    net.decoder.deep_supervision = False  # D_p still returns every scale for the critic, D_l follows the flag
    lab, _, dp = net(x, n_labeled=2)
    assert isinstance(lab, torch.Tensor) and len(dp) == n_scales
    net.eval()
    with torch.no_grad():  # inference: D_p, no dropout
        y1, y2 = net(x), net(x)
    assert torch.equal(y1, y2) and y1.shape == (3, 3, *PATCH[cfg])
    with pytest.raises(ValueError):
        net(x, n_labeled=3)


# ----------------------------------------------------------------------------- losses and gradients
def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {k: None if p.grad is None else p.grad.clone() for k, p in module.named_parameters()}


def test_dp_receives_no_ground_truth(tmp_path):
    tr = _trainer(tmp_path, "2d")
    tr.pretrain_critic(real=resize_to_critic(tr.real_masks(_batch(tr, 4)["target"][0]), tr.critic_size))
    net = tr.network
    data = torch.randn(2, 1, *PATCH["2d"])
    unlabeled = torch.randn(2, 1, *PATCH["2d"])
    grads = []
    for seed in (1, 2):  # two different ground truths for the same images
        targets = _batch(tr, 2, seed)["target"]
        net.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # same dropout mask
        loss, parts = tr.compute_loss(net(torch.cat((data, unlabeled)), n_labeled=2), targets)
        assert np.isfinite(loss.item()) and set(parts) == {"sup", "pseudo", "shape"}
        loss.backward()
        grads.append((_grads(net.decoder), _grads(net.label_decoder)))
    (dp_a, dl_a), (dp_b, dl_b) = grads
    for k in dp_a:  # D_p's gradient does not depend on the ground truth...
        assert (dp_a[k] is None) == (dp_b[k] is None)
        if dp_a[k] is not None:
            assert torch.equal(dp_a[k], dp_b[k]), k
    assert any(dl_a[k] is not None and not torch.allclose(dl_a[k], dl_b[k]) for k in dl_a)  # ...D_l's does

    # the supervised loss alone sends no gradient into D_p
    net.zero_grad(set_to_none=True)
    lab, _, _ = net(torch.cat((data, unlabeled)), n_labeled=2)
    tr.loss(lab, _batch(tr, 2)["target"]).backward()
    assert all(p.grad is None or not p.grad.any() for p in net.decoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in net.label_decoder.parameters())


def test_pseudo_labels_and_masks(tmp_path):
    tr = _trainer(tmp_path, "2d")
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2, 0, 0] = 5.0
    logits[0, 1, 1, 1] = 5.0
    assert tr.pseudo_labels(logits)[0, 0].tolist() == [[2.0, 0.0], [0.0, 1.0]]
    m = tr.real_masks(torch.tensor([[[[2.0, 0.0], [0.0, 1.0]]]]))
    assert m.shape == (1, 2, 2, 2) and m[0, 0].tolist() == [[0, 0], [0, 1]] and m[0, 1].tolist() == [[1, 0], [0, 0]]
    p = foreground_probabilities(tr.probabilities(logits), regions=False)
    assert p.shape == (1, 2, 2, 2) and torch.allclose(p.sum(1) + torch.softmax(logits, 1)[:, 0], torch.ones(1, 2, 2))

    regions = tiny_dataset_json(labels={"background": 0, "ab": [1, 2], "b": 2}, regions_class_order=[1, 2])
    tr_r = _trainer(tmp_path, "2d", dataset_json=regions)
    lr = torch.tensor([[[[3.0, -3.0]]], [[[-1.0, 2.0]]]]).permute(1, 0, 2, 3)  # (1, 2, 1, 2)
    assert tr_r.pseudo_labels(lr)[0].tolist() == [[[1.0, 0.0]], [[0.0, 1.0]]]
    assert tr_r._critic_args()[1] == 2


def _hand_made_outputs():
    """A training pass's outputs ``(D_l on x_l, D_l logits on x_u, D_p on x_u)``, two scales, 3 classes;
    D_l's argmax on the unlabeled patch is ``classes``; and the labeled targets."""
    classes = torch.tensor([[0, 1, 1, 2], [0, 1, 1, 2], [2, 2, 0, 0], [2, 2, 0, 0]])
    lab = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2)]
    pseudo_logits = 5 * torch.nn.functional.one_hot(classes, 3).movedim(-1, 0)[None].float()
    dp = [torch.ones(1, 3, 4, 4), torch.ones(1, 3, 2, 2)]
    targets_l = [torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 2, 2)]
    return (lab, pseudo_logits, dp), targets_l, classes


def _stand_ins(lab, seen: dict):
    """Stand-in losses that record what they get: labeled term 3, pseudo-label term 5, shape score 7."""
    def supervised_loss(out, targets):
        key = "sup" if out is lab or out is lab[0] else "pseudo"
        seen[key] = (out, targets)
        return torch.tensor(3.0 if key == "sup" else 5.0)

    def shape_score(outputs):
        seen["shape"] = outputs
        return torch.tensor(7.0)

    return supervised_loss, shape_score


def test_shape_prior_loss_composition_on_hand_made_parts():
    """``w_sup * L(D_l(x_l), y) + L(D_p(x_u), argmax D_l(x_u)) + w_shape * critic``, the pseudo-labels
    nearest-downsampled to D_p's coarser output: fails if the weights are swapped or dropped, or D_p is
    trained on anything but D_l's hard pseudo-labels."""
    outputs, targets_l, classes = _hand_made_outputs()
    lab, _, dp = outputs

    def run(supervised_weight, shape_weight, deep_supervision=True):
        seen = {}
        sup, shape = _stand_ins(lab, seen)
        total, parts = shape_prior_loss(outputs, targets_l, supervised_loss=sup, shape_score=shape,
                                        regions=False, deep_supervision=deep_supervision,
                                        supervised_weight=supervised_weight, shape_weight=shape_weight)
        return float(total), {k: float(v) for k, v in parts.items()}, seen

    total, parts, seen = run(2.0, 0.1)
    assert parts == {"sup": 3.0, "pseudo": 5.0, "shape": 7.0}
    assert total == pytest.approx(2 * 3 + 5 + 0.1 * 7)  # 11.7
    assert seen["sup"][0] is lab and seen["sup"][1] is targets_l
    assert seen["pseudo"][0] is dp and seen["shape"] is dp
    pseudo_targets = seen["pseudo"][1]
    assert pseudo_targets[0].tolist() == [[classes.float().tolist()]]
    assert pseudo_targets[1].tolist() == [[[[1.0, 2.0], [2.0, 0.0]]]]  # nearest-exact: rows/columns 1 and 3
    assert run(0.5, 4.0)[0] == pytest.approx(0.5 * 3 + 5 + 4 * 7)  # 34.5
    # without deep supervision: the full-resolution outputs and targets only
    _, _, seen = run(2.0, 0.1, deep_supervision=False)
    assert seen["sup"][0] is lab[0] and seen["sup"][1] is targets_l[0]
    assert seen["pseudo"][0] is dp[0] and seen["pseudo"][1].tolist() == [[classes.float().tolist()]]


def test_compute_loss_uses_the_trainer_weights(tmp_path):
    """The trainer passes its ``SUPERVISED_WEIGHT`` and ``SHAPE_WEIGHT`` (set here to other values)."""
    cls = type("Weighted", (_TinyShapePrior,), {"SUPERVISED_WEIGHT": 3.0, "SHAPE_WEIGHT": 0.5})
    tr = make_trainer(cls, tmp_path, "2d", plans=tiny_plans("2d", PATCH["2d"]))
    outputs, targets_l, _ = _hand_made_outputs()
    tr.loss, tr.shape_score = _stand_ins(outputs[0], {})
    total, parts = tr.compute_loss(outputs, targets_l)
    assert parts == {"sup": 3.0, "pseudo": 5.0, "shape": 7.0}
    assert float(total) == pytest.approx(3 * 3 + 5 + 0.5 * 7)  # 17.5


def test_ignore_label_is_rejected(tmp_path):
    dj = tiny_dataset_json(labels={"background": 0, "a": 1, "b": 2, "ignore": 3})
    with pytest.raises(NotImplementedError, match="ignore"):
        make_trainer(_TinyShapePrior, tmp_path, "2d", dataset_json=dj)


# ----------------------------------------------------------------------------- steps
@pytest.mark.parametrize("cfg", ["2d", "3d_fullres"])
def test_train_step_gradients_reach_every_parameter(cfg, tmp_path):
    tr = _trainer(tmp_path, cfg)
    tr.batch_size = 2
    assert tr.unlabeled_batch_size == 2  # official: a full labeled and a full unlabeled batch
    batch = _batch(tr, 2)
    with pytest.raises(RuntimeError, match="critic"):
        tr.train_step(batch)
    tr.pretrain_critic(real=resize_to_critic(tr.real_masks(batch["target"][0]), tr.critic_size))
    critic_before = {k: v.clone() for k, v in tr.critic.state_dict().items()}
    tr.dataloader_unlabeled = _Unlabeled(torch.randn(2, 1, *PATCH[cfg]))
    before = {k: v.clone() for k, v in tr.network.state_dict().items()}
    out = tr.train_step(batch)
    assert np.isfinite(out["loss"]) and out["loss"].shape == ()
    missing = {k for k, p in tr.network.named_parameters() if p.grad is None}
    # only D_l's coarsest head (deep-supervision weight 0 outside DDP, as in nnU-Net) has no gradient
    assert missing <= {"label_decoder.seg_layers.0.weight", "label_decoder.seg_layers.0.bias"}
    assert all(p.grad is not None for p in tr.network.decoder.parameters())
    changed = [k for k, v in tr.network.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("decoder.") for k in changed) and any(k.startswith("label_decoder.") for k in changed)
    assert all(torch.equal(v, critic_before[k]) for k, v in tr.critic.state_dict().items())  # frozen


def test_critic_budget_is_epochs_over_the_masks(tmp_path):
    tr = _trainer(tmp_path, "2d")
    assert tr.critic_steps(6) == 3 * 2  # 3 epochs x ceil(6 / 4) batches
    assert tr.critic_steps(8) == 3 * 2 and tr.critic_steps(9) == 3 * 3


class _NearestReal(torch.nn.Module):
    """Scores a mask by its distance to the nearest of ``real`` (0 for the real masks themselves)."""

    def __init__(self, real: torch.Tensor, sign: float = 1.0) -> None:
        super().__init__()
        self.real, self.sign = real, sign

    def forward(self, x):
        d = (x.flatten(1)[:, None] - self.real.flatten(1)[None]).abs().sum(-1).min(1).values
        return self.sign * d


def test_critic_separation_auc(tmp_path):
    tr = _trainer(tmp_path, "2d")
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(5, 2, 4, 4, generator=g) > 0.5).float()
    real = torch.nn.functional.interpolate(real, size=(16, 16), mode="nearest")
    assert tr.critic_separation(_NearestReal(real), real) == 1.0  # a perfect critic
    assert tr.critic_separation(_NearestReal(real, -1.0), real) == 0.0  # an inverted one
    constant = lambda x: torch.zeros(x.shape[0])  # noqa: E731
    assert tr.critic_separation(constant, real) == 0.5  # chance


def _disks(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Two-channel masks: a disk (class 1) with a smaller disk (class 2) inside it."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.rand(n, 2, generator=g) * size * 0.3 + size * 0.35
    r = torch.rand(n, generator=g) * size * 0.1 + size * 0.2
    d = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
    outer, inner = d < r[:, None, None] ** 2, d < (0.5 * r[:, None, None]) ** 2
    return torch.stack((outer & ~inner, inner), 1).float()


def test_pretraining_records_the_held_out_auc_and_warns_when_low(tmp_path):
    tr = _trainer(tmp_path, "2d")
    real = torch.nn.functional.interpolate((torch.rand(10, 2, 4, 4) > 0.5).float(), size=(16, 16))
    critic = tr.pretrain_critic(real=real)
    assert tr.critic is critic and not any(p.requires_grad for p in critic.parameters())
    log = Path(tr.log_file).read_text()
    assert "Shape critic: 6 critic" in log and "on 8 labeled masks" in log  # 2 of 10 held out
    assert "budget 6 critic updates = 3 epochs x 2 batches" in log and "s per critic update (first 5)" in log
    assert "% of the budget" in log and f"AUC {tr.critic_auc:.3f}" in log
    assert ("WARNING: the shape critic barely tells" in log) == (tr.critic_auc < tr.CRITIC_MIN_AUC)
    record = json.loads((Path(tr.output_folder) / "shape_critic.json").read_text())
    assert record["auc"] == pytest.approx(tr.critic_auc) and record["auc_masks"] == 1  # the other held-out mask
    assert record["critic_updates"] == 6 and record["epochs"] == 3 and record["stopped_by"] == "budget"
    assert record["cache_hit"] is False and Path(record["cache"]).is_file()


class _LearningCritic(_TinyShapePrior):
    CRITIC_EPOCHS = 10
    CRITIC_BATCH_SIZE = 16
    CRITIC_MIN_AUC = 0.0  # no early stop
    CRITIC_CACHE = False


def test_pretrained_critic_beats_chance_on_held_out_masks(tmp_path):
    """Real masks it never saw score as more real than corrupted ones (AUC > 0.5 well beyond noise)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tr = _trainer(tmp_path, "2d", cls=_LearningCritic)
    critic = tr.pretrain_critic(real=_disks(40, 16, g))  # 32 training masks: 20 critic updates
    assert tr.critic_record["critic_updates"] == 20
    held_out = _disks(48, 16, g)  # new masks, and corruptions of them (critic_auc)
    auc = tr.critic_separation(critic, held_out, seed=1)
    print(f"held-out AUC after 20 updates: {auc:.3f}")
    assert auc > 0.75  # untrained critics of this size scored 0.27-0.64 (5 seeds)


def test_auc_rule_stops_the_pretraining_after_the_warm_up(tmp_path):
    rule = type("Rule", (_TinyShapePrior,), {"CRITIC_EPOCHS": 50, "CRITIC_AUC_EVERY": 2, "CRITIC_MIN_AUC": 1e-9,
                                            "CRITIC_WARMUP_G_STEPS": 2})
    tr = _trainer(tmp_path, "2d", cls=rule)
    tr.pretrain_critic(real=torch.rand(10, 2, 16, 16).round())  # 8 training masks: 2 updates an epoch
    r = tr.critic_record
    # warm-up: 2 blocks of 2 updates (an epoch each), each followed by a generator step; the first
    # check after the warm-up is at update 6
    assert r["stopped_by"] == "auc" and r["critic_updates"] == 6 and r["auc_checks"] == [[6, r["auc_checks"][0][1]]]
    assert r["budget_updates"] == 100 and r["epochs"] == 3 and r["generator_updates"] == 2
    never = type("Never", (rule,), {"CRITIC_MIN_AUC": 1.01, "CRITIC_EPOCHS": 4})
    tr = _trainer(tmp_path, "2d", cls=never)
    tr.pretrain_critic(real=torch.rand(10, 2, 16, 16).round())
    assert tr.critic_record["stopped_by"] == "budget" and tr.critic_record["critic_updates"] == 8
    assert [c[0] for c in tr.critic_record["auc_checks"]] == [6]  # not 2, 4: warm-up; not 8: the budget's end


def test_critic_cache_is_reused_and_keyed_by_the_labeled_cases(tmp_path, monkeypatch):
    import nnzoo.trainers.shape_prior as sp

    updates = []
    real_train = sp.train_wgan_critic

    def counting(*args, **kwargs):
        out = real_train(*args, **kwargs)
        updates.append(out["critic_steps"])
        return out

    monkeypatch.setattr(sp, "train_wgan_critic", counting)
    real = torch.rand(10, 2, 16, 16).round()
    first = _trainer(tmp_path, "2d")
    first.pretrain_critic(real=real)
    second = _trainer(tmp_path, "2d")  # another run (fold, seed, --continue) on the same masks and settings
    second.pretrain_critic(real=real)
    assert updates == [6]  # trained once
    assert second.critic_record["cache_hit"] and second.critic_record["auc"] == first.critic_record["auc"]
    for k, v in first.critic.state_dict().items():
        assert torch.equal(v, second.critic.state_dict()[k]), k
    assert json.loads((Path(second.output_folder) / "shape_critic.json").read_text())["cache_hit"] is True
    changed = type("Wider", (_TinyShapePrior,), {"CRITIC_FEATURES_2D": 4})
    _trainer(tmp_path, "2d", cls=changed).pretrain_critic(real=real)  # other critic settings: trains again
    assert updates == [6, 6]
    # without explicit masks the key is the fold's labeled cases
    t = _trainer(tmp_path, "2d")
    t.labeled_train_keys = ["case_a", "case_b"]
    p_ab = t.critic_cache_path()
    assert p_ab.parent == Path(t.preprocessed_dataset_folder_base) / "shape_critics"
    assert Path(t.preprocessed_dataset_folder) not in p_ab.parents  # never inside the data folder
    t.labeled_train_keys = ["case_a", "case_c"]
    assert t.critic_cache_path() != p_ab
    t.labeled_train_keys = ["case_a", "case_b"]
    assert t.critic_cache_path() == p_ab
    (Path(t.preprocessed_dataset_folder) / "case_b_seg.b2nd").write_bytes(b"re-preprocessed")
    assert t.critic_cache_path() != p_ab  # the labeled segmentations changed


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_restores_critic_and_resume_does_not_retrain(tmp_path, monkeypatch):
    tr = _trainer(tmp_path, "3d_fullres")
    tr.pretrain_critic(real=torch.rand(6, 2, 16, 16, 16))
    path = str(tmp_path / "ckpt.pth")
    tr.save_checkpoint(path)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    assert set(ck[CRITIC_KEY]) == set(tr.critic.state_dict())
    assert not any(k.startswith("critic") for k in ck["network_weights"])  # not part of the network weights

    tr2 = _trainer(tmp_path, "3d_fullres")
    tr2.load_checkpoint(path)
    assert tr2.critic is not None and not tr2.critic.training
    assert not any(p.requires_grad for p in tr2.critic.parameters())
    for k, v in tr.critic.state_dict().items():
        assert torch.equal(v, tr2.critic.state_dict()[k]), k

    monkeypatch.setattr(NnzooTrainer, "on_train_start", lambda self: None)
    monkeypatch.setattr(_TinyShapePrior, "pretrain_critic", lambda self, real=None: pytest.fail("retrained"))
    tr2.on_train_start()  # resumed: the restored critic is kept
    calls = []
    monkeypatch.setattr(_TinyShapePrior, "pretrain_critic", lambda self, real=None: calls.append(1))
    tr3 = _trainer(tmp_path, "2d")
    tr3.on_train_start()  # fresh run: pre-trains
    assert calls == [1]


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_cli_label_budget_and_resume_keeps_the_critic(in_prepared):
    """``--labeled 2`` run, then ``--continue``: the critic is pre-trained once and restored, not retrained."""
    did = str(in_prepared["id"])
    common = ["train", did, "2d", "0", "-tr", "nnUNetTrainerShapePrior", "-device", "cpu", "--iters", "2",
              "--labeled", "2", "--no-val", "--save-every", "1", "--hparam", "CRITIC_EPOCHS=1"]
    earlier = {p.name for p in Path(os.environ["nnUNet_results"]).glob("*/nnUNetTrainerShapePrior__*__2d_labeled2/fold_0/"
                                                                        "training_log_*.txt")}  # other tests' runs
    assert main([*common, "--epochs", "1", "--overwrite"]) == 0
    fold = next(Path(os.environ["nnUNet_results"]).glob("*/nnUNetTrainerShapePrior__*__2d_labeled2/fold_0"))
    critic = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)[CRITIC_KEY]
    assert json.loads((fold / "labeled_split.json").read_text())["num_labeled"] == 2
    assert main([*common, "--epochs", "2", "--continue"]) == 0
    logs = "".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")) if p.name not in earlier)
    # pre-trained (or taken from the cache of an earlier run on the same labeled cases) once, not on --continue
    assert logs.count("Shape critic pre-training (") + logs.count("Shape critic reused from") == 1
    record = json.loads((fold / "shape_critic.json").read_text())
    assert record["restored_from_checkpoint"] and Path(record["cache"]).parent.name == "shape_critics"
    assert "Shape critic restored from the checkpoint (not retrained)" in logs
    resumed = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 2
    for k, v in critic.items():
        assert torch.equal(v, resumed[CRITIC_KEY][k]), k

