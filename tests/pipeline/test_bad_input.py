"""The bad-input matrix: every command, every flag that takes a value and every file kind it reads.

Each row of :data:`BAD` runs ``nnzoo`` in-process on one careless input and requires exit status
2, exactly one stderr line starting with ``error:`` that names the flag, file or value (the
row's needles), no traceback, and every file below the row's folder unchanged (none added,
removed or rewritten). ``test_valid_unusual_input.py`` holds the valid but unusual inputs that
must keep working. The rows needing a planned dataset or a model share one small 2D world built
once per session (no training; ``bad_input_cases.py``, fixture ``ctx`` in ``conftest.py``), so the
matrix runs in ``make test-fast``.
:data:`ROWS_PER_COMMAND` (checked below) is the count the README's reliability paragraph quotes.
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bad_input_builders import label_values, nii_shape, png_label, pred_dir_with, two_channel_src  # noqa: E402
from bad_input_cases import (  # noqa: E402
    ADAPT_ROWS,
    AUGMENT_ROWS,
    DOMAIN_ROWS,
    MODEL,
    WORLD_ID,
    WORLD_NAME,
    Ctx,
    assert_one_error_line,
    damage,
    edit_checkpoint,
    edit_json,
    snapshot,
    write_nii,
    write_png,
)

from nnzoo.pipeline.cli import main  # noqa: E402

#: rows of :data:`BAD` per command (the README's reliability paragraph quotes these)
ROWS_PER_COMMAND = {"dataset create": 58, "plan_and_preprocess": 27, "train": 46, "predict": 62, "evaluate": 45,
                    "find-best": 16, "export-model": 14, "install-model": 11, "source-stats": 4}


# ----------------------------------------------------------------------------------------- the rows
# each row: (command, id, build) where build(ctx) -> (argv, needles)
BAD: list[tuple[str, str, object]] = []


def rows(command: str, table: dict):
    for rid, fn in table.items():
        BAD.append((command, rid, fn))


# --------------------------------------------------------------------------------- dataset create
rows("dataset create", {
    "id-not-int": lambda c: (c.create("--id", "abc"), ["--id", "'abc'"]),
    "id-zero": lambda c: (c.create("--id", "0"), ["--id 0"]),
    "id-negative": lambda c: (c.create("--id", "-5"), ["--id -5"]),
    "id-too-large": lambda c: (c.create("--id", "1000"), ["--id 1000"]),
    "id-taken": lambda c: ((c.dir("nnUNet_raw/Dataset077_Other"), c.create())[1], ["--id 77", "Dataset077_Other"]),
    "name-bad-characters": lambda c: (c.create("--name", "my data!"), ["--name", "'my data!'"]),
    "name-empty": lambda c: (c.create("--name", ""), ["--name", "''"]),
    "name-missing": lambda c: (c.create()[:6] + c.create()[8:], ["--name"]),
    "images-missing": lambda c: (c.create(images=c.tmp / "nope"), [str(c.tmp / "nope"), "does not exist"]),
    "images-is-a-file": lambda c: (c.create(images=c.file("f.nii.gz")), [str(c.tmp / "f.nii.gz"), "not a folder"]),
    "images-empty-folder": lambda c: (c.create(images=c.dir("none")), [str(c.tmp / "none"), "empty"]),
    "labels-missing": lambda c: (c.create(labels=c.tmp / "nope"), [str(c.tmp / "nope"), "does not exist"]),
    "labels-is-a-file": lambda c: (c.create(labels=c.file("f.nii.gz")), [str(c.tmp / "f.nii.gz"), "not a folder"]),
    "labels-empty-folder": lambda c: (c.create(labels=c.dir("none")), [str(c.tmp / "none"), "empty"]),
    "unlabeled-missing": lambda c: (c.create("--unlabeled", str(c.tmp / "nope")), [str(c.tmp / "nope")]),
    "unlabeled-is-a-file": lambda c: (c.create("--unlabeled", str(c.file("u"))), [str(c.tmp / "u"), "not a folder"]),
    "unlabeled-truncated": lambda c: (
        (damage(c.src["unlabeled"] / "unl000.nii.gz", "truncate"), c.create("--unlabeled", str(c.src["unlabeled"])))[1],
        ["unl000.nii.gz", "cannot be read"]),
    "channel-empty": lambda c: (c.create("--channel", "")[:-4] + ["--channel", ""], ["--channel", "''"]),
    "channel-count-wrong": lambda c: (c.create("--channel", "T2"), ["case000.nii.gz", "2 channels"]),
    "channel-file-missing": lambda c: (c.create("--channel", "T2", images=two_channel_src(c, "case001_0001.nii.gz")),
                                       ["case001_0001.nii.gz", "missing channel"]),
    "label-not-int": lambda c: (c.create("--label", "one=liver"), ["--label", "one=liver"]),
    "label-no-equals": lambda c: (c.create("--label", "liver"), ["--label", "'liver'"]),
    "label-value-absent": lambda c: (c.create("--label", "9=x"), ["--label", "[9]"]),
    "label-name-twice": lambda c: (c.create("--label", "1=a", "--label", "2=a"), ["--label", "'a'"]),
    "label-value-twice": lambda c: (c.create("--label", "1=a", "--label", "1=b"), ["--label", "1"]),
    "region-no-equals": lambda c: (c.create("--region", "whole"), ["--region", "'whole'"]),
    "region-not-int": lambda c: (c.create("--region", "whole=a,b"), ["--region whole", "'a,b'"]),
    "region-value-absent": lambda c: (c.create("--region", "whole=1,9"), ["--region whole", "[9]"]),
    "regions-order-without-region": lambda c: (c.create("--regions-class-order", "1"), ["--regions-class-order"]),
    "regions-order-not-int": lambda c: (c.create("--region", "w=1,2", "--regions-class-order", "x"),
                                        ["--regions-class-order", "'x'"]),
    "regions-order-wrong-length": lambda c: (
        c.create("--region", "w=1,2", "--region", "c=2", "--regions-class-order", "1"), ["--regions-class-order", "[1]"]),
    "ignore-label-not-int": lambda c: (c.create("--ignore-label", "x"), ["--ignore-label", "'x'"]),
    "ignore-label-not-highest": lambda c: (c.create("--ignore-label", "1"), ["--ignore-label 1", "highest"]),
    "ignore-label-negative": lambda c: (c.create("--ignore-label", "-1"), ["--ignore-label -1"]),
    "image-truncated": lambda c: ((damage(c.src["images"] / "case001.nii.gz", "truncate"), c.create())[1],
                                  ["case001.nii.gz", "cannot be read"]),
    "image-empty": lambda c: ((damage(c.src["images"] / "case001.nii.gz", "empty"), c.create())[1],
                              ["case001.nii.gz", "empty"]),
    "image-unsupported-type": lambda c: ((c.file("src/images/notes.txt"), c.create())[1],
                                         ["notes.txt", "unsupported file type"]),
    "image-without-label": lambda c: (((c.src["labels"] / "case001.nii.gz").unlink(), c.create())[1],
                                      ["case001", "without label"]),
    "image-nan": lambda c: ((write_nii(c.src["images"] / "case002.nii.gz", np.full((8, 10, 12), np.nan, np.float32)),
                             c.create())[1], ["case002.nii.gz", "NaN"]),
    "image-two-components": lambda c: ((write_nii(c.src["images"] / "case002.nii.gz", np.zeros((8, 10, 12, 2),
                                                                                               np.float32), vector=True),
                                        c.create())[1], ["case002.nii.gz", "channels"]),
    "label-wrong-shape": lambda c: ((nii_shape(c, "labels", "case001", (8, 10, 11)), c.create())[1],
                                    ["case001.nii.gz", "shape"]),
    "label-wrong-spacing": lambda c: ((nii_shape(c, "labels", "case001", (8, 10, 12), (3.0, 1.0, 1.0)), c.create())[1],
                                      ["case001.nii.gz", "spacing"]),
    "label-float-values": lambda c: ((label_values(c, c.src["labels"], "case002", 0.5, np.float32), c.create())[1],
                                     ["case002.nii.gz", "integers"]),
    "label-negative-values": lambda c: ((label_values(c, c.src["labels"], "case002", -3), c.create())[1],
                                        ["case002.nii.gz", "negative"]),
})


# ----------------------------------------------------------------------------- plan_and_preprocess
def _plan(c: Ctx, *extra: str) -> list[str]:
    c.w  # noqa: B018 - activates the world's folders
    return ["plan_and_preprocess", "-d", str(WORLD_ID), "-c", "2d", "-np", "1", *extra]


rows("plan_and_preprocess", {
    "d-unknown-id": lambda c: (_plan(c, "-d", "999"), ["999"]),
    "d-not-an-id": lambda c: (_plan(c, "-d", "abc"), ["'abc'"]),
    "d-bad-name": lambda c: (_plan(c, "-d", "Datasetxyz"), ["'Datasetxyz'"]),
    "c-unknown": lambda c: (_plan(c, "-c", "4d"), ["-c", "'4d'"]),
    "pl-unknown": lambda c: (_plan(c, "-pl", "NoSuchPlanner"), ["NoSuchPlanner"]),
    "np-zero": lambda c: (_plan(c, "-np", "0"), ["-np 0"]),
    "np-negative": lambda c: (_plan(c, "-np", "-2"), ["-np -2"]),
    "np-not-int": lambda c: (_plan(c, "-np", "two"), ["-np", "'two'"]),
    "gpu-memory-negative": lambda c: (_plan(c, "-gpu_memory_target", "-4"), ["-gpu_memory_target -4"]),
    "gpu-memory-zero": lambda c: (_plan(c, "-gpu_memory_target", "0"), ["-gpu_memory_target 0"]),
    "gpu-memory-nan": lambda c: (_plan(c, "-gpu_memory_target", "nan"), ["-gpu_memory_target nan"]),
    "gpu-memory-not-float": lambda c: (_plan(c, "-gpu_memory_target", "8GB"), ["-gpu_memory_target", "'8GB'"]),
    "raw-missing": lambda c: ((shutil.rmtree(c.w.raw), _plan(c))[1], [str(c.w.raw), "not found"]),
    "dataset-json-corrupt": lambda c: ((damage(c.w.raw / "dataset.json", "truncate"), _plan(c))[1],
                                       [str(c.w.raw / "dataset.json"), "not valid JSON"]),
    "dataset-json-empty": lambda c: ((damage(c.w.raw / "dataset.json", "empty"), _plan(c))[1],
                                     [str(c.w.raw / "dataset.json")]),
    "dataset-json-missing-key": lambda c: ((edit_json(c.w.raw / "dataset.json", labels=None), _plan(c))[1],
                                           [str(c.w.raw / "dataset.json"), "'labels'"]),
    "dataset-json-labels-wrong-type": lambda c: ((edit_json(c.w.raw / "dataset.json", labels=["a", "b"]), _plan(c))[1],
                                                 [str(c.w.raw / "dataset.json"), "labels"]),
    "dataset-json-two-channels": lambda c: (
        (edit_json(c.w.raw / "dataset.json", channel_names={"0": "a", "1": "b"}), _plan(c))[1], ["case000_0001.png"]),
    "image-truncated": lambda c: ((damage(c.w.raw / "imagesTr" / "case002_0000.png", "truncate"), _plan(c))[1],
                                  ["case002_0000.png", "cannot be read"]),
    "image-rgb": lambda c: ((write_png(c.w.raw / "imagesTr" / "case002_0000.png", np.zeros((16, 16, 3)), vector=True),
                             _plan(c))[1], ["case002_0000.png", "3 channels"]),
    "label-missing": lambda c: (((c.w.raw / "labelsTr" / "case003.png").unlink(), _plan(c))[1],
                                ["case003.png", "not found"]),
    "label-undeclared-value": lambda c: ((png_label(c, c.w.raw / "labelsTr", "case003", 7), _plan(c))[1],
                                         ["case003.png", "[7]"]),
    "fingerprint-corrupt": lambda c: ((damage(c.w.pre / "dataset_fingerprint.json", "truncate"), _plan(c))[1],
                                      [str(c.w.pre / "dataset_fingerprint.json"), "--clean"]),
    "plans-corrupt": lambda c: ((damage(c.w.pre / "nnUNetPlans.json", "truncate"), _plan(c))[1],
                                [str(c.w.pre / "nnUNetPlans.json")]),
})


# ------------------------------------------------------------------------------------------ train
def _fresh_train(*extra: str) -> list[str]:
    return ["train", "999", "2d", "0", "-device", "cpu", *extra]


rows("train", {
    "dataset-unknown": lambda c: (_fresh_train(), ["999"]),
    "fold-missing": lambda c: (["train", "999", "2d"], ["fold"]),
    "device-unknown": lambda c: (_fresh_train("-device", "gpu"), ["-device", "'gpu'"]),
    "num-gpus-not-int": lambda c: (_fresh_train("-num_gpus", "two"), ["-num_gpus", "'two'"]),
    "epochs-not-int": lambda c: (_fresh_train("--epochs", "1.5"), ["--epochs", "'1.5'"]),
    "iters-not-int": lambda c: (_fresh_train("--iters", "many"), ["--iters", "'many'"]),
    "seed-not-int": lambda c: (_fresh_train("--seed", "x"), ["--seed", "'x'"]),
    "abbreviated-flag": lambda c: (_fresh_train("--val-it", "3"), ["--val-it"]),
    "configuration-unknown": lambda c: (c.train(configuration="4d"), ["'4d'"]),
    "fold-out-of-range": lambda c: (c.train(fold="5"), ["fold 5"]),
    "fold-negative": lambda c: (c.train(fold="-1"), ["fold -1"]),
    "fold-not-int": lambda c: (c.train(fold="first"), ["'first'"]),
    "trainer-unknown": lambda c: (c.train("-tr", "NoSuchTrainer"), ["NoSuchTrainer"]),
    "plans-unknown": lambda c: (c.train("-p", "NoPlans"), ["NoPlans"]),
    "epochs-zero": lambda c: (c.train("--epochs", "0"), ["--epochs", "0"]),
    "epochs-negative": lambda c: (c.train("--epochs", "-3"), ["--epochs", "-3"]),
    "iters-zero": lambda c: (c.train("--iters", "0"), ["--iters", "0"]),
    "val-iters-zero": lambda c: (c.train("--val-iters", "0"), ["--val-iters", "0"]),
    "save-every-negative": lambda c: (c.train("--save-every", "-1"), ["--save-every", "-1"]),
    "num-gpus-zero": lambda c: (c.train("-num_gpus", "0"), ["-num_gpus", "0"]),
    "num-gpus-negative": lambda c: (c.train("-num_gpus", "-2"), ["-num_gpus", "-2"]),
    "labeled-zero": lambda c: (c.train("--labeled", "0"), ["--labeled", "'0'"]),
    "labeled-negative": lambda c: (c.train("--labeled", "-2"), ["--labeled", "'-2'"]),
    "labeled-not-number": lambda c: (c.train("--labeled", "few"), ["--labeled", "'few'"]),
    "labeled-too-many": lambda c: (c.train("--labeled", "30"), ["--labeled 30"]),
    "hparam-no-equals": lambda c: (c.train("--hparam", "EMA_DECAY"), ["--hparam", "NAME=VALUE"]),
    "hparam-unknown": lambda c: (c.train("--hparam", "X=1"), ["--hparam", "X"]),
    "hparam-wrong-type": lambda c: (c.train("-tr", "nnUNetTrainerBCP", "--hparam", "EMA_DECAY=high"),
                                    ["EMA_DECAY", "'high'"]),
    "pretrained-missing": lambda c: (c.train("-pretrained_weights", str(c.tmp / "no.pth"), fold="1"), [str(c.tmp / "no.pth")]),
    "pretrained-is-a-folder": lambda c: (c.train("-pretrained_weights", str(c.dir("wdir")), fold="1"), [str(c.tmp / "wdir")]),
    "pretrained-empty": lambda c: (c.train("-pretrained_weights", str(c.file("e.pth", b"")), fold="1"), [str(c.tmp / "e.pth")]),
    "pretrained-truncated": lambda c: (
        c.train("-pretrained_weights", str(damage(Path(shutil.copy(c.w.ckpt, c.tmp / "t.pth")), "truncate")),
                fold="1"),
        [str(c.tmp / "t.pth"), "not a readable checkpoint"]),
    "pretrained-other-network": lambda c: (
        c.train("-pretrained_weights", str(edit_checkpoint(c.w.ckpt, c.tmp / "o.pth", widen_first_conv=True)),
                fold="1"),
        [str(c.tmp / "o.pth")]),
    "existing-checkpoint": lambda c: (c.train(), [str(c.w.fold0), "--continue"]),
    "continue-truncated": lambda c: ((damage(c.w.ckpt, "truncate"), c.train("--continue"))[1],
                                     [str(c.w.ckpt), "not a readable checkpoint"]),
    "continue-other-trainer": lambda c: (
        (edit_checkpoint(c.w.ckpt, c.w.ckpt, trainer_name="nnUNetTrainerBoundaryAware"), c.train("--continue"))[1],
        [str(c.w.ckpt), "nnUNetTrainerBoundaryAware"]),
    "continue-other-configuration": lambda c: (
        (edit_checkpoint(c.w.ckpt, c.w.ckpt, configuration="3d_fullres"), c.train("--continue"))[1],
        [str(c.w.ckpt), "3d_fullres"]),
    "val-without-checkpoint": lambda c: (c.train("--val", fold="1"), ["checkpoint_final.pth", "not found"]),
    "plans-corrupt": lambda c: ((damage(c.w.pre / "nnUNetPlans.json", "truncate"), c.train())[1],
                                [str(c.w.pre / "nnUNetPlans.json"), "not valid JSON"]),
    "splits-corrupt": lambda c: (((c.w.pre / "splits_final.json").write_text("[{"), c.train(fold="1"))[1],
                                 ["splits_final.json", "not valid JSON"]),
    "preprocessed-dataset-json-corrupt": lambda c: ((damage(c.w.pre / "dataset.json", "truncate"), c.train(fold="1"))[1],
                                                    [str(c.w.pre / "dataset.json")]),
    "preprocessed-data-missing": lambda c: ((shutil.rmtree(c.w.pre / "nnUNetPlans_2d"), c.train(fold="1"))[1],
                                            ["nnUNetPlans_2d", "not preprocessed"]),
    "hparam-not-of-this-trainer": lambda c: (c.train("-tr", "nnUNetTrainerBCP", "--hparam", "EMA=0.9", fold="1"),
                                             ["--hparam EMA", "nnUNetTrainerBCP"]),
})


# ---------------------------------------------------------------------------------------- predict
rows("predict", {
    "i-missing": lambda c: (c.predict(inp=c.tmp / "nope"), [str(c.tmp / "nope"), "does not exist"]),
    "i-is-a-file": lambda c: (c.predict(inp=c.file("img.png")), [str(c.tmp / "img.png"), "not a folder"]),
    "i-empty-folder": lambda c: (c.predict(inp=c.dir("none")), [str(c.tmp / "none"), "empty"]),
    "o-is-a-file": lambda c: (c.predict(out=c.file("o.txt")), ["-o", str(c.tmp / "o.txt")]),
    "o-is-input": lambda c: (c.predict(out=c.w.images), [str(c.w.images), "input folder"]),
    "o-holds-predictions": lambda c: ((c.file("out/case000.png", b"mine"), c.predict())[1],
                                      ["already exist", "--overwrite"]),
    "overwrite-and-continue": lambda c: (c.predict("--overwrite", "--continue"), ["--overwrite", "--continue"]),
    "d-unknown": lambda c: (c.predict("-d", "999"), ["999"]),
    "c-untrained": lambda c: (c.predict("-c", "3d_fullres"), ["3d_fullres", "no trained model"]),
    "tr-unknown": lambda c: (c.predict("-tr", "NoSuchTrainer"), ["NoSuchTrainer"]),
    "f-untrained": lambda c: (c.predict("-f", "3"), ["fold_3", "not found"]),
    "f-not-int": lambda c: (c.predict("-f", "first"), ["-f", "'first'"]),
    "f-negative": lambda c: (c.predict("-f", "-1"), ["-f", "'-1'"]),
    "chk-missing": lambda c: (c.predict("-chk", "checkpoint_best.pth"), ["checkpoint_best.pth"]),
    "num-parts-zero": lambda c: (c.predict("-num_parts", "0"), ["-num_parts 0"]),
    "num-parts-not-int": lambda c: (c.predict("-num_parts", "two"), ["-num_parts", "'two'"]),
    "part-id-too-large": lambda c: (c.predict("-num_parts", "2", "-part_id", "2"), ["-part_id 2"]),
    "part-id-negative": lambda c: (c.predict("-part_id", "-1"), ["-part_id -1"]),
    "step-size-zero": lambda c: (c.predict("-step_size", "0"), ["-step_size", "0"]),
    "step-size-too-large": lambda c: (c.predict("-step_size", "2"), ["-step_size", "2"]),
    "step-size-negative": lambda c: (c.predict("-step_size", "-0.5"), ["-step_size", "-0.5"]),
    "np-zero": lambda c: (c.predict("-np", "0"), ["-np", "0"]),
    "np-negative": lambda c: (c.predict("-np", "-2"), ["-np", "-2"]),
    "labeled-not-number": lambda c: (c.predict("--labeled", "few"), ["--labeled", "'few'"]),
    "m-missing": lambda c: (c.predict("-m", str(c.tmp / "nomodel")), [str(c.tmp / "nomodel")]),
    "m-is-a-file": lambda c: (c.predict("-m", str(c.file("model.zip"))), [str(c.tmp / "model.zip")]),
    "m-without-plans": lambda c: (c.predict("-m", str(c.dir("emptymodel"))), [str(c.tmp / "emptymodel" / "plans.json")]),
    "m-and-d": lambda c: (c.predict("-m", str(c.w.model), "-d", str(WORLD_ID)), ["-m", "-d"]),
    "from-best-missing": lambda c: (c.predict("--from-best", str(c.tmp / "nobest")), [str(c.tmp / "nobest")]),
    "from-best-corrupt": lambda c: (c.predict("--from-best", str(c.file("best/find_best.json", b"{").parent)),
                                    [str(c.tmp / "best" / "find_best.json")]),
    "from-best-and-ensemble": lambda c: (c.predict("--from-best", str(c.tmp), "--ensemble", str(c.w.model)),
                                         ["--from-best", "--ensemble"]),
    "ensemble-member-missing": lambda c: (c.predict("--ensemble", str(c.w.model), str(c.tmp / "nomodel")),
                                          [str(c.tmp / "nomodel")]),
    "ensemble-weighting-unknown": lambda c: (c.predict("--ensemble", str(c.w.model), str(c.w.model),
                                                       "--ensemble-weighting", "median"),
                                             ["--ensemble-weighting median", "mean, agreement"]),
    "ensemble-weighting-agreement-three-models": lambda c: (
        c.predict("--ensemble", *[str(c.w.model)] * 3, "--ensemble-weighting", "agreement"),
        ["--ensemble-weighting agreement", "SPECIALIST GENERALIST", "got 3"]),
    "ensemble-weighting-agreement-one-model": lambda c: (
        c.predict("--ensemble", str(c.w.model), "--ensemble-weighting", "agreement"),
        ["--ensemble-weighting agreement", "got 1"]),
    "ensemble-weighting-agreement-no-ensemble": lambda c: (c.predict("--ensemble-weighting", "agreement"),
                                                           ["--ensemble-weighting agreement", "got 0"]),
    "ensemble-weighting-agreement-from-best": lambda c: (
        c.predict("--from-best", str(c.tmp), "--ensemble-weighting", "agreement"),
        ["--ensemble-weighting agreement", "--from-best"]),
    "input-truncated": lambda c: (c.predict(inp=pred_dir_with(c, "truncate")), ["case001.png", "cannot be read"]),
    "input-empty-file": lambda c: (c.predict(inp=pred_dir_with(c, "empty")), ["case001.png", "empty"]),
    "input-other-file-type": lambda c: (c.predict(inp=pred_dir_with(c, "nii")), [".nii.gz"]),
    "input-rgb": lambda c: (c.predict(inp=pred_dir_with(c, "rgb")), ["case000.png", "3 channels"]),
    "input-extra-channel-file": lambda c: (c.predict(inp=pred_dir_with(c, "extra_channel")), ["case000_0001.png"]),
    "checkpoint-truncated": lambda c: ((damage(c.w.ckpt, "truncate"), c.predict())[1],
                                       [str(c.w.ckpt), "not a readable checkpoint"]),
    "checkpoint-other-trainer": lambda c: (
        (edit_checkpoint(c.w.ckpt, c.w.ckpt, trainer_name="nnUNetTrainerBoundaryAware"), c.predict())[1],
        [str(c.w.ckpt), "nnUNetTrainerBoundaryAware"]),
    "checkpoint-other-configuration": lambda c: (
        (edit_checkpoint(c.w.ckpt, c.w.ckpt, configuration="3d_fullres"), c.predict())[1], ["-c 2d", "3d_fullres"]),
    "checkpoint-other-configuration-m": lambda c: (
        (edit_checkpoint(c.w.ckpt, c.w.ckpt, configuration="3d_fullres"), c.predict(model=True))[1],
        [str(c.w.ckpt), "3d_fullres"]),
    "checkpoint-other-network": lambda c: (
        (edit_checkpoint(c.w.ckpt, c.w.ckpt, widen_first_conv=True), c.predict())[1], [str(c.w.ckpt)]),
    "model-plans-corrupt": lambda c: ((damage(c.w.model / "plans.json", "truncate"), c.predict())[1],
                                      [str(c.w.model / "plans.json")]),
})


# --------------------------------------------------------------------------------------- evaluate
def _eval_dir_with(c: Ctx, how: str) -> Path:
    pred = c.pred
    f = pred / "case001.nii.gz"
    if how in ("truncate", "garbage", "empty"):
        damage(f, how)
    elif how == "shape":
        write_nii(f, np.zeros((8, 10, 11), np.uint8))
    elif how == "orphan":
        shutil.copy(f, pred / "case009.nii.gz")
    elif how == "value7":
        label_values(c, pred, "case001", 7)
    elif how == "float":
        label_values(c, pred, "case001", 0.5, np.float32)
    elif how == "negative":
        label_values(c, pred, "case001", -1)
    elif how == "components":
        write_nii(f, np.zeros((8, 10, 12, 2), np.uint8), vector=True)
    return pred


rows("evaluate", {
    "ref-missing": lambda c: (c.evaluate(ref=c.tmp / "nope"), [str(c.tmp / "nope"), "not found"]),
    "ref-is-a-file": lambda c: (c.evaluate(ref=c.file("r.nii.gz")), [str(c.tmp / "r.nii.gz"), "not a folder"]),
    "pred-missing": lambda c: (c.evaluate(pred=c.tmp / "nope"), [str(c.tmp / "nope"), "not found"]),
    "pred-is-a-file": lambda c: (c.evaluate(pred=c.file("p.nii.gz")), [str(c.tmp / "p.nii.gz"), "not a folder"]),
    "pred-empty-folder": lambda c: (c.evaluate(pred=c.dir("none")), [str(c.tmp / "none"), "no segmentation files"]),
    "labels-missing": lambda c: (c.evaluate("--labels", str(c.tmp / "no.json")), [str(c.tmp / "no.json")]),
    "labels-is-a-folder": lambda c: (c.evaluate("--labels", str(c.dir("lab"))), [str(c.tmp / "lab")]),
    "labels-corrupt": lambda c: (c.evaluate("--labels", str(damage(c.labels_json, "truncate"))), [str(c.labels_json)]),
    "labels-empty": lambda c: (c.evaluate("--labels", str(damage(c.labels_json, "empty"))), [str(c.labels_json)]),
    "labels-value-not-int": lambda c: (
        c.evaluate("--labels", str(c.file("l.json", json.dumps({"labels": {"background": 0, "a": "x"}}).encode()))),
        [str(c.tmp / "l.json"), "'x'"]),
    "labels-list-of-names": lambda c: (c.evaluate("--labels", str(c.file("l.json", b'["a", "b"]'))),
                                       [str(c.tmp / "l.json")]),
    "labels-only-background": lambda c: (
        c.evaluate("--labels", str(c.file("l.json", json.dumps({"labels": {"background": 0}}).encode()))),
        [str(c.tmp / "l.json"), "no foreground"]),
    "labels-not-an-object": lambda c: (c.evaluate("--labels", str(c.file("l.json", b"3"))), [str(c.tmp / "l.json")]),
    "labels-and-dataset": lambda c: (c.evaluate("-d", "1", "--labels", str(c.labels_json)), ["-d", "--labels"]),
    "neither-labels-nor-dataset": lambda c: (c.evaluate()[:5], ["-d", "--labels"]),
    "d-unknown": lambda c: (c.evaluate("-d", "999"), ["999"]),
    "tolerance-negative": lambda c: (c.evaluate("--tolerance", "-1"), ["--tolerance -1"]),
    "tolerance-nan": lambda c: (c.evaluate("--tolerance", "nan"), ["--tolerance nan"]),
    "tolerance-not-float": lambda c: (c.evaluate("--tolerance", "1mm"), ["--tolerance", "'1mm'"]),
    "o-is-a-file": lambda c: (c.evaluate("-o", str(c.file("o.txt"))), ["-o", str(c.tmp / "o.txt")]),
    "o-parent-is-a-file": lambda c: (c.evaluate("-o", str(c.file("o.txt") / "sub")), ["-o", str(c.tmp / "o.txt")]),
    "images-missing": lambda c: (c.evaluate("--images", str(c.tmp / "noimg")), ["--images", str(c.tmp / "noimg")]),
    "images-is-a-file": lambda c: (c.evaluate("--images", str(c.file("i.nii.gz"))), ["--images", str(c.tmp / "i.nii.gz")]),
    "np-zero": lambda c: (c.evaluate("-np", "0"), ["-np 0"]),
    "np-negative": lambda c: (c.evaluate("-np", "-3"), ["-np -3"]),
    "np-not-int": lambda c: (c.evaluate("-np", "x"), ["-np", "'x'"]),
    "pred-truncated": lambda c: (c.evaluate(pred=_eval_dir_with(c, "truncate")), ["case001.nii.gz", "cannot be read"]),
    "pred-garbage": lambda c: (c.evaluate(pred=_eval_dir_with(c, "garbage")), ["case001.nii.gz", "cannot be read"]),
    "pred-empty-file": lambda c: (c.evaluate(pred=_eval_dir_with(c, "empty")), ["case001.nii.gz", "empty"]),
    "pred-wrong-shape": lambda c: (c.evaluate(pred=_eval_dir_with(c, "shape")), ["case001.nii.gz", "shape"]),
    "pred-without-reference": lambda c: (c.evaluate(pred=_eval_dir_with(c, "orphan")), ["case009"]),
    "pred-undeclared-value": lambda c: (c.evaluate(pred=_eval_dir_with(c, "value7")), ["case001.nii.gz", "[7]"]),
    "pred-float-values": lambda c: (c.evaluate(pred=_eval_dir_with(c, "float")), ["case001.nii.gz", "0.5"]),
    "pred-negative-values": lambda c: (c.evaluate(pred=_eval_dir_with(c, "negative")), ["case001.nii.gz", "-1"]),
    "pred-two-components": lambda c: (c.evaluate(pred=_eval_dir_with(c, "components")),
                                      ["case001.nii.gz", "channels"]),
    "ref-truncated": lambda c: ((c.pred, damage(c.src["labels"] / "case002.nii.gz", "truncate"), c.evaluate())[2],
                                ["case002.nii.gz", "cannot be read"]),
    "ref-undeclared-value": lambda c: ((c.pred, label_values(c, c.src["labels"], "case002", 5), c.evaluate())[2],
                                       ["case002.nii.gz", "[5]"]),
    "ref-two-components": lambda c: ((c.pred, write_nii(c.src["labels"] / "case000.nii.gz",
                                                         np.zeros((8, 10, 12, 2), np.uint8), vector=True),
                                      c.evaluate())[2], ["case000.nii.gz", "channels"]),
})


# -------------------------------------------------------------------------------------- find-best
def _fb(c: Ctx, *extra: str) -> list[str]:
    c.w  # noqa: B018 - activates the world's folders
    return ["find-best", "-d", str(WORLD_ID), "-np", "1", *extra]


rows("find-best", {
    "d-unknown": lambda c: (["find-best", "-d", "999"], ["999"]),
    "d-missing": lambda c: (["find-best"], ["-d"]),
    "metric-unknown": lambda c: (_fb(c, "--metric", "accuracy"), ["--metric", "'accuracy'"]),
    "ensemble-size-zero": lambda c: (_fb(c, "--ensemble-size", "0"), ["--ensemble-size", "0"]),
    "ensemble-size-negative": lambda c: (_fb(c, "--ensemble-size", "-2"), ["--ensemble-size", "-2"]),
    "ensemble-size-not-int": lambda c: (_fb(c, "--ensemble-size", "two"), ["--ensemble-size", "'two'"]),
    "f-not-int": lambda c: (_fb(c, "-f", "x"), ["-f", "'x'"]),
    "f-negative": lambda c: (_fb(c, "-f", "-1"), ["-f", "-1"]),
    "c-unknown": lambda c: (_fb(c, "-c", "4d"), ["-c", "4d"]),
    "tr-unknown": lambda c: (_fb(c, "-tr", "NoSuchTrainer"), ["-tr", "NoSuchTrainer"]),
    "np-zero": lambda c: (_fb(c, "-np", "0"), ["-np 0"]),
    "o-is-a-file": lambda c: (_fb(c, "-o", str(c.file("fb.txt"))), ["-o", str(c.tmp / "fb.txt")]),
    "no-complete-cross-validation": lambda c: (_fb(c), [WORLD_NAME, MODEL]),
    "model-dataset-json-corrupt": lambda c: ((damage(c.w.model / "dataset.json", "truncate"), _fb(c))[1],
                                             [str(c.w.model / "dataset.json")]),
})


# ----------------------------------------------------------------------------------- export-model
rows("export-model", {
    "m-missing": lambda c: (c.export(model=c.tmp / "nomodel"), [str(c.tmp / "nomodel")]),
    "m-is-a-file": lambda c: (c.export(model=c.file("model.txt")), [str(c.tmp / "model.txt")]),
    "m-not-a-model": lambda c: (c.export(model=c.dir("empty")), [str(c.tmp / "empty" / "plans.json")]),
    "o-exists": lambda c: (c.export(out=c.file("model.zip", b"mine")), [str(c.tmp / "model.zip"), "--overwrite"]),
    "o-is-a-folder": lambda c: (c.export("--overwrite", out=c.dir("zipdir")), ["-o", str(c.tmp / "zipdir")]),
    "o-parent-is-a-file": lambda c: (c.export(out=c.file("p.txt") / "m.zip"), ["-o", str(c.tmp / "p.txt")]),
    "f-untrained": lambda c: (c.export("-f", "3"), ["fold_3", "not found"]),
    "f-not-int": lambda c: (c.export("-f", "first"), ["-f", "'first'"]),
    "chk-missing": lambda c: (c.export("-chk", "checkpoint_best.pth"), ["checkpoint_best.pth"]),
    "no-nnzoo-metadata": lambda c: (((c.w.fold0 / "nnzoo_run.json").unlink(), c.export())[1], ["nnzoo_run.json"]),
    "m-missing-flag": lambda c: (["export-model", "-o", str(c.tmp / "m.zip")], ["-m"]),
    "checkpoint-truncated": lambda c: ((damage(c.w.ckpt, "truncate"), c.export())[1],
                                       [str(c.w.ckpt), "not a readable checkpoint"]),
})


# ---------------------------------------------------------------------------------- install-model
def _zip_with(c: Ctx, names: dict[str, bytes]) -> Path:
    f = c.tmp / "odd.zip"
    with zipfile.ZipFile(f, "w") as z:
        for n, data in names.items():
            z.writestr(n, data)
    return f


def _corrupt_member(c: Ctx) -> Path:
    f = c.model_zip(compression=zipfile.ZIP_STORED)
    data = bytearray(f.read_bytes())
    with zipfile.ZipFile(f) as z:
        info = z.getinfo(f"Dataset602_Other/{MODEL}/fold_0/checkpoint_final.pth")
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    data[at] ^= 0xFF
    f.write_bytes(bytes(data))
    return f


rows("install-model", {
    "zip-missing": lambda c: (["install-model", str(c.tmp / "no.zip")], [str(c.tmp / "no.zip"), "not found"]),
    "zip-is-a-folder": lambda c: (["install-model", str(c.dir("z.zip"))], [str(c.tmp / "z.zip"), "folder"]),
    "zip-empty": lambda c: (["install-model", str(c.file("e.zip", b""))], [str(c.tmp / "e.zip"), "not a zip"]),
    "zip-garbage": lambda c: (["install-model", str(c.file("g.zip", b"PK\x03\x04junk" * 20))],
                              [str(c.tmp / "g.zip"), "not a zip"]),
    "zip-truncated": lambda c: (["install-model", str(damage(c.model_zip(), "truncate"))],
                                [str(c.tmp / "m.zip"), "not a zip"]),
    "zip-member-corrupt": lambda c: (["install-model", str(_corrupt_member(c))],
                                     [str(c.tmp / "m.zip"), "checkpoint_final.pth"]),
    "zip-without-nnzoo-metadata": lambda c: (["install-model", str(c.model_zip(skip=("nnzoo_run.json",)))],
                                             [str(c.tmp / "m.zip"), "nnzoo_run.json"]),
    "zip-path-escapes": lambda c: (["install-model", str(_zip_with(c, {"../evil/x/nnzoo_run.json": b"{}"}))],
                                   [str(c.tmp / "odd.zip"), "../evil"]),
    "zip-not-a-model": lambda c: (["install-model", str(_zip_with(c, {"readme/a/nnzoo_run.json": b"{}"}))],
                                  [str(c.tmp / "odd.zip"), "readme"]),
    "already-installed": lambda c: (["install-model", str(c.model_zip(dataset=WORLD_NAME))],
                                    [str(c.w.model), "--overwrite"]),
    "zip-missing-arg": lambda c: (["install-model"], ["zip_file"]),
})

for _command, _table in (*DOMAIN_ROWS.items(), *AUGMENT_ROWS.items(), *ADAPT_ROWS.items()):
    # rows of --domains/--groups, --augment and --adapt/source-stats
    rows(_command, _table)


# ============================================================================================ the tests
@pytest.mark.parametrize("command,rid,build", BAD, ids=[f"{c.replace(' ', '-')}:{r}" for c, r, _ in BAD])
def test_bad_input(ctx, capsys, command, rid, build):
    argv, needles = build(ctx)
    before = snapshot(ctx.tmp)
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, f"exit {rc}: {err.strip()}"
    assert_one_error_line(err, needles)
    assert snapshot(ctx.tmp) == before, "files were written, changed or removed"


def test_rows_per_command_match_the_matrix():
    """The counts the README quotes are the matrix's."""
    assert dict(Counter(c for c, _, _ in BAD)) == ROWS_PER_COMMAND
    assert len({(c, r) for c, r, _ in BAD}) == len(BAD)
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    total = sum(ROWS_PER_COMMAND.values())
    assert f"{total} bad-input rows" in readme
    for command, n in ROWS_PER_COMMAND.items():
        assert f"{command} {n}" in readme, command
