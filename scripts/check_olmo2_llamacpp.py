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
import json
import os
import shutil
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_qwen3_llamacpp import as_f16_file, compare, tokenizer_folder  # noqa: E402
from reference_qwen3 import attend, rmsnorm, rope, save_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def olmo2_weights(cfg, seed=20261127):
    rng = np.random.default_rng(seed)
    d, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nh, nkv, v = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    w = {}
    mat = lambda n, s: w.__setitem__(n, (rng.standard_normal(s) * 0.2).astype(np.float32))  # noqa: E731
    norm = lambda n, s: w.__setitem__(n, (1 + 0.3 * rng.standard_normal(s)).astype(np.float32))  # noqa: E731
    mat("model.embed_tokens.weight", (v, d))
    mat("lm_head.weight", (v, d))
    norm("model.norm.weight", d)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        mat(f"{p}.self_attn.q_proj.weight", (nh * hd, d))
        mat(f"{p}.self_attn.k_proj.weight", (nkv * hd, d))
        mat(f"{p}.self_attn.v_proj.weight", (nkv * hd, d))
        mat(f"{p}.self_attn.o_proj.weight", (d, nh * hd))
        norm(f"{p}.self_attn.q_norm.weight", nh * hd)
        norm(f"{p}.self_attn.k_norm.weight", nkv * hd)
        norm(f"{p}.post_attention_layernorm.weight", d)
        norm(f"{p}.post_feedforward_layernorm.weight", d)
        mat(f"{p}.mlp.gate_proj.weight", (f, d))
        mat(f"{p}.mlp.up_proj.weight", (f, d))
        mat(f"{p}.mlp.down_proj.weight", (d, f))
    return w


def read_safetensors(path):
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(info["shape"])
    return out


def check_forward_against_transformers():
    """The numpy forward on tests/fixtures/olmo2_tiny equals transformers' logits there."""
    fx = os.path.join(ROOT, "tests", "fixtures", "olmo2_tiny")
    with open(os.path.join(fx, "config.json")) as fh:
        cfg = json.load(fh)
    cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    w = read_safetensors(os.path.join(fx, "model.safetensors"))
    with open(os.path.join(fx, "logits.json")) as fh:
        cases = json.load(fh)["cases"]
    worst = max(float(np.abs(forward(cfg, w, c["ids"]) - np.array(c["logits"])).max())
                for c in cases)
    print(f"numpy forward vs transformers (tests/fixtures/olmo2_tiny): max abs {worst:.2e}")
    return worst < 1e-5


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    if not check_forward_against_transformers():
        print("FAIL: the numpy forward does not match transformers")
        return 1
    tokens = os.path.join(work, "tokens")
    vocab = tokenizer_folder(steerkit, source, work, tokens)
    cfg = dict(CONFIG, vocab_size=vocab)
    w = olmo2_weights(cfg)
    folder = os.path.join(work, "olmo2")
    os.makedirs(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokens, f), folder)
    save_safetensors(w, os.path.join(folder, "model.safetensors"))
    w16 = as_f16_file(w)
    ok = compare(steerkit, folder, work, "olmo2", cfg, w16, w16, dict(cfg, qk_norm=False),
                 forward=forward, what="without the q/k norms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
