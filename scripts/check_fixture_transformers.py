#!/usr/bin/env python3
"""Checks a tiny fixture's float64 reference logits against transformers itself.

Usage (from the repository root, with torch and transformers installed):
    python3 scripts/check_fixture_transformers.py tests/fixtures/phi4_mini_tiny [...]

For each folder: loads it with AutoModelForCausalLM in float64 (eager attention), runs every
sequence of its logits.json ("cases") as one forward pass, and prints the largest absolute
difference from the stored logits. Exits 1 when one is above 1e-5 (the stored values are
rounded to 7 decimals), so the numpy forward passes of scripts/reference_*.py are checked
against the definition they copy.
"""
import json
import os
import sys

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


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    worst = max(check(f) for f in sys.argv[1:])
    sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main()
