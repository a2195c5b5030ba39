"""The benchmark scripts still run (tiny settings): figures come from them, so they must not rot.

These are smoke runs, not timings: speed targets are measured by running the scripts themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnzoo.trainers import list_trainers

REPO = Path(__file__).resolve().parents[1]
TINY = {  # per script: arguments that make it a smoke run
    "run_all": ["--patch", "16", "16", "16", "--rounds", "1", "--steps", "1", "--warmup", "0", "--threads", "1",
                "--workdir", "{tmp}", "--output", "{tmp}/out"],
    "bench_boundary_aware": ["--device", "cpu", "--patch", "16", "16", "16", "--stages", "3", "--rounds", "1",
                             "--steps", "1", "--warmup", "0", "--threads", "1"],
    "bench_cotr": ["--device", "cpu", "--patch", "16,32,32", "--steps", "1", "--warmup", "0"],
    "bench_train_step": ["--device", "cpu", "--patch", "16", "16", "16", "--steps", "1", "--warmup", "0", "--all"],
    "bench_ddp": ["--device", "cpu", "--configuration", "2d", "--patch", "32", "32", "--batch-size", "2", "--steps",
                  "1", "--warmup", "0"],
}


def test_every_registered_benchmark_has_a_smoke_run():
    """The benchmark named by each registry entry exists and is exercised below."""
    for info in list_trainers():
        assert (REPO / "benchmarks" / f"{info.benchmark}.py").is_file(), info.name
        assert info.benchmark in TINY, info.benchmark


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_script_runs(script, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in TINY[script]]
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), *args], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    expected = "samples/s" if script == "bench_ddp" else "nnUNetTrainer"
    assert expected in r.stdout and ("x" in r.stdout or "×" in r.stdout)


def _low_label():
    sys.path.insert(0, str(REPO))
    from benchmarks import low_label, low_label_report

    return low_label, low_label_report


def test_low_label_summary_paired_differences_and_gap():
    """Hand-made runs: the gap, the paired difference per seed, wins and the fraction of the gap closed."""
    _, report = _low_label()
    runs = {}
    for t, labels, seed, d in [("nnUNetTrainer", "all labels", 0, 0.9), ("nnUNetTrainer", "all labels", 1, 0.8),
                               ("nnUNetTrainer", "4", 0, 0.6), ("nnUNetTrainer", "4", 1, 0.5),
                               ("X", "4", 0, 0.7), ("X", "4", 1, 0.45)]:
        runs[f"{t}|{labels}|{seed}"] = {"trainer": t, "labels": labels, "seed": seed, "mean_fg": d,
                                        "dice": {"1": d}, "train_s": 1.0}
    s = report.summarise({"runs": runs})
    assert s["gap"] == pytest.approx(0.3)
    x = s["rows"][("X", "4")]
    assert (x["diff_mean"], x["diff_min"], x["diff_max"], x["wins"]) == pytest.approx((0.025, -0.05, 0.1, 1))
    assert x["gap_closed"] == pytest.approx(0.025 / 0.3)
    assert "gap_closed" not in s["rows"][("nnUNetTrainer", "4")]
    runs["X|4|0"]["per_case"] = {"a.nii.gz": {"1": 0.2, "2": 0.4}, "b.nii.gz": {"1": 0.9}}
    runs["X|4|1"]["per_case"] = {"a.nii.gz": {"1": 0.5}, "b.nii.gz": {"1": 0.7}}
    groups = report.by_group({"runs": {k: runs[k] for k in ("X|4|0", "X|4|1")}, "test_groups": {"a": "t2", "b": "t1"}})
    assert groups[("X", "4")] == pytest.approx({"t2": (0.3 + 0.5) / 2, "t1": 0.8})
    runs["nnUNetTrainer|all labels|0"]["mean_fg"] = 0.5  # no gap: nothing to close
    runs["nnUNetTrainer|all labels|1"]["mean_fg"] = 0.5
    assert "gap_closed" not in report.summarise({"runs": runs})["rows"][("X", "4")]


def test_low_label_gap_per_group():
    """Per group: the gap, the fraction a trainer closes, and no fraction where the gap is too small."""
    _, report = _low_label()
    runs = {}
    for t, labels, a, b in [("nnUNetTrainer", "all labels", 0.9, 0.8), ("nnUNetTrainer", "4", 0.5, 0.79),
                            ("X", "4", 0.7, 0.5)]:
        runs[f"{t}|{labels}|0"] = {"trainer": t, "labels": labels, "seed": 0, "mean_fg": (a + b) / 2, "dice": {"1": a},
                                   "train_s": 1.0, "per_case": {"a.nii.gz": {"1": a}, "b.nii.gz": {"1": b}}}
    state = {"runs": runs, "test_groups": {"a": "t2", "b": "t1"}}
    gaps = report.group_gaps(state)
    assert gaps["t2"]["gap"] == pytest.approx(0.4) and gaps["t2"]["closed"] == {"X": pytest.approx(0.5)}
    assert gaps["t1"]["gap"] == pytest.approx(0.01) and gaps["t1"]["closed"] == {}
    table = report._gap_table(state, report.summarise(state))
    assert "| `X` | 50 % | no gap |" in table


def test_low_label_scores_pseudo_labels_against_the_held_back_labels(tmp_path, monkeypatch):
    """The pseudo-labels a run left are scored against the all-labels dataset's segmentation, per case."""
    import json

    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    low_label, report = _low_label()
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    full = tmp_path / "Dataset950_All"
    (full / "nnUNetPlans_2d").mkdir(parents=True)
    (full / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"2d": {"data_identifier": "nnUNetPlans_2d"}}}))
    ref = np.zeros((1, 1, 4, 4), np.int8)
    ref[0, 0, :2] = 1  # class 1: 8 voxels; class 2 in neither
    nnUNetDatasetBlosc2.save_case(np.zeros((1, 1, 4, 4), np.float32), ref, {}, str(full / "nnUNetPlans_2d" / "u1"),
                                  chunks=(1, 1, 4, 4), blocks=(1, 1, 4, 4))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    from nnzoo.trainers.self_training import pseudo_label_dir

    pl = pseudo_label_dir(tmp_path / "Dataset951_Low", tmp_path / "results" / "Dataset951_Low" / "T__nnUNetPlans__2d",
                          "all")  # where the run of T on that dataset wrote them
    pl.mkdir(parents=True)
    pseudo = np.zeros((1, 1, 4, 4), np.int8)
    pseudo[0, 0, :1] = 1  # 4 of the 8 voxels: Dice 2*4/(4+8)
    np.save(pl / "u1.npy", pseudo)
    state = {"label_names": {"1": "a", "2": "b"}, "train_groups": {"u1": "t2"},
             "runs": {"T|4|0": {"trainer": "T", "labels": "4", "seed": 0, "dataset": 951},
                      "nnUNetTrainer|4|0": {"trainer": "nnUNetTrainer", "labels": "4", "seed": 0, "dataset": 951}}}
    a = low_label.parse_args(["--out", str(tmp_path / "out"), "--trainers", "nnUNetTrainer"])
    scores = low_label.pseudo_label_quality(a, state, {low_label.FULL: (950, "All")})
    assert scores == {"T|4|0": {"u1": pytest.approx(8 / 12)}}  # class 2 in neither: left out of the mean
    state["runs"]["T|4|0"]["pseudo_labels"] = scores["T|4|0"]
    assert "| `T` | 0.667 (n=1) |" in report._pseudo_label_table(state)


