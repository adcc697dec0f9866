#!/usr/bin/env bash
# Peak memory (maximum resident set size, from /usr/bin/time) and wall time of `steerkit
# export` in the forms a user asks for, for one or more steerkit binaries, on one model.
#
#   scripts/bench_export_memory.sh MODEL RUN LABEL=BINARY [LABEL=BINARY ...]
#
# MODEL: a model steerkit loads (loaded with --dtype bf16, as a large model on a CPU is);
# RUN: a direction run folder with selected.json (for --orthogonalize). The baseline line is
# `steerkit generate` of one token: loading the model and one forward, no export. Outputs go
# to a temporary folder and are removed after each export.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
model=$1 run=$2
shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
forms=(
  "gguf f16|--format gguf --gguf-type f16"
  "gguf q8_0|--format gguf --gguf-type q8_0"
  "folder f32|--format safetensors"
  "folder bf16|--format safetensors --safetensors-dtype bf16"
  "orthogonalized gguf f16|--run $run --orthogonalize --format gguf --gguf-type f16"
  "orthogonalized folder bf16|--run $run --orthogonalize --safetensors-dtype bf16"
)
measure() { # label, command...
  local label=$1
  shift
  /usr/bin/time -f "%M %e" -o "$tmp/time" "$@" > /dev/null 2> "$tmp/err" || {
    echo "failed: $*" >&2
    tail -3 "$tmp/err" >&2
    exit 1
  }
  read -r kb secs < "$tmp/time"
  awk -v b="$bin_label" -v l="$label" -v k="$kb" -v s="$secs" \
    'BEGIN { printf "| %s | %s | %.2f | %.1f |\n", b, l, k / 1048576, s }'
}
echo "| binary | export | peak RSS (GiB) | wall (s) |"
echo "|---|---|---|---|"
for spec in "$@"; do
  bin_label=${spec%%=*} bin=${spec#*=}
  measure "load + 1 token (no export)" "$bin" generate -m "$model" --dtype bf16 --prompt hi --max-new-tokens 1
  for form in "${forms[@]}"; do
    name=${form%%|*} args=${form#*|}
    # shellcheck disable=SC2086
    measure "$name" "$bin" export -m "$model" --dtype bf16 $args --out "$tmp/out"
    rm -rf "$tmp/out"
  done
done
