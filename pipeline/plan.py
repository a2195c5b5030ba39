"""``plan_and_preprocess``: fingerprint, plan and preprocess through nnU-Net's own functions.

With nnU-Net's default planner the plans are exactly those of ``nnUNetv2_plan_and_preprocess``.
nnzoo adds: every case is checked first (clear errors instead of deep tracebacks), method
planners selected by name, preprocessed data shared between plans whose preprocessing is the
same (skipped when already complete), unlabeled images preprocessed into their own folder, a
changed plans file backed up instead of silently replaced, and the raw dataset's ``domains.json``
(checked against its cases) copied beside ``dataset.json`` in the preprocessed dataset folder,
where trainers read it (:func:`nnzoo.trainers.domains.dataset_domains`); not into a
configuration's data folder, whose files nnU-Net reads to infer the data format.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from nnzoo.trainers.domains import DOMAINS_FILE

from .dataset import check_raw_dataset, resolve_dataset_name
from .errors import NnzooError
from .experiment import configuration_manager, data_identifier, dataset_id_of

__all__ = ["plan_and_preprocess", "DEFAULT_CONFIGURATIONS"]

DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
_PP_KEYS = ("spacing", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data", "resampling_fn_seg",
            "resampling_fn_data_kwargs", "resampling_fn_seg_kwargs", "preprocessor_name")


def _preprocessing_key(plans: dict, configuration: str) -> str:
    """Hash of everything in the plans that determines a configuration's preprocessed arrays."""
    cfg = configuration_manager(plans, configuration).configuration  # inherits_from resolved by nnU-Net
    relevant = {k: cfg.get(k) for k in _PP_KEYS}
    relevant["transpose_forward"] = plans["transpose_forward"]
    relevant["foreground_intensity_properties_per_channel"] = plans["foreground_intensity_properties_per_channel"]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _complete(folder: Path, case_ids: list[str]) -> bool:
    from nnzoo.trainers.nnunet_compat import preprocessed_case_files

    return folder.is_dir() and all(os.path.isfile(f) for c in case_ids for f in preprocessed_case_files(folder, c))


