"""``train``: one fold of one configuration, through nnU-Net's trainer loop, on one or several processes.

nnzoo adds to ``nnUNetv2_train``: trainer names resolved through the registry (a method's plans
are planned on the spot when only the default plans exist), every check before anything is
built or written, a short schedule (``epochs``/``iters``) recorded in ``nnzoo_run.json`` beside
the checkpoints (so ``--continue`` and ``predict`` need no repeated flags), atomic checkpoints,
low-label runs (``labeled``), seeds, and DDP on CPU (Gloo) and on several nodes
(:mod:`nnzoo.pipeline.distributed`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .dataset import resolve_dataset_name
from .errors import NnzooError
from .experiment import (
    budget_suffix,
    check_configuration,
    configuration_manager,
    data_identifier,
    dataset_id_of,
    default_plans_name,
    fold_training_cases,
    load_plans,
    model_folder,
    parse_fold,
    trainer_for,
)

__all__ = ["train", "parse_labeled", "evaluate_validation", "RUN_FILE", "TrainRun"]

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


@dataclass
class TrainRun:
    """Everything a training process needs, resolved and checked before any process starts."""

    dataset_name: str
    configuration: str
    fold: int | str
    trainer: str
    plans: str
    device: str
    continue_training: bool
    num_epochs: int | None
    num_iterations_per_epoch: int | None
    num_val_iterations_per_epoch: int | None
    save_every: int | None
    labeled: int | float | None
    seed: int | None
    validate: bool
    validation_only: bool
    npz: bool
    val_best: bool
    pretrained_weights: str | None
    disable_checkpointing: bool
    folders: dict
    hparams: dict | None = None

    @property
    def fold_dir(self) -> Path:
        return model_folder(self.dataset_name, self.trainer, self.plans, self.configuration, self.labeled) / \
            f"fold_{self.fold}"


def _plan_method_plans_on_the_spot(name: str, trainer: str, plans_name: str, configuration: str) -> None:
    """A method's plans are missing but nnU-Net's exist: plan them now (they share its preprocessed data)."""
    from nnzoo.trainers.registry import find_trainer_info

    info = find_trainer_info(trainer)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    if info is None or not info.planner or (pre / f"{plans_name}.json").is_file() \
            or not (pre / "nnUNetPlans.json").is_file():
        return
    from .plan import plan_and_preprocess

    print(f"nnzoo: {trainer} trains on plans {plans_name}, which {name} does not have yet; planning them now with "
          f"{info.planner} (`nnzoo plan_and_preprocess -d {dataset_id_of(name)} -c {configuration} "
          f"-pl {info.planner}`), reusing nnUNetPlans' preprocessed data where it is the same")
    plan_and_preprocess(name, configurations=[configuration], planner=info.planner)


def _check_budget(run: TrainRun, plans: dict, pre: Path) -> None:
    from nnzoo.trainers.label_budget import resolve_labeled_budget

    if run.labeled is None:
        return
    folder = pre / data_identifier(plans, run.configuration)
    n = len(fold_training_cases(pre, folder, run.fold))
    try:
        resolve_labeled_budget(run.labeled, n)
    except ValueError as e:
        raise NnzooError(f"--labeled {run.labeled}: {e}") from None


def _check_unlabeled_available(run: TrainRun, plans: dict, pre: Path) -> None:
    """A semi-supervised trainer needs unlabeled images: imagesUnlabeled/ or a label budget."""
    from nnzoo.trainers.registry import find_trainer_info
    from nnzoo.trainers.unlabeled_data import unlabeled_folder, unlabeled_identifiers

    info = find_trainer_info(run.trainer)
    if info is None or not info.semi_supervised or run.labeled is not None:
        return
    folder = unlabeled_folder(pre, data_identifier(plans, run.configuration))
    if not unlabeled_identifiers(folder):
        raise NnzooError(f"{run.trainer} is semi-supervised and needs unlabeled images, but {folder} holds none: add "
                         "them (`nnzoo dataset create --unlabeled DIR`, or imagesUnlabeled/ in the raw dataset) and "
                         "re-run plan_and_preprocess, or train with --labeled N to treat the fold's other training "
                         "cases as unlabeled")


def _check_trainer_supports(trainer_cls: type, plans: dict, configuration: str, dataset_json: dict) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnzoo.trainers.base import label_support_problem

    pm = PlansManager(plans)
    cascaded = pm.get_configuration(configuration).previous_stage_name is not None
    problem = label_support_problem(trainer_cls, pm.get_label_manager(dataset_json), cascaded)
    if problem:
        raise NnzooError(f"{problem}; dataset {plans['dataset_name']} ({'configuration ' + configuration if cascaded else 'its labels'})")


def _check_schedule(**flags: int | None) -> None:
    for flag, v in flags.items():
        if v is not None and int(v) < 1:
            raise NnzooError(f"--{flag.replace('_', '-')} must be at least 1, got {v}")


def train(dataset: str | int, configuration: str, fold: str | int, *, trainer: str = "nnUNetTrainer",
          plans: str | None = None, device: str = "auto", num_gpus: int = 1, continue_training: bool = False,
          epochs: int | None = None, iters: int | None = None, val_iters: int | None = None,
          save_every: int | None = None, labeled: str | int | float | None = None, overwrite: bool = False,
          validate: bool = True, seed: int | None = None, npz: bool = False, validation_only: bool = False,
          val_best: bool = False, pretrained_weights: str | None = None,
          disable_checkpointing: bool = False, hparams: dict[str, str] | None = None) -> Path:
    """Train one fold (on ``num_gpus`` processes, or as one rank of a torchrun launch).

    Args:
        dataset: dataset id or name.
        configuration: e.g. ``3d_fullres`` or ``2d``.
        fold: fold index or ``"all"``.
        trainer: registered nnzoo trainer or any nnU-Net trainer name.
        plans: plans name (default: the trainer's planner's plans, else ``nnUNetPlans``).
        device: ``auto``, ``cpu``, ``cuda``.
        num_gpus: processes on this node (``-num_gpus``; one GPU each on CUDA, Gloo on the CPU).
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
        npz: also save the validation softmax as ``.npz`` (nnU-Net's ``--npz``; needed by find-best).
        validation_only: only run the final validation of a finished fold (nnU-Net's ``--val``).
        val_best: validate with ``checkpoint_best.pth`` instead of the final one (``--val_best``).
        pretrained_weights: nnU-Net checkpoint to initialise the network from (``-pretrained_weights``).
        disable_checkpointing: write no checkpoints (``--disable_checkpointing``).
        hparams: ``{NAME: VALUE}`` overrides of the trainer's UPPER_CASE hyperparameters
            (``--hparam NAME=VALUE``), logged and recorded in ``nnzoo_run.json``.

    Returns:
        The fold's output folder.

    Raises:
        NnzooError: unknown dataset, plans, configuration, fold or trainer; a trainer that does not
            support the dataset's labels or configuration; a label budget larger than the fold;
            existing checkpoints without ``continue_training``/``overwrite``; a bad schedule or
            flag combination; a failed training process.
    """
    from . import distributed
    from .env import resolve_device, setup_folders

    folders = setup_folders(quiet=True)
    name = resolve_dataset_name(dataset)
    trainer_cls = trainer_for(trainer, configuration)
    plans_name = plans or default_plans_name(trainer)
    if plans is None:
        _plan_method_plans_on_the_spot(name, trainer, plans_name, configuration)
    plans_dict, pre = load_plans(name, plans_name)
    check_configuration(plans_dict, configuration, pre)
    fold = parse_fold(fold, pre)
    _check_schedule(epochs=epochs, iters=iters, val_iters=val_iters, save_every=save_every, num_gpus=num_gpus)
    if continue_training and validation_only:
        raise NnzooError("--continue and --val cannot be combined: --val only validates a finished fold")
    if val_best and disable_checkpointing:
        raise NnzooError("--val_best needs checkpoint_best.pth, which --disable_checkpointing does not write")
    if pretrained_weights is not None and (continue_training or validation_only):
        raise NnzooError("-pretrained_weights only applies to a new training (not with --continue or --val)")
    dataset_json = json.loads((pre / "dataset.json").read_text())
    _check_trainer_supports(trainer_cls, plans_dict, configuration, dataset_json)

    budget = parse_labeled(labeled)
    overrides = _parse_hparams(trainer_cls, hparams)
    out = model_folder(name, trainer_cls.__name__, plans_name, configuration, budget) / f"fold_{fold}"
    run_file = out / RUN_FILE
    prev = json.loads(run_file.read_text()) if (continue_training or validation_only) and run_file.is_file() else {}
    run = TrainRun(
        dataset_name=name, configuration=configuration, fold=fold, trainer=trainer, plans=plans_name,
        device=device, continue_training=continue_training,
        num_epochs=epochs or prev.get("num_epochs"), num_iterations_per_epoch=iters or prev.get("num_iterations_per_epoch"),
        num_val_iterations_per_epoch=val_iters or (max(1, round(iters / 5)) if iters else None)
        or prev.get("num_val_iterations_per_epoch"), save_every=save_every or prev.get("save_every"),
        labeled=budget, seed=seed if seed is not None else prev.get("seed"),
        validate=validate or validation_only, validation_only=validation_only, npz=npz, val_best=val_best,
        pretrained_weights=str(Path(pretrained_weights).resolve()) if pretrained_weights else None,
        disable_checkpointing=disable_checkpointing, folders=folders,
        hparams=overrides if hparams else prev.get("hparams"))
    if hparams and prev.get("hparams") not in (None, overrides):
        raise NnzooError(f"--hparam {overrides} differs from the run being continued ({prev['hparams']})")
    _check_budget(run, plans_dict, pre)
    if not validation_only:
        _check_unlabeled_available(run, plans_dict, pre)
    _check_model_folder(run, overwrite)
    if continue_training:
        _check_checkpoint_to_continue(run)
    if pretrained_weights is not None:
        from .checkpoint import load_checkpoint_safely

        load_checkpoint_safely(run.pretrained_weights)  # a clear error for a missing, unreadable or unsafe file
    _print_memory_note(plans_dict, configuration)
    world = distributed.launched_by_torchrun()
    dev = resolve_device(device, local_rank=int(os.environ.get("LOCAL_RANK", 0)) if world else None)
    _check_world_size(configuration_manager(plans_dict, configuration).batch_size,
                      int(os.environ["WORLD_SIZE"]) if world else num_gpus)
    if pretrained_weights is not None and dev.type != "cuda" and (world or num_gpus > 1):
        raise NnzooError("-pretrained_weights with several CPU processes is not supported (nnU-Net loads them onto "
                         "cuda:<rank>); train on one process or on GPUs")
    if world:
        import torch.distributed as dist

        with distributed.process_group(distributed.backend_for(dev.type)):
            if dist.get_rank() == 0:
                _start_record(run, out)
            run_process(run)
    elif num_gpus > 1:
        _start_record(run, out)
        distributed.spawn_processes(run_process, (run,), num_gpus, dev.type)
    else:
        _start_record(run, out)
        run_process(run)
    return out


def _print_memory_note(plans: dict, configuration: str) -> None:
    """What the method planner recorded about the method's GPU memory at the planned patch."""
    from nnzoo.plans.base import MEMORY_KEY

    note = plans.get(MEMORY_KEY, {}).get(configuration)
    if note:
        print(f"nnzoo: plans {plans['plans_name']} ({plans.get('experiment_planner_used')}): patch {note['patch_size']}, "
              f"batch {note['batch_size']}; the method needs about {note['gpu_memory_target_gb']} GB of GPU memory "
              f"there ({note['method_vs_unet']}x the plain U-Net's)")


def _parse_hparams(trainer_cls: type, hparams: dict[str, str] | None) -> dict:
    from nnzoo.trainers.base import parse_hyperparameters

    try:
        return parse_hyperparameters(trainer_cls, hparams or {})
    except KeyError as e:
        raise NnzooError(f"--hparam {e.args[0]}") from None
    except ValueError as e:
        raise NnzooError(f"--hparam {e}") from None


def _check_world_size(batch_size: int, world_size: int) -> None:
    if world_size > batch_size:
        raise NnzooError(f"{world_size} training processes but the plans' batch size is {batch_size}: each process "
                         f"needs at least one patch; use at most {batch_size} processes (nnU-Net splits the batch)")


def _check_model_folder(run: TrainRun, overwrite: bool) -> None:
    out = run.fold_dir
    if run.validation_only:
        ckpt = "checkpoint_best.pth" if run.val_best else "checkpoint_final.pth"
        if not (out / ckpt).is_file():
            raise NnzooError(f"{out / ckpt}: not found; --val validates a finished fold (train it first)")
        return
    existing = sorted(p.name for p in out.glob("checkpoint_*.pth"))
    if existing and not run.continue_training and not overwrite:
        raise NnzooError(f"{out} already holds {', '.join(existing)}; use --continue to resume it or --overwrite "
                         "to start a new training over it")


def _check_checkpoint_to_continue(run: TrainRun) -> None:
    """The checkpoint ``--continue`` resumes from (nnU-Net's order: final, latest, best) must load safely;
    without any, a run of the same fold under another label budget is what was meant."""
    from .checkpoint import load_checkpoint_safely

    fold_dir = run.fold_dir
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
        if (fold_dir / name).is_file():
            load_checkpoint_safely(fold_dir / name)  # a clear error for a damaged or unsafe file
            return
    model = fold_dir.parent
    others = sorted(p.parent.name for p in model.parent.glob(f"{model.name.split('_labeled')[0]}*/{fold_dir.name}")
                    if p.parent != model and any(p.glob("checkpoint_*.pth")))
    if others:
        raise NnzooError(f"{fold_dir} holds no checkpoint to continue from, but {', '.join(others)} do: the label "
                         "budget is part of the run (give the same --labeled)")
    print(f"nnzoo: {fold_dir} holds no checkpoint to continue from; starting a new training")


def _start_record(run: TrainRun, out: Path) -> None:
    """Write ``nnzoo_run.json`` and forget a previous run's labeled split (rank 0 / the launcher only)."""
    from nnzoo.trainers.label_budget import LABELED_SPLIT_FILE

    out.mkdir(parents=True, exist_ok=True)
    if not run.continue_training and not run.validation_only:  # a new run chooses its labeled cases anew
        (out / LABELED_SPLIT_FILE).unlink(missing_ok=True)
    record = {k: v for k, v in asdict(run).items() if k not in ("folders",)}
    _write_json_atomic(out / RUN_FILE, record)
    what = "validating" if run.validation_only else "training"
    print(f"nnzoo: {what} {run.trainer} on {run.dataset_name} {run.configuration} fold {run.fold} ({run.device})"
          + (f", {run.labeled} labeled cases" if run.labeled is not None else "")
          + (f", seed {run.seed}" if run.seed is not None else "")
          + (f", hyperparameters {run.hparams}" if run.hparams else ""))


def run_process(run: TrainRun):
    """Build the trainer and train/validate in this process (one rank under DDP); returns the trainer."""
    import torch

    from nnzoo.trainers import nnunet_compat as compat
    from nnzoo.trainers.base import nnzoo_trainer_class

    from .env import resolve_device

    os.environ.update(run.folders)
    ddp = torch.distributed.is_initialized()
    dev = resolve_device(run.device, local_rank=int(os.environ.get("LOCAL_RANK", 0)) if ddp else None)
    if run.seed is not None:  # per rank, so that ranks draw different patches (DDP starts all from rank 0's weights)
        import random

        import numpy as np

        seed = run.seed + (torch.distributed.get_rank() if ddp else 0)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)
    pre = Path(os.environ["nnUNet_preprocessed"]) / run.dataset_name
    plans_dict, _ = load_plans(run.dataset_name, run.plans)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    plans_dict["continue_training"] = run.continue_training
    cls = nnzoo_trainer_class(trainer_for(run.trainer), result_suffix=budget_suffix(run.labeled),
                              hyperparameters=run.hparams)
    t = cls(plans=plans_dict, configuration=run.configuration, fold=run.fold, dataset_json=dataset_json, device=dev)
    if Path(t.output_folder) != run.fold_dir:  # a trainer that moved its output folder: checks above were elsewhere
        raise RuntimeError(f"{run.trainer} writes to {t.output_folder}, expected {run.fold_dir}")
    for attr, value in (("num_epochs", run.num_epochs), ("num_iterations_per_epoch", run.num_iterations_per_epoch),
                        ("num_val_iterations_per_epoch", run.num_val_iterations_per_epoch),
                        ("save_every", run.save_every)):
        if value is not None:
            setattr(t, attr, int(value))
    t.labeled_budget = run.labeled
    t.labeled_seed = run.seed
    t.disable_checkpointing = run.disable_checkpointing
    compat.load_checkpoint_for_run(t, run.continue_training, run.validation_only, run.pretrained_weights)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if not run.validation_only:
        t.run_training()
    if run.val_best:
        t.load_checkpoint(str(run.fold_dir / "checkpoint_best.pth"))
    if run.validate:
        with compat.validation_on_rank_zero(t) as here:
            if here:
                t.perform_actual_validation(run.npz)
                evaluate_validation(run.dataset_name, run.fold_dir, t.dataset_json)
    return t


def evaluate_validation(dataset_name: str, fold_dir: Path, dataset_json: dict) -> dict:
    """nnzoo's full evaluation (Dice, IoU, HD95, NSD, ASSD, volumes; JSON, CSV, HTML) of a fold's validation.

    Written to ``<fold>/validation/evaluation``, beside nnU-Net's own ``summary.json``.
    """
    from .evaluate import evaluate_folders, summary_table

    gt = Path(os.environ["nnUNet_preprocessed"]) / dataset_name / "gt_segmentations"
    images = Path(os.environ["nnUNet_raw"]) / dataset_name / "imagesTr"
    res = evaluate_folders(gt, fold_dir / "validation", labels=dataset_json, tolerance_mm=1.0,
                           output_dir=fold_dir / "validation" / "evaluation",
                           num_processes=min(4, os.cpu_count() or 1), image_dir=images if images.is_dir() else None)
    print(f"Validation of {fold_dir.name}:\n{summary_table(res)}\nReport: {res['files'].get('html')}")
    return res
