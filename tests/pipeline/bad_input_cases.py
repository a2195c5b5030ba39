"""Inputs for the bad-input matrix (``test_bad_input.py``): a small world to damage, and the damage.

:class:`Ctx` gives each row of the matrix fresh copies of what it breaks: plain image/label folders
(3 NIfTI cases 8x10x12) for ``dataset create`` and ``evaluate``, and a copy of one small planned 2D
dataset with an untrained model folder (built once per module by :func:`build_world`, about 15 s)
for ``plan_and_preprocess``, ``train``, ``predict``, ``find-best``, ``export-model`` and
``install-model``.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from functools import cached_property
from pathlib import Path

import numpy as np

WORLD_ID = 601
WORLD_NAME = f"Dataset{WORLD_ID}_BadIn"
MODEL = "nnUNetTrainer__nnUNetPlans__2d"
FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def build_world(base: Path) -> Path:
    """A planned 2D dataset (5 PNG cases 16x16, id 601) and an untrained nnUNetTrainer model of fold 0.

    The model folder is what ``nnzoo train`` leaves (plans, dataset.json, fingerprint,
    ``fold_0/checkpoint_final.pth`` and ``nnzoo_run.json``), written without training: the trainer
    is built on the CPU, initialised and checkpointed.
    """
    import torch
    from helpers import nnunet_folders
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnzoo.pipeline.cli import main
    from nnzoo.pipeline.synthetic import write_synthetic_folders
    from nnzoo.trainers.nnunet_compat import build_trainer

    src = write_synthetic_folders(base / "src", num_cases=5, shape=(16, 16), num_classes=3, file_ending=".png", seed=7)
    with nnunet_folders(base):
        assert main(["dataset", "create", "--images", str(src["images"]), "--labels", str(src["labels"]), "--name",
                     "BadIn", "--id", str(WORLD_ID), "--channel", "img"]) == 0
        assert main(["plan_and_preprocess", "-d", str(WORLD_ID), "-c", "2d", "-np", "1"]) == 0
        pre = base / "nnUNet_preprocessed" / WORLD_NAME
        plans = json.loads((pre / "nnUNetPlans.json").read_text())
        dataset_json = json.loads((pre / "dataset.json").read_text())
        trainer = build_trainer(nnUNetTrainer, plans=plans, configuration="2d", fold=0, dataset_json=dataset_json,
                                device=torch.device("cpu"))
        trainer.initialize()
        fold = Path(trainer.output_folder)
        trainer.save_checkpoint(str(fold / "checkpoint_final.pth"))
    model = fold.parent
    for f in ("nnUNetPlans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy(pre / f, model / ("plans.json" if f == "nnUNetPlans.json" else f))
    (fold / "nnzoo_run.json").write_text(json.dumps({"trainer": "nnUNetTrainer", "configuration": "2d", "fold": 0}))
    for log in fold.glob("training_log_*.txt"):
        log.unlink()
    return base


class World:
    """Paths of one copy of the world."""

    def __init__(self, base: Path):
        self.base = base
        self.raw = base / "nnUNet_raw" / WORLD_NAME
        self.pre = base / "nnUNet_preprocessed" / WORLD_NAME
        self.results = base / "nnUNet_results"
        self.model = self.results / WORLD_NAME / MODEL
        self.fold0 = self.model / "fold_0"
        self.ckpt = self.fold0 / "checkpoint_final.pth"
        self.images = base / "src" / "images"
        self.labels = base / "src" / "labels"


class Ctx:
    """What one row works in: its tmp folder, plain folders and (on first use) its copy of the world."""

    def __init__(self, tmp: Path, world_template, monkeypatch):
        self.tmp = tmp
        self._template = world_template
        self._mp = monkeypatch

    # ------------------------------------------------------------------ plain folders
    @cached_property
    def src(self) -> dict[str, Path]:
        from nnzoo.pipeline.synthetic import write_synthetic_folders

        return write_synthetic_folders(self.tmp / "src", num_cases=3, shape=(8, 10, 12), num_classes=3,
                                       num_unlabeled=1, seed=1)

    def create(self, *extra: str, images: Path | None = None, labels: Path | None = None) -> list[str]:
        """``dataset create`` of :attr:`src` (id 77) with ``extra`` flags (later flags win)."""
        return ["dataset", "create", "--images", str(images or self.src["images"]), "--labels",
                str(labels or self.src["labels"]), "--name", "Bad", "--id", "77", "--channel", "MR", *extra]

    @cached_property
    def pred(self) -> Path:
        """A prediction folder: a copy of :attr:`src`'s labels."""
        return Path(shutil.copytree(self.src["labels"], self.tmp / "pred"))

    @cached_property
    def labels_json(self) -> Path:
        f = self.tmp / "labels.json"
        f.write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
        return f

    def evaluate(self, *extra: str, ref: Path | None = None, pred: Path | None = None) -> list[str]:
        """``evaluate`` of :attr:`pred` against :attr:`src`'s labels with :attr:`labels_json` (later flags win)."""
        base = ["evaluate", "-ref", str(ref or self.src["labels"]), "-pred", str(pred or self.pred)]
        if "-d" not in extra:
            base += ["--labels", str(self.labels_json)]
        return base + list(extra)

    # ------------------------------------------------------------------ the world
    @cached_property
    def w(self) -> World:
        base = self.tmp / "world"
        shutil.copytree(self._template(), base, symlinks=True)
        for k in FOLDERS:
            self._mp.setenv(k, str(base / k))
        return World(base)

    def train(self, *extra: str, fold: str = "0", configuration: str = "2d") -> list[str]:
        """``train`` of the world's dataset, one epoch of one iteration on the CPU (later flags win)."""
        self.w  # noqa: B018 - activates the world's folders
        return ["train", str(WORLD_ID), configuration, fold, "-device", "cpu", "--epochs", "1", "--iters", "1",
                "--val-iters", "1", "--no-val", *extra]

    @cached_property
    def out(self) -> Path:
        return self.tmp / "out"

    def predict(self, *extra: str, inp: Path | None = None, out: Path | None = None, model: bool = False) -> list[str]:
        """``predict`` of the world's images into :attr:`out` with its model (``-d -c``, or ``-m`` with ``model``)."""
        self.w  # noqa: B018 - activates the world's folders
        which = ["-m", str(self.w.model)] if model else [] if "-m" in extra else ["-d", str(WORLD_ID), "-c", "2d"]
        return ["predict", "-i", str(inp or self.w.images), "-o", str(out or self.out), *which, "-device", "cpu",
                "-np", "1", *extra]

    def export(self, *extra: str, model: Path | None = None, out: Path | None = None) -> list[str]:
        return ["export-model", "-m", str(model or self.w.model), "-o", str(out or self.tmp / "model.zip"), *extra]

    def model_zip(self, name: str = "m.zip", dataset: str = "Dataset602_Other", skip: tuple[str, ...] = (),
                  compression: int = zipfile.ZIP_DEFLATED) -> Path:
        """The world's model as an export zip, under another dataset name (so it is not installed yet)."""
        f = self.tmp / name
        with zipfile.ZipFile(f, "w", compression) as z:
            for p in sorted(self.w.model.rglob("*")):
                if p.is_file() and p.name not in skip:
                    z.write(p, f"{dataset}/{MODEL}/{p.relative_to(self.w.model).as_posix()}")
        return f

    # ------------------------------------------------------------------ files and damage
    def dir(self, name: str) -> Path:
        p = self.tmp / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def file(self, name: str, content: bytes = b"not a folder") -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        return p


