"""``train``: one fold of one configuration, through nnU-Net's trainer loop, on one or several processes.

nnzoo adds to ``nnUNetv2_train``: trainer names resolved through the registry (a method's plans
are planned on the spot when only the default plans exist), every check before anything is
built or written, a short schedule (``epochs``/``iters``) recorded in ``nnzoo_run.json`` beside
the checkpoints (so ``--continue`` and ``predict`` need no repeated flags), atomic checkpoints,
low-label runs (``labeled``), an input augmentation added to any trainer (``augment``, see
:mod:`nnzoo.trainers.augment`), seeds, and DDP on CPU (Gloo) and on several nodes
(:mod:`nnzoo.pipeline.distributed`). A label budget and an augmentation each give the run a model
folder of its own (:func:`~nnzoo.pipeline.experiment.model_folder`); without them the folder is nnU-Net's.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .dataset import resolve_dataset_name
from .errors import NnzooError, read_json
from .experiment import (
    check_augment,
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
    training_class,
)
from .train_checks import (
    check_budget,
    check_checkpoint_to_continue,
    check_model_folder,
    check_pretrained_weights,
    check_schedule,
    check_trainer_supports,
    check_unlabeled_available,
    check_world_size,
    parse_hparams,
)
from .train_options import TrainOptions, TrainRun, parse_labeled

__all__ = ["train", "TrainOptions", "TrainRun", "resolve_run", "parse_labeled", "training_class", "evaluate_validation",
           "RUN_FILE"]  # training_class: re-exported from .experiment

RUN_FILE = "nnzoo_run.json"


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


def resolve_run(options: TrainOptions) -> TrainRun:
    """Check every option and resolve the run, before any process starts or anything is written.

    Names are resolved (dataset, trainer, plans: a method's plans are planned on the spot when only
    nnU-Net's default plans exist), the fold and label budget parsed, and with ``resume``/
    ``validation_only`` the schedule, seed and hyperparameters of the run being continued read
    back from its ``nnzoo_run.json`` (flags given now win; other hyperparameters are an error).

    Raises:
        NnzooError: unknown dataset, plans, configuration, fold or trainer; a trainer that does not
            support the dataset's labels or configuration; a label budget larger than the fold;
            existing checkpoints without ``resume``/``overwrite``; a bad schedule or flag
            combination; a damaged checkpoint or pretrained-weights file.
    """
    from .env import setup_folders

    o = options
    folders = setup_folders(quiet=True)
    name = resolve_dataset_name(o.dataset)
    trainer_cls = trainer_for(o.trainer, o.configuration)
    augment = check_augment(o.augment)
    plans_name = o.plans or default_plans_name(o.trainer)
    if o.plans is None:
        _plan_method_plans_on_the_spot(name, o.trainer, plans_name, o.configuration)
    plans_dict, pre = load_plans(name, plans_name)
    check_configuration(plans_dict, o.configuration, pre)
    fold = parse_fold(o.fold, pre)
    # the fold's training cases (a clear error when nnU-Net's 5-fold split has too few), before anything is written
    training_cases = fold_training_cases(pre, pre / data_identifier(plans_dict, o.configuration), fold)
    check_schedule(o)
    if o.resume and o.validation_only:
        raise NnzooError("--continue and --val cannot be combined: --val only validates a finished fold")
    if o.val_best and o.disable_checkpointing:
        raise NnzooError("--val_best needs checkpoint_best.pth, which --disable_checkpointing does not write")
    if o.pretrained_weights is not None and (o.resume or o.validation_only):
        raise NnzooError("-pretrained_weights only applies to a new training (not with --continue or --val)")
    dataset_json = read_json(pre / "dataset.json", hint="re-run plan_and_preprocess")
    check_trainer_supports(trainer_cls, plans_dict, o.configuration, dataset_json)

    budget = parse_labeled(o.labeled)
    overrides = parse_hparams(_augmented(trainer_cls, augment), dict(o.hparams or {}))
    out = model_folder(name, trainer_cls.__name__, plans_name, o.configuration, budget, augment=augment) / f"fold_{fold}"
    run_file = out / RUN_FILE
    prev = _previous_record(run_file) if (o.resume or o.validation_only) else {}
    if overrides and prev.get("hparams") not in (None, overrides):
        raise NnzooError(f"--hparam {overrides} differs from the run being continued ({prev['hparams']})")
    if prev and prev.get("augment") != augment:  # the folder is per augmentation: only a hand-moved run gets here
        raise NnzooError(f"{run_file}: the run being continued was trained with --augment {prev.get('augment')}, not "
                         f"{'--augment ' + augment if augment else 'without --augment'}; --continue/--val resume the "
                         "same run")
    resolved = replace(
        o, dataset=name, fold=fold, plans=plans_name, labeled=budget, augment=augment,
        epochs=o.epochs or prev.get("num_epochs"), iters=o.iters or prev.get("num_iterations_per_epoch"),
        val_iters=o.val_iters or (max(1, round(o.iters / 5)) if o.iters else None)
        or prev.get("num_val_iterations_per_epoch"), save_every=o.save_every or prev.get("save_every"),
        seed=o.seed if o.seed is not None else prev.get("seed"), validate=o.validate or o.validation_only,
        pretrained_weights=str(Path(o.pretrained_weights).resolve()) if o.pretrained_weights else None,
        hparams=overrides or prev.get("hparams") or {})
    run = TrainRun(resolved, folders)
    check_budget(resolved, len(training_cases))
    if not o.validation_only:
        check_unlabeled_available(resolved, plans_dict, pre)
    check_model_folder(run)
    if o.resume:
        check_checkpoint_to_continue(run, trainer_cls)
    if o.pretrained_weights is not None:
        check_pretrained_weights(resolved, training_class(trainer_cls, augment=augment, hparams=resolved.hparams),
                                  plans_dict, dataset_json)
    return run


def _augmented(trainer_cls: type, augment: str | None) -> type:
    """The trainer with the augmentation (its hyperparameters are the trainer's and the augmentation's).

    Raises:
        NnzooError: the trainer already applies this augmentation itself.
    """
    if augment is None:
        return trainer_cls
    try:
        return training_class(trainer_cls, augment=augment)
    except ValueError as e:
        raise NnzooError(str(e)) from None


def _previous_record(run_file: Path) -> dict:
    if not run_file.is_file():
        return {}
    return read_json(run_file, hint="remove it to continue with the flags given now")


def train(options: TrainOptions) -> Path:
    """Train one fold (on ``options.num_gpus`` processes, or as one rank of a torchrun launch).

    Args:
        options: what to train (see :class:`TrainOptions`).

    Returns:
        The fold's output folder.

    Raises:
        NnzooError: any problem :func:`resolve_run` finds, a batch too small for the number of
            processes, or a failed training process.
    """
    from . import distributed
    from .env import resolve_device

    run = resolve_run(options)
    o = run.options
    plans_dict, _ = load_plans(run.dataset_name, o.plans)
    _print_memory_note(plans_dict, o)
    world = distributed.launched_by_torchrun()
    dev = resolve_device(o.device, local_rank=int(os.environ.get("LOCAL_RANK", 0)) if world else None)
    check_world_size(configuration_manager(plans_dict, o.configuration).batch_size,
                      int(os.environ["WORLD_SIZE"]) if world else o.num_gpus)
    if o.pretrained_weights is not None and dev.type != "cuda" and (world or o.num_gpus > 1):
        raise NnzooError("-pretrained_weights with several CPU processes is not supported (nnU-Net loads them onto "
                         "cuda:<rank>); train on one process or on GPUs")
    out = run.fold_dir
    if world:
        import torch.distributed as dist

        with distributed.process_group(distributed.backend_for(dev.type)):
            if dist.get_rank() == 0:
                _start_record(run, out)
            run_process(run)
    elif o.num_gpus > 1:
        _start_record(run, out)
        distributed.spawn_processes(run_process, (run,), o.num_gpus, dev.type)
    else:
        _start_record(run, out)
        run_process(run)
    if not world or int(os.environ.get("RANK", "0")) == 0:
        from .source_stats import record_after_training

        record_after_training(out, o)
    return out


def _print_memory_note(plans: dict, o: TrainOptions) -> None:
    """What the method planner recorded about the method's GPU memory at the planned patch, for the number of
    patches per step this run uses (``UNLABELED_BATCH_RATIO`` may be overridden with ``--hparam``)."""
    from nnzoo.plans.base import memory_note

    ratio = getattr(trainer_for(o.trainer), "UNLABELED_BATCH_RATIO", None)
    ratio = float(o.hparams.get("UNLABELED_BATCH_RATIO", ratio)) if ratio is not None else None
    note = memory_note(plans, o.configuration, None if ratio is None else 1 + ratio)
    if note:
        print(f"nnzoo: plans {plans['plans_name']} ({plans.get('experiment_planner_used')}): patch {note['patch_size']}, "
              f"batch {note['batch_size']}; the method needs about {note['gpu_memory_target_gb']} GB of GPU memory "
              f"there ({note['method_vs_unet']}x the plain U-Net's)")


def _start_record(run: TrainRun, out: Path) -> None:
    """Write ``nnzoo_run.json`` and forget a previous run's labeled split (rank 0 / the launcher only)."""
    from nnzoo.trainers.files import write_json_atomic
    from nnzoo.trainers.label_budget import LABELED_SPLIT_FILE

    o = run.options
    out.mkdir(parents=True, exist_ok=True)
    if not o.resume and not o.validation_only:  # a new run chooses its labeled cases anew
        (out / LABELED_SPLIT_FILE).unlink(missing_ok=True)
    write_json_atomic(out / RUN_FILE, run.record(), indent=2)
    what = "validating" if o.validation_only else "training"
    print(f"nnzoo: {what} {o.trainer} on {run.dataset_name} {o.configuration} fold {o.fold} ({o.device})"
          + (f", {o.labeled} labeled cases" if o.labeled is not None else "")
          + (f", --augment {o.augment}" if o.augment else "")
          + (f", seed {o.seed}" if o.seed is not None else "")
          + (f", hyperparameters {dict(o.hparams)}" if o.hparams else ""))


def run_process(run: TrainRun):
    """Build the trainer and train/validate in this process (one rank under DDP); returns the trainer."""
    import torch

    from nnzoo.trainers import nnunet_compat as compat

    from .env import resolve_device

    o = run.options
    os.environ.update(run.folders)
    ddp = torch.distributed.is_initialized()
    dev = resolve_device(o.device, local_rank=int(os.environ.get("LOCAL_RANK", 0)) if ddp else None)
    if o.seed is not None:  # per rank, so that ranks draw different patches (DDP starts all from rank 0's weights)
        import random

        import numpy as np

        seed = o.seed + (torch.distributed.get_rank() if ddp else 0)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)
    pre = Path(os.environ["nnUNet_preprocessed"]) / run.dataset_name
    plans_dict, _ = load_plans(run.dataset_name, o.plans)
    dataset_json = read_json(pre / "dataset.json", hint="re-run plan_and_preprocess")
    cls = training_class(trainer_for(o.trainer), augment=o.augment, hparams=o.hparams)
    t = compat.build_trainer(cls, plans=plans_dict, configuration=o.configuration, fold=o.fold,
                             dataset_json=dataset_json, device=dev, resume=o.resume,
                             model_folder_name=run.model_folder_name)
    if Path(t.output_folder) != run.fold_dir:  # a trainer that moved its output folder: checks above were elsewhere
        raise RuntimeError(f"{o.trainer} writes to {t.output_folder}, expected {run.fold_dir}")
    for attr, value in (("num_epochs", o.epochs), ("num_iterations_per_epoch", o.iters),
                        ("num_val_iterations_per_epoch", o.val_iters), ("save_every", o.save_every)):
        if value is not None:
            setattr(t, attr, int(value))
    t.labeled_budget = o.labeled
    t.labeled_seed = o.seed
    t.disable_checkpointing = o.disable_checkpointing
    compat.run_nnunet_training(
        t, resume=o.resume, validation_only=o.validation_only, pretrained_weights=o.pretrained_weights,
        val_best=o.val_best, validate=o.validate, npz=o.npz,
        after_validation=lambda: evaluate_validation(run.dataset_name, run.fold_dir, t.dataset_json))
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
