"""Planner registry: nnzoo's experiment planners by name, next to nnU-Net's own.

``nnzoo plan_and_preprocess -pl NAME`` resolves ``NAME`` here first, then among nnU-Net's
planners (``ExperimentPlanner``, ``nnUNetPlannerResEncM``...), with a "did you mean" error.
"""

from __future__ import annotations

from nnzoo.trainers._discovery import did_you_mean, import_submodules

__all__ = ["UnknownPlannerError", "register_planner", "list_planners", "get_planner_class", "plans_name_of"]

_NOT_PLANNER_MODULES = {"registry", "base"}
_REGISTRY: dict[str, type] = {}
_discovered = False


class UnknownPlannerError(KeyError):
    """Raised for a planner name that neither nnzoo nor nnU-Net knows."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_planner(cls: type) -> type:
    """Class decorator: make an ``ExperimentPlanner`` subclass selectable by its class name.

    Raises:
        ValueError: another class is registered under the same name.
    """
    other = _REGISTRY.get(cls.__name__)
    if other is not None and other is not cls:
        raise ValueError(f"a planner named {cls.__name__!r} is already registered")
    _REGISTRY[cls.__name__] = cls
    return cls


def _discover() -> None:
    """Import every planner module of this package once (on the first lookup), so that their decorators run."""
    global _discovered
    if not _discovered:
        import_submodules(__package__, _NOT_PLANNER_MODULES)
        _discovered = True


def list_planners() -> list[str]:
    """Names of nnzoo's registered planners."""
    _discover()
    return sorted(_REGISTRY)


def get_planner_class(name: str) -> type:
    """Planner class for ``name``: nnzoo's planners first, then nnU-Net's.

    Raises:
        UnknownPlannerError: with the closest known names.
    """
    _discover()
    if name in _REGISTRY:
        return _REGISTRY[name]
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    cls = recursive_find_python_class(
        f"{nnunetv2.__path__[0]}/experiment_planning", name, current_module="nnunetv2.experiment_planning"
    )
    if cls is not None:
        return cls
    known = list_planners() + ["ExperimentPlanner", "nnUNetPlannerResEncM", "nnUNetPlannerResEncL",
                               "nnUNetPlannerResEncXL", "ResEncUNetPlanner"]
    raise UnknownPlannerError(f"Unknown planner {name!r}.{did_you_mean(name, known)} nnzoo planners: {', '.join(list_planners()) or 'none'}; "
                              f"nnU-Net planners: ExperimentPlanner, nnUNetPlannerResEnc(M|L|XL).")


def plans_name_of(planner: str) -> str:
    """The plans name an nnzoo planner writes (its ``PLANS_NAME`` class attribute).

    Raises:
        UnknownPlannerError: ``planner`` is not one of nnzoo's planners.
    """
    _discover()
    if planner not in _REGISTRY:
        raise UnknownPlannerError(f"{planner!r} is not an nnzoo planner (nnzoo planners: {', '.join(list_planners())})")
    return _REGISTRY[planner].PLANS_NAME
