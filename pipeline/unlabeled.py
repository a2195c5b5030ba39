"""Preprocessing of unlabeled images (``imagesUnlabeled/``) with a dataset's existing nnU-Net plans.

Unlabeled cases are preprocessed exactly like nnU-Net's labeled training cases, by nnU-Net's own
preprocessor class from the plans (``run_case_save(output, image_files, None, ...)``: same
reader, transpose, crop to nonzero, normalisation, resampling and file format) but written to a
folder of their own beside the labeled one, ``nnUNet_preprocessed/<dataset>/<data_identifier>_unlabeled/``
(:func:`~nnzoo.trainers.unlabeled_data.unlabeled_folder`). They never enter the labeled folder,
hence never nnU-Net's splits or ``fold all``. Without a label file nnU-Net's ``_seg`` array is the
image's nonzero mask (no label); training reads only the image (:mod:`nnzoo.trainers.unlabeled_data`).
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections import defaultdict

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json

from nnzoo.trainers.nnunet_compat import preprocessed_case_files
from nnzoo.trainers.unlabeled_data import unlabeled_folder

__all__ = ["UNLABELED_IMAGES_DIR", "unlabeled_folder", "find_unlabeled_cases", "preprocess_unlabeled"]

#: name of the raw dataset's folder of unlabeled images (same channel naming as imagesTr)
UNLABELED_IMAGES_DIR = "imagesUnlabeled"


def find_unlabeled_cases(images_dir: str, file_ending: str, num_channels: int) -> dict[str, list[str]]:
    """Group the files of an ``imagesUnlabeled`` folder by case.

    Args:
        images_dir: the folder, holding ``{case}_{XXXX}{file_ending}`` files.
        file_ending: the dataset's file ending (e.g. ".nii.gz").
        num_channels: number of channels in dataset.json.

    Returns:
        ``{case: [channel 0 file, channel 1 file, ...]}``, sorted by case.

    Raises:
        ValueError: a file does not follow the naming scheme, or a case lacks a channel file.
    """
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    cases: dict[str, dict[int, str]] = defaultdict(dict)
    for name in sorted(os.listdir(images_dir)):
        if name.startswith("."):
            continue
        m = pattern.match(name)
        if m is None:
            raise ValueError(f"{join(images_dir, name)}: unlabeled images must be named "
                             f"{{case}}_{{XXXX}}{file_ending} like imagesTr")
        cases[m.group(1)][int(m.group(2))] = join(images_dir, name)
    out = {}
    for case, channels in sorted(cases.items()):
        missing = [c for c in range(num_channels) if c not in channels]
        extra = [c for c in channels if c >= num_channels]
        if missing or extra:
            bad = (f"missing {join(images_dir, f'{case}_{missing[0]:04d}{file_ending}')}" if missing
                   else f"unexpected channel file {channels[extra[0]]}")
            raise ValueError(f"unlabeled case {case!r}: {bad} (dataset.json has {num_channels} channel(s))")
        out[case] = [channels[c] for c in range(num_channels)]
    return out


def _is_done(output_truncated: str) -> bool:
    folder, case = os.path.split(output_truncated)
    return all(os.path.isfile(f) for f in preprocessed_case_files(folder, case))  # the .pkl is written last


def _preprocess_one(args: tuple) -> str:
    """Preprocess and save one unlabeled case (module-level so that spawn workers can run it)."""
    case, image_files, output_truncated, plans, configuration, dataset_json = args
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(configuration)
    folder, name = os.path.split(output_truncated)
    for f in preprocessed_case_files(folder, name):  # an interrupted earlier attempt: blosc2 does not overwrite
        if os.path.isfile(f):
            os.remove(f)
    try:
        cm.preprocessor_class(verbose=False).run_case_save(output_truncated, image_files, None, plans_manager, cm,
                                                           dataset_json)
    except Exception as e:  # name the files: nnU-Net's readers often do not
        raise RuntimeError(f"could not read/preprocess unlabeled case {case!r} ({', '.join(image_files)}): "
                           f"{type(e).__name__}: {e}") from e
    return case


def preprocess_unlabeled(dataset_name: str, plans_identifier: str, *, configurations: list[str],
                         num_processes: int) -> dict[str, int]:
    """Preprocess ``nnUNet_raw/<dataset>/imagesUnlabeled`` with the dataset's plans.

    Cases already preprocessed (all of nnU-Net's files present) are skipped, so the call can be
    repeated after adding images. Configurations missing from the plans are skipped with a
    message (as nnU-Net's ``preprocess_dataset`` does); configurations sharing a data identifier
    share the unlabeled folder too.

    Args:
        dataset_name: e.g. ``Dataset501_Heart``.
        plans_identifier: plans name, e.g. ``nnUNetPlans`` (``<plans_identifier>.json`` must exist).
        configurations: e.g. ``["2d", "3d_fullres"]``.
        num_processes: worker processes (<= 1: in this process).

    Returns:
        ``{configuration: number of cases written by this call}`` (0 where nothing was to do,
        including when the dataset has no ``imagesUnlabeled`` folder).

    Raises:
        FileNotFoundError: plans or dataset.json missing (run planning first).
        ValueError: badly named / incomplete unlabeled images.
        RuntimeError: a case could not be read or preprocessed (the message names its files).
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from tqdm import tqdm

    written = {c: 0 for c in configurations}
    images_dir = join(str(nnUNet_raw), dataset_name, UNLABELED_IMAGES_DIR)
    if not isdir(images_dir):
        return written
    pp_base = join(str(nnUNet_preprocessed), dataset_name)
    plans_file = join(pp_base, plans_identifier + ".json")
    dataset_json_file = join(pp_base, "dataset.json")
    for f in (plans_file, dataset_json_file):
        if not isfile(f):
            raise FileNotFoundError(f"{f} not found: plan the dataset before preprocessing unlabeled images")
    plans = load_json(plans_file)
    dataset_json = load_json(dataset_json_file)
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    cases = find_unlabeled_cases(images_dir, dataset_json["file_ending"], len(channels))
    if not cases:
        return written

    done_identifiers: set[str] = set()
    for configuration in configurations:
        if configuration not in plans["configurations"]:
            print(f"INFO: configuration {configuration} not in {plans_identifier}.json; skipping its unlabeled cases")
            continue
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        data_identifier = PlansManager(plans).get_configuration(configuration).data_identifier
        out_dir = unlabeled_folder(pp_base, data_identifier)
        if data_identifier in done_identifiers:
            continue
        done_identifiers.add(data_identifier)
        os.makedirs(out_dir, exist_ok=True)
        todo = [(case, files, join(out_dir, case), plans, configuration, dataset_json)
                for case, files in cases.items() if not _is_done(join(out_dir, case))]
        skipped = len(cases) - len(todo)
        print(f"Unlabeled cases, {configuration}: {len(todo)} to preprocess"
              + (f", {skipped} already done" if skipped else "") + f" -> {out_dir}")
        if not todo:
            continue
        with tqdm(total=len(todo), desc=f"Preprocessing unlabeled ({configuration})") as bar:
            if num_processes <= 1 or len(todo) == 1:
                for args in todo:
                    _preprocess_one(args)
                    bar.update()
            else:
                ctx = multiprocessing.get_context("spawn")
                with ctx.Pool(min(num_processes, len(todo))) as pool:
                    for _ in pool.imap_unordered(_preprocess_one, todo):
                        bar.update()
        written[configuration] = len(todo)
    return written
