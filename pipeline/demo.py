"""``nnzoo demo``: a small real-anatomy 3D dataset built offline, trained briefly, predicted and scored.

The anatomy is the MNI152 T1 template with its grey- and white-matter probability maps, which
ship inside nilearn's wheel (no download). Tissue labels are derived from them (0 background,
1 CSF/other brain, 2 grey matter, 3 white matter), and cases are made by random smooth
deformations, bias fields, contrast changes and noise at a coarse 4 mm spacing, so that planning,
training a short schedule, predicting and scoring run on a 2-core CPU in a few minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

__all__ = ["DEMO_LABELS", "make_demo_folders", "run_demo"]

DEMO_LABELS = {1: "csf_other", 2: "grey_matter", 3: "white_matter"}
DEMO_SPACING = 4.0


def _template_volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 intensities and tissue labels of MNI152 at 3 mm, cropped to the brain (numpy axes x, y, z)."""
    from nilearn import datasets
    from scipy import ndimage

    t1 = datasets.load_mni152_template(resolution=2).get_fdata().astype(np.float32)
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata().astype(np.float32)
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata().astype(np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
    other = np.clip(mask.astype(np.float32) - gm - wm, 0, 1)
    label = np.where(mask, 1 + np.argmax(np.stack([other, gm, wm]), 0), 0).astype(np.uint8)
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - 3, 0), np.minimum(idx.max(0) + 4, mask.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    zoom = 2.0 / DEMO_SPACING
    return (ndimage.zoom(t1[sl], zoom, order=1), ndimage.zoom(label[sl], zoom, order=0),
            ndimage.zoom(mask[sl].astype(np.float32), zoom, order=1))


def _smooth_field(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / (np.abs(f).max() + 1e-8)


def _augment(t1: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic subject: smooth deformation, bias field, gamma contrast change and noise."""
    from scipy import ndimage

    shape = t1.shape
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    amp = rng.uniform(0.75, 1.9)  # voxels (3-7.5 mm)
    coords = [g + amp * _smooth_field(shape, 4.0, rng) for g in grid]
    scale = rng.uniform(0.92, 1.08)
    centre = [s / 2 for s in shape]
    coords = [(c - m) / scale + m for c, m in zip(coords, centre)]
    img = ndimage.map_coordinates(t1, coords, order=1, mode="constant")
    lab = ndimage.map_coordinates(label, coords, order=0, mode="constant").astype(np.uint8)
    img = np.clip(img / (img.max() + 1e-8), 0, 1) ** rng.uniform(0.7, 1.4)
    img *= np.exp(0.3 * _smooth_field(shape, 8.0, rng))
    img = img * rng.uniform(800, 1200) + rng.normal(0, rng.uniform(10, 40), shape)
    return img.astype(np.float32), lab


def make_demo_folders(root: str | Path, num_train: int = 20, num_test: int = 5, seed: int = 0) -> dict[str, Path]:
    """Write ``images/``, ``labels/`` (training) and ``test_images/``, ``test_labels/`` NIfTI folders.

    Returns:
        The four folders by name.
    """
    import SimpleITK as sitk

    root = Path(root)
    folders = {k: root / k for k in ("images", "labels", "test_images", "test_labels")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    t1, label, _ = _template_volumes()
    rng = np.random.default_rng(seed)

    def write(arr: np.ndarray, path: Path) -> None:
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))  # x,y,z -> sitk z,y,x
        img.SetSpacing((DEMO_SPACING,) * 3)
        img.SetOrigin((-90.0, -126.0, -72.0))
        sitk.WriteImage(img, str(path))

    for i in range(num_train + num_test):
        img, lab = _augment(t1, label, rng)
        img_dir, lab_dir = ("images", "labels") if i < num_train else ("test_images", "test_labels")
        write(img, folders[img_dir] / f"mni{i:03d}.nii.gz")
        write(lab, folders[lab_dir] / f"mni{i:03d}.nii.gz")
    return folders


def _save_overview(png: Path, cases: list[tuple[str, Path, Path, Path]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, (name, img_f, ref_f, pred_f) in enumerate(cases):
        arrs = [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in (img_f, ref_f, pred_f)]
        z = arrs[1].shape[0] // 2
        for col, (a, title) in enumerate(zip(arrs, ("image", "reference", "prediction"))):
            ax = axes[row][col]
            ax.imshow(a[z][::-1], cmap="gray" if col == 0 else "viridis", vmin=None if col == 0 else 0,
                      vmax=None if col == 0 else 3, interpolation="nearest")
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def run_demo(trainer: str = "nnUNetTrainer", epochs: int | None = None, iters: int | None = None,
             dataset_id: int | None = None, num_cases: int | None = None, device: str = "auto",
             labeled: int | None = None) -> dict:
    """Build the demo dataset (once), plan, train fold 0 briefly, predict the test cases, print Dice.

    The trainer's own planner is used when it has one. Re-running reuses the dataset and a
    finished model of the same trainer; predictions, the overview PNG and a JSON of the scores
    under ``<nnUNet_results>/../demo`` are rewritten.

    Args:
        trainer: any registered trainer.
        epochs: epochs (default 10).
        iters: iterations per epoch (default 12).
        dataset_id: id of the demo dataset (default 990).
        num_cases: training cases to generate (default 20).
        device: ``auto``, ``cpu`` or ``cuda``.
        labeled: train with only this many labeled cases (``--labeled``).

    Returns:
        ``{"dice": {label name: mean Dice}, "png": path, "seconds": elapsed, ...}``.
    """

    from .dataset import create_dataset
    from .experiment import default_plans_name, model_folder, trainer_for
    from .plan import plan_and_preprocess
    from .predict import predict
    from .train import train

    t0 = time.time()
    did = dataset_id or 990
    epochs = epochs or 14
    iters = iters or 12
    name = f"Dataset{did:03d}_MNIDemo"
    work = Path(os.environ["nnUNet_results"]).parent / "demo"
    raw = Path(os.environ["nnUNet_raw"]) / name
    src = work / "source"
    if not raw.is_dir():
        print(f"[demo 1/5] Building {num_cases or 20} training + 5 test cases from MNI152 (nilearn) in {src}")
        folders = make_demo_folders(src, num_train=num_cases or 20, num_test=5)
        create_dataset(folders["images"], folders["labels"], "MNIDemo", did, ["T1"], label_names=DEMO_LABELS)
        for sub in ("imagesTs", "labelsTs"):  # test cases beside the dataset, nnU-Net's way
            (raw / sub).mkdir()
        for f in sorted(folders["test_images"].glob("*.nii.gz")):
            shutil.copy2(f, raw / "imagesTs" / f"{f.name[:-7]}_0000.nii.gz")
            shutil.copy2(folders["test_labels"] / f.name, raw / "labelsTs" / f.name)
    elif not (raw / "imagesTs").is_dir():
        from .errors import NnzooError

        raise NnzooError(f"{raw} exists but has no imagesTs/ test cases (not made by `nnzoo demo`, or by an older "
                         "version); remove it or use another --id")
    else:
        print(f"[demo 1/5] Reusing {raw}")
    trainer_for(trainer, "3d_fullres")
    from nnzoo.trainers.registry import get_trainer_info

    planner = get_trainer_info(trainer).planner or "ExperimentPlanner"
    print(f"[demo 2/5] plan_and_preprocess (3d_fullres, {planner})")
    plan_and_preprocess(did, ["3d_fullres"], planner=planner)
    fold_dir = model_folder(name, trainer, default_plans_name(trainer), "3d_fullres") / "fold_0"
    if (fold_dir / "checkpoint_final.pth").is_file():
        print(f"[demo 3/5] Reusing the trained model in {fold_dir}")
    else:
        print(f"[demo 3/5] Training {trainer} fold 0: {epochs} epochs x {iters} iterations"
              + (f", {labeled} labeled cases" if labeled else ""))
        train(did, "3d_fullres", 0, trainer, device=device, epochs=epochs, iters=iters, overwrite=True,
              labeled=labeled)
    pred_dir = work / f"predictions_{trainer}"
    print(f"[demo 4/5] Predicting the 5 test cases into {pred_dir}")
    predict(raw / "imagesTs", pred_dir, did, "3d_fullres", trainer, folds=["0"], device=device, overwrite=True)
    print("[demo 5/5] Evaluating the test cases")
    from .evaluate import evaluate_folders
    from .report import summary_table

    res = evaluate_folders(raw / "labelsTs", pred_dir, raw / "dataset.json", 1.0, work / f"evaluation_{trainer}",
                           num_processes=min(4, os.cpu_count() or 1), image_dir=raw / "imagesTs")
    print(summary_table(res))
    dice = {DEMO_LABELS[c]: float(res["mean"][c]["Dice"]) for c in DEMO_LABELS}
    cases = [(r.name[:-7], raw / "imagesTs" / f"{r.name[:-7]}_0000.nii.gz", r, pred_dir / r.name)
             for r in sorted((raw / "labelsTs").glob("*.nii.gz"))]
    png = work / f"demo_{trainer}.png"
    _save_overview(png, cases[:3])
    result = {"dice": dice, "png": str(png), "report": res["files"].get("html"),
              "seconds": round(time.time() - t0, 1), "trainer": trainer,
              "labeled": labeled, "epochs": epochs, "iters": iters}
    (work / f"demo_{trainer}.json").write_text(json.dumps(result, indent=2))
    print(f"Overview image: {png}\nDemo finished in {result['seconds']:.0f} s")
    return result
