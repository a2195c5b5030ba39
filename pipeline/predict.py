"""``predict``: sliding-window prediction of a folder of images with a trained model (or a cascade).

Uses nnU-Net's ``nnUNetPredictor`` through ``manual_initialization``, after loading the
checkpoints with ``weights_only=True`` (see :mod:`nnzoo.pipeline.checkpoint`). Works for models
trained by nnzoo and by stock ``nnUNetv2_train``, found under ``nnUNet_results`` (``-d -c -tr -p
[--augment NAME] [--labeled N]``) or in any model folder (``-m``, e.g. an unzipped export). Outputs keep the
input's geometry. nnzoo adds: input checks before the model loads, ``--continue`` (complete
outputs are kept, half-written ones redone), ``-num_parts/-part_id`` sharding with nnU-Net's rule,
and a cascade (``3d_cascade_fullres``) that predicts its ``3d_lowres`` stage first when
``-prev_stage_predictions`` is not given.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from .dataset import scan_image_folder
from .errors import NnzooError, check_folder_can_be_made
from .experiment import check_augment
from .trained_model import ModelRef, find_folds, load_model, resolve_model
from .validate import Case, check_cases

__all__ = ["predict", "PredictOptions", "check_options", "in_process", "BACKENDS", "find_folds", "load_model", "ModelRef", "resolve_model", "complete_outputs", "predict_cases"]


#: ``--backend``: the network in PyTorch, or the ONNX networks of an export made with ``--onnx``
BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    """What ``nnzoo predict`` is asked to do: one field per flag, built once (``from_namespace`` for the CLI).

    Attributes:
        input_dir: images, ``case.ext`` (one channel) or ``case_XXXX.ext`` as in nnU-Net (``-i``).
        output_dir: where ``case<file_ending>`` segmentations are written; not the input folder (``-o``).
        dataset: dataset id or name the model was trained on (``-d``; not needed with ``model_dir``).
        configuration: e.g. ``3d_fullres`` (``-c``; not needed with ``model_dir``); ``3d_cascade_fullres``
            runs the ``3d_lowres`` stage first unless ``prev_stage_predictions`` are given.
        trainer: trainer name of the model folder (``-tr``).
        plans: plans name (``-p``; default: the trainer's planner's plans, else ``nnUNetPlans``).
        labeled: the label budget the model was trained with (its folder's ``_labeled<N>``).
        augment: the augmentation the model was trained with (``nnzoo train --augment``; its folder's
            ``_<augment>``).
        model_dir: a model folder anywhere (``-m``: ``plans.json``, ``dataset.json``, ``fold_*/``), e.g. an
            unzipped export.
        from_best: the output folder of ``nnzoo find-best`` (its chosen model or ensemble and postprocessing).
        ensemble: model folders whose probabilities are averaged (as ``nnUNetv2_ensemble``).
        ensemble_weighting: how ``ensemble`` members are combined: ``mean`` (nnU-Net's average) or ``agreement``
            (two members, a specialist and a generalist, weighted per case by their agreement:
            :mod:`nnzoo.pipeline.ensembling`).
        folds: folds to ensemble (``-f``; default: every fold with the checkpoint).
        checkpoint: checkpoint file name (``-chk``).
        device: ``auto``, ``cpu``, ``cuda``.
        disable_tta: no mirroring test-time augmentation.
        save_probabilities: also write ``case.npz``/``case.pkl`` with class probabilities.
        overwrite: replace existing predictions in ``output_dir``.
        continue_prediction: keep complete predictions in ``output_dir`` and predict the rest
            (``--continue``; half-written files are redone).
        num_parts: split the (sorted) cases into this many parts, as nnU-Net's ``-num_parts``.
        part_id: the part this call predicts (``cases[part_id::num_parts]``).
        prev_stage_predictions: folder of the previous stage's segmentations for a cascade.
        step_size: sliding-window step as a fraction of the patch size.
        num_processes: processes for preprocessing and export (``-np``; default: cores, at most 4).
        exact: nnU-Net's float32 predictor unchanged (``--exact``; outputs bit-identical to
            ``nnUNetv2_predict``); default: the network in reduced precision where the hardware runs it
            natively (:mod:`nnzoo.pipeline.inference`).
        backend: ``torch`` (default) or ``onnxruntime``: the folds' ONNX networks that ``nnzoo export-model
            --onnx`` added to the model folder, run by ONNX Runtime inside nnU-Net's sliding window.
        adapt: test-time adaptation per case and fold (``--adapt tent|vptta|grata``; :mod:`nnzoo.trainers.adapt`,
            :mod:`nnzoo.pipeline.adaptation`).
        adapt_continual: keep the adapted state from case to case (default: every case from the trained state).
        adapt_hparams: ``NAME=VALUE`` overrides of the method's hyperparameters (``--adapt-hparam``).
    """

    input_dir: str | Path
    output_dir: str | Path
    dataset: str | int | None = None
    configuration: str | None = None
    trainer: str = "nnUNetTrainer"
    plans: str | None = None
    labeled: int | float | str | None = None
    augment: str | None = None
    model_dir: str | Path | None = None
    from_best: str | Path | None = None
    ensemble: list[str] | None = None
    ensemble_weighting: str = "mean"
    folds: list[str] | None = None
    checkpoint: str = "checkpoint_final.pth"
    device: str = "auto"
    disable_tta: bool = False
    save_probabilities: bool = False
    overwrite: bool = False
    continue_prediction: bool = False
    num_parts: int = 1
    part_id: int = 0
    prev_stage_predictions: str | Path | None = None
    step_size: float = 0.5
    num_processes: int | None = None
    exact: bool = False
    backend: str = "torch"
    adapt: str | None = None
    adapt_continual: bool = False
    adapt_hparams: list[str] | None = None

    @classmethod
    def from_namespace(cls, args) -> PredictOptions:
        """The options of an ``argparse`` namespace whose destinations are the field names."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def _check_reader(model: ModelRef, ending: str):
    """The model's image reader (from its plans), checked against the input files' type.

    Raises:
        NnzooError: the input file type is not one the model's reader supports.
    """
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    name = model.plans["image_reader_writer"]
    reader = recursive_find_reader_writer_by_name(name)
    supported = list(reader.supported_file_endings)
    if ".nii.gz" in supported:  # readers of .nii.gz read uncompressed .nii just as well
        supported.append(".nii")
    if ending.lower() not in supported:
        raise NnzooError(f"input images are {ending} files, but this model reads images with {name} "
                         f"({', '.join(supported)}); convert the inputs")
    return reader


def complete_outputs(targets: dict[str, Path], reader_class, with_probabilities: bool) -> tuple[set[str], list[Path]]:
    """Cases whose outputs are complete, and the half-written outputs found (which the caller redoes).

    A segmentation is complete when nnU-Net's reader reads it whole; with probabilities its
    ``.npz`` and ``.pkl`` must be there and the ``.npz`` must load.
    """
    import numpy as np

    done, broken = set(), []
    for case, target in targets.items():
        files = [target]
        if with_probabilities:
            stem = str(target)[: -len(target.name)] + case
            files += [Path(stem + ".npz"), Path(stem + ".pkl")]
        if not target.exists():
            broken += [f for f in files[1:] if f.exists()]
            continue
        try:
            reader_class().read_seg(str(target))
            if with_probabilities:
                np.load(files[1])["probabilities"]
                if not files[2].is_file():
                    raise OSError("missing properties")
            done.add(case)
        except Exception:  # noqa: BLE001 - any read failure means: not complete
            broken += [f for f in files if f.exists()]
    return done, broken


def in_process(options: PredictOptions, device) -> bool:
    """Whether the cases are preprocessed, predicted and exported one after another in this process
    (nnU-Net's ``predict_from_files_sequential``) instead of nnU-Net's worker processes.

    On the CPU (not ``--exact``), yes: the network's threads already use every core, so workers overlap
    little and each spends seconds starting up (a new interpreter importing torch and nnU-Net). Measured
    on the 2-core development machine (2026-12-06, brain-phantom models of ``benchmarks/bench_predict.py``,
    two alternating runs each): a whole ``nnzoo predict`` of 3 ``3d_fullres`` cases with mirroring took
    10.2–10.3 s in process against 16.0–16.2 s with 2 workers, of 6 ``2d`` cases 5.5–5.7 s against
    11.4–12.2 s. On a GPU the workers keep it busy while the CPU preprocesses, as in nnU-Net.
    """
    return device.type == "cpu" and not options.exact


def predict_cases(model: ModelRef, cases: dict[str, list[str]], output_dir: Path, *, options: PredictOptions,
                  device, num_processes: int, save_probabilities: bool,
                  prev_stage_predictions: Path | None = None) -> list[tuple[str | None, float]]:
    """Predict ``{case: channel files}`` with nnU-Net's predictor into ``output_dir`` (files ``<case><ending>``).

    Args:
        model: the model.
        cases: ``{case: channel files}``.
        output_dir: the folder written.
        options: the run's options (mirroring and step size are read from it).
        device: the resolved device.
        num_processes: preprocessing and export processes.
        save_probabilities: also write ``case.npz``/``case.pkl``.
        prev_stage_predictions: the previous stage's segmentations of a cascade.

    Returns:
        With ``--adapt``: ``(case, seconds spent adapting)`` per predicted case; else empty.
    """
    from .adaptation import load_adaptation
    from .inference import make_predictor

    loaded = load_model(model)
    predictor = make_predictor(exact=options.exact, device=device, step_size=options.step_size,
                               use_mirroring=not options.disable_tta,
                               adaptation=load_adaptation(options, model, network=loaded[0]))
    if options.backend == "onnxruntime":
        from .onnx_backend import OnnxFoldsNetwork, onnx_files

        network = OnnxFoldsNetwork(onnx_files(model.folder, model.folds), device=device)
        loaded = (network, *loaded[1:3], network.fold_parameters(), *loaded[4:])
    predictor.manual_initialization(*loaded)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(cases)
    inputs = [cases[c] for c in names]
    with tempfile.TemporaryDirectory(prefix="nnzoo-cascade-inputs-") as links:
        if prev_stage_predictions is not None:
            # nnU-Net finds a case's previous-stage segmentation by cutting "_XXXX<ending>" off the name
            # of its first input file; nnzoo's inputs may be named "<case><ending>", so the inputs are
            # linked under nnU-Net's channel names for this call
            ending = model.file_ending
            inputs = []
            for c in names:
                inputs.append([])
                for i, f in enumerate(cases[c]):
                    link = Path(links) / f"{c}_{i:04d}{ending}"
                    link.symlink_to(Path(f).resolve())
                    inputs[-1].append(str(link))
        prev = str(prev_stage_predictions) if prev_stage_predictions else None
        if in_process(options, device):
            for i, (c, files) in enumerate(zip(names, inputs), 1):
                print(f"nnzoo: [{i}/{len(names)}] {c}", flush=True)
                predictor.current_case = c
                predictor.predict_from_files_sequential([files], [str(output_dir / c)],
                                                        save_probabilities=save_probabilities, overwrite=True,
                                                        folder_with_segs_from_prev_stage=prev)
        else:
            predictor.predict_from_files(inputs, [str(output_dir / c) for c in names],
                                         save_probabilities=save_probabilities, overwrite=True,
                                         num_processes_preprocessing=num_processes,
                                         num_processes_segmentation_export=num_processes,
                                         folder_with_segs_from_prev_stage=prev)
    return list(getattr(predictor, "adaptation_seconds", []))


def _previous_stage(model: ModelRef) -> str | None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(model.plans).get_configuration(model.configuration).previous_stage_name


def check_options(o: PredictOptions) -> None:
    """The checks of the options that need no model (for ``predict`` and ``predict_ensemble``).

    Raises:
        NnzooError: naming the flag and the value.
    """
    if o.model_dir is not None and o.dataset is not None:
        raise NnzooError(f"give -m {o.model_dir} or -d {o.dataset}, not both (-m names the model folder itself)")
    check_augment(o.augment)
    if o.augment is not None and (o.model_dir is not None or o.from_best is not None or o.ensemble):
        raise NnzooError(f"--augment {o.augment} names a model folder with -d and -c; -m, --from-best and --ensemble "
                         "name the model folders themselves")
    from .ensembling import WEIGHTINGS

    if o.ensemble_weighting not in WEIGHTINGS:
        raise NnzooError(f"--ensemble-weighting {o.ensemble_weighting}: one of {', '.join(WEIGHTINGS)}")
    if o.ensemble_weighting == "agreement" and o.from_best is not None:
        raise NnzooError("--ensemble-weighting agreement weighs the two models of --ensemble, not --from-best's")
    if o.ensemble_weighting == "agreement" and len(o.ensemble or []) != 2:
        raise NnzooError("--ensemble-weighting agreement weighs two models: give --ensemble SPECIALIST GENERALIST "
                         f"(got {len(o.ensemble or [])} model folder(s))")
    if o.num_parts < 1:
        raise NnzooError(f"-num_parts {o.num_parts}: must be at least 1")
    if not 0 <= o.part_id < o.num_parts:
        raise NnzooError(f"-part_id {o.part_id}: must be between 0 and -num_parts - 1 ({o.num_parts - 1})")
    if not 0 < o.step_size <= 1:
        raise NnzooError(f"-step_size {o.step_size}: must be in (0, 1] (a fraction of the patch size)")
    if o.num_processes is not None and o.num_processes < 1:
        raise NnzooError(f"-np {o.num_processes}: must be at least 1")
    if o.overwrite and o.continue_prediction:
        raise NnzooError("--overwrite and --continue cannot be combined")
    if o.backend not in BACKENDS:
        raise NnzooError(f"--backend {o.backend}: one of {', '.join(BACKENDS)}")
    from .adaptation import check_adapt_options

    check_adapt_options(o)
    if o.backend == "onnxruntime":
        from .onnx_backend import require_onnxruntime

        require_onnxruntime()
    check_folder_can_be_made(o.output_dir, flag=f"-o {o.output_dir}")


def predict(options: PredictOptions) -> list[Path]:
    """Predict every case of a folder (or this part of it) with one model (``options.model_dir``, or the
    model of ``options.dataset``/``configuration``/``trainer``/``plans``/``labeled``/``augment``).

    Args:
        options: what to predict, with which model, how (see :class:`PredictOptions`).

    Returns:
        The segmentation files of this part (predicted now or kept).

    Raises:
        NnzooError: unknown dataset/model/fold, output folder is the input folder, existing
            predictions without ``overwrite``/``continue_prediction``, bad input images, bad parts,
            a cascade whose previous stage is missing.
    """
    import torch

    from .env import resolve_device, setup_folders
    from .train import parse_labeled

    o = options
    setup_folders(quiet=True)
    check_options(o)
    input_dir, output_dir = Path(o.input_dir).resolve(), Path(o.output_dir).resolve()
    num_parts, part_id, checkpoint, save_probabilities = o.num_parts, o.part_id, o.checkpoint, o.save_probabilities
    prev_stage_predictions = o.prev_stage_predictions
    if output_dir == input_dir:
        raise NnzooError(f"output folder {output_dir} is the input folder; choose another one")
    model = resolve_model(model_dir=o.model_dir, dataset=o.dataset, configuration=o.configuration, trainer=o.trainer,
                          plans=o.plans, labeled=parse_labeled(o.labeled), augment=o.augment, folds=o.folds,
                          checkpoint=checkpoint)
    if o.backend == "onnxruntime":
        from .onnx_backend import onnx_files

        onnx_files(model.folder, model.folds)  # a clear error naming the missing network.onnx before anything runs
    from .adaptation import check_previous_record, load_adaptation, write_record

    load_adaptation(o, model)  # a clear error naming `nnzoo source-stats` before anything runs
    cases, in_ending = scan_image_folder(input_dir, len(model.dataset_json["channel_names"]), "input")
    reader = _check_reader(model, in_ending)
    cases = {c: cases[c] for c in sorted(cases)[part_id::num_parts]}  # nnU-Net's sharding rule
    check_cases([Case(c, f) for c, f in cases.items()], None, o.num_processes, what=f"input folder {input_dir}",
                reader_class=reader)
    targets = {c: output_dir / f"{c}{model.file_ending}" for c in cases}
    todo = dict(cases)
    if o.continue_prediction:
        done, broken = complete_outputs(targets, reader, save_probabilities)
        for f in broken:
            f.unlink()
        todo = {c: f for c, f in cases.items() if c not in done}
        check_previous_record(output_dir, o, kept=len(done))
        print(f"nnzoo: --continue: {len(done)} complete prediction(s) kept" +
              (f", {len(broken)} half-written file(s) redone" if broken else ""))
    elif not o.overwrite:
        clash = [str(t) for t in targets.values() if t.exists()]
        if clash:
            raise NnzooError(f"{len(clash)} prediction(s) already exist in {output_dir} (e.g. {clash[0]}); use "
                             "--continue to keep them and predict the rest, --overwrite to replace them, or choose "
                             "another output folder")
    prev = _previous_stage(model)
    if prev_stage_predictions is not None:
        if prev is None:
            raise NnzooError(f"-prev_stage_predictions: configuration {model.configuration} is not a cascade stage")
        lacking = [c for c in todo if not (Path(prev_stage_predictions) / f"{c}{model.file_ending}").is_file()]
        if lacking:
            raise NnzooError(f"-prev_stage_predictions {prev_stage_predictions}: no {prev} segmentation for "
                             f"{len(lacking)} case(s), e.g. {lacking[0]}{model.file_ending}")
    elif prev is not None:
        prev_model = resolve_model(model_dir=model.folder.parent / model.folder.name.replace(
            f"__{model.configuration}", f"__{prev}", 1), folds=[str(f) for f in model.folds], checkpoint=checkpoint)
        load_adaptation(o, prev_model)
    dev = resolve_device(o.device)
    nproc = max(1, o.num_processes or min(4, os.cpu_count() or 1))
    part = f" (part {part_id + 1} of {num_parts})" if num_parts > 1 else ""
    from .inference import fast_dtype

    precision = ("ONNX Runtime, float32" if o.backend == "onnxruntime" else "float32, --exact" if o.exact
                 else f"{str(fast_dtype(dev) or torch.float32)[6:]}, --exact: float32")
    print(f"nnzoo: predicting {len(todo)} case(s){part} with {model.folder.name} folds {model.folds} on {dev} "
          f"({precision}){' (no TTA)' if o.disable_tta else ''}"
          f"{f' (--adapt {o.adapt}, ' + ('continual)' if o.adapt_continual else 'episodic)') if o.adapt else ''} "
          f"-> {output_dir}")
    seconds: list[tuple[str | None, float, float | None]] = []
    if todo:
        kwargs = dict(options=o, device=dev, num_processes=nproc)
        if prev is not None and prev_stage_predictions is None:
            with tempfile.TemporaryDirectory(prefix="nnzoo-prev-stage-") as tmp:
                print(f"nnzoo: cascade: predicting the {prev} stage first ({prev_model.folder.name})")
                seconds += predict_cases(prev_model, todo, Path(tmp), save_probabilities=False, **kwargs)
                seconds += predict_cases(model, todo, output_dir, save_probabilities=save_probabilities,
                              prev_stage_predictions=Path(tmp), **kwargs)
        else:
            seconds += predict_cases(model, todo, output_dir, save_probabilities=save_probabilities,
                          prev_stage_predictions=Path(prev_stage_predictions) if prev_stage_predictions else None,
                          **kwargs)
    missing = [str(t) for t in targets.values() if not t.is_file()]
    if missing:
        raise NnzooError(f"prediction did not write {', '.join(missing[:5])}")
    if todo:
        per_case: dict = {}
        for c, sec, change in seconds:  # a cascade adapts both stages: seconds add up, changes average
            t, ch = per_case.get(c, (0.0, []))
            per_case[c] = (t + sec, ch + ([change] if change is not None else []))
        write_record(output_dir, o, [(c, t, sum(ch) / len(ch) if ch else None) for c, (t, ch) in per_case.items()],
                     device=str(dev), folds=model.folds)
    print(f"nnzoo: {len(targets)} segmentation(s) in {output_dir}")
    return list(targets.values())
