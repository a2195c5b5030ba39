"""``export-model`` / ``install-model``: nnU-Net's model zip with nnzoo's run metadata, installed safely.

The zip has nnU-Net's layout (paths relative to ``nnUNet_results``:
``DatasetNNN_NAME/<trainer>__<plans>__<configuration>[_labeled<N>]/...``; nnU-Net's
``nnUNetv2_install_pretrained_model_from_zip`` installs it too) with ``plans.json``,
``dataset.json``, ``dataset_fingerprint.json`` and, per fold, the checkpoint, ``debug.json``,
``progress.png``, ``validation/summary.json`` and nnzoo's ``nnzoo_run.json`` and
``labeled_split.json`` (where they exist). Installing refuses zips without nnzoo metadata,
paths that leave ``nnUNet_results``, and an already installed model unless ``overwrite``.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from .errors import NnzooError

__all__ = ["export_model", "install_model", "NNZOO_FILES"]

NNZOO_FILES = ("nnzoo_run.json", "labeled_split.json")
_MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_FOLD_FILES = ("debug.json", "progress.png", "validation/summary.json") + NNZOO_FILES


def export_model(model_dir: str | Path, output_file: str | Path, *, folds: list[str] | None = None,
                 checkpoint: str = "checkpoint_final.pth", overwrite: bool = False) -> Path:
    """Write a model folder (some or all of its folds) as an nnU-Net model zip with nnzoo's metadata.

    Args:
        model_dir: the model folder (``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>[...]``).
        output_file: the zip to write.
        folds: folds to export (default: every fold with ``checkpoint``).
        checkpoint: the checkpoint to include.
        overwrite: replace an existing zip.

    Returns:
        The zip file.

    Raises:
        NnzooError: not a trained model folder, missing folds, an existing zip without ``overwrite``.
    """
    from .predict import find_folds

    model = Path(model_dir).resolve()
    out = Path(output_file).resolve()
    if out.is_dir():
        raise NnzooError(f"-o {output_file}: is a folder; give the zip file to write (e.g. {Path(output_file) / 'model.zip'})")
    for p in out.parents:
        if p.exists():
            if not p.is_dir():
                raise NnzooError(f"-o {output_file}: cannot write there, {p} is a file, not a folder")
            break
    if out.exists() and not overwrite:
        raise NnzooError(f"{out} already exists; use --overwrite to replace it")
    for f in ("plans.json", "dataset.json"):
        if not (model / f).is_file():
            raise NnzooError(f"{model / f}: not found; {model} is not a trained model folder")
    use = find_folds(model, folds, checkpoint)
    from .checkpoint import load_checkpoint_safely

    for f in use:  # a damaged or unsafe checkpoint is refused now, not when the zip is installed and used
        load_checkpoint_safely(model / f"fold_{f}" / checkpoint)
    if not any((model / f"fold_{f}" / NNZOO_FILES[0]).is_file() for f in use):
        raise NnzooError(f"{model}: no {NNZOO_FILES[0]} in its folds (not trained by nnzoo train); export it with "
                         "nnUNetv2_export_model_to_zip")
    root = model.parent.parent  # nnUNet_results: the zip's paths are relative to it, as nnU-Net's
    files = [model / f for f in _MODEL_FILES if (model / f).is_file()]
    for f in use:
        fold = model / f"fold_{f}"
        files += [fold / checkpoint] + [fold / x for x in _FOLD_FILES if (fold / x).is_file()]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for i, f in enumerate(files, 1):
            z.write(f, f.relative_to(root).as_posix())
            if i % 10 == 0 or i == len(files):
                print(f"export: {i}/{len(files)} files")
    os.replace(tmp, out)
    print(f"nnzoo: exported {model.name} (folds {use}) to {out}")
    return out


def install_model(zip_file: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Install an nnzoo model zip into ``nnUNet_results``.

    Returns:
        The installed model folders.

    Raises:
        NnzooError: not a zip, no nnzoo metadata, unsafe paths, or a model that is already
            installed (without ``overwrite``).
    """
    from .env import setup_folders

    setup_folders(quiet=True)
    zip_file = Path(zip_file)
    if zip_file.is_dir():
        raise NnzooError(f"{zip_file}: is a folder, not a zip file written by `nnzoo export-model`")
    if not zip_file.is_file():
        raise NnzooError(f"{zip_file}: file not found")
    try:
        z = zipfile.ZipFile(zip_file)
    except zipfile.BadZipFile:
        raise NnzooError(f"{zip_file}: not a zip file") from None
    results = Path(os.environ["nnUNet_results"]).resolve()
    with z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        for n in names:
            p = PurePosixPath(n)
            if p.is_absolute() or ".." in p.parts or len(p.parts) < 3 or not p.parts[0].startswith("Dataset"):
                raise NnzooError(f"{zip_file}: entry {n!r} is not a model file below DatasetNNN_NAME/<model>/")
        if not any(PurePosixPath(n).name in NNZOO_FILES for n in names):
            raise NnzooError(f"{zip_file}: no nnzoo metadata ({NNZOO_FILES[0]}): not exported by `nnzoo export-model`; "
                             "a plain nnU-Net model zip installs with nnUNetv2_install_pretrained_model_from_zip")
        try:
            damaged = z.testzip()  # reads every entry: a damaged zip is refused before anything is installed
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise NnzooError(f"{zip_file}: damaged zip ({e})") from None
        if damaged is not None:
            raise NnzooError(f"{zip_file}: damaged zip, entry {damaged} fails its CRC check (copy the file again)")
        rel = sorted({Path(*PurePosixPath(n).parts[:2]) for n in names})
        existing = [results / r for r in rel if (results / r).exists()]
        if existing and not overwrite:
            raise NnzooError(f"{existing[0]} is already installed; use --overwrite to replace it")
        staging = results / f".nnzoo-install-{os.getpid()}"
        try:
            z.extractall(staging, members=names)  # complete before anything installed is touched
            for r in rel:
                target = results / r
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging / r, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    models = [results / r for r in rel]
    for m in models:
        print(f"nnzoo: installed {m}")
    return models
