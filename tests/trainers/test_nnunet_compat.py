"""Every nnunetv2 internal that nnzoo touches, checked where nnzoo touches it (trainers/nnunet_compat/).

If an nnunetv2 release renames, moves or changes one of these, this file fails first, naming it:
``test_every_internal_still_holds`` runs one check per entry of ``compat.INTERNALS`` (the list the
module declares), and ``test_every_internal_has_a_check`` fails when the two lists differ.
"""

from __future__ import annotations

import copy
import inspect
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.run import run_training
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnzoo.trainers import nnunet_compat as compat


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


@pytest.mark.parametrize("owner,name,params", [
    (nnUNetTrainer, "_do_i_compile", ["self"]),
    (nnUNetTrainer, "_get_deep_supervision_scales", ["self"]),
    (nnUNetTrainer, "train_step", ["self", "batch"]),
    (nnUNetTrainer, "get_dataloaders", ["self"]),
    (nnUNetTrainer, "get_tr_and_val_datasets", ["self"]),
    (nnUNetTrainer, "on_train_start", ["self"]),
    (nnUNetTrainer, "perform_actual_validation", ["self", "save_probabilities"]),
    (nnUNetTrainer, "initialize", ["self"]),
    (NonDetMultiThreadedAugmenter, "_finish", ["self", "timeout"]),
    (run_training, "maybe_load_checkpoint", ["nnunet_trainer", "continue_training", "validation_only",
                                             "pretrained_weights_file"]),
    (DefaultPreprocessor, "run_case_save", ["self", "output_filename_truncated", "image_files", "seg_file",
                                            "plans_manager", "configuration_manager", "dataset_json"]),
])
def test_internal_exists_with_expected_signature(owner, name, params):
    assert hasattr(owner, name), f"{owner.__name__}.{name} is gone"
    assert _params(getattr(owner, name))[:len(params)] == params


def test_train_step_uses_network_and_loss_attributes():
    """nnunet_train_step swaps these two attributes: nnU-Net's step must call them."""
    src = inspect.getsource(nnUNetTrainer.train_step)
    assert "self.network(data)" in src and "self.loss(output, target)" in src


def test_get_dataloaders_reads_what_the_view_replaces():
    src = inspect.getsource(nnUNetTrainer.get_dataloaders)
    for attr in ("self.get_tr_and_val_datasets()", "self.batch_size", "self.oversample_foreground_percent",
                 "self.label_manager", "self.probabilistic_oversampling"):
        assert attr in src, attr


def test_ddp_wrapper_is_a_module_global_called_with_device_ids():
    module = compat.nnunet_trainer_module()
    assert module.DDP is torch.nn.parallel.DistributedDataParallel
    assert "DDP(self.network, device_ids=[self.local_rank])" in inspect.getsource(nnUNetTrainer.initialize)
    with compat.ddp_wrapping(torch.device("cpu")):
        assert module.DDP is not torch.nn.parallel.DistributedDataParallel
    assert module.DDP is torch.nn.parallel.DistributedDataParallel


def test_on_train_start_writes_into_output_folder_base():
    src = inspect.getsource(nnUNetTrainer.on_train_start)
    assert "join(self.output_folder_base, 'plans.json')" in src


def test_preprocessed_file_layout_is_what_save_case_writes(tmp_path):
    data = np.zeros((1, 4, 5, 6), np.float32)
    seg = np.zeros((1, 4, 5, 6), np.int8)
    seg[0, 1, 2, 3] = 2
    nnUNetDatasetBlosc2.save_case(data, seg, {}, str(tmp_path / "c"), chunks=(1, 4, 5, 6), blocks=(1, 4, 5, 6))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.split("/")[-1] for p in compat.preprocessed_case_files(tmp_path, "c"))
    np.testing.assert_array_equal(compat.load_preprocessed_image(tmp_path, "c")[:], data)
    np.testing.assert_array_equal(compat.load_preprocessed_segmentation(tmp_path, "c")[:], seg)


# ---------------------------------------------------------------------------------------------- the declared list
def _src(obj) -> str:
    return inspect.getsource(obj)


def _check_continue_training_pop():
    assert 'plans.pop("continue_training")' in _src(nnUNetTrainer.__init__)
    assert list(inspect.signature(nnUNetTrainer.__init__).parameters) == [
        "self", "plans", "configuration", "fold", "dataset_json", "device"]


def _check_model_folder_from_paths():
    src = _src(nnUNetTrainer.__init__)
    assert "self.output_folder_base = join(nnUNet_results, self.plans_manager.dataset_name" in src
    import nnunetv2.paths as paths
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as module
    assert module.nnUNet_results is paths.nnUNet_results


