#!/usr/bin/env python3
"""A tiny random SmolLM3 model and its logits from an independent float64 forward pass.

Usage (from the repository root):
    python3 scripts/reference_smollm3.py tests/fixtures/smollm3_tiny

Writes, in the given folder (created if needed):
  config.json        a Hugging Face SmolLM3 config (model_type smollm3): 4 blocks, 4 query
                     heads over 2 key/value heads of 8, a tied head, and `no_rope_layers`
                     [1, 0, 1, 0], so that blocks 1 and 3 attend without RoPE (the real models
                     skip it in every fourth block; two of four here, so that a forward that
                     rotates them, or the wrong ones, gives other logits)
  model.safetensors  f32 weights drawn from a seeded numpy generator
  logits.json        for three fixed token sequences: the ids and the logits at every
                     position, from the forward pass below in float64

Dependencies: numpy. Shares the file writer and helpers of reference_qwen3.py and the forward
pass of reference_granite.py (Granite's scalars absent, so Llama's block).

The forward pass follows transformers' SmolLM3ForCausalLM (Llama's block):
    h = embed[ids]
    for each block l:
        x = rmsnorm(h) * input_layernorm
        q, k, v = x Wq^T, x Wk^T, x Wv^T; RoPE (rotate_half style, inv_freq_i = theta^(-2i/hd))
        only where no_rope_layers[l] is 1; causal softmax(q k^T / sqrt(hd)) v (GQA), @ Wo^T
        h += that;  x = rmsnorm(h) * post_attention_layernorm;  h += (silu(x Wg^T) * (x Wu^T)) Wd^T
    logits = (rmsnorm(h) * norm) @ embed^T
"""
import sys

from reference_granite import forward  # Llama's block; no_rope_layers honoured there
from reference_qwen3 import SIZES, weights, write_fixture

CONFIG = {
    "architectures": ["SmolLM3ForCausalLM"],
    "model_type": "smollm3",
    **SIZES,
    "num_hidden_layers": 4,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
    "use_sliding_window": False,
    "no_rope_layers": [1, 0, 1, 0],
    "torch_dtype": "float32",
}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    cfg = dict(CONFIG, head_dim=CONFIG["hidden_size"] // CONFIG["num_attention_heads"])
    w = weights(cfg, seed=20261129, qk_norms=False)
    write_fixture(sys.argv[1], CONFIG, w, forward, "scripts/reference_smollm3.py")


if __name__ == "__main__":
    main()
