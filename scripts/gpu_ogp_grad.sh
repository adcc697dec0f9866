#!/usr/bin/env bash
# Gradient projection with gradient bases (`--ogp grad`) on the GPU, where the bases live:
# `actor`, and `safety-tune` run 4 steps straight and 2 + 2 with a resume that reads the saved
# bases back; the same on the CPU for reference. A random SmolLM2-shaped model (transformers'
# from_config). Run on the GPU machine from the repository root, with gpu/ of
# scripts/gpu_pack.sh beside it:   bash scripts/gpu_ogp_grad.sh
# DEVS=cpu SK=target/release/steerkit runs it here without a GPU. Output: $OUT/grad.txt.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/b "$OUT"
if [ -n "${SK:-}" ]; then rm -f /tmp/b/SOURCE; else tar -C /tmp/b -xJf gpu/bins.tar.xz; fi
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda-13.0/lib64:${LD_LIBRARY_PATH:-}
sk=${SK:-/tmp/b/steerkit}
{
cat /tmp/b/SOURCE 2>/dev/null
python3 - <<'PY'
import shutil, torch
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.from_pretrained("gpu/tok/smol"); torch.manual_seed(0)
AutoModelForCausalLM.from_config(cfg).save_pretrained("/tmp/smol")
for f in ["tokenizer.json", "tokenizer_config.json"]: shutil.copy("gpu/tok/smol/" + f, "/tmp/smol")
PY
for dev in ${DEVS:-cuda cpu}; do
  # Fresh run folders: a rerun on a warm machine must not resume finished runs.
  rm -rf /tmp/a-$dev /tmp/s-$dev /tmp/r-$dev
  SECONDS=0
  timeout 120 $sk actor -m /tmp/smol --device $dev --limit 16 --pseudo-limit 16 --layer 12 \
    --epochs 2 --min-silhouette -1 --ogp grad --ogp-limit 8 --ogp-k 2 --ogp-every 2 \
    --ogp-answer-tokens 8 --out /tmp/a-$dev > /tmp/a-$dev.out 2>&1; echo "actor --ogp grad on $dev: rc $? in $SECONDS s"
  tail -3 /tmp/a-$dev.out; cat /tmp/a-$dev/log.csv; head -5 /tmp/a-$dev/ogp.csv 2>/dev/null
  common="-m /tmp/smol --device $dev --limit 8 --answer-tokens 8 --batch-size 4 --ogp grad --ogp-limit 8 --ogp-k 2 --ogp-every 3 --save-every 2"
  timeout 120 $sk safety-tune $common --steps 4 --out /tmp/s-$dev > /tmp/s.out 2>&1; echo "safety-tune 4 steps on $dev: rc $?"; tail -2 /tmp/s.out
  timeout 120 $sk safety-tune $common --steps 2 --out /tmp/r-$dev > /tmp/r.out 2>&1; echo "safety-tune 2 steps: rc $?"
  timeout 120 $sk safety-tune $common --steps 4 --out /tmp/r-$dev > /tmp/r.out 2>&1; echo "resumed to 4: rc $?"; tail -2 /tmp/r.out
  ls /tmp/s-$dev
  python3 -c "
import json,sys
a=json.load(open('/tmp/s-$dev/log.json')); b=json.load(open('/tmp/r-$dev/log.json'))
strip=lambda l:[{k:v for k,v in r.items() if 'sec' not in k} for r in l]
print('uninterrupted:', json.dumps(strip(a))[:900]); print('resumed equals uninterrupted:', strip(a)==strip(b))"
done
} 2>&1 | tee "$OUT/grad.txt"
