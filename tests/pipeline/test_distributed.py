"""DDP on the CPU with Gloo: 2-process runs of every trainer, -num_gpus, torchrun (one node and two), resume, errors.

What is checked: after a 2-process run the network (and teacher, and critic) weights are
identical on both ranks; only rank 0 wrote into the results folder; every rank used the same
labeled split; one 2-process step with a per-rank batch of b equals one single-process step with
batch 2b for nnU-Net's baseline (same data; DDP averages the gradients, nnU-Net's batch Dice is
reduced over ranks; tolerance 1e-5 relative, from the deep-supervision weight nnU-Net sets to
1e-6 instead of 0 under DDP); a killed 2-process run resumes with --continue; a two-node torchrun
(c10d rendezvous on 127.0.0.1) finishes with one model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_dataset_json, tiny_plans

from nnzoo.pipeline.cli import main
from nnzoo.pipeline.experiment import default_plans_name
from nnzoo.pipeline.train import TrainOptions, TrainRun
from nnzoo.trainers import list_trainers

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parents[1]


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _spawn(fn, world: int, *args) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASTER_ADDR", "127.0.0.1")
        mp.setenv("MASTER_PORT", _port())
        torch.multiprocessing.spawn(fn, args=(world, *args), nprocs=world, join=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_step_equals_one_process_step_with_twice_the_batch(tmp_path, monkeypatch):
    from ddp_worker import build_step_trainer, step_rank
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from benchmarks.common import make_batch
    from nnzoo.trainers.base import nnzoo_trainer_class

    plans, dj = tiny_plans("2d", (32, 32)), tiny_dataset_json()
    single = build_step_trainer(nnzoo_trainer_class(nnUNetTrainer), plans, dj)
    batch = make_batch(single, 4, torch.device("cpu"), seed=1)
    _spawn(step_rank, 2, plans, dj, batch, str(tmp_path))
    w0, w1 = (torch.load(tmp_path / f"step{r}.pt") for r in (0, 1))
    assert _same(w0, w1)  # DDP kept the ranks identical
    before = {k: v.clone() for k, v in single.network.state_dict().items()}
    single.train_step(batch)
    after = single.network.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed  # the step did something
    for k in after:
        torch.testing.assert_close(w0[k], after[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A 2D toy dataset of its own (id 503), with the plans of every method planner."""
    from helpers import nnunet_folders, prepare_dataset

    from nnzoo.pipeline.plan import plan_and_preprocess

    prep = prepare_dataset(tmp_path_factory.mktemp("ddp"), 2, 503)
    with nnunet_folders(prep["base"]):
        for info in list_trainers():
            if info.planner and "2d" in info.dims:
                plan_and_preprocess(503, configurations=["2d"], planner=info.planner, num_processes=1)
    yield prep
    shutil.rmtree(prep["base"].parent, ignore_errors=True)  # the module's data off the disk


@pytest.fixture
def in_planned(planned):
    from helpers import drops_new_models, nnunet_folders

    with nnunet_folders(planned["base"]), drops_new_models(planned["base"] / "nnUNet_results"):
        yield planned


