"""The checks of ``nnzoo train`` (:func:`~nnzoo.pipeline.train.resolve_run` and ``train`` call them): each
raises :class:`~nnzoo.pipeline.errors.NnzooError` with one line naming the flag, file or value, before any
process starts or anything is written."""

from __future__ import annotations

from pathlib import Path

from .errors import NnzooError
from .experiment import (
    augmentation_hint,
    build_network,
    data_identifier,
    parse_model_folder_name,
)
from .train_options import TrainOptions, TrainRun

__all__ = ["check_budget", "check_unlabeled_available", "check_trainer_supports", "check_schedule",
           "check_pretrained_weights", "parse_hparams", "check_world_size", "check_model_folder",
           "check_checkpoint_to_continue", "COUNT_FLAGS"]


def check_budget(o: TrainOptions, num_training_cases: int) -> None:
    from nnzoo.trainers.label_budget import resolve_labeled_budget

    if o.labeled is None:
        return
    try:
        resolve_labeled_budget(o.labeled, num_training_cases)
    except ValueError as e:
        raise NnzooError(f"--labeled {o.labeled}: {e}") from None


def check_unlabeled_available(o: TrainOptions, plans: dict, pre: Path) -> None:
    """A semi-supervised trainer needs unlabeled images: imagesUnlabeled/ or a label budget."""
    from nnzoo.trainers.registry import find_trainer_info
    from nnzoo.trainers.unlabeled_data import unlabeled_folder, unlabeled_identifiers

    info = find_trainer_info(o.trainer)
    if info is None or not info.semi_supervised or o.labeled is not None:
        return
    folder = unlabeled_folder(pre, data_identifier(plans, o.configuration))
    if not unlabeled_identifiers(folder):
        raise NnzooError(f"{o.trainer} is semi-supervised and needs unlabeled images, but {folder} holds none: add "
                         "them (`nnzoo dataset create --unlabeled DIR`, or imagesUnlabeled/ in the raw dataset) and "
                         "re-run plan_and_preprocess, or train with --labeled N to treat the fold's other training "
                         "cases as unlabeled")


def check_trainer_supports(trainer_cls: type, plans: dict, configuration: str, dataset_json: dict) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnzoo.trainers.base import label_support_problem

    pm = PlansManager(plans)
    cascaded = pm.get_configuration(configuration).previous_stage_name is not None
    problem = label_support_problem(trainer_cls, pm.get_label_manager(dataset_json), cascaded)
    if problem:
        raise NnzooError(f"{problem}; dataset {plans['dataset_name']} ({'configuration ' + configuration if cascaded else 'its labels'})")


#: the flag of each TrainOptions field that must be a positive count
COUNT_FLAGS = {"epochs": "--epochs", "iters": "--iters", "val_iters": "--val-iters", "save_every": "--save-every",
                "num_gpus": "-num_gpus"}


def check_schedule(o: TrainOptions) -> None:
    for name, flag in COUNT_FLAGS.items():
        v = getattr(o, name)
        if v is not None and int(v) < 1:
            raise NnzooError(f"{flag} must be at least 1, got {v}")


def check_pretrained_weights(o: TrainOptions, trainer_cls: type, plans: dict, dataset_json: dict) -> None:
    """The file loads safely and its weights fit the network to be trained (nnU-Net's rule: every parameter
    but the segmentation heads, same shapes), before anything is written."""
    from .checkpoint import check_weights_fit, load_checkpoint_safely

    ckpt = load_checkpoint_safely(o.pretrained_weights)  # a clear error for a missing, unreadable or unsafe file
    check_weights_fit(_network_on_meta(trainer_cls, plans, o.configuration, dataset_json), ckpt["network_weights"],
                      o.pretrained_weights, what=f"the {o.configuration} network of {trainer_cls.__name__}",
                      skip=(".seg_layers.",))


def _network_on_meta(trainer_cls: type, plans: dict, configuration: str, dataset_json: dict):
    """The trainer's network (deep supervision on, as trained) on the meta device: shapes without memory."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    args = (trainer_cls, pm, pm.get_configuration(configuration), dataset_json)
    try:
        with torch.device("meta"):
            return build_network(*args, deep_supervision=True)
    except Exception:  # noqa: BLE001 - a network that cannot be built without data: build it for real
        return build_network(*args, deep_supervision=True)


def parse_hparams(trainer_cls: type, hparams: dict[str, str] | None) -> dict:
    from nnzoo.trainers.base import parse_hyperparameters

    try:
        return parse_hyperparameters(trainer_cls, hparams or {})
    except KeyError as e:
        raise NnzooError(f"--hparam {e.args[0]}{augmentation_hint(trainer_cls, hparams or {})}") from None
    except ValueError as e:
        raise NnzooError(f"--hparam {e}") from None


def check_world_size(batch_size: int, world_size: int) -> None:
    if world_size > batch_size:
        raise NnzooError(f"{world_size} training processes but the plans' batch size is {batch_size}: each process "
                         f"needs at least one patch; use at most {batch_size} processes (nnU-Net splits the batch)")


def check_model_folder(run: TrainRun) -> None:
    out, o = run.fold_dir, run.options
    if o.validation_only:
        ckpt = "checkpoint_best.pth" if o.val_best else "checkpoint_final.pth"
        if not (out / ckpt).is_file():
            raise NnzooError(f"{out / ckpt}: not found; --val validates a finished fold (train it first)")
        return
    existing = sorted(p.name for p in out.glob("checkpoint_*.pth"))
    if existing and not o.resume and not o.overwrite:
        raise NnzooError(f"{out} already holds {', '.join(existing)}; use --continue to resume it or --overwrite "
                         "to start a new training over it")


def check_checkpoint_to_continue(run: TrainRun, trainer_cls: type) -> None:
    """The checkpoint ``--continue`` resumes from (nnU-Net's order: final, latest, best) must load safely and be
    of this trainer and configuration; without any, a run of the same fold under another label budget or
    augmentation (a sibling folder of the same trainer, plans and configuration) is what was meant."""
    from .checkpoint import load_checkpoint_safely

    fold_dir, o = run.fold_dir, run.options
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
        if (fold_dir / name).is_file():
            ckpt = load_checkpoint_safely(fold_dir / name)  # a clear error for a damaged or unsafe file
            config = (ckpt.get("init_args") or {}).get("configuration", o.configuration)
            if ckpt["trainer_name"] != trainer_cls.__name__ or config != o.configuration:
                raise NnzooError(f"{fold_dir / name}: a checkpoint of {ckpt['trainer_name']} ({config}), not of "
                                 f"{trainer_cls.__name__} ({o.configuration}); --continue resumes the same run")
            return
    model = fold_dir.parent
    here = parse_model_folder_name(model.name)
    others = sorted(p.parent.name for p in model.parent.glob(f"*__*__*/{fold_dir.name}")
                    if p.parent != model and any(p.glob("checkpoint_*.pth"))
                    and _same_run_but_suffix(parse_model_folder_name(p.parent.name), here))
    if others:
        raise NnzooError(f"{fold_dir} holds no checkpoint to continue from, but {', '.join(others)} do: the label "
                         "budget and the augmentation are part of the run (give the same --labeled and --augment)")
    print(f"nnzoo: {fold_dir} holds no checkpoint to continue from; starting a new training")


def _same_run_but_suffix(a: dict | None, b: dict | None) -> bool:
    """Two model folders of the same trainer, plans and configuration (label budget or augmentation may differ)."""
    keys = ("trainer", "plans", "configuration")
    return a is not None and b is not None and all(a[k] == b[k] for k in keys)
