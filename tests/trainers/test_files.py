"""``nnzoo.trainers.files``: the atomic JSON writer shared by the trainers, the pipeline and the benchmarks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nnzoo.trainers.files import write_json_atomic


def test_write_json_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"old": 1}')
    write_json_atomic(path, {"a": [1, 2]}, indent=2)
    assert json.loads(path.read_text()) == {"a": [1, 2]} and "\n  " in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    write_json_atomic(str(path), {"auc": np.float32(0.5)}, default=float)  # str paths; numpy values via default
    assert json.loads(path.read_text()) == {"auc": 0.5}


def test_write_json_atomic_keeps_the_old_file_when_serialising_fails(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert not (tmp_path / f".r.json.tmp-{os.getpid()}").exists()
