#!/usr/bin/env python3
"""Writes tests/fixtures/olmo2_tiny: a tiny random OLMo 2 model and its reference logits.

The reference is transformers' own Olmo2ForCausalLM (eager attention) run in float64 on the
float32 weights written to model.safetensors: 3 blocks, 4 query heads over 2 key/value heads
(the q/k norms then have different lengths, 32 and 16), RoPE base 500,000 as the released
OLMo 2 models, untied head; every weight, the norms included, drawn at random so that a norm
left out or put in the wrong place changes the logits.

How to run (pip install torch transformers safetensors):
    python3 scripts/reference_olmo2.py
Then `python3 scripts/check_fixture_transformers.py tests/fixtures/olmo2_tiny` re-checks it.
"""
import json
import os

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "olmo2_tiny")
CASES = [[1, 5, 9, 13, 2], [3, 95, 0, 47, 47, 8, 61, 20, 11], list(range(7, 7 + 13 * 5, 5))]


def main():
    torch.manual_seed(0)
    cfg = transformers.Olmo2Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        max_position_embeddings=128, rope_theta=500000.0, tie_word_embeddings=False,
        pad_token_id=None, eos_token_id=1)
    model = transformers.Olmo2ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT)
    for extra in ("generation_config.json",):
        path = os.path.join(OUT, extra)
        if os.path.exists(path):
            os.remove(path)
    back = transformers.Olmo2ForCausalLM.from_pretrained(
        OUT, dtype=torch.float64, attn_implementation="eager").eval()
    cases = []
    with torch.no_grad():
        for ids in CASES:
            logits = back(torch.tensor([ids])).logits[0]
            cases.append({"ids": ids, "logits": [[round(x, 7) for x in row]
                                                 for row in logits.tolist()]})
    with open(os.path.join(OUT, "logits.json"), "w") as f:
        json.dump({"script": "scripts/reference_olmo2.py",
                   "transformers": transformers.__version__, "cases": cases}, f)
    print("wrote", OUT, "with", len(cases), "cases")


if __name__ == "__main__":
    main()