def test_low_label_labeled_acquisitions_control(tmp_path):
    """--labeled-acquisitions all: the generated cohort's labeled pool is every training case; a cohort
    already in --out with another pool is refused; unknown styles and --source are flag errors."""
    low_label, _ = _low_label()
    a = low_label.parse_args(["--smoke", "--labeled-acquisitions", "all", "--out", str(tmp_path)])
    src, manifest = low_label.make_source(a, tmp_path)
    assert len(manifest["labeled_acquisitions"]) == 5 and sorted(manifest["labeled_pool"]) == sorted(manifest["train"])
    b = low_label.parse_args(["--smoke", "--labeled-acquisitions", "t1_3t", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="draws labels from"):
        low_label.make_source(b, tmp_path)
    for bad in (["--labeled-acquisitions", "t3"], ["--labeled-acquisitions", "all", "--source", str(tmp_path)]):
        with pytest.raises(SystemExit):
            low_label.parse_args(["--smoke", *bad])


def test_low_label_runs_every_trainer_once_per_seed_short_runs_last():
    low_label, _ = _low_label()
    a = low_label.parse_args(["--trainers", "nnUNetTrainer", "A", "B", "--seeds", "0", "1"])
    runs = low_label.plan_runs(a)
    assert sorted(runs) == sorted([(t, "4", s) for t in ("nnUNetTrainer", "A", "B") for s in (0, 1)]
                                  + [("nnUNetTrainer", "all labels", s) for s in (0, 1)])
    assert [r[0] for r in runs[:4]] == ["A", "B", "A", "B"] and all(r[0] == "nnUNetTrainer" for r in runs[4:])
    assert runs[-2:] == [("nnUNetTrainer", "all labels", 0), ("nnUNetTrainer", "all labels", 1)]


def test_low_label_choice_is_seeded_balanced_and_from_the_pool():
    low_label, _ = _low_label()
    manifest = {"labeled_pool": ["a", "b", "c", "d"]}
    cases = ["a", "b", "c", "d", "e", "f"]
    one = low_label.choose_labeled(manifest, cases, 2, seed=0)
    assert one == low_label.choose_labeled(manifest, cases, 2, seed=0) and set(one) <= {"a", "b", "c", "d"}
    assert len({tuple(low_label.choose_labeled(manifest, cases, 2, seed=s)) for s in range(6)}) > 1
    with pytest.raises(SystemExit, match="--labeled 5"):
        low_label.choose_labeled(manifest, cases, 5, seed=0)


def test_low_label_variant_flags(capsys):
    """--variant NAME=TRAINER:HPARAM=VALUE[,...] parsed; malformed items, unknown trainers and taken names are
    flag errors; variant runs come after the others, one per seed."""
    low_label, _ = _low_label()
    a = low_label.parse_args(["--variant", "BCP-lcc0=nnUNetTrainerBCP:LCC_MIN_SINGLE_FRACTION=0,PRETRAIN_FRACTION=0.25",
                              "--seeds", "0", "1"])
    assert a.variants == {"BCP-lcc0": {"trainer": "nnUNetTrainerBCP",
                                       "hparams": {"LCC_MIN_SINGLE_FRACTION": "0", "PRETRAIN_FRACTION": "0.25"}}}
    assert low_label.plan_variant_runs(a, a.variants) == [("BCP-lcc0", "4", 0), ("BCP-lcc0", "4", 1)]
    for bad, needle in [("x=nnUNetTrainerBCP", "expected"), ("=nnUNetTrainerBCP:A=1", "expected"),
                        ("x=NoSuchTrainer:A=1", "not a registered trainer"),
                        ("nnUNetTrainer=nnUNetTrainerBCP:A=1", "is taken"),
                        ("x=nnUNetTrainerBCP:NO_SUCH=1", "not a hyperparameter")]:
        with pytest.raises(SystemExit):
            low_label.parse_args(["--variant", bad])
        assert needle in capsys.readouterr().err, bad


def test_benchmark_state_grows_dict_settings_and_refuses_changed_entries(tmp_path):
    from benchmarks import cohort

    path = tmp_path / "s.json"
    grows = ("seeds", "variants")
    state = cohort.load_state(path, {"seeds": [0], "epochs": 2, "variants": {"a": {"trainer": "T"}}}, grows)
    cohort.save_state(path, state)
    merged = cohort.load_state(path, {"seeds": [1], "epochs": 2, "variants": {"b": {"trainer": "U"}}}, grows)
    assert merged["settings"]["variants"] == {"a": {"trainer": "T"}, "b": {"trainer": "U"}}
    assert cohort.load_state(path, {"seeds": [0], "epochs": 2}, grows)["settings"]["variants"] == {"a": {"trainer": "T"}}
    with pytest.raises(SystemExit, match="other values"):
        cohort.load_state(path, {"seeds": [0], "epochs": 2, "variants": {"a": {"trainer": "V"}}}, grows)


def test_low_label_seeds_get_disjoint_labeled_sets_while_the_pool_allows():
    """Seeds 0..k-1 share no labeled case when the pool holds k sets; seed k starts a new order."""
    low_label, _ = _low_label()
    pool = [f"c{i:02d}" for i in range(10)]
    sets = [low_label.choose_labeled({"labeled_pool": pool}, pool + ["x"], 3, seed=s) for s in range(4)]
    assert all(len(x) == 3 and set(x) <= set(pool) for x in sets)
    assert len(set().union(*map(set, sets[:3]))) == 9  # 3 seeds x 3 cases, all different
    assert sets[3] != sets[0]  # not a repeat of seed 0: a new order


def test_low_label_paired_interval_and_verdicts():
    """The 95 % interval of the paired per-case differences excludes 0 for a trainer better on every case,
    includes it for one better on half the cases and worse on the others, and the verdicts say so."""
    _, report = _low_label()
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.6, (3, 12))
    full = base + 0.2
    shift = {"nnUNetTrainer": 0.0, "Up": 0.03 + 0.01 * np.sin(np.arange(12)), "Mixed": np.where(np.arange(12) % 2, 0.05, -0.05)}
    runs = {}
    for s in range(3):
        for t, labels, v in [*((t, "4", base[s] + d) for t, d in shift.items()), ("nnUNetTrainer", "all labels", full[s])]:
            runs[f"{t}|{labels}|{s}"] = {"trainer": t, "labels": labels, "seed": s, "mean_fg": float(v.mean()),
                                         "dice": {"1": float(v.mean())}, "train_s": 1.0,
                                         "per_case": {f"c{i}.nii.gz": {"1": float(x)} for i, x in enumerate(v)}}
    rows = report.summarise({"runs": runs})["rows"]
    est, lo, hi = rows[("Up", "4")]["diff_ci"]
    assert est == pytest.approx(np.mean(shift["Up"])) and 0 < lo < est < hi
    assert rows[("Up", "4")]["closed_ci"][0] == pytest.approx(np.mean(shift["Up"]) / 0.2)
    est, lo, hi = rows[("Mixed", "4")]["diff_ci"]
    assert lo < 0 < hi
    lines = report.verdicts(report.summarise({"runs": runs}))
    assert lines[0].endswith("`Up`") and "`Mixed`" in lines[1] and lines[2].endswith("none")
    assert f"`Up` {round(100 * np.mean(shift['Up']) / 0.2)} %" in lines[3]