def _check_paths_read_lazily():
    import nnunetv2.paths as paths

    real = os.environ.get("nnUNet_results")
    try:
        os.environ["nnUNet_results"] = "/somewhere/else"
        assert os.fspath(paths.nnUNet_results) == "/somewhere/else" and str(paths.nnUNet_results) == "/somewhere/else"
    finally:
        if real is None:
            os.environ.pop("nnUNet_results", None)
        else:
            os.environ["nnUNet_results"] = real


def _check_trainer_folder_attributes():
    src = _src(nnUNetTrainer.__init__)
    for attr in ("self.output_folder_base", "self.output_folder", "self.log_file",
                 "self.folder_with_segs_from_previous_stage", "self.is_cascaded"):
        assert attr + " =" in src, attr


def _check_meta_logger():
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    assert "self.logger = MetaLogger(self.output_folder" in _src(nnUNetTrainer.__init__)
    assert "self.output_folder = output_folder" in _src(MetaLogger.__init__)
    assert list(inspect.signature(MetaLogger.update_config).parameters) == ["self", "config"]


def _check_save_checkpoint_writes_with_module_torch():
    assert "torch.save(checkpoint, filename)" in _src(nnUNetTrainer.save_checkpoint)
    assert compat.nnunet_trainer_module().torch is torch


def _check_load_checkpoint_reads_with_module_torch():
    assert "checkpoint = torch.load(filename_or_checkpoint" in _src(nnUNetTrainer.load_checkpoint)


def _check_maybe_load_checkpoint():
    assert list(inspect.signature(run_training.maybe_load_checkpoint).parameters) == [
        "nnunet_trainer", "continue_training", "validation_only", "pretrained_weights_file"]


def _check_run_training_order():
    src = _src(run_training.run_training)
    steps = ["maybe_load_checkpoint(nnunet_trainer", "cudnn.benchmark = True", "nnunet_trainer.run_training()",
             "'checkpoint_best.pth'", "nnunet_trainer.perform_actual_validation("]
    positions = [src.find(step, src.find("get_trainer_from_args(")) for step in steps]
    assert -1 not in positions and positions == sorted(positions), dict(zip(steps, positions))


def _check_build_loss_hook():
    assert list(inspect.signature(nnUNetTrainer._build_loss).parameters) == ["self"]
    assert "self.loss = self._build_loss()" in _src(nnUNetTrainer.initialize)


def _check_do_i_compile():
    assert list(inspect.signature(nnUNetTrainer._do_i_compile).parameters) == ["self"]


def _check_deep_supervision_scales():
    assert list(inspect.signature(nnUNetTrainer._get_deep_supervision_scales).parameters) == ["self"]


def _check_deep_supervision_weights():
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    loss = DeepSupervisionWrapper(torch.nn.MSELoss(), [0.5, 0.25])
    assert list(loss.weight_factors) == [0.5, 0.25]
    assert compat.deep_supervision_weights(loss) == [0.5, 0.25]


def _check_train_step_attributes():
    test_train_step_uses_network_and_loss_attributes()


def _check_get_dataloaders_attributes():
    test_get_dataloaders_reads_what_the_view_replaces()


def _check_augmenter_finish():
    assert list(inspect.signature(NonDetMultiThreadedAugmenter._finish).parameters)[:2] == ["self", "timeout"]


def _check_sample_foreground_locations():
    fn = DefaultPreprocessor._sample_foreground_locations
    assert isinstance(inspect.getattr_static(DefaultPreprocessor, "_sample_foreground_locations"), staticmethod)
    assert list(inspect.signature(fn).parameters)[:2] == ["seg", "classes_or_regions"]
    seg = np.zeros((1, 6, 6, 6), np.int8)
    seg[0, 1:3, 1:3, 1:3] = 1
    locations = fn(seg, [1], seed=1)
    assert set(locations) == {1} and len(locations[1]) > 0 and all(seg[tuple(c)] == 1 for c in locations[1])


def _check_run_case_save():
    assert list(inspect.signature(DefaultPreprocessor.run_case_save).parameters)[:7] == [
        "self", "output_filename_truncated", "image_files", "seg_file", "plans_manager", "configuration_manager",
        "dataset_json"]


def _check_save_case_layout(tmp_path):
    test_preprocessed_file_layout_is_what_save_case_writes(tmp_path)


def _check_ddp_global():
    test_ddp_wrapper_is_a_module_global_called_with_device_ids()


def _check_on_train_start():
    test_on_train_start_writes_into_output_folder_base()


def _check_mirror_step():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    assert list(inspect.signature(nnUNetPredictor._internal_maybe_mirror_and_predict).parameters) == ["self", "x"]
    src = _src(nnUNetPredictor._internal_predict_sliding_window_return_logits)
    assert "self._internal_maybe_mirror_and_predict(workon)" in src


