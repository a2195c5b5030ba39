"""Choosing among the zoo: ``find-best`` over every trained model, and prediction with the chosen one or ensemble.

``find_best`` does what ``nnUNetv2_find_best_configuration`` does, over every trained
``<trainer>__<plans>__<configuration>[_<augment>][_labeled<N>]`` of a dataset (so per-method plans,
added augmentations and label budgets are no obstacle): it collects each model's cross-validation predictions with nnU-Net's
``accumulate_cv_results``, scores them with ``nnzoo evaluate`` (Dice, HD95 or NSD; mean over the
foreground and per class), ensembles the best ones with nnU-Net's softmax averaging
(``ensemble_crossvalidations``), determines nnU-Net's postprocessing for the winner
(``determine_postprocessing``) and writes ``find_best.json``, ``find_best.md`` and
``inference_instructions.txt``. ``predict_ensemble`` (``nnzoo predict --from-best DIR`` or
``--ensemble``) predicts with every member (probabilities), ensembles with nnU-Net's
``ensemble_folders`` and applies the postprocessing with ``apply_postprocessing_to_folder``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .ensembling import WEIGHTS_FILE, merge_by_agreement
from .errors import NnzooError, read_json
from .predict import PredictOptions

__all__ = ["METRICS", "NO_AUGMENT", "find_models", "check_complete", "check_compatible", "find_best", "FindBestOptions",
           "predict_ensemble", "RESULT_FILE"]

#: metric name -> (key in nnzoo's summary, higher is better)
METRICS = {"dice": ("Dice", True), "hd95": ("HD95", False), "nsd": ("NSD", True)}
RESULT_FILE = "find_best.json"
#: the ``augments`` filter's name for models trained without ``--augment``
NO_AUGMENT = "none"


def _folds_string(folds) -> str:
    return "_".join(str(f) for f in folds)


def find_models(dataset_name: str, *, configurations: list[str] | None = None,
                trainers: list[str] | None = None, augments: list[str] | None = None) -> list[dict]:
    """Trained model folders of a dataset: ``{"folder", "trainer", "plans", "configuration", "augment", "labeled"}``.

    Args:
        dataset_name: the dataset's name.
        configurations: only these configurations (default: all).
        trainers: only these trainers (default: all).
        augments: only models trained with these ``--augment`` names (:data:`NO_AUGMENT`: without one;
            default: all).
    """
    from .experiment import parse_model_folder_name

    root = Path(os.environ["nnUNet_results"]) / dataset_name
    out = []
    for folder in sorted(root.glob("*__*__*")) if root.is_dir() else []:
        parsed = parse_model_folder_name(folder.name)
        if not folder.is_dir() or parsed is None or not (folder / "plans.json").is_file():
            continue
        info = {"folder": str(folder), **parsed}
        if configurations and info["configuration"] not in configurations:
            continue
        if trainers and info["trainer"] not in trainers:
            continue
        if augments and (info["augment"] or NO_AUGMENT) not in augments:
            continue
        out.append(info)
    return out


def check_complete(folder: str | Path, folds, preprocessed_base: Path) -> str | None:
    """Why a model's cross-validation is incomplete (None: complete, with ``.npz`` for ensembling)."""
    folder = Path(folder)
    splits_file = preprocessed_base / "splits_final.json"
    splits = read_json(splits_file, kind=list, hint="fix or delete it") if splits_file.is_file() else None
    ending = read_json(folder / "dataset.json", hint="the model folder is damaged").get("file_ending")
    if not isinstance(ending, str):
        raise NnzooError(f"{folder / 'dataset.json'}: no file_ending; the model folder is damaged")
    for f in folds:
        fold = folder / f"fold_{f}"
        if not (fold / "checkpoint_final.pth").is_file():
            return f"fold {f} is not trained (no checkpoint_final.pth)"
        val = fold / "validation"
        cases = splits[int(f)]["val"] if splits is not None and int(f) < len(splits) else None
        if not val.is_dir() or cases is None:
            return f"fold {f} has no validation predictions (train without --no-val)"
        missing = [c for c in cases if not (val / f"{c}{ending}").is_file()]
        if missing:
            return f"fold {f}: validation lacks {len(missing)} case(s), e.g. {missing[0]}"
        if any(not (val / f"{c}.npz").is_file() for c in cases):
            return (f"fold {f}: validation has no .npz probabilities (run `nnzoo train ... {f} --val --npz` with the "
                    "model's flags)")
    return None