def test_low_label_variant_rows_are_paired_with_their_trainer_not_the_baseline():
    """A ``--variant`` row's effect is its difference to its own trainer's row (same seeds and cases), with the
    per-seed figures, wins and interval; rows that are not variants, or whose trainer did not run, get none."""
    _, report = _low_label()
    cases = [f"c{i}.nii.gz" for i in range(6)]
    base = {0: np.linspace(0.4, 0.6, 6), 1: np.linspace(0.5, 0.7, 6)}
    rows = {("nnUNetTrainer", 0.0), ("T", 0.10), ("T-v", 0.12), ("Lonely-v", 0.3)}
    runs = {}
    for t, shift in rows:
        for s, v in base.items():
            v = v + shift + (0.01 if (t, s) == ("T-v", 1) else 0.0)
            runs[f"{t}|4|{s}"] = {"trainer": t, "labels": "4", "seed": s, "mean_fg": float(v.mean()),
                                  "dice": {"1": float(v.mean())}, "train_s": 1.0,
                                  "per_case": {c: {"1": float(x)} for c, x in zip(cases, v)}}
    state = {"runs": runs, "settings": {"variants": {"T-v": {"trainer": "T", "hparams": {"X": "1"}},
                                                     "Lonely-v": {"trainer": "Absent", "hparams": {}}}}}
    effects = report.variant_effects(state, report.summarise(state))
    assert [e["variant"] for e in effects] == ["T-v"]
    e = effects[0]
    assert (e["trainer"], e["hparams"], e["wins"], e["paired"]) == ("T", {"X": "1"}, 2, 2)
    assert (e["diff_mean"], e["diff_min"], e["diff_max"]) == pytest.approx((0.025, 0.02, 0.03))
    est, lo, hi = e["diff_ci"]
    assert est == pytest.approx(0.025) and 0.02 - 1e-9 <= lo <= est <= hi <= 0.03 + 1e-9
    table = report._variant_table(state, report.summarise(state))
    assert "| `T-v` | `T` | `X=1` | 4 | +0.0250 (+0.0200 … +0.0300; 2/2) |" in table and "above 0" in table
    assert "Lonely-v" not in table and report._variant_table({"runs": runs}, report.summarise({"runs": runs})) == ""


