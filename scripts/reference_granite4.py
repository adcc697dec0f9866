#!/usr/bin/env python3
"""Writes tests/fixtures/granite4_tiny: a tiny random Granite 4 attention-only model
(`granitemoehybrid` with every block attention and no experts, as Granite-4.0-Micro) and its
reference logits.

The reference is transformers' own GraniteMoeHybridForCausalLM (eager attention) run in
float64 on the float32 weights written to model.safetensors: 3 blocks, 4 query heads over 2
key/value heads, the shared MLP of 40 channels (gate and up fused as `input_linear`), the
four Granite scalars far from 1 (embedding 3, residual 0.5, attention 0.2, logits divided
by 4), an untied head. `cases` are the logits with RoPE (`position_embedding_type: rope`),
`cases_nope` those of the same weights without it (the configuration class's default).

How to run (pip install torch transformers safetensors):
    python3 scripts/reference_granite4.py
"""
import os

import torch
import transformers

from transformers_fixture import logits_of, save_random, write_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "granite4_tiny")


def main():
    torch.manual_seed(0)
    cfg = transformers.GraniteMoeHybridConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, shared_intermediate_size=40,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        layer_types=["attention"] * 3, num_local_experts=0, position_embedding_type="rope",
        embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2,
        logits_scaling=4.0, rms_norm_eps=1e-6, max_position_embeddings=128,
        rope_theta=10000.0, tie_word_embeddings=False, pad_token_id=None, bos_token_id=2,
        eos_token_id=1, mamba_n_heads=8, mamba_d_head=8)
    cls = transformers.GraniteMoeHybridForCausalLM
    save_random(cls(cfg), OUT)
    write_logits(OUT, "scripts/reference_granite4.py", cases=logits_of(cls, OUT),
                 cases_nope=logits_of(cls, OUT, position_embedding_type=None))


if __name__ == "__main__":
    main()
