"""Low-label benchmark: does a semi-supervised trainer get more out of few labels than nnU-Net?

Protocol (one command, resumable; every run goes through the ``nnzoo`` CLI as a user would run it):

1. **Data**: a cohort of labeled training cases and held-out test cases. By default the brain MR
   phantoms of :mod:`nnzoo.pipeline.brain_phantoms` (made offline from nilearn's MNI152 maps,
   several acquisition styles, labeled pool restricted to fewer styles than the unlabeled and test
   cases); or any folder given with ``--source`` holding ``images/ labels/ test_images/
   test_labels/`` (one ``CASE.<ending>`` per case, one channel; an optional ``manifest.json`` with a
   ``labeled_pool`` list restricts which cases may be labeled).
2. **Seeds**: seed ``s`` chooses the ``--labeled N`` labeled cases (balanced over the pool's
   acquisitions when a manifest names them; seeds ``0, 1, ...`` get disjoint sets while the pool
   allows: the default 50 generated cases put 20 in the T1 pool, 5 seeds x 4) and initialises
   every run of that seed; every trainer
   of seed ``s`` sees the same labeled cases. For each seed an nnU-Net dataset holds only those
   ``N`` cases in ``imagesTr`` and every other training image in ``imagesUnlabeled`` (their labels
   are not in the dataset at all, so nothing can peek at them); one more dataset holds every
   training case labeled (the "all labels" reference).
3. **Runs**: ``nnUNetTrainer`` on all labels and on ``N`` labels, and every registered
   semi-supervised trainer on ``N`` labels, all for the same ``--epochs x --iters`` iterations on
   fold ``all`` (nnU-Net's planned batch; semi-supervised trainers add unlabeled patches to it).
   Hyperparameters given with ``--hparam TRAINER:NAME=VALUE`` (default none: the shape critic
   pre-trains to its official budget or until its held-out AUC reaches ``CRITIC_MIN_AUC``, once per
   labeled set, cached; its AUC is in the JSON and the table) and, with ``--quick``, a method's
   registry ``quick_hparams`` are applied and printed with the table.
4. **Scoring**: ``nnzoo predict`` on ``test_images/`` (never seen in training or validation) and
   ``nnzoo evaluate`` against ``test_labels/``; the score of a run is the mean foreground Dice.
5. **Report**: per trainer the mean and min-max over seeds, the paired difference to
   ``nnUNetTrainer`` on the same labels per seed, and the fraction of the gap (all labels minus
   ``N`` labels, baseline) it closes; a Markdown table, a PNG (Dice per trainer, one dot per seed)
   and a JSON of every run, in ``--out``.

``--smoke`` runs the whole path in a few minutes (tiny cohort, 1 seed, a few iterations) for the
test suite. ``--config 3d_fullres`` runs the same protocol on 3D volumes (for a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import cohort
from benchmarks.cohort import machine, nnzoo  # noqa: F401  (part of this script's API)

BASELINE = "nnUNetTrainer"
FULL = "all labels"


def _semi_supervised_trainers() -> list[str]:
    from nnzoo.trainers import list_trainers

    return [i.name for i in list_trainers() if i.semi_supervised]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    cohort.add_run_args(
        ap, out="low_label_work", seeds_help="default 0 1 2 3 4 (3d_fullres: 0 1 2; smoke: 0)",
        trainers_help="trainers at the low label count (default: nnUNetTrainer + every semi-supervised one)",
        hparam_help="a trainer hyperparameter for this benchmark (repeatable; reported in the table); default: "
                    "none (the shape critic stops at CRITIC_MIN_AUC or its official budget)",
        dataset_id=950, dataset_id_help="first of the dataset ids used (id .. id+#seeds)")
    ap.add_argument("--labeled", type=int, default=None, help="labeled cases per seed (default 4; smoke 2)")
    ap.add_argument("--labeled-acquisitions", nargs="+", default=None, metavar="STYLE",
                    help="generated cohort: the acquisition styles labeled cases are drawn from (default: the "
                         "generator's two T1 styles; 'all': every style, the control without a domain shift "
                         "between labeled and test cases)")
    ap.add_argument("--variant", action="append", default=None, metavar="NAME=TRAINER:HPARAM=VALUE[,HPARAM=VALUE]",
                    help="an extra row NAME: TRAINER with these hyperparameters on the same labeled cases and seeds "
                         "(e.g. the official setting of an nnzoo choice); repeatable; a later call may add rows")
    a = ap.parse_args(argv)
    a.variants = parse_variants(ap, a.variant or [])
    cohort.apply_defaults(a, SMOKE if a.smoke else DEFAULTS[a.config])
    if a.trainers is None:
        a.trainers = [BASELINE, *_semi_supervised_trainers()]
    if a.labeled_acquisitions is not None:
        from nnzoo.pipeline.brain_phantoms import ACQUISITIONS

        if a.source:
            ap.error("--labeled-acquisitions: only for the generated cohort (with --source, a manifest.json's "
                     "labeled_pool says which cases may be labeled)")
        if a.labeled_acquisitions == ["all"]:
            a.labeled_acquisitions = list(ACQUISITIONS)
        unknown = [x for x in a.labeled_acquisitions if x not in ACQUISITIONS]
        if unknown:
            ap.error(f"--labeled-acquisitions {' '.join(unknown)}: unknown style (known: {', '.join(ACQUISITIONS)}, all)")
    if a.smoke:
        a.quick = True
    if a.hparam is None:
        a.hparam = [] if a.smoke else list(DEFAULT_HPARAMS)
    a.hparams = cohort.parse_hparams(ap, a.hparam)
    return a


def parse_variants(ap: argparse.ArgumentParser, items: list[str]) -> dict[str, dict]:
    """``NAME=TRAINER:HPARAM=VALUE[,HPARAM=VALUE]`` items as ``{name: {"trainer", "hparams"}}`` (flag errors for a
    malformed item, an unknown trainer, or a name that is a trainer's)."""
    import re

    from nnzoo.trainers import list_trainers
    from nnzoo.trainers.base import parse_hyperparameters

    known = {i.name: i for i in list_trainers()}
    out: dict[str, dict] = {}
    for item in items:
        name, _, spec = item.partition("=")
        trainer, _, kvs = spec.partition(":")
        # a comma starts the next pair only before an UPPER_CASE name (tuple values are comma-separated too)
        pairs = [kv.split("=", 1) for kv in re.split(r",(?=[A-Z][A-Z0-9_]*=)", kvs) if kv]
        if not name or not trainer or not pairs or any(len(kv) != 2 or not kv[0] for kv in pairs) or "|" in name:
            ap.error(f"--variant {item!r}: expected NAME=TRAINER:HPARAM=VALUE[,HPARAM=VALUE]")
        if trainer not in known:
            ap.error(f"--variant {item!r}: {trainer} is not a registered trainer")
        if name in known or name in out:
            ap.error(f"--variant {item!r}: the name {name} is taken (a trainer's or another variant's)")
        try:
            parse_hyperparameters(known[trainer].cls, dict(pairs))
        except (KeyError, ValueError) as e:
            ap.error(f"--variant {item!r}: {str(e).strip(chr(39))}")
        out[name] = {"trainer": trainer, "hparams": dict(pairs)}
    return out


#: defaults per configuration (2D: the measured CPU budget; see the README's table)
DEFAULTS = {
    "2d": {"labeled": 4, "seeds": [0, 1, 2, 3, 4], "epochs": 20, "iters": 50, "num_train": 50, "num_test": 30},
    "3d_fullres": {"labeled": 4, "seeds": [0, 1, 2], "epochs": 20, "iters": 50, "num_train": 40, "num_test": 20},
}
DEFAULT_HPARAMS: list[str] = []
SMOKE = {"labeled": 2, "seeds": [0], "epochs": 1, "iters": 2, "num_train": 6, "num_test": 2}


# --------------------------------------------------------------------------------------------- data
def make_source(a: argparse.Namespace, root: Path) -> tuple[Path, dict]:
    """The cohort folder and its manifest (generated unless ``--source``)."""
    if a.source:
        src = Path(a.source)
        cohort.check_source_folder(src)
        manifest = json.loads((src / "manifest.json").read_text()) if (src / "manifest.json").is_file() else {}
        return src, manifest
    return cohort.generated_cohort(root, dim=2 if a.config == "2d" else 3, num_train=a.num_train,
                                   num_test=a.num_test, seed=a.data_seed, smoke=a.smoke,
                                   labeled_acquisitions=a.labeled_acquisitions)


def choose_labeled(manifest: dict, train_cases: list[str], n: int, seed: int) -> list[str]:
    """``n`` labeled cases for ``seed``: for a generated cohort its own balanced choice
    (:func:`nnzoo.pipeline.brain_phantoms.choose_labeled`), else uniformly from the manifest's
    ``labeled_pool`` (default: every training case); either way seeds ``0, 1, ...`` get disjoint sets
    while the pool allows (:func:`nnzoo.pipeline.brain_phantoms.disjoint_block`)."""
    import numpy as np

    if "labeled_acquisitions" in manifest:
        from nnzoo.pipeline.brain_phantoms import choose_labeled as balanced

        try:
            return balanced(manifest, n, seed)[0]
        except ValueError as e:
            raise SystemExit(f"error: --labeled {n}: {e}") from None
    from nnzoo.pipeline.brain_phantoms import disjoint_block

    pool = [c for c in manifest.get("labeled_pool", train_cases) if c in train_cases]
    if not 1 <= n <= len(pool):
        raise SystemExit(f"error: --labeled {n}: the labeled pool has {len(pool)} cases")
    order, block = disjoint_block(len(pool), n, seed)
    return sorted(np.random.default_rng([order, 7]).permutation(pool)[block * n:(block + 1) * n].tolist())


def make_dataset(a: argparse.Namespace, src: Path, root: Path, did: int, name: str, labeled: list[str],
                 unlabeled: list[str]) -> None:
    """nnU-Net raw dataset ``did`` with ``labeled`` in imagesTr and ``unlabeled`` in imagesUnlabeled, planned."""
    cohort.make_dataset(root, src, did=did, name=name, labeled=labeled, unlabeled=unlabeled, config=a.config,
                        label_names=a.label_names)


# --------------------------------------------------------------------------------------------- runs
def run_one(a: argparse.Namespace, root: Path, src: Path, did: int, trainer: str, seed: int,
            variant: dict | None = None) -> dict:
    """Train ``trainer`` on dataset ``did`` with ``seed``, predict and score the test cases.

    The model folder is in ``nnUNet_results/seed<seed>`` (the all-labels baseline keeps one per seed); a
    ``variant`` (``{"trainer", "hparams"}``, the row named ``trainer``) trains its trainer with its
    hyperparameters into ``nnUNet_results/seed<seed>_<name>``.
    """
    base = variant["trainer"] if variant else trainer
    quick = {**cohort.trainer_hparams(base, quick=a.quick, hparams=a.hparams), **(variant or {}).get("hparams", {})}
    folder = f"seed{seed}" + (f"_{trainer}" if variant else "")
    r = cohort.train_predict_evaluate(root, src, did=did, trainer=base, seed=seed, config=a.config,
                                      epochs=a.epochs, iters=a.iters, device=a.device, jobs=a.jobs,
                                      results=root / "nnUNet_results" / folder, tag=f"{trainer}_d{did}_s{seed}",
                                      hparams=quick)
    r["quick_hparams"] = quick
    if variant:
        r.update(trainer=trainer, base_trainer=base)
    return r


def pseudo_label_quality(a: argparse.Namespace, state: dict, datasets: dict) -> dict[str, dict[str, float]]:
    """Score the pseudo-labels written by a run (e.g. ``nnUNetTrainerSelfTraining``'s, in
    ``nnUNet_preprocessed/<dataset>/pseudo_labels/<model folder>-<key>/fold_all``) against the labels of
    those unlabeled training cases, taken from the all-labels dataset (preprocessed the same way).
    Those labels exist only in the all-labels dataset: no run on ``N`` labels ever reads them.

    Returns ``{run key: {case: mean foreground Dice}}`` for every run that left pseudo-labels.
    """
    import numpy as np

    from nnzoo.pipeline.experiment import model_folder
    from nnzoo.pipeline.metrics import dice
    from nnzoo.trainers.nnunet_compat import load_preprocessed_segmentation
    from nnzoo.trainers.self_training import pseudo_label_dir

    pre = Path(os.environ["nnUNet_preprocessed"])
    full_dir = next(pre.glob(f"Dataset{datasets[FULL][0]:03d}_*"))
    plans = json.loads((full_dir / "nnUNetPlans.json").read_text())
    ref_dir = full_dir / plans["configurations"][a.config]["data_identifier"]
    classes = [int(k) for k in state["label_names"]]
    out: dict[str, dict[str, float]] = {}
    for key, r in state["runs"].items():
        if r["labels"] == FULL:
            continue
        ds_dir = next(pre.glob(f"Dataset{r['dataset']:03d}_*"))
        trainer = r.get("base_trainer", r["trainer"])
        folder = pseudo_label_dir(ds_dir, model_folder(ds_dir.name, trainer, "nnUNetPlans", a.config), "all")
        scores = {}
        for f in sorted(folder.glob("*.npy")) if folder.is_dir() else []:
            pseudo, ref = np.load(f)[0], np.asarray(load_preprocessed_segmentation(ref_dir, f.stem)[:])[0]
            if pseudo.shape != ref.shape:
                continue  # cropped differently: not comparable voxel by voxel
            per_class = [d for c in classes if not np.isnan(d := dice(ref == c, pseudo == c))]  # NaN: absent in both,
            if per_class:  # left out of the mean (as nnU-Net's evaluation)
                scores[f.stem] = float(np.mean(per_class))
        if scores:
            out[key] = scores
    return out


def plan_variant_runs(a: argparse.Namespace, variants: dict[str, dict]) -> list[tuple[str, str, int]]:
    """``(variant name, labels, seed)`` of every ``--variant`` run (after the other runs)."""
    return [(name, f"{a.labeled}", s) for s in a.seeds for name in variants]


def plan_runs(a: argparse.Namespace) -> list[tuple[str, str, int]]:
    """``(trainer, labels, seed)`` of every run, in the order they start: per seed the other trainers
    on ``N`` labels (semi-supervised ones cost 1.2-3x the baseline per run), then the baseline on
    ``N``, and the baseline on all labels last, so that with ``--jobs`` the short runs come at the
    end and no core waits for a long last run (measured with ``--jobs 2``: one core idle for the
    last 3 min in either order, as 21 runs do not split evenly over two cores; see the README)."""
    runs = [(t, f"{a.labeled}", s) for s in a.seeds for t in a.trainers if t != BASELINE]
    runs += [(BASELINE, f"{a.labeled}", s) for s in a.seeds if BASELINE in a.trainers]
    return runs + [(BASELINE, FULL, s) for s in a.seeds]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    root = cohort.work_folder(a.out)
    os.environ.setdefault("nnUNet_results", str(root / "nnUNet_results"))
    t0 = time.time()
    src, manifest = make_source(a, root)
    a.label_names = {int(k): v for k, v in manifest.get("labels", {}).items() if int(k) != 0}
    state_names = {str(k): v for k, v in a.label_names.items()}
    train_cases = sorted(cohort.cases(src / "images"))
    test_cases = sorted(cohort.cases(src / "test_images"))
    if set(train_cases) & set(test_cases):
        raise SystemExit(f"error: cases in both the training and the test set: {sorted(set(train_cases) & set(test_cases))}")
    out_json = root / "low_label.json"
    settings = {k: getattr(a, k) for k in ("config", "labeled", "seeds", "trainers", "epochs", "iters", "num_train",
                                           "num_test", "data_seed", "device", "quick", "source", "hparams")}
    if a.labeled_acquisitions is not None:  # (absent by default: earlier runs' settings stay comparable)
        settings["labeled_acquisitions"] = a.labeled_acquisitions
    if a.variants:
        settings["variants"] = a.variants
    state = cohort.load_state(out_json, settings, grows=("seeds", "variants"))
    variants = state["settings"].get("variants", {})  # this call's and earlier calls' rows
    for k, scores in state.pop("pseudo_labels", {}).items():  # records before 2026-12-06 kept them beside the runs
        if k in state["runs"] and not state["runs"][k].get("pseudo_labels"):
            state["runs"][k]["pseudo_labels"] = scores
    state["jobs"] = a.jobs
    state["label_names"] = state_names
    state["test_groups"] = {c: v["acquisition"] for c, v in manifest.get("test", {}).items() if "acquisition" in v}
    state["labeled_groups"] = manifest.get("labeled_acquisitions")
    state["train_groups"] = {c: v["acquisition"] for c, v in manifest.get("train", {}).items() if "acquisition" in v}
    datasets = {FULL: (a.dataset_id, "LowLabelAll")}
    make_dataset(a, src, root, a.dataset_id, "LowLabelAll", train_cases, [])
    state["labeled_cases"] = {}
    for i, s in enumerate(a.seeds):
        labeled = choose_labeled(manifest, train_cases, a.labeled, s)
        state["labeled_cases"][str(s)] = labeled
        did = a.dataset_id + 1 + i
        datasets[(a.labeled, s)] = (did, f"LowLabel{a.labeled}s{s}")
        make_dataset(a, src, root, did, f"LowLabel{a.labeled}s{s}", labeled, [c for c in train_cases if c not in labeled])
    runs = plan_runs(a) + plan_variant_runs(a, variants)
    todo = [(n, r) for n, r in enumerate(runs, 1) if "|".join(map(str, r)) not in state["runs"]]

    def work(item: tuple[int, tuple[str, str, int]]) -> None:
        n, (trainer, labels, seed) = item
        did = datasets[FULL][0] if labels == FULL else datasets[(a.labeled, seed)][0]
        print(f"[{n}/{len(runs)}] {trainer}, {labels} labeled, seed {seed} ...", flush=True)
        r = run_one(a, root, src, did, trainer, seed, variants.get(trainer))
        r["labels"] = labels
        key = f"{trainer}|{labels}|{seed}"
        # pseudo-labels are scored at once: a variant of the same trainer and dataset writes the same folder later
        r["pseudo_labels"] = pseudo_label_quality(a, {"runs": {key: r}, "label_names": state_names}, datasets).get(key)
        cohort.save_state(out_json, state, key, r)
        print(f"[{n}/{len(runs)}] {trainer}, {labels} labeled, seed {seed}: mean foreground Dice {r['mean_fg']:.4f} "
              f"(train {r['train_s']:.0f} s, predict {r['predict_s']:.0f} s)", flush=True)

    def work_group(group: list[tuple[int, tuple[str, str, int]]]) -> None:
        for item in group:
            work(item)

    cohort.run_parallel([t for t in todo if t[1][0] not in variants], work, a.jobs)
    # variants after the other rows; two runs of one trainer on one dataset (they share its pseudo-label folder)
    # never at the same time
    groups: dict[tuple[str, int], list] = {}
    for t in (t for t in todo if t[1][0] in variants):
        groups.setdefault((variants[t[1][0]]["trainer"], t[1][2]), []).append(t)
    cohort.run_parallel(list(groups.values()), work_group, a.jobs)
    cohort.finish_state(state, t0, "low_label.py", argv)
    cohort.save_state(out_json, state)
    from benchmarks.low_label_report import write_report

    md = write_report(state, root)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