@pytest.mark.slow
def test_low_label_smoke_holds_test_cases_out_and_reports(tmp_path):
    """End to end (tiny): per-seed datasets hold only the chosen labeled cases, no test case is in any
    dataset, every run is scored on the test cases, and the table, figure and JSON are written."""
    out = tmp_path / "ll"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "low_label.py"), "--smoke", "--out", str(out),
                        "--trainers", "nnUNetTrainer", "nnUNetTrainerMeanTeacher", "--jobs", "2"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    import json

    state = json.loads((out / "low_label.json").read_text())
    assert len(state["runs"]) == 3 and (out / "low_label.png").stat().st_size > 0
    assert "nnUNetTrainerMeanTeacher" in (out / "low_label.md").read_text()
    test_cases = {p.name for p in (out / "cohort" / "test_images").iterdir()}
    labeled = state["labeled_cases"]["0"]
    for ds in (out / "nnUNet_raw").iterdir():
        in_ds = {p.name for sub in ("imagesTr", "imagesUnlabeled") if (ds / sub).is_dir() for p in (ds / sub).iterdir()}
        assert not {n.replace("_0000", "") for n in in_ds} & test_cases, ds.name
        if ds.name.endswith("s0"):
            assert sorted(p.name.split(".")[0] for p in (ds / "labelsTr").iterdir()) == labeled
    for run in state["runs"].values():
        assert sorted(run["per_case"]) == sorted(test_cases)
    # a later call adds a --variant row (same labeled cases and seed, its own model folder); nothing else reruns
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "low_label.py"), "--smoke", "--out", str(out),
                        "--trainers", "nnUNetTrainer", "nnUNetTrainerMeanTeacher", "--variant",
                        "MT-no-noise=nnUNetTrainerMeanTeacher:NOISE_STD=0"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    after = json.loads((out / "low_label.json").read_text())
    assert sorted(after["runs"]) == sorted([*state["runs"], "MT-no-noise|2|0"])
    assert all(after["runs"][k]["train_s"] == v["train_s"] for k, v in state["runs"].items())
    variant = after["runs"]["MT-no-noise|2|0"]
    assert variant["base_trainer"] == "nnUNetTrainerMeanTeacher" and variant["quick_hparams"]["NOISE_STD"] == "0"
    assert (out / "nnUNet_results" / "seed0_MT-no-noise").is_dir() and "`MT-no-noise`" in (out / "low_label.md").read_text()


@pytest.mark.slow
def test_bench_predict_smoke_compares_with_nnunet_and_reports(tmp_path):
    """End to end (tiny 2D model): the three commands run, ``--exact`` equals ``nnUNetv2_predict`` bit for bit,
    and the table and JSON carry the ratio, the agreement and the step times."""
    import json

    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_predict.py"), "--smoke", "--configs", "2d",
                        "--work", str(tmp_path / "bp"), "--processes", "1"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    result = json.loads((tmp_path / "bp" / "bench_predict.json").read_text())
    assert [(row["config"], row["mirroring"]) for row in result["rows"]] == [("2d", True), ("2d", False)]
    for row in result["rows"]:
        assert row["exact_equals_nnunet"] is True
        assert row["ratio_median"] > 0 and 0 < row["voxels_agree"] <= 1
        assert set(row["seconds"]) == {"nnUNetv2_predict", "nnzoo predict", "nnzoo predict --exact"}
    assert set(result["rows"][0]["steps"]) == {"nnUNetv2 (float32)", "nnzoo"}
    assert "throughput ratio" in (tmp_path / "bp" / "bench_predict.md").read_text()


