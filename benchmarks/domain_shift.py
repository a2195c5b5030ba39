"""Domain-shift benchmark: which trainer holds up on scanners and contrasts it has no labels from?

Protocol (one command, resumable; every run goes through the ``nnzoo`` CLI as a user would run it):

1. **Data**: training cases with labels from the *source* domains only, held-out test cases from
   every domain. By default the brain MR phantoms of :mod:`nnzoo.pipeline.brain_phantoms` (five
   acquisition styles; source: the two T1 styles of ``DEFAULT_LABELED_ACQUISITIONS``; targets:
   ``t1_lowfield``, ``t2``, ``flair``). With ``--source DIR``, your own cohort::

       DIR/images/CASE.<ending>        training images (one channel)
       DIR/labels/CASE.<ending>        their labels (every training case: the oracle row needs them)
       DIR/test_images/CASE.<ending>   held-out test images, every domain
       DIR/test_labels/CASE.<ending>   their labels
       DIR/domains.csv                 case,domain for every training and test case (or domains.json
                                       {case: domain}; the format of ``nnzoo dataset create --domains``)

   and ``--source-domains NAME [NAME ...]`` names the domains whose training labels are used
   (every other domain is a target). The labels of target-domain training cases are used by the
   oracle row only.
2. **Datasets** (``nnzoo dataset create --domains``, each case's domain in ``domains.json``):
   *source*: every source-domain training case labeled (``imagesTr``), every target-domain training
   image unlabeled (``imagesUnlabeled``, their labels are not in the dataset: only semi-supervised
   trainers read these images); *all*: every training case labeled (the oracle).
3. **Rows**: ``nnUNetTrainer`` on the source labels (*source only*) and on all labels (*oracle*); every
   registered trainer with ``domain_generalisation=True`` on the source labels (read from the registry, so new
   methods appear as they are registered); ``nnUNetTrainer``, ``nnUNetTrainerBCP`` and ``nnUNetTrainerC2SDG``
   with ``--augment gin`` (:data:`GIN_TRAINERS`; BCP takes the unlabeled images of every target domain); and
   each test-time adaptation method of ``nnzoo predict --adapt`` (TENT, VPTTA, GraTa) applied to the
   source-only model of the same seed (no training; its prediction time beside the source-only row's measures
   the cost) and to the :data:`DG_TTA_MODEL` model of the same seed (DG + TTA), each once episodic
   (``predict``'s default: every case from the trained model) and once continual per domain
   (``--adapt-continual`` on one stream per test domain, in case order, each stream from the trained model:
   the papers' continual protocol); and :data:`AGREEMENT_ROW`, the source-only and the :data:`DG_TTA_MODEL`
   models of the same seed ensembled by ``nnzoo predict --ensemble-weighting agreement`` (each case weighted by
   the two models' agreement, :mod:`nnzoo.pipeline.ensembling`; no training), also with each ``--adapt`` method
   (episodic; each member adapted on its own before the weighting: TTA on the best combination of the
   domain-generalisation issue). Every run: fold ``all``, the
   same ``--epochs x --iters`` iterations, seed ``s`` for each of ``--seeds`` (initialisation and sampling; the
   data do not depend on the seed). A row
   whose trainer is not registered is skipped with a note; a run that fails is reported as failed with its
   one-line reason and the table is still written (a later call retries it).
4. **Scoring**: ``nnzoo predict`` on ``test_images/`` and ``nnzoo evaluate`` against
   ``test_labels/``; a case's score is its mean foreground Dice, a domain's score the mean over its
   test cases.
5. **Report** (``domain_shift.md``, ``.png``, ``.json`` in ``--out``): per row the Dice per domain
   (mean and standard deviation over seeds); the share of each target domain's gap (oracle minus
   source only) it closes and its change on the source domains; the paired differences to source
   only (same seed, same test cases) per seed, with 95 % intervals from a bootstrap over seeds and
   test cases (:func:`benchmarks.stats.bootstrap_interval`).

``--smoke`` runs every row on a tiny cohort (24x24 images, 1 seed, 2 iterations) for the tests.
The full default table (2D, 27 rows x 3 seeds: 11 trained, 16 prediction-only; 20 x 50 iterations, 40 training
and 50 test cases)::

    python benchmarks/domain_shift.py --jobs 2 --out domain_shift_work

takes about 113 min on 2 CPU cores (2026-12-06: measured in calls as rows were added, 141 min in all with extra
rows and repeated runs; the runs of the default rows sum to 101.8 min per core pair, and the first 66-run table took
1.11x its sum). The estimate is printed up front, from the measured cost of an ``nnUNetTrainer`` run and each
trainer's train-step ratio; see :data:`COST`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import cohort

BASELINE = "nnUNetTrainer"
SOURCE_ONLY, ORACLE = "source only", "oracle"
#: trainers run with ``--augment gin`` (each its own row): the baseline, BCP (unlabeled images of every style too)
#: and C²SDG (the DG trainer that gains on the source styles, with contrast randomisation its own augmentation
#: does not reach)
GIN_TRAINERS = (BASELINE, "nnUNetTrainerBCP", "nnUNetTrainerC2SDG")
#: the training-time method whose models also get each ``--adapt`` method (DG + TTA rows): MIND, DG-TTA's own
#: descriptor pretraining (multimodallearning/DG-TTA pairs it with test-time adaptation), and the row closing the
#: largest share of both target gaps (3 seeds, 2026-12-06; GIN-IPA's DG + TTA rows, the DG + TTA model until then,
#: stay in the measured record)
DG_TTA_MODEL = "nnUNetTrainerMIND"
#: ``predict --ensemble SPECIALIST GENERALIST --ensemble-weighting agreement`` (:mod:`nnzoo.pipeline.ensembling`):
#: the source-only model and the :data:`DG_TTA_MODEL` model of the same seed, each ``(row, trainer)`` (no training)
AGREEMENT_MEMBERS = ((SOURCE_ONLY, BASELINE), (DG_TTA_MODEL, DG_TTA_MODEL))
AGREEMENT_ROW = f"{SOURCE_ONLY} + {DG_TTA_MODEL} (agreement)"

#: defaults per configuration (2D: sized for <= 120 min on 2 CPU cores with --jobs 2, see the README)
DEFAULTS = {
    "2d": {"seeds": [0, 1, 2], "epochs": 20, "iters": 50, "num_train": 40, "num_test": 50},
    "3d_fullres": {"seeds": [0, 1, 2], "epochs": 20, "iters": 50, "num_train": 20, "num_test": 10},
}
SMOKE = {"seeds": [0], "epochs": 1, "iters": 2, "num_train": 10, "num_test": 5}
#: for the estimate printed up front: seconds per training iteration of nnUNetTrainer (2D: the low-label
#: benchmark's 1000-iteration runs, 256-280 s with --jobs 2 on the 2-core machine, same 64x64 patch and batch 2;
#: 3D: a guess) and per run for prediction and evaluation (2D: 50 test cases); corrected from finished runs
SECONDS_PER_ITER = {"2d": 0.27, "3d_fullres": 1.5}
SECONDS_PER_RUN = {"2d": 45.0, "3d_fullres": 90.0}
#: training time relative to nnUNetTrainer: train-step ratios of `bench_train_step.py --all --configuration 2d
#: --patch 64 64 --batch-size 2` on the 2-core machine (an upper bound: a run also loads and augments data,
#: which costs the same for all); DA5 and --augment add augmentation; MIND: a whole run beside a source-only run
#: (132 s / 130 s, 2026-12-06). Trainers not listed: UNMEASURED_COST
COST = {BASELINE: 1.0, "nnUNetTrainerDA5": 1.1, "nnUNetTrainerDCAC": 1.1, "nnUNetTrainerTriD": 1.05,
        "nnUNetTrainerGINIPA": 2.7, "nnUNetTrainerC2SDG": 4.2, "nnUNetTrainerBCP": 1.1, "nnUNetTrainerMIND": 1.0}
UNMEASURED_COST = 2.0


@dataclass(frozen=True)
class Row:
    """One row of the table: a trainer on a dataset (``source`` or ``all``), optionally with ``--augment``, or
    (``adapt``) the model of row ``model_row`` predicted with test-time adaptation ``--adapt ADAPT`` (no training)."""

    key: str
    trainer: str
    data: str = "source"
    augment: str | None = None
    adapt: str | None = None
    model_row: str | None = None
    #: ``--adapt-continual``, one continual stream per test domain (the papers' protocol), instead of episodic
    continual: bool = False
    #: ``(row, trainer)`` of the models ensembled with ``--ensemble-weighting agreement`` (no training)
    ensemble: tuple[tuple[str, str], ...] = ()

    @property
    def predict_only(self) -> bool:
        """The row predicts with models of other rows (test-time adaptation, an ensemble)."""
        return bool(self.adapt or self.ensemble)

    @property
    def extra(self) -> list[str]:
        return ["--augment", self.augment] if self.augment else []


def _tag(key: str, seed: int) -> str:
    """The name of a run's folders (model, predictions, logs)."""
    name = key.replace(" + ", "+").replace(" ", "_").replace("+", "_").replace("(", "").replace(")", "")
    return f"{name}_s{seed}"


