"""ONNX export (``export-model --onnx``) and the ONNX Runtime network for nnU-Net's predictor.

Tiny networks (nnU-Net's tiny test plans: 2D patch 28x32, 3D 24x28x32; CoTr with a small
architecture), nothing trained. Agreement with PyTorch: max abs difference below 1e-3 and at
least 99.9 % of the argmax equal, per patch and end to end through ``nnUNetPredictor``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="needs nnzoo[onnx]")
pytest.importorskip("onnxscript", reason="needs nnzoo[onnx]")

sys.path.insert(0, str(Path(__file__).parent))
from test_export_naming import DATASET, MODEL, build_model_folder  # noqa: E402

from nnzoo.pipeline.errors import NnzooError  # noqa: E402
from nnzoo.pipeline.onnx_backend import (  # noqa: E402
    INSTALL_HINT,
    OPSET,
    OnnxFoldsNetwork,
    export_onnx,
    onnx_available,
    onnx_files,
    read_onnx_metadata,
)


def _network(configuration: str, trainer_class: type | None = None, seed: int = 0):
    """``(network, patch_size, num_input_channels)`` as prediction builds it, on the tiny plans."""
    from helpers import tiny_dataset_json, tiny_plans
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(tiny_plans(configuration))
    cm, dj = pm.get_configuration(configuration), tiny_dataset_json()
    num_in = determine_num_input_channels(pm, cm, dj)
    torch.manual_seed(seed)
    net = (trainer_class or nnUNetTrainer).build_network_architecture(
        pm, cm, num_in, pm.get_label_manager(dj).num_segmentation_heads, enable_deep_supervision=False)
    return net.eval(), [int(p) for p in cm.patch_size], num_in


def _agree(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-3) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    assert float((a - b).abs().max()) < tol
    assert float((a.argmax(1) == b.argmax(1)).float().mean()) >= 0.999


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_export_agrees_with_torch(tmp_path, configuration):
    net, patch, num_in = _network(configuration)
    meta = export_onnx(net, path=tmp_path / "net.onnx", patch_size=patch, num_input_channels=num_in,
                       what=f"nnUNetTrainer's {configuration} network")
    assert meta["opset"] == OPSET == 20 and meta["patch_size"] == patch and meta["num_input_channels"] == num_in
    assert meta["num_outputs"] == 3 and meta["max_abs_diff"] < 1e-3
    onnx_net = OnnxFoldsNetwork([tmp_path / "net.onnx"], device="cpu")
    assert onnx_net.input_shape == (num_in, *patch) and onnx_net.providers == ["CPUExecutionProvider"]
    for n in (1, 3):  # the batch axis is dynamic
        x = torch.randn(n, num_in, *patch)
        with torch.no_grad():
            _agree(onnx_net(x), net(x))
    with pytest.raises(NnzooError, match=r"input of shape \[1, 1, 8, 8"):
        onnx_net(torch.zeros(1, 1, *([8] * len(patch))))


def test_folds_selected_by_load_state_dict(tmp_path):
    nets, files = [], []
    for i in range(2):
        net, patch, num_in = _network("2d", seed=i)
        export_onnx(net, path=tmp_path / f"f{i}.onnx", patch_size=patch, num_input_channels=num_in)
        nets.append(net)
        files.append(tmp_path / f"f{i}.onnx")
    onnx_net = OnnxFoldsNetwork(files)
    params = onnx_net.fold_parameters()
    assert len(params) == 2 and all(set(p) == {"fold_index"} for p in params)
    # what nnU-Net's predictor does with a network: .to(device), .eval(), load_state_dict per fold, call it
    assert onnx_net.to(torch.device("cpu")).eval() is onnx_net and list(onnx_net.parameters()) == []
    x = torch.randn(2, num_in, *patch)
    with torch.inference_mode():
        outs = []
        for p, net in zip(params, nets):
            onnx_net.load_state_dict(p)
            outs.append(onnx_net(x))
            _agree(outs[-1], net(x))
    assert float((outs[0] - outs[1]).abs().max()) > 1e-2  # two different folds, really switched
    assert int(onnx_net.state_dict()["fold_index"]) == 1 == onnx_net.fold
    onnx_net.load_state_dict({"fold_index": 0})
    assert onnx_net.fold == 0
    with pytest.raises(NnzooError, match="fold index 2 out of range"):
        onnx_net.load_state_dict({"fold_index": torch.tensor(2)})
    with pytest.raises(NnzooError, match="fold_parameters"):
        onnx_net.load_state_dict(nets[0].state_dict())  # PyTorch weights are not for this network
    compiled = torch.compile(onnx_net)  # nnUNet_compile=1: the predictor compiles; forward stays ONNX Runtime's
    compiled._orig_mod.load_state_dict(params[1])
    with torch.inference_mode():
        _agree(compiled(x), outs[1], tol=1e-6)


def test_folds_must_have_the_same_input(tmp_path):
    for cfg in ("2d", "3d_fullres"):
        net, patch, num_in = _network(cfg)
        export_onnx(net, path=tmp_path / f"{cfg}.onnx", patch_size=patch, num_input_channels=num_in, verify=False)
    with pytest.raises(NnzooError, match="3d_fullres.onnx: its input is"):
        OnnxFoldsNetwork([tmp_path / "2d.onnx", tmp_path / "3d_fullres.onnx"])
    with pytest.raises(NnzooError, match="no .onnx files"):
        OnnxFoldsNetwork([])
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(NnzooError, match="bad.onnx: not a readable ONNX network"):
        OnnxFoldsNetwork([tmp_path / "bad.onnx"])


def test_onnx_files_names_the_missing_file(tmp_path):
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "network.onnx").write_bytes(b"")
    assert onnx_files(tmp_path, [0]) == [tmp_path / "fold_0" / "network.onnx"]
    with pytest.raises(NnzooError, match=r"fold_all/network.onnx: not found.*--onnx"):
        onnx_files(tmp_path, [0, "all"])


def test_missing_packages_are_one_clear_error(tmp_path, monkeypatch, capsys):
    from nnzoo.pipeline.cli import main

    model = build_model_folder(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("onnx") else
                        real(name, *a))
    assert not onnx_available()
    with pytest.raises(NnzooError, match=f"ONNX Runtime is not installed.*{re.escape(INSTALL_HINT)}"):
        OnnxFoldsNetwork([tmp_path / "x.onnx"])
    assert main(["export-model", "-m", str(model), "-o", str(tmp_path / "m.zip"), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --onnx: onnx, onnxscript, onnxruntime not installed") and INSTALL_HINT in err
    assert not (tmp_path / "m.zip").exists()


class _DataDependent(torch.nn.Module):
    def forward(self, x):
        return x if x.mean() > 0 else -x  # control flow on values: torch.export cannot trace it


class _NoOnnxOp(torch.nn.Module):
    def forward(self, x):
        return x + torch.linalg.eigh(x @ x.transpose(-1, -2))[0].unsqueeze(-1)  # no ONNX translation


class _DeepSupervision(torch.nn.Module):
    def forward(self, x):
        return [x, x]


@pytest.mark.parametrize("module, reason", [(_DataDependent, "GuardOnDataDependentSymNode: Could not guard"),
                                            (_NoOnnxOp, "DispatchError: No ONNX function found")])
def test_unexportable_network_is_refused(tmp_path, module, reason):
    with pytest.raises(NnzooError) as e:
        export_onnx(module(), path=tmp_path / "n.onnx", patch_size=[16, 16], num_input_channels=1,
                    what="MyTrainer's 2d network")
    assert str(e.value).startswith(f"--onnx: MyTrainer's 2d network cannot be exported to ONNX opset 20 ({reason}")
    assert str(e.value).endswith("export without --onnx") and "\n" not in str(e.value) and "\x1b" not in str(e.value)
    assert not (tmp_path / "n.onnx").exists()


def test_deep_supervision_output_is_refused(tmp_path):
    with pytest.raises(NnzooError, match="returns list, not one tensor"):
        export_onnx(_DeepSupervision(), path=tmp_path / "n.onnx", patch_size=[16, 16], num_input_channels=1)


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_cotr_exports_with_grid_sample(tmp_path, configuration):
    """CoTr's deformable attention samples with ``grid_sample``: ONNX ``GridSample`` (N-D from opset 20)."""
    import onnx

    from nnzoo.trainers.cotr import nnUNetTrainerCoTr

    class SmallCoTr(nnUNetTrainerCoTr):
        STEM_CHANNELS, STAGE_CHANNELS, BLOCKS_PER_STAGE = 8, (8, 16, 16), (1, 1, 1)
        D_MODEL, N_HEADS, N_POINTS, N_LAYERS, FFN_DIM = 16, 2, 2, 1, 32

    net, patch, num_in = _network(configuration, SmallCoTr)
    f = tmp_path / "cotr.onnx"
    meta = export_onnx(net, path=f, patch_size=patch, num_input_channels=num_in)
    assert meta["opset"] == 20 and meta["max_abs_diff"] < 1e-3
    model = onnx.load(f)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [20]
    assert any(n.op_type == "GridSample" for n in model.graph.node)
    x = torch.randn(2, num_in, *patch)
    with torch.no_grad():
        _agree(OnnxFoldsNetwork([f])(x), net(x))


