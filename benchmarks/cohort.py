"""Shared pieces of nnzoo's accuracy benchmarks (``low_label.py``, ``domain_shift.py``).

A benchmark here runs the ``nnzoo`` CLI as a user would (``dataset create``, ``plan_and_preprocess``,
``train``, ``predict``, ``evaluate``) on a cohort of labeled training cases and held-out test cases,
keeps every finished run in a JSON file of its working folder (so a rerun resumes), runs ``--jobs``
runs side by side, and writes a Markdown table, a PNG and the JSON. This module holds what the
benchmarks share: the generated cohort, the dataset and run steps, the resumable state, the
parallel runner, the command-line flags common to them, and the statistics (a paired bootstrap
interval over seeds and test cases).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["CommandFailed", "nnzoo", "failure_reason", "cases", "generated_cohort", "check_source_folder",
           "make_dataset", "run_env", "train_predict_evaluate", "model_folders", "member_records", "run_parallel",
           "load_state", "save_state", "add_run_args", "parse_hparams", "apply_defaults", "trainer_hparams", "machine",
           "finish_state"]


# ------------------------------------------------------------------------------------------ commands
class CommandFailed(SystemExit):
    """An ``nnzoo`` command that failed. Uncaught, it ends the script with its message (as ``SystemExit``);
    a benchmark that reports failed runs catches it and keeps :attr:`reason`.

    Attributes:
        reason: one line saying why (the command's last error line).
        log: the command's log file.
    """

    def __init__(self, args: Sequence[str], log: Path) -> None:
        text = log.read_text(errors="replace") if log.is_file() else ""
        self.reason = failure_reason(text)
        self.log = log
        super().__init__(f"error: `nnzoo {' '.join(args)}` failed (log {log}):\n{text[-2000:]}")


def failure_reason(text: str, width: int = 200) -> str:
    """The line of a failed command's output that says why: the last ``error:``/exception line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if ln.lower().startswith("error") or (head.endswith(("Error", "Exception")) and " " not in head):
            return ln[:width]
    return lines[-1][:width] if lines else "no output"


def nnzoo(*args: str, log: Path, env: dict[str, str] | None = None) -> float:
    """Run one ``nnzoo`` command (this interpreter), output to ``log``; seconds taken.

    Raises:
        CommandFailed: the command exited with an error.
    """
    t = time.time()
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "nnzoo.pipeline", *args], stdout=f, stderr=subprocess.STDOUT,
                           env={**os.environ, **(env or {})})
    if r.returncode:
        raise CommandFailed(args, log)
    return time.time() - t


# ---------------------------------------------------------------------------------------------- data
def cases(folder: Path) -> dict[str, Path]:
    """``{case: file}`` of a folder of images or labels (one ``CASE.<ending>`` per case)."""
    from nnzoo.pipeline.segio import find_cases

    return find_cases(folder)


