"""``--augment``: an input augmentation on top of any trainer, through the pipeline.

Options, ``nnzoo_run.json``, model-folder names (``<trainer>__<plans>__<configuration>[_<augment>][_labeled<N>]``)
and the commands that find model folders by nnU-Net's names (``predict``, ``export-model``, ``find-best``);
the slow tests train on the tiny 2D dataset through the CLI (plain, and semi-supervised with a label budget).
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_export_naming import DATASET, build_model_folder  # noqa: E402

from nnzoo.pipeline.cli import build_parser, main  # noqa: E402
from nnzoo.pipeline.errors import NnzooError  # noqa: E402

PLAIN = "nnUNetTrainer__nnUNetPlans__2d"


def _one_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------ options and names
def test_train_options_read_augment_from_the_command_line():
    from nnzoo.pipeline.train import TrainOptions

    args = build_parser().parse_args(["train", "1", "2d", "0", "--augment", "gin", "--labeled", "4"])
    o = TrainOptions.from_namespace(args)
    assert (o.augment, o.labeled) == ("gin", "4")
    assert TrainOptions.from_namespace(build_parser().parse_args(["train", "1", "2d", "0"])).augment is None


def test_the_record_and_the_folder_carry_the_augmentation(tmp_path):
    from nnzoo.pipeline.train import TrainOptions, TrainRun

    def run(**kw) -> TrainRun:
        return TrainRun(TrainOptions(dataset="Dataset001_X", configuration="2d", fold=0, plans="nnUNetPlans", **kw), {})

    results = tmp_path / "nnUNet_results" / "Dataset001_X"
    assert run().fold_dir == results / PLAIN / "fold_0" and run().model_folder_name is None
    assert run(augment="gin").fold_dir == results / f"{PLAIN}_gin" / "fold_0"
    assert run(augment="gin", labeled=4).model_folder_name == f"{PLAIN}_gin_labeled4"
    assert run(labeled=0.25).model_folder_name == f"{PLAIN}_labeled0.25"
    assert run(augment="gin").record()["augment"] == "gin" and run().record()["augment"] is None
    assert json.loads(json.dumps(run(augment="gin").record()))["augment"] == "gin"


@pytest.mark.parametrize("name, expected", [
    (PLAIN, ("2d", None, None)),
    (f"{PLAIN}_gin", ("2d", "gin", None)),
    (f"{PLAIN}_gin_labeled4", ("2d", "gin", "4")),
    (f"{PLAIN}_labeled0.1", ("2d", None, "0.1")),
    ("nnUNetTrainer__nnUNetPlans__3d_lowres", ("3d_lowres", None, None)),  # a configuration's own underscore
    ("nnUNetTrainer__nnUNetPlans__3d_cascade_fullres_gin_labeled2", ("3d_cascade_fullres", "gin", "2")),
    ("nnUNetTrainer__nnUNetPlans__2d_foo", ("2d_foo", None, None)),  # not an augmentation: part of the configuration
    ("nnUNetTrainer__nnUNetPlans__gin", ("gin", None, None)),
])
def test_model_folder_names_parse_back(name, expected):
    from nnzoo.pipeline.experiment import parse_model_folder_name

    info = parse_model_folder_name(name)
    assert (info["configuration"], info["augment"], info["labeled"]) == expected
    assert parse_model_folder_name("ensembles") is None and parse_model_folder_name("a__b") is None


def test_suffix_order_round_trips():
    from nnzoo.pipeline.experiment import model_folder_suffix, parse_model_folder_name

    for augment in (None, "gin"):
        for labeled in (None, 4, 0.5):
            name = f"{PLAIN}{model_folder_suffix(augment=augment, labeled=labeled)}"
            info = parse_model_folder_name(name)
            assert (info["augment"], info["labeled"]) == (augment, None if labeled is None else f"{labeled:g}"), name
    assert model_folder_suffix(augment="gin", labeled=4) == "_gin_labeled4"


def test_unknown_augmentation_is_one_line_naming_the_accepted_ones():
    from nnzoo.pipeline.experiment import check_augment

    assert check_augment(None) is None and check_augment("gin") == "gin"
    with pytest.raises(NnzooError, match=r"--augment 'gni'.*accepted: gin"):
        check_augment("gni")


def test_training_class_keeps_the_name_and_composes():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnzoo.pipeline.train import training_class
    from nnzoo.trainers.augment import GINAugmentMixin, GINUnlabeledMixin
    from nnzoo.trainers.base import NnzooTrainerMixin
    from nnzoo.trainers.mean_teacher import nnUNetTrainerMeanTeacher

    plain = training_class(nnUNetTrainer)
    assert not issubclass(plain, GINAugmentMixin) and issubclass(plain, NnzooTrainerMixin)
    gin = training_class(nnUNetTrainer, augment="gin", hparams={"GIN_N_LAYERS": 3})
    assert gin.__name__ == "nnUNetTrainer" and issubclass(gin, GINAugmentMixin) and issubclass(gin, NnzooTrainerMixin)
    assert gin.GIN_N_LAYERS == 3 and GINAugmentMixin.GIN_N_LAYERS == 4  # the override reaches this class only
    semi = training_class(nnUNetTrainerMeanTeacher, augment="gin")
    assert semi.__name__ == "nnUNetTrainerMeanTeacher" and issubclass(semi, GINUnlabeledMixin)
    assert issubclass(semi, nnUNetTrainerMeanTeacher)


def _fake_model(root: Path, name: str, checkpoint: bool = True) -> Path:
    fold = root / name / "fold_0"
    fold.mkdir(parents=True)
    (root / name / "plans.json").write_text("{}")
    if checkpoint:
        (fold / "checkpoint_latest.pth").write_bytes(b"x")
    return fold


def test_continue_points_at_the_sibling_run_of_another_augmentation(tmp_path, capsys):
    """--continue with no checkpoint in its folder: a run of the same trainer/plans/configuration under another
    augmentation or budget is named; other configurations (``3d_lowres`` for ``3d_fullres``) are not."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnzoo.pipeline.train import TrainOptions, TrainRun
    from nnzoo.pipeline.train_checks import check_checkpoint_to_continue

    root = tmp_path / "nnUNet_results" / "Dataset001_X"
    _fake_model(root, "nnUNetTrainer__nnUNetPlans__3d_fullres_gin")
    _fake_model(root, "nnUNetTrainer__nnUNetPlans__3d_fullresx")  # another configuration that shares the prefix
    _fake_model(root, "nnUNetTrainer__nnUNetPlans__3d_lowres")

    def run(**kw) -> TrainRun:
        return TrainRun(TrainOptions(dataset="Dataset001_X", configuration="3d_fullres", fold=0, plans="nnUNetPlans",
                                     resume=True, **kw), {})

    with pytest.raises(NnzooError) as e:
        check_checkpoint_to_continue(run(), nnUNetTrainer)
    assert "3d_fullres_gin" in str(e.value) and "--augment" in str(e.value) and "3d_fullresx" not in str(e.value)
    assert "3d_lowres" not in str(e.value)
    with pytest.raises(NnzooError, match="3d_fullres_gin"):  # the same for a budget of the same run
        check_checkpoint_to_continue(run(labeled=4), nnUNetTrainer)
    _fake_model(root, "nnUNetTrainer__nnUNetPlans__3d_lowres_gin", checkpoint=False)
    (root / "nnUNetTrainer__nnUNetPlans__3d_fullres_gin" / "fold_0" / "checkpoint_latest.pth").unlink()
    check_checkpoint_to_continue(run(augment="gin"), nnUNetTrainer)  # nothing anywhere: a new training
    assert "starting a new training" in capsys.readouterr().out