def adapt_methods() -> list[str]:
    """The ``nnzoo predict --adapt`` methods (each a row on the source-only model)."""
    from nnzoo.trainers.adapt import METHODS

    return list(METHODS)


def registered() -> dict:
    from nnzoo.trainers import list_trainers

    return {i.name: i for i in list_trainers()}


def plan_rows(trainers: list[str] | None, config: str) -> tuple[list[Row], dict[str, str]]:
    """The rows to run and ``{row: why skipped}``.

    Source only and the oracle are always rows (every figure refers to them). ``trainers`` (None:
    all) keeps the other rows whose trainer or key it names; a registered trainer it names that is in
    no default row becomes a row of its own on the source labels, ``TRAINER+AUGMENT`` (e.g.
    ``nnUNetTrainerC2SDG+gin``) one with ``--augment AUGMENT``.
    """
    info = registered()
    dg = [n for n, i in info.items() if i.domain_generalisation]
    wanted = [Row(SOURCE_ONLY, BASELINE), Row(ORACLE, BASELINE, "all"), *(Row(n, n) for n in dg),
              *(Row(f"{t}+gin", t, augment="gin") for t in GIN_TRAINERS),
              *(Row(f"{model}+{m}{' continual' if c else ''}", trainer, adapt=m, model_row=model, continual=c)
                for c in (False, True) for model, trainer in ((SOURCE_ONLY, BASELINE), (DG_TTA_MODEL, DG_TTA_MODEL))
                for m in adapt_methods()),
              Row(AGREEMENT_ROW, DG_TTA_MODEL, ensemble=AGREEMENT_MEMBERS),
              *(Row(f"{AGREEMENT_ROW}+{m}", DG_TTA_MODEL, adapt=m, model_row=AGREEMENT_ROW, ensemble=AGREEMENT_MEMBERS)
                for m in adapt_methods())]
    if trainers is not None:
        from nnzoo.trainers.augment import AUGMENTATIONS

        defaults = {r.key for r in wanted}
        keep = set(trainers)
        wanted = wanted[:2] + [r for r in wanted[2:] if (r.trainer in keep and not r.predict_only) or r.key in keep]
        kept = {r.key for r in wanted}
        wanted = [r for r in wanted if (not r.adapt or r.model_row in kept)  # TTA needs its model's row
                  and all(m in kept for m, _ in r.ensemble)]  # an ensemble its members' rows
        known = {r.key for r in wanted} | {r.trainer for r in wanted[2:]}
        for t in trainers:
            if t in known | defaults or t == BASELINE:
                continue
            trainer, _, augment = t.partition("+")
            wanted.append(Row(t, trainer, augment=augment) if augment in AUGMENTATIONS else Row(t, t))
    rows, skipped = [], {}
    for r in wanted:
        if r.trainer not in info:
            skipped[r.key] = f"{r.trainer} is not a registered trainer (yet)"
        elif config[:2] not in info[r.trainer].dims:
            skipped[r.key] = f"{r.trainer} has no {config} configuration"
        else:
            rows.append(r)
    return rows, skipped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    cohort.add_run_args(
        ap, out="domain_shift_work", seeds_help="default 0 1 2 (smoke: 0)",
        trainers_help="restrict the rows to these trainers or row keys (e.g. nnUNetTrainerDA5 "
                      "nnUNetTrainer+gin); source only and the oracle always run; a registered trainer that is in "
                      "no default row is added on the source labels",
        hparam_help="a trainer hyperparameter for this benchmark (repeatable; reported in the table)",
        dataset_id=960, dataset_id_help="first of the two dataset ids used (source labels, all labels)")
    ap.add_argument("--source-domains", nargs="+", default=None, metavar="DOMAIN",
                    help="the domains whose training labels are used (generated cohort: default t1_3t t1_15t; "
                         "required with --source)")
    a = ap.parse_args(argv)
    cohort.apply_defaults(a, SMOKE if a.smoke else DEFAULTS[a.config])
    if a.source and not a.source_domains:
        ap.error("--source DIR needs --source-domains NAME [NAME ...] (the domains whose training labels are used)")
    if a.source_domains is None:
        from nnzoo.pipeline.brain_phantoms import DEFAULT_LABELED_ACQUISITIONS

        a.source_domains = list(DEFAULT_LABELED_ACQUISITIONS)
    if a.jobs < 1:
        ap.error(f"--jobs {a.jobs}: must be at least 1")
    if a.smoke:
        a.quick = True
    a.hparams = cohort.parse_hparams(ap, a.hparam or [])
    return a


