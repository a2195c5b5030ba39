"""Prediction benchmark: ``nnzoo predict`` (fast by default) against ``nnUNetv2_predict`` on the same model and images.

Protocol (one command; resumable: the models are trained once into ``--work`` and reused):

1. **Models**: a brain-phantom cohort (:mod:`nnzoo.pipeline.brain_phantoms`) per configuration (``2d``:
   single slices; ``3d_fullres``: volumes), planned and trained with ``nnzoo train`` for a short,
   stated schedule (``nnUNetTrainer``, fold 0), enough to segment the phantoms.
2. **Runs**: for mirroring on and off, ``--repeats`` rounds, each running ``nnUNetv2_predict`` and
   ``nnzoo predict`` (and ``nnzoo predict --exact``) one after the other on the held-out test images,
   as whole commands (interpreter start-up, model loading, preprocessing, network, export), with the
   same worker counts (``-np`` / ``-npp -nps``) and ``nnUNet_def_n_proc``. The throughput ratio of a
   round is ``nnUNetv2_predict``'s wall time over ``nnzoo predict``'s; the table gives the median over
   rounds (and the range). The peak RSS of each command is the largest of its processes
   (``getrusage(RUSAGE_CHILDREN)`` of a wrapper).
3. **Same segmentations**: ``nnzoo predict``'s segmentations against ``--exact``'s (voxels that agree,
   per-class Dice between the two), and ``--exact``'s against ``nnUNetv2_predict``'s (bit-identical).
4. **Where the time goes**: one test case in this process, nnU-Net's steps timed one by one
   (preprocessing, network with sliding window and mirroring, export) for nnU-Net's predictor and
   nnzoo's.

Writes ``bench_predict.md`` and ``bench_predict.json`` to ``--out``. ``--smoke`` runs the path in a
minute or two (tiny images, a few iterations, one round) for the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATASETS = {"2d": (871, "PredBench2d"), "3d_fullres": (872, "PredBench3d")}
#: cohort and schedule per configuration: (render kwargs, train cases, test cases, epochs, iterations per epoch)
SETTINGS = {
    "2d": (dict(shape=(160, 192), spacing=1.2), 16, 6, 4, 50),
    "3d_fullres": (dict(shape=(64, 80), spacing=2.5, num_slices=56), 8, 3, 4, 25),
}
SMOKE = {
    "2d": (dict(shape=(48, 56), spacing=4.0), 5, 2, 1, 4),
    "3d_fullres": (dict(shape=(24, 28), spacing=7.0, num_slices=16), 5, 1, 1, 3),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--configs", nargs="+", default=["2d", "3d_fullres"], choices=sorted(DATASETS))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=3, help="rounds per mirroring setting (median reported)")
    ap.add_argument("--processes", type=int, default=None, help="worker processes of both commands (default: cores)")
    ap.add_argument("--work", default="bench_predict_work", help="datasets and models (reused when present)")
    ap.add_argument("--out", default=None, help="where the Markdown and JSON go (default: --work)")
    ap.add_argument("--smoke", action="store_true", help="tiny images, short training, one round")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {a.repeats}")
    a.processes = a.processes or max(1, min(4, os.cpu_count() or 1))
    return a


def _env(work: Path, processes: int) -> dict[str, str]:
    return {**os.environ, "nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(work / "nnUNet_results"), "nnUNet_def_n_proc": str(processes),
            "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", str(processes))}


def _run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run a command under a wrapper that reports its largest process's peak RSS; (seconds, MiB)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(r.returncode)")
    t = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-c", wrapper, *cmd], stdout=f, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - t
    text = log.read_text()
    if r.returncode:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed (log {log}):\n{text[-2000:]}")
    kb = next(int(ln.split()[1]) for ln in reversed(text.splitlines()) if ln.startswith("PEAK_RSS_KB"))
    return seconds, kb / 1024


def prepare_model(a: argparse.Namespace, config: str, work: Path, env: dict[str, str]) -> dict:
    """The cohort, dataset and trained model of a configuration (made once, reused)."""
    from nnzoo.pipeline.brain_phantoms import write_cohort

    did, name = DATASETS[config]
    render, n_train, n_test, epochs, iters = (SMOKE if a.smoke else SETTINGS)[config]
    src = work / f"cohort_{config}"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not (src / "manifest.json").is_file():
        print(f"[{config}] writing {n_train} + {n_test} phantoms {render}", flush=True)
        write_cohort(src, num_train=n_train, num_test=n_test, seed=0, dim=2 if config == "2d" else 3, **render)
    nnzoo = [sys.executable, "-m", "nnzoo.pipeline"]
    if not (work / "nnUNet_raw" / f"Dataset{did:03d}_{name}").is_dir():
        _run([*nnzoo, "dataset", "create", "--images", str(src / "images"), "--labels", str(src / "labels"),
              "--name", name, "--id", str(did), "--channel", "MR"], env, logs / f"create_{config}.log")
    model = work / "nnUNet_results" / f"Dataset{did:03d}_{name}" / f"nnUNetTrainer__nnUNetPlans__{config}"
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        print(f"[{config}] planning and training nnUNetTrainer fold 0: {epochs} epochs x {iters} iterations "
              "(once; reused by later runs)", flush=True)
        _run([*nnzoo, "plan_and_preprocess", "-d", str(did), "-c", config, "-np", str(a.processes)], env,
             logs / f"plan_{config}.log")
        _run([*nnzoo, "train", str(did), config, "0", "-device", a.device, "--epochs", str(epochs), "--iters",
              str(iters), "--no-val", "--overwrite", "--seed", "0"], env, logs / f"train_{config}.log")
    images = work / f"test_images_{config}"  # nnU-Net's input naming, read by both commands
    if not images.is_dir():
        images.mkdir()
        for f in sorted((src / "test_images").glob("*.nii.gz")):
            shutil.copy(f, images / f"{f.name[:-7]}_0000.nii.gz")
    return {"id": did, "model": model, "images": images, "cases": len(list(images.iterdir())),
            "schedule": f"{epochs} x {iters} iterations"}


def commands(a: argparse.Namespace, config: str, m: dict, out: Path, mirroring: bool) -> dict[str, list[str]]:
    common = ["-i", str(m["images"]), "-d", str(m["id"]), "-c", config, "-f", "0", "-device", a.device]
    nnzoo = [sys.executable, "-m", "nnzoo.pipeline", "predict", *common, "-np", str(a.processes), "--overwrite",
             *([] if mirroring else ["--disable-tta"])]
    return {"nnUNetv2_predict": [str(BIN / "nnUNetv2_predict"), *common, "-o", str(out / "nnunet"), "-npp",
                                 str(a.processes), "-nps", str(a.processes), *([] if mirroring else ["--disable_tta"])],
            "nnzoo predict": [*nnzoo, "-o", str(out / "nnzoo")],
            "nnzoo predict --exact": [*nnzoo, "-o", str(out / "exact"), "--exact"]}


def _read(folder: Path) -> dict:
    import SimpleITK as sitk

    return {f.name: sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in sorted(folder.glob("*.nii.gz"))}


def agreement(fast: Path, exact: Path, nnunet: Path, labels: list[int]) -> dict:
    """Voxel agreement and per-class Dice of the fast path vs --exact; whether --exact equals nnUNetv2_predict."""
    import numpy as np

    a, b, c = _read(fast), _read(exact), _read(nnunet)
    va, vb = np.concatenate([x.ravel() for x in a.values()]), np.concatenate([x.ravel() for x in b.values()])
    dice = {}
    for k in labels:
        s = (va == k).sum() + (vb == k).sum()
        dice[str(k)] = round(float(1.0 if s == 0 else 2 * ((va == k) & (vb == k)).sum() / s), 5)
    return {"voxels_agree": round(float((va == vb).mean()), 6), "dice_fast_vs_exact": dice,
            "exact_equals_nnunet": set(b) == set(c) and all(np.array_equal(b[k], c[k]) for k in b)}


def time_steps(a: argparse.Namespace, m: dict, config: str, env: dict[str, str]) -> dict:
    """Seconds per nnU-Net step for one test case, nnU-Net's predictor vs nnzoo's (this process, mirroring on)."""
    import tempfile

    import torch
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    from nnzoo.pipeline.inference import make_predictor
    from nnzoo.pipeline.predict import load_model, resolve_model

    os.environ.update({k: v for k, v in env.items() if k.startswith("nnUNet")})
    torch.set_num_threads(a.processes)
    model = resolve_model(model_dir=m["model"], folds=["0"])
    case = [str(sorted(m["images"].iterdir())[0])]
    out = {}
    for name, exact in (("nnUNetv2 (float32)", True), ("nnzoo", False)):
        p = make_predictor(exact=exact, device=torch.device(a.device), step_size=0.5, use_mirroring=True)
        p.manual_initialization(*load_model(model))
        t0 = time.perf_counter()
        data, _, props = DefaultPreprocessor(verbose=False).run_case(case, None, p.plans_manager, p.configuration_manager,
                                                                     p.dataset_json)
        t1 = time.perf_counter()
        logits = p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            export_prediction_from_logits(logits, props, p.configuration_manager, p.plans_manager, p.dataset_json,
                                          f"{tmp}/case", False)
        t3 = time.perf_counter()
        out[name] = {"preprocess": round(t1 - t0, 2), "network": round(t2 - t1, 2), "export": round(t3 - t2, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = Path(a.work).resolve()
    out_dir = Path(a.out).resolve() if a.out else work
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _env(work, a.processes)
    repeats = 1 if a.smoke else a.repeats
    import torch

    from nnzoo.pipeline.inference import fast_dtype

    dtype = fast_dtype(torch.device(a.device))
    rows = []
    for config in a.configs:
        m = prepare_model(a, config, work, env)
        labels = [int(v) for k, v in json.loads((m["model"] / "dataset.json").read_text())["labels"].items()
                  if k != "background"]
        steps = time_steps(a, m, config, env)
        for mirroring in (True, False):
            runs: dict[str, list[tuple[float, float]]] = {}
            for r in range(repeats):
                rnd = work / "runs" / f"{config}_{'tta' if mirroring else 'notta'}"
                shutil.rmtree(rnd, ignore_errors=True)
                rnd.mkdir(parents=True)
                for name, cmd in commands(a, config, m, rnd, mirroring).items():
                    runs.setdefault(name, []).append(_run(cmd, env, rnd / f"{name.replace(' ', '_')}.log"))
                print(f"[{config}, mirroring {'on' if mirroring else 'off'}] round {r + 1}/{repeats}: "
                      + ", ".join(f"{k} {v[-1][0]:.1f} s" for k, v in runs.items()), flush=True)
            agree = agreement(rnd / "nnzoo", rnd / "exact", rnd / "nnunet", labels)
            ratios = [n[0] / z[0] for n, z in zip(runs["nnUNetv2_predict"], runs["nnzoo predict"])]
            rows.append({"config": config, "mirroring": mirroring, "cases": m["cases"], "schedule": m["schedule"],
                         "seconds": {k: [round(s, 2) for s, _ in v] for k, v in runs.items()},
                         "peak_rss_mib": {k: round(max(x for _, x in v)) for k, v in runs.items()},
                         "ratio_median": round(statistics.median(ratios), 2),
                         "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)], **agree,
                         "steps": steps if mirroring else None})
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "device": a.device,
              "precision": str(dtype or torch.float32).replace("torch.", ""), "processes": a.processes,
              "repeats": repeats, "smoke": a.smoke, "rows": rows}
    (out_dir / "bench_predict.json").write_text(json.dumps(result, indent=1))
    md = to_markdown(result)
    (out_dir / "bench_predict.md").write_text(md)
    print(md)
    return 0


def to_markdown(r: dict) -> str:
    lines = [f"Prediction, {r['date']}, {r['machine']}, device {r['device']} (nnzoo's network precision: "
             f"{r['precision']}), {r['processes']} worker processes, median of {r['repeats']} alternating round(s); "
             "whole commands, start-up included.", "",
             "| configuration | mirroring | cases | nnUNetv2_predict s | nnzoo predict s | throughput ratio (range) | "
             "--exact s | voxels agree | Dice fast vs exact (min) | --exact = nnUNetv2 | peak RSS MiB nnzoo / nnUNetv2 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        s = row["seconds"]
        med = {k: statistics.median(v) for k, v in s.items()}
        rss = row["peak_rss_mib"]
        lines.append(f"| {row['config']} | {'on' if row['mirroring'] else 'off'} | {row['cases']} | "
                     f"{med['nnUNetv2_predict']:.1f} | {med['nnzoo predict']:.1f} | **{row['ratio_median']:.2f}×** "
                     f"({row['ratio_range'][0]:.2f}–{row['ratio_range'][1]:.2f}) | {med['nnzoo predict --exact']:.1f} | "
                     f"{100 * row['voxels_agree']:.3f} % | {min(row['dice_fast_vs_exact'].values()):.4f} | "
                     f"{'yes' if row['exact_equals_nnunet'] else 'NO'} | {rss['nnzoo predict']} / "
                     f"{rss['nnUNetv2_predict']} ({rss['nnzoo predict'] / rss['nnUNetv2_predict']:.2f}×) |")
    lines += ["", "Seconds per step for one case, mirroring on (this process):", "",
              "| configuration | predictor | preprocess | network | export |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        for name, st in (row["steps"] or {}).items():
            lines.append(f"| {row['config']} | {name} | {st['preprocess']} | {st['network']} | {st['export']} |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {gpu}, torch {torch.__version__}"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
