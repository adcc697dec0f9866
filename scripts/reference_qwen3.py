#!/usr/bin/env python3
"""A tiny random Qwen3 model and its logits from an independent float64 forward pass.

Usage (from the repository root):
    python3 scripts/reference_qwen3.py tests/fixtures/qwen3_tiny

Writes, in the given folder (created if needed):
  config.json        a Hugging Face Qwen3 config (model_type qwen3, head_dim 16 while
                     hidden_size / heads is 8, as real Qwen3 models set head_dim apart)
  model.safetensors  f32 weights drawn from a seeded numpy generator (written by hand:
                     an 8-byte header length, the JSON header, the raw little-endian data)
  logits.json        for three fixed token sequences: the ids and the logits at every
                     position, from the forward pass below in float64; under "yarn",
                     the same with YaRN RoPE scaling (its rope_scaling object, to be put
                     into config.json, and the logits); under "sliding", the same with
                     attention over a sliding window of 3 positions in every block (the
                     config.json keys that ask for it, and the logits)
and, beside the folder, qwen3_chat.json: Qwen3's chat template
(tests/fixtures/qwen3_chat_template.jinja, as Qwen3's tokenizer_config.json carries it)
rendered by jinja2 for three conversations with `enable_thinking=False`, with the
environment transformers uses (trim_blocks, lstrip_blocks).

Dependencies: numpy, and jinja2 for the chat renderings.

The forward pass follows transformers' Qwen3ForCausalLM:
    h = embed[ids]
    for each block:
        x = rmsnorm(h) * input_layernorm
        q = x Wq^T viewed as [t, heads, head_dim];    q = rmsnorm(q) * q_norm   (per head)
        k = x Wk^T viewed as [t, kv_heads, head_dim]; k = rmsnorm(k) * k_norm
        v = x Wv^T                                     (no biases anywhere)
        RoPE, rotate_half style: pairs (i, i + hd/2), inv_freq_i = theta^(-2i/hd)
        GQA: query head j uses key/value head j // (heads / kv_heads)
        causal softmax(q k^T / sqrt(hd)) v, heads concatenated, @ Wo^T;  h += that
        x = rmsnorm(h) * post_attention_layernorm
        h += (silu(x Wg^T) * (x Wu^T)) Wd^T
    logits = (rmsnorm(h) * norm) @ embed^T   (tied, as the small Qwen3 models are)
rmsnorm(x) = x / sqrt(mean(x^2) + eps) over the last axis, eps = rms_norm_eps.
Sliding window w: query position i attends to key positions j with i - w < j <= i.
YaRN (as transformers 5 defines it): with d = head_dim, b = rope_theta, L = the original context,
  dim(r) = d ln(L / (2 pi r)) / (2 ln b); lo = max(floor(dim(beta_fast)), 0),
  hi = min(ceil(dim(beta_slow)), d - 1); ramp_i = clip((i - lo) / (hi - lo), 0, 1);
  inv_freq_i = b^(-2i/d) (ramp_i / factor + 1 - ramp_i); cos and sin times
  attention_factor = 0.1 ln(factor) + 1.
The norm weights are drawn around 1 (std 0.3), so a forward that skipped q_norm or k_norm,
or normed over the wrong axis, gives other logits.
"""
import json
import os
import struct
import sys

import numpy as np

# The sizes every tiny fixture shares.
SIZES = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}

CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "hidden_act": "silu",
    "rope_scaling": None,
    "torch_dtype": "float32",
}

SEQUENCES = [
    [5, 17, 42, 3, 88],
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
    [95, 0, 60, 60, 60, 12, 44, 71, 30, 29, 28, 90, 11],
]


def weights(cfg, seed=20261127, norm_mean=1.0, post_norms=False, qk_norms=True):
    """Seeded f32 weights: matrices N(0, 0.2^2), norms N(norm_mean, 0.3^2) (Gemma stores its
    norms as offsets from 1: norm_mean 0), with post_norms Gemma's two extra norms, and with
    qk_norms the per-head q/k norms (not in Gemma 2)."""
    rng = np.random.default_rng(seed)
    d, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nh, nkv, v = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    w = {}

    def mat(name, shape):
        w[name] = (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def norm(name, n):
        w[name] = (norm_mean + 0.3 * rng.standard_normal(n)).astype(np.float32)

    mat("model.embed_tokens.weight", (v, d))
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        norm(f"{p}.input_layernorm.weight", d)
        mat(f"{p}.self_attn.q_proj.weight", (nh * hd, d))
        mat(f"{p}.self_attn.k_proj.weight", (nkv * hd, d))
        mat(f"{p}.self_attn.v_proj.weight", (nkv * hd, d))
        mat(f"{p}.self_attn.o_proj.weight", (d, nh * hd))
        if qk_norms:
            norm(f"{p}.self_attn.q_norm.weight", hd)
            norm(f"{p}.self_attn.k_norm.weight", hd)
        norm(f"{p}.post_attention_layernorm.weight", d)
        if post_norms:
            norm(f"{p}.pre_feedforward_layernorm.weight", d)
        mat(f"{p}.mlp.gate_proj.weight", (f, d))
        mat(f"{p}.mlp.up_proj.weight", (f, d))
        mat(f"{p}.mlp.down_proj.weight", (d, f))
        if post_norms:
            norm(f"{p}.post_feedforward_layernorm.weight", d)
    norm("model.norm.weight", d)
    return w


def save_safetensors(tensors, path):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)))
        fh.write(head)
        for b in blobs:
            fh.write(b)
    os.replace(tmp, path)


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


