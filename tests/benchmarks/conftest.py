"""The benchmarks are scripts in the repository's ``benchmarks`` folder, not part of the installed package: the
repository root goes on ``sys.path`` so that the tests here import them as ``benchmarks.*``."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
