"""The benchmark scripts still run (tiny settings): figures come from them, so they must not rot.

These are smoke runs, not timings: speed targets are measured by running the scripts themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    pl = tmp_path / "Dataset951_Low" / "pseudo_labels" / "T__nnUNetPlans__2d" / "fold_all"
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
    state["pseudo_labels"] = scores
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
