"""``benchmarks/domain_shift.py`` and its report: rows from the registry, gaps and paired differences, own cohorts,
pseudo-label scores, the smoke run of every row (and the adaptation sweep on it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _domain_shift():
    from benchmarks import cohort, domain_shift, domain_shift_report

    return cohort, domain_shift, domain_shift_report


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
    adapt = [r for r in rows if r.adapt and not r.ensemble]  # each --adapt method on source only and the DG model
    for continual in (False, True):  # episodic, and continual per domain (the papers' protocol)
        mine = [r for r in adapt if r.continual == continual]
        assert sorted(r.adapt for r in mine if r.model_row == "source only") == sorted(ds.adapt_methods()) == \
            ["grata", "tent", "vptta"]
        assert sorted(r.adapt for r in mine if r.model_row == ds.DG_TTA_MODEL) == ["grata", "tent", "vptta"]
        assert all(r.key.endswith(" continual") == continual for r in mine)
    assert all((r.model_row, r.trainer) in {("source only", "nnUNetTrainer"), (ds.DG_TTA_MODEL, ds.DG_TTA_MODEL)}
               and r.data == "source" and r.model_row in keys for r in adapt) and len(adapt) == 12
    assert ds.streams_of({"b": "t2", "a": "t1", "c": "t2"}) == {"t1": ["a"], "t2": ["b", "c"]}
    ens = [r for r in rows if r.ensemble]  # the agreement-weighted ensemble of source only and the DG model, alone
    members = (("source only", "nnUNetTrainer"), (ds.DG_TTA_MODEL, ds.DG_TTA_MODEL))  # and with each --adapt method
    assert [(r.key, r.ensemble, r.adapt, r.continual) for r in ens] == [(ds.AGREEMENT_ROW, members, None, False)] + [
        (f"{ds.AGREEMENT_ROW}+{m}", members, m, False) for m in ["tent", "vptta", "grata"]]
    assert all(r.model_row == ds.AGREEMENT_ROW for r in ens[1:])
    predict_only = adapt + ens  # after every trained row
    assert [r for r, _ in ds.plan_runs(rows, [0, 1])[-2 * len(predict_only):]] == predict_only + predict_only
    only = [r.key for r in ds.plan_rows(["source only+tent", f"{ds.DG_TTA_MODEL}+tent", ds.AGREEMENT_ROW], "2d")[0]]
    assert only == ["source only", "oracle", "source only+tent"]  # no TTA or ensemble row without its models' rows
    only = [r.key for r in ds.plan_rows([ds.DG_TTA_MODEL, ds.AGREEMENT_ROW], "2d")[0]]
    assert only == ["source only", "oracle", ds.DG_TTA_MODEL, ds.AGREEMENT_ROW]
    only = [r.key for r in ds.plan_rows([ds.DG_TTA_MODEL, f"{ds.AGREEMENT_ROW}+tent"], "2d")[0]]
    assert only == ["source only", "oracle", ds.DG_TTA_MODEL]  # not without the ensemble's own row
    # the GPU check's selection: every TTA and ensemble row and the models they predict with, no other trained row
    gpu = ds.plan_rows(ds.adaptation_rows("2d"), "2d")[0]
    assert [r.key for r in gpu] == ["source only", "oracle", ds.DG_TTA_MODEL, *(r.key for r in predict_only)]
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
    assert "`--ensemble-weighting agreement`" in md and "+ `--adapt tent` (each member adapted)" in md
    # the adaptation sweep on the validation (training) cases of the finished folder, one setting
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "adapt_sweep.py"), "--out", str(out), "--models",
                        "source only", "--setting", "tent:STEPS=2"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    sweep = json.loads((out / "adapt_sweep.json").read_text())["runs"]["source only"]
    assert list(sweep) == ["plain", "tent STEPS=2"] and sweep["tent STEPS=2"]["change"] > 0
    assert set(sweep["plain"]["dice"]) == set(state["train_groups"].values())
    assert not set(state["test_groups"]) & {p.name.split(".")[0] for p in (out / "validation" / "validation_images").iterdir()}