# ----------------------------------------------------------------------------------- domain shift
def _domain_shift():
    sys.path.insert(0, str(REPO))
    from benchmarks import cohort, domain_shift, domain_shift_report

    return cohort, domain_shift, domain_shift_report


def test_bootstrap_interval_resamples_seeds_and_cases_and_keeps_pairs():
    """Hand-made scores: a constant difference has a zero-width interval however much the cases vary
    (pairs stay paired); seed-to-seed and case-to-case variation each widen it; bad shapes are refused."""
    cohort, _, _ = _domain_shift()
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, (3, 20))  # cases differ a lot
    est, lo, hi = cohort.bootstrap_interval(base + 0.1, base, statistic=lambda a, b: np.nanmean(a - b, axis=(-2, -1)))
    assert (est, lo, hi) == pytest.approx((0.1, 0.1, 0.1))
    assert cohort.bootstrap_interval(np.full((3, 5), 0.4)) == pytest.approx((0.4, 0.4, 0.4))
    seeds_only = np.repeat(np.array([[0.0], [1.0]]), 4, axis=1)  # the two seeds differ, cases do not
    est, lo, hi = cohort.bootstrap_interval(seeds_only)
    assert est == pytest.approx(0.5) and lo == pytest.approx(0.0) and hi == pytest.approx(1.0)
    cases_only = np.array([[0.0, 1.0]])  # one seed: only cases are drawn
    est, lo, hi = cohort.bootstrap_interval(cases_only)
    assert est == pytest.approx(0.5) and lo == pytest.approx(0.0) and hi == pytest.approx(1.0)
    wide = cohort.bootstrap_interval(base)
    assert wide[1] < wide[0] < wide[2]
    with pytest.raises(ValueError, match="shape"):
        cohort.bootstrap_interval(np.zeros((2, 3)), np.zeros((2, 4)))


def test_failure_reason_is_the_error_line():
    cohort, _, _ = _domain_shift()
    log = "loading...\nTraceback (most recent call last):\n  File x\nValueError: DCAC needs two domains\n\n"
    assert cohort.failure_reason(log) == "ValueError: DCAC needs two domains"
    assert cohort.failure_reason("a\nerror: --augment gin: unknown\n") == "error: --augment gin: unknown"
    assert cohort.failure_reason("") == "no output"


def _ds_state(rows: dict[str, dict[int, list[float]]], failed: dict | None = None) -> dict:
    """Runs of hand-made per-case scores; cases s0, s1 (source domain 'a'), t0 (target 't2'), f0 (target 'fl')."""
    cases = ["s0", "s1", "t0", "f0"]
    runs = {}
    for key, per_seed in rows.items():
        trainer = "nnUNetTrainer" if key in ("source only", "oracle") else key
        for seed, scores in per_seed.items():
            runs[f"{key}|{seed}"] = {"row": key, "trainer": trainer, "seed": seed, "train_s": 10.0,
                                     "per_case": {c: {"1": v, "2": v} for c, v in zip(cases, scores)}}
    for key, reason in (failed or {}).items():
        runs[f"{key}|0"] = {"row": key, "trainer": key, "seed": 0, "failed": reason}
    return {"runs": runs, "test_groups": {"s0": "a", "s1": "a", "t0": "t2", "f0": "fl"}, "source_domains": ["a"],
            "settings": {"config": "2d", "seeds": [0, 1], "epochs": 1, "iters": 2, "num_train": 4, "num_test": 4},
            "skipped": {"nnUNetTrainerTriD": "nnUNetTrainerTriD is not a registered trainer (yet)"}}


