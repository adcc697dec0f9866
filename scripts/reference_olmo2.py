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
import os

import torch
import transformers

from transformers_fixture import logits_of, save_random, write_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "olmo2_tiny")


def main():
    torch.manual_seed(0)
    cfg = transformers.Olmo2Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        max_position_embeddings=128, rope_theta=500000.0, tie_word_embeddings=False,
        pad_token_id=None, eos_token_id=1)
    save_random(transformers.Olmo2ForCausalLM(cfg), OUT)
    write_logits(OUT, "scripts/reference_olmo2.py",
                 cases=logits_of(transformers.Olmo2ForCausalLM, OUT))


if __name__ == "__main__":
    main()