def _save_plans_backup_if_changed(plans_file: Path, old_text: str | None) -> None:
    if old_text is None:
        return
    if json.loads(old_text) != json.loads(plans_file.read_text()):
        backup = plans_file.with_name(f"{plans_file.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        backup.write_text(old_text)
        print(f"Plans changed; the previous plans were kept as {backup}")


@contextmanager
def _planning_threads():
    """nnU-Net's planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, which fails for 0 workers."""
    old = os.environ.get("nnUNet_n_proc_DA")
    if old is not None and old.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if old is not None:
            os.environ["nnUNet_n_proc_DA"] = old


def plan_and_preprocess(dataset: str | int, *, configurations: list[str] | None = None,
                        planner: str = "ExperimentPlanner", num_processes: int | None = None,
                        verify: bool = False, gpu_memory_target: float | None = None, clean: bool = False,
                        preprocess: bool = True) -> dict:
    """Fingerprint, plan and preprocess a raw dataset.

    Args:
        dataset: dataset id or ``DatasetNNN_NAME`` in ``nnUNet_raw``.
        configurations: configurations to preprocess (default 2d, 3d_fullres, 3d_lowres; those the
            plans lack are skipped, as in nnU-Net).
        planner: nnzoo or nnU-Net planner class name (``-pl``).
        num_processes: worker processes (default: number of cores).
        verify: also run nnU-Net's own ``verify_dataset_integrity``.
        gpu_memory_target: GPU memory target in GB for planning (default: the planner's).
        clean: recompute the fingerprint even if one exists.
        preprocess: preprocess after planning (False: plan only).

    Returns:
        The plans dict as saved.

    Raises:
        NnzooError: unknown dataset or planner, or bad input data.
    """
    from nnzoo.plans.registry import UnknownPlannerError, get_planner_class

    from .env import setup_folders

    if num_processes is not None and num_processes < 1:
        raise NnzooError(f"-np {num_processes}: the number of processes must be at least 1")
    if gpu_memory_target is not None and not gpu_memory_target > 0:
        raise NnzooError(f"-gpu_memory_target {gpu_memory_target}: the GPU memory target (GB) must be a positive number")
    setup_folders(quiet=True)
    name = resolve_dataset_name(dataset)
    did = dataset_id_of(name)
    raw = Path(os.environ["nnUNet_raw"]) / name
    if not raw.is_dir():
        raise NnzooError(f"{raw}: raw dataset folder not found (create it with `nnzoo dataset create`)")
    try:
        planner_cls = get_planner_class(planner)
    except UnknownPlannerError as e:
        raise NnzooError(str(e)) from None
    nproc = max(1, num_processes or os.cpu_count() or 1)
    configurations = list(configurations or DEFAULT_CONFIGURATIONS)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    _check_configuration_names(configurations, pre)
    _check_json_files(pre, clean)

    dataset_json, cases, unlabeled = check_raw_dataset(raw, nproc)
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    if verify:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

        try:
            verify_dataset_integrity(str(raw), nproc)
        except (AssertionError, RuntimeError) as e:
            raise NnzooError(f"{raw}: nnU-Net's dataset integrity check failed: {e}") from None

    if clean or not (pre / "dataset_fingerprint.json").is_file():
        print(f"[1/3] Fingerprinting {name} ({len(cases)} cases, {nproc} processes)")
        extract_fingerprint_dataset(did, DatasetFingerprintExtractor, nproc, False, True, True)
    else:
        print(f"[1/3] Using the existing fingerprint {pre / 'dataset_fingerprint.json'} (--clean recomputes it)")
    _copy_domains(raw, pre)

    print(f"[2/3] Planning with {planner}")
    probe = planner_cls(did) if gpu_memory_target is None else planner_cls(did, gpu_memory_target_in_gb=gpu_memory_target)
    plans_file = pre / f"{probe.plans_identifier}.json"
    old_text = plans_file.read_text() if plans_file.is_file() else None
    with _planning_threads():
        plans, plans_identifier = plan_experiment_dataset(did, planner_cls, gpu_memory_target)
    _save_plans_backup_if_changed(plans_file, old_text)
    plans = json.loads(plans_file.read_text())
    print(f"Plans saved to {plans_file}")
    for c, cfg in plans["configurations"].items():
        if "patch_size" in cfg:
            print(f"  {c}: patch {cfg['patch_size']}, batch {cfg['batch_size']}, spacing {cfg['spacing']}")

    if not preprocess:
        return plans
    case_ids = [c.name for c in cases]
    for c in configurations:
        if c not in plans["configurations"]:
            print(f"[3/3] {c}: not in the plans (not needed for this dataset), skipped")
            continue
        data_id = data_identifier(plans, c)
        folder = pre / data_id
        key = _preprocessing_key(plans, c)
        stamp = pre / f"nnzoo_preprocessing_{data_id}.json"  # beside, not inside: nnU-Net infers the format from the files in it
        if _complete(folder, case_ids) and stamp.is_file():
            if json.loads(stamp.read_text()).get("key") == key:
                print(f"[3/3] {c}: preprocessed data in {folder} is complete and identical; reused")
                _preprocess_unlabeled(name, plans_identifier, c, nproc, unlabeled)
                continue
            owner = json.loads(stamp.read_text()).get("plans")
            if owner != plans_identifier:
                raise NnzooError(f"{folder} holds data preprocessed for {owner} differently from what {plans_identifier}"
                                 f" ({c}) needs; it is not overwritten. Use a planner without shared preprocessing.")
        print(f"[3/3] Preprocessing {c} into {folder} ({nproc} processes)")
        _forget_unlabeled(pre, data_id)
        preprocess_dataset(did, plans_identifier, [c], [nproc])
        stamp.write_text(json.dumps({"key": key, "plans": plans_identifier, "configuration": c}))
        _preprocess_unlabeled(name, plans_identifier, c, nproc, unlabeled)
    return plans


def _copy_domains(raw: Path, pre: Path) -> None:
    """The raw ``domains.json`` (already checked by check_raw_dataset) beside the preprocessed dataset.json;
    a copy left from an earlier raw dataset that no longer has one is removed."""
    src, dst = raw / DOMAINS_FILE, pre / DOMAINS_FILE
    if src.is_file():
        shutil.copyfile(src, dst)
        print(f"      domains: {dst}")
    elif dst.is_file():
        dst.unlink()
        print(f"      removed {dst}: the raw dataset has no {DOMAINS_FILE} any more")


def _plans_files(pre: Path) -> list[Path]:
    skip = {"dataset.json", "dataset_fingerprint.json", "splits_final.json", DOMAINS_FILE}
    return sorted(p for p in pre.glob("*.json") if p.name not in skip and not p.name.startswith("nnzoo_"))


def _check_configuration_names(configurations: list[str], pre: Path) -> None:
    """``-c`` names nnU-Net's configurations or one of the existing plans' (a typo is not silently skipped)."""
    known = set(DEFAULT_CONFIGURATIONS) | {"3d_cascade_fullres"}
    for f in _plans_files(pre):
        try:
            known |= set(json.loads(f.read_text()).get("configurations", {}))
        except (ValueError, AttributeError):
            pass  # a damaged plans file is reported by _check_json_files
    unknown = [c for c in configurations if c not in known]
    if unknown:
        raise NnzooError(f"-c {unknown[0]!r}: unknown configuration; use {', '.join(sorted(known))}")


def _check_json_files(pre: Path, clean: bool) -> None:
    """The fingerprint and plans that planning reads or replaces are valid JSON (before anything is written)."""
    files = ([] if clean else [pre / "dataset_fingerprint.json"]) + _plans_files(pre)
    for f in files:
        if not f.is_file():
            continue
        try:
            ok = isinstance(json.loads(f.read_text()), dict)
        except ValueError:
            ok = False
        if not ok:
            hint = ("recompute it with --clean" if f.name == "dataset_fingerprint.json"
                    else "delete or restore it (a backup is kept as *.bak-* when plans change)")
            raise NnzooError(f"{f}: not valid JSON (damaged?); {hint}")


def _forget_unlabeled(pre: Path, data_id: str) -> None:
    """Unlabeled cases preprocessed for earlier, different data of this identifier are stale: remove them."""
    from nnzoo.trainers.unlabeled_data import unlabeled_folder

    folder = Path(unlabeled_folder(pre, data_id))
    if folder.is_dir():
        print(f"      removing {folder}: it was preprocessed for different plans and is redone")
        shutil.rmtree(folder)


def _preprocess_unlabeled(name: str, plans_identifier: str, configuration: str, nproc: int, unlabeled: list) -> None:
    if not unlabeled:
        return
    from .unlabeled import preprocess_unlabeled

    n = preprocess_unlabeled(name, plans_identifier, configurations=[configuration], num_processes=nproc)
    print(f"      unlabeled: {n}")

