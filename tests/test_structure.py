"""The package's import structure: dependencies point one way and nothing imports in a circle.

pipeline (CLI -> API) -> plans -> trainers -> trainers.networks. plans read the facts a planner
budgets from the trainers (a method's hyperparameters are declared once, on its trainer); trainers
never import pipeline or plans; networks import only networks. Every import counts, also those
inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"pipeline": "nnzoo.pipeline", "plans": "nnzoo.plans", "trainers": "nnzoo.trainers"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for d in PACKAGES for p in sorted((REPO / d).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """nnzoo modules imported anywhere in the file (``from x import y`` counts ``x.y`` if it is a module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t.startswith("nnzoo.") and t in known and t != name}
    return out


def _layer(module: str) -> str:
    if module.startswith("nnzoo.trainers.networks"):
        return "networks"
    return module.split(".")[1]


ALLOWED = {"pipeline": {"pipeline", "plans", "trainers", "networks"}, "plans": {"plans", "trainers", "networks"},
           "trainers": {"trainers", "networks"}, "networks": {"networks"}}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} imports {t}" for m, targets in graph.items() for t in sorted(targets)
            if _layer(t) not in ALLOWED[_layer(m)]]


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_upward_imports():
    assert _upward(_graph()) == []


def test_no_circular_imports():
    assert _cycles(_graph()) == []


def test_the_checks_can_fail():
    """Known edges are found, and an upward import or a cycle is reported."""
    g = _graph()
    assert "nnzoo.trainers.networks.common" in g["nnzoo.trainers.networks.mcnet"]
    assert "nnzoo.trainers.nnunet_compat" in g["nnzoo.trainers.semisup"]
    assert "nnzoo.pipeline.metrics" in g["nnzoo.pipeline.evaluate"]
    assert _upward({"nnzoo.trainers.cotr": {"nnzoo.plans.cotr"}}) == ["nnzoo.trainers.cotr imports nnzoo.plans.cotr"]
    assert _upward({"nnzoo.trainers.semisup": {"nnzoo.pipeline.unlabeled"}}) != []
    assert _cycles({"nnzoo.pipeline.a": {"nnzoo.pipeline.b"}, "nnzoo.pipeline.b": {"nnzoo.pipeline.a"}}) == [
        "nnzoo.pipeline.a -> nnzoo.pipeline.b -> nnzoo.pipeline.a"]


# ---------------------------------------------------------------------------------------------- API signatures
MAX_API_PARAMETERS = 8


def _api_functions() -> list[str]:
    """``module.function`` of every pipeline function the CLI calls (the API under the CLI): what ``cli.py``
    imports from the pipeline's modules."""
    tree = ast.parse((REPO / "pipeline" / "cli.py").read_text())
    return sorted({f"nnzoo.pipeline.{node.module}.{a.name}" for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module not in (None, "errors")
                   for a in node.names if a.name[0].islower()})


def _signature_problems(fn) -> list[str]:
    import inspect

    params = inspect.signature(fn).parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    problems = []
    if len(params) > MAX_API_PARAMETERS:
        problems.append(f"{len(params)} parameters (at most {MAX_API_PARAMETERS}: group them in an options object)")
    if len(positional) > 2:
        problems.append(f"positional parameters {positional} (at most two; the rest keyword-only)")
    return problems


def test_api_functions_take_an_options_object_or_few_keyword_only_arguments():
    import importlib

    names = _api_functions()
    assert {"nnzoo.pipeline.train.train", "nnzoo.pipeline.predict.predict"} <= set(names)
    problems = {}
    for name in names:
        module, fn = name.rsplit(".", 1)
        obj = getattr(importlib.import_module(module), fn)
        if callable(obj) and not isinstance(obj, type):
            found = _signature_problems(obj)
            if found:
                problems[name] = found
    assert problems == {}


def test_the_signature_check_can_fail():
    def wide(a, b, c, *, d=0, e=0, f=0, g=0, h=0, i=0):
        return a

    assert len(_signature_problems(wide)) == 2
    assert _signature_problems(lambda options: options) == []


def test_every_package_folder_is_installed():
    """pyproject's ``packages`` names every folder of pipeline/, plans/ and trainers/ that holds an ``__init__.py``
    (a folder left out would be missing from a non-editable install)."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module_name(p) for d in PACKAGES for p in (REPO / d).rglob("__init__.py")}
    assert found == listed