def test_domain_shift_summary_gaps_paired_differences_and_failures():
    """Gap per target domain, share closed, change on the source domain, per-seed differences; a failed row
    is in the table with its reason; a target without a gap gets no share; the goal line names the rows."""
    _, _, report = _domain_shift()
    state = _ds_state({
        "source only": {0: [0.9, 0.9, 0.2, 0.5], 1: [0.8, 0.8, 0.4, 0.5]},
        "oracle": {0: [0.9, 0.9, 0.8, 0.505], 1: [0.8, 0.8, 1.0, 0.505]},
        "X": {0: [0.9, 0.9, 0.5, 0.6], 1: [0.8, 0.8, 0.7, 0.6]},    # closes half the t2 gap, no loss on 'a'
        "Y": {0: [0.85, 0.85, 0.8, 0.5], 1: [0.75, 0.75, 1.0, 0.5]},  # closes all of it, loses 0.05 on 'a'
    }, failed={"Z": "error: Z needs domains.json"})
    s = report.summarise(state)
    assert s["source"] == ["a"] and s["targets"] == ["t2", "fl"]
    assert s["gap"]["t2"] == pytest.approx((0.6, 0.6, 0.6)) and s["gap"]["fl"][0] == pytest.approx(0.005)
    x, y = s["rows"]["X"], s["rows"]["Y"]
    assert x["closed"]["t2"] == pytest.approx((0.5, 0.5, 0.5)) and "fl" not in x["closed"]
    assert y["closed"]["t2"][0] == pytest.approx(1.0) and y["diff"]["source"][0] == pytest.approx(-0.05)
    assert x["diff_per_seed"]["t2"] == pytest.approx({0: 0.3, 1: 0.3})
    assert x["dice"]["t2"]["mean"] == pytest.approx(0.6) and x["dice"]["t2"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert report.goal_rows(s) == ["X"]
    md = report.to_markdown(state, s)
    assert "failed (1/1 seeds): error: Z needs domains.json" in md
    assert "| `X` | 50 % [50, 50] | no gap | +0.000 [+0.000, +0.000] |" in md
    assert "nnUNetTrainerTriD is not a registered trainer" in md and "goal" in md and "`X`" in md
    assert "pseudo-label Dice" not in md
    state["runs"]["X|0"]["pseudo_label_dice"], state["runs"]["X|1"]["pseudo_label_dice"] = {"t2": 0.2}, {"t2": 0.4}
    assert "| `X` | 0.300 | – | 2 |" in report.to_markdown(state)


def test_domain_shift_rows_come_from_the_registry(monkeypatch):
    """Source only, the oracle, every domain-generalisation trainer of the registry (one registered later
    appears), the GIN rows; --trainers restricts them; unregistered trainers are skipped with a reason."""
    _, ds, _ = _domain_shift()
    from nnzoo.trainers import list_trainers

    info = {i.name: i for i in list_trainers()}
    rows, skipped = ds.plan_rows(None, "2d")
    keys = [r.key for r in rows]
    assert keys[:2] == ["source only", "oracle"] and {"nnUNetTrainer+gin", "nnUNetTrainerBCP+gin"} <= set(keys)
    assert {n for n, i in info.items() if i.domain_generalisation} <= set(keys) and not skipped
    assert [r.data for r in rows if r.key == "oracle"] == ["all"]
    assert all(r.augment == "gin" for r in rows if r.key.endswith("+gin"))
    adapt = [r for r in rows if r.adapt]  # each --adapt method on the source-only and the DG model, after training
    for continual in (False, True):  # episodic, and continual per domain (the papers' protocol)
        mine = [r for r in adapt if r.continual == continual]
        assert sorted(r.adapt for r in mine if r.model_row == "source only") == sorted(ds.adapt_methods()) == \
            ["grata", "tent", "vptta"]
        assert sorted(r.adapt for r in mine if r.model_row == ds.DG_TTA_MODEL) == ["grata", "tent", "vptta"]
        assert all(r.key.endswith(" continual") == continual for r in mine)
    assert all((r.model_row, r.trainer) in {("source only", "nnUNetTrainer"), (ds.DG_TTA_MODEL, ds.DG_TTA_MODEL)}
               and r.data == "source" and r.model_row in keys for r in adapt) and len(adapt) == 12
    assert ds.streams_of({"b": "t2", "a": "t1", "c": "t2"}) == {"t1": ["a"], "t2": ["b", "c"]}
    ens = [r for r in rows if r.ensemble]  # the agreement-weighted ensemble of source only and the DG model
    assert [(r.key, r.ensemble) for r in ens] == [(ds.AGREEMENT_ROW, (("source only", "nnUNetTrainer"),
                                                                     (ds.DG_TTA_MODEL, ds.DG_TTA_MODEL)))]
    predict_only = adapt + ens  # after every trained row
    assert [r for r, _ in ds.plan_runs(rows, [0, 1])[-2 * len(predict_only):]] == predict_only + predict_only
    only = [r.key for r in ds.plan_rows(["source only+tent", f"{ds.DG_TTA_MODEL}+tent", ds.AGREEMENT_ROW], "2d")[0]]
    assert only == ["source only", "oracle", "source only+tent"]  # no TTA or ensemble row without its models' rows
    only = [r.key for r in ds.plan_rows([ds.DG_TTA_MODEL, ds.AGREEMENT_ROW], "2d")[0]]
    assert only == ["source only", "oracle", ds.DG_TTA_MODEL, ds.AGREEMENT_ROW]
    fake = dict(info, nnUNetTrainerNew=info["nnUNetTrainerDA5"].__class__(
        name="nnUNetTrainerNew", cls=object, description="x", domain_generalisation=True, dims=("3d",)))
    monkeypatch.setattr(ds, "registered", lambda: fake)
    extra = ds.plan_rows(["nnUNetTrainerC2SDG+gin"], "2d")[0]  # a trainer + --augment that is no default row
    assert [(r.key, r.trainer, r.augment) for r in extra[2:]] == [("nnUNetTrainerC2SDG+gin", "nnUNetTrainerC2SDG",
                                                                   "gin")]
    rows, skipped = ds.plan_rows(["nnUNetTrainerNew", "nnUNetTrainer+gin", "nnUNetTrainerFoo"], "2d")
    assert [r.key for r in rows] == ["source only", "oracle", "nnUNetTrainer+gin"]
    assert skipped == {"nnUNetTrainerNew": "nnUNetTrainerNew has no 2d configuration",
                       "nnUNetTrainerFoo": "nnUNetTrainerFoo is not a registered trainer (yet)"}
    runs = ds.plan_runs(rows, [0, 1])
    assert [(r.key, s) for r, s in runs[-4:]] == [("source only", 0), ("oracle", 0), ("source only", 1),
                                                   ("oracle", 1)]


def test_domain_shift_own_cohort_needs_domains(tmp_path):
    """--source: --source-domains is required; the domains file must name every case; a source domain must
    have training cases, some test case must be from a target domain, every training case needs its label
    (each a one-line error)."""
    _, ds, _ = _domain_shift()
    src = tmp_path / "c"
    for sub, names in (("images", "ab"), ("labels", "ab"), ("test_images", "xy"), ("test_labels", "xy")):
        (src / sub).mkdir(parents=True)
        for n in names:
            (src / sub / f"{n}.nii.gz").touch()
    with pytest.raises(SystemExit):
        ds.parse_args(["--source", str(src)])
    a = ds.parse_args(["--source", str(src), "--source-domains", "s1"])
    with pytest.raises(SystemExit, match="no domains.csv"):
        ds.make_source(a, tmp_path)
    (src / "domains.csv").write_text("case,domain\na,s1\nb,t\nx,s1\n")
    with pytest.raises(SystemExit, match="1 case\\(s\\) have no domain: y"):
        ds.make_source(a, tmp_path)
    (src / "domains.csv").write_text("case,domain\na,s1\nb,t\nx,s1\ny,t\n")
    _, domains, _ = ds.make_source(a, tmp_path)
    assert domains == {"a": "s1", "b": "t", "x": "s1", "y": "t"}
    with pytest.raises(SystemExit, match="--source-domains s2: no training case"):
        ds.make_source(ds.parse_args(["--source", str(src), "--source-domains", "s2"]), tmp_path)
    with pytest.raises(SystemExit, match="every test case is from a source domain"):
        ds.make_source(ds.parse_args(["--source", str(src), "--source-domains", "s1", "t"]), tmp_path)
    (src / "labels" / "b.nii.gz").unlink()
    with pytest.raises(SystemExit, match="no label of training case\\(s\\) b"):
        ds.make_source(a, tmp_path)


def test_domain_shift_scores_self_training_pseudo_labels(tmp_path):
    """A self-training run's pseudo-labels are scored per domain against the *all* dataset's segmentations (a
    case of another shape, a folder not yet complete and another model's folder give nothing)."""
    import json

    import blosc2

    from nnzoo.trainers.self_training import PSEUDO_DONE, pseudo_label_dir

    _, ds, report = _domain_shift()
    pre = tmp_path / "nnUNet_preprocessed"
    src_ds, all_ds = pre / "Dataset960_S", pre / "Dataset961_A"
    (all_ds / "nnUNetPlans_2d").mkdir(parents=True)
    (all_ds / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"2d": {"data_identifier":
                                                                                    "nnUNetPlans_2d"}}}))
    run = {"row": "nnUNetTrainerSelfTraining+gin", "trainer": "nnUNetTrainerSelfTraining", "augment": "gin", "seed": 0}
    model = tmp_path / "nnUNet_results" / ds._tag(run["row"], 0) / "Dataset960_S" / \
        "nnUNetTrainerSelfTraining__nnUNetPlans__2d_gin"
    model.mkdir(parents=True)
    pseudo = pseudo_label_dir(src_ds, model, "all")
    pseudo.mkdir(parents=True)
    ref = np.zeros((1, 1, 8, 8), np.int16)
    ref[..., :4, :4], ref[..., 4:, 4:] = 1, 2
    perfect, half = ref.copy(), ref.copy()
    half[..., 4:, 4:] = 0  # class 1 right, class 2 missed: mean foreground Dice 0.5
    for case, pred in (("a", perfect), ("b", half), ("c", perfect[..., :4])):
        blosc2.asarray(np.ascontiguousarray(ref), urlpath=str(all_ds / "nnUNetPlans_2d" / f"{case}_seg.b2nd"),
                       mode="w")
        np.save(pseudo / f"{case}.npy", pred)
    ids, groups = {"source": 960, "all": 961}, {"a": "t2", "b": "t2", "c": "flair"}
    assert ds.pseudo_label_dice(tmp_path, ids, run, "2d", groups) is None  # the folder is not complete yet
    (pseudo / PSEUDO_DONE).write_text("{}")
    assert ds.pseudo_label_dice(tmp_path, ids, run, "2d", groups) == pytest.approx({"t2": 0.75})
    assert ds.pseudo_label_dice(tmp_path, ids, {**run, "augment": None}, "2d", groups) is None  # another model


