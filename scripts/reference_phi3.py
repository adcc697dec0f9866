#!/usr/bin/env python3
"""A tiny random Phi-3 model, stored fused as Phi-3 stores it, and its logits from an
independent float64 forward pass.

Usage (from the repository root):
    python3 scripts/reference_phi3.py tests/fixtures/phi3_tiny
    python3 scripts/reference_phi3.py --phi4-mini tests/fixtures/phi4_mini_tiny

With --phi4-mini the model is shaped as Phi-4-mini is: RoPE turns 12 of each head's 16
dimensions (partial_rotary_factor 0.75) and is scaled by LongRoPE (short and long factors,
an original context of 8 positions and max_position_embeddings 64, so the attention factor
is sqrt(1 + ln 8 / ln 8)), the output head is tied to the embedding, and there is no
sliding window. Its first sequence (5 tokens) stays inside the original context and uses
the short factors; the other two (9 and 13) go past it and use the long ones, for every
position, as transformers chooses them by the sequence's length.

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
        RoPE, rotate_half style, inv_freq_i = theta^(-2i/hd) over the first hd dimensions
        (hd * partial_rotary_factor of them; LongRoPE divides inv_freq_i by factor_i), GQA
        causal softmax(q k^T / sqrt(hd)) v over the window (query i sees keys i - w < j <= i),
        heads concatenated, @ Wo^T;  h += that
        x = rmsnorm(h) * post_attention_layernorm
        gate, up = the two halves of x Wgate_up^T (gate first)
        h += (silu(gate) * up) Wd^T
    logits = (rmsnorm(h) * norm) @ lm_head^T   (the embedding when tied)
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

PHI4_MINI = dict(
    CONFIG,
    hidden_size=64,
    num_hidden_layers=2,
    partial_rotary_factor=0.75,
    rope_scaling={
        "rope_type": "longrope",
        "short_factor": [1.0, 1.25, 1.5, 2.5, 4.0, 6.0],
        "long_factor": [1.5, 3.0, 5.0, 9.0, 14.0, 20.0],
    },
    sliding_window=None,
    max_position_embeddings=64,
    original_max_position_embeddings=8,
    tie_word_embeddings=True,
)


def fused_weights(cfg, seed=20261130):
    """Seeded weights in Phi-3's stored form: qkv_proj and gate_up_proj, an lm_head unless
    the head is tied."""
    split = dict(cfg, head_dim=cfg["hidden_size"] // cfg["num_attention_heads"])
    w = weights(split, seed=seed, qk_norms=False)
    rng = np.random.default_rng(seed + 1)
    if not cfg["tie_word_embeddings"]:
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
    if cfg["sliding_window"]:
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
    head = W["model.embed_tokens.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"]
    return h @ head.T


def main():
    args = sys.argv[1:]
    cfg = CONFIG
    if args[:1] == ["--phi4-mini"]:
        cfg, args = PHI4_MINI, args[1:]
    if len(args) != 1:
        sys.exit(__doc__)
    write_fixture(args[0], cfg, fused_weights(cfg), forward, "scripts/reference_phi3.py")


if __name__ == "__main__":
    main()
