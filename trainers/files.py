"""Small file helpers shared by trainers, the pipeline and the benchmarks."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic"]


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 1,
                      default: Callable[[Any], Any] | None = None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically: a temporary file of this process in the same folder, renamed
    over ``path``, so a reader (or a run stopped while writing) sees the old file or the new one, never a part.

    Args:
        path: the JSON file.
        obj: a JSON-serialisable object.
        indent: ``json.dumps`` indentation.
        default: ``json.dumps`` fallback for objects it cannot serialise.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=indent, default=default))
    os.replace(tmp, path)
