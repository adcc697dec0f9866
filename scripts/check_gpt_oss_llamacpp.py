#!/usr/bin/env python3
"""Check steerkit's GGUF export of gpt-oss (`gpt-oss`) against llama.cpp (via llama-cpp-python).

No gpt-oss checkpoint is here, so the script makes one: a random model of hidden 64 (4 query
and 2 key/value heads of 16 with biases and a sink logit each, 4 blocks alternating a window
of 4 positions and the whole context, each block routing
every token to 2 of 8 experts of 32 channels through a router with a bias, the experts' gate
and up drawn 3 times larger than the rest so that the clamp at 7 acts, an untied head; YaRN
as gpt-oss's, factor 32 over 4096 positions) with
Qwen's real tokenizer (taken from a Qwen2.5 GGUF through a folder export), stored as
transformers stores gpt-oss (experts stacked, gate and up interleaved). The numpy forward
below is gpt-oss's; it is first checked against transformers' logits in
tests/fixtures/gpt_oss_tiny (scripts/reference_gpt_oss.py). The model is exported with
`steerkit export --format gguf` (f16 matrices, the router in f32) and llama.cpp's logits
(keys and values cached in f32) at every position of three token sequences are compared with
the numpy forward on the weights as the file holds them. Controls: the forward without the
sinks, and without the clamp, which llama.cpp must not match.

llama.cpp rounds YaRN's ramp ends outwards for every model; gpt-oss's config says not to
(`truncate: false`). The check therefore runs with `truncate: true`, and then reports how far
llama.cpp is from the `truncate: false` forward on the same model (what llama.cpp's own
gpt-oss files do too).

How to run (from the repository root):
  /work/venvs/llamacpp/bin/python scripts/check_gpt_oss_llamacpp.py \\
      target/release/steerkit checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/sk-oss
Exit code 0 when llama.cpp agrees within 0.05 and neither control (no sinks, no clamp) does;
1 otherwise. About 30 s.

Dependencies: Python 3.9+, numpy, llama-cpp-python (tested with 0.3.36).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_qwen3_llamacpp import SEQS, compare, tokenizer_folder  # noqa: E402
from llamacpp_check import Seeded, fixture_gap  # noqa: E402
from reference_qwen3 import rmsnorm, rope, save_safetensors  # noqa: E402

YARN = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
        "original_max_position_embeddings": 4096, "truncate": True}

CONFIG = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 64,
    "intermediate_size": 32, "num_local_experts": 8, "num_experts_per_tok": 2,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 150000.0,
    "max_position_embeddings": 512, "tie_word_embeddings": False, "attention_bias": True,
    "sliding_window": 4, "swiglu_limit": 7.0, "swiglu_alpha": 1.702,
    "layer_types": ["sliding_attention", "full_attention"] * 2, "rope_scaling": YARN,
}


def attend(q, k, v, mask, sinks):
    """Grouped-query attention with a sink logit per query head: each head's softmax over its
    scores and its sink, the sink's share dropped. Returns [t, heads * hd]."""
    nh, t, hd = q.shape
    heads = []
    for j in range(nh):
        g = j // (nh // k.shape[0])
        s = q[j] @ k[g].T * hd ** -0.5 + mask
        s = np.concatenate([s, np.full((t, 1), sinks[j])], axis=1)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        heads.append(s[:, :-1] @ v[g])
    return np.stack(heads, axis=1).reshape(t, nh * hd)


def experts(x, W, p, cfg):
    """The router's top experts by logit (with its bias), weighted by the softmax of those
    logits; each expert's clamped SwiGLU with biases, from the stacked, interleaved form."""
    logits = x @ W[f"{p}.router.weight"].T + W[f"{p}.router.bias"]
    k, limit, alpha = cfg["num_experts_per_tok"], cfg["swiglu_limit"], cfg["swiglu_alpha"]
    gu, gub = W[f"{p}.experts.gate_up_proj"], W[f"{p}.experts.gate_up_proj_bias"]
    down, downb = W[f"{p}.experts.down_proj"], W[f"{p}.experts.down_proj_bias"]
    out = np.zeros_like(x)
    for row in range(x.shape[0]):
        top = np.argsort(-logits[row], kind="stable")[:k]
        w = np.exp(logits[row, top] - logits[row, top].max())
        w /= w.sum()
        for e, we in zip(top, w):
            h = x[row] @ gu[e] + gub[e]
            gate, up = np.minimum(h[::2], limit), np.clip(h[1::2], -limit, limit)
            glu = gate / (1.0 + np.exp(-alpha * gate))
            out[row] += we * (((up + 1.0) * glu) @ down[e] + downb[e])
    return out


