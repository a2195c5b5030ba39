"""One benchmark harness: every registered trainer against nnUNetTrainer, and nnzoo predict against nnUNetv2_predict.

Sections (each measured in this run, on this machine):

1. train-step time (and CUDA peak memory) of every registered trainer relative to
   ``nnUNetTrainer`` on the same plans, patch and batch (steps interleaved so load affects all alike);
2. prediction throughput of ``nnzoo predict`` relative to ``nnUNetv2_predict`` on the same model
   and images (needs a trained demo model: run ``nnzoo demo`` first);
3. the low-label accuracy table of ``benchmarks/low_label.py``, read from its output folder if present;
4. the domain-shift table of ``benchmarks/domain_shift.py``, read from its output folder if present.

Writes ``benchmarks/results/benchmarks.md`` (and a PNG bar chart) and, with ``--update-readme``,
replaces the block between ``<!-- figures -->`` markers in README.md.

    python benchmarks/run_all.py [--device cpu|cuda] [--workdir nnzoo_work] [--update-readme]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MARK = "<!-- figures -->"


def train_step_section(device: torch.device, patch: list[int], batch_size: int, rounds: int, steps: int,
                       warmup: int) -> list[dict]:
    from benchmarks.common import build_trainer, make_batch, prepare_for_steps, time_interleaved
    from nnzoo.trainers import list_trainers
    from nnzoo.trainers.base import nnzoo_trainer_class

    plans = json.loads((REPO / "tests" / "data" / "tiny_plans.json").read_text())
    cfg = "3d_fullres" if len(patch) == 3 else "2d"
    plans["configurations"][cfg]["patch_size"] = patch
    plans["configurations"][cfg]["batch_size"] = batch_size
    dataset_json = json.loads((REPO / "tests" / "data" / "tiny_dataset.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for info in list_trainers():
            if cfg[:2] not in info.dims:
                continue
            torch.manual_seed(0)
            trainers[info.name] = build_trainer(nnzoo_trainer_class(info.cls), plans, cfg, dataset_json, device,
                                                Path(tmp) / info.name)
        batches = {name: make_batch(tr, batch_size, device) for name, tr in trainers.items()}
        for name, tr in trainers.items():
            prepare_for_steps(tr, batches[name])
        peaks = {}
        if device.type == "cuda":
            from benchmarks.common import time_steps

            for name, tr in trainers.items():
                time_steps(tr, batches[name], warmup, device)
                torch.cuda.reset_peak_memory_stats()
                time_steps(tr, batches[name], 1, device)
                peaks[name] = torch.cuda.max_memory_allocated() / 2 ** 20
        times = time_interleaved(trainers, batches, rounds, steps, warmup, device)
    base = statistics.median(times["nnUNetTrainer"])
    for name, t in times.items():
        med = statistics.median(t)
        rows.append({"trainer": name, "ms_per_step": round(med, 1), "ratio": round(med / base, 2),
                     "peak_mib": round(peaks[name]) if name in peaks else None})
    return rows


def predict_section(folders: dict[str, Path], device: str) -> dict | None:
    """Time nnzoo predict and nnUNetv2_predict on the demo model's test images (process start included)."""
    results = folders["nnUNet_results"]
    model = results / "Dataset990_BrainDemo" / "nnUNetTrainer__nnUNetPlans__2d"
    images = folders["nnUNet_raw"] / "Dataset990_BrainDemo" / "imagesTs"
    if not (model / "fold_0" / "checkpoint_final.pth").is_file() or not images.is_dir():
        print(f"predict section skipped: no demo model in {model} (run `nnzoo demo` first)")
        return None
    env = dict(os.environ, **{k: str(v) for k, v in folders.items()})
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        runs = {  # imagesTs uses nnU-Net's CASE_0000 naming, which both read
            "nnzoo predict": [str(bin_dir / "nnzoo"), "predict", "-i", str(images), "-o", f"{tmp}/a", "-d", "990",
                              "-c", "2d", "-f", "0", "-device", device],
            "nnUNetv2_predict": [str(bin_dir / "nnUNetv2_predict"), "-i", str(images), "-o", f"{tmp}/b", "-d", "990",
                                 "-c", "2d", "-f", "0", "-device", device],
        }
        secs = {}
        for name, cmd in runs.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            secs[name] = time.perf_counter() - t0
    n = len(list(images.glob("*.nii.gz")))
    return {"cases": n, "seconds": {k: round(v, 1) for k, v in secs.items()},
            "throughput_ratio": round(secs["nnUNetv2_predict"] / secs["nnzoo predict"], 2)}


