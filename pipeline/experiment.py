"""Locating an experiment's pieces: trainer, plans, configuration, preprocessed data, folds and model folders.

Each lookup raises :class:`NnzooError` with what exists instead, so ``train`` and ``predict``
fail early with an actionable message. Configuration inheritance and dataset names are resolved
with nnU-Net's own ``PlansManager`` and dataset-name helpers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import NnzooError

__all__ = ["build_network", "named_model_folder", "dataset_id_of", "data_identifier", "default_plans_name", "load_plans", "check_configuration",
           "parse_fold", "fold_training_cases", "model_folder", "budget_suffix", "model_folder_suffix",
           "parse_model_folder_name", "check_augment", "augmentations", "training_class", "augmentation_hint",
           "trainer_for", "configuration_manager"]


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
                                                                            "splits_final", "domains"))
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
                       labeled: int | float | None, augment: str | None = None) -> Path:
    """The trained model folder nnU-Net's names give (``-d -c -tr -p`` and nnzoo's ``--augment``/``--labeled``).

    Args:
        dataset: dataset id or name.
        configuration: the configuration.
        trainer: the trainer's name.
        plans: the plans (None: the trainer's planner's, else ``nnUNetPlans``).
        labeled: the label budget (parsed), or None.
        augment: the added augmentation (``--augment``), or None.

    Returns:
        ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>[_<augment>][_labeled<N>]``, which exists.

    Raises:
        NnzooError: unknown dataset, trainer (did-you-mean) or augmentation, or no such folder (lists the
            dataset's models).
    """
    from .dataset import resolve_dataset_name

    augment = check_augment(augment)
    name = resolve_dataset_name(dataset)
    folder = model_folder(name, trainer, plans or default_plans_name(trainer), configuration, labeled, augment=augment)
    if not folder.is_dir():
        trainer_for(trainer)  # an unknown trainer name: the did-you-mean error
        have = sorted(p.name for p in folder.parent.glob("*__*__*") if p.is_dir()) if folder.parent.is_dir() else []
        raise NnzooError(f"{folder}: no trained model (-d {dataset} -c {configuration} -tr {trainer}"
                         f"{f' -p {plans}' if plans else ''}{f' --augment {augment}' if augment else ''}"
                         f"{f' --labeled {labeled}' if labeled is not None else ''})"
                         + (f"; models of {name}: {', '.join(have)}" if have else f"; {name} has no models"))
    return folder


def augmentations() -> tuple[str, ...]:
    """The names ``--augment`` accepts (:data:`nnzoo.trainers.augment.AUGMENTATIONS`)."""
    from nnzoo.trainers.augment import AUGMENTATIONS

    return tuple(AUGMENTATIONS)


def check_augment(augment: str | None) -> str | None:
    """``--augment``: None or one of :func:`augmentations`.

    Raises:
        NnzooError: an unknown name (the accepted ones listed).
    """
    if augment is None:
        return None
    have = augmentations()
    if augment not in have:
        raise NnzooError(f"--augment {augment!r}: unknown augmentation; accepted: {', '.join(have)}")
    return augment


def training_class(trainer_class: type, *, augment: str | None = None, hparams: Mapping | None = None) -> type:
    """The class a run trains, of the trainer's name (nnU-Net derives the checkpoint's ``trainer_name`` from it).

    ``trainer_class`` as ``nnzoo train`` runs it (:func:`~nnzoo.trainers.base.nnzoo_trainer_class`),
    with the augmentation applied on top of its own (:func:`~nnzoo.trainers.augment.augmented_trainer_class`),
    then the hyperparameter overrides, so that they reach the trainer's and the augmentation's
    UPPER_CASE attributes alike.

    Args:
        trainer_class: the resolved trainer class.
        augment: ``--augment`` (None: the trainer as it is).
        hparams: ``{NAME: value}`` overrides (parsed).

    Returns:
        The class to build.

    Raises:
        ValueError: an unknown augmentation, or one the trainer already applies.
    """
    from nnzoo.trainers.base import nnzoo_trainer_class

    if augment is None:
        return nnzoo_trainer_class(trainer_class, dict(hparams or {}) or None)
    from nnzoo.trainers.augment import augmented_trainer_class

    return nnzoo_trainer_class(augmented_trainer_class(nnzoo_trainer_class(trainer_class), augment),
                               dict(hparams or {}) or None)


def augmentation_hint(trainer_cls: type, hparams: dict) -> str:
    """``; NAME belongs to --augment A`` for an override of an augmentation's hyperparameter given without it."""
    from nnzoo.trainers.base import method_hyperparameters

    own = method_hyperparameters(trainer_cls)
    for augment in augmentations():
        try:
            theirs = method_hyperparameters(training_class(trainer_cls, augment=augment))
        except ValueError:  # the trainer applies it already
            continue
        names = [n for n in hparams if n not in own and n in theirs]
        if names:
            return f"; {names[0]} belongs to --augment {augment}"
    return ""


def budget_suffix(labeled: int | float | None) -> str:
    """Model-folder suffix of a label budget: ``_labeled4`` (4 cases), ``_labeled0.1`` (10 %), ``""`` (all labels)."""
    return "" if labeled is None else f"_labeled{labeled:g}"


def model_folder_suffix(*, augment: str | None = None, labeled: int | float | None = None) -> str:
    """What nnzoo appends to nnU-Net's ``<trainer>__<plans>__<configuration>``: the augmentation first, then
    the label budget (``_gin``, ``_labeled4``, ``_gin_labeled4``; ``""``: nnU-Net's own folder name)."""
    return (f"_{augment}" if augment else "") + budget_suffix(labeled)


def model_folder(dataset_name: str, trainer: str, plans: str, configuration: str,
                 labeled: int | float | None = None, *, augment: str | None = None) -> Path:
    """``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>[_<augment>][_labeled<N>]``.

    Runs with another augmentation or label budget never share a folder; without either the name is
    nnU-Net's (``nnUNetv2_train``/``nnUNetv2_predict`` find the model).
    """
    return (Path(os.environ["nnUNet_results"]) / dataset_name
            / f"{trainer}__{plans}__{configuration}{model_folder_suffix(augment=augment, labeled=labeled)}")


_BUDGET_RE = re.compile(r"^(?P<rest>.+?)(?:_labeled(?P<labeled>[0-9.]+))?$")


def parse_model_folder_name(name: str) -> dict | None:
    """``{"trainer", "plans", "configuration", "augment", "labeled"}`` of a model folder's name (None: not
    ``<trainer>__<plans>__<configuration>[_<augment>][_labeled<N>]``).

    A ``_<name>`` tail counts as the augmentation only when it is one that ``--augment`` accepts (so a
    configuration named ``3d_lowres`` stays whole); ``labeled`` is the suffix's text (e.g. ``"4"``) or None.
    """
    parts = name.split("__")
    if len(parts) != 3 or not all(parts):
        return None
    m = _BUDGET_RE.match(parts[2])
    configuration, augment = m["rest"], None
    for a in augmentations():
        if configuration.endswith(f"_{a}") and len(configuration) > len(a) + 1:
            configuration, augment = configuration[: -len(a) - 1], a
            break
    return {"trainer": parts[0], "plans": parts[1], "configuration": configuration, "augment": augment,
            "labeled": m["labeled"]}