@pytest.mark.slow
def test_domain_shift_smoke_runs_every_row(tmp_path):
    """End to end (tiny, every row): the source dataset holds the source domains' cases labeled and the others
    unlabeled, with their domains; no test case is in a dataset; every row is scored on every test case."""
    import json

    _, ds, _ = _domain_shift()
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "domain_shift.py"), "--smoke", "--out", str(out),
                        "--jobs", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    state = json.loads((out / "domain_shift.json").read_text())
    rows, _ = ds.plan_rows(None, "2d")
    assert sorted(state["runs"]) == sorted(f"{row.key}|0" for row in rows)
    failed = {k: v["failed"] for k, v in state["runs"].items() if "failed" in v}
    assert not failed, failed
    test_cases = sorted(p.name.split(".")[0] for p in (out / "cohort" / "test_images").iterdir())
    for run in state["runs"].values():
        assert sorted(run["per_case"]) == test_cases
    raw = out / "nnUNet_raw"
    src = next(raw.glob("Dataset*_DomainShiftSource"))
    domains = json.loads((src / "domains.json").read_text())
    labeled = {p.name.split(".")[0] for p in (src / "labelsTr").iterdir()}
    unlabeled = {p.name.split("_0000")[0] for p in (src / "imagesUnlabeled").iterdir()}
    assert {domains[c] for c in labeled} == set(state["source_domains"])
    assert unlabeled and not {domains[c] for c in unlabeled} & set(state["source_domains"])
    for ds_dir in raw.iterdir():
        names = {p.name.split(".")[0].split("_0000")[0] for sub in ("imagesTr", "imagesUnlabeled")
                 if (ds_dir / sub).is_dir() for p in (ds_dir / sub).iterdir()}
        assert not names & set(test_cases), ds_dir.name
    md = (out / "domain_shift.md").read_text()
    assert "gap closed" in md and (out / "domain_shift.png").stat().st_size > 0
    # adaptation rows: every case's seconds and relative change recorded; continual rows ran one stream per domain
    for key, run in state["runs"].items():
        if run["adapt"]:
            assert sorted(run["adapt_change"]) == sorted(run["adapt_s"]) == test_cases, key
    cont = [k for k, v in state["runs"].items() if v.get("continual")]
    assert len(cont) == 6
    streams = out / "streams" / ds._tag(state["runs"][cont[0]]["row"], 0)
    assert {p.name for p in streams.iterdir()} == set(state["test_groups"].values())
    assert "How far test-time adaptation moved the model" in md and "--adapt-continual` (per domain)" in md
    # the agreement-weighted ensemble: every test case weighted, recorded beside its predictions
    weights = json.loads((out / "predictions" / ds._tag(ds.AGREEMENT_ROW, 0) / "ensemble_weights.json").read_text())
    assert sorted(weights["cases"]) == test_cases and weights["weighting"] == "agreement"
    assert all(0 <= c["agreement"] <= 1 for c in weights["cases"].values())
    assert "`--ensemble-weighting agreement`" in md
    # the adaptation sweep on the validation (training) cases of the finished folder, one setting
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "adapt_sweep.py"), "--out", str(out), "--models",
                        "source only", "--setting", "tent:STEPS=2"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    sweep = json.loads((out / "adapt_sweep.json").read_text())["runs"]["source only"]
    assert list(sweep) == ["plain", "tent STEPS=2"] and sweep["tent STEPS=2"]["change"] > 0
    assert set(sweep["plain"]["dice"]) == set(state["train_groups"].values())
    assert not set(state["test_groups"]) & {p.name.split(".")[0] for p in (out / "validation" / "validation_images").iterdir()}