# --------------------------------------------------------------------------------------------- data
def make_source(a: argparse.Namespace, root: Path) -> tuple[Path, dict[str, str], dict]:
    """The cohort folder, ``{case: domain}`` of its training and test cases, and its label names.

    Raises:
        SystemExit: a missing folder, label or domains file, a case without a domain, a source domain
            with no training case, or no test case from a target domain.
    """
    if a.source:
        src = Path(a.source)
        cohort.check_source_folder(src)
        files = [f for f in (src / "domains.csv", src / "domains.json") if f.is_file()]
        if not files:
            raise SystemExit(f"error: --source {src}: no domains.csv or domains.json (case,domain of every case)")
        from nnzoo.trainers.domains import DomainsError, parse_domains_file

        try:
            domains = parse_domains_file(files[0])
        except DomainsError as e:
            raise SystemExit(f"error: --source: {e}") from None
        labels = {}
    else:
        src, manifest = cohort.generated_cohort(root, dim=2 if a.config == "2d" else 3, num_train=a.num_train,
                                                num_test=a.num_test, seed=a.data_seed, smoke=a.smoke)
        domains = {c: p["acquisition"] for split in ("train", "test") for c, p in manifest[split].items()}
        labels = {int(k): v for k, v in manifest["labels"].items() if int(k) != 0}
    unlabeled = sorted(set(cohort.cases(src / "images")) - set(cohort.cases(src / "labels")))
    if unlabeled:
        raise SystemExit(f"error: {src / 'labels'}: no label of training case(s) {', '.join(unlabeled[:5])} (the "
                         "oracle row trains on every training case)")
    every = [*cohort.cases(src / "images"), *cohort.cases(src / "test_images")]
    missing = [c for c in every if c not in domains]
    if missing:
        raise SystemExit(f"error: {len(missing)} case(s) have no domain: {', '.join(missing[:5])}")
    train_domains = {domains[c] for c in cohort.cases(src / "images")}
    unknown = [d for d in a.source_domains if d not in train_domains]
    if unknown:
        raise SystemExit(f"error: --source-domains {' '.join(unknown)}: no training case has that domain "
                         f"(domains: {', '.join(sorted(train_domains))})")
    if not any(domains[c] not in a.source_domains for c in cohort.cases(src / "test_images")):
        raise SystemExit("error: --source-domains: every test case is from a source domain; nothing to measure")
    return src, domains, labels


