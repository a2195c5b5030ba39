"""``benchmarks/low_label.py`` and its report: run plan, labeled-case choice, variants, statistics, smoke run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _low_label():
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
