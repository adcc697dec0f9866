#!/usr/bin/env python3
"""Check steerkit's GGUF export of Qwen3-MoE (`qwen3moe`), Mixtral (`llama` with experts) and
Qwen2-MoE (`qwen2moe`) against llama.cpp (via llama-cpp-python).

No Qwen3-MoE checkpoint is here, so the script makes one: a random model of hidden 64 (4
query and 2 key/value heads of 16 with Qwen3's per-head q/k norms, 3 blocks, each routing
every token to 2 of 8 experts of 32 channels, norms drawn around 1, an untied head) with
Qwen's real tokenizer (taken from a Qwen2.5 GGUF through a folder export). The numpy forward
below is Qwen3-MoE's; it is first checked against transformers' logits in
tests/fixtures/qwen3_moe_tiny (scripts/reference_qwen3_moe.py; that fixture's block 1 is a
plain MLP). The model is exported with `steerkit export --format gguf` (f16 matrices, each
block's experts stacked as `ffn_{gate,up,down}_exps`, the router as `ffn_gate_inp`), and
llama.cpp's logits (keys and values cached in f32) at every position of three token sequences
are compared with the numpy forward on the weights rounded to f16. Control: the same forward with the chosen weights left
unnormalized, which llama.cpp must not match. Then the same for a Mixtral model of the same
sizes (no q/k norms, experts of the MLP's 32 channels stored as `block_sparse_moe` `w1`,
`w3`, `w2`; exported as llama.cpp's `llama` with experts, q/k rows permuted); its numpy
forward is checked against transformers' logits in tests/fixtures/mixtral_tiny first (window
of 4 there; none in the exported model). Then Qwen2-MoE of the same sizes (Qwen2's q/k/v
biases, no q/k norms, the chosen weights left unnormalized as in the released models, and a
shared expert of 48 channels scaled per token by the sigmoid of its one-row gate, exported as
`ffn_{gate,up,down}_shexp` and the vector `ffn_gate_inp_shexp`; a tied head, which the export
writes as `output.weight` since llama.cpp's qwen2moe needs one); its forward is checked
against tests/fixtures/qwen2_moe_tiny (scripts/reference_qwen2_moe.py) first. Its control:
the forward without the shared expert.

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


MIXTRAL = dict(
    CONFIG, architectures=["MixtralForCausalLM"], model_type="mixtral", intermediate_size=32,
    num_local_experts=8, sliding_window=None)


QWEN2_MOE = dict(
    CONFIG, architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe",
    norm_topk_prob=False, shared_expert_intermediate_size=48, qkv_bias=True,
    tie_word_embeddings=True)


def mixtral(cfg):
    return cfg["model_type"] == "mixtral"


def qwen2(cfg):
    return cfg["model_type"] == "qwen2_moe"


def expert_names(cfg):
    """The block's MLP module and each expert's gate, up and down, as the files name them."""
    if mixtral(cfg):
        return "block_sparse_moe", ("w1", "w3", "w2")
    return "mlp", ("gate_proj", "up_proj", "down_proj")


def silu_mlp(x, W, p, names=("gate_proj", "up_proj", "down_proj")):
    gate = x @ W[f"{p}.{names[0]}.weight"].T
    up = x @ W[f"{p}.{names[1]}.weight"].T
    return (gate / (1.0 + np.exp(-gate)) * up) @ W[f"{p}.{names[2]}.weight"].T


def moe(x, W, p, cfg):
    """Each row's top experts by the router's softmax, weights renormalized when the config
    says, the weighted sum of their outputs; plus the shared expert under its sigmoid gate
    where the weights have one (unless `shared: False` in the config)."""
    logits = x @ W[f"{p}.gate.weight"].T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    k = cfg["num_experts_per_tok"]
    out = np.zeros_like(x)
    names = expert_names(cfg)[1]
    for row in range(x.shape[0]):
        top = np.argsort(-probs[row], kind="stable")[:k]
        w = probs[row, top]
        if cfg.get("norm_topk_prob", False):
            w = w / w.sum()
        for e, we in zip(top, w):
            out[row] += we * silu_mlp(x[row:row + 1], W, f"{p}.experts.{e}", names)[0]
    gate = W.get(f"{p}.shared_expert_gate.weight")
    if gate is not None and cfg.get("shared", True):
        out += silu_mlp(x, W, f"{p}.shared_expert") / (1.0 + np.exp(-(x @ gate.T)))
    return out


def forward(cfg, w, ids):
    """Qwen3-MoE's forward pass in float64, or Mixtral's (no q/k norms, a sliding window when
    the config has one), or Qwen2-MoE's (q/k/v biases, no q/k norms, a shared expert)."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["rms_norm_eps"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dense = set(cfg.get("mlp_only_layers", []))
    t = len(ids)
    h = W["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((t, t), -np.inf), k=1)
    if cfg.get("sliding_window"):
        causal = causal + np.tril(np.full((t, t), -np.inf), k=-cfg["sliding_window"])
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    cfg = dict(cfg, head_dim=hd)
    module = expert_names(cfg)[0]
    heads = lambda y, n: y.reshape(t, n, hd).transpose(1, 0, 2)  # noqa: E731
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        x = rmsnorm(h, W[f"{p}.input_layernorm.weight"], eps)
        proj = lambda n: x @ W[f"{p}.self_attn.{n}_proj.weight"].T + W.get(  # noqa: E731
            f"{p}.self_attn.{n}_proj.bias", 0.0)
        q, k, v = heads(proj("q"), nh), heads(proj("k"), nkv), heads(proj("v"), nkv)
        if not (mixtral(cfg) or qwen2(cfg)):
            q = rmsnorm(q, W[f"{p}.self_attn.q_norm.weight"], eps)
            k = rmsnorm(k, W[f"{p}.self_attn.k_norm.weight"], eps)
        mix = attend(rope(q, cfg), rope(k, cfg), v, hd ** -0.5, causal)
        h = h + mix @ W[f"{p}.self_attn.o_proj.weight"].T
        x = rmsnorm(h, W[f"{p}.post_attention_layernorm.weight"], eps)
        h = h + (silu_mlp(x, W, f"{p}.mlp") if layer in dense else moe(x, W, f"{p}.{module}", cfg))
    h = rmsnorm(h, W["model.norm.weight"], eps)
    return h @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T


def moe_weights(cfg):
    d, hd = cfg["hidden_size"], cfg["head_dim"]
    module, names = expert_names(cfg)
    if mixtral(cfg):
        f, ne, qk = cfg["intermediate_size"], cfg["num_local_experts"], None
    elif qwen2(cfg):
        f, ne, qk = cfg["moe_intermediate_size"], cfg["num_experts"], None
    else:
        f, ne, qk = cfg["moe_intermediate_size"], cfg["num_experts"], (lambda heads: hd)
    s = Seeded()
    s.embeddings(cfg)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        s.block(p, cfg, qk)
        s.mat(f"{p}.{module}.gate.weight", (ne, d))
        for e in range(ne):
            s.mlp(f"{p}.{module}.experts.{e}", f, d, names)
        if qwen2(cfg):
            for n, rows in [("q", cfg["num_attention_heads"]), ("k", cfg["num_key_value_heads"]),
                            ("v", cfg["num_key_value_heads"])]:
                s.mat(f"{p}.self_attn.{n}_proj.bias", (rows * hd,))
            s.mlp(f"{p}.mlp.shared_expert", cfg["shared_expert_intermediate_size"], d)
            s.mat(f"{p}.mlp.shared_expert_gate.weight", (1, d))
    if cfg["tie_word_embeddings"]:
        del s.w["lm_head.weight"]
    return s.w


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    sets = {"cases": {"norm_topk_prob": True}, "cases_unnormalized": {"norm_topk_prob": False}}
    gaps = [fixture_gap("qwen3_moe_tiny", forward, sets),
            fixture_gap("mixtral_tiny", forward, {"cases": {"norm_topk_prob": True}}),
            fixture_gap("qwen2_moe_tiny", forward, {"cases": {"norm_topk_prob": False},
                                                    "cases_normalized": {"norm_topk_prob": True}})]
    if max(gaps) >= 1e-5:
        print("FAIL: the numpy forward does not match transformers")
        return 1
    ok = True
    for label, cfg in [("qwen3moe", CONFIG), ("mixtral", dict(MIXTRAL, norm_topk_prob=True))]:
        # llama.cpp's default f16 cache of keys and values alone moves Mixtral's logits by
        # up to 4.4e-2 here; in f32 it is within 1.6e-2.
        ok &= run(steerkit, source, work, label, cfg, moe_weights, forward,
                  {"norm_topk_prob": False}, "with the chosen weights unnormalized",
                  f32_cache=True)
    ok &= run(steerkit, source, work, "qwen2moe", QWEN2_MOE, moe_weights, forward,
              {"shared": False}, "without the shared expert", f32_cache=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
