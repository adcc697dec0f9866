#!/usr/bin/env python3
"""Writes tests/fixtures/qwen2_moe_tiny: a tiny random Qwen2-MoE model (Qwen1.5-MoE-A2.7B's and
Qwen2-57B-A14B's architecture) and its reference logits.

The reference is transformers' own Qwen2MoeForCausalLM (eager attention) run in float64 on
the float32 weights written to model.safetensors: 3 blocks of which 0 and 2 route each token
to 2 of 4 experts (moe_intermediate_size 24) beside a shared expert of 40 channels, gated per
token by `sigmoid(shared_expert_gate x)`, and block 1 has a plain MLP (`mlp_only_layers`);
4 query heads over 2 key/value heads with Qwen2's q/k/v biases, an untied head; every weight
drawn at random (transformers starts the router at zero, which would route every token
alike). `cases` are the logits with `norm_topk_prob: false` (the released models'),
`cases_normalized` those of the same weights with it true.

How to run (pip install torch transformers safetensors):
    python3 scripts/reference_qwen2_moe.py
"""
import os

import torch
import transformers

from transformers_fixture import logits_of, save_random, write_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "qwen2_moe_tiny")


def main():
    torch.manual_seed(0)
    cfg = transformers.Qwen2MoeConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
        shared_expert_intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[1], rms_norm_eps=1e-6,
        max_position_embeddings=128, rope_theta=1000000.0, tie_word_embeddings=False,
        pad_token_id=None, eos_token_id=1)
    cls = transformers.Qwen2MoeForCausalLM
    save_random(cls(cfg), OUT)
    write_logits(OUT, "scripts/reference_qwen2_moe.py", cases=logits_of(cls, OUT),
                 cases_normalized=logits_of(cls, OUT, norm_topk_prob=True))


if __name__ == "__main__":
    main()
