"""nnzoo's trainers: published segmentation methods as nnU-Net trainer variants.

Use :func:`list_trainers` and :func:`get_trainer_class`; trainer modules register themselves
with :func:`register_trainer` and are imported on the first registry query.
"""

from __future__ import annotations

from .registry import (
    TrainerInfo,
    UnknownTrainerError,
    find_trainer_info,
    get_trainer_class,
    get_trainer_info,
    list_trainers,
    register_trainer,
    resolve_trainer_class,
)

__all__ = [
    "TrainerInfo",
    "UnknownTrainerError",
    "find_trainer_info",
    "get_trainer_class",
    "get_trainer_info",
    "list_trainers",
    "register_trainer",
    "resolve_trainer_class",
]