def datasets(a: argparse.Namespace, root: Path, src: Path, domains: dict[str, str], labels: dict) -> dict[str, int]:
    """Create (once) the *source* and *all* datasets; their ids."""
    train = sorted(cohort.cases(src / "images"))
    source = [c for c in train if domains[c] in a.source_domains]
    ids = {"source": a.dataset_id, "all": a.dataset_id + 1}
    cohort.make_dataset(root, src, did=ids["source"], name="DomainShiftSource", labeled=source,
                        unlabeled=[c for c in train if c not in source], config=a.config, label_names=labels,
                        domains=domains)
    cohort.make_dataset(root, src, did=ids["all"], name="DomainShiftAll", labeled=train, unlabeled=[],
                        config=a.config, label_names=labels, domains=domains)
    return ids


# --------------------------------------------------------------------------------------------- runs
def plan_runs(rows: list[Row], seeds: list[int]) -> list[tuple[Row, int]]:
    """``(row, seed)`` of every training run in start order: per seed the compared rows (the costlier ones), then
    source only and the oracle, so that with ``--jobs`` the short runs come last; then the test-time adaptation
    rows (prediction only, on models trained above)."""
    refs = [r for r in rows if r.key in (SOURCE_ONLY, ORACLE)]
    trained = [r for r in rows if not r.predict_only]
    return ([(r, s) for s in seeds for r in trained if r not in refs] + [(r, s) for s in seeds for r in refs]
            + [(r, s) for s in seeds for r in rows if r.predict_only])


