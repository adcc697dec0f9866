#!/usr/bin/env python3
"""Check steerkit's GGUF export of Qwen3-MoE (`qwen3moe`) against llama.cpp (via llama-cpp-python).

No Qwen3-MoE checkpoint is here, so the script makes one: a random model of hidden 64 (4
query and 2 key/value heads of 16 with Qwen3's per-head q/k norms, 3 blocks, each routing
every token to 2 of 8 experts of 32 channels, norms drawn around 1, an untied head) with
Qwen's real tokenizer (taken from a Qwen2.5 GGUF through a folder export). The numpy forward
below is Qwen3-MoE's; it is first checked against transformers' logits in
tests/fixtures/qwen3_moe_tiny (scripts/reference_qwen3_moe.py; that fixture's block 1 is a
plain MLP). The model is exported with `steerkit export --format gguf` (f16 matrices, each
block's experts stacked as `ffn_{gate,up,down}_exps`, the router as `ffn_gate_inp`), and
llama.cpp's logits at every position of three token sequences are compared with the numpy
forward on the weights rounded to f16. Control: the same forward with the chosen weights left
unnormalized, which llama.cpp must not match.

How to run (from the repository root):
  /work/venvs/llamacpp/bin/python scripts/check_qwen3_moe_llamacpp.py \\
      target/release/steerkit checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/sk-moe
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
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 64,
    "intermediate_size": 96, "moe_intermediate_size": 32, "num_experts": 8,
    "num_experts_per_tok": 2, "norm_topk_prob": True, "decoder_sparse_step": 1,
    "mlp_only_layers": [], "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 512, "tie_word_embeddings": False, "attention_bias": False,
    "hidden_act": "silu",
}


def silu_mlp(x, W, p):
    gate = x @ W[f"{p}.gate_proj.weight"].T
    up = x @ W[f"{p}.up_proj.weight"].T
    return (gate / (1.0 + np.exp(-gate)) * up) @ W[f"{p}.down_proj.weight"].T


def moe(x, W, p, cfg):
    """Each row's top experts by the router's softmax, weights renormalized when the config
    says, the weighted sum of their outputs."""
    logits = x @ W[f"{p}.gate.weight"].T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    k = cfg["num_experts_per_tok"]
    out = np.zeros_like(x)
    for row in range(x.shape[0]):
        top = np.argsort(-probs[row], kind="stable")[:k]
        w = probs[row, top]
        if cfg.get("norm_topk_prob", False):
            w = w / w.sum()
        for e, we in zip(top, w):
            out[row] += we * silu_mlp(x[row:row + 1], W, f"{p}.experts.{e}")[0]
    return out


def forward(cfg, w, ids):
    """Qwen3-MoE's forward pass in float64."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["rms_norm_eps"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    dense = set(cfg.get("mlp_only_layers", []))
    t = len(ids)
    h = W["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((t, t), -np.inf), k=1)
    heads = lambda y, n: y.reshape(t, n, hd).transpose(1, 0, 2)  # noqa: E731
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        x = rmsnorm(h, W[f"{p}.input_layernorm.weight"], eps)
        q = rmsnorm(heads(x @ W[f"{p}.self_attn.q_proj.weight"].T, nh),
                    W[f"{p}.self_attn.q_norm.weight"], eps)
        k = rmsnorm(heads(x @ W[f"{p}.self_attn.k_proj.weight"].T, nkv),
                    W[f"{p}.self_attn.k_norm.weight"], eps)
        v = heads(x @ W[f"{p}.self_attn.v_proj.weight"].T, nkv)
        mix = attend(rope(q, cfg), rope(k, cfg), v, hd ** -0.5, causal)
        h = h + mix @ W[f"{p}.self_attn.o_proj.weight"].T
        x = rmsnorm(h, W[f"{p}.post_attention_layernorm.weight"], eps)
        h = h + (silu_mlp(x, W, f"{p}.mlp") if layer in dense else moe(x, W, f"{p}.mlp", cfg))
    h = rmsnorm(h, W["model.norm.weight"], eps)
    return h @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T


def moe_weights(cfg):
    d, hd = cfg["hidden_size"], cfg["head_dim"]
    f, ne = cfg["moe_intermediate_size"], cfg["num_experts"]
    s = Seeded()
    s.embeddings(cfg)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        s.norm(f"{p}.input_layernorm.weight", d)
        s.norm(f"{p}.post_attention_layernorm.weight", d)
        s.attention(p, cfg, lambda heads: hd)
        s.mat(f"{p}.mlp.gate.weight", (ne, d))
        for e in range(ne):
            s.mlp(f"{p}.mlp.experts.{e}", f, d)
    return s.w


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    sets = {"cases": {"norm_topk_prob": True}, "cases_unnormalized": {"norm_topk_prob": False}}
    if fixture_gap("qwen3_moe_tiny", forward, sets) >= 1e-5:
        print("FAIL: the numpy forward does not match transformers")
        return 1
    ok = run(steerkit, source, work, "qwen3moe", CONFIG, moe_weights, forward,
             {"norm_topk_prob": False}, "with the chosen weights unnormalized")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