def link_cases(folder: Path, files: Iterable[Path]) -> Path:
    """A fresh ``folder`` of symbolic links to ``files`` (same names): a subset of a cohort for ``nnzoo`` commands."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for f in files:
        (folder / f.name).symlink_to(Path(f).resolve())
    return folder


def check_source_folder(src: Path, flag: str = "--source") -> None:
    """A user's cohort must hold ``images/ labels/ test_images/ test_labels/``; no case in both sets.

    Raises:
        SystemExit: a folder is missing, or a case is both a training and a test case.
    """
    for sub in ("images", "labels", "test_images", "test_labels"):
        if not (src / sub).is_dir():
            raise SystemExit(f"error: {flag} {src}: no {sub}/ folder")
    both = sorted(set(cases(src / "images")) & set(cases(src / "test_images")))
    if both:
        raise SystemExit(f"error: {flag} {src}: cases in both the training and the test set: {both[:5]}")


def generated_cohort(root: Path, *, dim: int, num_train: int, num_test: int, seed: int, smoke: bool,
                     labeled_acquisitions: Sequence[str] | None = None) -> tuple[Path, dict]:
    """The brain-phantom cohort of :mod:`nnzoo.pipeline.brain_phantoms` in ``root/cohort`` (made once, one case per
    CPU core at a time).

    Args:
        root: the benchmark's working folder.
        dim: 2 or 3.
        num_train, num_test: generated training and test cases (styles cycle in both).
        seed: the cohort's seed.
        smoke: tiny images (24x24, 3D: 12 slices).
        labeled_acquisitions: styles of the labeled pool (None: the generator's default, two T1 styles).

    Returns:
        ``(cohort folder, manifest)``.

    Raises:
        SystemExit: the cohort already there draws its labeled pool from other styles.
    """
    from nnzoo.pipeline import brain_phantoms as bp

    src = root / "cohort"
    if not (src / "manifest.json").is_file():
        t = time.time()
        kw: dict = ({"shape": (24, 24)} if dim == 2 else {"shape": (24, 24), "num_slices": 12}) if smoke else {}
        if labeled_acquisitions is not None:
            kw["labeled_acquisitions"] = tuple(labeled_acquisitions)
        bp.write_cohort(src, num_train=num_train, num_test=num_test, seed=seed, dim=dim, jobs=os.cpu_count() or 1, **kw)
        print(f"cohort: {num_train} training + {num_test} test cases ({dim}D) in {time.time() - t:.0f} s -> {src}",
              flush=True)
    manifest = json.loads((src / "manifest.json").read_text())
    if labeled_acquisitions is not None and manifest.get("labeled_acquisitions") != list(labeled_acquisitions):
        raise SystemExit(f"error: --labeled-acquisitions {' '.join(labeled_acquisitions)}: the cohort in {src} draws "
                         f"labels from {manifest.get('labeled_acquisitions')}; use another --out")
    return src, manifest


def make_dataset(root: Path, src: Path, *, did: int, name: str, labeled: Sequence[str], unlabeled: Sequence[str],
                 config: str, label_names: dict[int, str] | None = None, domains: dict[str, str] | None = None
                 ) -> None:
    """nnU-Net raw dataset ``did`` with ``labeled`` in imagesTr and ``unlabeled`` in imagesUnlabeled, planned and
    preprocessed for ``config`` (``nnzoo dataset create`` + ``nnzoo plan_and_preprocess``); nothing when it exists.

    Args:
        domains: ``{case: domain}`` of the dataset's cases, passed as ``--domains`` (None: no domains).

    Raises:
        CommandFailed: a command failed.
    """
    raw = Path(os.environ["nnUNet_raw"])
    if any(raw.glob(f"Dataset{did:03d}_*")):
        return
    images, labels = cases(src / "images"), cases(src / "labels")
    stage = root / "staging" / name
    shutil.rmtree(stage, ignore_errors=True)
    for sub in ("images", "labels", "unlabeled"):
        (stage / sub).mkdir(parents=True)
    for c in labeled:
        shutil.copy2(images[c], stage / "images" / images[c].name)
        shutil.copy2(labels[c], stage / "labels" / labels[c].name)
    for c in unlabeled:
        shutil.copy2(images[c], stage / "unlabeled" / images[c].name)
    cmd = ["dataset", "create", "--images", str(stage / "images"), "--labels", str(stage / "labels"), "--name", name,
           "--id", str(did), "--channel", "MR"]
    for value, label in (label_names or {}).items():
        cmd += ["--label", f"{value}={label}"]
    if unlabeled:
        cmd += ["--unlabeled", str(stage / "unlabeled")]
    if domains is not None:
        (stage / "domains.json").write_text(json.dumps({c: domains[c] for c in [*labeled, *unlabeled]}, indent=1))
        cmd += ["--domains", str(stage / "domains.json")]
    logs = root / "logs"
    nnzoo(*cmd, log=logs / f"create_{name}.log")
    nnzoo("plan_and_preprocess", "-d", str(did), "-c", config, "-np", "2", log=logs / f"plan_{name}.log")
    shutil.rmtree(stage)


# ---------------------------------------------------------------------------------------------- runs
def work_folder(out: str | Path) -> Path:
    """The benchmark's ``--out`` folder, resolved, with its ``logs/``; nnU-Net's raw and preprocessed folders
    set inside it for this process and the commands it starts."""
    root = Path(out).resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    for k in ("nnUNet_raw", "nnUNet_preprocessed"):
        os.environ[k] = str(root / k)
    return root


def run_env(results: Path, jobs: int) -> dict[str, str]:
    """Environment of one run: its ``nnUNet_results`` and, with ``jobs > 1``, ``cores / jobs`` torch threads and
    augmentation in the main process."""
    env = {"nnUNet_results": str(results)}
    if jobs > 1:
        env |= {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs)), "nnUNet_n_proc_DA": "0"}
    return env


def train_predict_evaluate(root: Path, src: Path, *, did: int, trainer: str, seed: int, config: str, epochs: int,
                           iters: int, device: str, jobs: int, results: Path, tag: str, hparams: dict[str, str],
                           extra: Sequence[str] = ()) -> dict:
    """Train ``trainer`` on dataset ``did`` (fold ``all``, ``epochs x iters``, ``seed``), predict ``test_images/``
    and score the predictions against ``test_labels/``, all through the CLI.

    Args:
        results: the run's ``nnUNet_results``.
        tag: names its logs, predictions and evaluation folders.
        hparams: ``--hparam NAME=VALUE`` of the run.
        extra: more arguments of ``train`` and ``predict`` (e.g. ``--augment gin``).

    Returns:
        ``trainer, dataset, seed, dice`` (per class), ``mean_fg``, ``train_s``, ``predict_s`` and ``per_case``
        (``{test file name: {class: Dice}}``).

    Raises:
        CommandFailed: a command failed.
    """
    env = run_env(results, jobs)
    hp = [x for k, v in hparams.items() for x in ("--hparam", f"{k}={v}")]
    t_train = nnzoo("train", str(did), config, "all", "-tr", trainer, "--epochs", str(epochs), "--iters",
                    str(iters), "--seed", str(seed), "--no-val", "--overwrite", "-device", device, *hp, *extra,
                    log=root / "logs" / f"train_{tag}.log", env=env)
    r = predict_evaluate(root, src, did=did, trainer=trainer, config=config, device=device, jobs=jobs,
                         results=results, tag=tag, extra=extra)
    return {"trainer": trainer, "dataset": did, "seed": seed, "train_s": round(t_train, 1), **r,
            "method_records": method_records(results, trainer=trainer, config=config, extra=extra)}


def predict_evaluate(root: Path, src: Path, *, did: int, trainer: str, config: str, device: str, jobs: int,
                     results: Path, tag: str, extra: Sequence[str] = (), predict_extra: Sequence[str] = (),
                     streams: dict[str, list[str]] | None = None, split: str = "test",
                     groups: Path | None = None, model: Sequence[str] | None = None) -> dict:
    """Predict ``{split}_images/`` with a trained fold-``all`` model and score it against ``{split}_labels/`` (CLI).

    Args:
        results: the model's ``nnUNet_results``.
        tag: names the logs, predictions and evaluation folders.
        extra: arguments that name the model (e.g. ``--augment gin``).
        predict_extra: arguments of ``predict`` only (e.g. ``--adapt tent``).
        streams: ``{name: [case, ...]}``: one ``predict`` per stream, on a folder of its cases only (each
            stream starts from the model as trained: with ``--adapt-continual``, the papers' protocol of one
            continual run per target domain); None: one ``predict`` on every case.
        split: which cases of ``src``: ``test`` (the held-out cases) or another name whose ``{split}_images/``
            and ``{split}_labels/`` exist there (e.g. ``validation``); logs and folders of another split are
            prefixed with it.
        groups: a ``domains.json`` passed to ``evaluate --groups`` (its per-group means come back as ``groups``).
        model: ``predict`` arguments naming the model(s) instead of ``-d -c -tr -f all`` and ``extra`` (e.g.
            ``--ensemble FOLDER FOLDER ...``).

    Returns:
        ``dice`` (per class), ``mean_fg``, ``predict_s`` (all streams), ``per_case`` (``{file name: {class:
        Dice}}``), with ``groups`` ``{group: mean foreground Dice}``, and, with ``--adapt``, ``adapt_s`` and
        ``adapt_change`` (``{case: seconds spent adapting}``, ``{case: relative change}`` from
        ``adaptation.json``) and ``adapt_mean_change`` (the records' ``mean_relative_change``, mean over streams).

    Raises:
        CommandFailed: a command failed.
    """
    env = run_env(results, jobs)
    logs = root / "logs"
    pre = "" if split == "test" else f"{split}_"
    pred, ev = root / f"{pre}predictions" / tag, root / f"{pre}evaluations" / tag
    images, labels = src / f"{split}_images", src / f"{split}_labels"
    test = cases(images)
    outputs = []
    if streams is None:
        calls = [(images, pred, logs / f"{pre}predict_{tag}.log")]
    else:
        calls = [(link_cases(root / f"{pre}streams" / tag / name, (test[c] for c in members)),
                  root / f"{pre}predictions" / f"{tag}__streams" / name, logs / f"{pre}predict_{tag}_{name}.log")
                 for name, members in streams.items()]
    which = list(model) if model is not None else ["-d", str(did), "-c", config, "-tr", trainer, "-f", "all", *extra]
    t_pred = 0.0
    for inp, out, log in calls:
        t_pred += nnzoo("predict", "-i", str(inp), "-o", str(out), *which, "-device", device, "--overwrite",
                        *predict_extra, log=log, env=env)
        outputs.append(out)
    if streams is not None:  # the streams' predictions in one folder, as evaluate reads them
        shutil.rmtree(pred, ignore_errors=True)
        pred.mkdir(parents=True)
        for out in outputs:
            for f in out.iterdir():
                if f.is_file() and f.suffix != ".json":
                    shutil.copy(f, pred / f.name)
    nnzoo("evaluate", "-ref", str(labels), "-pred", str(pred), "-d", str(did), "-o", str(ev),
          *(() if groups is None else ("--groups", str(groups))), log=logs / f"{pre}evaluate_{tag}.log", env=env)
    summary = json.loads((ev / "summary.json").read_text())
    dice = {k: float(v["Dice"]) for k, v in summary["mean"].items() if k != "0"}
    out = {"dice": dice, "mean_fg": sum(dice.values()) / len(dice), "predict_s": round(t_pred, 1),
           "per_case": {Path(c["reference_file"]).name: {k: m["Dice"] for k, m in c["metrics"].items() if k != "0"}
                        for c in summary["metric_per_case"]}}
    if groups is not None:
        out["groups"] = {g: float(v["foreground_mean"]["Dice"]) for g, v in summary["groups"].items()}
    records = [r for o in outputs if (o / "adaptation.json").is_file()
               for r in member_records(json.loads((o / "adaptation.json").read_text()))]
    if records:
        out["adapt_s"] = {c: v for r in records for c, v in r.get("seconds_per_case", {}).items()}
        out["adapt_change"] = {c: v for r in records for c, v in r.get("relative_change_per_case", {}).items()}
        means = [r["mean_relative_change"] for r in records if r.get("mean_relative_change") is not None]
        out["adapt_mean_change"] = sum(means) / len(means) if means else None
    return out


def member_records(record: dict) -> list[dict]:
    """An ``adaptation.json`` as one record per model: an ensemble's (``members``, each adapted on its own) merged
    into one whose seconds per case add up and whose relative change per case is the members' mean."""
    members = record.get("members")
    if not members:
        return [record]
    cases = sorted({c for m in members for c in m.get("seconds_per_case", {})})
    changes = [m for m in members if m.get("relative_change_per_case")]
    merged = {c: sum(m["relative_change_per_case"][c] for m in changes) / len(changes)
              for c in cases if changes and all(c in m["relative_change_per_case"] for m in changes)}
    means = [m["mean_relative_change"] for m in members if m.get("mean_relative_change") is not None]
    return [{"seconds_per_case": {c: sum(m.get("seconds_per_case", {}).get(c, 0.0) for m in members) for c in cases},
             "relative_change_per_case": merged, "mean_relative_change": sum(means) / len(means) if means else None}]


#: what a trainer writes beside its checkpoints about its own auxiliary steps (e.g. the shape critic's held-out AUC)
METHOD_RECORDS = ("shape_critic.json", "bcp_lcc.json")


def model_folders(results: Path, *, trainer: str, config: str, extra: Sequence[str] = ()) -> list[Path]:
    """The model folders of a run's trainer and configuration in its ``nnUNet_results`` (sorted).

    Args:
        results: the run's ``nnUNet_results``.
        trainer: the trainer's name.
        config: the configuration.
        extra: the run's extra ``train`` arguments (an ``--augment NAME`` ends the model folder's name with ``_NAME``).
    """
    suffix = f"_{extra[list(extra).index('--augment') + 1]}" if "--augment" in extra else ""
    return sorted(results.glob(f"*/{trainer}__*__{config}{suffix}"))


def method_records(results: Path, *, trainer: str, config: str, extra: Sequence[str] = ()) -> dict:
    """The :data:`METHOD_RECORDS` of a finished fold-``all`` run, ``{file stem: content}`` (empty for most trainers);
    arguments as :func:`model_folders`."""
    out: dict = {}
    for folder in (m / "fold_all" for m in model_folders(results, trainer=trainer, config=config, extra=extra)):
        for name in METHOD_RECORDS:
            if (folder / name).is_file():
                out[Path(name).stem] = json.loads((folder / name).read_text())
    return out


def run_parallel(items: Iterable, work: Callable[[object], None], jobs: int) -> None:
    """``work(item)`` for every item, ``jobs`` at a time (threads; each run is its own processes)."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(work, items))


# --------------------------------------------------------------------------------------------- state
_lock = threading.Lock()


def load_state(path: Path, settings: dict, grows: Sequence[str] = ("seeds",)) -> dict:
    """The benchmark's JSON (``{"runs": {}}`` when new) with ``settings`` recorded.

    Runs are keyed by their seed (and row), so a later call may add seeds or rows: the recorded values of
    the ``grows`` settings become the union of the recorded and the new ones (lists: sorted union; dicts:
    merged, a key recorded with another value is refused).

    Raises:
        SystemExit: the file holds runs of other settings (``grows`` aside), or a ``grows`` dict entry changed.
    """
    state = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    old = state.get("settings")
    if old is not None and {k: v for k, v in old.items() if k not in grows} != \
            {k: v for k, v in settings.items() if k not in grows}:
        raise SystemExit(f"error: {path} holds runs of other settings ({state['settings']}); use another --out")
    merged = dict(settings)
    for k in grows:
        before, now = (old or {}).get(k), settings.get(k)
        if isinstance(now, dict) or isinstance(before, dict):
            changed = [n for n, v in (now or {}).items() if n in (before or {}) and before[n] != v]
            if changed:
                raise SystemExit(f"error: {path} records {k} {changed} with other values; use other names or --out")
            merged[k] = {**(before or {}), **(now or {})}
        elif k in settings or before is not None:
            merged[k] = sorted({*(before or []), *(now or [])})
    state["settings"] = merged
    return state


def save_state(path: Path, state: dict, key: str | None = None, run: dict | None = None) -> None:
    """Write ``state`` (after adding ``run`` under ``key``), safely from several threads and atomically (a
    temporary file renamed over the old one: a benchmark stopped while writing keeps its earlier runs)."""
    with _lock:
        if key is not None:
            state["runs"][key] = run
        from nnzoo.trainers.files import write_json_atomic

        write_json_atomic(path, state)


def machine() -> str:
    """CPU cores and GPU of this machine, in words."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def finish_state(state: dict, t0: float, script: str, argv: Sequence[str] | None) -> None:
    """Record the wall time (added to earlier sessions'), machine, date and command of a finished benchmark."""
    state["wall_s"] = round(state.get("wall_s", 0) + time.time() - t0, 1)
    state["machine"] = machine()
    state["date"] = time.strftime("%Y-%m-%d")
    state["command"] = f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])


