#!/usr/bin/env python3
"""Check steerkit's GGUF export of OLMo 2 (`olmo2`) and OLMo 3 (`olmo3`, which llama.cpp reads
as `olmo2` with a window) against llama.cpp (via llama-cpp-python).

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

OLMo 3: the same shape with 4 blocks, blocks 0-2 on a sliding window of 4 positions with
plain RoPE, block 3 on the whole context with YaRN (factor 8 over 64 positions), base
500,000 for both as in the released models (llama.cpp's olmo2 reads a window base of its
own but does not use it, so steerkit refuses to export one), RoPE per layer type as
transformers 5 writes it; the forward is first checked against tests/fixtures/olmo3_tiny
(`scripts/reference_olmo2.py --olmo3`, whose window blocks have base 10,000). Control: every
block rotated as the full one (YaRN's frequencies and attention factor).

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
from check_qwen3_llamacpp import tokenizer_folder  # noqa: E402
from llamacpp_check import Seeded, check, fixture_gap  # noqa: E402
from reference_qwen3 import attend, rmsnorm, rope  # noqa: E402

CONFIG = {
    "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
    "max_position_embeddings": 512, "tie_word_embeddings": False, "attention_bias": False,
    "hidden_act": "silu",
}

OLMO3 = dict(
    {k: v for k, v in CONFIG.items() if k != "rope_theta"},
    architectures=["Olmo3ForCausalLM"], model_type="olmo3", num_hidden_layers=4,
    sliding_window=4, layer_types=["sliding_attention"] * 3 + ["full_attention"],
    rope_parameters={
        "full_attention": {"rope_type": "yarn", "factor": 8.0, "rope_theta": 500000.0,
                           "original_max_position_embeddings": 64},
        "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0}})


def block_rope(cfg, layer):
    """Block `layer`'s RoPE settings and window: OLMo 3's by layer type (with `one_rope` in
    cfg, every block rotates as a full one), OLMo 2's one RoPE and none."""
    types = cfg.get("layer_types")
    if not types:
        return cfg, None
    kind = types[layer]
    p = cfg["rope_parameters"]["full_attention" if cfg.get("one_rope") else kind]
    scaling = None if p.get("rope_type", "default") == "default" else p
    window = cfg["sliding_window"] if kind == "sliding_attention" else None
    return dict(cfg, rope_theta=p["rope_theta"], rope_scaling=scaling), window


def forward(cfg, w, ids):
    """OLMo 2's (OLMo 3's) forward pass in float64; with `qk_norm: False` in cfg, without its
    q/k norms."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["rms_norm_eps"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
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
        rope_cfg, window = block_rope(dict(cfg, head_dim=hd), layer)
        q, k = rope(heads(q, nh), rope_cfg), rope(heads(k, nkv), rope_cfg)
        mask = causal
        if window:  # query i attends to keys i - window + 1 ..= i
            mask = causal + np.tril(np.full((t, t), -np.inf), k=-window)
        mix = attend(q, k, heads(v, nkv), hd ** -0.5, mask)
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
    for fixture in ("olmo2_tiny", "olmo3_tiny"):
        if fixture_gap(fixture, forward, {"cases": {}}) >= 1e-5:
            print("FAIL: the numpy forward does not match transformers")
            return 1
    tokens = os.path.join(work, "tokens")
    vocab = tokenizer_folder(steerkit, source, work, tokens)
    ok = True
    for label, base, control, what in [
        ("olmo2", CONFIG, {"qk_norm": False}, "without the q/k norms"),
        ("olmo3", OLMO3, {"one_rope": True}, "every block rotated as the full one"),
    ]:
        cfg = dict(base, vocab_size=vocab)
        ok = check(steerkit, work, tokens, label, cfg, olmo2_weights(cfg), forward, control,
                   what) and ok
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
