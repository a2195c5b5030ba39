"""The one exception type the CLI turns into a clean error message."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["NnzooError", "read_json", "check_folder_can_be_made"]


class NnzooError(Exception):
    """A problem with the user's input or set-up, described in words a user can act on.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
    """


def read_json(path: str | os.PathLike, *, hint: str = "", kind: type | tuple[type, ...] = dict):
    """The contents of a JSON file nnzoo or nnU-Net wrote, or one clear error naming the file.

    Args:
        path: the file.
        hint: what the user can do about a missing or damaged file (appended to the message).
        kind: the type (or types) the top level must have.

    Raises:
        NnzooError: the file is missing, unreadable, not valid JSON or not of ``kind``.
    """
    suffix = f"; {hint}" if hint else ""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise NnzooError(f"{path}: not found{suffix}") from None
    except IsADirectoryError:
        raise NnzooError(f"{path}: is a folder, expected a JSON file{suffix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise NnzooError(f"{path}: not valid JSON ({' '.join(str(e).split())[:120]}){suffix}") from None
    if not isinstance(obj, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise NnzooError(f"{path}: expected a JSON {names}, found {type(obj).__name__}{suffix}")
    return obj


def check_folder_can_be_made(folder: str | os.PathLike, *, flag: str) -> None:
    """``folder`` is a folder, or can be made one: neither it nor a parent is a file.

    Args:
        folder: the folder to write into.
        flag: how the user gave it, for the message (e.g. ``"-o out/"``).

    Raises:
        NnzooError: naming the file in the way.
    """
    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise NnzooError(f"{flag}: cannot write there, {p} is a file, not a folder")
            return
