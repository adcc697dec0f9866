#!/usr/bin/env python3
"""Checks a tiny fixture's float64 reference logits against transformers itself.

Usage (from the repository root, with torch and transformers installed):
    python3 scripts/check_fixture_transformers.py tests/fixtures/phi4_mini_tiny [...]
    python3 scripts/check_fixture_transformers.py --export target/release/steerkit \
        tests/fixtures/olmo3_tiny [...]

For each folder: loads it with AutoModelForCausalLM in float64 (eager attention), runs every
sequence of its logits.json ("cases") as one forward pass, and prints the largest absolute
difference from the stored logits. Exits 1 when one is above 1e-5 (the stored values are
rounded to 7 decimals), so the numpy forward passes of scripts/reference_*.py are checked
against the definition they copy.

With `--export STEERKIT`, each folder is first copied with a word-level tokenizer, exported
by `steerkit export` (a Hugging Face folder, f32) and the export is checked instead: the
folder steerkit writes must load in transformers to the same logits.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers


def check(folder):
    with open(os.path.join(folder, "logits.json")) as fh:
        cases = json.load(fh)["cases"]
    # No pad token: Phi-3's default (32000) lies outside the tiny vocabularies.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float64, attn_implementation="eager",
        experts_implementation="eager", pad_token_id=None)
    model.eval()
    worst = 0.0
    for case in cases:
        ids = torch.tensor([case["ids"]])
        with torch.no_grad():
            got = model(ids).logits[0]
        gap = (got - torch.tensor(case["logits"], dtype=torch.float64)).abs().max().item()
        worst = max(worst, gap)
        print(f"{folder}: {len(case['ids'])} tokens, max |transformers - reference| = {gap:.2e}")
    return worst


def exported(steerkit, folder, work):
    """`folder` copied into `work` with a word-level tokenizer, exported by steerkit, with
    the fixture's logits.json beside: the exported folder's path."""
    from export_check import tokenizer_files

    name = os.path.basename(os.path.normpath(folder))
    src, out = os.path.join(work, name), os.path.join(work, name + "-exported")
    shutil.copytree(folder, src)
    with open(os.path.join(src, "config.json")) as fh:
        tokenizer_files(src, json.load(fh)["vocab_size"])
    subprocess.run([steerkit, "export", "-m", src, "--out", out], check=True)
    shutil.copy(os.path.join(folder, "logits.json"), out)
    return out


def main():
    args = sys.argv[1:]
    steerkit = None
    if args[:1] == ["--export"]:
        steerkit, args = args[1], args[2:]
    if not args:
        sys.exit(__doc__)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as work:
        if steerkit:
            args = [exported(steerkit, f, work) for f in args]
        worst = max(check(f) for f in args)
    sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main()
