"""The benchmark scripts still run (tiny settings): figures come from them, so they must not rot.

These are smoke runs, not timings: speed targets are measured by running the scripts themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nnzoo.trainers import list_trainers

REPO = Path(__file__).resolve().parents[2]
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