def estimate_s(a: argparse.Namespace, runs: list[tuple[Row, int]], state: dict) -> tuple[float, list[str]]:
    """Wall seconds the runs will take (``--jobs`` side by side) and the trainers whose cost is assumed."""
    done: dict[str, list[float]] = {}
    for r in state["runs"].values():
        if "train_s" in r:
            done.setdefault(r["row"], []).append(r["train_s"])
    base = sum(done[SOURCE_ONLY]) / len(done[SOURCE_ONLY]) if done.get(SOURCE_ONLY) else None
    per_iter = SECONDS_PER_ITER[a.config] * a.epochs * a.iters
    total, assumed = 0.0, set()
    for row, _ in runs:
        if row.predict_only:  # measured: episodic about one plain prediction, continual per domain two
            total += (2 if row.continual or row.ensemble else 1) * SECONDS_PER_RUN[a.config]
            continue
        if base and done.get(row.key):
            factor = sum(done[row.key]) / len(done[row.key]) / base
        else:
            factor = COST.get(row.trainer, UNMEASURED_COST) * (1.2 if row.augment else 1.0)
            if row.trainer not in COST:
                assumed.add(row.trainer)
        total += (base or per_iter) * factor + SECONDS_PER_RUN[a.config]
    return total / max(1, min(a.jobs, len(runs))), sorted(assumed)


def adaptation_rows(config: str = "2d") -> list[str]:
    """The keys that ``--trainers`` takes to run only the test-time adaptation and ensemble rows and the models they
    predict with (source only and the oracle always run): the GPU check's selection (``dev/gpu_check.sh``)."""
    rows, _ = plan_rows(None, config)
    wanted = [r for r in rows if r.predict_only]
    models = {r.model_row for r in wanted if r.adapt} | {m for r in wanted for m, _ in r.ensemble}
    return [r.key for r in rows if r.key in models - {SOURCE_ONLY, ORACLE} and not r.predict_only] + [r.key for r in wanted]


def streams_of(groups: dict[str, str]) -> dict[str, list[str]]:
    """``{domain: [test case, ...]}`` in case order: the continual rows' streams, one per domain."""
    out: dict[str, list[str]] = {}
    for c in sorted(groups):
        out.setdefault(groups[c], []).append(c)
    return out


