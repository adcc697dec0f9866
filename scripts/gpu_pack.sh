#!/usr/bin/env bash
# Builds steerkit for CUDA on this machine (no GPU needed) and packs what scripts/gpu_check.py
# needs on a GPU machine into gpu/ (ignored by git; carry it): the stripped binaries, xz-packed,
# and the config and tokenizer files of the two small models, from which the GPU machine builds
# random models of the same architecture and size.
#   bash scripts/gpu_pack.sh            then, on the GPU machine:   bash scripts/gpu_device.sh
# Needs ../shared/tools/cuda-toolkit.sh (CUDA 13.0 from PyPI, about 700 MB once) and the models
# of scripts/fetch-models.sh. The first build takes about 20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
# What the binaries are built from: the commit, and a hash of uncommitted changes (new files
# that git does not ignore included) if any (packed beside them as SOURCE;
# scripts/gpu_device.sh prints it).
source_state() {
  echo "commit $(git rev-parse HEAD)"
  if [ -n "$(git status --porcelain)" ]; then
    local h
    h=$({ git diff HEAD; git ls-files -o --exclude-standard -z | xargs -0 -r cat; } | sha256sum)
    echo "uncommitted changes, sha256 ${h:0:16}"
  fi
}
before=$(source_state)
eval "$(../shared/tools/cuda-toolkit.sh)"
# A target folder of its own, so that the CPU build in target/ is not rebuilt.
cuda=${CUDA_TARGET_DIR:-target-cuda}
cargo build --release --target-dir "$cuda" --features cuda -p steerkit-cli
cargo build --release --target-dir "$cuda" --features cuda -p steerkit-model --example device_check
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" gpu.new' EXIT
cp "$cuda/release/steerkit" "$cuda/release/examples/device_check" "$tmp/"
strip "$tmp/steerkit" "$tmp/device_check"
{
  echo "$before"
  [ "$(source_state)" = "$before" ] || echo "WARNING: the sources changed during the build"
  echo "built $(date -u +%Y-%m-%dT%H:%MZ)"
} > "$tmp/SOURCE"
mkdir -p gpu.new/tok
tar -C "$tmp" -cJf gpu.new/bins.tar.xz steerkit device_check SOURCE
cargo build --release -p steerkit-cli
for m in qwen:qwen2.5-coder-0.5b-instruct smol:smollm2-135m-instruct; do
  name=${m%%:*}
  target/release/steerkit export -m "checkpoints/models/${m#*:}.gguf" --format safetensors \
    --out "$tmp/$name"
  mkdir -p "gpu.new/tok/$name"
  cp "$tmp/$name"/{config.json,tokenizer.json,tokenizer_config.json} "gpu.new/tok/$name/"
  rm -rf "${tmp:?}/$name"
done
rm -rf gpu && mv gpu.new gpu
du -sh gpu
