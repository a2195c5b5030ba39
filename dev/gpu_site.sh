#!/usr/bin/env bash
# Packs what nnzoo needs beyond the lent GPU machines' image into .gpu/site.tar.xz (run here, once per checkout).
#
# The workplace's device machines (one H100 or H200, Python 3.12, PyTorch, no network) lack nnU-Net and the
# packages below; a device call carries at most 64 MiB of files. SimpleITK alone is a 53 MB wheel, so the
# packages are installed here for CPython 3.12 / manylinux x86-64 into a folder and packed with xz (about
# 45 MB). dev/gpu_check.sh unpacks it there. Versions: those the project's own environment resolves.
#
# Usage: dev/gpu_site.sh            (then name .gpu in the device call's carry; see dev/gpu_check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUTDIR=.gpu
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# not in the device image (its package list: /work/.library/device/KINDS.md); imagecodecs, nilearn and the
# ONNX extras are left out (not imported by the checks)
PKGS=(nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6
      acvl-utils==0.2.6 connected-components-3d==4.1.1 SimpleITK==2.5.7 nibabel==5.4.2 blosc2==4.15.0
      ndindex==1.10.1 yacs==0.1.8 graphviz==0.21 fft-conv-pytorch==1.2.0 edt==3.1.2)
PLAT=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
echo "downloading ${#PKGS[@]} packages for CPython 3.12 (a minute or two)"
for p in "${PKGS[@]}"; do  # binary wheels where there are any, else a wheel built from the sdist (pure Python)
    "$PY" -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d "$WORK/wheels" "$p" 2>/dev/null \
        || { "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$WORK/src" "$p" \
             && "$PY" -m pip wheel -q --no-deps -w "$WORK/wheels" "$WORK/src/"*; rm -rf "$WORK/src"; }
done
"$PY" -m pip install -q --no-deps --no-index --only-binary=:all: --find-links "$WORK/wheels" "${PLAT[@]}" \
    --target "$WORK/site" "${PKGS[@]}"
mkdir -p "$OUTDIR"
echo "packing $(du -sh "$WORK/site" | cut -f1) with xz (about two minutes)"
tar -cJf "$OUTDIR/site.tar.xz" -C "$WORK/site" .
size=$(stat -c %s "$OUTDIR/site.tar.xz")
echo "$OUTDIR/site.tar.xz: $((size / 1048576)) MiB"
if [ "$size" -gt $((58 * 1048576)) ]; then
    echo "error: $OUTDIR/site.tar.xz is over 58 MiB: with the repository it would not fit a device call's 64 MiB" >&2
    exit 1
fi
