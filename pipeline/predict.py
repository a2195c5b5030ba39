"""``predict``: sliding-window prediction of a folder of images with a trained model.

Uses nnU-Net's ``nnUNetPredictor`` through ``manual_initialization``, after loading the
checkpoints with ``weights_only=True`` (see :mod:`nnzoo.pipeline.checkpoint`). Works for models
trained by nnzoo and by stock ``nnUNetv2_train``. Outputs keep the input's geometry (nnU-Net
restores size, spacing, origin and direction on export).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .dataset import resolve_dataset_name, scan_image_folder
from .errors import NnzooError
from .experiment import default_plans_name, model_folder, trainer_for
from .validate import Case, check_cases

__all__ = ["predict", "find_folds", "load_model"]


def find_folds(folder: Path, folds: list[str] | None, checkpoint: str) -> list[int | str]:
    """Folds to use: the requested ones (each must have the checkpoint) or every fold that has it.

    Raises:
        NnzooError: a requested fold lacks the checkpoint, or no fold has it.
    """
    if folds:
        out: list[int | str] = []
        for f in folds:
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


def _check_reader(folder: Path, ending: str) -> None:
    """The model's image reader (from its plans) must read the input files.

    Raises:
        NnzooError: the input file type is not one the model's reader supports.
    """
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    name = json.loads((folder / "plans.json").read_text())["image_reader_writer"]
    supported = list(recursive_find_reader_writer_by_name(name).supported_file_endings)
    if ".nii.gz" in supported:  # readers of .nii.gz read uncompressed .nii just as well
        supported.append(".nii")
    if ending.lower() not in supported:
        raise NnzooError(f"input images are {ending} files, but this model reads images with {name} "
                         f"({', '.join(supported)}); convert the inputs")


def load_model(folder: Path, folds: list[int | str], checkpoint: str):
    """Network, managers and per-fold weights of a trained model folder.

    Returns:
        ``(network, plans_manager, configuration_manager, parameters, dataset_json, trainer_name, mirror_axes)``,
        the arguments of ``nnUNetPredictor.manual_initialization``.

    Raises:
        NnzooError: unreadable/unsafe checkpoints, or folds trained by different trainers.
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from .checkpoint import load_checkpoint_safely

    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
    ckpts = [load_checkpoint_safely(folder / f"fold_{f}" / checkpoint) for f in folds]
    names = {c["trainer_name"] for c in ckpts}
    if len(names) > 1:
        raise NnzooError(f"{folder}: folds were trained by different trainers {sorted(names)}")
    first = ckpts[0]
    trainer_name = first["trainer_name"]
    configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
    trainer_cls = trainer_for(trainer_name)
    num_in = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    network = trainer_cls.build_network_architecture(plans_manager, configuration_manager, num_in, num_out,
                                                     enable_deep_supervision=False)
    parameters = [c["network_weights"] for c in ckpts]
    network.load_state_dict(parameters[0])
    return (network, plans_manager, configuration_manager, parameters, dataset_json, trainer_name,
            first.get("inference_allowed_mirroring_axes"))


def predict(input_dir: str | Path, output_dir: str | Path, dataset: str | int, configuration: str,
            trainer: str = "nnUNetTrainer", plans: str | None = None, folds: list[str] | None = None,
            checkpoint: str = "checkpoint_final.pth", device: str = "auto", disable_tta: bool = False,
            save_probabilities: bool = False, overwrite: bool = False, step_size: float = 0.5,
            num_processes: int | None = None) -> list[Path]:
    """Predict every case of a folder.

    Args:
        input_dir: images, ``case.ext`` (one channel) or ``case_XXXX.ext`` as in nnU-Net.
        output_dir: where ``case<file_ending>`` segmentations are written; not the input folder.
        dataset: dataset id or name the model was trained on.
        configuration: e.g. ``3d_fullres``.
        trainer: trainer name of the model folder.
        plans: plans name (default: the trainer's planner's plans, else ``nnUNetPlans``).
        folds: folds to ensemble (default: every fold with the checkpoint).
        checkpoint: checkpoint file name.
        device: ``auto``, ``cpu``, ``cuda``.
        disable_tta: no mirroring test-time augmentation.
        save_probabilities: also write ``case.npz`` with class probabilities.
        overwrite: replace existing predictions in ``output_dir``.
        step_size: sliding-window step as a fraction of the patch size.
        num_processes: processes for preprocessing and export (default: cores, at most 4).

    Returns:
        The written segmentation files.

    Raises:
        NnzooError: unknown dataset/model/fold, output folder is the input folder, existing
            predictions without ``overwrite``, or bad input images.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from .env import resolve_device

    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    if output_dir == input_dir:
        raise NnzooError(f"output folder {output_dir} is the input folder; choose another one")
    name = resolve_dataset_name(dataset)
    plans = plans or default_plans_name(trainer)
    folder = model_folder(name, trainer, plans, configuration)
    if not folder.is_dir():
        trainer_for(trainer)  # unknown trainer name: the did-you-mean error
        have = sorted(p.name for p in folder.parent.glob("*__*__*")) if folder.parent.is_dir() else []
        raise NnzooError(f"{folder}: no trained model" + (f"; models of {name}: {', '.join(have)}" if have else ""))
    use_folds = find_folds(folder, folds, checkpoint)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    n_ch = len(dataset_json["channel_names"])
    cases, in_ending = scan_image_folder(input_dir, n_ch, "input")
    _check_reader(folder, in_ending)
    ending = dataset_json["file_ending"]
    check_cases([Case(c, f) for c, f in cases.items()], None, num_processes, what=f"input folder {input_dir}")
    targets = [output_dir / f"{c}{ending}" for c in cases]
    clash = [str(t) for t in targets if t.exists()]
    if clash and not overwrite:
        raise NnzooError(f"{len(clash)} prediction(s) already exist in {output_dir} (e.g. {clash[0]}); use "
                         "--overwrite to replace them or choose another output folder")

    dev = resolve_device(device)
    model = load_model(folder, use_folds, checkpoint)
    nproc = max(1, num_processes or min(4, os.cpu_count() or 1))
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=not disable_tta,
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=True)
    predictor.manual_initialization(*model)
    print(f"nnzoo: predicting {len(cases)} case(s) with {trainer} {configuration} folds {use_folds} on {dev}"
          f"{' (no TTA)' if disable_tta else ''} -> {output_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files([cases[c] for c in cases], [str(output_dir / c) for c in cases],
                                 save_probabilities=save_probabilities, overwrite=True,
                                 num_processes_preprocessing=nproc, num_processes_segmentation_export=nproc)
    missing = [str(t) for t in targets if not t.is_file()]
    if missing:
        raise NnzooError(f"prediction did not write {', '.join(missing[:5])}")
    print(f"nnzoo: wrote {len(targets)} segmentation(s) to {output_dir}")
    return targets
