"""``benchmarks/cohort.py``: the resumable state and the failure line of a run."""

from __future__ import annotations

import pytest


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


def test_benchmark_state_adds_seeds_but_refuses_other_settings(tmp_path):
    """A later call with more seeds resumes the same JSON (runs are keyed by seed); other settings are refused."""
    from benchmarks import cohort

    path = tmp_path / "s.json"
    state = cohort.load_state(path, {"config": "2d", "seeds": [0], "epochs": 2})
    cohort.save_state(path, state)
    assert cohort.load_state(path, {"config": "2d", "seeds": [1, 2], "epochs": 2})["settings"]["seeds"] == [0, 1, 2]
    with pytest.raises(SystemExit, match="other settings"):
        cohort.load_state(path, {"config": "2d", "seeds": [0], "epochs": 3})


def test_failure_reason_is_the_error_line():
    from benchmarks import cohort

    log = "loading...\nTraceback (most recent call last):\n  File x\nValueError: DCAC needs two domains\n\n"
    assert cohort.failure_reason(log) == "ValueError: DCAC needs two domains"
    assert cohort.failure_reason("a\nerror: --augment gin: unknown\n") == "error: --augment gin: unknown"
    assert cohort.failure_reason("") == "no output"


def test_member_records_merge_an_ensembles_adaptation_record():
    """An ensemble's adaptation.json (one record per member): seconds per case add up, the relative change per case
    is the members' mean; a single model's record is kept as it is."""
    from benchmarks import cohort

    single = {"seconds_per_case": {"a": 1.0}, "relative_change_per_case": {"a": 0.1}, "mean_relative_change": 0.1}
    assert cohort.member_records(single) == [single]
    ens = {"method": "tent", "members": [
        {"model": "m1", "seconds_per_case": {"a": 1.0, "b": 2.0}, "relative_change_per_case": {"a": 0.1, "b": 0.3},
         "mean_relative_change": 0.2},
        {"model": "m2", "seconds_per_case": {"a": 0.5, "b": 0.5}, "relative_change_per_case": {"a": 0.3, "b": 0.1},
         "mean_relative_change": 0.4}]}
    (merged,) = cohort.member_records(ens)
    assert merged["seconds_per_case"] == {"a": 1.5, "b": 2.5}
    assert merged["relative_change_per_case"] == pytest.approx({"a": 0.2, "b": 0.2})
    assert merged["mean_relative_change"] == pytest.approx(0.3)
