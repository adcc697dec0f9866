#!/usr/bin/env bash
# Speed of `steerkit safety-tune` on SmolLM2-135M-Instruct: STEPS steps (default 52) of each
# projection (none, act, grad) from the same data, in fresh run folders, then steps/s,
# tokens/s and the projection's share of the step time from each summary.json; for grad also
# the cost of one basis refresh, the per-step projection, and the steady-state share with a
# refresh every 50 steps (the default; a short run over-weights its first refresh). Run it on
# idle cores. The own answers are generated once (or copied from ANSWERS, an answers.json).
# Usage: scripts/bench-safety-tune.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-checkpoints/runs/sft-bench}
BIN=${STEERKIT:-target/release/steerkit}
M=checkpoints/models/smollm2-135m-instruct.gguf
D=../shared/datasets
STEPS=${STEPS:-52}
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
import csv
rows = list(csv.DictReader(open(out / "grad" / "log.csv")))
# A refresh happens at steps 1, 51, ...: its time is in that step's ogp_seconds.
ref = [float(r["ogp_seconds"]) for r in rows if (int(r["step"]) - 1) % 50 == 0]
rest = [r for r in rows if (int(r["step"]) - 1) % 50 != 0]
proj = sum(float(r["ogp_seconds"]) for r in rest) / len(rest)
step = sum(float(r["seconds"]) - float(r["ogp_seconds"]) for r in rest) / len(rest)
refresh = sum(ref) / len(ref)
share = (refresh + 50 * proj) / (50 * (step + proj) + refresh)
print(f"\ngrad: refresh {refresh:.1f} s, projection {1000*proj:.0f} ms/step, step without projection {step:.2f} s; steady state with a refresh every 50 steps: {100*share:.1f}% of the time")
PY
