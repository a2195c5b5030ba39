"""``train``: one fold of one configuration, through nnU-Net's trainer loop.

nnzoo adds to ``nnUNetv2_train``: trainer names resolved through the registry, a short
schedule (``epochs``/``iters``) recorded in ``nnzoo_run.json`` beside the checkpoints (so
``--continue`` and ``predict`` need no repeated flags; the result folder is the trainer's usual
one), atomic checkpoints, low-label runs (``labeled``), and a refusal to start over a fold that
already holds checkpoints unless asked to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .dataset import resolve_dataset_name
from .errors import NnzooError
from .experiment import (
    check_configuration,
    data_identifier,
    default_plans_name,
    load_plans,
    model_folder,
    parse_fold,
    trainer_for,
)

__all__ = ["train", "parse_labeled", "evaluate_validation", "RUN_FILE"]

RUN_FILE = "nnzoo_run.json"


def parse_labeled(value: str | int | float | None) -> int | float | None:
    """``--labeled`` as a case count (``"4"``) or a fraction (``"0.1"``).

    Raises:
        NnzooError: not a positive integer or a fraction in (0, 1).
    """
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise NnzooError(f"--labeled must be a number of cases or a fraction, got {value!r}") from None
    if f >= 1 and f == int(f):
        return int(f)
    if 0 < f < 1:
        return f
    raise NnzooError(f"--labeled must be a positive integer or a fraction between 0 and 1, got {value!r}")


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _check_unlabeled_available(trainer: str, plans: dict, configuration: str, pre: Path,
                               budget: int | float | None) -> None:
    """A semi-supervised trainer needs unlabeled images: imagesUnlabeled/ or a label budget."""
    from nnzoo.trainers.registry import _REGISTRY

    info = _REGISTRY.get(trainer)
    if info is None or not info.semi_supervised or budget is not None:
        return
    from .unlabeled import unlabeled_folder

    folder = Path(unlabeled_folder(str(pre), data_identifier(plans, configuration)))
    if not folder.is_dir() or not any(folder.glob("*.b2nd")):
        raise NnzooError(f"{trainer} is semi-supervised and needs unlabeled images, but {folder} holds none: add "
                         "them (`nnzoo dataset create --unlabeled DIR`, or imagesUnlabeled/ in the raw dataset) and "
                         "re-run plan_and_preprocess, or train with --labeled N to treat the fold's other training "
                         "cases as unlabeled")


def train(dataset: str | int, configuration: str, fold: str | int, trainer: str = "nnUNetTrainer",
          plans: str | None = None, device: str = "auto", continue_training: bool = False,
          epochs: int | None = None, iters: int | None = None, val_iters: int | None = None,
          save_every: int | None = None, labeled: str | int | float | None = None, overwrite: bool = False,
          validate: bool = True, seed: int | None = None) -> Path:
    """Train one fold.

    Args:
        dataset: dataset id or name.
        configuration: e.g. ``3d_fullres`` or ``2d``.
        fold: fold index or ``"all"``.
        trainer: registered nnzoo trainer or any nnU-Net trainer name.
        plans: plans name (default: the trainer's planner's plans, else ``nnUNetPlans``).
        device: ``auto``, ``cpu``, ``cuda``.
        continue_training: resume from the fold's latest checkpoint (schedule from ``nnzoo_run.json``).
        epochs: number of epochs (default: the trainer's, 1000 for nnU-Net).
        iters: training iterations per epoch (default: the trainer's, 250).
        val_iters: validation iterations per epoch (default: the trainer's, or iters/5 with ``iters``).
        save_every: write ``checkpoint_latest.pth`` every this many epochs (default: the trainer's, 50).
        labeled: keep only this many (or this fraction of) labeled training cases; the rest of the
            fold's training cases count as unlabeled (their labels are never read).
        overwrite: start a new training over a fold folder that already holds checkpoints.
        validate: run nnU-Net's final validation (sliding-window prediction of the validation cases).
        seed: seed Python's, numpy's and torch's random generators before the trainer is built
            (initialisation, patch sampling and, with ``nnUNet_n_proc_DA=0``, augmentation) and the
            choice of labeled cases; recorded in ``nnzoo_run.json`` and reused by ``--continue``.

    Returns:
        The fold's output folder.

    Raises:
        NnzooError: unknown dataset, plans, configuration, fold or trainer; existing checkpoints
            without ``continue_training``/``overwrite``; a bad schedule.
    """
    import torch

    from nnzoo.trainers.base import nnzoo_trainer_class

    from .env import resolve_device

    name = resolve_dataset_name(dataset)
    trainer_cls = trainer_for(trainer, configuration)
    plans_name = plans or default_plans_name(trainer)
    plans_dict, pre = load_plans(name, plans_name)
    check_configuration(plans_dict, configuration, pre)
    fold = parse_fold(fold, pre)
    budget = parse_labeled(labeled)
    for flag, v in (("--epochs", epochs), ("--iters", iters), ("--val-iters", val_iters), ("--save-every", save_every)):
        if v is not None and int(v) < 1:
            raise NnzooError(f"{flag} must be at least 1, got {v}")
    _check_unlabeled_available(trainer, plans_dict, configuration, pre, budget)
    dev = resolve_device(device)

    out = model_folder(name, trainer_cls.__name__, plans_name, configuration) / f"fold_{fold}"
    existing = sorted(p.name for p in out.glob("checkpoint_*.pth"))
    if existing and not continue_training and not overwrite:
        raise NnzooError(f"{out} already holds {', '.join(existing)}; use --continue to resume it or --overwrite "
                         "to start a new training over it")
    run_file = out / RUN_FILE
    prev = json.loads(run_file.read_text()) if continue_training and run_file.is_file() else {}
    if not continue_training:  # a new run chooses its labeled cases anew
        from nnzoo.trainers.label_budget import LABELED_SPLIT_FILE

        (out / LABELED_SPLIT_FILE).unlink(missing_ok=True)

    if seed is None:
        seed = prev.get("seed")
    if seed is not None:
        import random

        import numpy as np

        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)
    cls = nnzoo_trainer_class(trainer_cls)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    plans_dict["continue_training"] = continue_training
    t = cls(plans=plans_dict, configuration=configuration, fold=fold, dataset_json=dataset_json, device=dev)
    if Path(t.output_folder) != out:  # a trainer that moved its output folder: checks above were elsewhere
        raise RuntimeError(f"{trainer} writes to {t.output_folder}, expected {out}")

    t.num_epochs = int(epochs or prev.get("num_epochs") or t.num_epochs)
    t.num_iterations_per_epoch = int(iters or prev.get("num_iterations_per_epoch") or t.num_iterations_per_epoch)
    if val_iters is None and iters is not None:
        val_iters = max(1, round(iters / 5))
    t.num_val_iterations_per_epoch = int(val_iters or prev.get("num_val_iterations_per_epoch")
                                         or t.num_val_iterations_per_epoch)
    t.save_every = int(save_every or prev.get("save_every") or t.save_every)
    if budget is None:
        budget = prev.get("labeled")
    if budget is not None:
        if prev.get("labeled") not in (None, budget):
            raise NnzooError(f"--labeled {budget} differs from the run being continued ({prev['labeled']})")
        t.labeled_budget = budget
    t.labeled_seed = seed
    record = {
        "trainer": trainer, "plans": plans_name, "configuration": configuration, "fold": fold,
        "num_epochs": t.num_epochs, "num_iterations_per_epoch": t.num_iterations_per_epoch,
        "num_val_iterations_per_epoch": t.num_val_iterations_per_epoch, "save_every": t.save_every,
        "labeled": budget, "seed": seed, "device": str(dev),
    }
    _write_json_atomic(run_file, record)
    print(f"nnzoo: training {trainer} on {name} {configuration} fold {fold} ({dev}): {t.num_epochs} epochs x "
          f"{t.num_iterations_per_epoch} iterations" + (f", {budget} labeled cases" if budget is not None else ""))

    from nnunetv2.run.run_training import maybe_load_checkpoint

    maybe_load_checkpoint(t, continue_training, False, None)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t.run_training()
    if validate:
        t.perform_actual_validation(False)
        evaluate_validation(name, out, t.dataset_json)
    return out


def evaluate_validation(dataset_name: str, fold_dir: Path, dataset_json: dict) -> dict:
    """nnzoo's full evaluation (Dice, IoU, HD95, NSD, ASSD, volumes; JSON, CSV, HTML) of a fold's validation.

    Written to ``<fold>/validation/evaluation``, beside nnU-Net's own ``summary.json``.
    """
    from .evaluate import evaluate_folders
    from .report import summary_table

    gt = Path(os.environ["nnUNet_preprocessed"]) / dataset_name / "gt_segmentations"
    images = Path(os.environ["nnUNet_raw"]) / dataset_name / "imagesTr"
    res = evaluate_folders(gt, fold_dir / "validation", dataset_json, 1.0, fold_dir / "validation" / "evaluation",
                           num_processes=min(4, os.cpu_count() or 1), image_dir=images if images.is_dir() else None)
    print(f"Validation of {fold_dir.name}:\n{summary_table(res)}\nReport: {res['files'].get('html')}")
    return res