def damage(path: Path, how: str) -> Path:
    """Damage a file in place: ``truncate`` (first third), ``garbage``, ``empty``."""
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif how == "garbage":
        path.write_bytes(b"\x00garbage\xff" * 40)
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(how)
    return path


def edit_json(path: Path, **changes) -> Path:
    """Set (or, with value None, delete) top-level keys of a JSON file."""
    obj = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            obj.pop(k, None)
        else:
            obj[k] = v
    path.write_text(json.dumps(obj))
    return path


def write_nii(path: Path, arr: np.ndarray, spacing: tuple[float, ...] | None = None, vector: bool = False) -> Path:
    """``arr`` (numpy axis order) as an image file; ``vector``: the last axis holds components."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr, isVector=vector)
    if spacing is not None:
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sitk.WriteImage(img, str(path))
    return path


def write_png(path: Path, arr: np.ndarray, vector: bool = False) -> Path:
    return write_nii(path, np.asarray(arr).astype(np.uint8), vector=vector)


def edit_checkpoint(src: Path, dst: Path, *, trainer_name: str | None = None, configuration: str | None = None,
                    widen_first_conv: bool = False) -> Path:
    """A copy of a checkpoint as another trainer or configuration wrote it, or with weights of another shape."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    if trainer_name is not None:
        ckpt["trainer_name"] = trainer_name
    if configuration is not None:
        ckpt["init_args"]["configuration"] = configuration
    if widen_first_conv:  # a network with two input channels, as trained on another dataset
        key = next(k for k, v in ckpt["network_weights"].items() if v.ndim == 4)
        w = ckpt["network_weights"][key]
        ckpt["network_weights"][key] = torch.cat([w, w], dim=1)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """``{file: (mtime_ns, size)}`` of every file below ``folder`` (symlinks not followed)."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            st = os.lstat(p)
            out[p] = (st.st_mtime_ns, st.st_size)
    return out


# ------------------------------------------------------------------------ domains and groups (issue 21)
def domains_file(c: Ctx, name: str, content: dict | str) -> Path:
    """A domains (``--domains``) or groups (``--groups``) file in the row's folder: CSV ``case,domain`` rows
    from a dict (JSON when ``name`` ends in .json), or ``content`` as given."""
    if isinstance(content, dict):
        content = json.dumps(content) if name.endswith(".json") else \
            "case,domain\n" + "".join(f"{k},{v}\n" for k, v in content.items())
    return c.file(name, content.encode())


#: the domains of :attr:`Ctx.src`'s cases (3 labeled, 1 unlabeled)
SRC_DOMAINS = {"case000": "T1", "case001": "T1", "case002": "T2", "unl000": "FLAIR"}
#: the domains of the world's 5 PNG cases
WORLD_DOMAINS = {f"case{i:03d}": ("A" if i < 3 else "B") for i in range(5)}


def _create_domains(c: Ctx, content: dict | str, name: str = "d.csv", unlabeled: bool = True) -> tuple[list, Path]:
    f = domains_file(c, name, content)
    extra = ["--unlabeled", str(c.src["unlabeled"])] if unlabeled else []
    return c.create(*extra, "--domains", str(f)), f


def _drop(mapping: dict, *keys: str) -> dict:
    return {k: v for k, v in mapping.items() if k not in keys}


def _create_row(content, needles, name: str = "d.csv", unlabeled: bool = True):
    def build(c: Ctx):
        argv, f = _create_domains(c, content, name, unlabeled)
        return argv, [str(f), *needles]
    return build


def _plan_domains(c: Ctx, content: dict | str) -> tuple[list[str], list[str]]:
    f = c.w.raw / "domains.json"
    f.write_text(content if isinstance(content, str) else json.dumps(content))
    return ["plan_and_preprocess", "-d", str(WORLD_ID), "-c", "2d", "-np", "1"], [str(f)]


def _eval_groups(c: Ctx, content: dict | str, name: str = "g.csv", drop_pred: str | None = None):
    f = domains_file(c, name, content)
    if drop_pred:
        (c.pred / f"{drop_pred}.nii.gz").unlink()
    return c.evaluate("--groups", str(f)), ["--groups", str(f)]


def _eval_world_domains(c: Ctx, text: str):
    pred = Path(shutil.copytree(c.w.raw / "labelsTr", c.tmp / "wpred"))
    (c.w.raw / "domains.json").write_text(text)
    return (["evaluate", "-ref", str(c.w.raw / "labelsTr"), "-pred", str(pred), "-d", str(WORLD_ID), "-np", "1"],
            [str(c.w.raw / "domains.json")])


def _plus(build, *needles: str):
    def run(c: Ctx):
        argv, base = build(c)
        return argv, [*base, *needles]
    return run


#: rows of the bad-input matrix for ``dataset create --domains``, a hand-placed ``domains.json`` at
#: ``plan_and_preprocess``, and ``evaluate --groups`` / ``-d``'s domains.json: ``{command: {row id: build}}``
DOMAIN_ROWS: dict[str, dict] = {
    "dataset create": {
        "domains-file-missing": lambda c: (c.create("--domains", str(c.tmp / "no.csv")),
                                           ["--domains", str(c.tmp / "no.csv"), "not found"]),
        "domains-is-a-folder": lambda c: (c.create("--domains", str(c.dir("dom.csv"))),
                                          ["--domains", str(c.tmp / "dom.csv"), "a folder"]),
        "domains-labeled-case-missing": _create_row(_drop(SRC_DOMAINS, "case001"), ["--domains", "case001"]),
        "domains-unlabeled-case-missing": _create_row(_drop(SRC_DOMAINS, "unl000"), ["--domains", "unl000"]),
        "domains-unlabeled-without-flag": _create_row(SRC_DOMAINS, ["unl000", "not in the dataset"],
                                                      unlabeled=False),
        "domains-unknown-case": _create_row({**SRC_DOMAINS, "case099": "T1"}, ["case099", "not in the dataset"]),
        "domains-json-unknown-case": _create_row({**SRC_DOMAINS, "case099": "T1"}, ["case099"], name="d.json"),
        "domains-json-corrupt": _create_row('{"case000": "T1",', ["not valid JSON"], name="d.json"),
        "domains-json-list": _create_row('["case000", "T1"]', ["JSON object"], name="d.json"),
        "domains-json-not-string": _create_row('{"case000": 3}', ["'case000'", "string"], name="d.json"),
        "domains-csv-three-columns": _create_row("case000,T1,x\n", ["row 1", "3 columns"]),
        "domains-case-twice": _create_row("case000,T1\ncase000,T2\n", ["'case000'", "two domains"]),
        "domains-empty-domain": _create_row("case000,\n", ["empty"]),
        "domains-empty-file": _create_row("", ["lists no case"]),
    },
    "plan_and_preprocess": {
        "domains-json-case-missing": _plus(lambda c: _plan_domains(c, _drop(WORLD_DOMAINS, "case003")),
                                       "case003"),
        "domains-json-unknown-case": _plus(lambda c: _plan_domains(c, {**WORLD_DOMAINS, "case077": "A"}),
                                       "case077", "not in the dataset"),
        "domains-json-corrupt": _plus(lambda c: _plan_domains(c, "{"), "not valid JSON"),
    },
    "evaluate": {
        "groups-file-missing": lambda c: (c.evaluate("--groups", str(c.tmp / "no.csv")),
                                          ["--groups", str(c.tmp / "no.csv"), "not found"]),
        "groups-unknown-case": _plus(lambda c: _eval_groups(c, {"case000": "A", "case099": "B"}),
                                       "case099", "reference folder"),
        "groups-names-no-evaluated-case": _plus(
            lambda c: _eval_groups(c, {"case002": "A"}, drop_pred="case002"), "none of the 2 evaluated"),
        "groups-json-corrupt": _plus(lambda c: _eval_groups(c, "{", name="g.json"), "not valid JSON"),
        "groups-csv-three-columns": _plus(lambda c: _eval_groups(c, "case000,A,B\n"), "3 columns"),
        "groups-reserved-name": _plus(lambda c: _eval_groups(c, {"case000": "(no group)"}),
                                                "reserved"),
        "d-domains-json-corrupt": _plus(lambda c: _eval_world_domains(c, "{"), "not valid JSON"),
    },
}


# ------------------------------------------------------------------------------- --augment (issue 21)
def _names_export(c: Ctx, *extra: str) -> list[str]:
    """``export-model`` of the world's model by nnU-Net's names (``-d -c``) instead of ``-m``."""
    c.w  # noqa: B018 - activates the world's folders
    return ["export-model", "-d", str(WORLD_ID), "-c", "2d", "-o", str(c.tmp / "model.zip"), *extra]


def _find_best(c: Ctx, *extra: str) -> list[str]:
    c.w  # noqa: B018 - activates the world's folders
    return ["find-best", "-d", str(WORLD_ID), "-np", "1", *extra]


#: rows of the bad-input matrix for ``--augment`` (train, predict, find-best, export-model): ``{command: {row id:
#: build}}``; the world's only model is the plain ``nnUNetTrainer`` one (no ``..._gin`` folder)
AUGMENT_ROWS: dict[str, dict] = {
    "train": {
        "augment-unknown": lambda c: (c.train("--augment", "gni"), ["--augment", "'gni'", "gin"]),
        "augment-continue-other-augmentation": lambda c: (c.train("--continue", "--augment", "gin"),
                                                          [str(c.w.model), "--augment"]),
        "augment-hparam-without-augment": lambda c: (c.train("--hparam", "GIN_N_LAYERS=3", fold="1"),
                                                     ["--hparam", "GIN_N_LAYERS", "--augment gin"]),
    },
    "predict": {
        "augment-unknown": lambda c: (c.predict("--augment", "gni"), ["--augment", "'gni'", "gin"]),
        "augment-untrained": lambda c: (c.predict("--augment", "gin"),
                                        [f"{MODEL}_gin", "no trained model", "--augment gin", MODEL]),
        "augment-with-m": lambda c: (c.predict("--augment", "gin", model=True), ["--augment gin", "-m"]),
    },
    "find-best": {
        "augment-unknown": lambda c: (_find_best(c, "--augment", "gni"), ["--augment", "'gni'", "gin", "none"]),
        "augment-untrained": lambda c: (_find_best(c, "--augment", "gin"), ["--augment gin", "no trained model"]),
    },
    "export-model": {
        "augment-unknown": lambda c: (_names_export(c, "--augment", "gni"), ["--augment", "'gni'", "gin"]),
        "augment-untrained": lambda c: (_names_export(c, "--augment", "gin"),
                                        [f"{MODEL}_gin", "no trained model", "--augment gin"]),
    },
}


# ------------------------------------------------------------------------------- --adapt (issue 22)
def _source_stats(c: Ctx, *extra: str) -> list[str]:
    c.w  # noqa: B018 - activates the world's folders
    return ["source-stats", "-d", str(WORLD_ID), "-c", "2d", "-device", "cpu", *extra]


def _corrupt_source_stats(c: Ctx) -> list[str]:
    (c.w.fold0 / "source_stats.json").write_text("{not json")
    return c.predict("--adapt", "vptta", model=True)


#: rows of the bad-input matrix for test-time adaptation (``predict --adapt``, ``source-stats``): ``{command:
#: {row id: build}}``; the world's model has no ``source_stats.json``
ADAPT_ROWS: dict[str, dict] = {
    "predict": {
        "adapt-unknown": lambda c: (c.predict("--adapt", "tnet"), ["--adapt tnet", "tent, vptta, grata"]),
        "adapt-hparam-unknown": lambda c: (c.predict("--adapt", "tent", "--adapt-hparam", "NOPE=1"),
                                           ["NOPE", "Tent", "LR"]),
        "adapt-hparam-bad-value": lambda c: (c.predict("--adapt", "tent", "--adapt-hparam", "STEPS=x"),
                                             ["--adapt-hparam", "STEPS='x'", "int"]),
        "adapt-hparam-not-name-value": lambda c: (c.predict("--adapt", "grata", "--adapt-hparam", "LR"),
                                                  ["--adapt-hparam", "'LR'", "NAME=VALUE"]),
        "adapt-hparam-without-adapt": lambda c: (c.predict("--adapt-hparam", "LR=1"), ["--adapt-hparam", "--adapt"]),
        "adapt-continual-without-adapt": lambda c: (c.predict("--adapt-continual"), ["--adapt-continual", "--adapt"]),
        "adapt-grata-unsupported-loss": lambda c: (c.predict("--adapt", "grata", "--adapt-hparam", "AUX_LOSS=rotate"),
                                                   ["--adapt-hparam", "AUX_LOSS='rotate'", "'ent'"]),
        "adapt-vptta-without-source-stats": lambda c: (
            c.predict("--adapt", "vptta"),
            ["--adapt vptta", "source_stats.json", f"nnzoo source-stats -d {WORLD_ID} -c 2d -tr nnUNetTrainer -f 0"]),
        "adapt-vptta-source-stats-corrupt": lambda c: (_corrupt_source_stats(c), [
            "source_stats.json", "not readable", f"nnzoo source-stats -m {c.w.model} -f 0"]),
        "adapt-with-exact": lambda c: (c.predict("--adapt", "tent", "--exact"), ["--adapt tent", "--exact"]),
        "adapt-with-onnx": lambda c: (c.predict("--adapt", "tent", "--backend", "onnxruntime"),
                                      ["--adapt tent", "--backend onnxruntime"]),
    },
    "source-stats": {
        "unknown-fold": lambda c: (_source_stats(c, "-f", "3"), ["fold_3", "checkpoint_final.pth"]),
        "m-and-d": lambda c: (["source-stats", "-m", str(c.w.model), "-d", str(WORLD_ID)], ["-m", "-d", "not both"]),
        "not-preprocessed": lambda c: (
            (shutil.rmtree(c.w.pre / "nnUNetPlans_2d"), _source_stats(c))[1],
            ["nnUNetPlans_2d", "preprocessed training cases", "plan_and_preprocess"]),
        "no-model": lambda c: (["source-stats", "-m", str(c.tmp / "nowhere")], ["-m", "nowhere", "not found"]),
    },
}


def assert_one_error_line(err: str, needles: list[str]) -> None:
    """``err`` is exactly one line starting with ``error:`` that names every needle, and no traceback."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    missing = [n for n in needles if n not in lines[0]]
    assert not missing, f"{missing} not named in: {lines[0]}"
