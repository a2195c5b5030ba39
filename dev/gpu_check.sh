#!/usr/bin/env bash
# The prepared GPU check, run on a lent device machine in one call (budget: under 10 minutes of command time).
#
# 1. the domain-shift benchmark's test-time adaptation rows on --device cuda (seed 0): source only, the oracle,
#    the DG + TTA model (MIND), every --adapt method on source only and on MIND, episodic and continual, and the
#    agreement-weighted ensemble (benchmarks.domain_shift.adaptation_rows); prediction seconds per run and seconds
#    spent adapting per case, against plain prediction in the same run (the source-only and MIND rows). A second
#    call on the still-warm machine (within its idle time) resumes the benchmark where the first stopped;
# 2. pytest -m gpu (AMP train steps of every trainer in 2D and 3D, NCCL DDP, train and predict on the GPU).
#
# Here, once:  dev/gpu_site.sh  (packs nnU-Net and friends for the device's Python 3.12 into .gpu/site.tar.xz)
#              and copy a finished domain-shift cohort: cp -r /work/bench/domain_shift/cohort .gpu/cohort
#              (without it the benchmark would generate one, which needs nilearn, not packed)
# Device call: run(command="bash dev/gpu_check.sh", carry=[".gpu"], timeout_s=600)
# Results in $OUT: gpu_check.log, domain_shift.md / .json, test_gpu.log, env.txt.
# Each step has its own time limit (DS_LIMIT, GPU_TEST_LIMIT seconds; 0 skips the step) so that what finished comes
# back.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-/tmp/gpu_check_out}
DS_LIMIT=${DS_LIMIT:-330}
GPU_TEST_LIMIT=${GPU_TEST_LIMIT:-200}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu SMOKE=1: the same steps as a quick rehearsal on a CPU machine
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
t0=$(date +%s)
step() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

[ -f .gpu/site.tar.xz ] || { echo "error: .gpu/site.tar.xz missing: run dev/gpu_site.sh here and carry .gpu"; exit 2; }
SITE=/tmp/nnzoo_site
if [ ! -f "$SITE/.unpacked" ]; then
    step "unpacking .gpu/site.tar.xz"
    rm -rf "$SITE" && mkdir -p "$SITE/nnzoo"
    tar -xJf .gpu/site.tar.xz -C "$SITE" 2>/dev/null \
        || "${PY:-python3}" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='fully_trusted')" .gpu/site.tar.xz "$SITE" \
        || { echo "error: could not unpack .gpu/site.tar.xz"; exit 2; }
    touch "$SITE/.unpacked"
fi
for p in pipeline plans trainers; do ln -sfn "$REPO/$p" "$SITE/nnzoo/$p"; done  # the installed layout, no build
export PYTHONPATH="$SITE:$REPO" PYTHONUNBUFFERED=1
# nnU-Net compiles the network on CUDA by default: about a minute per training run that the budget cannot spare
# (the check measures prediction and adaptation, which nnU-Net does not compile); nnUNet_compile=t to keep it
export nnUNet_compile=${nnUNet_compile:-f}
PY=${PY:-python3}
"$PY" - <<'EOF' | tee "$OUT/env.txt"
import platform, torch, nnunetv2, nnzoo.pipeline  # noqa: F401
from importlib.metadata import version
print("python", platform.python_version(), "| torch", torch.__version__, "| nnunetv2", version("nnunetv2"),
      "| cuda", torch.cuda.is_available(), "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
EOF
[ "${PIPESTATUS[0]}" = 0 ] || { echo "error: the packed environment does not import"; exit 2; }

DS=/tmp/nnzoo_gpu_ds  # kept: a second call on the warm machine resumes
mkdir -p "$DS"
[ -d .gpu/cohort ] && [ ! -d "$DS/cohort" ] && cp -r .gpu/cohort "$DS/cohort"
mapfile -t ROWS < <("$PY" -c "from benchmarks import domain_shift as d; print('\n'.join(d.adaptation_rows('2d')))")
if [ "$DS_LIMIT" -gt 0 ]; then
    step "domain shift on $DEVICE: ${#ROWS[@]} rows named, up to ${DS_LIMIT} s"
    extra=()
    [ "${SMOKE:-0}" = 1 ] && extra=(--smoke)
    timeout "$DS_LIMIT" "$PY" benchmarks/domain_shift.py --device "$DEVICE" --seeds 0 --jobs 4 --out "$DS" \
        --trainers "${ROWS[@]}" "${extra[@]}"
    step "domain shift ended with $?"
    for f in domain_shift.md domain_shift.json; do [ -f "$DS/$f" ] && cp "$DS/$f" "$OUT/"; done
else
    step "domain shift skipped (DS_LIMIT=0)"
fi

[ "$GPU_TEST_LIMIT" -gt 0 ] || { step "pytest -m gpu skipped (GPU_TEST_LIMIT=0)"; exit 0; }
step "pytest -m gpu, up to ${GPU_TEST_LIMIT} s"
timeout "$GPU_TEST_LIMIT" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py > "$OUT/test_gpu.log" 2>&1
step "pytest -m gpu ended with $?: $(tail -1 "$OUT/test_gpu.log")"
