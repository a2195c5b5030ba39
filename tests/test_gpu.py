"""CUDA paths (``pytest -m gpu``; skipped without a CUDA GPU): AMP train steps, NCCL DDP, prediction.

- every registered trainer's real ``train_step`` under nnU-Net's autocast + GradScaler, 2D and 3D;
- a world-size-1 NCCL process group through nnzoo's DDP code path (device ``cuda:LOCAL_RANK``, DDP wrapper);
- ``nnzoo train`` and ``nnzoo predict`` on the GPU, with the GPU prediction equal to the CPU one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nnzoo.trainers import list_trainers

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CASES = [(i.name, d) for i in list_trainers() for d in i.dims]


@pytest.mark.parametrize("name,dim", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_train_step_under_amp(name, dim, tmp_path):
    from benchmarks.common import build_trainer, make_batch, prepare_for_steps, tiny_setup
    from nnzoo.trainers import get_trainer_class
    from nnzoo.trainers.base import nnzoo_trainer_class

    class Args:
        device, configuration, batch_size, threads = "cuda", "2d" if dim == "2d" else "3d_fullres", 2, 1
        patch = [64, 64] if dim == "2d" else [32, 64, 64]

    device, plans, dataset_json, _ = tiny_setup(Args)
    trainer = build_trainer(nnzoo_trainer_class(get_trainer_class(name)), plans, Args.configuration, dataset_json,
                            device, tmp_path)
    assert trainer.grad_scaler is not None  # nnU-Net's AMP path
    batch = make_batch(trainer, 2, device)
    prepare_for_steps(trainer, batch)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.network.parameters()))


def test_nccl_world_size_one_through_the_ddp_path(tmp_path):
    from ddp_worker import gpu_rank
    from helpers import tiny_dataset_json, tiny_plans

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASTER_ADDR", "127.0.0.1")
        mp.setenv("MASTER_PORT", "29531")
        torch.multiprocessing.spawn(gpu_rank, args=(1, tiny_plans("2d", (64, 64)), tiny_dataset_json(), str(tmp_path)),
                                    nprocs=1, join=True)
    result = torch.load(tmp_path / "gpu0.pt", weights_only=False)
    assert result["device"] == "cuda:0" and result["ddp"] and np.isfinite(result["loss"])


@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_train_and_predict_on_the_gpu(in_prepared, tmp_path):
    import SimpleITK as sitk

    from nnzoo.pipeline.cli import main

    assert main(["train", "502", "2d", "0", "-device", "cuda", "--epochs", "2", "--iters", "5", "--overwrite"]) == 0
    inp = in_prepared["src"]["images"]
    for dev in ("cuda", "cpu"):
        assert main(["predict", "-i", str(inp), "-o", str(tmp_path / dev), "-d", "502", "-c", "2d", "-f", "0",
                     "-device", dev]) == 0
    for f in sorted(Path(inp).iterdir()):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cuda" / f.name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cpu" / f.name)))
        assert (a == b).mean() > 0.99  # mixed precision may flip a few boundary voxels
    assert os.path.isdir(tmp_path / "cuda")
