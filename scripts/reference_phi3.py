#!/usr/bin/env python3
"""A tiny random Phi-3 model, stored fused as Phi-3 stores it, and its logits from an
independent float64 forward pass.

Usage (from the repository root):
    python3 scripts/reference_phi3.py tests/fixtures/phi3_tiny

Writes, in the given folder (created if needed):
  config.json        a Hugging Face Phi-3 config (model_type phi3): 3 blocks, 4 query heads over
                     2 key/value heads of 8, every block on a sliding window of 3 positions
                     (Phi-3-mini-4k's is 2047), an untied output head; no head_dim key
                     (transformers computes hidden_size / heads)
  model.safetensors  f32 weights drawn from a seeded numpy generator, with q, k and v stored
                     as one `self_attn.qkv_proj` (rows q, then k, then v) and gate and up as
                     one `mlp.gate_up_proj` (rows gate, then up), as Phi-3 checkpoints are
  logits.json        for three fixed token sequences: the ids and the logits at every
                     position, from the forward pass below in float64

Dependencies: numpy. Shares the file writer and helpers of reference_qwen3.py.

The forward pass follows transformers' Phi3ForCausalLM:
    h = embed[ids]
    for each block:
        x = rmsnorm(h) * input_layernorm
        qkv = x Wqkv^T; q, k, v = its first heads*hd columns, the next kv_heads*hd, the rest
        RoPE, rotate_half style, inv_freq_i = theta^(-2i/hd); GQA
        causal softmax(q k^T / sqrt(hd)) v over the window (query i sees keys i - w < j <= i),
        heads concatenated, @ Wo^T;  h += that
        x = rmsnorm(h) * post_attention_layernorm
        gate, up = the two halves of x Wgate_up^T (gate first)
        h += (silu(gate) * up) Wd^T
    logits = (rmsnorm(h) * norm) @ lm_head^T
The fused tensors are split here by columns of their product, not by the loader's rows, so a
loader that splits them at the wrong place, or in the wrong order, gives other logits.
"""
import sys

import numpy as np

from reference_qwen3 import (  # noqa: F401
    SIZES, attend, rmsnorm, rope, save_safetensors, weights, write_fixture)

CONFIG = {
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    **SIZES,
    "num_hidden_layers": 3,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "sliding_window": 3,
    "max_position_embeddings": 128,
    "original_max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "float32",
}


def fused_weights(cfg, seed=20261130):
    """Seeded weights in Phi-3's stored form: qkv_proj and gate_up_proj, an lm_head."""
    split = dict(cfg, head_dim=cfg["hidden_size"] // cfg["num_attention_heads"])
    w = weights(split, seed=seed, qk_norms=False)
    rng = np.random.default_rng(seed + 1)
    w["lm_head.weight"] = (rng.standard_normal((cfg["vocab_size"], cfg["hidden_size"])) * 0.2).astype(np.float32)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        w[f"{p}.self_attn.qkv_proj.weight"] = np.concatenate(
            [w.pop(f"{p}.self_attn.{n}_proj.weight") for n in "qkv"], axis=0)
        w[f"{p}.mlp.gate_up_proj.weight"] = np.concatenate(
            [w.pop(f"{p}.mlp.{n}_proj.weight") for n in ("gate", "up")], axis=0)
    return w


def forward(cfg, w, ids):
    W = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["rms_norm_eps"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // nh
    rope_cfg = dict(cfg, head_dim=hd)
    t = len(ids)
    h = W["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((t, t), -np.inf), k=1)
    mask += np.tril(np.full((t, t), -np.inf), k=-cfg["sliding_window"])
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        x = rmsnorm(h, W[f"{p}.input_layernorm.weight"], eps)
        qkv = x @ W[f"{p}.self_attn.qkv_proj.weight"].T
        q = qkv[:, : nh * hd].reshape(t, nh, hd).transpose(1, 0, 2)
        k = qkv[:, nh * hd: (nh + nkv) * hd].reshape(t, nkv, hd).transpose(1, 0, 2)
        v = qkv[:, (nh + nkv) * hd:].reshape(t, nkv, hd).transpose(1, 0, 2)
        q, k = rope(q, rope_cfg), rope(k, rope_cfg)
        h = h + attend(q, k, v, hd ** -0.5, mask) @ W[f"{p}.self_attn.o_proj.weight"].T
        x = rmsnorm(h, W[f"{p}.post_attention_layernorm.weight"], eps)
        gate, up = np.split(x @ W[f"{p}.mlp.gate_up_proj.weight"].T, 2, axis=-1)
        h = h + (gate / (1.0 + np.exp(-gate)) * up) @ W[f"{p}.mlp.down_proj.weight"].T
    h = rmsnorm(h, W["model.norm.weight"], eps)
    return h @ W["lm_head.weight"].T


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    write_fixture(sys.argv[1], CONFIG, fused_weights(CONFIG), forward, "scripts/reference_phi3.py")


if __name__ == "__main__":
    main()
