"""find-best, ensembles, predict --from-best/--continue/parts, export/install (tiny 2D dataset, 2 trainers x 5 folds).

``predict --from-best`` must give the same arrays as nnU-Net's own ``nnUNetv2_ensemble`` +
``nnUNetv2_apply_postprocessing`` on the same probabilities; a resumed prediction the same outputs
as an uninterrupted one without redoing finished cases; two parts must cover the folder exactly
once; an exported and reinstalled model must predict the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnzoo.pipeline.cli import main

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TRAINERS = ("nnUNetTrainer", "nnUNetTrainerBoundaryAware")


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Dataset 504 (8 PNG cases) with nnUNetTrainer and BA-Net trained on all 5 folds with --npz."""
    from helpers import nnunet_folders

    from nnzoo.pipeline.synthetic import write_synthetic_folders

    base = tmp_path_factory.mktemp("zoo")
    src = write_synthetic_folders(base / "src", num_cases=8, shape=(32, 32), num_classes=3, file_ending=".png", seed=8)
    with nnunet_folders(base / "work"):
        assert main(["dataset", "create", "--images", str(src["images"]), "--labels", str(src["labels"]), "--name",
                     "Zoo", "--id", "504", "--channel", "img"]) == 0
        assert main(["plan_and_preprocess", "-d", "504", "-c", "2d", "-np", "2"]) == 0
        for tr in TRAINERS:
            for fold in range(5):
                assert main(["train", "504", "2d", str(fold), "-tr", tr, "-device", "cpu", "--epochs", "1",
                             "--iters", "3", "--npz", "--seed", str(fold)]) == 0
    yield {"base": base / "work", "src": src}
    shutil.rmtree(base, ignore_errors=True)  # ten trained models off the disk once the module is done


@pytest.fixture
def in_zoo(zoo):
    from helpers import nnunet_folders

    with nnunet_folders(zoo["base"]):
        yield zoo


def test_find_best_ranks_ensembles_and_predicts_like_nnunet(in_zoo, tmp_path, capsys):
    assert main(["find-best", "-d", "504", "-c", "2d", "--ensemble-size", "2", "-o", str(tmp_path / "best")]) == 0
    out = capsys.readouterr().out
    assert "find-best [2/2]" in out and "ensemble 1/1" in out and "nnzoo predict --from-best" in out
    result = json.loads((tmp_path / "best" / "find_best.json").read_text())
    assert sorted(Path(m["folder"]).name.split("__")[0] for m in result["models"]) == sorted(TRAINERS)
    scores = [m["score"] for m in result["models"]]
    assert scores == sorted(scores, reverse=True) and len(result["ensembles"]) == 1
    best = result["best"]
    all_scores = scores + [result["ensembles"][0]["score"]]
    assert best["score_before_postprocessing"] == max(all_scores)
    assert (tmp_path / "best" / "postprocessing.pkl").is_file() and (tmp_path / "best" / "find_best.md").is_file()

    images = in_zoo["src"]["images"]
    assert main(["predict", "--from-best", str(tmp_path / "best"), "-i", str(images), "-o", str(tmp_path / "ours"),
                 "-device", "cpu"]) == 0
    # the same with nnU-Net's own commands on nnzoo's member probabilities
    members = []
    for i, folder in enumerate(best["members"]):
        members.append(str(tmp_path / f"m{i}"))
        assert main(["predict", "-m", folder, "-i", str(images), "-o", members[-1], "--save-probabilities",
                     "-device", "cpu"]) == 0
    merged = members[0]
    if len(members) > 1:
        merged = str(tmp_path / "ens")
        subprocess.run([str(BIN / "nnUNetv2_ensemble"), "-i", *members, "-o", merged, "-np", "1"], check=True,
                       capture_output=True)
    subprocess.run([str(BIN / "nnUNetv2_apply_postprocessing"), "-i", merged, "-o", str(tmp_path / "theirs"),
                    "-pp_pkl_file", best["postprocessing_file"], "-plans_json", best["plans_file"], "-np", "1"],
                   check=True, capture_output=True)
    ours, theirs = _arrays(tmp_path / "ours"), _arrays(tmp_path / "theirs")
    assert ours.keys() == theirs.keys() and len(ours) == 8
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])


