"""nnUNetTrainerDCAC: the dynamic heads on hand-made tensors, the domains it needs, a training step, and a
model trained on three domains predicted by nnU-Net's own predictor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    STANDIN_DOMAINS,
    batch_keys,
    dataset_dir,
    deep_supervision_targets,
    make_trainer,
    tiny_dataset_json,
    tiny_plans,
)
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnzoo.trainers import nnunet_compat as compat
from nnzoo.trainers.dcac import (
    PLANS_SOURCE_DOMAINS,
    batch_domain_indices,
    domain_classification_loss,
    nnUNetTrainerDCAC,
    source_domains,
)
from nnzoo.trainers.domains import DomainsError
from nnzoo.trainers.networks.dcac import (
    content_adaptive_head,
    domain_adaptive_conv,
    domain_code,
    dynamic_conv,
    dynamic_param_count,
    split_dynamic_params,
)
from nnzoo.trainers.registry import get_trainer_info

PATCH = {"2d": (32, 32), "3d_fullres": (16, 16, 16)}


def _net(cfg: str = "2d", domains: list[str] | None = None, deep_supervision: bool = False):
    plans = tiny_plans(cfg, PATCH[cfg])
    if domains is not None:
        plans[PLANS_SOURCE_DOMAINS] = domains
    pm = PlansManager(plans)
    torch.manual_seed(0)
    return nnUNetTrainerDCAC.build_network_architecture(pm, pm.get_configuration(cfg), 1, 3,
                                                        enable_deep_supervision=deep_supervision)


# ------------------------------------------------------------------------------------------ dynamic convolutions
def test_split_dynamic_params_layout_weights_first_output_major():
    params = torch.arange(2 * 3 + 3 + 3 * 1 + 1, dtype=torch.float32)[None]  # channels 2 -> 3 -> 1
    (w1, b1), (w2, b2) = split_dynamic_params(params, [2, 3, 1])
    assert w1.tolist() == [[[0, 1], [2, 3], [4, 5]]] and w2.tolist() == [[[6, 7, 8]]]
    assert b1.tolist() == [[9, 10, 11]] and b2.tolist() == [[12]]
    assert dynamic_param_count([2, 3, 1]) == 13
    with pytest.raises(ValueError, match="expected"):
        split_dynamic_params(params[:, :-1], [2, 3, 1])


@pytest.mark.parametrize("ndim", [2, 3])
def test_dynamic_conv_is_each_samples_own_convolution(ndim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, *[5] * ndim, generator=g)
    w, b = torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, generator=g)
    y = dynamic_conv(x, w, b)
    conv = F.conv2d if ndim == 2 else F.conv3d
    for n in range(3):  # a regular convolution of sample n with the weights generated for it
        ref = conv(x[n:n + 1], w[n].reshape(2, 4, *[1] * ndim), b[n])
        torch.testing.assert_close(y[n:n + 1], ref)
    voxel = (0,) * ndim  # by hand at one voxel
    torch.testing.assert_close(y[(1, slice(None), *voxel)], w[1] @ x[(1, slice(None), *voxel)] + b[1])


def test_domain_adaptive_conv_by_hand():
    """``leaky_relu(x - norm(W x + b))``: with W = 0 the conv output is the bias map, whose per-sample
    normalisation is computed by hand."""
    x = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]]]])  # (1, K=2, 1, 2)
    params = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 3.0]])  # W = 0, b = (1, 3)
    # conv output: channel 0 all 1, channel 1 all 3 -> mean 2, std 1 -> normalised -1 / +1
    expect = F.leaky_relu(x - torch.tensor([-1.0, 1.0]).reshape(1, 2, 1, 1))
    torch.testing.assert_close(domain_adaptive_conv(x, params), expect, atol=1e-4, rtol=1e-4)


def test_content_adaptive_head_shapes_and_per_sample_parameters():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 6, generator=g)
    params = torch.randn(2, dynamic_param_count([4, 4, 4, 3]), generator=g)
    y = content_adaptive_head(x, params, 3)
    assert y.shape == (2, 3, 6, 6)
    # sample 0 alone with its parameters gives the same: no mixing between samples
    torch.testing.assert_close(content_adaptive_head(x[:1], params[:1], 3), y[:1])
    y_other = content_adaptive_head(x[:1], params[1:], 3)
    assert not torch.allclose(y_other, y[:1])


def test_domain_code_one_hot_for_known_softmax_for_unknown():
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    code = domain_code(logits, torch.tensor([2, -1]))
    assert code[0].tolist() == [0.0, 0.0, 1.0]
    e = np.exp(2.0)
    np.testing.assert_allclose(code[1].numpy(), [e / (e + 2), 1 / (e + 2), 1 / (e + 2)], rtol=1e-6)
    torch.testing.assert_close(domain_code(logits), torch.softmax(logits, 1))


# ---------------------------------------------------------------------------------------------- the network
def test_domain_code_selects_the_domain_adaptive_parameters():
    net = _net(domains=["a", "b", "c"]).eval()
    assert net.domain_classifier.out_features == 3 and net.head_channels == 9
    code = torch.eye(3).reshape(3, 3, 1, 1)
    params = net.domain_controller(code).flatten(1)
    w, b = net.domain_controller.weight.flatten(1), net.domain_controller.bias
    for d in range(3):  # a one-hot code picks column d of the controller
        torch.testing.assert_close(params[d], w[:, d] + b)
    assert not torch.allclose(params[0], params[1])
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        outs = [net(x, domain_index=torch.tensor([d])) for d in range(3)]
        predicted = net(x)  # test time: the classifier's softmax
        logits = net(x, return_domain_logits=True)[1]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    # a code equal to the predicted softmax reproduces the test-time output
    soft = torch.softmax(logits, 1)
    net_code = net.domain_controller(soft.reshape(1, 3, 1, 1)).flatten(1)
    expected = sum(soft[0, d] * (w[:, d]) for d in range(3)) + b
    torch.testing.assert_close(net_code[0], expected, atol=1e-6, rtol=1e-5)
    assert predicted.shape == (1, 3, 32, 32)


def test_content_adaptive_parameters_change_with_content_only():
    net = _net().eval()
    seen = []
    net.content_controller.register_forward_hook(lambda m, i, o: seen.append(o.flatten(1)))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        net(x, domain_index=torch.tensor([0, 0]))
        net(x, domain_index=torch.tensor([1, 1]))  # another domain: same content parameters
        net(torch.flip(x, [0]), domain_index=torch.tensor([0, 0]))
    torch.testing.assert_close(seen[0], seen[1])
    assert not torch.allclose(seen[0][0], seen[0][1])  # two images, two sets of parameters
    torch.testing.assert_close(seen[2], torch.flip(seen[0], [0]))  # they follow their image


def test_samples_do_not_mix_and_domain_loss_trains_the_classifier_only():
    net = _net(deep_supervision=True).train()
    x = torch.randn(2, 1, 32, 32)
    out, logits = net(x, domain_index=torch.tensor([0, 1]), return_domain_logits=True)
    out_swapped = net(x.flip(0), domain_index=torch.tensor([1, 0]))
    for a, b in zip(out, out_swapped):
        torch.testing.assert_close(a, b.flip(0), atol=1e-5, rtol=1e-4)
    domain_classification_loss(logits, torch.tensor([0, 1])).backward()
    grads = {k: p.grad for k, p in net.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for k, g in grads.items() if k.startswith("domain_classifier"))
    assert all(g is None for k, g in grads.items() if not k.startswith("domain_classifier"))


def test_deep_supervision_outputs_share_the_generated_parameters():
    net = _net(deep_supervision=True).train()
    calls = []
    net.domain_controller.register_forward_hook(lambda *a: calls.append("dac"))
    net.content_controller.register_forward_hook(lambda *a: calls.append("cac"))
    out = net(torch.randn(1, 1, 32, 32), domain_index=torch.tensor([0]))
    assert len(out) > 1 and calls == ["dac", "cac"]  # generated once, used by every output


# ------------------------------------------------------------------------------------------------- domains
def test_source_domains_refusals_name_dataset_and_fix():
    kw = {"trainer": "nnUNetTrainerDCAC", "dataset": "Dataset9_X", "base": "/pre/Dataset9_X"}
    with pytest.raises(DomainsError) as e:
        source_domains(None, ["a", "b"], **kw)
    msg = str(e.value)
    assert "\n" not in msg and "Dataset9_X" in msg and "no domains.json" in msg and "--domains FILE" in msg
    with pytest.raises(DomainsError, match=r"only one \('s1'\)"):
        source_domains({"a": "s1", "b": "s1", "u": "s2"}, ["a", "b"], **kw)  # s2 only unlabeled
    with pytest.raises(DomainsError, match="1 labeled case.*no domain.*b"):
        source_domains({"a": "s1"}, ["a", "b"], **kw)
    assert source_domains({"a": "s2", "b": "s1", "c": "s2"}, ["a", "b", "c"], **kw) == ["s1", "s2"]
    assert batch_domain_indices(["b", "a", "u"], {"a": "s2", "b": "s1", "u": "s3"}, ["s1", "s2"]) == [0, 1, -1]


def test_trainer_refuses_without_domains_and_with_one(tmp_path):
    trainer = make_trainer(nnUNetTrainerDCAC, tmp_path, "2d", plans=tiny_plans("2d", PATCH["2d"]))
    domains = Path(trainer.preprocessed_dataset_folder_base) / "domains.json"
    folder = Path(trainer.preprocessed_dataset_folder)
    folder.mkdir(parents=True)
    for case in STANDIN_DOMAINS:
        (folder / f"{case}.b2nd").touch()
    domains.write_text(json.dumps(dict.fromkeys(STANDIN_DOMAINS, "only")))
    with pytest.raises(DomainsError, match="only one \\('only'\\)"):
        trainer.initialize()
    domains.unlink()
    with pytest.raises(DomainsError, match="no domains.json"):
        trainer.initialize()
    assert get_trainer_info("nnUNetTrainerDCAC").needs_domains


@pytest.mark.parametrize("cfg", ["2d", "3d_fullres"])
def test_train_step_and_domains_in_plans(cfg, tmp_path):
    plans = tiny_plans(cfg, PATCH[cfg])
    plans["configurations"][cfg]["batch_size"] = 2
    torch.manual_seed(0)
    trainer = make_trainer(nnUNetTrainerDCAC, tmp_path, cfg, plans=plans, initialize=True)
    assert trainer.plans_manager.plans[PLANS_SOURCE_DOMAINS] == ["site_a", "site_b"]
    assert trainer.network.domain_classifier.out_features == 2
    label = torch.randint(0, 3, (2, 1, *[s // 4 for s in PATCH[cfg]])).float()
    label = F.interpolate(label, size=PATCH[cfg], mode="nearest")
    batch = {"data": torch.randn(2, 1, *PATCH[cfg]), "target": deep_supervision_targets(trainer, label),
             "keys": batch_keys(2)}
    out = trainer.train_step(batch)
    assert set(out) == {"loss", "seg_loss", "domain_loss"} and all(np.isfinite(v) for v in out.values())
    np.testing.assert_allclose(out["loss"], out["seg_loss"] + out["domain_loss"], rtol=1e-5)
    weights = compat.deep_supervision_weights(trainer.loss)  # highest resolution first; nnU-Net gives the
    heads = len(trainer.network.decoder.seg_layers)  # coarsest output weight 0 outside DDP (1e-6 under DDP)
    unused = tuple(f"decoder.seg_layers.{heads - 1 - i}." for i, w in enumerate(weights) if w == 0)
    missing = [k for k, p in trainer.network.named_parameters() if p.grad is None and not k.startswith(unused)]
    assert not missing, f"parameters without gradient (DDP needs them all): {missing[:5]}"
    with pytest.raises(KeyError, match="keys"):
        trainer.train_step({"data": batch["data"], "target": batch["target"]})


@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_three_domain_model_predicts_through_nnunet_predictor(in_prepared, tmp_path):
    """Trained on three domains through the CLI; nnU-Net's own ``nnUNetv2_predict`` (which builds the network
    from the model folder's plans.json) and ``nnzoo predict`` load it and agree.

    The shared toy dataset's two domains are replaced by three for the duration of the test (fold 1, which
    no other DCAC test trains)."""
    import SimpleITK as sitk

    from nnzoo.pipeline.cli import main
    from nnzoo.trainers.nnunet_ext import EXT_TRAINER_DIR

    did = str(in_prepared["id"])
    files = [dataset_dir(v, in_prepared["id"]) / "domains.json" for v in ("nnUNet_raw", "nnUNet_preprocessed")]
    saved = [f.read_text() for f in files]
    three = {c: f"site_{i % 3}" for i, c in enumerate(sorted(json.loads(saved[0])))}
    try:
        for f in files:
            f.write_text(json.dumps(three))
        assert main(["train", did, "2d", "1", "-tr", "nnUNetTrainerDCAC", "-device", "cpu", "--epochs", "1",
                     "--iters", "2", "--no-val", "--overwrite"]) == 0
    finally:
        for f, text in zip(files, saved):
            f.write_text(text)
    model = dataset_dir("nnUNet_results", in_prepared["id"]) / "nnUNetTrainerDCAC__nnUNetPlans__2d"
    assert json.loads((model / "plans.json").read_text())[PLANS_SOURCE_DOMAINS] == ["site_0", "site_1", "site_2"]
    ckpt = torch.load(model / "fold_1" / "checkpoint_final.pth", weights_only=False)
    assert ckpt["network_weights"]["domain_classifier.weight"].shape[0] == 3
    img = sorted(in_prepared["src"]["images"].iterdir())[0]
    ours, nn_in, stock = tmp_path / "in", tmp_path / "nn_in", tmp_path / "stock"
    ours.mkdir()
    nn_in.mkdir()
    shutil.copy(img, ours / img.name)
    shutil.copy(img, nn_in / f"{img.name[:-4]}_0000.png")
    assert main(["predict", "-i", str(ours), "-o", str(tmp_path / "out"), "-d", did, "-c", "2d", "-tr",
                 "nnUNetTrainerDCAC", "-f", "1", "-device", "cpu", "--disable-tta", "--exact"]) == 0
    env = dict(os.environ, nnUNet_extTrainer=EXT_TRAINER_DIR)
    subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(nn_in), "-o", str(stock),
                    "-d", did, "-c", "2d", "-tr", "nnUNetTrainerDCAC", "-f", "1", "-device", "cpu",
                    "--disable_tta"], check=True, capture_output=True, env=env)
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / img.name)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(stock / img.name)))
    np.testing.assert_array_equal(a, b)


def test_registry_entry():
    info = get_trainer_info("nnUNetTrainerDCAC")
    assert info.domain_generalisation and info.needs_domains and info.dims == ("2d", "3d")
    assert "ShishuaiHu/DCAC" in info.official_code
    assert tiny_dataset_json()["labels"]  # the tiny dataset's 3 classes are what the tests above build for