def run_one(a: argparse.Namespace, root: Path, src: Path, ids: dict[str, int], row: Row, seed: int,
            groups: dict[str, str] | None = None) -> dict:
    """Train, predict and score one run; its result, or ``{"failed": reason}``.

    Args:
        groups: ``{test case: domain}``, the streams of a continual adaptation row.
    """
    tag = _tag(row.key, seed)
    hp = cohort.trainer_hparams(row.trainer, quick=a.quick, hparams=a.hparams)
    base = {"row": row.key, "trainer": row.trainer, "data": row.data, "augment": row.augment, "seed": seed,
            "hparams": hp, "adapt": row.adapt, "continual": row.continual,
            "ensemble": [m for m, _ in row.ensemble] or None}
    try:
        if row.ensemble:  # the members' models of the same seed, weighted per case by their agreement
            folders = []
            for member, trainer in row.ensemble:
                found = cohort.model_folders(root / "nnUNet_results" / _tag(member, seed), trainer=trainer,
                                             config=a.config)
                if not found:
                    return {**base, "failed": f"no trained model of row {member!r}, seed {seed}"}
                folders.append(str(found[0]))
            r = {"train_s": 0.0, **cohort.predict_evaluate(
                root, src, did=ids[row.data], trainer=row.trainer, config=a.config, device=a.device, jobs=a.jobs,
                results=root / "nnUNet_results" / tag, tag=tag,
                model=["--ensemble", *folders, "--ensemble-weighting", "agreement", "-f", "all"],
                predict_extra=["--adapt", row.adapt] if row.adapt else [])}
        elif row.adapt:  # the model of row.model_row, same seed, predicted with --adapt
            r = {"train_s": 0.0, **cohort.predict_evaluate(
                root, src, did=ids[row.data], trainer=row.trainer, config=a.config, device=a.device, jobs=a.jobs,
                results=root / "nnUNet_results" / _tag(row.model_row, seed), tag=tag, extra=row.extra,
                predict_extra=["--adapt", row.adapt, *(["--adapt-continual"] if row.continual else [])],
                streams=streams_of(groups or {}) if row.continual else None)}
        else:
            r = cohort.train_predict_evaluate(root, src, did=ids[row.data], trainer=row.trainer, seed=seed,
                                              config=a.config, epochs=a.epochs, iters=a.iters, device=a.device,
                                              jobs=a.jobs, results=root / "nnUNet_results" / tag, tag=tag,
                                              hparams=hp, extra=row.extra)
    except cohort.CommandFailed as e:
        return {**base, "failed": e.reason, "log": str(e.log)}
    by_file = {p.name: c for c, p in cohort.cases(src / "test_labels").items()}
    r["per_case"] = {by_file.get(f, f): d for f, d in r["per_case"].items()}
    return {**base, **r}


