"""Every nnunetv2 internal that nnzoo touches, checked where nnzoo touches it (trainers/nnunet_compat.py).

If an nnunetv2 release renames, moves or changes one of these, this file fails first, naming it.
"""

from __future__ import annotations

import inspect

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
