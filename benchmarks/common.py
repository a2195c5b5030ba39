"""Shared pieces of nnzoo's benchmark scripts: trainers without data, synthetic batches, interleaved timing."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

__all__ = ["step_parser", "tiny_setup", "build_trainer", "make_batch", "sync", "time_steps", "time_interleaved",
           "train_flops", "train_step_flops", "prepare_for_steps", "prepare_semi_supervised_stage",
           "is_semi_supervised"]

REPO = Path(__file__).resolve().parents[1]


def step_parser(doc: str) -> argparse.ArgumentParser:
    """Arguments shared by the per-method train-step benchmarks (add method-specific ones to it)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configuration", default="3d_fullres", choices=["3d_fullres", "2d"])
    ap.add_argument("--patch", type=int, nargs="+", default=None, help="patch size (default 32^3 / 64^2)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return ap


def tiny_setup(args: argparse.Namespace) -> tuple[torch.device, dict, dict, list[int]]:
    """Threads, no torch.compile, and the test suite's tiny plans with the requested patch and batch.

    Returns:
        ``(device, plans, dataset_json, patch)``.
    """
    torch.set_num_threads(args.threads)
    os.environ.setdefault("nnUNet_compile", "0")
    plans = json.loads((REPO / "tests" / "data" / "tiny_plans.json").read_text())
    dataset_json = json.loads((REPO / "tests" / "data" / "tiny_dataset.json").read_text())
    patch = args.patch or ([32, 32, 32] if args.configuration == "3d_fullres" else [64, 64])
    plans["configurations"][args.configuration]["patch_size"] = patch
    plans["configurations"][args.configuration]["batch_size"] = args.batch_size
    return torch.device(args.device), plans, dataset_json, patch


def build_trainer(cls: type, plans: dict, configuration: str, dataset_json: dict, device: torch.device,
                  root: Path):
    """An initialized trainer (network, optimizer, loss) whose nnU-Net folders live under ``root``.

    No data is needed: nnU-Net infers the dataset format from the files in the preprocessed
    folder, so empty marker files stand in for them: two cases of two domains (``domains.json``), so
    that trainers that need domains (registry ``needs_domains``) initialize too.
    """
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[key] = str(root / key)
    from nnzoo.trainers.nnunet_compat import build_trainer as build

    trainer = build(cls, plans=plans, configuration=configuration, fold=0, dataset_json=dataset_json, device=device)
    folder = Path(trainer.preprocessed_dataset_folder)
    folder.mkdir(parents=True, exist_ok=True)
    for case in ("marker", "marker2"):
        (folder / f"{case}.b2nd").touch()
    from nnzoo.trainers.domains import DOMAINS_FILE

    (Path(trainer.preprocessed_dataset_folder_base) / DOMAINS_FILE).write_text(
        json.dumps({"marker": "domain_a", "marker2": "domain_b"}))
    trainer.initialize()
    return trainer


def make_batch(trainer, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """Random images and blob-shaped label maps at every deep-supervision scale of ``trainer``; the case
    identifiers (``keys``, as nnU-Net's loader gives them) alternate between :func:`build_trainer`'s two cases."""
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    classes = trainer.label_manager.num_segmentation_heads
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, classes, (batch_size, 1, *[max(1, p // 4) for p in patch]), generator=g).float()
    label = torch.nn.functional.interpolate(label, size=patch, mode="nearest")
    from nnzoo.trainers.nnunet_compat import deep_supervision_scales

    scales = deep_supervision_scales(trainer)
    targets = [label] if scales is None else [
        torch.nn.functional.interpolate(label, size=[round(p * s) for p, s in zip(patch, sc)], mode="nearest-exact")
        for sc in scales]
    data = torch.randn(batch_size, trainer.num_input_channels, *patch, generator=g)
    return {"data": data.to(device), "target": [t.to(device) for t in targets] if scales is not None
            else targets[0].to(device), "keys": [("marker", "marker2")[i % 2] for i in range(batch_size)]}


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(trainer, batch: dict, n: int, device: torch.device) -> list[float]:
    """Milliseconds of ``n`` real ``train_step`` calls."""
    out = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        trainer.train_step(batch)
        sync(device)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def time_interleaved(trainers: dict, batches: dict, rounds: int, steps: int, warmup: int,
                     device: torch.device) -> dict[str, list[float]]:
    """ms per step of each trainer on its batch (``batches[name]``: :func:`make_batch` with the same
    seed gives every trainer the same images and labels at its own deep-supervision scales); rounds
    alternate between trainers so that load changes on a shared machine affect all alike."""
    for name, tr in trainers.items():
        tr.network.train()
        time_steps(tr, batches[name], warmup, device)
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(rounds):
        for name, tr in trainers.items():
            times[name] += time_steps(tr, batches[name], steps, device)
    return times


def train_flops(arch: dict, input_shape: list[int], network_class: type | None = None, **forward_kwargs) -> int:
    """Forward + backward FLOPs of one step of a plan network, counted on the ``meta`` device.

    Args:
        arch: a plan configuration's ``architecture`` entry.
        input_shape: ``(batch, channels, *patch)``.
        network_class: an nnzoo network built by ``network_from_arch`` (None: nnU-Net's own network).
        forward_kwargs: passed to the network's forward (e.g. ``all_decoders=True``); every output
            (nested lists/tuples of tensors) enters the backward pass.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from torch.utils.flop_counter import FlopCounterMode

    from nnzoo.trainers.networks.common import network_from_arch

    def leaves(o):
        return [t for x in o for t in leaves(x)] if isinstance(o, (list, tuple)) else [o]

    args = (arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], input_shape[1], 3)
    with torch.device("meta"):
        net = (get_network_from_plans(*args, allow_init=False, deep_supervision=True) if network_class is None
               else network_from_arch(network_class, arch["network_class_name"], arch_kwargs=arch["arch_kwargs"],
                                      kw_requires_import=arch["_kw_requires_import"], input_channels=input_shape[1],
                                      num_classes=3, deep_supervision=True, allow_init=False))
        with FlopCounterMode(display=False) as counter:
            out = net(torch.randn(*input_shape), **forward_kwargs)
            sum(t.float().sum() for t in leaves(out)).backward()
    return counter.get_total_flops()


class _Repeat:
    """An endless 'augmenter' returning the same batch."""

    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def __next__(self) -> dict:
        return self.batch


def _pseudo_labeled_batch(trainer, images: torch.Tensor) -> dict:
    """Fixed images with random blob label maps at every deep-supervision scale (a stand-in for the
    self-training trainer's pseudo-labeled loader)."""
    import torch.nn.functional as F

    from nnzoo.trainers.nnunet_compat import deep_supervision_scales

    n, shape = images.shape[0], images.shape[2:]
    classes = trainer.label_manager.num_segmentation_heads
    label = torch.randint(0, classes, (n, 1, *[max(1, s // 4) for s in shape]), device=images.device).float()
    label = F.interpolate(label, size=tuple(shape), mode="nearest")
    scales = deep_supervision_scales(trainer)
    target = label if scales is None else [
        F.interpolate(label, size=[round(s * f) for s, f in zip(shape, sc)], mode="nearest-exact") for sc in scales]
    return {"data": images, "target": target}


def prepare_semi_supervised_stage(trainer, unlabeled: torch.Tensor) -> None:
    """Put a semi-supervised trainer built without data into its main stage, so that ``train_step`` runs
    at its real cost: ``unlabeled`` is every unlabeled batch, and per method (only public attributes):

    - Mean Teacher: the EMA step counter half-way through the schedule (past the warm-up);
    - BCP: the first epoch of stage 2 (teacher and copy-paste);
    - self-training: stage 2, with a stand-in pseudo-labeled loader (``unlabeled`` with random label maps);
    - shape prior: an untrained, frozen critic if it has none.

    Args:
        trainer: an initialized :class:`~nnzoo.trainers.semisup.SemiSupervisedTrainer`.
        unlabeled: ``(unlabeled_batch_size, C, *patch)`` images on the training device.

    Raises:
        TypeError: ``trainer`` is not semi-supervised.
    """
    from nnzoo.trainers.bcp import nnUNetTrainerBCP
    from nnzoo.trainers.mean_teacher import nnUNetTrainerMeanTeacher
    from nnzoo.trainers.self_training import nnUNetTrainerSelfTraining
    from nnzoo.trainers.semisup import SemiSupervisedTrainer
    from nnzoo.trainers.shape_prior import nnUNetTrainerShapePrior

    if not isinstance(trainer, SemiSupervisedTrainer):
        raise TypeError(f"{type(trainer).__name__} is not a semi-supervised trainer")
    trainer.dataloader_unlabeled = _Repeat({"data": unlabeled})
    if isinstance(trainer, nnUNetTrainerMeanTeacher):
        trainer.ema_steps = trainer.num_epochs * trainer.num_iterations_per_epoch // 2
    if isinstance(trainer, nnUNetTrainerBCP):
        trainer.current_epoch = trainer.stage2_start_epoch
    if isinstance(trainer, nnUNetTrainerSelfTraining):
        trainer.dataloader_pseudo = _Repeat(_pseudo_labeled_batch(trainer, unlabeled))
    if isinstance(trainer, nnUNetTrainerShapePrior) and trainer.critic is None:
        trainer.critic = trainer.build_critic().requires_grad_(False).eval()


def is_semi_supervised(trainer) -> bool:
    """Whether ``trainer`` consumes unlabeled images (a :class:`~nnzoo.trainers.semisup.SemiSupervisedTrainer`)."""
    from nnzoo.trainers.semisup import SemiSupervisedTrainer

    return isinstance(trainer, SemiSupervisedTrainer)


def prepare_for_steps(trainer, batch: dict) -> None:
    """Put a trainer built without data into its main training stage: semi-supervised trainers get
    unlabeled batches (random images, ``unlabeled_batch_size`` of them) and their stage's state
    (:func:`prepare_semi_supervised_stage`); other trainers are left as they are."""
    if is_semi_supervised(trainer):
        n = trainer.unlabeled_batch_size
        unlabeled = torch.randn(n, *batch["data"].shape[1:], device=batch["data"].device)
        prepare_semi_supervised_stage(trainer, unlabeled)


def train_step_flops(trainer, batch: dict) -> int:
    """FLOPs of one real ``train_step`` (every forward and backward inside it: teachers, critics, all
    decoders), counted by torch's ``FlopCounterMode``; the optimizer update is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    state = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batch)
    trainer.network.load_state_dict(state)
    return counter.get_total_flops()