def test_find_models_reads_and_filters_the_augmentation(tmp_path):
    from nnzoo.pipeline.selection import find_models

    root = tmp_path / "nnUNet_results" / "Dataset001_X"
    for name in (PLAIN, f"{PLAIN}_gin", f"{PLAIN}_gin_labeled4", "nnUNetTrainer__nnUNetPlans__3d_lowres"):
        _fake_model(root, name)
    models = {Path(m["folder"]).name: m for m in find_models("Dataset001_X")}
    assert (models[f"{PLAIN}_gin_labeled4"]["configuration"], models[f"{PLAIN}_gin_labeled4"]["augment"],
            models[f"{PLAIN}_gin_labeled4"]["labeled"]) == ("2d", "gin", "4")
    assert models["nnUNetTrainer__nnUNetPlans__3d_lowres"]["configuration"] == "3d_lowres"
    gin = sorted(Path(m["folder"]).name for m in find_models("Dataset001_X", augments=["gin"]))
    assert gin == [f"{PLAIN}_gin", f"{PLAIN}_gin_labeled4"]
    none = sorted(Path(m["folder"]).name for m in find_models("Dataset001_X", configurations=["2d"], augments=["none"]))
    assert none == [PLAIN]


def test_find_best_augment_flag_errors(tmp_path, capsys):
    build_model_folder(tmp_path)
    err = _one_error(capsys, ["find-best", "-d", "901", "--augment", "gni"])
    assert "--augment 'gni'" in err and "gin" in err and "none" in err
    err = _one_error(capsys, ["find-best", "-d", "901", "--augment", "gin"])
    assert "--augment gin" in err and "no trained model" in err and "none" in err
    # `--augment none` keeps the plain model: on to the cross-validation check (this model has none)
    err = _one_error(capsys, ["find-best", "-d", "901", "--augment", "none", "-np", "1"])
    assert PLAIN in err and "cross-validation" in err


