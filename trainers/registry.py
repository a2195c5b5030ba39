"""Trainer registry: every method nnzoo offers is a registered nnU-Net trainer class.

Modelled on timm's model registry: a decorator registers a class together with the facts a
user needs to choose it (description, paper, official code, dimensionality, whether it consumes
unlabeled images, which planner plans for it, which benchmark script measures it), declared once
in that entry. :func:`list_trainers` lists them, :func:`get_trainer_class` resolves a name with a
"did you mean" error for typos; ``nnzoo list-trainers``, the README's methods table, the
benchmarks and the tests read the entries.

Trainer modules are the ``.py`` files of the ``nnzoo.trainers`` package (except the support
modules listed in ``_NOT_TRAINER_MODULES``); they are imported the first time the registry is
queried, so a new trainer module needs no import anywhere else. A method is more than that module,
though: its network under ``trainers/networks/``, often a planner under ``plans/``, tests and a
benchmark entry (see "Adding a method" in the README).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ._discovery import did_you_mean, import_submodules

__all__ = [
    "TrainerInfo",
    "UnknownTrainerError",
    "register_trainer",
    "list_trainers",
    "get_trainer_info",
    "get_trainer_class",
    "resolve_trainer_class",
    "find_trainer_info",
]

# modules of nnzoo.trainers that hold no trainer and are not imported by discovery
_NOT_TRAINER_MODULES = {"registry", "base", "networks", "nnunet_ext", "semisup", "label_budget", "nnunet_compat",
                        "unlabeled_data", "domains", "augment", "adapt"}


@dataclass(frozen=True)
class TrainerInfo:
    """What the registry knows about one trainer.

    Attributes:
        name: class name, which is also the name nnU-Net writes into result folders and checkpoints.
        cls: the trainer class (a subclass of nnU-Net's ``nnUNetTrainer``).
        description: one line for ``nnzoo list-trainers``.
        paper: citation of the method's paper.
        dims: configurations families the trainer supports, a subset of ``("2d", "3d")``.
        semi_supervised: True if the trainer consumes unlabeled images.
        planner: name of the planner whose plans the trainer uses by default (None: nnU-Net's
            ``ExperimentPlanner``, plans ``nnUNetPlans``); its plans name is that planner's
            ``PLANS_NAME``.
        official_code: where the method's official code is published.
        benchmark: the script in ``benchmarks/`` that measures its training step.
        quick_hparams: hyperparameter overrides (``--hparam``) that shorten a fixed once-per-run cost
            of the method (not its training steps) for smoke tests and short benchmarks, which
            report them; empty when the method has none.
        domain_generalisation: True if the method is meant to hold up on scanners or contrasts it was
            not trained on (a row of ``benchmarks/domain_shift.py``).
        needs_domains: True if the trainer reads each case's domain (``domains.json``, see
            :mod:`nnzoo.trainers.domains`) and refuses to train without it.
    """

    name: str
    cls: type
    description: str
    paper: str = ""
    dims: tuple[str, ...] = ("2d", "3d")
    semi_supervised: bool = False
    planner: str | None = None
    official_code: str = ""
    benchmark: str = "bench_train_step"
    quick_hparams: dict = field(default_factory=dict)
    domain_generalisation: bool = False
    needs_domains: bool = False


class UnknownTrainerError(KeyError):
    """Raised for a trainer name that is neither registered nor an nnU-Net trainer."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


_REGISTRY: dict[str, TrainerInfo] = {}
_discovered = False


