#!/usr/bin/env bash
# The README's main job, `steerkit run configs/qwen2.5-coder-0.5b.toml`, on the real
# Qwen2.5-Coder-0.5B-Instruct GGUF on the GPU machine, then the patched model on every prompt of
# the three test sets. The GGUF is too large for one transfer there (491 MB, 64 MiB a call), so
# earlier calls left its nine parts in /tmp/m (a, b0..b7: `head -c 28MiB` and `split -b 56MiB`
# of the rest), the binaries of scripts/gpu_pack.sh unpacked in /tmp/sb, and the config's
# datasets in /tmp/ds (copies of ../shared/datasets, which does not travel).
#   bash results/gpu-check/real_qwen.sh [SECONDS for the full-set evaluation, default 240]
# The checks after the full-set evaluation (the original model and the ablation on every test
# prompt, the full selection search, the bf16 run, the orthogonalized folder against hook
# ablation, the patched f16 GGUF against the patched folder, bench) ran on 2026-11-28 as four
# follow-up commands on the same warm machine; they are gathered here as they ran.
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
. scripts/cuda_libs.sh
S=/tmp/sb/steerkit
M=/tmp/m/qwen2.5-coder-0.5b-instruct.gguf
[ -f $M ] || cat /tmp/m/a /tmp/m/b[0-7] > $M
want=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
got=$(sha256sum $M | cut -c1-64)
[ "$got" = "$want" ] || { echo "sha256 $got, expected $want"; exit 1; }
echo "model sha256 ok"
$S --version
cat /tmp/sb/SOURCE 2>/dev/null
# The shipped config, with the model, the datasets and the run folder where they are here.
sed -e "s|checkpoints/models/|/tmp/m/|" -e "s|\.\./shared/datasets/|/tmp/ds/|g" \
  -e 's|^out = .*|out = "/tmp/qrun"|' configs/qwen2.5-coder-0.5b.toml > /tmp/qwen-cuda.toml
T=; [ -x /usr/bin/time ] && T="/usr/bin/time -v"
start=$(date +%s%N)
$T $S run /tmp/qwen-cuda.toml --set device=cuda > "$OUT/run.log" 2>&1
echo "run rc $? in $(( ($(date +%s%N) - start) / 1000000 )) ms"
grep -E "Maximum resident|Elapsed" "$OUT/run.log"
cp /tmp/qrun/report.md "$OUT/report.md" 2>/dev/null
cp /tmp/qrun/actor/log.csv "$OUT/actor-log.csv" 2>/dev/null
grep "^|" "$OUT/report.md" | head -12
# The patched model on every prompt of the test sets (README: run q's full-set counts).
start=$(date +%s%N)
timeout "${1:-240}" $S eval -m /tmp/qrun/patched --device cuda \
  --set xstest=/tmp/ds/xstest.jsonl --set harmbench_test=/tmp/ds/harmbench_test.jsonl \
  --set orbench_hard_test=/tmp/ds/orbench_hard_test.jsonl --max-new-tokens 64 \
  --out /tmp/full-patched > "$OUT/full.log" 2>&1
echo "full eval rc $? in $(( ($(date +%s%N) - start) / 1000000 )) ms"
cp /tmp/full-patched/report.md "$OUT/full-report.md" 2>/dev/null
grep "^|" "$OUT/full-report.md" | head -8
SETS="--set xstest=/tmp/ds/xstest.jsonl --set harmbench_test=/tmp/ds/harmbench_test.jsonl
  --set orbench_hard_test=/tmp/ds/orbench_hard_test.jsonl --max-new-tokens 64"
$S eval -m $M --device cuda $SETS --out /tmp/full-orig 2>&1 | tail -1
cp /tmp/full-orig/report.md "$OUT/full-report-original.md"
$S eval -m $M --device cuda $SETS --run /tmp/qrun/direction --intervention ablate \
  --out /tmp/full-abl 2>&1 | tail -1
cp /tmp/full-abl/report.md "$OUT/full-report-ablated.md"
# Selection without the config's fixed layer and position, from the same extraction.
rm -rf /tmp/sel && cp -r /tmp/qrun/direction /tmp/sel && rm -f /tmp/sel/selected.json /tmp/sel/scores.*
$S select -m $M --device cuda --harmful-val /tmp/ds/harmful_val.jsonl \
  --harmless-val /tmp/ds/harmless_val.jsonl --limit 32 --run /tmp/sel > "$OUT/select-full.log" 2>&1
cp /tmp/sel/scores.csv "$OUT/"
$S run /tmp/qwen-cuda.toml --set device=cuda --set dtype=bf16 --set out=/tmp/qrun-bf16 \
  > "$OUT/run-bf16.log" 2>&1
cp /tmp/qrun-bf16/report.md "$OUT/report-bf16.md"
# Answers of two models compared prompt by prompt (the same 160 prompts, 64 tokens, greedy).
same_answers() {
  python3 - "$1" "$2" <<'PY'
import glob, json, os, sys
total = same = 0
for f in sorted(glob.glob(sys.argv[1] + "/responses/*.jsonl")):
    a = [json.loads(l) for l in open(f)]
    b = [json.loads(l) for l in open(sys.argv[2] + "/responses/" + os.path.basename(f))]
    s = sum(x.get("response") == y.get("response") for x, y in zip(a, b))
    print(os.path.basename(f), s, "of", len(a)); total += len(a); same += s
print("all", same, "of", total, "answers identical")
PY
}
$S export -m $M --device cuda --run /tmp/qrun/direction --orthogonalize --format safetensors \
  --out /tmp/orth 2>&1 | tail -1
$S eval -m /tmp/orth --device cuda $SETS --limit 40 --shuffle-seed 0 --out /tmp/ev-orth 2>&1 | tail -1
same_answers /tmp/qrun/eval-ablated /tmp/ev-orth | tee "$OUT/orth-vs-hook.txt"
$S export -m $M --device cuda --run /tmp/qrun/actor --format gguf --out /tmp/patched.gguf 2>&1 | tail -1
$S eval -m /tmp/patched.gguf --device cuda $SETS --limit 40 --shuffle-seed 0 --out /tmp/ev-gguf 2>&1 | tail -1
same_answers /tmp/qrun/eval-after /tmp/ev-gguf | tee "$OUT/gguf-vs-folder.txt"
for dt in f32 bf16 f16; do $S bench -m $M --device cuda --dtype $dt 2>&1 | tail -6; done
