"""Thread and worker settings of :func:`nnzoo.pipeline.env.configure_workers`."""

from __future__ import annotations

import os

import pytest
import torch

from nnzoo.pipeline.env import configure_workers


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_cpu_uses_the_cores_unless_omp_num_threads_is_set(monkeypatch, restore_threads):
    cores = os.cpu_count() or 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    torch.set_num_threads(1)
    configure_workers("cpu")
    assert torch.get_num_threads() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    configure_workers("cpu")
    assert torch.get_num_threads() == 1


def test_augmentation_workers_default_and_user_setting(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    configure_workers("cpu")
    assert os.environ["nnUNet_n_proc_DA"] == ("0" if (os.cpu_count() or 1) <= 4 else str(min(8, os.cpu_count() // 2)))
    monkeypatch.setenv("nnUNet_n_proc_DA", "3")
    configure_workers("cuda")
    assert os.environ["nnUNet_n_proc_DA"] == "3"