def test_adapt_sweep_settings_report_and_errors(tmp_path):
    """Settings parse as METHOD[:NAME=VALUE,...]; the built-in grid starts each method at its official setting;
    the report shows each setting's change against plain prediction; a folder without a benchmark is refused."""
    from benchmarks import adapt_sweep

    assert adapt_sweep.parse_setting("vptta:PROMPT_ALPHA=0.25,ITERS=10") == ("vptta", {"PROMPT_ALPHA": "0.25",
                                                                                       "ITERS": "10"})
    assert adapt_sweep.parse_setting("tent") == ("tent", {})
    with pytest.raises(SystemExit, match="'LR' is not NAME=VALUE"):
        adapt_sweep.parse_setting("tent:LR")
    assert all(grid[0] == {} for grid in adapt_sweep.GRID.values())
    a = adapt_sweep.parse_args(["--out", str(tmp_path)])
    assert a.settings[0] == ("tent", {}) and len(a.settings) == sum(map(len, adapt_sweep.GRID.values()))
    result = {"seed": 0, "source_domains": ["t1"], "n_cases": 4, "date": "d", "machine": "m", "command": "c",
              "runs": {"source only": {"plain": {"dice": {"t2": 0.2, "t1": 0.9}, "change": None, "seconds": 5},
                                       "tent LR=0.1": {"dice": {"t2": 0.5, "t1": 0.8}, "change": 0.3, "seconds": 9}}}}
    md = adapt_sweep.to_markdown(result)
    assert "| setting | t1 (seen in training) | t2 |" in md
    assert "| tent LR=0.1 | 0.800 (-0.100) | 0.500 (+0.300) | 3.00e-01 | 9 |" in md
    with pytest.raises(SystemExit, match="no domain_shift.json"):
        adapt_sweep.main(["--out", str(tmp_path)])


def test_benchmark_state_adds_seeds_but_refuses_other_settings(tmp_path):
    """A later call with more seeds resumes the same JSON (runs are keyed by seed); other settings are refused."""
    from benchmarks import cohort

    path = tmp_path / "s.json"
    state = cohort.load_state(path, {"config": "2d", "seeds": [0], "epochs": 2})
    cohort.save_state(path, state)
    assert cohort.load_state(path, {"config": "2d", "seeds": [1, 2], "epochs": 2})["settings"]["seeds"] == [0, 1, 2]
    with pytest.raises(SystemExit, match="other settings"):
        cohort.load_state(path, {"config": "2d", "seeds": [0], "epochs": 3})