def test_export_model_finds_the_augmented_folder(tmp_path, capsys):
    build_model_folder(tmp_path, augment="gin")
    assert main(["export-model", "-d", "901", "-c", "2d", "--augment", "gin", "-o", str(tmp_path / "m.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "m.zip") as z:
        assert f"{DATASET}/{PLAIN}_gin/fold_0/checkpoint_final.pth" in z.namelist()
    err = _one_error(capsys, ["export-model", "-d", "901", "-c", "2d", "-o", str(tmp_path / "n.zip")])
    assert f"{PLAIN}: no trained model" in err and f"{PLAIN}_gin" in err  # the existing model listed
    err = _one_error(capsys, ["export-model", "-d", "901", "-c", "2d", "--augment", "gin", "--labeled", "4", "-o",
                              str(tmp_path / "n.zip")])
    assert f"{PLAIN}_gin_labeled4: no trained model" in err and "--augment gin --labeled 4" in err
    err = _one_error(capsys, ["export-model", "-m", str(tmp_path), "--augment", "gin", "-o", str(tmp_path / "n.zip")])
    assert "--augment given too" in err


def test_predict_refuses_augment_with_a_model_folder(tmp_path, capsys):
    model = build_model_folder(tmp_path, augment="gin")
    err = _one_error(capsys, ["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-m", str(model),
                              "--augment", "gin"])
    assert "--augment gin" in err and "-m" in err


# ------------------------------------------------------------------------------------------------- CLI runs
def _results() -> Path:
    return Path(os.environ["nnUNet_results"]) / "Dataset502_Toy2d"


def _train(did: str, *extra: str) -> list[str]:
    return ["train", did, "2d", "1", "-device", "cpu", "--epochs", "1", "--iters", "2", "--val-iters", "1", "--no-val",
            "--overwrite", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_train_augment_gin_lands_in_its_own_folder_and_is_found(in_prepared, tmp_path, capsys):
    did = str(in_prepared["id"])
    plain = _results() / PLAIN / "fold_1"
    gin = _results() / f"{PLAIN}_gin" / "fold_1"
    assert main(_train(did, "--augment", "gin", "--seed", "0")) == 0
    assert (gin / "checkpoint_final.pth").is_file() and not plain.exists()
    assert json.loads((gin / "nnzoo_run.json").read_text())["augment"] == "gin"
    log = next(gin.glob("training_log_*.txt")).read_text()
    assert "GIN augmentation on (--augment gin)" in log
    before = (gin / "checkpoint_final.pth").read_bytes()

    assert main(_train(did, "--seed", "0")) == 0  # without --augment: nnU-Net's folder, the GIN run untouched
    assert (plain / "checkpoint_final.pth").is_file() and (gin / "checkpoint_final.pth").read_bytes() == before
    assert json.loads((plain / "nnzoo_run.json").read_text())["augment"] is None
    assert "GIN augmentation" not in next(plain.glob("training_log_*.txt")).read_text()

    images = in_prepared["src"]["images"]
    out = tmp_path / "pred"
    assert main(["predict", "-i", str(images), "-o", str(out), "-d", did, "-c", "2d", "--augment", "gin", "-f", "1",
                 "-device", "cpu", "--disable-tta"]) == 0
    assert len(list(out.glob("*.png"))) == 6
    assert f"with {PLAIN}_gin folds [1]" in capsys.readouterr().out
    assert main(["export-model", "-d", did, "-c", "2d", "--augment", "gin", "-o", str(tmp_path / "m.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "m.zip") as z:
        assert f"Dataset502_Toy2d/{PLAIN}_gin/fold_1/nnzoo_run.json" in z.namelist()

    # --continue without --augment resumes the plain run; --val with --augment validates the GIN run's record
    assert main(["train", did, "2d", "1", "-device", "cpu", "--continue", "--epochs", "2", "--no-val"]) == 0
    assert json.loads((plain / "nnzoo_run.json").read_text())["augment"] is None
    capsys.readouterr()
    (gin / "nnzoo_run.json").write_text(json.dumps({**json.loads((gin / "nnzoo_run.json").read_text()),
                                                    "augment": None}))
    err = _one_error(capsys, ["train", did, "2d", "1", "-device", "cpu", "--continue", "--augment", "gin"])
    assert "--augment" in err and "nnzoo_run.json" in err


@pytest.mark.slow
@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_augment_composes_with_a_semi_supervised_trainer(in_prepared, tmp_path):
    did = str(in_prepared["id"])
    trainer = "nnUNetTrainerMeanTeacher"
    fold = _results() / f"{trainer}__nnUNetPlans__2d_gin_labeled2" / "fold_1"
    assert main(_train(did, "-tr", trainer, "--labeled", "2", "--augment", "gin", "--seed", "0",
                       "--hparam", "GIN_N_LAYERS=3", "--hparam", "EMA_DECAY=0.9")) == 0
    assert (fold / "checkpoint_final.pth").is_file()
    record = json.loads((fold / "nnzoo_run.json").read_text())
    assert (record["augment"], record["labeled"], record["trainer"]) == ("gin", 2, trainer)
    assert record["hparams"] == {"GIN_N_LAYERS": 3, "EMA_DECAY": 0.9}  # the trainer's and the augmentation's
    assert len(json.loads((fold / "labeled_split.json").read_text())["labeled"]) == 2
    assert "GIN augmentation on (--augment gin): 3 random conv layers" in next(fold.glob("training_log_*.txt")).read_text()
    assert main(["predict", "-i", str(in_prepared["src"]["images"]), "-o", str(tmp_path / "pred"), "-d", did, "-c",
                 "2d", "-tr", trainer, "--labeled", "2", "--augment", "gin", "-f", "1", "-device", "cpu",
                 "--disable-tta"]) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 6


@pytest.mark.slow
@pytest.mark.parametrize("in_prepared", ["prepared_2d"], indirect=True)
def test_augment_on_two_cpu_processes(in_prepared):
    """``-num_gpus 2`` on the CPU (Gloo): every rank builds the augmented trainer from the same TrainRun."""
    did = str(in_prepared["id"])
    fold = _results() / f"{PLAIN}_gin" / "fold_3"
    assert main(["train", did, "2d", "3", "-device", "cpu", "-num_gpus", "2", "--epochs", "1", "--iters", "2",
                 "--val-iters", "1", "--no-val", "--overwrite", "--augment", "gin"]) == 0
    assert (fold / "checkpoint_final.pth").is_file()
    assert json.loads((fold / "nnzoo_run.json").read_text())["augment"] == "gin"
    assert "GIN augmentation on (--augment gin)" in next(fold.glob("training_log_*.txt")).read_text()
