#!/usr/bin/env python3
"""Writes tests/fixtures/olmo2_tiny (or, with --olmo3, olmo3_tiny): a tiny random OLMo 2 (or
OLMo 3) model and its reference logits.

The reference is transformers' own Olmo2ForCausalLM (Olmo3ForCausalLM; eager attention) run
in float64 on the float32 weights written to model.safetensors: 3 blocks (4), 4 query heads
over 2 key/value heads (the q/k norms then have different lengths, 32 and 16), RoPE base
500,000 as the released models, untied head; every weight, the norms included, drawn at
random so that a norm left out or put in the wrong place changes the logits.

OLMo 3's blocks 0-2 attend over a sliding window of 3 positions (shorter than the 9- and
13-token sequences) with plain RoPE of base 10,000; block 3 attends to everything with YaRN
(factor 4 over 8 positions), RoPE's parameters per layer type in transformers 5's form.

How to run (pip install torch transformers safetensors):
    python3 scripts/reference_olmo2.py [--olmo3]
Then `python3 scripts/check_fixture_transformers.py tests/fixtures/olmo2_tiny` re-checks it.
"""
import os
import sys

import torch
import transformers

from transformers_fixture import logits_of, save_random, write_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    olmo3 = "--olmo3" in sys.argv[1:]
    torch.manual_seed(0)
    shape = dict(
        vocab_size=96, hidden_size=32, intermediate_size=48,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        max_position_embeddings=128, tie_word_embeddings=False, pad_token_id=None,
        eos_token_id=1)
    if olmo3:
        shape["max_position_embeddings"] = 32  # YaRN's factor times its original context
        cfg = transformers.Olmo3Config(
            num_hidden_layers=4, sliding_window=3, rope_parameters={
                "full_attention": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 500000.0,
                                   "original_max_position_embeddings": 8},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            **shape)
        assert cfg.layer_types[3] == "full_attention" and cfg.layer_types[2] != "full_attention"
        cls, name = transformers.Olmo3ForCausalLM, "olmo3_tiny"
    else:
        cfg = transformers.Olmo2Config(num_hidden_layers=3, rope_theta=500000.0, **shape)
        cls, name = transformers.Olmo2ForCausalLM, "olmo2_tiny"
    out = os.path.join(ROOT, "tests", "fixtures", name)
    save_random(cls(cfg), out)
    script = "scripts/reference_olmo2.py" + (" --olmo3" if olmo3 else "")
    write_logits(out, script, cases=logits_of(cls, out))


if __name__ == "__main__":
    main()
