#!/usr/bin/env bash
# The real SmolLM2-135M-Instruct GGUF (q8_0) on the GPU against the CPU, on the GPU machine.
# The file is too large for one transfer there (98 MB, 64 MiB a call), so two earlier calls
# left its halves (`split -n 2`) in /tmp/m/a and /tmp/m/b; gpu/ is scripts/gpu_pack.sh's.
#   bash results/gpu-check/real_smollm2.sh
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT" /tmp/sb && tar -C /tmp/sb -xJf gpu/bins.tar.xz
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda-13.0/lib64:${LD_LIBRARY_PATH:-}
M=/tmp/m/smollm2-135m-instruct.gguf
cat /tmp/m/a /tmp/m/b > $M
sha256sum $M   # b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
S=/tmp/sb/steerkit
D=crates/steerkit-data/sets
{ head -8 $D/harmful.jsonl; head -8 $D/harmless.jsonl; } > /tmp/p16.jsonl
for run in "cpu f32" "cuda f32" "cuda bf16" "cuda f16"; do
  set -- $run
  $S generate -m $M --device $1 --dtype $2 --prompts /tmp/p16.jsonl --max-new-tokens 48 \
    > "$OUT/gen-$1-$2.jsonl" 2> /dev/null
done
for f in cuda-f32 cuda-bf16 cuda-f16; do
  echo "generate, $f against cpu-f32: $(paste -d'\n' "$OUT/gen-cpu-f32.jsonl" "$OUT/gen-$f.jsonl" |
    paste - - | awk -F'\t' '$1 == $2' | wc -l) of 16 answers identical (48 tokens, greedy)"
done
for dev in cpu cuda; do
  echo "== eval on $dev"
  $S eval -m $M --device $dev --set harmful.val --set pseudo_harmful.val --set harmless.val \
    --limit 32 --max-new-tokens 48 --out /tmp/eval-$dev 2>&1 | grep -E "^\|.*val|answered"
done
cmp <(grep "^|" /tmp/eval-cpu/report.md) <(grep "^|" /tmp/eval-cuda/report.md) &&
  echo "eval reports identical"
for dt in f32 bf16 f16; do $S bench -m $M --device cuda --dtype $dt; done
