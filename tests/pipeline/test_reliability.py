"""Checkpoints: atomic writes, safe loading, and resuming a training process that was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_trainer

from nnzoo.pipeline.checkpoint import load_checkpoint_safely
from nnzoo.pipeline.cli import main
from nnzoo.pipeline.errors import NnzooError
from nnzoo.trainers.base import AtomicCheckpointMixin, NnzooTrainer, nnzoo_trainer_class


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer(NnzooTrainer, tmp_path, "2d", initialize=True)
    target = Path(trainer.output_folder) / "checkpoint_latest.pth"
    trainer.current_epoch = 3
    trainer.save_checkpoint(str(target))
    assert load_checkpoint_safely(target)["current_epoch"] == 4

    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then the process "dies"
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dying_save)
    trainer.current_epoch = 9
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(str(target))
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint_safely(target)["current_epoch"] == 4  # the previous one, intact


def test_stock_trainers_get_atomic_checkpoints_and_keep_their_name():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    cls = nnzoo_trainer_class(nnUNetTrainer)
    assert issubclass(cls, AtomicCheckpointMixin) and issubclass(cls, nnUNetTrainer)
    assert cls.__name__ == "nnUNetTrainer"
    assert nnzoo_trainer_class(cls) is cls


def test_safe_loading_refuses_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"network_weights": {}, "trainer_name": "x", "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(NnzooError, match="refused to load"):
        load_checkpoint_safely(tmp_path / "evil.pth")
    assert not marker.exists()


def test_safe_loading_reads_nnunet_checkpoint_contents(tmp_path):
    ckpt = {"network_weights": {"w": torch.ones(2)}, "trainer_name": "nnUNetTrainer", "current_epoch": 3,
            "logging": {"mean_fg_dice": [np.float64(0.5), np.float32(0.25)], "x": [np.zeros(2)]},
            "_best_ema": np.float64(0.4), "init_args": {"device": torch.device("cpu"), "plans": {"a": (1, 2)}},
            "inference_allowed_mirroring_axes": (0, 1)}
    torch.save(ckpt, tmp_path / "c.pth")
    out = load_checkpoint_safely(tmp_path / "c.pth")
    assert out["_best_ema"] == pytest.approx(0.4) and out["logging"]["mean_fg_dice"][1] == pytest.approx(0.25)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(NnzooError, match="not a readable checkpoint"):
        load_checkpoint_safely(tmp_path / "junk.pth")


@pytest.mark.slow
@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_continue_resumes_a_killed_training_process(in_prepared):
    prep = in_prepared
    did = str(prep["id"])
    fold = Path(os.environ["nnUNet_results"]) / "Dataset502_Toy2d" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_2"
    cmd = [sys.executable, "-m", "nnzoo.pipeline.cli", "train", did, "2d", "2", "-device", "cpu", "--epochs", "40",
           "--iters", "2", "--val-iters", "1", "--save-every", "1", "--no-val"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    latest = fold / "checkpoint_latest.pth"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if latest.is_file() and load_checkpoint_safely(latest)["current_epoch"] >= 3:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint_latest.pth with 3 epochs within 5 minutes")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (fold / "checkpoint_final.pth").exists()
    killed_at = load_checkpoint_safely(latest)["current_epoch"]  # loads: never a half-written file
    assert 3 <= killed_at < 40
    assert json.loads((fold / "nnzoo_run.json").read_text())["num_epochs"] == 40

    # starting again without --continue would silently restart: refused
    assert main(["train", did, "2d", "2", "-device", "cpu"]) == 2
    # resume with no schedule flags: read back from nnzoo_run.json; shorten to finish quickly
    assert main(["train", did, "2d", "2", "-device", "cpu", "--continue", "--epochs", str(killed_at + 2),
                 "--no-val"]) == 0
    final = load_checkpoint_safely(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == killed_at + 2
    assert len(final["logging"]["train_losses"]) == killed_at + 2  # history kept across the kill
    assert json.loads((fold / "nnzoo_run.json").read_text())["num_iterations_per_epoch"] == 2