@pytest.mark.parametrize("configuration, folds", [("2d", (0, 1)), ("3d_fullres", (0,))])
def test_export_onnx_then_predict_like_torch(tmp_path, monkeypatch, configuration, folds):
    """export-model --onnx (named as nnU-Net does), unzip, nnU-Net's predictor with the ONNX folds vs PyTorch."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnzoo.pipeline.cli import main
    from nnzoo.pipeline.predict import load_model, resolve_model

    build_model_folder(tmp_path, configuration=configuration, folds=folds)
    zip_file = tmp_path / "m.zip"
    assert main(["export-model", "-d", "901", "-c", configuration, "-o", str(zip_file), "--onnx"]) == 0
    rel = f"{DATASET}/{MODEL.format(configuration)}"
    with zipfile.ZipFile(zip_file) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "unzipped")
    for f in folds:
        assert {f"{rel}/fold_{f}/network.onnx", f"{rel}/fold_{f}/network_onnx.json"} <= names
    assert main(["install-model", str(zip_file), "--overwrite"]) == 0  # install-model takes the ONNX files too
    assert len(onnx_files(tmp_path / "nnUNet_results" / rel, folds)) == len(folds)
    model = tmp_path / "unzipped" / rel
    meta = read_onnx_metadata(model / "fold_0" / "network.onnx")
    assert meta["opset"] == 20 and meta["trainer"] == "nnUNetTrainer" and meta["configuration"] == configuration
    assert meta["num_outputs"] == 3 and meta["num_input_channels"] == 1 and meta["max_abs_diff"] < 1e-3

    network, pm, cm, parameters, dj, trainer_name, mirror = load_model(
        resolve_model(model_dir=model, folds=[str(f) for f in folds]))
    assert meta["inference_allowed_mirroring_axes"] == mirror  # the checkpoint's (None: never trained)
    mirror = tuple(range(len(cm.patch_size)))  # mirror every axis, as a trained nnU-Net model does
    onnx_net = OnnxFoldsNetwork(onnx_files(model, folds), device="cpu")
    shape = (1, 40, 45) if configuration == "2d" else (24, 28, 40)  # several tiles
    image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    spacing = [999.0, *cm.spacing] if configuration == "2d" else list(cm.spacing)
    results = []
    for net, params in ((network, parameters), (onnx_net, onnx_net.fold_parameters())):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, device=torch.device("cpu"),
                                    perform_everything_on_device=False, verbose=False, allow_tqdm=False)
        predictor.manual_initialization(net, pm, cm, params, dj, trainer_name, mirror)
        seg, probs = predictor.predict_single_npy_array(image, {"spacing": spacing}, None, None, True)
        results.append((seg, probs))
    (seg_t, p_t), (seg_o, p_o) = results
    assert seg_t.shape == shape and float(np.abs(p_t - p_o).max()) < 1e-3
    assert float((seg_t == seg_o).mean()) >= 0.999


def test_predict_backend_onnxruntime_from_an_onnx_export(tmp_path):
    """``nnzoo predict --backend onnxruntime -m <unzipped export>`` gives the torch backend's segmentations;
    a model folder without ONNX networks is one clear error naming the missing file."""
    import SimpleITK as sitk

    from nnzoo.pipeline.cli import main

    build_model_folder(tmp_path, configuration="2d", folds=(0,))
    assert main(["export-model", "-d", "901", "-c", "2d", "-o", str(tmp_path / "m.zip"), "--onnx"]) == 0
    with zipfile.ZipFile(tmp_path / "m.zip") as z:
        z.extractall(tmp_path / "unzipped")
    model = tmp_path / "unzipped" / DATASET / MODEL.format("2d")
    images = tmp_path / "in"
    images.mkdir()
    img = sitk.GetImageFromArray(np.random.default_rng(1).normal(size=(40, 45)).astype(np.float32)[None])
    sitk.WriteImage(img, str(images / "case_0000.nii.gz"))
    segs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        assert main(["predict", "-i", str(images), "-o", str(out), "-m", str(model), "-device", "cpu", "--exact",
                     "--backend", backend]) == 0
        segs[backend] = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case.nii.gz")))
    assert (segs["torch"] == segs["onnxruntime"]).mean() >= 0.999
    for f in model.glob("fold_*/network.onnx"):
        f.unlink()
    assert main(["predict", "-i", str(images), "-o", str(tmp_path / "none"), "-m", str(model), "-device", "cpu",
                 "--backend", "onnxruntime"]) == 2
    assert not (tmp_path / "none").exists()