def register_trainer(
    cls: type | None = None,
    *,
    description: str | None = None,
    paper: str = "",
    dims: tuple[str, ...] = ("2d", "3d"),
    semi_supervised: bool = False,
    planner: str | None = None,
    official_code: str = "",
    benchmark: str = "bench_train_step",
    quick_hparams: dict | None = None,
    domain_generalisation: bool = False,
    needs_domains: bool = False,
) -> Callable[[type], type] | type:
    """Register a trainer class, as a decorator (``@register_trainer(...)``) or a plain call.

    Args:
        cls: the class, when used as ``register_trainer(cls, ...)`` or bare ``@register_trainer``.
        description: one line; defaults to the first line of the class docstring.
        paper: citation of the method's paper.
        dims: supported configuration families, subset of ``("2d", "3d")``.
        semi_supervised: whether the trainer uses unlabeled images.
        planner: name of the planner whose plans the trainer uses by default (None: nnU-Net's).
        official_code: URL of the official code.
        benchmark: module name of its benchmark script in ``benchmarks/``.
        quick_hparams: see :class:`TrainerInfo`; every key must be an UPPER_CASE attribute of the class.
        domain_generalisation: see :class:`TrainerInfo`.
        needs_domains: see :class:`TrainerInfo`.

    Returns:
        The class unchanged (decorator use) or the decorator.

    Raises:
        ValueError: a different class is already registered under the same name, or ``dims``
            holds something other than "2d"/"3d", or a ``quick_hparams`` key is not a hyperparameter
            of the class.
    """
    bad = set(dims) - {"2d", "3d"}
    if bad:
        raise ValueError(f"dims must be a subset of ('2d', '3d'), got {dims}")

    def _register(klass: type) -> type:
        name = klass.__name__
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not klass:
            raise ValueError(f"a trainer named {name!r} is already registered ({existing.cls.__module__})")
        unknown = [k for k in (quick_hparams or {}) if not (k.isupper() and hasattr(klass, k))]
        if unknown:
            raise ValueError(f"quick_hparams of {name}: {unknown} are not hyperparameters of the class")
        doc = (klass.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = TrainerInfo(
            name=name,
            cls=klass,
            description=description or (doc[0] if doc else name),
            paper=paper,
            dims=tuple(dims),
            semi_supervised=semi_supervised,
            planner=planner,
            official_code=official_code,
            benchmark=benchmark,
            quick_hparams=dict(quick_hparams or {}),
            domain_generalisation=domain_generalisation,
            needs_domains=needs_domains,
        )
        return klass

    if cls is not None:
        return _register(cls)
    return _register


def _discover() -> None:
    """Import every trainer module of this package once (on the first lookup, not at import), so
    that their registration decorators run."""
    global _discovered
    if not _discovered:
        import_submodules(__package__, _NOT_TRAINER_MODULES)
        _discovered = True


def list_trainers() -> list[TrainerInfo]:
    """All registered trainers, sorted by name (the nnU-Net baseline first)."""
    _discover()
    return sorted(_REGISTRY.values(), key=lambda i: (i.name != "nnUNetTrainer", i.name))


def _unknown(name: str) -> UnknownTrainerError:
    names = [i.name for i in list_trainers()]
    return UnknownTrainerError(
        f"Unknown trainer {name!r}.{did_you_mean(name, names)} Registered trainers: {', '.join(names)} "
        f"(see `nnzoo list-trainers`)."
    )


def get_trainer_info(name: str) -> TrainerInfo:
    """Registry entry of a trainer.

    Raises:
        UnknownTrainerError: with the closest registered names.
    """
    _discover()
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name]


def find_trainer_info(name: str) -> TrainerInfo | None:
    """Registry entry of a trainer, or None for a name that is not registered (e.g. nnU-Net's own variants)."""
    _discover()
    return _REGISTRY.get(name)


def get_trainer_class(name: str) -> type:
    """Class of a registered trainer (see :func:`get_trainer_info`)."""
    return get_trainer_info(name).cls


def resolve_trainer_class(name: str) -> type:
    """Class of a registered trainer, or of any trainer nnU-Net itself can find.

    nnU-Net's own variants (``nnUNetTrainer_250epochs``, ``nnUNetTrainerNoMirroring``...) and
    trainers under ``nnUNet_extTrainer`` are accepted so that models trained with stock
    ``nnUNetv2_train`` can be used with nnzoo.

    Raises:
        UnknownTrainerError: neither nnzoo nor nnU-Net knows the name.
    """
    _discover()
    if name in _REGISTRY:
        return _REGISTRY[name].cls
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        raise _unknown(name) from None
