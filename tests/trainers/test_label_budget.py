"""Tests of the label budget (``--labeled N``): reproducible labeled subsets of a fold."""

from __future__ import annotations

import json
import os

import pytest
from helpers import make_trainer, tiny_plans
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnzoo.trainers.base import nnzoo_trainer_class
from nnzoo.trainers.label_budget import (
    LABELED_SPLIT_FILE,
    LabelBudgetMixin,
    choose_labeled_cases,
    resolve_labeled_budget,
)

KEYS = [f"case{i:03d}" for i in range(10)]


class _FakeTrainer:
    """Stands in for an nnU-Net trainer: do_split returns a fixed split."""

    def __init__(self, tr, val, fold, output_folder):
        self._tr, self._val, self.fold, self.output_folder = tr, val, fold, str(output_folder)
        self.local_rank = 0
        self.log = []

    def do_split(self):
        return list(self._tr), list(self._val)

    def print_to_log_file(self, *args, **kwargs):
        self.log.append(" ".join(str(a) for a in args))


class _Budgeted(LabelBudgetMixin, _FakeTrainer):
    pass


def _split(tmp_path, budget, tr=KEYS[:8], val=KEYS[8:], fold=0, sub="a"):
    out = tmp_path / sub
    out.mkdir(exist_ok=True)
    t = _Budgeted(tr, val, fold, out)
    t.labeled_budget = budget
    labeled, val_keys = t.do_split()
    return t, labeled, val_keys, out


def test_no_budget_keeps_everything(tmp_path):
    t, labeled, val, out = _split(tmp_path, None)
    assert labeled == KEYS[:8] and val == KEYS[8:]
    assert t.unlabeled_train_keys == []
    assert not (out / LABELED_SPLIT_FILE).exists()


def test_int_budget_is_partition_written_down_and_validation_untouched(tmp_path):
    t, labeled, val, out = _split(tmp_path, 3)
    assert len(labeled) == 3 and set(labeled) <= set(KEYS[:8])
    assert sorted(labeled + t.unlabeled_train_keys) == KEYS[:8]
    assert not set(labeled) & set(t.unlabeled_train_keys)
    assert val == KEYS[8:]
    record = json.loads((out / LABELED_SPLIT_FILE).read_text())
    assert record["labeled"] == labeled and record["unlabeled"] == t.unlabeled_train_keys
    assert record["budget"] == 3 and record["num_labeled"] == 3 and isinstance(record["seed"], int)


def test_choice_is_reproducible_and_order_independent(tmp_path):
    _, a, _, _ = _split(tmp_path, 3, sub="a")
    _, b, _, _ = _split(tmp_path, 3, tr=list(reversed(KEYS[:8])), sub="b")
    assert a == b
    # the seed is a fixed function of fold and N (not of the process or machine)
    assert choose_labeled_cases(KEYS[:8], 3, 0) == choose_labeled_cases(KEYS[:8], 3, 0)
    assert choose_labeled_cases(KEYS[:8], 3, 0)[1] != choose_labeled_cases(KEYS[:8], 3, 1)[1]
    # different folds draw different subsets (for this key set; checked over several folds)
    draws = {tuple(choose_labeled_cases(KEYS, 3, f)[0]) for f in range(5)}
    assert len(draws) > 1


def test_fraction_budget(tmp_path):
    _, labeled, _, _ = _split(tmp_path, 0.5, sub="a")
    assert len(labeled) == 4
    _, labeled, _, _ = _split(tmp_path, 0.01, sub="b")
    assert len(labeled) == 1  # at least one case
    assert resolve_labeled_budget(0.25, 8) == 2


@pytest.mark.parametrize("budget", [0, -1, 9, 1.5, -0.2, True, "3"])
def test_invalid_budgets_raise(tmp_path, budget):
    with pytest.raises(ValueError):
        _split(tmp_path, budget)


def test_too_large_budget_message(tmp_path):
    with pytest.raises(ValueError, match="only 8 training cases"):
        _split(tmp_path, 20)


def test_split_file_is_read_back(tmp_path):
    _, first, _, out = _split(tmp_path, 3)
    # tamper the record: the trainer must use what is written, not redraw
    record = json.loads((out / LABELED_SPLIT_FILE).read_text())
    record["labeled"], record["unlabeled"] = KEYS[:3], KEYS[3:8]
    (out / LABELED_SPLIT_FILE).write_text(json.dumps(record))
    t, labeled, _, _ = _split(tmp_path, 3)
    assert labeled == KEYS[:3] and t.unlabeled_train_keys == KEYS[3:8]
    t, labeled, _, _ = _split(tmp_path, None)  # resume without repeating the budget
    assert labeled == KEYS[:3]
    with pytest.raises(ValueError, match="budget"):
        _split(tmp_path, 4)
    with pytest.raises(ValueError, match="does not match"):
        _split(tmp_path, 3, tr=KEYS[:7])


def test_fold_all(tmp_path):
    t, labeled, val, _ = _split(tmp_path, 2, tr=KEYS, val=KEYS, fold="all")
    assert len(labeled) == 2 and val == KEYS
    assert len(t.unlabeled_train_keys) == 8


def _fake_preprocessed(tmp_path, n=10):
    folder = tmp_path / "nnUNet_preprocessed" / "Dataset901_Tiny3d" / "nnUNetPlans_3d_fullres"
    folder.mkdir(parents=True)
    for k in KEYS[:n]:
        (folder / f"{k}.b2nd").write_bytes(b"")
        (folder / f"{k}.pkl").write_bytes(b"")
    return folder


def test_mixed_into_nnunet_trainer(tmp_path):
    """A supervised nnU-Net trainer with the mixin trains on N labeled cases of the real split."""
    cls = nnzoo_trainer_class(nnUNetTrainer)
    assert cls.__name__ == "nnUNetTrainer" and issubclass(cls, LabelBudgetMixin)
    assert nnzoo_trainer_class(cls) is cls
    t = make_trainer(cls, tmp_path, plans=tiny_plans())
    _fake_preprocessed(tmp_path)
    t.labeled_budget = 3
    labeled, val = t.do_split()
    plain = make_trainer(nnUNetTrainer, tmp_path, plans=tiny_plans())
    tr_all, val_all = plain.do_split()
    assert val == val_all and len(labeled) == 3 and set(labeled) <= set(tr_all)
    assert sorted(labeled + t.unlabeled_train_keys) == sorted(tr_all)
    assert os.path.isfile(os.path.join(t.output_folder, LABELED_SPLIT_FILE))
    t2 = make_trainer(cls, tmp_path, plans=tiny_plans(), fold="all")
    t2.labeled_budget = 0.3
    labeled, val = t2.do_split()
    assert len(labeled) == 3 and len(val) == 10