def _check_sliding_window_tiles():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    src = " ".join(_src(nnUNetPredictor.predict_sliding_window_return_logits).split())
    assert "pad_nd_image(input_image, self.configuration_manager.patch_size, 'constant', {'value': 0}, True, None)" \
        in src
    assert "slicers = self._internal_get_sliding_window_slicers(data.shape[1:])" in src
    assert list(inspect.signature(nnUNetPredictor._internal_get_sliding_window_slicers).parameters) == \
        ["self", "image_size"]


def _check_fold_loop():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    src = _src(nnUNetPredictor.predict_logits_from_preprocessed_data)
    loop = src.index("for params in self.list_of_parameters")
    assert loop < src.index("load_state_dict(params)") < src.index("self.predict_sliding_window_return_logits(data)")


def _check_do_split_writes_splits():
    src = _src(nnUNetTrainer.do_split)
    assert 'join(self.preprocessed_dataset_folder_base, "splits_final.json")' in src
    assert src.index("if not isfile(splits_file)") < src.index("save_json(splits, splits_file)") < \
        src.index("splits = load_json(splits_file)")
    assert compat.SPLITS_FILE == "splits_final.json"


CHECKS = {
    "nnUNetTrainer.do_split creates splits_final.json with save_json on any rank that finds it missing":
        _check_do_split_writes_splits,
    "nnUNetPredictor.predict_sliding_window_return_logits pads with pad_nd_image and tiles with "
    "_internal_get_sliding_window_slicers": _check_sliding_window_tiles,
    "nnUNetPredictor.predict_logits_from_preprocessed_data loads each fold's parameters, then calls "
    "predict_sliding_window_return_logits once per fold": _check_fold_loop,
    "nnUNetPredictor's sliding window calls self._internal_maybe_mirror_and_predict(patch) per patch":
        _check_mirror_step,
    "nnUNetTrainer.__init__ pops plans['continue_training']": _check_continue_training_pop,
    "nnUNetTrainer.__init__ derives its model folder from nnunetv2.paths.nnUNet_results": _check_model_folder_from_paths,
    "nnunetv2.paths reads nnUNet_* environment variables when used, not when imported": _check_paths_read_lazily,
    "nnUNetTrainer attributes output_folder_base/output_folder/log_file/folder_with_segs_from_previous_stage":
        _check_trainer_folder_attributes,
    "MetaLogger.output_folder and MetaLogger.update_config": _check_meta_logger,
    "nnUNetTrainer.save_checkpoint writes its dict with the module global torch.save":
        _check_save_checkpoint_writes_with_module_torch,
    "nnUNetTrainer.load_checkpoint reads a file with the module global torch.load":
        _check_load_checkpoint_reads_with_module_torch,
    "nnunetv2.run.run_training.maybe_load_checkpoint": _check_maybe_load_checkpoint,
    "nnunetv2.run.run_training.run_training's order of steps": _check_run_training_order,
    "nnUNetTrainer._build_loss (hook the method trainers override; initialize calls it)": _check_build_loss_hook,
    "nnUNetTrainer._do_i_compile": _check_do_i_compile,
    "nnUNetTrainer._get_deep_supervision_scales": _check_deep_supervision_scales,
    "DeepSupervisionWrapper.weight_factors": _check_deep_supervision_weights,
    "nnUNetTrainer.train_step calls self.network(data) and self.loss(output, target)": _check_train_step_attributes,
    "nnUNetTrainer.get_dataloaders reads the attributes the view replaces": _check_get_dataloaders_attributes,
    "batchgenerators' augmenters stop with _finish()": _check_augmenter_finish,
    "DefaultPreprocessor._sample_foreground_locations": _check_sample_foreground_locations,
    "DefaultPreprocessor.run_case_save": _check_run_case_save,
    "nnUNetDatasetBlosc2.save_case's file layout": _check_save_case_layout,
    "module global DDP of nnunetv2's trainer module, called with device_ids=[self.local_rank]": _check_ddp_global,
    "nnUNetTrainer.on_train_start writes into output_folder_base": _check_on_train_start,
}


def test_every_internal_has_a_check():
    assert set(CHECKS) == set(compat.INTERNALS), {"without a check": sorted(set(compat.INTERNALS) - set(CHECKS)),
                                                  "checked but not declared": sorted(set(CHECKS) - set(compat.INTERNALS))}


@pytest.mark.parametrize("internal", sorted(CHECKS))
def test_every_internal_still_holds(internal, tmp_path):
    check = CHECKS[internal]
    try:
        check(tmp_path) if "tmp_path" in inspect.signature(check).parameters else check()
    except Exception as e:  # the message names the internal that changed
        pytest.fail(f"nnunetv2 changed an internal nnzoo relies on: {internal} ({type(e).__name__}: {e})")


