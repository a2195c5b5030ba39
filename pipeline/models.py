"""``export-model`` / ``install-model``: nnU-Net's model zip with nnzoo's run metadata, installed safely.

The zip has nnU-Net's layout (paths relative to ``nnUNet_results``:
``DatasetNNN_NAME/<trainer>__<plans>__<configuration>[_<augment>][_labeled<N>]/...``; nnU-Net's
``nnUNetv2_install_pretrained_model_from_zip`` installs it too) with ``plans.json``,
``dataset.json``, ``dataset_fingerprint.json`` and, per fold, the checkpoint, ``debug.json``,
``progress.png``, ``validation/summary.json`` and nnzoo's ``nnzoo_run.json`` and
``labeled_split.json`` (where they exist); with ``onnx``, also each fold's network as
``fold_<f>/network.onnx`` and ``fold_<f>/network_onnx.json`` (see :mod:`nnzoo.pipeline.onnx_backend`).
The model is a folder (``-m``) or nnU-Net's names (``-d -c -tr -p``, as ``nnUNetv2_export_model_to_zip``,
plus ``--augment NAME`` and ``--labeled N``): :func:`find_model_folder`. Installing refuses zips without nnzoo metadata,
paths that leave ``nnUNet_results``, and an already installed model unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from .errors import NnzooError, check_folder_can_be_made

__all__ = ["export_model", "find_model_folder", "install_model", "NNZOO_FILES"]

NNZOO_FILES = ("nnzoo_run.json", "labeled_split.json")
_MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_FOLD_FILES = ("debug.json", "progress.png", "validation/summary.json") + NNZOO_FILES


def find_model_folder(*, model_dir: str | Path | None = None, dataset: str | int | None = None,
                      configuration: str | None = None, trainer: str | None = None, plans: str | None = None,
                      labeled: str | int | float | None = None, augment: str | None = None) -> Path:
    """The model folder named by ``-m`` or by nnU-Net's names (exactly one of the two ways).

    Args:
        model_dir: the model folder itself (``-m``).
        dataset: dataset id or name (``-d``).
        configuration: the configuration (``-c``; needed with ``dataset``).
        trainer: the trainer (``-tr``; default ``nnUNetTrainer``).
        plans: the plans (``-p``; default: the trainer's planner's plans, else ``nnUNetPlans``).
        labeled: the label budget of the model folder (``--labeled N``: ``..._labeled<N>``).
        augment: the augmentation the model was trained with (``--augment NAME``: ``..._<NAME>``).

    Returns:
        The folder (with ``model_dir``: as given, checked by the caller; with names:
        ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>[_<augment>][_labeled<N>]``, which exists).

    Raises:
        NnzooError: both ways or neither, ``-d`` without ``-c`` (or the reverse), an unknown dataset,
            trainer or augmentation, or no such model folder (lists the dataset's models).
    """
    from .experiment import check_augment, named_model_folder
    from .train import parse_labeled

    check_augment(augment)
    names = {"-d": dataset, "-c": configuration, "-tr": trainer, "-p": plans, "--augment": augment,
             "--labeled": labeled}
    given = [k for k, v in names.items() if v is not None]
    if model_dir is not None:
        if given:
            raise NnzooError(f"give the model folder (-m {model_dir}) or nnU-Net's names (-d -c -tr -p --augment "
                             "--labeled), "
                             f"not both ({' '.join(given)} given too)")
        return Path(model_dir)
    if dataset is None:
        hint = f" ({' '.join(given)} {'needs' if len(given) == 1 else 'need'} -d)" if given else ""
        raise NnzooError("give the model folder (-m FOLDER) or nnU-Net's names (-d DATASET -c CONFIGURATION "
                         f"[-tr TRAINER] [-p PLANS] [--augment NAME] [--labeled N]){hint}")
    if configuration is None:
        raise NnzooError(f"-d {dataset}: also give the model's configuration (-c, e.g. 2d or 3d_fullres)")
    return named_model_folder(dataset, configuration, trainer=trainer or "nnUNetTrainer", plans=plans,
                              labeled=parse_labeled(labeled), augment=augment)


def export_model(model_dir: str | Path, output_file: str | Path, *, folds: list[str] | None = None,
                 checkpoint: str = "checkpoint_final.pth", overwrite: bool = False, onnx: bool = False) -> Path:
    """Write a model folder (some or all of its folds) as an nnU-Net model zip with nnzoo's metadata.

    Args:
        model_dir: the model folder (``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>[...]``;
            :func:`find_model_folder` finds it from nnU-Net's names).
        output_file: the zip to write.
        folds: folds to export (default: every fold with ``checkpoint``).
        checkpoint: the checkpoint to include.
        overwrite: replace an existing zip.
        onnx: also each fold's network as ONNX (``fold_<f>/network.onnx``, opset
            :data:`~nnzoo.pipeline.onnx_backend.OPSET`, checked against PyTorch) with
            ``fold_<f>/network_onnx.json``; needs ``nnzoo[onnx]``.

    Returns:
        The zip file.

    Raises:
        NnzooError: not a trained model folder, missing folds, an existing zip without ``overwrite``, or
            (with ``onnx``) missing ONNX packages or a network that cannot be exported.
    """
    from .predict import find_folds

    model = Path(model_dir).resolve()
    out = Path(output_file).resolve()
    if out.is_dir():
        raise NnzooError(f"-o {output_file}: is a folder; give the zip file to write (e.g. {Path(output_file) / 'model.zip'})")
    check_folder_can_be_made(out.parent, flag=f"-o {output_file}")
    if out.exists() and not overwrite:
        raise NnzooError(f"{out} already exists; use --overwrite to replace it")
    if onnx:
        from .onnx_backend import require_onnx_exporter

        require_onnx_exporter("--onnx")  # before anything is read
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
    with tempfile.TemporaryDirectory(prefix="nnzoo-onnx-") as onnx_dir:
        extra = _export_onnx_folds(model, use, checkpoint, Path(onnx_dir)) if onnx else []
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for i, f in enumerate(files, 1):
                    z.write(f, f.relative_to(root).as_posix())
                    if i % 10 == 0 or i == len(files):
                        print(f"export: {i}/{len(files)} files")
                for f, rel in extra:
                    z.write(f, (model.relative_to(root) / rel).as_posix())
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    print(f"nnzoo: exported {model.name} (folds {use}{', with ONNX networks' if onnx else ''}) to {out}")
    return out


def _export_onnx_folds(model: Path, folds: list[int | str], checkpoint: str, work: Path) -> list[tuple[Path, str]]:
    """Each fold's network as ONNX in ``work``: ``[(file, path in the model folder)]``.

    The network is built and loaded as prediction does (:func:`nnzoo.pipeline.predict.load_model`).

    Raises:
        NnzooError: the network cannot be exported or does not agree with PyTorch (names the trainer).
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from .onnx_backend import ONNX_FILE, ONNX_NETWORK_FILE, export_onnx
    from .predict import load_model, resolve_model

    ref = resolve_model(model_dir=model, folds=[str(f) for f in folds], checkpoint=checkpoint)
    network, plans_manager, configuration_manager, parameters, dataset_json, trainer_name, mirror_axes = load_model(ref)
    num_in = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    out = []
    for f, weights in zip(ref.folds, parameters):
        network.load_state_dict(weights)
        file = work / f"fold_{f}.onnx"
        meta = export_onnx(network, path=file, patch_size=configuration_manager.patch_size, num_input_channels=num_in,
                           what=f"{trainer_name}'s {ref.configuration} network")
        meta.update(trainer=trainer_name, configuration=ref.configuration, fold=f, checkpoint=checkpoint,
                    inference_allowed_mirroring_axes=list(mirror_axes) if mirror_axes is not None else None)
        (work / f"fold_{f}.json").write_text(json.dumps(meta, indent=2))
        out += [(file, f"fold_{f}/{ONNX_FILE}"), (work / f"fold_{f}.json", f"fold_{f}/{ONNX_NETWORK_FILE}")]
        print(f"export: fold {f} network as ONNX opset {meta['opset']} (max difference to PyTorch "
              f"{meta['max_abs_diff']:.2g})")
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