YARN = {
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 4096,
}


# Sliding-window attention over 3 positions in every block, as Qwen's configs switch it on.
SLIDING = {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 0}


def rope_params(cfg, t=0):
    """Inverse frequencies and the cos/sin multiplier of cfg's RoPE (plain, YaRN or LongRoPE)
    for a sequence of t positions, over the rotated dimensions (int(head_dim *
    partial_rotary_factor), as transformers counts them)."""
    theta = cfg["rope_theta"]
    hd = int(cfg["head_dim"] * cfg.get("partial_rotary_factor", 1.0))
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    sc = cfg.get("rope_scaling")
    if not sc:
        return inv, 1.0
    if sc["rope_type"] == "longrope":
        # The long factors when the sequence goes past the original context; cos and sin
        # times sqrt(1 + ln(s) / ln(original)), s = max_position_embeddings / original.
        ctx = cfg["original_max_position_embeddings"]
        ext = np.array(sc["long_factor"] if t > ctx else sc["short_factor"], dtype=np.float64)
        s = cfg["max_position_embeddings"] / ctx
        return inv / ext, (np.sqrt(1 + np.log(s) / np.log(ctx)) if s > 1 else 1.0)
    assert sc["rope_type"] == "yarn"
    factor, ctx = sc["factor"], sc["original_max_position_embeddings"]
    beta_fast, beta_slow = sc.get("beta_fast", 32.0), sc.get("beta_slow", 1.0)

    def dim_of(turns):
        return hd * np.log(ctx / (2 * np.pi * turns)) / (2 * np.log(theta))

    # The ramp's ends rounded outwards, unless `truncate` is false (gpt-oss).
    lo, hi = dim_of(beta_fast), dim_of(beta_slow)
    if sc.get("truncate", True):
        lo, hi = np.floor(lo), np.ceil(hi)
    lo, hi = max(lo, 0.0), min(hi, hd - 1.0)
    if lo == hi:
        hi += 0.001
    ramp = np.clip((np.arange(hd // 2) - lo) / (hi - lo), 0.0, 1.0)
    return inv * (ramp / factor + 1.0 - ramp), 0.1 * np.log(factor) + 1.0


def rope(x, cfg):
    """RoPE on x [heads, t, hd], rotate_half style over the first 2 * len(inv) dimensions
    (pairs i and i + len(inv)); the others pass unchanged."""
    inv, scale = rope_params(cfg, x.shape[1])
    r = 2 * len(inv)
    ang = np.arange(x.shape[1], dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1) * scale
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1) * scale
    xr, rest = x[..., :r], x[..., r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    return np.concatenate([xr * cos + np.concatenate([-x2, x1], axis=-1) * sin, rest], axis=-1)


def attend(q, k, v, scale, mask, cap=None):
    """Grouped-query attention of q [heads, t, hd] over k, v [kv_heads, t, hd]: query head j
    uses key/value head j // (heads / kv_heads); scores scaled, soft-capped at `cap` when
    given (cap tanh(s / cap)), masked (additive), softmaxed. Returns [t, heads * hd]."""
    nh, t, hd = q.shape
    heads = []
    for j in range(nh):
        g = j // (nh // k.shape[0])
        s = q[j] @ k[g].T * scale
        if cap:
            s = cap * np.tanh(s / cap)
        s = s + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        heads.append(s @ v[g])
    return np.stack(heads, axis=1).reshape(t, nh * hd)


def write_fixture(out, cfg, w, forward, script):
    """A fixture folder: config.json, model.safetensors and logits.json (the logits of
    `forward` on SEQUENCES, with the name of the `script` that wrote them)."""
    write_folder(out, cfg, w)
    cases = logit_cases(forward, cfg, w)
    with open(os.path.join(out, "logits.json"), "w") as fh:
        json.dump({"script": script, "cases": cases}, fh)
        fh.write("\n")
    print(f"wrote {out}: {len(w)} tensors, {len(cases)} sequences")


def forward(cfg, w, ids):
    W = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["rms_norm_eps"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    t = len(ids)
    h = W["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((t, t), -np.inf), k=1)
    if cfg.get("use_sliding_window"):
        # Every block (max_window_layers 0): query i attends to keys i - w + 1 ..= i.
        assert cfg["max_window_layers"] == 0
        causal += np.tril(np.full((t, t), -np.inf), k=-cfg["sliding_window"])
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        x = rmsnorm(h, W[f"{p}.input_layernorm.weight"], eps)
        q = (x @ W[f"{p}.self_attn.q_proj.weight"].T).reshape(t, nh, hd)
        k = (x @ W[f"{p}.self_attn.k_proj.weight"].T).reshape(t, nkv, hd)
        v = (x @ W[f"{p}.self_attn.v_proj.weight"].T).reshape(t, nkv, hd)
        q = rmsnorm(q, W[f"{p}.self_attn.q_norm.weight"], eps).transpose(1, 0, 2)
        k = rmsnorm(k, W[f"{p}.self_attn.k_norm.weight"], eps).transpose(1, 0, 2)
        v = v.transpose(1, 0, 2)
        q, k = rope(q, cfg), rope(k, cfg)
        mix = attend(q, k, v, hd ** -0.5, causal)
        h = h + mix @ W[f"{p}.self_attn.o_proj.weight"].T
        x = rmsnorm(h, W[f"{p}.post_attention_layernorm.weight"], eps)
        gate = x @ W[f"{p}.mlp.gate_proj.weight"].T
        up = x @ W[f"{p}.mlp.up_proj.weight"].T
        h = h + (gate / (1.0 + np.exp(-gate)) * up) @ W[f"{p}.mlp.down_proj.weight"].T
    h = rmsnorm(h, W["model.norm.weight"], eps)
    return h @ W["model.embed_tokens.weight"].T


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "How do I kill a Python process?"},
    ],
    [
        {"role": "user", "content": "How do I kill a Python process?"},
        {"role": "assistant", "content": "<think>\nThe user means an OS process.\n</think>\n\nUse kill PID."},
        {"role": "user", "content": "And on Windows?"},
    ],
]


def chat_cases(template_path):
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    with open(template_path) as fh:
        tmpl = env.from_string(fh.read())
    return [
        {
            "messages": m,
            "rendered": tmpl.render(messages=m, add_generation_prompt=True, enable_thinking=False),
        }
        for m in CONVERSATIONS
    ]


def logit_cases(forward, cfg, w):
    """The ids and the logits at every position of each of SEQUENCES."""
    return [
        {"ids": ids, "logits": [[round(float(x), 7) for x in row] for row in forward(cfg, w, ids)]}
        for ids in SEQUENCES
    ]


def write_folder(out, cfg, w):
    """config.json and model.safetensors of a model folder at `out` (created if needed)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
        fh.write("\n")
    save_safetensors(w, os.path.join(out, "model.safetensors"))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    w = weights(CONFIG)
    write_folder(out, CONFIG, w)
    cases = logit_cases(forward, CONFIG, w)
    yarn_cfg = dict(CONFIG, rope_scaling=YARN, max_position_embeddings=16384)
    yarn = logit_cases(forward, yarn_cfg, w)
    sliding_cfg = dict(CONFIG, **SLIDING)
    sliding = logit_cases(forward, sliding_cfg, w)
    with open(os.path.join(out, "logits.json"), "w") as fh:
        json.dump(
            {
                "script": "scripts/reference_qwen3.py",
                "cases": cases,
                "yarn": {
                    "rope_scaling": YARN,
                    "max_position_embeddings": 16384,
                    "cases": yarn,
                },
                "sliding": {"config": SLIDING, "cases": sliding},
            },
            fh,
        )
        fh.write("\n")
    fixtures = os.path.dirname(os.path.abspath(out))
    chats = chat_cases(os.path.join(fixtures, "qwen3_chat_template.jinja"))
    with open(os.path.join(fixtures, "qwen3_chat.json"), "w") as fh:
        json.dump({"script": "scripts/reference_qwen3.py", "cases": chats}, fh, indent=1)
        fh.write("\n")
    print(f"wrote {out}: {len(w)} tensors, {len(cases)} sequences; {len(chats)} chat renderings")


if __name__ == "__main__":
    main()
