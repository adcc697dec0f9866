#!/usr/bin/env bash
# The safety-tuning experiment of README "Safety tuning": SmolLM2-135M-Instruct tuned to refuse
# harmful_train (and keep its own answers on harmless_train) without and with gradient
# projection (act, grad), same steps and learning rate; then each is evaluated on harmful_val,
# XSTest and the plain-text cross-entropy, with first-token KL from the base model on
# harmless_val. Every step resumes: rerun after an interruption.
# Usage: scripts/safety-tune-smollm2.sh [OUT_DIR] (default checkpoints/runs/sft)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-checkpoints/runs/sft}
BIN=${STEERKIT:-target/release/steerkit}
M=checkpoints/models/smollm2-135m-instruct.gguf
D=../shared/datasets
STEPS=${STEPS:-150}
mkdir -p "$OUT"
for ogp in none act grad; do
  run="$OUT/train-$ogp"
  mkdir -p "$run"
  # The own answers are the same for every variant: generate them once.
  if [ -f "$OUT/train-none/answers.json" ] && [ ! -f "$run/answers.json" ]; then
    cp "$OUT/train-none/answers.json" "$run/"
  fi
  "$BIN" safety-tune -m "$M" --harmful "$D/harmful_train.jsonl" --harmless "$D/harmless_train.jsonl" \
    --limit 260 --steps "$STEPS" --lr 1e-4 --ogp "$ogp" --ogp-every 25 --out "$run" 2>/dev/null
done
evaluate() { # name model
  "$BIN" eval -m "$2" --set "harmful_val=$D/harmful_val.jsonl" --set "xstest=$D/xstest.jsonl" \
    --reference "$M" --kl-set "harmless_val=$D/harmless_val.jsonl" --out "$OUT/eval-$1" 2>/dev/null | tail -n 12
}
evaluate base "$M"
for ogp in none act grad; do
  [ -d "$OUT/model-$ogp" ] || "$BIN" export -m "$M" --run "$OUT/train-$ogp" --out "$OUT/model-$ogp"
  evaluate "$ogp" "$OUT/model-$ogp"
done
for ogp in none act grad; do
  "$BIN" compare "$OUT/eval-base" "$OUT/eval-$ogp" 2>/dev/null | tail -n 20
done
