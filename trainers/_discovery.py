"""Module discovery and "did you mean" hints shared by the trainer and planner registries."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterable

__all__ = ["import_submodules", "did_you_mean"]


def import_submodules(package: str, skip: Iterable[str] = ()) -> list[str]:
    """Import every direct submodule of ``package`` (so that registration decorators in them run).

    Args:
        package: dotted name of the package (e.g. ``"nnzoo.trainers"``).
        skip: submodule names not to import (modules whose name starts with ``_`` are never imported).

    Returns:
        The dotted names of the imported modules, in discovery order.
    """
    skip = set(skip)
    pkg = importlib.import_module(package)
    names = [f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
             if not m.name.startswith("_") and m.name not in skip]
    for name in names:
        importlib.import_module(name)
    return names


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" Did you mean 'A' or 'B'?"`` for the (up to 3) names of ``known`` closest to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