def accuracy_section(low_label_dir: Path, name: str = "low_label") -> str | None:
    """The table written by ``benchmarks/<name>.py`` into its output folder, if it ran."""
    md = low_label_dir / f"{name}.md"
    return md.read_text() if md.is_file() else None


def to_markdown(machine: str, train_rows: list[dict], predict: dict | None, acc: str | None,
                shift: str | None = None) -> str:
    lines = [f"Measured {datetime.date.today().isoformat()} on {machine} by `benchmarks/run_all.py`.", "",
             "| trainer | train step (ms) | × nnUNetTrainer | CUDA peak (MiB) |", "|---|---|---|---|"]
    for r in train_rows:
        peak = r["peak_mib"] if r["peak_mib"] is not None else "–"
        lines.append(f"| `{r['trainer']}` | {r['ms_per_step']} | {r['ratio']:.2f} | {peak} |")
    if predict:
        s = predict["seconds"]
        lines += ["", f"Prediction of the {predict['cases']} demo test cases (process start included): nnzoo "
                  f"{s['nnzoo predict']} s, nnUNetv2_predict {s['nnUNetv2_predict']} s, throughput ratio "
                  f"{predict['throughput_ratio']:.2f}×."]
    if acc:
        lines += ["", "Low-label benchmark (`benchmarks/low_label.py`):", "", acc]
    if shift:
        lines += ["", "Domain-shift benchmark (`benchmarks/domain_shift.py`):", "", shift]
    return "\n".join(lines) + "\n"


def _plot(train_rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(train_rows)))
    ax.barh([r["trainer"] for r in train_rows], [r["ratio"] for r in train_rows])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("train-step time / nnUNetTrainer")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--patch", type=int, nargs="+", default=[32, 64, 64])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", default="nnzoo_work")
    ap.add_argument("--low-label-dir", default="low_label_work", help="output folder of benchmarks/low_label.py")
    ap.add_argument("--domain-shift-dir", default="domain_shift_work",
                    help="output folder of benchmarks/domain_shift.py")
    ap.add_argument("--output", default=str(REPO / "benchmarks" / "results"), help="folder for the table and plot")
    ap.add_argument("--update-readme", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("nnUNet_compile", "false")
    device = torch.device(args.device)
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()} CPU, {args.threads} threads")
    workdir = Path(args.workdir).resolve()
    folders = {k: Path(os.environ.get(k) or workdir / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}

    print("[1/4] train-step time of every trainer vs nnUNetTrainer", flush=True)
    train_rows = train_step_section(device, args.patch, args.batch, args.rounds, args.steps, args.warmup)
    print("[2/4] nnzoo predict vs nnUNetv2_predict", flush=True)
    predict = predict_section(folders, args.device)
    print("[3/4] low-label accuracy table", flush=True)
    acc = accuracy_section(Path(args.low_label_dir))
    print("[4/4] domain-shift accuracy table", flush=True)
    shift = accuracy_section(Path(args.domain_shift_dir), "domain_shift")
    md = to_markdown(machine + f", patch {args.patch}, batch {args.batch}", train_rows, predict, acc, shift)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.md").write_text(md)
    _plot(train_rows, out / "train_step_ratio.png")
    print(md)
    if args.update_readme:
        readme = REPO / "README.md"
        text = readme.read_text()
        head, sep, rest = text.partition(MARK)
        if not sep:
            raise SystemExit(f"{readme} has no {MARK} marker")
        _, sep2, tail = rest.partition(MARK)
        readme.write_text(head + MARK + "\n" + md + MARK + (tail if sep2 else rest))
        print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
