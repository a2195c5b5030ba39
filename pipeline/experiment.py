"""Locating an experiment's pieces: trainer, plans, configuration, preprocessed data, folds and model folders.

Each lookup raises :class:`NnzooError` with what exists instead, so ``train`` and ``predict``
fail early with an actionable message. Configuration inheritance and dataset names are resolved
with nnU-Net's own ``PlansManager`` and dataset-name helpers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import NnzooError

__all__ = ["build_network", "named_model_folder", "dataset_id_of", "data_identifier", "default_plans_name", "load_plans", "check_configuration",
           "parse_fold", "fold_training_cases", "model_folder", "budget_suffix", "trainer_for", "configuration_manager"]


def dataset_id_of(dataset_name: str) -> int:
    """The id of ``DatasetNNN_NAME`` (nnU-Net's ``convert_dataset_name_to_id``)."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    return int(convert_dataset_name_to_id(dataset_name))


def trainer_for(name: str, configuration: str | None = None) -> type:
    """Trainer class for a name (registry first, then nnU-Net's own), checked against the configuration.

    Raises:
        NnzooError: unknown name (with suggestions), or a 2D/3D mismatch with the trainer.
    """
    from nnzoo.trainers.registry import UnknownTrainerError, find_trainer_info, resolve_trainer_class

    try:
        cls = resolve_trainer_class(name)
    except UnknownTrainerError as e:
        raise NnzooError(str(e)) from None
    info = find_trainer_info(name)
    if info is not None and configuration is not None:
        dim = "2d" if configuration.startswith("2d") else "3d"
        if dim not in info.dims:
            raise NnzooError(f"trainer {name} supports {'/'.join(info.dims)} only, not configuration {configuration!r}")
    return cls


def build_network(trainer_class: type, plans_manager, configuration_manager, dataset_json: dict, *,
                  deep_supervision: bool):
    """The trainer's network for a configuration, as nnU-Net's trainer and predictor build it.

    Args:
        trainer_class: the trainer (its ``build_network_architecture``).
        plans_manager: nnU-Net's ``PlansManager`` of the plans.
        configuration_manager: the configuration's ``ConfigurationManager``.
        dataset_json: the dataset's ``dataset.json`` (input channels, segmentation heads).
        deep_supervision: deep-supervision outputs on (training) or off (inference).

    Returns:
        The network (nnU-Net's initialisation, on the current default device).
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    num_in = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return trainer_class.build_network_architecture(plans_manager, configuration_manager, num_in, num_out,
                                                    enable_deep_supervision=deep_supervision)


def default_plans_name(trainer: str) -> str:
    """Plans of the trainer's registered planner (its ``PLANS_NAME``), ``nnUNetPlans`` when it has none."""
    from nnzoo.plans.registry import plans_name_of
    from nnzoo.trainers.registry import find_trainer_info

    info = find_trainer_info(trainer)
    return plans_name_of(info.planner) if info is not None and info.planner else "nnUNetPlans"


def load_plans(dataset_name: str, plans: str) -> tuple[dict, Path]:
    """Plans dict and the preprocessed dataset folder.

    Raises:
        NnzooError: the plans file does not exist or is not valid JSON (lists the plans that do exist).
    """
    base = Path(os.environ["nnUNet_preprocessed"]) / dataset_name
    f = base / f"{plans}.json"
    if not f.is_file():
        have = sorted(p.stem for p in base.glob("*.json") if p.stem not in ("dataset", "dataset_fingerprint",
                                                                            "splits_final"))
        raise NnzooError(f"{f}: plans not found; run `nnzoo plan_and_preprocess -d {dataset_id_of(dataset_name)}` "
                         "first" + (f" (plans present: {', '.join(have)})" if have else ""))
    try:
        return json.loads(f.read_text()), base
    except json.JSONDecodeError as e:
        raise NnzooError(f"{f}: not valid JSON ({e}); re-run plan_and_preprocess") from None


def configuration_manager(plans: dict, configuration: str):
    """nnU-Net's ``ConfigurationManager`` of a configuration (``inherits_from`` resolved by ``PlansManager``)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans).get_configuration(configuration)


def data_identifier(plans: dict, configuration: str) -> str:
    """Name of the preprocessed data folder of a configuration."""
    return configuration_manager(plans, configuration).data_identifier


def check_configuration(plans: dict, configuration: str, preprocessed_base: Path | None = None) -> None:
    """Configuration exists in the plans (and, with ``preprocessed_base``, its data was preprocessed).

    Raises:
        NnzooError: unknown configuration or missing preprocessed data.
    """
    cfgs = plans["configurations"]
    if configuration not in cfgs:
        raise NnzooError(f"unknown configuration {configuration!r} for plans {plans['plans_name']}; "
                         f"available: {', '.join(cfgs)}")
    if preprocessed_base is not None:
        folder = preprocessed_base / data_identifier(plans, configuration)
        if not folder.is_dir() or not any(folder.iterdir()):
            raise NnzooError(f"{folder}: configuration {configuration} is not preprocessed; run "
                             f"`nnzoo plan_and_preprocess -d {dataset_id_of(preprocessed_base.name)} -c {configuration}"
                             f" -pl {plans.get('experiment_planner_used', 'ExperimentPlanner')}`")


def _splits(preprocessed_base: Path) -> list[dict] | None:
    f = preprocessed_base / "splits_final.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise NnzooError(f"{f}: not valid JSON ({e}); fix or delete it (nnU-Net then makes a new 5-fold split)") from None


def parse_fold(fold: str | int, preprocessed_base: Path | None = None) -> int | str:
    """``'all'`` or a fold index that the dataset's splits hold.

    Raises:
        NnzooError: not an integer/'all', negative, or beyond the splits file's folds.
    """
    if str(fold) == "all":
        return "all"
    try:
        f = int(fold)
    except ValueError:
        raise NnzooError(f"fold must be an integer or 'all', got {fold!r}") from None
    splits = _splits(preprocessed_base) if preprocessed_base is not None else None
    n = len(splits) if splits is not None else 5
    if not 0 <= f < n:
        raise NnzooError(f"fold {f} does not exist: the splits have {n} folds (0-{n - 1}), or use 'all'")
    return f


def fold_training_cases(preprocessed_base: Path, data_folder: Path, fold: int | str) -> list[str]:
    """The fold's training cases as nnU-Net's ``do_split`` will choose them.

    ``splits_final.json`` when it exists, else nnU-Net's seeded 5-fold split of the preprocessed
    cases (``generate_crossval_split``, seed 12345, as ``do_split`` makes it); fold ``all``: every case.

    Raises:
        NnzooError: too few cases for nnU-Net's 5-fold split.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    cases = sorted(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))
    if fold == "all":
        return cases
    splits = _splits(preprocessed_base)
    if splits is None:
        if len(cases) < 5:
            raise NnzooError(f"{data_folder}: {len(cases)} case(s) are too few for nnU-Net's 5-fold cross-validation; "
                             "train fold 'all' or add cases")
        splits = generate_crossval_split(cases, seed=12345, n_splits=5)
    return sorted(splits[int(fold)]["train"])


def named_model_folder(dataset: str | int, configuration: str, *, trainer: str, plans: str | None,
                       labeled: int | float | None) -> Path:
    """The trained model folder nnU-Net's names give (``-d -c -tr -p`` and nnzoo's ``--labeled``).

    Args:
        dataset: dataset id or name.
        configuration: the configuration.
        trainer: the trainer's name.
        plans: the plans (None: the trainer's planner's, else ``nnUNetPlans``).
        labeled: the label budget (parsed), or None.

    Returns:
        ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>[_labeled<N>]``, which exists.

    Raises:
        NnzooError: unknown dataset or trainer (did-you-mean), or no such folder (lists the dataset's models).
    """
    from .dataset import resolve_dataset_name

    name = resolve_dataset_name(dataset)
    folder = model_folder(name, trainer, plans or default_plans_name(trainer), configuration, labeled)
    if not folder.is_dir():
        trainer_for(trainer)  # an unknown trainer name: the did-you-mean error
        have = sorted(p.name for p in folder.parent.glob("*__*__*") if p.is_dir()) if folder.parent.is_dir() else []
        raise NnzooError(f"{folder}: no trained model (-d {dataset} -c {configuration} -tr {trainer}"
                         f"{f' -p {plans}' if plans else ''}{f' --labeled {labeled}' if labeled is not None else ''})"
                         + (f"; models of {name}: {', '.join(have)}" if have else f"; {name} has no models"))
    return folder


def budget_suffix(labeled: int | float | None) -> str:
    """Model-folder suffix of a label budget: ``_labeled4`` (4 cases), ``_labeled0.1`` (10 %), ``""`` (all labels)."""
    return "" if labeled is None else f"_labeled{labeled:g}"


def model_folder(dataset_name: str, trainer: str, plans: str, configuration: str,
                 labeled: int | float | None = None) -> Path:
    """``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>[_labeled<N>]``."""
    return (Path(os.environ["nnUNet_results"]) / dataset_name
            / f"{trainer}__{plans}__{configuration}{budget_suffix(labeled)}")
