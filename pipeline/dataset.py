"""Raw datasets: import plain image/label folders as ``nnUNet_raw/DatasetNNN_NAME`` and find datasets by id.

nnU-Net expects ``imagesTr/{case}_{XXXX}{ending}``, ``labelsTr/{case}{ending}`` and a
``dataset.json``; :func:`create_dataset` builds exactly that from folders where images and
labels are matched by file name, after checking every case (see :mod:`nnzoo.pipeline.validate`).
The dataset.json is written by nnU-Net's ``generate_dataset_json`` (labels, or regions with their
``regions_class_order``, and an optional ignore label); ids and names are resolved with nnU-Net's
dataset-name helpers. With ``--domains`` the case -> domain mapping (scanner, site, contrast) is
stored as ``domains.json`` beside dataset.json (:mod:`nnzoo.trainers.domains`); it must name every
labeled and unlabeled case and no other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from nnzoo.trainers.domains import DOMAINS_FILE, DomainsError, read_domains

from .errors import NnzooError, read_json
from .segio import FILE_ENDINGS, reader_for, split_ending
from .validate import Case, check_cases, check_domains, declared_label_values, read_case_mapping

__all__ = [
    "LabelSpec",
    "SUPPORTED_ENDINGS",
    "split_ending",
    "scan_image_folder",
    "default_regions_class_order",
    "create_dataset",
    "resolve_dataset_name",
    "raw_cases",
    "unlabeled_raw_cases",
    "check_raw_dataset",
    "raw_domains",
]

SUPPORTED_ENDINGS = FILE_ENDINGS
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def scan_image_folder(folder: str | Path, num_channels: int, what: str = "images") -> tuple[dict[str, list[str]], str]:
    """Group the image files of a folder into cases.

    With one channel a file is a case (``case.nii.gz``, ``case_0000.nii.gz`` also accepted);
    with several channels files must be named ``{case}_{XXXX}{ending}`` as in nnU-Net.

    Args:
        folder: the folder.
        num_channels: expected channels per case.
        what: name of the folder's role, for messages.

    Returns:
        ``({case: [file per channel]}, file ending)``.

    Raises:
        NnzooError: missing or empty folder, unsupported or mixed endings, missing channel files.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NnzooError(f"{what} folder {folder} is not a folder (a file was given; give the folder holding the files)")
    if not folder.is_dir():
        raise NnzooError(f"{what} folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise NnzooError(f"{what} folder {folder} is empty")
    parsed = {}
    for p in files:
        s = split_ending(p.name)
        if s is None:
            raise NnzooError(f"{p}: unsupported file type; supported endings: {', '.join(SUPPORTED_ENDINGS)}")
        parsed[p] = s
    endings = {e.lower() for _, e in parsed.values()}
    if len(endings) > 1:
        raise NnzooError(f"{what} folder {folder} mixes file types {sorted(endings)}; convert them to one type")
    ending = next(iter(parsed.values()))[1]

    cases: dict[str, dict[int, str]] = {}
    for p, (stem, _) in parsed.items():
        m = _CHANNEL_RE.match(stem)
        if num_channels > 1 and m is None:
            raise NnzooError(f"{p}: with {num_channels} channels, image files must be named "
                             f"CASE_XXXX{ending} (XXXX = channel index 0000..{num_channels - 1:04d})")
        case, ch = (m["case"], int(m["ch"])) if m is not None else (stem, 0)
        if num_channels == 1 and m is not None and int(m["ch"]) != 0:
            first = next((q for q, (st, _) in parsed.items() if st == f"{m['case']}_0000"), None)
            if first is not None:  # CASE_0000 and CASE_0001: channel files, not two cases
                raise NnzooError(f"{p}: channel {int(m['ch']):04d} of case {m['case']!r} (beside {first.name}), but "
                                 "only 1 channel is expected (dataset create: give one --channel per channel; predict: the model's channels)")
            case, ch = stem, 0  # a single-channel file that happens to end in _NNNN
        if ch >= num_channels:
            raise NnzooError(f"{p}: channel {ch:04d} but only {num_channels} channel(s) were declared (--channel)")
        if ch in cases.setdefault(case, {}):
            raise NnzooError(f"{p}: case {case!r} channel {ch:04d} appears twice ({cases[case][ch]})")
        cases[case][ch] = str(p)
    out = {}
    for case, chans in sorted(cases.items()):
        missing = [c for c in range(num_channels) if c not in chans]
        if missing:
            raise NnzooError(f"case {case!r} in {folder}: missing channel file(s) "
                             + ", ".join(f"{case}_{c:04d}{ending}" for c in missing))
        out[case] = [chans[c] for c in range(num_channels)]
    return out, ending


def resolve_dataset_name(dataset: str | int) -> str:
    """``DatasetNNN_NAME`` for an id or name, looked up as nnU-Net does.

    Raises:
        NnzooError: unknown id, ambiguous id, or malformed input.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    s = str(dataset)
    if s.startswith("Dataset"):
        if not re.match(r"^Dataset\d{3}_", s):
            raise NnzooError(f"dataset name {s!r} must look like DatasetNNN_NAME")
        return s
    try:
        did = int(s)
    except ValueError:
        raise NnzooError(f"dataset {s!r} is neither an id (number) nor a DatasetNNN_NAME") from None
    found = list(find_candidate_datasets(did))
    if not found:
        raise NnzooError(f"unknown dataset id {did}: no Dataset{did:03d}_* in nnUNet_raw ({os.environ.get('nnUNet_raw')}),"
                         f" nnUNet_preprocessed or nnUNet_results")
    if len(found) > 1:
        raise NnzooError(f"dataset id {did} is ambiguous: {', '.join(found)}")
    return found[0]


def raw_cases(raw_folder: str | Path, dataset_json: dict) -> list[Case]:
    """Labeled cases of a raw nnU-Net dataset folder (``imagesTr``/``labelsTr`` or dataset.json's ``dataset``).

    Raises:
        NnzooError: missing/empty folders, missing channel or label files.
    """
    raw_folder = Path(raw_folder)
    n_ch = len(dataset_json["channel_names"])
    ending = dataset_json["file_ending"]
    if "dataset" in dataset_json:
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        ds = get_filenames_of_train_images_and_targets(str(raw_folder), dict(dataset_json))
        return [Case(k, v["images"], v["label"]) for k, v in sorted(ds.items())]
    images = raw_folder / "imagesTr"
    if not images.is_dir() or not any(images.iterdir()):
        raise NnzooError(f"{images}: missing or empty images folder")
    cases = _strict_cases(images, ending, n_ch)
    out = []
    for case, files in cases.items():
        label = raw_folder / "labelsTr" / f"{case}{ending}"
        if not label.is_file():
            raise NnzooError(f"{label}: label file of case {case!r} not found")
        out.append(Case(case, files, str(label)))
    return out


def unlabeled_raw_cases(raw_folder: str | Path, dataset_json: dict) -> list[Case]:
    """Cases of ``imagesUnlabeled/`` (empty list when the folder does not exist)."""
    folder = Path(raw_folder) / "imagesUnlabeled"
    if not folder.is_dir():
        return []
    return [Case(k, v) for k, v in _strict_cases(folder, dataset_json["file_ending"],
                                                 len(dataset_json["channel_names"])).items()]


def _strict_cases(folder: Path, ending: str, n_ch: int) -> dict[str, list[str]]:
    """Cases of an nnU-Net image folder (``{case}_{XXXX}{ending}``), checking channel files."""
    cases: dict[str, set[int]] = {}
    for p in folder.iterdir():
        if not p.name.endswith(ending):
            continue
        m = _CHANNEL_RE.match(p.name[: -len(ending)])
        if m is None:
            raise NnzooError(f"{p}: not named CASE_XXXX{ending} as nnU-Net requires")
        cases.setdefault(m["case"], set()).add(int(m["ch"]))
    if not cases:
        raise NnzooError(f"{folder}: no {ending} images")
    for case, chans in cases.items():
        missing = sorted(set(range(n_ch)) - chans)
        if missing:
            raise NnzooError(f"case {case!r} in {folder}: missing channel file(s) "
                             + ", ".join(f"{case}_{c:04d}{ending}" for c in missing))
    return {c: [str(folder / f"{c}_{i:04d}{ending}") for i in range(n_ch)] for c in sorted(cases)}


def default_regions_class_order(regions: list[tuple[int, ...]]) -> list[int]:
    """The label written for each region when predictions are converted back to a label map.

    For region ``i`` (in order) the smallest of its labels that no later region contains, which
    gives nnU-Net's BraTS order ``[1, 2, 3]`` for the regions ``(1, 2, 3), (2, 3), (3,)``.

    Raises:
        NnzooError: a region whose labels all lie in later regions (give the order explicitly).
    """
    out = []
    for i, region in enumerate(regions):
        later = set().union(*regions[i + 1:]) if i + 1 < len(regions) else set()
        own = sorted(set(region) - later)
        if not own:
            raise NnzooError(f"region {region} has no label outside the regions after it; give --regions-class-order")
        out.append(own[0])
    return out


def _labels_json(values: set[int], label_names: dict[int, str], regions: dict[str, tuple[int, ...]],
                 ignore_label: int | None) -> dict:
    present = max(values)
    bad = [v for v in label_names if v not in range(present + 1)]
    if bad:
        raise NnzooError(f"--label names values {bad} that no label file contains (found {sorted(values)})")
    if ignore_label is not None and ignore_label != present:
        raise NnzooError(f"--ignore-label {ignore_label}: nnU-Net needs the ignore label to be the highest label value "
                         f"(the label files hold {sorted(values)})")
    real = [v for v in range(1, present + 1) if v != ignore_label]
    if regions:
        for rname, members in regions.items():
            missing = sorted(set(members) - set(real))
            if missing:
                raise NnzooError(f"--region {rname}: label values {missing} are not in the label files (found "
                                 f"{sorted(values)})")
        labels = {"background": 0, **{k: list(v) for k, v in regions.items()}}
    else:
        names = ["background"] + [label_names.get(v, f"label_{v}") for v in real]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise NnzooError(f"--label: label name {twice[0]!r} is used for more than one label value "
                             f"(names: {dict(zip([0] + real, names))})")
        labels = dict(zip(names, [0] + real))
    if ignore_label is not None:
        labels["ignore"] = ignore_label
    if len(labels) != len(set(labels)) or len(set(map(str, labels.values()))) != len(labels):
        raise NnzooError(f"label names and values must be unique: {labels}")
    return labels


@dataclass(frozen=True, kw_only=True)
class LabelSpec:
    """How the label values of a new dataset are declared (``dataset create``'s label flags).

    Attributes:
        names: optional ``{value: name}`` (``--label VALUE=NAME``; default ``label_<value>``, 0 ``background``).
        regions: optional ``{region name: label values}`` (``--region``; replaces the per-label classes).
        regions_class_order: label written for each region at export (``--regions-class-order``; default:
            :func:`default_regions_class_order`).
        ignore_label: label value marking unannotated voxels (``--ignore-label``; nnU-Net's ``ignore``,
            must be the highest).
    """

    names: dict[int, str] = field(default_factory=dict)
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    regions_class_order: list[int] | None = None
    ignore_label: int | None = None


def create_dataset(images: str | Path, labels: str | Path, *, name: str, dataset_id: int, channels: list[str],
                   unlabeled: str | Path | None = None, label_spec: LabelSpec | None = None,
                   domains: str | Path | None = None) -> Path:
    """Turn plain image and label folders into ``nnUNet_raw/DatasetNNN_NAME``.

    Labels are the integer values found in the label files: ``0..max`` are declared, 0 named
    ``background`` and the others ``label_<v>`` unless ``label_names`` names them; with
    ``regions`` the dataset is region-based (nnU-Net's sigmoid training on overlapping regions).
    dataset.json is written by nnU-Net's ``generate_dataset_json``. The folder is assembled under a
    temporary name and renamed at the end, so a failure leaves nothing behind.

    Args:
        images: folder of images (``case.ext`` or ``case_XXXX.ext``).
        labels: folder of label files ``case.ext`` with the same ending.
        name: dataset name (letters, digits, ``_``, ``-``).
        dataset_id: 1..999.
        channels: channel names, e.g. ``["T1"]`` or ``["CT"]``; their count sets the channels per case.
        unlabeled: optional folder of unlabeled images, copied to ``imagesUnlabeled/``.
        label_spec: label names, regions, their export order and the ignore label (:class:`LabelSpec`;
            default: every value found, named ``label_<v>``).
        domains: optional CSV ``case,domain`` or JSON ``{case: domain}`` naming the domain of every
            labeled and unlabeled case (stored as ``domains.json``).

    Returns:
        The new dataset folder.

    Raises:
        NnzooError: bad arguments, an existing dataset with this id, unmatched cases, a domains file
            that misses a case or names one that does not exist, or any problem :func:`check_cases` finds.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    spec = label_spec or LabelSpec()
    label_names, regions = spec.names, spec.regions
    regions_class_order, ignore_label = spec.regions_class_order, spec.ignore_label
    if not 1 <= int(dataset_id) <= 999:
        raise NnzooError(f"--id {dataset_id}: the dataset id must be between 1 and 999")
    if not _NAME_RE.match(name):
        raise NnzooError(f"--name {name!r}: use letters, digits, '_' and '-' only (starting with a letter or digit)")
    if not channels:
        raise NnzooError("give at least one --channel NAME (e.g. --channel CT)")
    blank = [c for c in channels if not str(c).strip()]
    if blank:
        raise NnzooError(f"--channel {blank[0]!r}: a channel needs a name (e.g. --channel CT)")
    if ignore_label is not None and int(ignore_label) < 1:
        raise NnzooError(f"--ignore-label {ignore_label}: the ignore label must be a positive label value "
                         "(the highest one in the label files)")
    if regions_class_order is not None and not regions:
        raise NnzooError("--regions-class-order needs --region definitions")
    raw_root = Path(os.environ["nnUNet_raw"])
    existing = list(find_candidate_datasets(int(dataset_id)))
    if existing:
        raise NnzooError(f"--id {dataset_id}: dataset id {dataset_id} is already used by {', '.join(existing)}; "
                         "choose another id (nothing was changed)")
    target = raw_root / f"Dataset{int(dataset_id):03d}_{name}"

    img_cases, ending = scan_image_folder(images, len(channels), "images")
    lab_files, lab_ending = scan_image_folder(labels, 1, "labels")
    if lab_ending.lower() != ending.lower():
        raise NnzooError(f"labels in {labels} are {lab_ending} files but images are {ending}; use one file type")
    missing_lab = sorted(set(img_cases) - set(lab_files))
    missing_img = sorted(set(lab_files) - set(img_cases))
    if missing_lab or missing_img:
        msg = []
        if missing_lab:
            msg.append(f"images without label in {labels}: {', '.join(missing_lab[:10])}")
        if missing_img:
            msg.append(f"labels without image in {images}: {', '.join(missing_img[:10])}")
        raise NnzooError("; ".join(msg))
    cases = [Case(c, img_cases[c], lab_files[c][0]) for c in sorted(img_cases)]
    unl_cases: dict[str, list[str]] = {}
    if unlabeled is not None:
        unl_cases, unl_ending = scan_image_folder(unlabeled, len(channels), "unlabeled")
        if unl_ending.lower() != ending.lower():
            raise NnzooError(f"unlabeled images in {unlabeled} are {unl_ending} files but images are {ending}")
        clash = sorted(set(unl_cases) & set(img_cases))
        if clash:
            raise NnzooError(f"unlabeled case names also used by labeled cases: {', '.join(clash[:10])}")
    case_domains = None
    if domains is not None:
        case_domains = read_case_mapping(domains, "--domains")
        check_domains(case_domains, [*img_cases, *unl_cases], source=f"--domains {domains}")

    print(f"Checking {len(cases)} labeled and {len(unl_cases)} unlabeled cases...")
    reader = reader_for(None, cases[0].images[0])
    values = check_cases(cases, None, None, what=f"dataset from {images}", reader_class=reader)
    if unl_cases:
        check_cases([Case(c, f) for c, f in unl_cases.items()], None, None,
                    what=f"unlabeled images in {unlabeled}", reader_class=reader)
    labels_json = _labels_json(values, dict(label_names or {}), dict(regions or {}), ignore_label)
    order = None
    if regions:
        order = list(regions_class_order) if regions_class_order is not None else \
            default_regions_class_order([tuple(v) for v in regions.values()])
        if len(order) != len(regions):
            raise NnzooError(f"--regions-class-order needs one label per region ({len(regions)}), got {order}")

    raw_root.mkdir(parents=True, exist_ok=True)
    tmp = raw_root / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for sub in ("imagesTr", "labelsTr") + (("imagesUnlabeled",) if unl_cases else ()):
            (tmp / sub).mkdir(parents=True)
        for c in cases:
            for i, f in enumerate(c.images):
                shutil.copy2(f, tmp / "imagesTr" / f"{c.name}_{i:04d}{ending}")
            shutil.copy2(c.label, tmp / "labelsTr" / f"{c.name}{ending}")
        for c, files in unl_cases.items():
            for i, f in enumerate(files):
                shutil.copy2(f, tmp / "imagesUnlabeled" / f"{c}_{i:04d}{ending}")
        generate_dataset_json(str(tmp), {i: ch for i, ch in enumerate(channels)}, labels_json, len(cases), ending,
                              regions_class_order=order, dataset_name=name, license="see the source data",
                              converted_by="nnzoo dataset create", numUnlabeled=len(unl_cases))
        if case_domains is not None:
            (tmp / DOMAINS_FILE).write_text(json.dumps(dict(sorted(case_domains.items())), indent=2) + "\n")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dataset_json = json.loads((target / "dataset.json").read_text())
    print(f"Created {target}: {len(cases)} cases, {len(unl_cases)} unlabeled, labels {dataset_json['labels']}, "
          f"channels {dataset_json['channel_names']}"
          + (f", domains {_domain_counts(case_domains)}" if case_domains else ""))
    return target


def _domain_counts(domains: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for d in domains.values():
        counts[d] = counts.get(d, 0) + 1
    return ", ".join(f"{d} {n}" for d, n in sorted(counts.items()))


def _test_case_names(raw_folder: Path, ending: str) -> list[str]:
    """Case names of ``imagesTs``/``labelsTs`` (held-out cases a hand-placed domains.json may also name)."""
    out = set()
    for sub in ("imagesTs", "labelsTs"):
        folder = raw_folder / sub
        for p in folder.iterdir() if folder.is_dir() else ():
            if p.name.endswith(ending):
                stem = p.name[: -len(ending)]
                m = _CHANNEL_RE.match(stem) if sub == "imagesTs" else None
                out.add(m["case"] if m else stem)
    return sorted(out)


def raw_domains(raw_folder: str | Path, dataset_json: dict, cases: list[Case], unlabeled: list[Case]
                ) -> dict[str, str] | None:
    """The raw dataset's ``domains.json`` checked against its cases, or None when it has none.

    It must name every labeled (``imagesTr``) and unlabeled (``imagesUnlabeled``) case; it may also
    name the held-out cases of ``imagesTs``/``labelsTs`` (so ``nnzoo evaluate -d`` groups test predictions).

    Raises:
        NnzooError: unreadable file, a case without a domain, or a case that is not in the dataset.
    """
    f = Path(raw_folder) / DOMAINS_FILE
    if not f.is_file():
        return None
    try:
        domains = read_domains(f)
    except DomainsError as e:
        raise NnzooError(str(e)) from None
    check_domains(domains, [c.name for c in cases] + [c.name for c in unlabeled], source=str(f),
                  allowed=_test_case_names(Path(raw_folder), dataset_json["file_ending"]))
    return domains


def check_raw_dataset(raw_folder: str | Path, num_workers: int | None = None) -> tuple[dict, list[Case], list[Case]]:
    """Check a raw dataset folder as nnzoo's other commands expect it (its ``domains.json`` too, if any).

    Returns:
        ``(dataset_json, labeled cases, unlabeled cases)``.

    Raises:
        NnzooError: missing/invalid dataset.json, any problem in the cases, or a domains.json that does
            not fit them (see :func:`raw_domains`).
    """
    raw_folder = Path(raw_folder)
    dj_file = raw_folder / "dataset.json"
    dataset_json = read_json(dj_file, hint="a dataset.json is a JSON object with channel_names, labels, file_ending")
    for key in ("channel_names", "labels", "file_ending"):
        if key not in dataset_json:
            raise NnzooError(f"{dj_file}: missing key {key!r}")
    if not isinstance(dataset_json["channel_names"], dict) or not dataset_json["channel_names"]:
        raise NnzooError(f"{dj_file}: 'channel_names' must map channel indices to names (e.g. {{\"0\": \"CT\"}}), "
                         f"got {dataset_json['channel_names']!r:.100}")
    if not isinstance(dataset_json["file_ending"], str) or not dataset_json["file_ending"].startswith("."):
        raise NnzooError(f"{dj_file}: 'file_ending' must be a file ending such as \".nii.gz\", got "
                         f"{dataset_json['file_ending']!r:.100}")
    try:
        declared = declared_label_values(dataset_json)
    except NnzooError as e:
        raise NnzooError(f"{dj_file}: {e}") from None
    cases = raw_cases(raw_folder, dataset_json)
    unl = unlabeled_raw_cases(raw_folder, dataset_json)
    raw_domains(raw_folder, dataset_json, cases, unl)
    print(f"Checking {len(cases)} labeled and {len(unl)} unlabeled cases of {raw_folder.name}...")
    reader = reader_for(dataset_json, cases[0].images[0])
    check_cases(cases, declared, num_workers, what=str(raw_folder), reader_class=reader)
    if unl:
        check_cases(unl, None, num_workers, what=f"{raw_folder}/imagesUnlabeled", reader_class=reader)
    return dataset_json, cases, unl