def test_a_changed_internal_fails_naming_it(monkeypatch):
    """The checks can fail: a release that stops popping ``continue_training`` is reported by name."""
    monkeypatch.setattr(inspect, "getsource", lambda obj: "")
    with pytest.raises(pytest.fail.Exception, match=r"pops plans\['continue_training'\]"):
        test_every_internal_still_holds("nnUNetTrainer.__init__ pops plans['continue_training']", None)


def test_no_code_outside_the_seam_sets_continue_training():
    root = Path(__file__).resolve().parents[2]
    here = Path(__file__).resolve()
    offenders = [str(f.relative_to(root)) for d in ("pipeline", "plans", "trainers", "benchmarks", "tests")
                 for f in (root / d).rglob("*.py")
                 if f.resolve() != here and (root / "trainers" / "nnunet_compat") not in f.resolve().parents
                 and "continue_training" in f.read_text()]
    assert offenders == []


def test_build_trainer_leaves_plans_untouched_and_places_the_model_folder(tmp_path):
    from helpers import tiny_dataset_json, tiny_plans

    plans = tiny_plans("2d")
    before = copy.deepcopy(plans)
    t = compat.build_trainer(nnUNetTrainer, plans=plans, configuration="2d", fold=0, dataset_json=tiny_dataset_json(),
                             device=torch.device("cpu"), model_folder_name="nnUNetTrainer__nnUNetPlans__2d_labeled4")
    assert plans == before
    assert Path(t.output_folder) == Path(os.environ["nnUNet_results"]) / plans["dataset_name"] / \
        "nnUNetTrainer__nnUNetPlans__2d_labeled4" / "fold_0"
    assert not (Path(os.environ["nnUNet_results"]) / plans["dataset_name"] / "nnUNetTrainer__nnUNetPlans__2d").exists()


def test_checkpoint_extra_state_is_in_the_one_write(tmp_path):
    from helpers import make_trainer

    from nnzoo.trainers.base import NnzooTrainer

    class WithExtra(NnzooTrainer):
        def _extra_checkpoint_state(self):
            return {"nnzoo_extra": 7}

        def _restore_extra_checkpoint_state(self, checkpoint):
            self.restored = checkpoint["nnzoo_extra"]

    t = make_trainer(WithExtra, tmp_path, "2d", initialize=True)
    writes = []
    real = torch.save
    try:
        torch.save = lambda obj, f, *a, **k: (writes.append(f), real(obj, f, *a, **k))[1]
        t.save_checkpoint(str(tmp_path / "c.pth"))
    finally:
        torch.save = real
    assert len(writes) == 1 and torch.load(tmp_path / "c.pth", weights_only=False)["nnzoo_extra"] == 7
    assert not list(tmp_path.glob("*.tmp-*"))
    t.load_checkpoint(str(tmp_path / "c.pth"))
    assert t.restored == 7


def test_ranks_above_zero_wait_for_the_split_file_rank_zero_writes(tmp_path):
    """Under DDP a rank > 0 returns only once the split file is there and complete (a half-written file is
    waited out, not read); rank 0, fold ``all`` and single-process runs never wait; a file that never comes is
    one error naming it."""
    import json
    import threading
    import time
    from types import SimpleNamespace

    path = tmp_path / compat.SPLITS_FILE
    rank1 = SimpleNamespace(is_ddp=True, local_rank=1, fold=0, preprocessed_dataset_folder_base=str(tmp_path))
    for trainer in (SimpleNamespace(**{**vars(rank1), "local_rank": 0}), SimpleNamespace(**{**vars(rank1), "fold": "all"}),
                    SimpleNamespace(**{**vars(rank1), "is_ddp": False})):
        compat.wait_for_splits(trainer, timeout_s=0.0)  # returns at once although the file is missing
    with pytest.raises(RuntimeError, match=f"{compat.SPLITS_FILE} was not written by rank 0 within"):
        compat.wait_for_splits(rank1, timeout_s=0.2)

    def rank_zero_writes() -> None:
        path.write_text('[{"train": ["a"], ')  # a partial write ...
        time.sleep(0.3)
        path.write_text(json.dumps([{"train": ["a"], "val": ["b"]}]))  # ... then the whole file

    writer = threading.Thread(target=rank_zero_writes)
    start = time.monotonic()
    writer.start()
    compat.wait_for_splits(rank1, timeout_s=10.0, poll_s=0.01)
    writer.join()
    assert time.monotonic() - start >= 0.3 and json.loads(path.read_text())[0]["val"] == ["b"]
