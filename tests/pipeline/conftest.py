"""Fixtures of the pipeline tests: the bad-input world (``bad_input_cases.py``), built once per session and
copied by every test that uses ``ctx``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bad_input_cases import Ctx, build_world  # noqa: E402


@pytest.fixture(scope="session")
def bad_input_world(tmp_path_factory):
    """The template world (built on first use; each test copies what it needs)."""
    made = {}

    def get() -> Path:
        if "base" not in made:
            made["base"] = build_world(tmp_path_factory.mktemp("bad_input_world"))
        return made["base"]
    return get


@pytest.fixture
def ctx(tmp_path, bad_input_world, monkeypatch):
    """The bad-input world for one test (its own folders under ``tmp_path``)."""
    return Ctx(tmp_path, bad_input_world, monkeypatch)
