"""``benchmarks/adapt_sweep.py``: settings, grid, report and errors (its run: the domain-shift smoke test)."""

from __future__ import annotations

import pytest


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
