#!/usr/bin/env python3
"""A tiny random IBM Granite 3 model and its logits from an independent float64 forward pass.

Usage (from the repository root):
    python3 scripts/reference_granite.py tests/fixtures/granite_tiny

Writes, in the given folder (created if needed):
  config.json        a Hugging Face Granite config (model_type granite): 3 blocks, 4 query heads
                     over 2 key/value heads of 8, an untied output head, and Granite's four
                     scalars set far from 1 (embedding_multiplier 3, residual_multiplier 0.5,
                     attention_multiplier 0.2, logits_scaling 4) so that a forward that drops
                     or misplaces one gives other logits
  model.safetensors  f32 weights drawn from a seeded numpy generator
  logits.json        for three fixed token sequences: the ids and the logits at every
                     position, from the forward pass below in float64

Dependencies: numpy. Shares the file writer and helpers of reference_qwen3.py.

The forward pass follows transformers' GraniteForCausalLM (Llama's block with the scalars):
    h = embed[ids] * embedding_multiplier
    for each block:
        x = rmsnorm(h) * input_layernorm
        q, k, v = x Wq^T, x Wk^T, x Wv^T; RoPE, rotate_half style, inv_freq_i = theta^(-2i/hd)
        causal softmax(q k^T * attention_multiplier) v (GQA), heads concatenated, @ Wo^T
        h += that * residual_multiplier
        x = rmsnorm(h) * post_attention_layernorm
        h += ((silu(x Wg^T) * (x Wu^T)) Wd^T) * residual_multiplier
    logits = ((rmsnorm(h) * norm) @ lm_head^T) / logits_scaling
"""
import sys

import numpy as np

from reference_qwen3 import SIZES, attend, rmsnorm, rope, weights, write_fixture

CONFIG = {
    "architectures": ["GraniteForCausalLM"],
    "model_type": "granite",
    **SIZES,
    "num_hidden_layers": 3,
    "head_dim": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
    "embedding_multiplier": 3.0,
    "residual_multiplier": 0.5,
    "attention_multiplier": 0.2,
    "logits_scaling": 4.0,
    "torch_dtype": "float32",
}


def granite_weights(cfg, seed=20261128):
    """Seeded weights of Llama's block (no q/k norms) and an untied head."""
    w = weights(cfg, seed=seed, qk_norms=False)
    rng = np.random.default_rng(seed + 1)
    w["lm_head.weight"] = (rng.standard_normal((cfg["vocab_size"], cfg["hidden_size"])) * 0.2).astype(np.float32)
    return w


def forward(cfg, w, ids):
    """Llama's block with Granite's scalars (each as GraniteConfig defaults it when absent, the
    attention one as Llama's head_dim^-1/2 then) and SmolLM3's `no_rope_layers` (RoPE only
    where 1; everywhere when absent); the head tied unless `lm_head.weight` is there."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["rms_norm_eps"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    rope_cfg = dict(cfg, head_dim=hd)
    res = cfg.get("residual_multiplier", 1.0)
    rotate = cfg.get("no_rope_layers") or [1] * cfg["num_hidden_layers"]
    t = len(ids)
    h = W["model.embed_tokens.weight"][ids] * cfg.get("embedding_multiplier", 1.0)
    causal = np.triu(np.full((t, t), -np.inf), k=1)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        x = rmsnorm(h, W[f"{p}.input_layernorm.weight"], eps)
        q = (x @ W[f"{p}.self_attn.q_proj.weight"].T).reshape(t, nh, hd).transpose(1, 0, 2)
        k = (x @ W[f"{p}.self_attn.k_proj.weight"].T).reshape(t, nkv, hd).transpose(1, 0, 2)
        v = (x @ W[f"{p}.self_attn.v_proj.weight"].T).reshape(t, nkv, hd).transpose(1, 0, 2)
        if rotate[layer]:
            q, k = rope(q, rope_cfg), rope(k, rope_cfg)
        mix = attend(q, k, v, cfg.get("attention_multiplier", hd ** -0.5), causal)
        h = h + (mix @ W[f"{p}.self_attn.o_proj.weight"].T) * res
        x = rmsnorm(h, W[f"{p}.post_attention_layernorm.weight"], eps)
        gate = x @ W[f"{p}.mlp.gate_proj.weight"].T
        up = x @ W[f"{p}.mlp.up_proj.weight"].T
        h = h + ((gate / (1.0 + np.exp(-gate)) * up) @ W[f"{p}.mlp.down_proj.weight"].T) * res
    h = rmsnorm(h, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return (h @ head.T) / cfg.get("logits_scaling", 1.0)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    write_fixture(sys.argv[1], CONFIG, granite_weights(CONFIG), forward, "scripts/reference_granite.py")


if __name__ == "__main__":
    main()
