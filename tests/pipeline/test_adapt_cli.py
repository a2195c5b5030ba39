"""``nnzoo predict --adapt`` and ``nnzoo source-stats`` through the CLI (issue 22).

Bad input: the rows of ``bad_input_cases.ADAPT_ROWS``, each one clear line, nothing written. Slow: tiny 2D
(the bad-input world: an untrained stock ``nnUNetTrainer`` model, 5 PNG cases 16x16) and 3D (``nnzoo train``
of one iteration, which records the source statistics) predictions with every method.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bad_input_cases import ADAPT_ROWS, assert_one_error_line, snapshot  # noqa: E402

from nnzoo.pipeline.cli import main  # noqa: E402

ROWS = [(cmd, rid, build) for cmd, rows in ADAPT_ROWS.items() for rid, build in rows.items()]


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("command,rid,build", ROWS, ids=[f"{c}:{r}" for c, r, _ in ROWS])
def test_bad_adapt_input_is_one_clear_line(ctx, capsys, command, rid, build):
    argv, needles = build(ctx)
    before = snapshot(ctx.tmp)
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, f"exit {rc}: {err.strip()}"
    assert_one_error_line(err, needles)
    assert snapshot(ctx.tmp) == before, "files were written, changed or removed"


def _probabilities(folder: Path) -> dict[str, np.ndarray]:
    return {f.name[:-4]: np.load(f)["probabilities"] for f in sorted(folder.glob("*.npz"))}


def _run(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


@pytest.mark.slow
def test_adapt_2d_stock_model_through_the_cli(ctx, tmp_path):
    w = ctx.w
    before = {p: p.read_bytes() for p in w.model.rglob("*") if p.is_file()}
    plain, zero = tmp_path / "plain", tmp_path / "zero"
    _run(*ctx.predict("--save-probabilities", out=plain))
    _run(*ctx.predict("--save-probabilities", "--adapt", "tent", "--adapt-hparam", "STEPS=0", out=zero))
    p0, pz = _probabilities(plain), _probabilities(zero)
    assert p0.keys() == pz.keys() and all(np.array_equal(p0[k], pz[k]) for k in p0)  # zero steps: plain, exactly

    # episodic: a case's output alone equals its output after the other cases
    tent, alone_in, alone = tmp_path / "tent", tmp_path / "alone_in", tmp_path / "alone"
    _run(*ctx.predict("--save-probabilities", "--adapt", "tent", out=tent))
    last = sorted(w.images.iterdir())[-1]
    alone_in.mkdir()
    shutil.copy(last, alone_in / last.name)
    _run(*ctx.predict("--save-probabilities", "--adapt", "tent", inp=alone_in, out=alone))
    pt, pa = _probabilities(tent), _probabilities(alone)
    (case,) = pa
    assert np.array_equal(pt[case], pa[case])
    assert any(not np.array_equal(pt[k], p0[k]) for k in p0)  # tent did change the prediction
    record = json.loads((tent / "adaptation.json").read_text())
    assert record["method"] == "tent" and record["mode"] == "episodic" and record["hyperparameters"]["LR"] == 1e-3
    assert set(record["seconds_per_case"]) == set(p0) and record["mean_seconds_per_case"] > 0
    assert set(record["relative_change_per_case"]) == set(p0) and record["mean_relative_change"] > 0
    assert json.loads((zero / "adaptation.json").read_text())["mean_relative_change"] == 0

    # vptta needs the source statistics of the stock model: recorded by source-stats (-m), then -m and -d work
    assert main(ctx.predict("--adapt", "vptta", out=tmp_path / "v0")) == 2
    _run("source-stats", "-m", w.model, "-device", "cpu")
    stats = json.loads((w.fold0 / "source_stats.json").read_text())
    assert stats["patches"] == 2 * 4 and stats["layers"]  # fold 0 trains on 4 of the 5 cases
    _run(*ctx.predict("--adapt", "vptta", "--disable-tta", model=True, out=tmp_path / "vptta"))
    assert json.loads((tmp_path / "vptta" / "adaptation.json").read_text())["hyperparameters"]["MEMORY_SIZE"] == 40

    # several folds (each adapted on its own), parts, --continue, and --continue with other flags refused
    shutil.copytree(w.fold0, w.model / "fold_1")
    grata = tmp_path / "grata"
    _run(*ctx.predict("--adapt", "grata", "-f", "0", "1", "-num_parts", "2", "-part_id", "1", out=grata))
    assert (grata / "adaptation_part1.json").is_file()
    first = sorted(grata.glob("*.png"))
    first[0].unlink()
    _run(*ctx.predict("--adapt", "grata", "-f", "0", "1", "-num_parts", "2", "-part_id", "1", "--continue",
                      out=grata))
    assert len(json.loads((grata / "adaptation_part1.json").read_text())["seconds_per_case"]) == len(first)
    assert main(ctx.predict("--adapt", "tent", "-f", "0", "1", "-num_parts", "2", "-part_id", "1", "--continue",
                            out=grata)) == 2

    # an ensemble of model folders: every member adapted, the records side by side
    ens = tmp_path / "ens"
    _run(*ctx.predict("--adapt", "tent", "--adapt-continual", "--ensemble", w.model, out=ens))
    rec = json.loads((ens / "adaptation.json").read_text())
    assert rec["mode"] == "continual" and len(rec["members"]) == 1
    shutil.rmtree(w.model / "fold_1")
    (w.fold0 / "source_stats.json").unlink()
    assert {p: p.read_bytes() for p in w.model.rglob("*") if p.is_file()} == before  # the model is unchanged


@pytest.mark.slow
def test_adapt_3d_after_nnzoo_train_records_source_stats(prepared_3d, tmp_path):
    """A copy of the prepared 3D toy dataset (nothing is added to the shared one)."""
    from helpers import dataset_dir, nnunet_folders

    base = Path(shutil.copytree(prepared_3d["base"], tmp_path / "work", symlinks=True))
    did, cfg = str(prepared_3d["id"]), prepared_3d["configuration"]
    with nnunet_folders(base):
        _run("train", did, cfg, "all", "-device", "cpu", "--epochs", "1", "--iters", "1", "--val-iters", "1",
             "--no-val", "--overwrite")
        fold = dataset_dir("nnUNet_results", int(did)) / f"nnUNetTrainer__nnUNetPlans__{cfg}" / "fold_all"
        assert (fold / "source_stats.json").is_file()
        inp = tmp_path / "in"
        inp.mkdir()
        for f in sorted(prepared_3d["src"]["images"].iterdir())[:2]:
            shutil.copy(f, inp / f.name)
        for method in ("vptta", "tent", "grata"):
            out = tmp_path / method
            _run("predict", "-i", inp, "-o", out, "-d", did, "-c", cfg, "-f", "all", "-device", "cpu", "-np", "1",
                 "--adapt", method, *(["--adapt-hparam", "PROMPT_ALPHA=0.2"] if method == "vptta" else []))
            assert len(list(out.glob("*.nii.gz"))) == 2
            assert json.loads((out / "adaptation.json").read_text())["method"] == method
