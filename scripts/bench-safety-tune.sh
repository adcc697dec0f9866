#!/usr/bin/env bash
# Speed of `steerkit safety-tune` on SmolLM2-135M-Instruct: STEPS steps (default 30) of each
# projection (none, act, grad) from the same data, in fresh run folders, then steps/s,
# tokens/s and the projection's share of the step time from each summary.json. Run it on idle
# cores. The own answers are generated once (or copied from ANSWERS, an answers.json).
# Usage: scripts/bench-safety-tune.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-checkpoints/runs/sft-bench}
BIN=${STEERKIT:-target/release/steerkit}
M=checkpoints/models/smollm2-135m-instruct.gguf
D=../shared/datasets
STEPS=${STEPS:-30}
for ogp in none act grad; do
  run="$OUT/$ogp"
  rm -rf "$run"
  mkdir -p "$run"
  if [ -n "${ANSWERS:-}" ]; then cp "$ANSWERS" "$run/answers.json"; fi
  "$BIN" safety-tune -m "$M" --harmful "$D/harmful_train.jsonl" --harmless "$D/harmless_train.jsonl" \
    --limit 260 --steps "$STEPS" --save-every "$STEPS" --ogp "$ogp" --out "$run" 2>/dev/null | grep "steps/s"
  ANSWERS=${ANSWERS:-$run/answers.json}
done
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| projection | steps/s | tokens/s | projection share of step time | act bases (s) |")
print("|---|---|---|---|---|")
for ogp in ["none", "act", "grad"]:
    s = json.loads((out / ogp / "summary.json").read_text())
    print(f"| {ogp} | {s['steps_per_s']:.3f} | {s['tokens_per_s']:.0f} | {100*s['ogp_share']:.1f}% | {s['ogp_setup_seconds']:.1f} |")
PY