@pytest.mark.parametrize("trainer", [i.name for i in list_trainers() if "2d" in i.dims])
def test_two_process_run_of_every_trainer(in_planned, tmp_path, trainer):
    from ddp_worker import train_rank

    base = in_planned["base"]
    info = next(i for i in list_trainers() if i.name == trainer)
    semi = info.semi_supervised
    folders = {k: str(base / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    options = TrainOptions(dataset="Dataset503_Toy2d", configuration="2d", fold=1, trainer=trainer,
                           plans=default_plans_name(trainer), device="cpu", epochs=2, iters=2, val_iters=1,
                           labeled=2 if semi else None, seed=3, validate=False,
                           hparams=dict(info.quick_hparams))  # e.g. the shape critic's pre-training shortened
    run = TrainRun(options, folders)
    shutil.rmtree(run.fold_dir.parent, ignore_errors=True)
    _spawn(train_rank, 2, run, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert _same(r0["network"], r1["network"])
    for part in ("teacher", "critic"):
        assert (r0[part] is None) == (r1[part] is None) and (r0[part] is None or _same(r0[part], r1[part])), part
    if trainer == "nnUNetTrainerBCP":
        assert r0["teacher"] is not None  # the run reached stage 2
    assert r0["unlabeled"] == r1["unlabeled"] and bool(r0["unlabeled"]) == semi  # the same labeled split
    assert r0["batch_size"] == r1["batch_size"] == 1  # the planned batch of 2, split over the ranks
    assert r1["writes"] == [] and any(w.endswith("checkpoint_final.pth") for w in r0["writes"])
    assert (run.fold_dir / "checkpoint_final.pth").is_file() and not list(run.fold_dir.glob("*.tmp-*"))


def test_num_gpus_cli_and_resume_after_a_killed_rank(in_planned):
    fold = Path(os.environ["nnUNet_results"]) / "Dataset503_Toy2d" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_2"
    cmd = [str(BIN / "nnzoo"), "train", "503", "2d", "2", "-device", "cpu", "-num_gpus", "2", "--epochs", "40",
           "--iters", "2", "--val-iters", "1", "--save-every", "1", "--no-val"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    latest = fold / "checkpoint_latest.pth"
    try:
        deadline = time.time() + 300
        while not (latest.is_file() and torch.load(latest, weights_only=False)["current_epoch"] >= 2):
            assert proc.poll() is None and time.time() < deadline, "no checkpoint after 2 epochs"
            time.sleep(0.5)
        ranks = _children_running_training(proc.pid)
        assert len(ranks) == 2
        os.kill(max(ranks), signal.SIGKILL)  # the rank-1 process
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines and "died" in lines[-1] and "--continue" in lines[-1]
    epoch = torch.load(latest, weights_only=False)["current_epoch"]
    assert main(["train", "503", "2d", "2", "-device", "cpu", "-num_gpus", "2", "--continue", "--epochs",
                 str(epoch + 1), "--no-val"]) == 0
    assert torch.load(fold / "checkpoint_final.pth", weights_only=False)["current_epoch"] == epoch + 1


def _children_running_training(pid: int) -> list[int]:
    """PIDs of the spawned training processes of ``pid`` (from /proc)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text().split()
                cmdline = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[3]) == pid and b"spawn_main" in cmdline:
                out.append(int(p.name))
    return out


def _torchrun(args: list[str], extra: list[str]) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "torchrun"), *args, str(BIN / "nnzoo"), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def test_torchrun_one_node_and_two_nodes(in_planned):
    results = Path(os.environ["nnUNet_results"]) / "Dataset503_Toy2d" / "nnUNetTrainer__nnUNetPlans__2d"
    common = ["train", "503", "2d", "3", "-device", "cpu", "--epochs", "1", "--iters", "2", "--no-val", "--overwrite"]
    one = _torchrun(["--standalone", "--nproc-per-node", "2"], common)
    out = one.communicate(timeout=300)[0]
    assert one.returncode == 0, out[-3000:]
    assert (results / "fold_3" / "checkpoint_final.pth").is_file()
    assert json.loads((results / "fold_3" / "nnzoo_run.json").read_text())["trainer"] == "nnUNetTrainer"

    endpoint = f"127.0.0.1:{_port()}"
    nodes = [_torchrun(["--nnodes", "2", "--node-rank", str(r), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                        "--rdzv-endpoint", endpoint, "--rdzv-id", "nnzoo-test"],
                       ["train", "503", "2d", "4", "-device", "cpu", "--epochs", "1", "--iters", "2", "--no-val",
                        "--overwrite"]) for r in (0, 1)]
    outs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert (results / "fold_4" / "checkpoint_final.pth").is_file()
    assert sorted(p.name for p in (results / "fold_4").glob("checkpoint_*.pth")) == ["checkpoint_best.pth",
                                                                                  "checkpoint_final.pth"]
