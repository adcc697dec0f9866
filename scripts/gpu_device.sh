#!/usr/bin/env bash
# The GPU machine's side of scripts/gpu_check.py, run from the repository root with the gpu/
# folder of scripts/gpu_pack.sh beside it: unpacks the binaries, finds CUDA's libraries (the
# binaries link libcuda, cuBLAS, cuBLASLt, cuRAND and the CUDA runtime, 13.x), runs the check.
#   bash scripts/gpu_device.sh [SECONDS] [CLI_MODELS] [gpu_check.py options: --speed-only, --no-speed, --only ...]
# SECONDS bounds the check (default 500); CLI_MODELS (default qwen) are the gpu/tok models whose
# CLI and speed are checked. The report goes to $OUT (default ./gpu-out).
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT" /tmp/steerkit-bin && tar -C /tmp/steerkit-bin -xJf gpu/bins.tar.xz
. scripts/cuda_libs.sh
{
  nvidia-smi -L
  ldd /tmp/steerkit-bin/steerkit | grep -E "cuda|cublas|curand|not found"
  /tmp/steerkit-bin/steerkit --version
  cat /tmp/steerkit-bin/SOURCE 2>/dev/null
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
PYTHONUNBUFFERED=1 timeout "${1:-500}" python3 scripts/gpu_check.py --bin /tmp/steerkit-bin \
  --tok gpu/tok --out "$OUT" --cli "${2:-qwen}" "${@:3}" > "$OUT/log.txt" 2>&1
echo "rc $?"
tail -c 10000 "$OUT/report.md"
