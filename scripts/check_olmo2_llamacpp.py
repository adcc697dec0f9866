#!/usr/bin/env python3
"""Check steerkit's GGUF export of OLMo 2 (`olmo2`) against llama.cpp (via llama-cpp-python).

No OLMo 2 checkpoint is here, so the script makes one: a random model of hidden 64 (4 query
and 2 key/value heads of 16, gate and up of 96, 3 blocks, RoPE base 500,000, an untied head)
with Qwen's real tokenizer (taken from a Qwen2.5 GGUF through a folder export), its norms
drawn around 1. The numpy forward pass below is OLMo 2's (no input norms; the attention's
and the MLP's outputs RMS-normed before they join the residual; queries and keys RMS-normed
over the whole projection before RoPE); it is first checked against transformers' logits in
tests/fixtures/olmo2_tiny (scripts/reference_olmo2.py). The model is exported with
`steerkit export --format gguf` (f16 matrices, q/k rows as they are: llama.cpp's olmo2
rotates halves, as transformers does), and llama.cpp's logits at every position of three
token sequences are compared with the numpy forward on the weights rounded to f16. Control:
the same forward with the q/k norms left out, which llama.cpp must not match.

How to run (from the repository root):
  /work/venvs/llamacpp/bin/python scripts/check_olmo2_llamacpp.py \\
      target/release/steerkit checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/sk-olmo2
Exit code 0 when llama.cpp agrees within 0.05 and the control does not; 1 otherwise.

Dependencies: Python 3.9+, numpy, llama-cpp-python (tested with 0.3.36).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamacpp_check import Seeded, fixture_gap, run  # noqa: E402
from reference_qwen3 import attend, rmsnorm, rope  # noqa: E402

CONFIG = {
    "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
    "max_position_embeddings": 512, "tie_word_embeddings": False, "attention_bias": False,
    "hidden_act": "silu",
}


def forward(cfg, w, ids):
    """OLMo 2's forward pass in float64; with `qk_norm: False` in cfg, without its q/k norms."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["rms_norm_eps"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    rope_cfg = dict(cfg, head_dim=hd)
    t = len(ids)
    h = W["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((t, t), -np.inf), k=1)
    heads = lambda y, n: y.reshape(t, n, hd).transpose(1, 0, 2)  # noqa: E731
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        q = h @ W[f"{p}.self_attn.q_proj.weight"].T
        k = h @ W[f"{p}.self_attn.k_proj.weight"].T
        if cfg.get("qk_norm", True):
            q = rmsnorm(q, W[f"{p}.self_attn.q_norm.weight"], eps)
            k = rmsnorm(k, W[f"{p}.self_attn.k_norm.weight"], eps)
        v = h @ W[f"{p}.self_attn.v_proj.weight"].T
        q, k = rope(heads(q, nh), rope_cfg), rope(heads(k, nkv), rope_cfg)
        mix = attend(q, k, heads(v, nkv), hd ** -0.5, causal)
        a = mix @ W[f"{p}.self_attn.o_proj.weight"].T
        h = h + rmsnorm(a, W[f"{p}.post_attention_layernorm.weight"], eps)
        gate = h @ W[f"{p}.mlp.gate_proj.weight"].T
        up = h @ W[f"{p}.mlp.up_proj.weight"].T
        m = (gate / (1.0 + np.exp(-gate)) * up) @ W[f"{p}.mlp.down_proj.weight"].T
        h = h + rmsnorm(m, W[f"{p}.post_feedforward_layernorm.weight"], eps)
    h = rmsnorm(h, W["model.norm.weight"], eps)
    return h @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T


def olmo2_weights(cfg):
    d, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    s = Seeded()
    s.embeddings(cfg)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        s.attention(p, cfg, lambda heads: heads * hd)
        s.norm(f"{p}.post_attention_layernorm.weight", d)
        s.norm(f"{p}.post_feedforward_layernorm.weight", d)
        s.mlp(f"{p}.mlp", f, d)
    return s.w


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    if fixture_gap("olmo2_tiny", forward, {"cases": {}}) >= 1e-5:
        print("FAIL: the numpy forward does not match transformers")
        return 1
    ok = run(steerkit, source, work, "olmo2", CONFIG, olmo2_weights, forward,
             {"qk_norm": False}, "without the q/k norms")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