def check_compatible(folders: list[str | Path]) -> None:
    """Models can be ensembled: same labels/regions, file type, reader, and the same dataset geometry.

    Raises:
        NnzooError: naming the first difference and the two models.
    """
    def facts(folder: Path) -> dict:
        if not folder.is_dir():
            raise NnzooError(f"{folder}: model folder not found")
        dj = read_json(folder / "dataset.json", hint=f"{folder} is not an nnU-Net model folder")
        plans = read_json(folder / "plans.json", hint=f"{folder} is not an nnU-Net model folder")
        missing = [k for k in ("labels", "file_ending") if k not in dj] + [
            k for k in ("image_reader_writer", "transpose_forward", "original_median_spacing_after_transp")
            if k not in plans]
        if missing:
            raise NnzooError(f"{folder}: its dataset.json/plans.json lack {', '.join(missing)}; the model folder is "
                             "damaged")
        return {"labels": dj["labels"], "regions_class_order": dj.get("regions_class_order"),
                "file_ending": dj["file_ending"], "image_reader_writer": plans["image_reader_writer"],
                "transpose_forward": plans["transpose_forward"],
                "spacing": plans["original_median_spacing_after_transp"]}

    ref = facts(Path(folders[0]))
    for other in folders[1:]:
        here = facts(Path(other))
        for key in ref:
            if here[key] != ref[key]:
                what = "label sets" if key in ("labels", "regions_class_order") else key.replace("_", " ")
                raise NnzooError(f"models {Path(folders[0]).name} and {Path(other).name} cannot be ensembled: different "
                                 f"{what} ({ref[key]} vs {here[key]})")


def _score(result: dict, metric: str) -> tuple[float, dict]:
    key = METRICS[metric][0]
    per_class = {result["class_names"].get(str(k), str(k)): float(v[key]) for k, v in result["mean"].items()}
    return float(result["foreground_mean"][key]), per_class


def _evaluate(pred: Path, gt: Path, dataset_json: dict, nproc: int) -> dict:
    from .evaluate import evaluate_folders, save_summary_json

    res = evaluate_folders(gt, pred, labels=dataset_json, num_processes=nproc, report=False)
    save_summary_json(res, pred / "nnzoo_summary.json")
    return res


