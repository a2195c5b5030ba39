"""Test-time adaptation at prediction time (``nnzoo predict --adapt``): TENT, VPTTA, GraTa.

Plain classes on the predictor's ``nn.Module`` and tensors, no trainer: a method adapts one fold's network on
the sliding-window tiles of one case (:class:`~.base.TestTimeAdapter`). Hyperparameters are UPPER_CASE class
attributes with the official values, overridable as ``--adapt-hparam NAME=VALUE``.
"""

from __future__ import annotations

from .base import NormAffineAdapter, TestTimeAdapter, norm_affine_parameters, norm_layers
from .grata import GraTa
from .source_stats import FILE_NAME as SOURCE_STATS_FILE
from .source_stats import (
    load_source_statistics,
    random_patches,
    record_source_statistics,
    save_source_statistics,
)
from .tent import Tent
from .vptta import VPTTA

__all__ = ["METHODS", "adapter_class", "parse_adapt_hparams", "TestTimeAdapter", "NormAffineAdapter", "Tent",
           "VPTTA", "GraTa", "norm_layers", "norm_affine_parameters", "SOURCE_STATS_FILE", "record_source_statistics",
           "random_patches", "save_source_statistics", "load_source_statistics"]

#: ``--adapt`` values
METHODS: dict[str, type[TestTimeAdapter]] = {"tent": Tent, "vptta": VPTTA, "grata": GraTa}


def adapter_class(name: str) -> type[TestTimeAdapter]:
    """The method of an ``--adapt`` value.

    Raises:
        KeyError: an unknown name (the message lists the methods).
    """
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise KeyError(f"--adapt {name}: one of {', '.join(METHODS)}") from None


def parse_adapt_hparams(name: str, items: list[str] | None) -> dict:
    """Typed hyperparameter overrides of method ``name`` from ``["NAME=VALUE", ...]``.

    Raises:
        KeyError: unknown method or hyperparameter name (the message lists the valid ones).
        ValueError: an item without ``=``, a repeated name, or a value of the wrong type.
    """
    cls = adapter_class(name)
    raw: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--adapt-hparam {item!r}: expected NAME=VALUE")
        key = key.strip()
        if key in raw:
            raise ValueError(f"--adapt-hparam {key} given twice")
        raw[key] = value.strip()
    return cls.parse(raw)
