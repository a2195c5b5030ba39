"""The one seam between nnzoo and nnunetv2's internals.

nnzoo extends nnU-Net through its public extension points: trainer subclasses and their hooks,
planner subclasses, ``PlansManager``, the predictor, the dataset classes and nnU-Net's helpers.
Where those do not reach, this package is the only place in nnzoo that touches an nnunetv2
internal (a private method, a module global, a file layout); each item says why the public API
does not serve. Its submodules group them (``_data``: preprocessed files and loaders,
``_training``: trainer construction, the run, checkpoints and train steps, ``_ddp``: distributed
training, ``_prediction``: the predictor's sliding window); everything is imported from here. ``tests/trainers/test_nnunet_compat.py`` checks that every item still exists with
the signature used here, so an nnunetv2 upgrade fails there, loudly, first.

:data:`INTERNALS` names every nnunetv2 internal nnzoo relies on (the test has one check per name and
fails if the two lists differ): nowhere else in nnzoo — pipeline, trainers, benchmarks or tests —
sets ``plans["continue_training"]``, calls a private nnU-Net method or rebuilds one of its formulas.
"""

from __future__ import annotations

from ._data import (
                    PREPROCESSED_FILE_ENDINGS,
                    build_augmenter,
                    foreground_locations,
                    load_preprocessed_image,
                    load_preprocessed_segmentation,
                    preprocessed_case_files,
                    shutdown_augmenter,
                    unwrap_network,
)
from ._ddp import (
                    SPLITS_FILE,
                    ddp_device,
                    ddp_wrapping,
                    nnunet_trainer_module,
                    validation_on_rank_zero,
                    wait_for_splits,
                    writes_of_this_rank,
)
from ._prediction import MirroredForwardMixin, sliding_window_tiles
from ._training import (
                    build_trainer,
                    checkpoint_loaded,
                    checkpoint_saved_with,
                    deep_supervision_scales,
                    deep_supervision_weights,
                    do_i_compile,
                    load_checkpoint_for_run,
                    nnunet_train_step,
                    results_elsewhere,
                    retarget_output_folder,
                    run_nnunet_training,
)

__all__ = ["sliding_window_tiles", "INTERNALS", "build_trainer", "run_nnunet_training", "checkpoint_saved_with", "checkpoint_loaded",
           "deep_supervision_weights", "PREPROCESSED_FILE_ENDINGS", "preprocessed_case_files", "load_preprocessed_image",
           "load_preprocessed_segmentation", "foreground_locations",
           "unwrap_network",
           "build_augmenter", "shutdown_augmenter", "do_i_compile", "deep_supervision_scales",
           "load_checkpoint_for_run", "nnunet_train_step", "ddp_device", "ddp_wrapping", "writes_of_this_rank",
           "validation_on_rank_zero", "nnunet_trainer_module", "results_elsewhere", "retarget_output_folder",
           "MirroredForwardMixin", "wait_for_splits", "SPLITS_FILE"]

#: Every nnunetv2 internal nnzoo relies on, and the function of this module that uses it.
#: ``tests/trainers/test_nnunet_compat.py`` holds one check per entry (and fails if an entry has none).
INTERNALS: dict[str, str] = {
    "nnUNetTrainer.__init__ pops plans['continue_training']": "build_trainer",
    "nnUNetTrainer.__init__ derives its model folder from nnunetv2.paths.nnUNet_results": "results_elsewhere",
    "nnunetv2.paths reads nnUNet_* environment variables when used, not when imported": "results_elsewhere",
    "nnUNetTrainer attributes output_folder_base/output_folder/log_file/folder_with_segs_from_previous_stage":
        "retarget_output_folder",
    "MetaLogger.output_folder and MetaLogger.update_config": "retarget_output_folder",
    "nnUNetTrainer.save_checkpoint writes its dict with the module global torch.save": "checkpoint_saved_with",
    "nnUNetTrainer.load_checkpoint reads a file with the module global torch.load": "checkpoint_loaded",
    "nnunetv2.run.run_training.maybe_load_checkpoint": "load_checkpoint_for_run",
    "nnunetv2.run.run_training.run_training's order of steps": "run_nnunet_training",
    "nnUNetTrainer._build_loss (hook the method trainers override; initialize calls it)": "(trainers override it)",
    "nnUNetTrainer._do_i_compile": "do_i_compile",
    "nnUNetTrainer._get_deep_supervision_scales": "deep_supervision_scales",
    "DeepSupervisionWrapper.weight_factors": "deep_supervision_weights",
    "nnUNetTrainer.train_step calls self.network(data) and self.loss(output, target)": "nnunet_train_step",
    "nnUNetTrainer.get_dataloaders reads the attributes the view replaces": "build_augmenter",
    "batchgenerators' augmenters stop with _finish()": "shutdown_augmenter",
    "DefaultPreprocessor._sample_foreground_locations": "foreground_locations",
    "DefaultPreprocessor.run_case_save": "(pipeline.unlabeled preprocesses unlabeled images with it)",
    "nnUNetDatasetBlosc2.save_case's file layout": "preprocessed_case_files",
    "module global DDP of nnunetv2's trainer module, called with device_ids=[self.local_rank]": "ddp_wrapping",
    "nnUNetTrainer.on_train_start writes into output_folder_base": "writes_of_this_rank",
    "nnUNetTrainer.do_split creates splits_final.json with save_json on any rank that finds it missing":
        "wait_for_splits",
    "nnUNetPredictor's sliding window calls self._internal_maybe_mirror_and_predict(patch) per patch":
        "MirroredForwardMixin",
    "nnUNetPredictor.predict_sliding_window_return_logits pads with pad_nd_image and tiles with "
    "_internal_get_sliding_window_slicers": "sliding_window_tiles",
    "nnUNetPredictor.predict_logits_from_preprocessed_data loads each fold's parameters, then calls "
    "predict_sliding_window_return_logits once per fold": "(pipeline.inference adapts per fold in that call)",
}
