#!/usr/bin/env python3
"""Tiny random Gemma 3 (text) and Gemma 2 models and their logits from an independent float64
forward pass.

Usage (from the repository root):
    python3 scripts/reference_gemma.py tests/fixtures/gemma3_tiny tests/fixtures/gemma2_tiny

Writes, in the first folder (created if needed):
  config.json        a Hugging Face Gemma 3 text config (model_type gemma3_text): 3 blocks, of
                     which the first two attend over a sliding window of 3 positions with RoPE
                     base 10,000 and the third over the whole context with base 1,000,000 and
                     linear RoPE scaling (factor 2); query_pre_attn_scalar 8 (not head_dim 16)
  model.safetensors  f32 weights drawn from a seeded numpy generator
  logits.json        for three fixed token sequences: the ids and the logits at every
                     position, from the forward pass below in float64
and the same in the second for Gemma 2 (model_type gemma2): no q/k norms, one RoPE (base
10,000) for every block, blocks 0 and 2 on a sliding window of 3 and 1 on the whole context
(Gemma 2 alternates), attention scores soft-capped at 2 and the final logits at 3
(`score = cap tanh(score / cap)`; Gemma 2 2B uses 50 and 30, too large to matter in a model
this small), query_pre_attn_scalar 8.

Dependencies: numpy. Shares the file writer and helpers of reference_qwen3.py.

The forward pass follows transformers' Gemma3ForCausalLM (gemma3_text):
    h = embed[ids] * sqrt(hidden_size)
    norm(x, w) = x / sqrt(mean(x^2) + eps) * (1 + w)          (every norm: weights are offsets)
    for each block i (sliding when layer_types[i] == "sliding_attention"):
        x = norm(h, input_layernorm)
        q = x Wq^T per head; q = norm(q, q_norm);  k = x Wk^T per head; k = norm(k, k_norm)
        v = x Wv^T
        RoPE, rotate_half style: sliding blocks inv_freq_j = local_base^(-2j/hd);
              full blocks inv_freq_j = rope_theta^(-2j/hd) / factor (linear scaling)
        scores = q k^T * query_pre_attn_scalar^-0.5, causal; sliding blocks also mask keys
              w or more positions back (query i sees keys i - w < j <= i)
        GQA: query head j uses key/value head j // (heads / kv_heads)
        h = h + norm(softmax(scores) v Wo^T, post_attention_layernorm)
        x = norm(h, pre_feedforward_layernorm)
        h = h + norm((gelu_tanh(x Wg^T) * (x Wu^T)) Wd^T, post_feedforward_layernorm)
    logits = norm(h, norm) @ embed^T                         (tied)
gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
Gemma 2 (Gemma2ForCausalLM) differs in: no q_norm/k_norm; every block rotates with
rope_theta; scores = attn_cap tanh(scores / attn_cap) before the mask; logits = final_cap
tanh(logits / final_cap).
Norm weights are drawn around 0 (std 0.3), the embedding scale is 5.66, the attention scale is
not 1/sqrt(head_dim), and the blocks differ in window and RoPE, so a forward that got any of
these wrong gives other logits.
"""
import sys

import numpy as np

from reference_qwen3 import attend, save_safetensors, weights, write_fixture  # noqa: F401

CONFIG = {
    "architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "query_pre_attn_scalar": 8,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": {"rope_type": "linear", "factor": 2.0},
    "sliding_window": 3,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "torch_dtype": "float32",
}


def norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + w)


def rope(x, inv):
    # x: [heads, t, hd]
    hd = x.shape[-1]
    ang = np.arange(x.shape[1], dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + np.concatenate([-x2, x1], axis=-1) * sin


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def forward(cfg, w, ids):
    W = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["rms_norm_eps"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    t = len(ids)
    j = np.arange(hd // 2, dtype=np.float64)
    scaling = cfg.get("rope_scaling") or {"factor": 1.0}
    inv_global = cfg["rope_theta"] ** (-2.0 * j / hd) / scaling["factor"]
    # Gemma 2 rotates every block alike.
    base = cfg.get("rope_local_base_freq")
    inv_local = base ** (-2.0 * j / hd) if base else inv_global
    attn_cap, final_cap = cfg.get("attn_logit_softcapping"), cfg.get("final_logit_softcapping")
    causal = np.triu(np.full((t, t), -np.inf), k=1)
    window = causal + np.tril(np.full((t, t), -np.inf), k=-cfg["sliding_window"])
    h = W["model.embed_tokens.weight"][ids] * np.sqrt(cfg["hidden_size"])
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        sliding = cfg["layer_types"][layer] == "sliding_attention"
        inv, mask = (inv_local, window) if sliding else (inv_global, causal)
        x = norm(h, W[f"{p}.input_layernorm.weight"], eps)
        q = (x @ W[f"{p}.self_attn.q_proj.weight"].T).reshape(t, nh, hd)
        k = (x @ W[f"{p}.self_attn.k_proj.weight"].T).reshape(t, nkv, hd)
        v = (x @ W[f"{p}.self_attn.v_proj.weight"].T).reshape(t, nkv, hd).transpose(1, 0, 2)
        if f"{p}.self_attn.q_norm.weight" in W:  # Gemma 3
            q = norm(q, W[f"{p}.self_attn.q_norm.weight"], eps)
            k = norm(k, W[f"{p}.self_attn.k_norm.weight"], eps)
        q, k = rope(q.transpose(1, 0, 2), inv), rope(k.transpose(1, 0, 2), inv)
        mix = attend(q, k, v, cfg["query_pre_attn_scalar"] ** -0.5, mask, attn_cap)
        a = mix @ W[f"{p}.self_attn.o_proj.weight"].T
        h = h + norm(a, W[f"{p}.post_attention_layernorm.weight"], eps)
        x = norm(h, W[f"{p}.pre_feedforward_layernorm.weight"], eps)
        gate = x @ W[f"{p}.mlp.gate_proj.weight"].T
        up = x @ W[f"{p}.mlp.up_proj.weight"].T
        m = (gelu_tanh(gate) * up) @ W[f"{p}.mlp.down_proj.weight"].T
        h = h + norm(m, W[f"{p}.post_feedforward_layernorm.weight"], eps)
    h = norm(h, W["model.norm.weight"], eps)
    logits = h @ W["model.embed_tokens.weight"].T
    if final_cap:
        logits = final_cap * np.tanh(logits / final_cap)
    return logits


# Gemma 2: no local RoPE base or RoPE scaling; every other block on the window; soft-caps.
GEMMA2 = {k: v for k, v in CONFIG.items() if k not in ("rope_local_base_freq", "rope_scaling")}
GEMMA2.update(
    architectures=["Gemma2ForCausalLM"],
    model_type="gemma2",
    rope_theta=10000.0,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    final_logit_softcapping=3.0,
    attn_logit_softcapping=2.0,
)


def gemma_weights(cfg, seed):
    """Seeded weights: norms as offsets around 0, post-norms, q/k norms for Gemma 3 only."""
    return weights(cfg, seed=seed, norm_mean=0.0, post_norms=True,
                   qk_norms=cfg["model_type"] == "gemma3_text")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for out, cfg, seed in [(sys.argv[1], CONFIG, 20261128), (sys.argv[2], GEMMA2, 20261129)]:
        write_fixture(out, cfg, gemma_weights(cfg, seed), forward, "scripts/reference_gemma.py")


if __name__ == "__main__":
    main()
