"""The ``nnzoo`` command: a thin argparse layer over :mod:`nnzoo.pipeline`'s API.

Flags follow nnU-Net's (``-d``, ``-c``, ``-pl``, ``-np``, ``-tr``, ``-f``, ``-device``...). Errors
about the user's input print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import NnzooError

__all__ = ["main", "build_parser"]


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("-device", "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto (default): CUDA when present, else CPU")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nnzoo`` and its sub-commands."""
    parser = argparse.ArgumentParser(prog="nnzoo", description="nnU-Net v2 with published methods as trainers.")
    parser.add_argument("--workdir", default=None,
                        help="folder for nnUNet_raw/nnUNet_preprocessed/nnUNet_results when those variables are unset "
                             "(default ./nnzoo_work)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    tr = sub.add_parser("train", help="train one fold")
    tr.add_argument("dataset")
    tr.add_argument("configuration")
    tr.add_argument("fold")
    tr.add_argument("-tr", default="nnUNetTrainer", dest="trainer")
    tr.add_argument("-p", default=None, dest="plans", help="plans name (default: the trainer's planner's)")
    _add_device(tr)
    tr.add_argument("--continue", "--c", action="store_true", dest="continue_training", help="resume the fold")
    tr.add_argument("--epochs", type=int, default=None, help="epochs (default: the trainer's, 1000)")
    tr.add_argument("--iters", type=int, default=None, help="training iterations per epoch (default 250)")
    tr.add_argument("--val-iters", type=int, default=None, help="validation iterations per epoch")
    tr.add_argument("--save-every", type=int, default=None, help="epochs between checkpoint_latest writes (50)")
    tr.add_argument("--labeled", default=None, help="keep N (or a fraction of) labeled training cases")
    tr.add_argument("--overwrite", action="store_true", help="start over a fold that has checkpoints")
    tr.add_argument("--no-val", action="store_true", help="skip the final validation")
    tr.add_argument("--seed", type=int, default=None,
                    help="seed initialisation, sampling and the choice of --labeled cases (default: unseeded)")

    pr = sub.add_parser("predict", help="predict a folder of images")
    pr.add_argument("-i", required=True, dest="input_dir")
    pr.add_argument("-o", required=True, dest="output_dir")
    pr.add_argument("-d", required=True, dest="dataset")
    pr.add_argument("-c", required=True, dest="configuration")
    pr.add_argument("-tr", default="nnUNetTrainer", dest="trainer")
    pr.add_argument("-p", default=None, dest="plans")
    pr.add_argument("-f", nargs="+", default=None, dest="folds", help="folds (default: all trained)")
    pr.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    _add_device(pr)
    pr.add_argument("--disable-tta", "--disable_tta", action="store_true")
    pr.add_argument("--save-probabilities", "--save_probabilities", action="store_true")
    pr.add_argument("--overwrite", action="store_true", help="replace existing predictions")
    pr.add_argument("-step_size", type=float, default=0.5)
    pr.add_argument("-np", type=int, default=None, dest="num_processes")

    ev = sub.add_parser("evaluate", help="Dice, IoU, HD95, NSD, ASSD, volumes per case and class; JSON, CSV, HTML")
    ev.add_argument("-ref", required=True, dest="ref_dir", help="reference label files")
    ev.add_argument("-pred", required=True, dest="pred_dir", help="predicted label files (same case names)")
    grp = ev.add_mutually_exclusive_group(required=True)
    grp.add_argument("-d", dest="dataset", help="dataset id or name (labels from its dataset.json)")
    grp.add_argument("--labels", dest="labels_file", help="dataset.json or a JSON of labels/regions")
    ev.add_argument("--tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1)")
    ev.add_argument("-o", dest="output_dir", default=None, help="output folder (default PRED/evaluation)")
    ev.add_argument("--images", dest="image_dir", default=None, help="images for the report's overlays")
    ev.add_argument("-np", type=int, default=None, dest="num_processes")

    lt = sub.add_parser("list-trainers", help="registered trainers")
    lt.add_argument("--verbose", action="store_true", help="also the paper and planner")
    sub.add_parser("ext-trainer-path", help="print the folder for nnUNet_extTrainer (nnUNetv2_train/predict)")

    dm = sub.add_parser("demo", help="build the MNI152 demo dataset, train briefly, predict, report Dice")
    dm.add_argument("--epochs", type=int, default=None)
    dm.add_argument("--iters", type=int, default=None)
    dm.add_argument("-tr", default="nnUNetTrainer", dest="trainer")
    dm.add_argument("--id", type=int, default=None, dest="dataset_id", help="dataset id (default 990)")
    dm.add_argument("--cases", type=int, default=None, help="training cases (default 20)")
    dm.add_argument("--labeled", type=int, default=None, help="train with only N labeled cases")
    _add_device(dm)
    return parser


def _parse_label_names(items: list[str]) -> dict[int, str]:
    out = {}
    for it in items:
        v, sep, n = it.partition("=")
        if not sep or not v.strip().isdigit() or not n.strip():
            raise NnzooError(f"--label expects VALUE=NAME (e.g. 1=liver), got {it!r}")
        out[int(v)] = n.strip()
    return out


def _run(args: argparse.Namespace) -> None:
    from . import env

    if args.command == "ext-trainer-path":
        from nnzoo.trainers.nnunet_ext import EXT_TRAINER_DIR

        print(EXT_TRAINER_DIR)
        return
    if args.command == "list-trainers":
        from nnzoo.trainers import list_trainers

        rows = [(i.name, "/".join(i.dims), "yes" if i.semi_supervised else "no", i.description, i.paper,
                 i.planner or "-") for i in list_trainers()]
        w = max(len(r[0]) for r in rows)
        print(f"{'trainer':<{w}}  dims   unlabeled  description")
        for r in rows:
            print(f"{r[0]:<{w}}  {r[1]:<5}  {r[2]:<9}  {r[3]}")
            print(f"{'':<{w}}  {'':<5}  {'':<9}  paper: {r[4]}" + (f"; planner: {r[5]}" if args.verbose else ""))
        return

    env.setup_folders(args.workdir)
    if args.command == "dataset":
        from .dataset import create_dataset

        create_dataset(args.images, args.labels, args.name, args.dataset_id, args.channels, args.unlabeled,
                       _parse_label_names(args.label_names))
    elif args.command in ("plan_and_preprocess", "plan-and-preprocess"):
        from .plan import plan_and_preprocess

        for d in args.datasets:
            plan_and_preprocess(d, args.configurations, args.planner, args.num_processes, args.verify,
                                args.gpu_memory_target, args.clean, preprocess=not args.no_pp)
    elif args.command == "train":
        from .train import train

        train(args.dataset, args.configuration, args.fold, args.trainer, args.plans, args.device,
              args.continue_training, args.epochs, args.iters, args.val_iters, args.save_every, args.labeled,
              args.overwrite, validate=not args.no_val, seed=args.seed)
    elif args.command == "predict":
        from .predict import predict

        predict(args.input_dir, args.output_dir, args.dataset, args.configuration, args.trainer, args.plans,
                args.folds, args.checkpoint, args.device, args.disable_tta, args.save_probabilities,
                args.overwrite, args.step_size, args.num_processes)
    elif args.command == "evaluate":
        from .evaluate import evaluate_folders
        from .report import summary_table

        if args.dataset is not None:
            from .dataset import resolve_dataset_name

            name = resolve_dataset_name(args.dataset)
            labels = os.path.join(os.environ["nnUNet_raw"], name, "dataset.json")
            if not os.path.isfile(labels):
                labels = os.path.join(os.environ["nnUNet_preprocessed"], name, "dataset.json")
        else:
            labels = args.labels_file
        out = args.output_dir or os.path.join(args.pred_dir, "evaluation")
        res = evaluate_folders(args.ref_dir, args.pred_dir, labels, args.tolerance, out,
                               args.num_processes or min(4, os.cpu_count() or 1), args.image_dir)
        print(summary_table(res))
        print(f"Wrote {', '.join(res['files'].values())}")
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(trainer=args.trainer, epochs=args.epochs, iters=args.iters, dataset_id=args.dataset_id,
                 num_cases=args.cases, device=args.device, labeled=args.labeled)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nnzoo``; returns the exit status."""
    args = build_parser().parse_args(argv)
    # nnU-Net reads its process count when first imported: settle it before anything imports nnunetv2
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(8, os.cpu_count() or 1))))
    try:
        _run(args)
    except NnzooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
