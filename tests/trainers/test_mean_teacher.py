"""Mean Teacher (trainers/mean_teacher.py): noise, dropout, teacher mode, ramp, loss weights, EMA and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import deep_supervision_targets, make_trainer, tiny_plans

from nnzoo.trainers.mean_teacher import add_dropout, consistency_mse, nnUNetTrainerMeanTeacher, noisy

PATCH = {"3d_fullres": (16, 16, 16), "2d": (16, 16)}


class _NoDropout(nnUNetTrainerMeanTeacher):
    ENCODER_DROPOUT_2D = (0.0,)
    BOTTLENECK_DROPOUT_3D = 0.0
    OUTPUT_DROPOUT_3D = 0.0


def _trainer(tmp_path, configuration="2d", cls=nnUNetTrainerMeanTeacher):
    return make_trainer(cls, tmp_path, configuration, plans=tiny_plans(configuration, PATCH[configuration]),
                        initialize=True)


def _batch(t, configuration, b=2):
    patch = PATCH[configuration]
    y = torch.randint(0, 3, (b, 1, *patch)).float()
    targets = deep_supervision_targets(t, y)
    return torch.randn(b, 1, *patch), targets


def test_noise_is_clipped_gaussian():
    torch.manual_seed(0)
    x = torch.zeros(200000)
    n = noisy(x, 0.1, 0.2)
    assert float(n.abs().max()) <= 0.2 + 1e-7
    assert 0.09 < float(n.std()) < 0.1  # a N(0, 0.01) clipped at 2 sigma
    assert float((n.abs() == 0.2).float().mean()) == pytest.approx(0.0455, abs=0.005)  # P(|z| > 2)


def test_consistency_mse_on_hand_made_values():
    a = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    b = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert float(consistency_mse(a, b)) == pytest.approx((0.04 + 0.04) / 4)


def test_weight_is_zero_in_the_2d_warm_up_only_then_the_ramp(tmp_path):
    t = make_trainer(nnUNetTrainerMeanTeacher, tmp_path, "2d")
    assert t.consistency_weight(0.0) == 0.0 and t.consistency_weight(0.03) == 0.0  # 1000 of 30000 iterations
    assert t.consistency_weight(0.034) == pytest.approx(0.1 * math.exp(-5 * 0.966 ** 2))
    assert t.consistency_weight(0.5) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert t.consistency_weight(1.0) == pytest.approx(0.1)
    t.num_epochs, t.num_iterations_per_epoch, t.ema_steps = 10, 10, 50
    assert t.training_progress() == 0.5 and t.consistency_weight() == pytest.approx(0.1 * math.exp(-5 * 0.25))
    t3 = make_trainer(nnUNetTrainerMeanTeacher, tmp_path, "3d_fullres")  # SSL4MIS's 3D script: no warm-up
    assert t3.consistency_weight(0.0) == pytest.approx(0.1 * math.exp(-5))
    assert t3.consistency_weight(0.02) == pytest.approx(0.1 * math.exp(-5 * 0.98 ** 2))


def test_relative_consistency_weight_is_the_official_one(tmp_path):
    # SSL4MIS: 0.5 * (Dice + CE) + 0.1 * MSE once ramped up, i.e. 0.2 per unit of supervised loss
    t = make_trainer(nnUNetTrainerMeanTeacher, tmp_path, "2d")
    assert t.loss_weights(1.0) == pytest.approx((1.0, 0.2))  # nnU-Net's supervised scale kept
    assert t.loss_weights(0.5) == pytest.approx((1.0, 0.2 * math.exp(-5 * 0.25)))
    literal = make_trainer(type("Literal", (nnUNetTrainerMeanTeacher,), {"KEEP_NNUNET_LOSS_SCALE": False}),
                           tmp_path, "2d")
    assert literal.loss_weights(1.0) == pytest.approx((0.5, 0.1))  # the official form, same ratio


def test_dropout_places_and_state_dict(tmp_path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    for cfg in ("2d", "3d_fullres"):
        t = _trainer(tmp_path, cfg)
        plain = nnUNetTrainer.build_network_architecture(t.plans_manager, t.configuration_manager, 1, 3, True)
        assert set(t.network.state_dict()) == set(plain.state_dict())  # checkpoints interchange
    t2 = _trainer(tmp_path, "2d")
    for s, stage in enumerate(t2.network.encoder.stages):  # SSL4MIS's UNet: between the stage's two convs
        blocks = [m for m in stage.modules() if type(m).__name__ == "ConvDropoutNormReLU"]
        assert blocks[0].nnzoo_dropout.p == (0.05, 0.1, 0.2, 0.3, 0.5)[min(s, 4)]
        assert not any(hasattr(b, "nnzoo_dropout") for b in blocks[1:])
    assert not hasattr(t2.network.decoder, "nnzoo_bottleneck_dropout")


def test_3d_dropout_acts_on_the_bottleneck_and_before_the_head(tmp_path):
    t = _trainer(tmp_path, "3d_fullres", cls=_NoDropout)
    net = add_dropout(t.network, bottleneck=1.0)  # everything dropped: the bottleneck no longer matters
    net.train()
    net.decoder.deep_supervision = False
    skips = net.encoder(torch.randn(1, 1, *PATCH["3d_fullres"]))
    other = [*skips[:-1], torch.randn_like(skips[-1])]
    with torch.no_grad():
        torch.testing.assert_close(net.decoder(skips), net.decoder(other))
        net.eval()
        assert not torch.allclose(net.decoder(skips), net.decoder(other))  # eval: no dropout
    net = add_dropout(_trainer(tmp_path, "3d_fullres", cls=_NoDropout).network, output=1.0)
    net.train()
    net.decoder.deep_supervision = False
    with torch.no_grad():
        y = net(torch.randn(1, 1, *PATCH["3d_fullres"]))
    bias = net.decoder.seg_layers[-1].bias
    torch.testing.assert_close(y, bias.view(1, -1, 1, 1, 1).expand_as(y))  # the head saw only zeros


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_teacher_prediction_is_perturbed_by_dropout(tmp_path, configuration):
    torch.manual_seed(0)
    t = _trainer(tmp_path, configuration)
    t.NOISE_STD = 0.0  # isolate the dropout from the input noise
    x = torch.randn(2, 1, *PATCH[configuration])
    a, b = t.teacher_probabilities(x), t.teacher_probabilities(x)
    assert t.teacher.module.training
    assert (a - b).abs().max() > 1e-3  # two calls on the same input differ
    z = _trainer(tmp_path, configuration, cls=_NoDropout)
    z.NOISE_STD = 0.0
    a, b = z.teacher_probabilities(x), z.teacher_probabilities(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    z.teacher.module.eval()  # InstanceNorm without running statistics: train mode == eval mode
    with torch.no_grad():
        torch.testing.assert_close(z.probabilities(z.teacher.predict(x)), a)


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_train_step_loss_teacher_input_and_ema(tmp_path, configuration, monkeypatch):
    torch.manual_seed(0)
    t = _trainer(tmp_path, configuration, cls=_NoDropout)  # deterministic forwards to recompute the loss
    t.num_epochs, t.num_iterations_per_epoch = 10, 10
    t.ema_steps = 50  # progress 0.5
    data, targets = _batch(t, configuration)
    unlabeled = torch.randn_like(data)
    t.dataloader_unlabeled = iter([{"data": unlabeled}])
    seen = {}
    real_noisy = noisy

    def spy_noisy(x, std, clip):
        seen["teacher_clean"] = x.detach().clone()
        seen["teacher_in"] = real_noisy(x, std, clip)
        return seen["teacher_in"]

    monkeypatch.setattr("nnzoo.trainers.mean_teacher.noisy", spy_noisy)
    from nnzoo.trainers.semisup import EMATeacher

    t.teacher = EMATeacher(t.network)
    teacher_before = {k: v.clone() for k, v in t.teacher.module.state_dict().items()}
    student_before = {k: v.clone() for k, v in t.network.state_dict().items()}
    t.network.train()
    with torch.no_grad():
        out = t.network(torch.cat((data, unlabeled)))
    out_ = t.train_step({"data": data, "target": targets})
    torch.testing.assert_close(seen["teacher_clean"], unlabeled)  # the teacher sees the unlabeled images + noise
    assert not torch.equal(seen["teacher_in"], unlabeled)
    with torch.no_grad():
        sup = t.loss([o[:2] for o in out], targets)
        tp = torch.softmax(_load(t.teacher.module, teacher_before)(seen["teacher_in"])[0].float(), 1)
        cons = ((torch.softmax(out[0][2:].float(), 1) - tp) ** 2).mean()  # student on the unlabeled half
    w = 0.2 * math.exp(-5 * 0.25)  # the official 0.1 relative to 0.5 * (Dice + CE), ramped at 0.5
    assert float(out_["supervised_loss"]) == pytest.approx(float(sup), rel=1e-4)
    assert float(out_["consistency_loss"]) == pytest.approx(float(cons), rel=1e-4)
    assert float(out_["loss"]) == pytest.approx(float(sup) + w * float(cons), rel=1e-4)
    # EMA with SSL4MIS's decay min(1 - 1 / (step + 1), 0.99) of update 50: 50 / 51
    assert t.ema_steps == 51
    d = 50 / 51
    for k, v in t.teacher.module.state_dict().items():
        if v.is_floating_point():
            expected = d * teacher_before[k] + (1 - d) * t.network.state_dict()[k]
            torch.testing.assert_close(v, expected, msg=k)
    assert any(not torch.equal(v, student_before[k]) for k, v in t.network.state_dict().items())


def _load(module, state):
    import copy

    m = copy.deepcopy(module)
    m.load_state_dict(state)
    m.eval()
    return m


def test_first_update_copies_the_student_then_the_decay_grows(tmp_path):
    t = _trainer(tmp_path)
    assert [t.ema_decay(s) for s in (0, 1, 3, 99, 1000)] == [0.0, 0.5, 0.75, 0.99, 0.99]
    data, targets = _batch(t, "2d")
    t.dataloader_unlabeled = iter([{"data": torch.randn_like(data)}] * 2)
    before = {k: v.clone() for k, v in t.network.state_dict().items()}
    t.train_step({"data": data, "target": targets})  # update 0: decay 0, the teacher is the new student
    assert t.ema_steps == 1
    for k, v in t.teacher.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, t.network.state_dict()[k], msg=k)
    assert any(not torch.equal(v, before[k]) for k, v in t.network.state_dict().items())


def test_ema_steps_and_teacher_survive_a_checkpoint(tmp_path):
    t = _trainer(tmp_path)
    data, targets = _batch(t, "2d")
    t.dataloader_unlabeled = iter([{"data": torch.randn_like(data)}] * 3)
    for _ in range(3):
        t.train_step({"data": data, "target": targets})
    path = str(tmp_path / "ck.pth")
    t.save_checkpoint(path)
    t2 = _trainer(tmp_path)
    t2.load_checkpoint(path)
    assert t2.ema_steps == 3
    for k, v in t.teacher.module.state_dict().items():
        assert torch.equal(v, t2.teacher.module.state_dict()[k]), k
    assert all(np.isfinite(float(p.sum())) for p in t2.teacher.module.parameters())