# ----------------------------------------------------------------------------------------------- CLI
def add_run_args(ap: argparse.ArgumentParser, *, out: str, seeds_help: str, trainers_help: str,
                 hparam_help: str, dataset_id: int, dataset_id_help: str) -> None:
    """The flags every accuracy benchmark has (cohort, seeds, iterations, device, jobs, hyperparameters)."""
    ap.add_argument("--out", default=out, help="working and output folder (resumes what is there)")
    ap.add_argument("--source", default=None, help="bring your own cohort (see the module docstring); default: "
                    "generate brain phantoms")
    ap.add_argument("--config", default="2d", choices=["2d", "3d_fullres"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help=seeds_help)
    ap.add_argument("--trainers", nargs="+", default=None, help=trainers_help)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None, help="iterations per epoch")
    ap.add_argument("--num-train", type=int, default=None, help="generated training cases (labeled + unlabeled)")
    ap.add_argument("--num-test", type=int, default=None, help="generated held-out test cases")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the generated cohort")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--quick", action="store_true",
                    help="apply each method's registry quick_hparams (shortened once-per-run costs; reported)")
    ap.add_argument("--hparam", action="append", default=None, metavar="TRAINER:NAME=VALUE", help=hparam_help)
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end run for the tests")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs side by side, each with cores/jobs torch threads (OMP_NUM_THREADS) and augmentation in "
                         "its main process; per-run times are then those of shared cores")
    ap.add_argument("--dataset-id", type=int, default=dataset_id, help=dataset_id_help)


def apply_defaults(a: argparse.Namespace, defaults: dict) -> None:
    """Fill every flag left at None from ``defaults``."""
    for k, v in defaults.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)


def parse_hparams(ap: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``TRAINER:NAME=VALUE`` items as ``{trainer: {name: value}}`` (a malformed item is a flag error)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        trainer, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            ap.error(f"--hparam {item!r}: expected TRAINER:NAME=VALUE")
        k, v = kv.split("=", 1)
        out.setdefault(trainer, {})[k] = v
    return out


def trainer_hparams(trainer: str, *, quick: bool, hparams: dict[str, dict[str, str]]) -> dict:
    """A run's hyperparameters: the registry's ``quick_hparams`` (with ``quick``), then ``--hparam``."""
    from nnzoo.trainers import get_trainer_info

    return {**(get_trainer_info(trainer).quick_hparams if quick else {}), **hparams.get(trainer, {})}
