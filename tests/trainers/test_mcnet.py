"""Tests of MC-Net+: sharpening, mutual consistency, ramp, the three decoders, loss composition and steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import deep_supervision_targets, make_trainer, tiny_dataset_json, tiny_plans

from nnzoo.trainers.mcnet import mutual_consistency_loss, nnUNetTrainerMCNet, sharpen, sigmoid_rampup
from nnzoo.trainers.networks.mcnet import MCNet

PATCH = {"3d_fullres": (16, 16, 16), "2d": (16, 16)}


# ----------------------------------------------------------------------------- sharpening, consistency, ramp
def test_sharpen_on_hand_made_values():
    p = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    s = sharpen(p, 0.1)
    expected = [0.0, 0.1 ** 10 / (0.1 ** 10 + 0.9 ** 10), 0.3 ** 10 / (0.3 ** 10 + 0.7 ** 10), 0.5,
                0.7 ** 10 / (0.7 ** 10 + 0.3 ** 10), 0.9 ** 10 / (0.9 ** 10 + 0.1 ** 10), 1.0]
    torch.testing.assert_close(s, torch.tensor(expected))
    assert float(s[5]) > 0.9999 and float(s[1]) < 1e-4  # pushed towards 0 / 1
    torch.testing.assert_close(s + sharpen(1 - p, 0.1), torch.ones_like(p))  # symmetric
    torch.testing.assert_close(sharpen(p, 1.0), p)  # T = 1: identity
    # channels are sharpened independently (no renormalisation): (0.5, 0.3, 0.2) -> (0.5, s(0.3), s(0.2))
    q = sharpen(torch.tensor([0.5, 0.3, 0.2]), 0.1)
    assert abs(float(q[0]) - 0.5) < 1e-7 and float(q.sum()) < 0.51
    # more than two exclusive classes: per-channel sharpening of (0.4, 0.35, 0.25) loses the distribution,
    # the renormalised form keeps argmax and sum: p_c^10 / sum_k p_k^10
    tri = torch.tensor([0.4, 0.35, 0.25])[None, :, None]
    assert float(sharpen(tri, 0.1).sum()) < 0.02
    r = sharpen(tri, 0.1, over_classes=True)
    hand = torch.tensor([0.4 ** 10, 0.35 ** 10, 0.25 ** 10])
    torch.testing.assert_close(r[0, :, 0], hand / hand.sum())
    assert int(r.argmax(1)) == 0 and float(r.sum()) == pytest.approx(1.0)
    # two classes: the renormalised form is the official formula
    two = torch.tensor([[0.3, 0.8], [0.7, 0.2]])[None]
    torch.testing.assert_close(sharpen(two, 0.1, over_classes=True), sharpen(two, 0.1))
    # half precision input: computed in float32, no NaN
    assert sharpen(torch.rand(100).half(), 0.1).dtype == torch.float32


def test_mutual_consistency_on_hand_made_tensors():
    """sum_{i != j} MSE(p_i, s(p_j)) against values computed by hand: with T = 0.5,
    s(p) = p^2 / (p^2 + (1 - p)^2), so s(0.25) = 0.1, s(0.75) = 0.9 and 0, 0.5, 1 stay."""
    p1, p2, p3 = torch.tensor([0.25, 1.0]), torch.tensor([0.75, 0.5]), torch.tensor([0.5, 0.0])
    # s(p1) = (0.1, 1), s(p2) = (0.9, 0.5), s(p3) = p3; the six ordered pairs, each a mean over 2 elements:
    # p1-s2 (-0.65, 0.5), p1-s3 (-0.25, 1), p2-s1 (0.65, -0.5), p2-s3 (0.25, 0.5), p3-s1 (0.4, -1),
    # p3-s2 (-0.4, -0.5)
    hand = (0.6725 + 1.0625 + 0.6725 + 0.3125 + 1.16 + 0.41) / 2  # 2.145 (without sharpening: 1.875)
    assert float(mutual_consistency_loss([p1, p2, p3], 0.5)) == pytest.approx(hand)
    assert float(mutual_consistency_loss([p1, p2, p3], 0.1)) != pytest.approx(hand, abs=0.1)  # T is used
    # renormalised over 3 classes (channel axis 1), T = 0.5: s(0.5, 0.25, 0.25) = (0.25, 0.0625, 0.0625)
    # / 0.375 = (2/3, 1/6, 1/6), s(1/3, 1/3, 1/3) = itself;
    # MSE(pA, sB) + MSE(pB, sA) = (1/36 + 2/144) / 3 + (1/9 + 2/36) / 3 = 5/72
    pa, pb = torch.tensor([0.5, 0.25, 0.25]).view(1, 3, 1), torch.full((1, 3, 1), 1 / 3)
    assert float(mutual_consistency_loss([pa, pb], 0.5, over_classes=True)) == pytest.approx(5 / 72)
    # per channel instead: s(pA) = (0.5, 0.1, 0.1), s(pB) = (0.2, 0.2, 0.2)
    per_channel = (0.3 ** 2 + 2 * 0.05 ** 2 + (1 / 6) ** 2 + 2 * (7 / 30) ** 2) / 3
    assert float(mutual_consistency_loss([pa, pb], 0.5)) == pytest.approx(per_channel)  # 0.0772
    # two decoders by hand: MSE(p1, s(p2)) + MSE(p2, s(p1)) with s(0.5) = 0.5
    a = torch.tensor([0.5, 1.0])
    b = torch.tensor([0.0, 0.5])
    hand = ((0.5 - 0.0) ** 2 + (1.0 - 0.5) ** 2) / 2 + ((0.0 - 0.5) ** 2 + (0.5 - 1.0) ** 2) / 2
    torch.testing.assert_close(mutual_consistency_loss([a, b]), torch.tensor(hand))
    # identical one-hot predictions agree with their own sharpened versions: zero loss
    onehot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(mutual_consistency_loss([onehot, onehot, onehot])) == 0.0


def test_consistency_gradients_reach_both_sides():
    # official code: no detach; the sharpened pseudo-label s(p_j) also carries gradient
    p1 = torch.tensor([0.3, 0.6], requires_grad=True)
    p2 = torch.tensor([0.55, 0.2], requires_grad=True)
    loss = torch.nn.functional.mse_loss(p1, sharpen(p2))  # one ordered pair
    loss.backward()
    assert p1.grad.abs().min() > 0 and p2.grad.abs().min() > 0
    p1.grad = p2.grad = None
    mutual_consistency_loss([p1, p2]).backward()
    assert p1.grad.abs().min() > 0 and p2.grad.abs().min() > 0


def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 40) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(20, 40) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(40, 40) == 1.0 and sigmoid_rampup(1000, 40) == 1.0
    assert sigmoid_rampup(-3, 40) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 0) == 1.0
    vals = [sigmoid_rampup(e, 10) for e in range(12)]
    assert vals == sorted(vals)


# ----------------------------------------------------------------------------- network
def _net(tmp_path, configuration: str, deep_supervision: bool = True) -> MCNet:
    plans = tiny_plans(configuration, PATCH[configuration])
    t = make_trainer(nnUNetTrainerMCNet, tmp_path, configuration, plans=plans)
    return t.build_network_architecture(t.plans_manager, t.configuration_manager, 1, 3, deep_supervision)


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_three_decoders_differ_only_in_upsampling(tmp_path, configuration):
    torch.manual_seed(0)
    net = _net(tmp_path, configuration)
    d0, d1, d2 = net.decoder.decoders
    modes = [[u.mode for u in d.upsamplings] for d in (d0, d1, d2)]
    assert [set(m) for m in modes] == [{"transpconv"}, {"linear"}, {"nearest"}]
    conv_t = torch.nn.ConvTranspose3d if configuration == "3d_fullres" else torch.nn.ConvTranspose2d
    assert all(isinstance(u.conv, conv_t) for u in d0.upsamplings)
    assert {u.interpolation for u in d1.upsamplings} == {"trilinear" if configuration == "3d_fullres" else "bilinear"}
    # everything except the upsampling modules has the same structure
    def rest(d):
        return {k: v.shape for k, v in d.state_dict().items() if not k.startswith("upsamplings.")}
    assert rest(d0) == rest(d1) == rest(d2)
    # functional check: give decoders 1 and 2 decoder 0's weights and upsampling -> identical outputs
    x = torch.randn(2, 1, *PATCH[configuration])
    net.eval()
    with torch.no_grad():
        skips = net.encoder(x)
        outs_before = [d(skips) for d in (d0, d1, d2)]
        assert not torch.allclose(outs_before[0][0], outs_before[1][0])
        for d in (d1, d2):
            d.load_state_dict({k: v for k, v in d0.state_dict().items() if not k.startswith("upsamplings.")},
                              strict=False)
            d.upsamplings = d0.upsamplings
        outs = [d(skips) for d in (d0, d1, d2)]
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            torch.testing.assert_close(a, b)


def test_inference_network_is_the_first_decoder(tmp_path):
    torch.manual_seed(0)
    net = _net(tmp_path, "3d_fullres")
    net_nods = _net(tmp_path, "3d_fullres", deep_supervision=False)
    assert list(net.state_dict()) == list(net_nods.state_dict())
    net_nods.load_state_dict(net.state_dict())  # strict
    x = torch.randn(2, 1, *PATCH["3d_fullres"])
    net.eval()
    net_nods.eval()
    with torch.no_grad():
        y = net_nods(x)
        every = net(x, all_decoders=True)
        first_ds = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, *PATCH["3d_fullres"])
    n_out = len(net.decoder.decoders[0].stages)
    assert len(every) == 3 and all(isinstance(o, list) and len(o) == n_out for o in every)
    torch.testing.assert_close(y, every[0][0])
    torch.testing.assert_close(first_ds[0], every[0][0])
    net.decoder.deep_supervision = False  # nnU-Net's set_deep_supervision_enabled
    assert all(not d.deep_supervision for d in net.decoder.decoders)
    with torch.no_grad():
        assert all(isinstance(o, torch.Tensor) for o in net(x, all_decoders=True))


# ----------------------------------------------------------------------------- trainer
def _trainer(tmp_path, configuration="3d_fullres", **kw):
    return make_trainer(nnUNetTrainerMCNet, tmp_path, configuration,
                        plans=tiny_plans(configuration, PATCH[configuration]), initialize=True, **kw)


def _batch(t, configuration, b=2):
    patch = PATCH[configuration]
    y = torch.randint(0, 3, (b, 1, *patch)).float()
    targets = deep_supervision_targets(t, y)
    return torch.randn(b, 1, *patch), targets


def test_ramp_and_weights_follow_the_official_values(tmp_path):
    t3 = make_trainer(nnUNetTrainerMCNet, tmp_path, "3d_fullres")
    t2 = make_trainer(nnUNetTrainerMCNet, tmp_path, "2d")
    t3.num_epochs = t2.num_epochs = 1000
    assert t3.consistency_weight(0) == pytest.approx(math.exp(-5))
    assert t3.consistency_weight(200) == pytest.approx(math.exp(-1.25))  # half of 0.4 * 1000 epochs
    assert t3.consistency_weight(400) == 1.0 and t3.consistency_weight(999) == 1.0
    assert t2.consistency_weight(500) == pytest.approx(0.1 * math.exp(-1.25))
    assert t2.consistency_weight(1000) == pytest.approx(0.1)
    t3.current_epoch = 200
    assert t3.consistency_weight() == pytest.approx(math.exp(-1.25))


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_loss_composition_and_every_parameter_gets_a_gradient(tmp_path, configuration):
    torch.manual_seed(0)
    t = _trainer(tmp_path, configuration)
    # under DDP nnU-Net weights the lowest deep-supervision output 1e-6 instead of 0
    w = list(t.loss.weight_factors)
    assert w[-1] == 0
    t.loss.weight_factors = tuple(w[:-1] + [1e-6])
    data, targets = _batch(t, configuration)
    unlabeled = torch.randn_like(data)
    t.optimizer.zero_grad()
    outputs = t.network(torch.cat((data, unlabeled)), all_decoders=True)
    total, sup, cons = t.compute_loss(outputs, targets, 2, 0.7)
    total.backward()
    missing = [n for n, p in t.network.named_parameters() if p.grad is None]
    assert missing == []  # DDP needs every parameter in the graph
    # composition: lambda * sum over decoders of nnU-Net's loss on the labeled half + w * consistency
    with torch.no_grad():
        ref_sup = sum(t.loss([o[:2] for o in out], targets) for out in outputs)
        assert t.sharpen_over_classes  # three mutually exclusive classes
        ref_cons = mutual_consistency_loss([torch.softmax(out[0].float(), 1) for out in outputs], 0.1,
                                           over_classes=True)
    torch.testing.assert_close(sup.detach(), ref_sup)
    torch.testing.assert_close(cons.detach(), ref_cons)
    lam = {"3d_fullres": 0.5, "2d": 1.0}[configuration]  # the official lambda (mcnet3d_v2 / mcnet2d_v2)
    torch.testing.assert_close(total.detach(), lam * ref_sup + 0.7 * ref_cons)
    # the unlabeled images enter the consistency term only (eval mode: no dropout, same masks)
    t.network.eval()
    with torch.no_grad():
        _, sup1, cons1 = t.compute_loss(t.network(torch.cat((data, unlabeled)), all_decoders=True), targets, 2, 0.7)
        _, sup2, cons2 = t.compute_loss(t.network(torch.cat((data, torch.randn_like(data))), all_decoders=True),
                                        targets, 2, 0.7)
    torch.testing.assert_close(sup2, sup1)
    assert not torch.allclose(cons2, cons1)


def test_train_step_sees_the_full_labeled_batch_plus_as_many_unlabeled(tmp_path):
    """As the official 3D code (2 labeled + 2 unlabeled): every labeled patch of nnU-Net's batch, one pass."""
    t = _trainer(tmp_path)
    t.batch_size = 2
    assert t.unlabeled_batch_size == 2
    data, targets = _batch(t, "3d_fullres")
    seen = []
    real_forward = t.network.forward

    def spy(x, all_decoders=False):
        seen.append((x.detach().clone(), all_decoders))
        return real_forward(x, all_decoders)

    t.network.forward = spy
    unlabeled = torch.randn(2, 1, *PATCH["3d_fullres"])
    t.dataloader_unlabeled = iter([{"data": unlabeled}])
    before = [p.detach().clone() for p in t.network.parameters()]
    out = t.train_step({"data": data, "target": targets})
    assert len(seen) == 1 and seen[0][1] is True
    torch.testing.assert_close(seen[0][0], torch.cat((data, unlabeled)))
    assert all(np.isfinite(out[k]) for k in ("loss", "supervised_loss", "consistency_loss"))
    assert any(not torch.equal(a, p) for a, p in zip(before, t.network.parameters()))
    t.batch_size = 5
    assert t.unlabeled_batch_size == 5


def test_ce_weight_zero_gives_official_dice_only_loss(tmp_path):
    class DiceOnly(nnUNetTrainerMCNet):
        CE_WEIGHT = 0.0

    t = make_trainer(DiceOnly, tmp_path, "3d_fullres", plans=tiny_plans("3d_fullres", PATCH["3d_fullres"]),
                     initialize=True)
    data, targets = _batch(t, "3d_fullres")
    logits = [torch.randn(2, 3, *tg.shape[2:]) for tg in targets]
    dice = t.loss.loss.dc(logits[0], targets[0])
    torch.testing.assert_close(t.loss.loss(logits[0], targets[0]), dice)


def test_region_plans_use_sigmoid_probabilities(tmp_path):
    dj = tiny_dataset_json(labels={"background": 0, "a": [1, 2], "b": 2}, regions_class_order=[1, 2])
    t = make_trainer(nnUNetTrainerMCNet, tmp_path, dataset_json=dj)
    logits = torch.randn(1, 2, 4, 4, 4)
    torch.testing.assert_close(t.probabilities(logits), torch.sigmoid(logits))
    t2 = make_trainer(nnUNetTrainerMCNet, tmp_path)
    torch.testing.assert_close(t2.probabilities(logits), torch.softmax(logits, 1))
