"""The one exception type the CLI turns into a clean error message."""

from __future__ import annotations

__all__ = ["NnzooError"]


class NnzooError(Exception):
    """A problem with the user's input or set-up, described in words a user can act on.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
    """