def forward(cfg, w, ids, sinks=True):
    """gpt-oss's forward pass in float64 (without the sinks when `sinks` is false)."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["rms_norm_eps"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    t = len(ids)
    h = W["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((t, t), -np.inf), k=1)
    window = causal + np.tril(np.full((t, t), -np.inf), k=-cfg["sliding_window"])
    heads = lambda y, n: y.reshape(t, n, hd).transpose(1, 0, 2)  # noqa: E731
    proj = lambda x, p, n: x @ W[f"{p}.{n}.weight"].T + W[f"{p}.{n}.bias"]  # noqa: E731
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        a = f"{p}.self_attn"
        x = rmsnorm(h, W[f"{p}.input_layernorm.weight"], eps)
        q = rope(heads(proj(x, a, "q_proj"), nh), cfg)
        k = rope(heads(proj(x, a, "k_proj"), nkv), cfg)
        v = heads(proj(x, a, "v_proj"), nkv)
        mask = window if cfg["layer_types"][layer] == "sliding_attention" else causal
        s = W[f"{a}.sinks"] if sinks else np.full(nh, -np.inf)
        h = h + proj(attend(q, k, v, mask, s), a, "o_proj")
        x = rmsnorm(h, W[f"{p}.post_attention_layernorm.weight"], eps)
        h = h + experts(x, W, f"{p}.mlp", cfg)
    h = rmsnorm(h, W["model.norm.weight"], eps)
    return h @ W["lm_head.weight"].T


def weights(cfg):
    d, hd, f, ne = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"], cfg["num_local_experts"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    s = Seeded()
    s.embeddings(cfg)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        s.norm(f"{p}.input_layernorm.weight", d)
        s.norm(f"{p}.post_attention_layernorm.weight", d)
        s.attention(p, cfg, None)
        for n, rows in [("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd), ("o", d)]:
            s.mat(f"{p}.self_attn.{n}_proj.bias", (rows,))
        s.norm(f"{p}.self_attn.sinks", nh)
        s.mat(f"{p}.mlp.router.weight", (ne, d))
        s.mat(f"{p}.mlp.router.bias", (ne,))
        s.mat(f"{p}.mlp.experts.gate_up_proj", (ne, d, 2 * f))
        s.w[f"{p}.mlp.experts.gate_up_proj"] *= 3
        s.mat(f"{p}.mlp.experts.gate_up_proj_bias", (ne, 2 * f))
        s.mat(f"{p}.mlp.experts.down_proj", (ne, f, d))
        s.mat(f"{p}.mlp.experts.down_proj_bias", (ne, d))
    return s.w


def as_gguf_f16(w):
    """The weights as the f16 GGUF holds them: matrices and expert stacks rounded to f16 (the
    router kept f32), vectors and bias stacks in f32."""
    def rounded(k, v):
        matrix = v.ndim >= 2 and not k.endswith(("router.weight", "_bias"))
        return v.astype(np.float16).astype(np.float32) if matrix else v
    return {k: rounded(k, v) for k, v in w.items()}


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    fx = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                     "tests", "fixtures", "gpt_oss_tiny", "config.json")))
    gap = fixture_gap("gpt_oss_tiny", forward, {"cases": {"rope_scaling": fx["rope_parameters"]}})
    if gap >= 1e-5:
        print("FAIL: the numpy forward does not match transformers")
        return 1
    folder = os.path.join(work, "gpt-oss")
    cfg = dict(CONFIG, vocab_size=tokenizer_folder(steerkit, source, work, folder))
    w = weights(cfg)
    save_safetensors(w, os.path.join(folder, "model.safetensors"))
    w16 = as_gguf_f16(w)
    # Sinks at -inf take no share of the attention: the forward without them.
    no_sinks = {k: (np.full_like(v, -np.inf) if k.endswith("sinks") else v) for k, v in w16.items()}
    ok = compare(steerkit, folder, work, "gpt-oss", cfg, w16, no_sinks, cfg, forward=forward,
                 what="without the sinks", f32_cache=True)
    # gpt-oss's own YaRN setting: the GGUF is the same (it has no such key); llama.cpp rounds.
    # And the clamp: the forward without it must be far from llama.cpp too.
    from llama_cpp import Llama
    llm = Llama(model_path=os.path.join(work, "gpt-oss.gguf"), n_ctx=64, logits_all=True,
                verbose=False, seed=0, type_k=0, type_v=0)
    loose = dict(cfg, rope_scaling=dict(YARN, truncate=False))
    unclamped = dict(cfg, swiglu_limit=1e9)
    gaps = []
    for ids in SEQS:
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)], dtype=np.float64)
        gaps.append([float(np.abs(got - forward(c, w16, ids)).max()) for c in (loose, unclamped)])
    loose_gap, clamp_gap = (max(g[i] for g in gaps) for i in range(2))
    print(f"gpt-oss, truncate false (as gpt-oss's config.json says): llama.cpp vs that forward "
          f"max abs {loose_gap:.2e}; control: without the clamp at least "
          f"{min(g[1] for g in gaps):.2f}")
    ok &= min(g[1] for g in gaps) > 0.5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
