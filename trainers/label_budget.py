"""Low-label experiments on a fully labeled dataset: keep N labeled training cases of a fold.

:class:`LabelBudgetMixin` turns any nnU-Net trainer into one that trains on a reproducible subset
of its fold's training cases (``labeled_budget``); the fold's other training cases become
unlabeled (``unlabeled_train_keys``: semi-supervised trainers read their images only, supervised
trainers ignore them). Validation always uses the fold's full validation set, so supervised and
semi-supervised runs with the same budget are comparable.
"""

from __future__ import annotations

import json
import math
import os
import zlib

import numpy as np

from .files import write_json_atomic

__all__ = ["LabelBudgetMixin", "LABELED_SPLIT_FILE", "resolve_labeled_budget", "choose_labeled_cases"]

LABELED_SPLIT_FILE = "labeled_split.json"


def resolve_labeled_budget(budget: int | float, num_train: int) -> int:
    """Number of labeled cases a budget means for a fold.

    Args:
        budget: an int N >= 1 (N cases) or a float in (0, 1) (that fraction, rounded, at least 1).
        num_train: number of training cases of the fold.

    Returns:
        N, with ``1 <= N <= num_train``.

    Raises:
        ValueError: the budget is < 1 (int), outside (0, 1) (float), or larger than ``num_train``.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise ValueError(f"labeled budget must be an int >= 1 or a fraction in (0, 1), got {budget!r}")
    if isinstance(budget, (float, np.floating)) and not float(budget).is_integer():
        if not 0.0 < budget < 1.0:
            raise ValueError(f"a fractional labeled budget must lie in (0, 1), got {budget}")
        n = max(1, int(math.floor(budget * num_train + 0.5)))
    else:
        n = int(budget)
        if n < 1:
            raise ValueError(f"labeled budget must be at least 1 case, got {budget}")
    if n > num_train:
        raise ValueError(f"labeled budget {budget} asks for {n} labeled cases but the fold has only "
                         f"{num_train} training cases")
    return n


def labeled_split_seed(fold: int | str, num_labeled: int, seed: int | None = None) -> int:
    """Seed of the labeled subset: a fixed function of fold, number of labeled cases and the run's
    seed (crc32, identical on every machine and Python version)."""
    extra = "" if seed is None else f":seed={int(seed)}"
    return zlib.crc32(f"nnzoo-labeled-split:fold={fold}:n={num_labeled}{extra}".encode())


def choose_labeled_cases(train_keys: list[str], num_labeled: int, fold: int | str,
                         seed: int | None = None) -> tuple[list[str], int]:
    """Reproducibly choose ``num_labeled`` of ``train_keys``.

    Args:
        train_keys: the fold's training case identifiers (order does not matter).
        num_labeled: how many to keep labeled.
        fold: fold number or "all" (part of the seed).
        seed: the run's seed (``nnzoo train --seed``); None: the choice depends on fold and count only.

    Returns:
        ``(sorted labeled keys, seed)``.
    """
    seed = labeled_split_seed(fold, num_labeled, seed)
    keys = sorted(train_keys)
    idx = np.random.RandomState(seed).permutation(len(keys))[:num_labeled]
    return sorted(keys[i] for i in idx), seed


class LabelBudgetMixin:
    """Mixin for any nnU-Net trainer: train on ``labeled_budget`` labeled cases of the fold.

    Every nnzoo trainer has it (:class:`~nnzoo.trainers.base.NnzooTrainer`);
    :func:`nnzoo.trainers.base.nnzoo_trainer_class` puts it in front of any other trainer ``nnzoo train``
    runs. Set ``labeled_budget`` on the instance before ``run_training``.

    Attributes:
        labeled_budget: None (every training case labeled), an int N (N cases) or a float in
            (0, 1) (that fraction of the fold's training cases, at least one).
        unlabeled_train_keys: after :meth:`do_split`, the fold's training cases not chosen as
            labeled (their label files must never be read).

    The choice is seeded by fold and number of labeled cases (independent of machine and of the
    order nnU-Net lists cases in) and written to ``<output_folder>/labeled_split.json`` with
    keys ``labeled``, ``unlabeled``, ``budget``, ``num_labeled``, ``seed``, ``fold``. When the
    file exists (``--continue``, validation-only runs) it is read back instead; a different
    explicit budget is an error. Fold ``all`` works the same way (validation = all cases).
    """

    labeled_budget: int | float | None = None
    labeled_seed: int | None = None
    unlabeled_train_keys: list[str] = []

    def do_split(self):
        tr_keys, val_keys = super().do_split()  # type: ignore[misc]
        tr_keys = list(tr_keys)
        path = os.path.join(self.output_folder, LABELED_SPLIT_FILE) if self.output_folder else None
        if path is not None and os.path.isfile(path):
            labeled, unlabeled = self._read_labeled_split(path, tr_keys)
        elif self.labeled_budget is None:
            self.unlabeled_train_keys = []
            return tr_keys, val_keys
        else:
            n = resolve_labeled_budget(self.labeled_budget, len(tr_keys))
            labeled, seed = choose_labeled_cases(tr_keys, n, self.fold, self.labeled_seed)
            chosen = set(labeled)
            unlabeled = sorted(k for k in tr_keys if k not in chosen)
            if path is not None and getattr(self, "local_rank", 0) == 0:
                record = {"labeled": labeled, "unlabeled": unlabeled, "budget": self.labeled_budget,
                          "num_labeled": n, "seed": seed, "fold": self.fold}
                write_json_atomic(path, record)
        self.unlabeled_train_keys = unlabeled
        self.print_to_log_file(f"Label budget: {len(labeled)} labeled and {len(unlabeled)} unlabeled training "
                               f"cases of {len(tr_keys)}; validation on all {len(val_keys)} validation cases")
        return labeled, val_keys

    def _read_labeled_split(self, path: str, tr_keys: list[str]) -> tuple[list[str], list[str]]:
        with open(path) as f:
            record = json.load(f)
        if self.labeled_budget is not None and record.get("budget") != self.labeled_budget:
            raise ValueError(f"{path} records a labeled budget of {record.get('budget')!r} but "
                             f"{self.labeled_budget!r} was requested: continue with the same budget, or train "
                             f"into another output folder")
        labeled, unlabeled = list(record["labeled"]), list(record["unlabeled"])
        if set(labeled) | set(unlabeled) != set(tr_keys):
            raise ValueError(f"{path} does not match this fold's training cases (was the split changed?)")
        self.print_to_log_file(f"Using the labeled split recorded in {path}")
        return labeled, unlabeled

