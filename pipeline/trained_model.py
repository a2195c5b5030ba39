"""A trained model folder as prediction (and ``source-stats``) use it: found, checked, loaded.

``resolve_model`` finds the folder (``-m``, or nnU-Net's names ``-d -c -tr -p`` with nnzoo's ``--labeled`` and
``--augment``) and checks its folds and checkpoints; ``load_model`` builds the network and reads every fold's
weights (``weights_only``, :mod:`nnzoo.pipeline.checkpoint`). Re-exported by :mod:`nnzoo.pipeline.predict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import NnzooError, read_json
from .experiment import build_network, named_model_folder, trainer_for

__all__ = ["ModelRef", "find_folds", "resolve_model", "load_model"]


@dataclass
class ModelRef:
    """A trained model folder and what prediction needs of it."""

    folder: Path
    folds: list[int | str]
    checkpoint: str
    configuration: str
    plans: dict
    dataset_json: dict

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]


def find_folds(folder: Path, folds: list[str] | None, checkpoint: str) -> list[int | str]:
    """Folds to use: the requested ones (each must have the checkpoint) or every fold that has it.

    Raises:
        NnzooError: a requested fold lacks the checkpoint, or no fold has it.
    """
    if folds:
        out: list[int | str] = []
        for f in folds:
            if str(f) != "all" and not str(f).isdigit():
                raise NnzooError(f"-f: folds are integers or 'all', got {f!r}")
            f = "all" if str(f) == "all" else int(f)
            if not (folder / f"fold_{f}" / checkpoint).is_file():
                raise NnzooError(f"{folder / f'fold_{f}' / checkpoint}: not found (fold {f} not trained, or "
                                 f"not finished: see --checkpoint)")
            out.append(f)
        return out
    found = sorted(int(p.name[5:]) for p in folder.glob("fold_*") if p.name[5:].isdigit()
                   and (p / checkpoint).is_file())
    if not found and (folder / "fold_all" / checkpoint).is_file():
        found = ["all"]
    if not found:
        raise NnzooError(f"{folder}: no fold has {checkpoint} (training not finished? --checkpoint "
                         "checkpoint_latest.pth or checkpoint_best.pth use an unfinished one)")
    return found


def resolve_model(*, model_dir: str | Path | None = None, dataset: str | int | None = None,
                  configuration: str | None = None, trainer: str = "nnUNetTrainer", plans: str | None = None,
                  labeled: int | float | None = None, augment: str | None = None, folds: list[str] | None = None,
                  checkpoint: str = "checkpoint_final.pth") -> ModelRef:
    """The model folder given by ``-m`` or by dataset, configuration, trainer, plans, label budget and augmentation.

    Raises:
        NnzooError: unknown dataset, trainer or augmentation, no such model folder, missing plans/dataset.json,
            folds.
    """
    if model_dir is not None:
        folder = Path(model_dir).resolve()
        if not folder.is_dir():
            raise NnzooError(f"-m {model_dir}: model folder not found")
    else:
        if dataset is None or configuration is None:
            raise NnzooError("give a model folder (-m) or the dataset (-d) and configuration (-c)")
        folder = named_model_folder(dataset, configuration, trainer=trainer, plans=plans, labeled=labeled,
                                    augment=augment)
    for f in ("plans.json", "dataset.json"):
        if not (folder / f).is_file():
            raise NnzooError(f"{folder / f}: not found; {folder} is not an nnU-Net model folder")
    plans_dict = read_json(folder / "plans.json", hint="the model folder is damaged")
    dataset_json = read_json(folder / "dataset.json", hint="the model folder is damaged")
    use_folds = find_folds(folder, folds, checkpoint)
    from .checkpoint import load_checkpoint_safely

    first_file = folder / f"fold_{use_folds[0]}" / checkpoint
    first = load_checkpoint_safely(first_file)
    config = (first.get("init_args") or {}).get("configuration")
    if configuration is not None and configuration != config:
        raise NnzooError(f"-c {configuration}: the model in {folder} was trained for configuration {config!r}")
    if config not in plans_dict.get("configurations", {}):
        raise NnzooError(f"{first_file}: trained for configuration {config!r}, which {folder / 'plans.json'} does not "
                         "have: a checkpoint of another model?")
    if model_dir is None and first["trainer_name"] != trainer:
        raise NnzooError(f"{first_file}: a checkpoint of {first['trainer_name']}, not of -tr {trainer}: a checkpoint "
                         "of another model?")
    return ModelRef(folder, use_folds, checkpoint, config, plans_dict, dataset_json)


def load_model(model: ModelRef):
    """Network, managers and per-fold weights of a model.

    Returns:
        ``(network, plans_manager, configuration_manager, parameters, dataset_json, trainer_name, mirror_axes)``,
        the arguments of ``nnUNetPredictor.manual_initialization``.

    Raises:
        NnzooError: unreadable/unsafe checkpoints, or folds trained by different trainers.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from .checkpoint import check_weights_fit, load_checkpoint_safely

    plans_manager = PlansManager(model.plans)
    ckpts = [load_checkpoint_safely(model.folder / f"fold_{f}" / model.checkpoint) for f in model.folds]
    names = {c["trainer_name"] for c in ckpts}
    if len(names) > 1:
        raise NnzooError(f"{model.folder}: folds were trained by different trainers {sorted(names)}")
    trainer_name = ckpts[0]["trainer_name"]
    configuration_manager = plans_manager.get_configuration(model.configuration)
    network = build_network(trainer_for(trainer_name), plans_manager, configuration_manager, model.dataset_json,
                            deep_supervision=False)
    parameters = [c["network_weights"] for c in ckpts]
    for f, weights in zip(model.folds, parameters):
        check_weights_fit(network, weights, model.folder / f"fold_{f}" / model.checkpoint,
                          what=f"the {model.configuration} network of {trainer_name}")
    network.load_state_dict(parameters[0])
    return (network, plans_manager, configuration_manager, parameters, model.dataset_json, trainer_name,
            ckpts[0].get("inference_allowed_mirroring_axes"))
