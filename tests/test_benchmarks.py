"""The benchmark scripts still run (tiny settings): figures come from them, so they must not rot.

These are smoke runs, not timings: speed targets are measured by running the scripts themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "run_all": ["--patch", "16", "16", "16", "--rounds", "1", "--steps", "1", "--warmup", "0", "--threads", "1",
                "--workdir", "{tmp}", "--output", "{tmp}/out"],
    "bench_boundary_aware": ["--device", "cpu", "--patch", "16", "16", "16", "--stages", "3", "--rounds", "1",
                             "--steps", "1", "--warmup", "0", "--threads", "1"],
    "bench_cotr": ["--device", "cpu", "--patch", "16,32,32", "--steps", "1", "--warmup", "0"],
    "bench_bcp": ["--device", "cpu", "--patch", "16", "16", "16", "--steps", "1", "--warmup", "0"],
    "bench_mcnet": ["--device", "cpu", "--patch", "16", "16", "16", "--steps", "1", "--warmup", "0"],
    "bench_shape_prior": ["--device", "cpu", "--patch", "16", "16", "16", "--steps", "1", "--warmup", "0",
                          "--critic-steps", "1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_script_runs(script, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in RUNS[script]]
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), *args], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nnUNetTrainer" in r.stdout and ("x" in r.stdout or "×" in r.stdout)
