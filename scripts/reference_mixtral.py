#!/usr/bin/env python3
"""Writes tests/fixtures/mixtral_tiny: a tiny random Mixtral model and its reference logits.

The reference is transformers' own MixtralForCausalLM (eager attention and experts) run in
float64 on the float32 weights written to model.safetensors: 2 blocks, each routing every
token to 2 of 4 experts of 48 channels (stored as Mixtral's are, `block_sparse_moe` with
`w1`, `w3`, `w2`), 4 query heads over 2 key/value heads of 8, a sliding window of 4 (so the
9- and 13-token cases reach past it), an untied head; every weight drawn at random.

How to run (pip install torch transformers safetensors):
    python3 scripts/reference_mixtral.py
"""
import os

import torch
import transformers

from transformers_fixture import logits_of, save_random, write_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "mixtral_tiny")


def main():
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=4, rms_norm_eps=1e-5,
        max_position_embeddings=128, rope_theta=1000000.0, tie_word_embeddings=False,
        pad_token_id=None, eos_token_id=1)
    cls = transformers.MixtralForCausalLM
    save_random(cls(cfg), OUT)
    write_logits(OUT, "scripts/reference_mixtral.py", cases=logits_of(cls, OUT))


if __name__ == "__main__":
    main()
