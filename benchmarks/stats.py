"""Statistics and writing shared by the benchmarks' reports (``low_label_report.py``, ``domain_shift_report.py``,
``adapt_sweep.py``): a paired two-way bootstrap interval over seeds and test cases, the per-case score matrices it
reads, Markdown tables and figures.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["bootstrap_interval", "run_case_scores", "score_matrix", "markdown_table", "save_figure"]


# ---------------------------------------------------------------------------------------- statistics
def bootstrap_interval(*arrays: np.ndarray, statistic: Callable[..., np.ndarray] | None = None,
                       confidence: float = 0.95, n_boot: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """A statistic of per-seed, per-test-case scores and its percentile bootstrap interval.

    Each bootstrap sample draws seeds and test cases with replacement, independently (a two-way
    bootstrap: seed-to-seed and case-to-case variation both enter the interval), and applies the
    same draw to every array, so paired arrays stay paired (e.g. a method and the baseline of the
    same seed on the same case).

    Args:
        arrays: scores of shape ``(seeds, cases)``, all alike; NaN entries are left out of means.
        statistic: ``f(*arrays) -> values`` reducing the last two axes (it is called with a leading
            bootstrap axis); default: the mean of the first array.
        confidence: coverage of the interval.
        n_boot: bootstrap samples.
        seed: seed of the draws.

    Returns:
        ``(estimate on the data, lower, upper)``; with one seed and one case the interval is the estimate.

    Raises:
        ValueError: arrays of different or non-2D shapes.
    """
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    if not arrays or arrays[0].ndim != 2 or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"expected arrays of one (seeds, cases) shape, got {[a.shape for a in arrays]}")
    stat = statistic or (lambda x, *_: np.nanmean(x, axis=(-2, -1)))
    est = float(np.asarray(stat(*(a[None] for a in arrays))).reshape(-1)[0])
    n_s, n_c = arrays[0].shape
    rng = np.random.default_rng(seed)
    si = rng.integers(0, n_s, (n_boot, n_s))[:, :, None]
    ci = rng.integers(0, n_c, (n_boot, n_c))[:, None, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw of NaN cases only: NaN, dropped below
        boot = np.asarray(stat(*(a[si, ci] for a in arrays)), dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return est, est, est
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return est, float(lo), float(hi)


def run_case_scores(run: dict) -> dict[str, float]:
    """``{test case file: mean foreground Dice}`` of a run's ``per_case`` scores (classes absent from reference and
    prediction, NaN, left out; a case with none left is NaN)."""
    out = {}
    for case, dice in run.get("per_case", {}).items():
        v = [float(x) for x in dice.values() if x is not None and not np.isnan(float(x))]
        out[case] = float(np.mean(v)) if v else float("nan")
    return out


def score_matrix(scores: dict[int, dict[str, float]], seeds: Sequence[int], cases: Sequence[str]) -> np.ndarray:
    """``(seeds, cases)`` array of per-case scores, ``scores[seed][case]`` (NaN where missing), the input of
    :func:`bootstrap_interval`."""
    return np.array([[scores[s].get(c, np.nan) for c in cases] for s in seeds], dtype=np.float64).reshape(
        len(seeds), len(cases))


# ------------------------------------------------------------------------------------------- writing
def markdown_table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Lines of a Markdown table."""
    def line(cells: Sequence[object]) -> str:
        return "|" + "".join(f" {c} |" if str(c) else " |" for c in cells)

    return [line(head), "|" + "---|" * len(head), *(line(r) for r in rows)]


def save_figure(fig, png: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure (laid out tightly) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(png, dpi=dpi)
    plt.close(fig)