@dataclass(frozen=True, kw_only=True)
class FindBestOptions:
    """What ``nnzoo find-best`` is asked to do: one field per flag (``from_namespace`` for the CLI).

    Attributes:
        dataset: dataset id or name (``-d``).
        configurations: only these configurations (``-c``; default: all).
        trainers: only these trainers (``-tr``; default: all).
        augments: only models trained with these ``--augment`` names, :data:`NO_AUGMENT` for those trained
            without one (``--augment``; default: all).
        metric: ``dice``, ``hd95`` or ``nsd`` (mean over the foreground classes of the cross-validation).
        ensemble_size: largest ensemble tried (1: none); ensembles are formed from the best models.
        folds: the cross-validation folds (``-f``).
        output_dir: where the results go (``-o``; default ``nnUNet_results/<dataset>/nnzoo_find_best``).
        num_processes: processes for evaluation, ensembling and postprocessing (``-np``).
    """

    dataset: str | int
    configurations: list[str] | None = None
    trainers: list[str] | None = None
    augments: list[str] | None = None
    metric: str = "dice"
    ensemble_size: int = 2
    folds: tuple[int, ...] | list[int] = (0, 1, 2, 3, 4)
    output_dir: str | Path | None = None
    num_processes: int | None = None

    @classmethod
    def from_namespace(cls, args) -> FindBestOptions:
        """The options of an ``argparse`` namespace whose destinations are the field names."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def find_best(options: FindBestOptions) -> dict:
    """Rank every trained model with complete cross-validation, try ensembles, choose, determine postprocessing.

    Args:
        options: the dataset, which models, metric, ensembles, folds, output (see :class:`FindBestOptions`).

    Returns:
        The content of ``find_best.json``.

    Raises:
        NnzooError: unknown metric or dataset, no model with complete cross-validation,
            incompatible ensemble members.
    """
    from nnunetv2.ensembling.ensemble import ensemble_crossvalidations
    from nnunetv2.evaluation.accumulate_cv_results import accumulate_cv_results
    from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing

    from .dataset import resolve_dataset_name
    from .env import setup_folders

    o = options
    dataset, metric, ensemble_size, folds = o.dataset, o.metric, o.ensemble_size, tuple(o.folds)
    output_dir, num_processes = o.output_dir, o.num_processes
    if metric not in METRICS:
        raise NnzooError(f"--metric {metric!r}: use one of {', '.join(METRICS)}")
    if ensemble_size < 1:
        raise NnzooError(f"--ensemble-size must be at least 1, got {ensemble_size}")
    setup_folders(quiet=True)
    name = resolve_dataset_name(dataset)
    nproc = max(1, num_processes or min(4, os.cpu_count() or 1))
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    gt = pre / "gt_segmentations"
    out = Path(output_dir) if output_dir else Path(os.environ["nnUNet_results"]) / name / "nnzoo_find_best"
    models = find_models(name, configurations=o.configurations, trainers=o.trainers, augments=o.augments)
    incomplete, complete = [], []
    for m in models:
        why = check_complete(m["folder"], folds, pre)
        (incomplete if why else complete).append({**m, "incomplete": why} if why else m)
    for m in incomplete:
        print(f"find-best: skipping {Path(m['folder']).name}: {m['incomplete']}")
    if not complete:
        raise NnzooError(f"{name}: no model with complete {len(folds)}-fold cross-validation and .npz validation "
                         f"(found {len(models)} model folder(s)" + (f"; e.g. {Path(incomplete[0]['folder']).name}: "
                                                                    f"{incomplete[0]['incomplete']}" if incomplete else "")
                         + "); train every fold with --npz")
    key, higher = METRICS[metric]
    dataset_json = json.loads((Path(complete[0]["folder"]) / "dataset.json").read_text())
    for i, m in enumerate(complete, 1):
        print(f"find-best [{i}/{len(complete)}] {Path(m['folder']).name}: collecting and scoring the cross-validation")
        merged = Path(m["folder"]) / f"crossval_results_folds_{_folds_string(folds)}"
        accumulate_cv_results(m["folder"], str(merged), list(folds), nproc, True)
        m["source"] = str(merged)
        m["members"] = [m["folder"]]
        m["score"], m["per_class"] = _score(_evaluate(merged, gt, dataset_json, nproc), metric)
    ranked = sorted(complete, key=lambda m: m["score"], reverse=higher)
    pool = ranked[:max(ensemble_size, 3)] if ensemble_size > 1 else []
    combos = [c for k in range(2, ensemble_size + 1) for c in itertools.combinations(pool, k)]
    ensembles = []
    for i, combo in enumerate(combos, 1):
        folders = [m["folder"] for m in combo]
        try:
            check_compatible(folders)
        except NnzooError as e:
            print(f"find-best: {e}; skipped")
            continue
        ident = "ensemble___" + "___".join(Path(f).name for f in folders) + f"___{_folds_string(folds)}"
        target = Path(os.environ["nnUNet_results"]) / name / "ensembles" / ident
        print(f"find-best: ensemble {i}/{len(combos)} ({' + '.join(Path(f).name for f in folders)}): softmax "
              "averaging of the validation probabilities")
        ensemble_crossvalidations(folders, str(target), list(folds), nproc, overwrite=True)
        score, per_class = _score(_evaluate(target, gt, dataset_json, nproc), metric)
        ensembles.append({"folder": str(target), "members": folders, "source": str(target), "score": score,
                          "per_class": per_class})
    candidates = sorted(ranked + ensembles, key=lambda m: m["score"], reverse=higher)  # stable: singles first on ties
    best = candidates[0]
    print(f"find-best: best {metric} {best['score']:.4f}: {' + '.join(Path(f).name for f in best['members'])}; "
          "determining postprocessing (nnU-Net's)")
    plans_file = str(Path(best["members"][0]) / "plans.json")
    determine_postprocessing(best["source"], str(gt), plans_file, str(Path(best["members"][0]) / "dataset.json"),
                             nproc, keep_postprocessed_files=True)
    post_score, _ = _score(_evaluate(Path(best["source"]) / "postprocessed", gt, dataset_json, nproc), metric)
    out.mkdir(parents=True, exist_ok=True)
    for f in ("postprocessing.pkl", "postprocessing.json"):
        shutil.copy(Path(best["source"]) / f, out / f)
    shutil.copy(plans_file, out / "plans.json")
    shutil.copy(Path(best["members"][0]) / "dataset.json", out / "dataset.json")
    result = {"dataset": name, "metric": metric, "higher_is_better": higher, "folds": list(folds),
              "models": [{k: v for k, v in m.items() if k != "source"} for m in ranked],
              "incomplete": incomplete, "ensembles": ensembles,
              "best": {"members": best["members"], "folds": list(folds), "score_before_postprocessing": best["score"],
                       "score_after_postprocessing": post_score, "postprocessing_file": str(out / "postprocessing.pkl"),
                       "plans_file": str(out / "plans.json")}}
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2))
    (out / "find_best.md").write_text(_markdown(result, key))
    (out / "inference_instructions.txt").write_text(_instructions(result, out))
    print((out / "find_best.md").read_text())
    print((out / "inference_instructions.txt").read_text())
    return result


def _markdown(result: dict, key: str) -> str:
    rows = result["models"] + result["ensembles"]
    classes = list(rows[0]["per_class"]) if rows else []
    lines = [f"Cross-validation ({len(result['folds'])} folds) of {result['dataset']}, {key} "
             f"({'higher' if result['higher_is_better'] else 'lower'} is better):", "",
             "| model | " + " | ".join(classes) + f" | mean {key} |", "|---|" + "---|" * (len(classes) + 1)]
    for r in sorted(rows, key=lambda r: r["score"], reverse=result["higher_is_better"]):
        label = " + ".join(Path(f).name for f in r["members"])
        lines.append(f"| {label} | " + " | ".join(f"{r['per_class'][c]:.4f}" for c in classes) + f" | {r['score']:.4f} |")
    b = result["best"]
    lines += ["", f"Best: {' + '.join(Path(f).name for f in b['members'])}: {b['score_before_postprocessing']:.4f} "
              f"({b['score_after_postprocessing']:.4f} with nnU-Net's postprocessing)"]
    for m in result["incomplete"]:
        lines.append(f"Not ranked: {Path(m['folder']).name}: {m['incomplete']}")
    return "\n".join(lines) + "\n"


def _instructions(result: dict, out: Path) -> str:
    b = result["best"]
    folds = " ".join(str(f) for f in b["folds"])
    lines = ["Predict with the chosen model or ensemble and its postprocessing:", "",
             f"nnzoo predict --from-best {out} -i INPUT_FOLDER -o OUTPUT_FOLDER", "",
             "or, step by step with nnU-Net's own commands:", ""]
    members = []
    for i, folder in enumerate(b["members"], 1):
        target = f"OUTPUT_FOLDER_MODEL_{i}" if len(b["members"]) > 1 else "OUTPUT_FOLDER_RAW"
        members.append(target)
        lines.append(f"nnzoo predict -m {folder} -f {folds} -i INPUT_FOLDER -o {target}"
                     + (" --save-probabilities" if len(b["members"]) > 1 else ""))
    merged = members[0]
    if len(members) > 1:
        merged = "OUTPUT_FOLDER_ENSEMBLE"
        lines.append(f"nnUNetv2_ensemble -i {' '.join(members)} -o {merged}")
    lines.append(f"nnUNetv2_apply_postprocessing -i {merged} -o OUTPUT_FOLDER -pp_pkl_file {b['postprocessing_file']} "
                 f"-plans_json {b['plans_file']}")
    return "\n".join(lines) + "\n"


def predict_ensemble(options: PredictOptions) -> list[Path]:
    """``nnzoo predict --from-best DIR`` / ``--ensemble FOLDERS``: members' probabilities, averaged (or, with
    ``--ensemble-weighting agreement``, weighted per case by the two members' agreement: :mod:`.ensembling`),
    postprocessed.

    Each member predicts with ``save_probabilities`` into ``<output_dir>/.nnzoo_members/<i>`` (kept
    until the end, so ``continue_prediction`` resumes a member); nnU-Net's ``ensemble_folders``
    averages them (a single member's segmentation is used as it is) and nnU-Net's
    ``apply_postprocessing_to_folder`` applies the postprocessing ``find-best`` determined.

    Args:
        options: ``from_best`` or ``ensemble`` names the members; input, output, folds, checkpoint,
            device, mirroring, parts, step size and processes apply to every member.

    Returns:
        The ensemble's segmentation files.

    Raises:
        NnzooError: both or neither of ``from_best``/``ensemble``, no ``find_best.json`` in ``from_best``,
            incompatible members, or any error of ``predict``.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.ensembling.ensemble import ensemble_folders
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing_to_folder

    from .predict import check_options, predict

    from_best, model_dirs, folds = options.from_best, options.ensemble, options.folds
    if (from_best is None) == (model_dirs is None):
        raise NnzooError("give --from-best or --ensemble, not both" if from_best else
                         "give --from-best DIR or --ensemble MODEL_FOLDER ...")
    check_options(options)
    pp = None
    if from_best is not None:
        f = Path(from_best) / RESULT_FILE
        if not f.is_file():
            raise NnzooError(f"--from-best {from_best}: no {RESULT_FILE} (the output folder of `nnzoo find-best`)")
        best = read_json(f, hint="re-run `nnzoo find-best`").get("best")
        if not isinstance(best, dict) or not {"members", "folds", "postprocessing_file"} <= set(best):
            raise NnzooError(f"{f}: no complete 'best' entry; re-run `nnzoo find-best`")
        model_dirs, folds = best["members"], [str(x) for x in best["folds"]] if folds is None else folds
        pp = load_pickle(best["postprocessing_file"])
    check_compatible(model_dirs)
    output_dir = Path(options.output_dir).resolve()
    work = output_dir / ".nnzoo_members"
    num_processes = options.num_processes
    if not options.overwrite and not options.continue_prediction and output_dir.is_dir() and any(
            p.is_file() and not p.name.startswith(".") for p in output_dir.iterdir()):
        raise NnzooError(f"{output_dir} is not empty; use --continue, --overwrite or another output folder")
    members = []
    for i, folder in enumerate(model_dirs):
        target = work / str(i)
        print(f"nnzoo: ensemble member {i + 1}/{len(model_dirs)}: {Path(folder).name}")
        predict(replace(options, output_dir=target, model_dir=folder, from_best=None, ensemble=None,
                        ensemble_weighting="mean", folds=folds,
                        dataset=None, configuration=None, labeled=None, augment=None, prev_stage_predictions=None,
                        save_probabilities=len(model_dirs) > 1, overwrite=False,
                        continue_prediction=options.continue_prediction or target.is_dir()))
        members.append(str(target))
    dataset_json = json.loads((Path(model_dirs[0]) / "dataset.json").read_text())
    plans = json.loads((Path(model_dirs[0]) / "plans.json").read_text())
    nproc = max(1, num_processes or min(4, os.cpu_count() or 1))
    merged = work / "merged"
    if options.ensemble_weighting == "agreement":
        print("nnzoo: weighting the two models per case by their agreement (specialist: "
              f"{Path(model_dirs[0]).name}, generalist: {Path(model_dirs[1]).name})")
        merge_by_agreement([Path(m) for m in members], merged, dataset_json=dataset_json, plans=plans,
                           names=[str(m) for m in model_dirs])
    elif len(members) > 1:
        print(f"nnzoo: averaging the probabilities of {len(members)} models (nnU-Net's ensemble_folders)")
        ensemble_folders(members, str(merged), False, nproc, dataset_json, plans)
    else:
        merged = Path(members[0])
    output_dir.mkdir(parents=True, exist_ok=True)
    if pp is not None:
        print("nnzoo: applying find-best's postprocessing (nnU-Net's apply_postprocessing_to_folder)")
        apply_postprocessing_to_folder(str(merged), str(output_dir), pp[0], pp[1], plans, dataset_json, nproc)
    else:
        for f in merged.glob(f"*{dataset_json['file_ending']}"):
            shutil.copy(f, output_dir / f.name)
    if (merged / WEIGHTS_FILE).is_file():
        shutil.copy(merged / WEIGHTS_FILE, output_dir / WEIGHTS_FILE)
    else:  # an --overwrite or --continue of an agreement-weighted folder: its record no longer describes it
        (output_dir / WEIGHTS_FILE).unlink(missing_ok=True)
    written = sorted(output_dir.glob(f"*{dataset_json['file_ending']}"))
    if options.adapt is not None:  # each member adapted on its own: their records, side by side
        from .adaptation import record_file

        records = [json.loads(f.read_text()) for f in (record_file(work / str(i), options)
                                                        for i in range(len(model_dirs))) if f.is_file()]
        record_file(output_dir, options).write_text(json.dumps(
            {**{k: records[0][k] for k in ("method", "hyperparameters", "mode")},
             "members": [{"model": str(m), **{k: r[k] for k in r if k not in ("method", "hyperparameters", "mode")}}
                         for m, r in zip(model_dirs, records)]} if records else {}, indent=2))
    shutil.rmtree(work)
    print(f"nnzoo: {len(written)} segmentation(s) in {output_dir}")
    return written
