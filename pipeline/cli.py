"""The ``nnzoo`` command: a thin argparse layer over :mod:`nnzoo.pipeline`'s API (called by keyword).

Flags follow nnU-Net's (``-d``, ``-c``, ``-pl``, ``-np``, ``-tr``, ``-f``, ``-device``,
``-num_gpus``, ``--npz``...); abbreviations are refused (``--val`` is never ``--val-iters``).
Errors print one ``error:`` line and exit with status 2 (a problem with the input) or 1 (an
unexpected failure; ``--traceback`` shows where), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import NnzooError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse without prefix matching (``allow_abbrev=False``), whose errors are one ``error:`` line."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} -h`)\n")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("-device", "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto (default): CUDA when present, else CPU")


def _dataset_parsers(sub) -> None:
    ds = sub.add_parser("dataset", help="dataset tools").add_subparsers(dest="dataset_command", required=True)
    dc = ds.add_parser("create", help="import plain image/label folders as nnUNet_raw/DatasetNNN_NAME")
    dc.add_argument("--images", required=True, help="folder of images (case.ext, or case_XXXX.ext per channel)")
    dc.add_argument("--labels", required=True, help="folder of label files case.ext")
    dc.add_argument("--name", required=True)
    dc.add_argument("--id", required=True, type=int, dest="dataset_id")
    dc.add_argument("--channel", action="append", required=True, dest="channels",
                    help="channel name, once per channel in order (e.g. --channel T1 --channel T2)")
    dc.add_argument("--unlabeled", default=None, help="folder of unlabeled images (go to imagesUnlabeled/)")
    dc.add_argument("--label", action="append", default=[], dest="label_names", metavar="VALUE=NAME",
                    help="name of a label value (default label_<value>)")
    dc.add_argument("--region", action="append", default=[], dest="regions", metavar="NAME=V1,V2,...",
                    help="region-based training: a region and its label values, once per region, in order")
    dc.add_argument("--regions-class-order", default=None, metavar="V1,V2,...",
                    help="label written for each region at export (default: derived from the regions)")
    dc.add_argument("--ignore-label", type=int, default=None, metavar="VALUE",
                    help="label value of unannotated voxels (nnU-Net's 'ignore'; must be the highest)")
    dc.add_argument("--domains", default=None, metavar="FILE",
                    help="each case's domain (scanner, site, contrast): CSV case,domain or JSON {case: domain}, "
                         "every labeled and --unlabeled case; stored as domains.json")


def _train_parser(sub) -> None:
    tr = sub.add_parser("train", help="train one fold")
    tr.add_argument("dataset")
    tr.add_argument("configuration")
    tr.add_argument("fold")
    tr.add_argument("-tr", default="nnUNetTrainer", dest="trainer")
    tr.add_argument("-p", default=None, dest="plans", help="plans name (default: the trainer's planner's)")
    _add_device(tr)
    tr.add_argument("-num_gpus", type=int, default=1, help="processes on this node (one GPU each; Gloo on -device cpu)")
    tr.add_argument("--continue", "--c", action="store_true", dest="resume", help="resume the fold")
    tr.add_argument("--epochs", type=int, default=None, help="epochs (default: the trainer's, 1000)")
    tr.add_argument("--iters", type=int, default=None, help="training iterations per epoch (default 250)")
    tr.add_argument("--val-iters", type=int, default=None, help="validation iterations per epoch")
    tr.add_argument("--save-every", type=int, default=None, help="epochs between checkpoint_latest writes (50)")
    tr.add_argument("--labeled", default=None, help="keep N (or a fraction of) labeled training cases")
    tr.add_argument("--augment", default=None, metavar="NAME",
                    help="add an input augmentation on top of the trainer's own (gin); the model folder gets _NAME")
    tr.add_argument("--seed", type=int, default=None,
                    help="seed initialisation, sampling and the choice of --labeled cases (default: unseeded)")
    tr.add_argument("--overwrite", action="store_true", help="start over a fold that has checkpoints")
    tr.add_argument("--no-val", action="store_false", dest="validate", help="skip the final validation")
    tr.add_argument("--npz", action="store_true", help="save the validation softmax (needed by find-best)")
    tr.add_argument("--val", action="store_true", dest="validation_only", help="only validate a finished fold")
    tr.add_argument("--val_best", action="store_true", help="validate with checkpoint_best.pth")
    tr.add_argument("-pretrained_weights", default=None, help="nnU-Net checkpoint to initialise the network from")
    tr.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoints")
    tr.add_argument("--hparam", action="append", default=[], dest="hparams", metavar="NAME=VALUE",
                    type=_name_value("--hparam", "NAME=VALUE (e.g. EMA_DECAY=0.999)"),
                    help="override one of the trainer's UPPER_CASE hyperparameters (logged, recorded)")


def _predict_parser(sub) -> None:
    pr = sub.add_parser("predict", help="predict a folder of images")
    pr.add_argument("-i", required=True, dest="input_dir")
    pr.add_argument("-o", required=True, dest="output_dir")
    pr.add_argument("-d", default=None, dest="dataset", help="dataset id or name (not with -m)")
    pr.add_argument("-c", default=None, dest="configuration", help="configuration (not with -m)")
    pr.add_argument("-tr", default="nnUNetTrainer", dest="trainer")
    pr.add_argument("-p", default=None, dest="plans")
    pr.add_argument("--labeled", default=None, help="the label budget the model was trained with (--labeled N)")
    pr.add_argument("--augment", default=None, metavar="NAME", help="the augmentation the model was trained with "
                    "(train --augment NAME)")
    pr.add_argument("-m", default=None, dest="model_dir", help="a model folder anywhere (e.g. an unzipped export)")
    pr.add_argument("--from-best", default=None, dest="from_best", metavar="DIR",
                    help="the model or ensemble and postprocessing chosen by `nnzoo find-best` (its output folder)")
    pr.add_argument("--ensemble", nargs="+", default=None, metavar="MODEL_FOLDER", dest="ensemble",
                    help="ensemble these model folders (softmax averaging, as nnUNetv2_ensemble)")
    pr.add_argument("--ensemble-weighting", default="mean", dest="ensemble_weighting", metavar="{mean,agreement}",
                    help="mean: nnU-Net's softmax average (default); agreement: --ensemble SPECIALIST GENERALIST, "
                         "weighted per case by how much the two agree (ensemble_weights.json records it)")
    pr.add_argument("-f", nargs="+", default=None, dest="folds", help="folds (default: all trained)")
    pr.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    _add_device(pr)
    pr.add_argument("--disable-tta", "--disable_tta", action="store_true")
    pr.add_argument("--save-probabilities", "--save_probabilities", action="store_true")
    pr.add_argument("--overwrite", action="store_true", help="replace existing predictions")
    pr.add_argument("--continue", action="store_true", dest="continue_prediction",
                    help="keep complete predictions in the output folder, predict the rest")
    pr.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (nnU-Net's rule)")
    pr.add_argument("-part_id", type=int, default=0, help="the part to predict (0 .. num_parts - 1)")
    pr.add_argument("-prev_stage_predictions", default=None, help="previous stage's segmentations (cascade)")
    pr.add_argument("-step_size", type=float, default=0.5)
    pr.add_argument("-np", type=int, default=None, dest="num_processes")
    pr.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                    help="torch (default), or onnxruntime: the ONNX networks an `export-model --onnx` zip carries "
                         "(pip install 'nnzoo[onnx]')")
    pr.add_argument("--exact", action="store_true",
                    help="nnU-Net's float32 prediction unchanged (bit-identical to nnUNetv2_predict); default: the "
                         "network in bfloat16 on CPUs that run it natively, float16 on GPUs")
    pr.add_argument("--adapt", default=None, metavar="{tent,vptta,grata}",
                    help="test-time adaptation of every fold on each case before predicting it (TENT, VPTTA, GraTa; "
                         "vptta needs `nnzoo source-stats`); adaptation.json records it")
    pr.add_argument("--adapt-continual", action="store_true", dest="adapt_continual",
                    help="keep the adapted state from case to case (default: every case starts from the trained model)")
    pr.add_argument("--adapt-hparam", action="append", default=None, dest="adapt_hparams", metavar="NAME=VALUE",
                    help="override one of the method's UPPER_CASE hyperparameters (official values by default)")


def _source_stats_parser(sub) -> None:
    ss = sub.add_parser("source-stats", help="record the source statistics test-time adaptation needs "
                                             "(predict --adapt vptta) beside a model's checkpoints")
    ss.add_argument("-d", default=None, dest="dataset", help="dataset id or name (not with -m)")
    ss.add_argument("-c", default=None, dest="configuration", help="configuration (not with -m)")
    ss.add_argument("-tr", default="nnUNetTrainer", dest="trainer")
    ss.add_argument("-p", default=None, dest="plans")
    ss.add_argument("-m", default=None, dest="model_dir", help="a model folder anywhere")
    ss.add_argument("-f", nargs="+", default=None, dest="folds", help="folds (default: all trained)")
    ss.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    ss.add_argument("--keep", action="store_true", help="skip folds that already have them")
    _add_device(ss)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nnzoo`` and its sub-commands."""
    parser = _Parser(prog="nnzoo", description="nnU-Net v2 with published methods as trainers.")
    parser.add_argument("--workdir", default=None,
                        help="folder for nnUNet_raw/nnUNet_preprocessed/nnUNet_results when those variables are unset "
                             "(default ./nnzoo_work)")
    parser.add_argument("--traceback", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _dataset_parsers(sub)

    pp = sub.add_parser("plan_and_preprocess", aliases=["plan-and-preprocess"],
                        help="fingerprint, plan and preprocess (nnU-Net's own functions)")
    pp.add_argument("-d", required=True, nargs="+", dest="datasets", help="dataset id(s) or name(s)")
    pp.add_argument("-c", nargs="+", default=None, dest="configurations",
                    help="configurations to preprocess (default 2d 3d_fullres 3d_lowres)")
    pp.add_argument("-pl", default="ExperimentPlanner", dest="planner", help="planner class (nnzoo or nnU-Net)")
    pp.add_argument("-np", type=int, default=None, dest="num_processes", help="processes (default: cores)")
    pp.add_argument("-gpu_memory_target", type=float, default=None, help="GPU memory target in GB for planning")
    pp.add_argument("--verify", action="store_true", help="also run nnU-Net's dataset integrity check")
    pp.add_argument("--clean", action="store_true", help="recompute the fingerprint")
    pp.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")

    _train_parser(sub)
    _predict_parser(sub)
    _source_stats_parser(sub)

    ev = sub.add_parser("evaluate", help="Dice, IoU, HD95, NSD, ASSD, volumes per case and class; JSON, CSV, HTML")
    ev.add_argument("-ref", required=True, dest="ref_dir", help="reference label files")
    ev.add_argument("-pred", required=True, dest="pred_dir", help="predicted label files (same case names)")
    grp = ev.add_mutually_exclusive_group(required=True)
    grp.add_argument("-d", dest="dataset", help="dataset id or name (labels and reader from its dataset.json)")
    grp.add_argument("--labels", dest="labels_file", help="dataset.json or a JSON of labels/regions")
    ev.add_argument("--tolerance", type=float, default=1.0, dest="tolerance_mm", help="NSD tolerance in mm (default 1)")
    ev.add_argument("-o", dest="output_dir", default=None, help="output folder (default PRED/evaluation)")
    ev.add_argument("--images", dest="image_dir", default=None, help="images for the report's overlays")
    ev.add_argument("-np", type=int, default=None, dest="num_processes")
    ev.add_argument("--groups", dest="groups_file", default=None, metavar="FILE",
                    help="means per group (domain, site, scanner): CSV case,group or JSON {case: group}; "
                         "default with -d: the dataset's domains.json, if it has one")

    fb = sub.add_parser("find-best", help="rank trained models by cross-validation, try ensembles, choose")
    fb.add_argument("-d", required=True, dest="dataset")
    fb.add_argument("-c", nargs="+", default=None, dest="configurations", help="configurations (default: all)")
    fb.add_argument("-tr", nargs="+", default=None, dest="trainers", help="trainers (default: all)")
    fb.add_argument("--augment", nargs="+", default=None, dest="augments", metavar="NAME",
                    help="only models trained with these --augment names, 'none' for those without (default: all)")
    fb.add_argument("--metric", default="dice", choices=["dice", "hd95", "nsd"])
    fb.add_argument("--ensemble-size", type=int, default=2, help="largest ensemble tried (1: none)")
    fb.add_argument("-f", nargs="+", type=int, default=[0, 1, 2, 3, 4], dest="folds")
    fb.add_argument("-o", default=None, dest="output_dir", help="output folder (default nnUNet_results/<ds>/nnzoo_find_best)")
    fb.add_argument("-np", type=int, default=None, dest="num_processes")

    ex = sub.add_parser("export-model", help="a model folder as nnU-Net's zip, with nnzoo's run metadata")
    ex.add_argument("-m", default=None, dest="model_dir",
                    help="the model folder (or: -d -c [-tr -p --augment --labeled])")
    ex.add_argument("-d", default=None, dest="dataset",
                    help="dataset id or name: the model named as nnUNetv2_export_model_to_zip does (not with -m)")
    ex.add_argument("-c", default=None, dest="configuration", help="the model's configuration (with -d)")
    ex.add_argument("-tr", default=None, dest="trainer", help="trainer (with -d; default nnUNetTrainer)")
    ex.add_argument("-p", default=None, dest="plans", help="plans (with -d; default: the trainer's planner's)")
    ex.add_argument("--labeled", default=None, help="the label budget the model was trained with (with -d)")
    ex.add_argument("--augment", default=None, metavar="NAME",
                    help="the augmentation the model was trained with (with -d; train --augment NAME)")
    ex.add_argument("-o", required=True, dest="output_file", help="the zip to write")
    ex.add_argument("-f", nargs="+", default=None, dest="folds")
    ex.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    ex.add_argument("--overwrite", action="store_true")
    ex.add_argument("--onnx", action="store_true",
                    help="also each fold's network as ONNX (fold_<f>/network.onnx; pip install 'nnzoo[onnx]')")
    im = sub.add_parser("install-model", help="install a zip written by export-model into nnUNet_results")
    im.add_argument("zip_file")
    im.add_argument("--overwrite", action="store_true", help="replace an installed model of the same name")

    lt = sub.add_parser("list-trainers", help="registered trainers")
    lt.add_argument("--verbose", action="store_true", help="also the paper, official code and planner")
    lt.add_argument("--markdown", action="store_true", help="the README's methods table")
    sub.add_parser("ext-trainer-path", help="print the folder for nnUNet_extTrainer (nnUNetv2_train/predict)")

    dm = sub.add_parser("demo", help="build the demo dataset, train briefly, predict, report Dice")
    dm.add_argument("--epochs", type=int, default=None)
    dm.add_argument("--iters", type=int, default=None)
    dm.add_argument("-tr", default="nnUNetTrainer", dest="trainer")
    dm.add_argument("--id", type=int, default=None, dest="dataset_id", help="dataset id (default 990)")
    dm.add_argument("--cases", type=int, default=None, help="training cases to generate (default 24)")
    dm.add_argument("--labeled", type=int, default=None, help="train with only N labeled cases")
    _add_device(dm)
    return parser


def _parse_pairs(items: list[str], flag: str, example: str) -> list[tuple[str, str]]:
    out = []
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise NnzooError(f"{flag} expects {example}, got {it!r}")
        out.append((key.strip(), value.strip()))
    return out


def _name_value(flag: str, example: str):
    """An argparse ``type`` reading ``NAME=VALUE`` into a pair (a malformed one is argparse's one-line error)."""

    def parse(text: str) -> tuple[str, str]:
        try:
            return _parse_pairs([text], flag, example)[0]
        except NnzooError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = "NAME=VALUE"
    return parse


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise NnzooError(f"{flag}: expected comma-separated label values, got {text!r}") from None


def _label_names(items: list[str]) -> dict[int, str]:
    pairs = _parse_pairs(items, "--label", "VALUE=NAME (e.g. 1=liver)")
    bad = [f"{v}={n}" for v, n in pairs if not v.isdigit()]
    if bad:
        raise NnzooError(f"--label expects VALUE=NAME with an integer VALUE, got {bad[0]!r}")
    out: dict[int, str] = {}
    for v, n in pairs:
        if int(v) in out and out[int(v)] != n:
            raise NnzooError(f"--label {v}: label value {v} is named twice ({out[int(v)]!r} and {n!r})")
        out[int(v)] = n
    return out  # a name given to two values is refused where every label's name is known (dataset._labels_json)


def _check_find_best_args(args: argparse.Namespace) -> None:
    """find-best's flags, checked before any model is scored: counts, folds, output folder, and -c/-tr
    values that no trained model of the dataset has (a typo would otherwise read as "no model")."""
    from .dataset import resolve_dataset_name
    from .errors import check_folder_can_be_made
    from .experiment import augmentations
    from .selection import NO_AUGMENT, find_models

    if args.num_processes is not None and args.num_processes < 1:
        raise NnzooError(f"-np {args.num_processes}: the number of processes must be at least 1")
    bad = [f for f in args.folds if f < 0]
    if bad:
        raise NnzooError(f"-f {bad[0]}: folds are 0 or more")
    if args.output_dir is not None:
        check_folder_can_be_made(args.output_dir, flag=f"-o {args.output_dir}")
    accepted = (*augmentations(), NO_AUGMENT)
    bad = [a for a in args.augments or [] if a not in accepted]
    if bad:
        raise NnzooError(f"--augment {bad[0]!r}: unknown augmentation; accepted: {', '.join(accepted)}")
    models = [{**m, "augment": m["augment"] or NO_AUGMENT} for m in find_models(resolve_dataset_name(args.dataset))]
    for flag, values, key in (("-c", args.configurations, "configuration"), ("-tr", args.trainers, "trainer"),
                              ("--augment", args.augments, "augment")):
        have = sorted({m[key] for m in models})
        unknown = [v for v in values or [] if v not in have]
        if unknown:
            what = "augmentation" if key == "augment" else key
            raise NnzooError(f"{flag} {unknown[0]}: no trained model of this dataset has the {what} {unknown[0]!r} "
                             f"({'trained: ' + ', '.join(have) if have else 'no trained models'})")


def _list_trainers(verbose: bool, markdown: bool) -> None:
    from nnzoo.trainers import list_trainers

    if markdown:
        from .methods import methods_table

        print(methods_table())
        return
    infos = list_trainers()
    w = max(len(i.name) for i in infos)
    print(f"{'trainer':<{w}}  dims   unlabeled  description")
    for i in infos:
        print(f"{i.name:<{w}}  {'/'.join(i.dims):<5}  {'yes' if i.semi_supervised else 'no':<9}  {i.description}")
        extra = f"; code: {i.official_code}; planner: {i.planner or 'ExperimentPlanner'}" if verbose else ""
        print(f"{'':<{w}}  {'':<5}  {'':<9}  paper: {i.paper}{extra}")


def _run(args: argparse.Namespace) -> None:
    from . import env

    if args.command == "ext-trainer-path":
        from nnzoo.trainers.nnunet_ext import EXT_TRAINER_DIR

        print(EXT_TRAINER_DIR)
        return
    if args.command == "list-trainers":
        _list_trainers(args.verbose, args.markdown)
        return

    env.setup_folders(args.workdir)
    if args.command == "dataset":
        from .dataset import LabelSpec, create_dataset

        regions = {n: _int_list(v, f"--region {n}") for n, v in _parse_pairs(args.regions, "--region", "NAME=V1,V2")}
        order = list(_int_list(args.regions_class_order, "--regions-class-order")) if args.regions_class_order else None
        create_dataset(args.images, args.labels, name=args.name, dataset_id=args.dataset_id, channels=args.channels,
                       unlabeled=args.unlabeled, domains=args.domains,
                       label_spec=LabelSpec(names=_label_names(args.label_names), regions=regions,
                                            regions_class_order=order, ignore_label=args.ignore_label))
    elif args.command in ("plan_and_preprocess", "plan-and-preprocess"):
        from .plan import plan_and_preprocess

        for d in args.datasets:
            plan_and_preprocess(d, configurations=args.configurations, planner=args.planner,
                                num_processes=args.num_processes, verify=args.verify,
                                gpu_memory_target=args.gpu_memory_target, clean=args.clean, preprocess=not args.no_pp)
    elif args.command == "train":
        from .train import TrainOptions, train

        train(TrainOptions.from_namespace(argparse.Namespace(**{**vars(args), "hparams": dict(args.hparams)})))
    elif args.command == "predict":
        _predict(args)
    elif args.command == "source-stats":
        from .source_stats import SourceStatsOptions, source_stats

        source_stats(SourceStatsOptions.from_namespace(args))
    elif args.command == "evaluate":
        from .evaluate import EvaluateOptions, evaluate

        evaluate(EvaluateOptions.from_namespace(args))
    elif args.command == "find-best":
        from .selection import FindBestOptions, find_best

        _check_find_best_args(args)
        find_best(FindBestOptions.from_namespace(args))
    elif args.command == "export-model":
        from .models import export_model, find_model_folder

        model_dir = find_model_folder(model_dir=args.model_dir, dataset=args.dataset, configuration=args.configuration,
                                      trainer=args.trainer, plans=args.plans, labeled=args.labeled,
                                      augment=args.augment)
        export_model(model_dir, args.output_file, folds=args.folds, checkpoint=args.checkpoint,
                     overwrite=args.overwrite, onnx=args.onnx)
    elif args.command == "install-model":
        from .models import install_model

        install_model(args.zip_file, overwrite=args.overwrite)
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(trainer=args.trainer, epochs=args.epochs, iters=args.iters, dataset_id=args.dataset_id,
                 num_cases=args.cases, device=args.device, labeled=args.labeled)


def _predict(args: argparse.Namespace) -> None:
    from .predict import PredictOptions, predict
    from .selection import predict_ensemble

    options = PredictOptions.from_namespace(args)
    if options.from_best or options.ensemble:
        predict_ensemble(options)
    else:
        predict(options)


def _one_line(e: BaseException, limit: int = 400) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nnzoo``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # -h, or a flag error already printed as one line
        return int(e.code or 0)
    # nnU-Net reads its process count when first imported: settle it before anything imports nnunetv2
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(8, os.cpu_count() or 1))))
    try:
        _run(args)
    except NnzooError as e:
        print(f"error: {_one_line(e, limit=2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the contract: one line, never a traceback (unless asked for)
        if args.traceback:
            raise
        print(f"error: unexpected {type(e).__name__}: {_one_line(e)} (nnzoo --traceback {args.command} ... shows "
              "where)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
