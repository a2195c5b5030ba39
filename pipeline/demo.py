"""``nnzoo demo``: brain MR phantoms built offline, a short 2D training, prediction, scores and a picture.

The cases come from :mod:`nnzoo.pipeline.brain_phantoms` (nilearn's MNI152 maps, no download):
axial slices of deformed, atrophied brains in five acquisition styles, labels ventricles, grey
matter and white matter. The demo writes them as an nnU-Net dataset (test cases in
``imagesTs``/``labelsTs``), runs ``plan_and_preprocess`` (2D), trains fold 0 of ``2d`` for a short
schedule, predicts the test cases, prints Dice per class and saves an overview PNG (prediction
over the image, a legend, Dice per class in each title). It runs on a 2-core CPU in a few minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

__all__ = ["DEMO_LABELS", "DEMO_SETTINGS", "make_demo_folders", "run_demo", "save_overview"]

DEMO_LABELS = {1: "ventricles", 2: "grey_matter", 3: "white_matter"}
#: cohort and schedule of the demo (measured on the 2-core CPU: every class >= 0.70 test Dice)
DEMO_SETTINGS = {"num_train": 24, "num_test": 10, "seed": 0, "epochs": 20, "iters": 50}


def make_demo_folders(root: str | Path, *, num_train: int = DEMO_SETTINGS["num_train"],
                      num_test: int = DEMO_SETTINGS["num_test"], seed: int = DEMO_SETTINGS["seed"]) -> dict[str, Path]:
    """Write the demo cohort (2D NIfTI, every acquisition style in training and test) under ``root``.

    Returns:
        ``{"images", "labels", "test_images", "test_labels": folder}``.
    """
    from .brain_phantoms import ACQUISITIONS, write_cohort

    root = Path(root)
    write_cohort(root, num_train=num_train, num_test=num_test, seed=seed, dim=2,
                 labeled_acquisitions=tuple(ACQUISITIONS))
    return {k: root / k for k in ("images", "labels", "test_images", "test_labels")}


def save_overview(png: Path, cases: list[tuple[str, Path, Path, dict[str, float]]],
                  label_names: dict[int, str] = DEMO_LABELS) -> None:
    """One panel per case: the image in grey, the prediction overlaid in colour, Dice per class in the title.

    Label colours are the evaluation report's (:data:`nnzoo.pipeline.report.LABEL_COLOURS`).

    Args:
        png: output file.
        cases: ``(case name, image file, prediction file, {class name: Dice})``.
        label_names: ``{label value: name}`` for the legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from .report import label_rgba, legend_handles

    fig, axes = plt.subplots(1, len(cases), figsize=(3.6 * len(cases), 4.3), squeeze=False)
    for ax, (name, img_f, pred_f, dice) in zip(axes[0], cases):
        img, pred = (sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in (img_f, pred_f))
        if img.ndim == 3:  # a volume: its middle slice
            img, pred = img[img.shape[0] // 2], pred[pred.shape[0] // 2]
        ax.imshow(img, cmap="gray", interpolation="nearest")
        ax.imshow(label_rgba(pred), interpolation="nearest")
        ax.set_title(f"{name}\n" + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in dice.items()), fontsize=8)
        ax.axis("off")
    handles = legend_handles(label_names)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle("nnzoo demo: prediction on held-out test cases (Dice per class)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(png, dpi=100)
    plt.close(fig)


def run_demo(*, trainer: str = "nnUNetTrainer", epochs: int | None = None, iters: int | None = None,
             dataset_id: int | None = None, num_cases: int | None = None, device: str = "auto",
             labeled: int | None = None) -> dict:
    """Build the demo dataset (once), plan, train fold 0 of ``2d``, predict the test cases, print Dice.

    The trainer's own planner is used when it has one. Re-running reuses the dataset and a
    finished model of the same trainer; predictions, the overview PNG and a JSON of the scores
    under ``<nnUNet_results>/../demo`` are rewritten.

    Args:
        trainer: any registered trainer.
        epochs: epochs (default ``DEMO_SETTINGS["epochs"]``).
        iters: iterations per epoch (default ``DEMO_SETTINGS["iters"]``).
        dataset_id: id of the demo dataset (default 990).
        num_cases: training cases to generate (default ``DEMO_SETTINGS["num_train"]``).
        device: ``auto``, ``cpu`` or ``cuda``.
        labeled: train with only this many labeled cases (``--labeled``).

    Returns:
        ``{"dice": {label name: mean Dice}, "png": path, "seconds": elapsed, ...}``.

    Raises:
        NnzooError: the dataset folder exists but was not made by the demo.
    """
    from nnzoo.trainers.registry import get_trainer_info

    from .dataset import LabelSpec, create_dataset
    from .env import setup_folders
    from .errors import NnzooError
    from .evaluate import evaluate_folders, summary_table
    from .experiment import default_plans_name, model_folder, trainer_for
    from .plan import plan_and_preprocess
    from .predict import PredictOptions, predict
    from .train import TrainOptions, train

    setup_folders(quiet=True)
    t0 = time.time()
    did = dataset_id or 990
    epochs, iters = epochs or DEMO_SETTINGS["epochs"], iters or DEMO_SETTINGS["iters"]
    name = f"Dataset{did:03d}_BrainDemo"
    work = Path(os.environ["nnUNet_results"]).parent / "demo"
    raw = Path(os.environ["nnUNet_raw"]) / name
    trainer_for(trainer, "2d")  # an unknown trainer fails before anything is written
    if not raw.is_dir():
        n_train = num_cases or DEMO_SETTINGS["num_train"]
        src = work / "source"
        print(f"[demo 1/5] Building {n_train} training + {DEMO_SETTINGS['num_test']} test brain MR phantoms "
              f"(MNI152 from nilearn, 5 acquisition styles) in {src}", flush=True)
        folders = make_demo_folders(src, num_train=n_train)
        create_dataset(folders["images"], folders["labels"], name="BrainDemo", dataset_id=did, channels=["MR"],
                       label_spec=LabelSpec(names=DEMO_LABELS))
        for sub in ("imagesTs", "labelsTs"):  # test cases beside the dataset, nnU-Net's way
            (raw / sub).mkdir()
        for f in sorted(folders["test_images"].glob("*.nii.gz")):
            shutil.copy2(f, raw / "imagesTs" / f"{f.name[:-7]}_0000.nii.gz")
            shutil.copy2(folders["test_labels"] / f.name, raw / "labelsTs" / f.name)
    elif not (raw / "imagesTs").is_dir():
        raise NnzooError(f"{raw} exists but has no imagesTs/ test cases (not made by `nnzoo demo`); remove it or use "
                         "another --id")
    else:
        print(f"[demo 1/5] Reusing {raw}", flush=True)
    planner = get_trainer_info(trainer).planner or "ExperimentPlanner"
    print(f"[demo 2/5] plan_and_preprocess (2d, {planner})", flush=True)
    plan_and_preprocess(did, configurations=["2d"], planner=planner)
    fold_dir = model_folder(name, trainer, default_plans_name(trainer), "2d", labeled=labeled) / "fold_0"
    if (fold_dir / "checkpoint_final.pth").is_file():
        print(f"[demo 3/5] Reusing the trained model in {fold_dir}", flush=True)
    else:
        print(f"[demo 3/5] Training {trainer} fold 0 (2d): {epochs} epochs x {iters} iterations"
              + (f", {labeled} labeled cases" if labeled else ""), flush=True)
        train(TrainOptions(dataset=did, configuration="2d", fold=0, trainer=trainer, device=device, epochs=epochs,
                           iters=iters, overwrite=True, labeled=labeled))
    tests = sorted((raw / "labelsTs").glob("*.nii.gz"))
    pred_dir = work / f"predictions_{fold_dir.parent.name}"
    print(f"[demo 4/5] Predicting the {len(tests)} test cases into {pred_dir}", flush=True)
    predict(PredictOptions(input_dir=raw / "imagesTs", output_dir=pred_dir, dataset=did, configuration="2d",
                           trainer=trainer, folds=["0"], labeled=labeled, device=device, overwrite=True))
    print("[demo 5/5] Evaluating the test cases", flush=True)
    res = evaluate_folders(raw / "labelsTs", pred_dir, labels=raw / "dataset.json",
                           output_dir=work / f"evaluation_{fold_dir.parent.name}",
                           num_processes=min(4, os.cpu_count() or 1), image_dir=raw / "imagesTs")
    print(summary_table(res))
    dice = {DEMO_LABELS[c]: float(res["mean"][c]["Dice"]) for c in DEMO_LABELS}
    per_case = {Path(c["prediction_file"]).name: c["metrics"] for c in res["metric_per_case"]}
    shown = []
    for ref in tests[:4]:
        case = ref.name[:-7]
        m = per_case.get(ref.name, {})
        shown.append((case, raw / "imagesTs" / f"{case}_0000.nii.gz", pred_dir / ref.name,
                      {DEMO_LABELS[c]: float(m[c]["Dice"]) for c in DEMO_LABELS if c in m}))
    png = work / f"demo_{fold_dir.parent.name}.png"
    save_overview(png, shown)
    result = {"dice": dice, "png": str(png), "report": res["files"].get("html"), "seconds": round(time.time() - t0, 1),
              "trainer": trainer, "labeled": labeled, "epochs": epochs, "iters": iters}
    (work / f"demo_{fold_dir.parent.name}.json").write_text(json.dumps(result, indent=2))
    print("Dice per class: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    print(f"Overview image: {png}\nDemo finished in {result['seconds']:.0f} s")
    return result