def pseudo_label_dice(root: Path, ids: dict[str, int], run: dict, config: str,
                      groups: dict[str, str]) -> dict[str, float] | None:
    """How good a self-training run's pseudo-labels were: mean foreground Dice per domain of its training cases.

    The pseudo-labels (``nnzoo.trainers.self_training``, preprocessed space) of the unlabeled training cases are
    compared with the same cases' labels in the *all* dataset's preprocessed segmentations (the oracle's data;
    the self-training run never saw them). A case whose arrays differ in shape (the two datasets preprocessed to
    other geometries) is left out.

    Args:
        run: a finished run's record (``trainer``, ``augment``, ``seed``, ``row``).
        groups: ``{training case: domain}``.

    Returns:
        ``{domain: mean foreground Dice}``, or None when the run left no complete pseudo-label folder.
    """
    import blosc2
    import numpy as np

    from nnzoo.pipeline.metrics import dice
    from nnzoo.trainers.self_training import PSEUDO_DONE, pseudo_label_dir

    pre = root / "nnUNet_preprocessed"
    src_ds = next(pre.glob(f"Dataset{ids['source']:03d}_*"), None)
    all_ds = next(pre.glob(f"Dataset{ids['all']:03d}_*"), None)
    folders = cohort.model_folders(root / "nnUNet_results" / _tag(run["row"], run["seed"]), trainer=run["trainer"],
                                   config=config, extra=["--augment", run["augment"]] if run.get("augment") else [])
    if src_ds is None or all_ds is None or not folders:
        return None
    pseudo = pseudo_label_dir(src_ds, folders[0], "all")
    if not (pseudo / PSEUDO_DONE).is_file():
        return None
    ident = json.loads((all_ds / "nnUNetPlans.json").read_text())["configurations"][config]["data_identifier"]
    per_domain: dict[str, list[float]] = {}
    for f in sorted(pseudo.glob("*.npy")):
        seg_file = all_ds / ident / f"{f.stem}_seg.b2nd"
        if f.stem not in groups or not seg_file.is_file():
            continue
        pred, ref = np.load(f), np.asarray(blosc2.open(str(seg_file))[:])
        if pred.size != ref.size:
            continue
        pred = pred.reshape(ref.shape)
        scores = [dice(ref == k, pred == k) for k in np.unique(ref) if k > 0]  # classes present: never NaN
        if scores:
            per_domain.setdefault(groups[f.stem], []).append(float(np.mean(scores)))
    return {d: float(np.mean(v)) for d, v in sorted(per_domain.items())} or None


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    root = cohort.work_folder(a.out)
    t0 = time.time()
    rows, skipped = plan_rows(a.trainers, a.config)
    for key, why in skipped.items():
        print(f"note: row {key!r} skipped: {why}", flush=True)
    src, domains, labels = make_source(a, root)
    out_json = root / "domain_shift.json"
    settings = {k: getattr(a, k) for k in ("config", "seeds", "epochs", "iters", "num_train", "num_test", "data_seed",
                                           "device", "quick", "source", "source_domains", "hparams")}
    state = cohort.load_state(out_json, settings)
    test_cases = sorted(cohort.cases(src / "test_images"))
    state.update(jobs=a.jobs, label_names={str(k): v for k, v in labels.items()}, skipped=skipped,
                 rows={**state.get("rows", {}), **{r.key: asdict(r) for r in rows}}, source_domains=a.source_domains,
                 test_groups={c: domains[c] for c in test_cases},
                 train_groups={c: domains[c] for c in cohort.cases(src / "images")})
    ids = datasets(a, root, src, domains, labels)
    runs = plan_runs(rows, a.seeds)
    todo = [(n, r) for n, r in enumerate(runs, 1) if "failed" in state["runs"].get(f"{r[0].key}|{r[1]}", {"failed": 1})]
    est, assumed = estimate_s(a, [r for _, r in todo], state)
    print(f"{len(todo)} of {len(runs)} runs to do ({len(rows)} rows x {len(a.seeds)} seeds, {a.epochs} x {a.iters} "
          f"iterations, --jobs {a.jobs}): about {est / 60:.0f} min"
          + (f" (cost of {', '.join(assumed)} assumed {UNMEASURED_COST:g}x nnUNetTrainer)" if assumed else ""),
          flush=True)
    state["estimate_min"] = round(est / 60, 1)

    def work(item: tuple[int, tuple[Row, int]]) -> None:
        n, (row, seed) = item
        print(f"[{n}/{len(runs)}] {row.key}, seed {seed} ...", flush=True)
        r = run_one(a, root, src, ids, row, seed, groups=state["test_groups"])
        cohort.save_state(out_json, state, f"{row.key}|{seed}", r)
        print(f"[{n}/{len(runs)}] {row.key}, seed {seed}: "
              + (f"FAILED: {r['failed']}" if "failed" in r else
                 f"mean foreground Dice {r['mean_fg']:.4f} (train {r['train_s']:.0f} s, predict {r['predict_s']:.0f} s)"),
              flush=True)

    # training runs first; test-time adaptation rows predict with models trained there
    cohort.run_parallel([t for t in todo if not t[1][0].predict_only], work, a.jobs)
    cohort.run_parallel([t for t in todo if t[1][0].predict_only], work, a.jobs)
    for key, run in state["runs"].items():  # self-training rows: how good their pseudo-labels were (also resumed runs)
        if "failed" not in run and not run.get("adapt") and not run.get("ensemble") and "pseudo_label_dice" not in run:
            score = pseudo_label_dice(root, ids, run, a.config, state["train_groups"])
            if score is not None:
                cohort.save_state(out_json, state, key, {**run, "pseudo_label_dice": score})
    cohort.finish_state(state, t0, "domain_shift.py", argv)
    cohort.save_state(out_json, state)
    from benchmarks.domain_shift_report import write_report

    print(write_report(state, root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