def test_nnunets_own_find_best_works_where_its_cross_product_allows(in_zoo):
    r = subprocess.run([str(BIN / "nnUNetv2_find_best_configuration"), "504", "-c", "2d", "-tr", "nnUNetTrainer",
                        "-p", "nnUNetPlans", "--disable_ensembling", "-np", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nnUNetTrainer__nnUNetPlans__2d" in r.stdout


def test_find_best_and_ensemble_errors(in_zoo, tmp_path, capsys):
    assert main(["find-best", "-d", "504", "-tr", "nnUNetTrainerCoTr"]) == 2
    assert "no trained model of this dataset has the trainer" in capsys.readouterr().err
    models = Path(os.environ["nnUNet_results"]) / "Dataset504_Zoo"
    other = tmp_path / "other"
    shutil.copytree(models / "nnUNetTrainer__nnUNetPlans__2d", other)
    dj = json.loads((other / "dataset.json").read_text())
    dj["labels"]["extra"] = 3
    (other / "dataset.json").write_text(json.dumps(dj))
    assert main(["predict", "--ensemble", str(models / "nnUNetTrainer__nnUNetPlans__2d"), str(other), "-i",
                 str(in_zoo["src"]["images"]), "-o", str(tmp_path / "o")]) == 2
    assert "cannot be ensembled: different label sets" in capsys.readouterr().err


def test_agreement_weighted_ensemble_of_a_specialist_and_a_generalist(in_zoo, tmp_path, capsys):
    from nnzoo.pipeline.ensembling import agreement, mix

    models = Path(os.environ["nnUNet_results"]) / "Dataset504_Zoo"
    spec, gen = models / "nnUNetTrainer__nnUNetPlans__2d", next(models.glob("nnUNetTrainerBoundaryAware__*__2d"))
    common = ["-i", str(in_zoo["src"]["images"]), "-f", "0", "-device", "cpu"]
    assert main(["predict", *common, "-o", str(tmp_path / "agree"), "--ensemble", str(spec), str(gen),
                 "--ensemble-weighting", "agreement"]) == 0
    assert "weighting the two models per case by their agreement" in capsys.readouterr().out
    for name, model in (("s", spec), ("g", gen)):  # each model alone, with its probabilities
        assert main(["predict", *common, "-o", str(tmp_path / name), "-m", str(model), "--save-probabilities"]) == 0
    record = json.loads((tmp_path / "agree" / "ensemble_weights.json").read_text())
    out, alone_s, alone_g = _arrays(tmp_path / "agree"), _arrays(tmp_path / "s"), _arrays(tmp_path / "g")
    assert sorted(out) == sorted(alone_s) and sorted(record["cases"]) == sorted(Path(n).stem for n in out)
    for name in out:
        a = agreement(alone_s[name], alone_g[name], [1, 2])
        assert record["cases"][Path(name).stem]["agreement"] == pytest.approx(a, abs=1e-6)
        p_s, p_g = (np.load(tmp_path / m / f"{Path(name).stem}.npz")["probabilities"] for m in ("s", "g"))
        np.testing.assert_array_equal(out[name], mix(p_s, p_g, a).argmax(0).reshape(out[name].shape))
    assert any(0 < c["agreement"] < 1 for c in record["cases"].values())  # some case really mixed
    # the same model twice agrees with itself everywhere: its own segmentation
    assert main(["predict", *common, "-o", str(tmp_path / "twice"), "--ensemble", str(spec), str(spec),
                 "--ensemble-weighting", "agreement"]) == 0
    twice = json.loads((tmp_path / "twice" / "ensemble_weights.json").read_text())
    assert all(c["agreement"] == 1.0 for c in twice["cases"].values())
    for name, arr in _arrays(tmp_path / "twice").items():
        np.testing.assert_array_equal(arr, alone_s[name])
    # predicted again into the same folder with nnU-Net's average: the agreement record goes with the old outputs
    assert main(["predict", *common, "-o", str(tmp_path / "twice"), "--ensemble", str(spec), str(gen),
                 "--overwrite"]) == 0
    assert not (tmp_path / "twice" / "ensemble_weights.json").exists()


def test_continue_and_parts(in_zoo, tmp_path):
    images = in_zoo["src"]["images"]
    args = ["-i", str(images), "-d", "504", "-c", "2d", "-device", "cpu"]
    assert main(["predict", *args, "-o", str(tmp_path / "ref")]) == 0
    ref = _arrays(tmp_path / "ref")
    # an interrupted run: three outputs complete, one half-written, the rest missing
    part = tmp_path / "part"
    part.mkdir()
    names = sorted(ref)
    for n in names[:3]:
        shutil.copy(tmp_path / "ref" / n, part / n)
    (part / names[3]).write_bytes((tmp_path / "ref" / names[3]).read_bytes()[:40])
    kept = {n: (part / n).stat().st_mtime_ns for n in names[:3]}
    assert main(["predict", *args, "-o", str(part)]) == 2  # refused without --continue
    assert main(["predict", *args, "-o", str(part), "--continue"]) == 0
    assert {n: (part / n).stat().st_mtime_ns for n in names[:3]} == kept  # finished cases not redone
    resumed = _arrays(part)
    assert resumed.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(resumed[k], ref[k])
    # two parts into one folder cover every case exactly once
    shard = tmp_path / "shard"
    written = []
    for pid in (0, 1):
        before = set(p.name for p in shard.glob("*.png")) if shard.is_dir() else set()
        assert main(["predict", *args, "-o", str(shard), "-num_parts", "2", "-part_id", str(pid), "--continue"]) == 0
        written.append(set(p.name for p in shard.glob("*.png")) - before)
    assert written[0] and written[1] and not written[0] & written[1] and written[0] | written[1] == set(ref)


def test_export_install_predict(in_zoo, tmp_path, monkeypatch, capsys):
    model = Path(os.environ["nnUNet_results"]) / "Dataset504_Zoo" / "nnUNetTrainer__nnUNetPlans__2d"
    images = in_zoo["src"]["images"]
    assert main(["predict", "-m", str(model), "-i", str(images), "-o", str(tmp_path / "a"), "-device", "cpu"]) == 0
    assert main(["export-model", "-m", str(model), "-o", str(tmp_path / "model.zip")]) == 0
    fresh = tmp_path / "elsewhere"
    monkeypatch.setenv("nnUNet_results", str(fresh))
    assert main(["install-model", str(tmp_path / "model.zip")]) == 0
    installed = fresh / "Dataset504_Zoo" / model.name
    assert (installed / "fold_0" / "nnzoo_run.json").is_file() and (installed / "plans.json").is_file()
    assert main(["predict", "-m", str(installed), "-i", str(images), "-o", str(tmp_path / "b"), "-device", "cpu"]) == 0
    a, b = _arrays(tmp_path / "a"), _arrays(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["install-model", str(tmp_path / "model.zip")]) == 2
    assert "already installed" in capsys.readouterr().err
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.zip") as z, zipfile.ZipFile(tmp_path / "plain.zip", "w") as plain:
        for n in z.namelist():
            if not n.endswith(("nnzoo_run.json", "labeled_split.json")):
                plain.writestr(n, z.read(n))
    assert main(["install-model", str(tmp_path / "plain.zip"), "--overwrite"]) == 2
    assert "no nnzoo metadata" in capsys.readouterr().err


def test_val_npz_and_pretrained_weights(in_zoo, capsys):
    fold0 = Path(os.environ["nnUNet_results"]) / "Dataset504_Zoo" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0"
    summary = fold0 / "validation" / "summary.json"
    before = summary.stat().st_mtime_ns
    assert main(["train", "504", "2d", "0", "-device", "cpu", "--val", "--npz"]) == 0  # validation only
    assert summary.stat().st_mtime_ns > before and list((fold0 / "validation").glob("*.npz"))
    assert main(["train", "504", "2d", "0", "-device", "cpu", "--val", "--val_best"]) == 0
    capsys.readouterr()
    assert main(["train", "504", "2d", "0", "-device", "cpu", "--labeled", "3", "--epochs", "1", "--iters", "1",
                 "--no-val", "-pretrained_weights", str(fold0.parent / "fold_1" / "checkpoint_final.pth")]) == 0
    assert "Loading pretrained weights from file" in capsys.readouterr().out
    assert (fold0.parent.parent / "nnUNetTrainer__nnUNetPlans__2d_labeled3" / "fold_0" / "checkpoint_final.pth").is_file()
