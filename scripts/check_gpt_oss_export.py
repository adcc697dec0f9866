#!/usr/bin/env python3
"""Checks `steerkit export` of gpt-oss folders against transformers.

Usage (from the repository root, after `cargo build --release`, with torch and transformers):
    python3 scripts/check_gpt_oss_export.py [--steerkit target/release/steerkit]

For the two tiny random gpt-oss fixtures of scripts/reference_gpt_oss.py (experts stored as
transformers saves them, and as MXFP4 blocks and scales as OpenAI ships gpt-oss), each given a
small word-level tokenizer:

- `steerkit export` writes a folder that transformers loads as GptOssForCausalLM (experts
  stacked, gate and up interleaved, dequantized, no quantization_config), whose float64 logits
  equal the fixture's reference logits;
- `steerkit export --orthogonalize` with a direction that `steerkit extract` and `select
  --layer 1 --pos -1` find on random word prompts writes a folder whose logits equal the
  source's under directional ablation at every layer in transformers (hooks on the
  embeddings, every o_proj and every MLP's output: the experts' down projections and their
  biases).

Prints the largest difference of each and exits 1 when one is above 1e-5.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file

from export_check import ablation_hooks, direction_run, tokenizer_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 96


def load(folder):
    return transformers.GptOssForCausalLM.from_pretrained(
        folder, dtype=torch.float64, attn_implementation="eager",
        experts_implementation="eager").eval()


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def ablated(model, r, ids):
    m = model.model
    writers = [m.embed_tokens] + [x for b in m.layers for x in (b.self_attn.o_proj, b.mlp)]
    with ablation_hooks(None, writers, r.double()):
        return logits(model, ids)


def check(name, steerkit, work):
    src = os.path.join(work, name)
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", name), src)
    tokenizer_files(src, VOCAB)
    cases = json.load(open(os.path.join(src, "logits.json")))["cases"]
    out = os.path.join(work, name + "-export")
    subprocess.run([steerkit, "export", "-m", src, "--out", out], check=True,
                   stdout=subprocess.DEVNULL)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert "quantization_config" not in cfg, "the export is dequantized"
    back = load(out)
    worst = 0.0
    for c in cases:
        gap = (logits(back, c["ids"]) - torch.tensor(c["logits"], dtype=torch.float64)).abs().max().item()
        worst = max(worst, gap)
    print(f"{name}: export loaded by transformers, max |logits - reference| = {worst:.2e}")

    run = direction_run(steerkit, src, work, VOCAB)
    orth = os.path.join(work, name + "-orthogonalized")
    subprocess.run([steerkit, "export", "-m", src, "--run", run, "--orthogonalize", "--out", orth],
                   check=True, stdout=subprocess.DEVNULL)
    sel = json.load(open(os.path.join(run, "selected.json")))
    r = load_file(os.path.join(run, "directions.safetensors"))["candidates"][sel["layer"], sel["pos"]]
    r = r.double() / r.double().norm()
    # The source's own reading in transformers (MXFP4 dequantized on the CPU).
    source = load(out)
    orthogonalized = load(orth)
    gaps, effects = [], []
    for c in cases:
        want = ablated(source, r, c["ids"])
        gaps.append((logits(orthogonalized, c["ids"]) - want).abs().max().item())
        effects.append((logits(source, c["ids"]) - want).abs().max().item())
    print(f"{name}: orthogonalized export vs ablation at every layer in transformers, "
          f"max |diff| = {max(gaps):.2e} (ablation itself moves the logits by {max(effects):.2e})")
    assert max(effects) > 1e-3, "the direction has an effect"
    return max(worst, max(gaps))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steerkit", default="target/release/steerkit")
    args = ap.parse_args()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as work:
        worst = max(check("gpt_oss_tiny", args.steerkit, work),
                    check("gpt_oss_mxfp4_tiny", args.steerkit, work))
    sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main()
