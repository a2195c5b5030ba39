"""The test suite's own disk hygiene: models trained into a shared dataset's results leave with their test."""

from __future__ import annotations

from helpers import drops_new_models


def test_drops_new_models_removes_what_the_block_added_and_keeps_the_rest(tmp_path):
    results = tmp_path / "nnUNet_results"
    old_fold = results / "Dataset001_A" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0"
    old_fold.mkdir(parents=True)
    (old_fold / "checkpoint_final.pth").write_bytes(b"x")
    with drops_new_models(results):
        new_fold = old_fold.parent / "fold_1"
        new_model = results / "Dataset001_A" / "nnUNetTrainerBCP__nnUNetPlans__2d" / "fold_0"
        for f in (new_fold, new_model):
            f.mkdir(parents=True)
            (f / "checkpoint_final.pth").write_bytes(b"x")
        (old_fold / "checkpoint_latest.pth").write_bytes(b"y")  # a file inside an old fold stays
    assert (old_fold / "checkpoint_final.pth").is_file() and (old_fold / "checkpoint_latest.pth").is_file()
    assert not new_fold.exists() and not new_model.parent.exists()


def test_drops_new_models_cleans_up_when_the_block_fails(tmp_path):
    results = tmp_path / "nnUNet_results"
    results.mkdir()
    try:
        with drops_new_models(results):
            (results / "Dataset001_A" / "T__P__2d" / "fold_0").mkdir(parents=True)
            raise RuntimeError("test failed")
    except RuntimeError:
        pass
    assert not (results / "Dataset001_A" / "T__P__2d").exists()
