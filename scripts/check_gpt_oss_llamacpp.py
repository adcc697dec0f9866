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
Then the same file with its experts in GGML's MXFP4 (gguf-py's quantizer, as llama.cpp's
converter writes gpt-oss), and in q8_0 for comparison, every token taking every expert:
llama.cpp must follow the MXFP4 values as closely as the q8_0 ones (its 8-bit activations for
quantized matrices make neither exact), MXFP4's rounding must move the logits much further
than that, and steerkit's reading of the MXFP4 file must equal the values gguf-py says the
blocks stand for. Last, steerkit's own `--gguf-type mxfp4` export of the f32 folder (experts
MXFP4, the other matrices q8_0): each expert stack's bytes must equal gguf-py's quantization
of the same f32 values (llama.cpp's quantizer), and llama.cpp's logits must follow the forward
on what steerkit reads back from the file as closely as for the q8_0 copy above.

Exit code 0 when llama.cpp agrees within 0.05, neither control (no sinks, no clamp) does, and
the MXFP4 part passes; 1 otherwise. About a minute.

Dependencies: Python 3.9+, numpy, llama-cpp-python (tested with 0.3.36).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_qwen3_llamacpp import SEQS, TOL, compare, tokenizer_folder  # noqa: E402
from llamacpp_check import Seeded, fixture_gap, read_safetensors  # noqa: E402
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
        s.block(p, cfg, None)
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


def quantized_copy(src, dst, kind, used):
    """`src` (a GGUF) copied to `dst` with its experts' stacks quantized to `kind` by gguf-py
    (MXFP4: as llama.cpp's converter stores gpt-oss's) and `used` experts a token; returns
    the stacks' values (what the blocks stand for) by GGUF name, in numpy's order."""
    import gguf
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch=arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        ty = field.types[0]
        sub = field.types[-1] if ty == gguf.GGUFValueType.ARRAY else None
        value = used if field.name == f"{arch}.expert_used_count" else field.contents()
        writer.add_key_value(field.name, value, ty, sub_type=sub)
    values = {}
    for t in reader.tensors:
        data, ty = t.data, t.tensor_type
        if "_exps.weight" in t.name:
            data, ty = gguf.quants.quantize(gguf.quants.dequantize(data, ty), kind), kind
            values[t.name] = gguf.quants.dequantize(data, kind)
        writer.add_tensor(t.name, data, raw_dtype=ty)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return values


def with_experts(w, values, cfg):
    """The weights `w` with the experts' stacks `values` (GGUF names and layout) in their
    place, as transformers stores them (gate and up interleaved)."""
    w, f = dict(w), cfg["intermediate_size"]
    for layer in range(cfg["num_hidden_layers"]):
        gate, up = (values[f"blk.{layer}.ffn_{n}_exps.weight"] for n in ("gate", "up"))
        gu = np.empty((gate.shape[0], 2 * f, gate.shape[2]), dtype=np.float32)
        gu[:, 0::2], gu[:, 1::2] = gate, up
        p = f"model.layers.{layer}.mlp.experts"
        w[f"{p}.gate_up_proj"] = gu.transpose(0, 2, 1)
        w[f"{p}.down_proj"] = values[f"blk.{layer}.ffn_down_exps.weight"].transpose(0, 2, 1)
    return w


def check_mxfp4(steerkit, work, cfg, w16):
    """The f16 GGUF with its experts in GGML's MXFP4 (as llama.cpp's converter writes
    gpt-oss), and, for comparison, in q8_0 (a layout not in question): llama.cpp's logits
    against the forward on the values the blocks stand for must be as close for MXFP4 as for
    q8_0 (llama.cpp rounds activations to 8 bits for quantized matrices, so neither is exact),
    while MXFP4's rounding itself moves the logits far more; and steerkit's reading of the
    MXFP4 file, exported as a folder, must equal those values. Every token takes every expert
    here: with a choice, that 8-bit rounding flips near-ties of the router. Whether it
    passes, and llama.cpp's error on the q8_0 copy."""
    import subprocess
    import gguf
    from llama_cpp import Llama
    cfg = dict(cfg, num_experts_per_tok=cfg["num_local_experts"])
    src = os.path.join(work, "gpt-oss.gguf")
    err, w = {}, {}
    for kind in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.MXFP4):
        dst = os.path.join(work, f"gpt-oss-{kind.name.lower()}.gguf")
        w[kind.name] = with_experts(w16, quantized_copy(src, dst, kind, cfg["num_experts_per_tok"]), cfg)
        llm = Llama(model_path=dst, n_ctx=64, logits_all=True, verbose=False, seed=0,
                    type_k=0, type_v=0)
        err[kind.name] = 0.0
        for ids in SEQS:
            llm.reset()
            llm.eval(ids)
            got = np.array(llm.scores[: len(ids)], dtype=np.float64)
            err[kind.name] = max(err[kind.name], float(np.abs(got - forward(cfg, w[kind.name], ids)).max()))
    moved = max(float(np.abs(forward(cfg, w["MXFP4"], ids) - forward(cfg, w16, ids)).max())
                for ids in SEQS)
    folder = os.path.join(work, "from-mxfp4")
    subprocess.run([steerkit, "export", "-m", os.path.join(work, "gpt-oss-mxfp4.gguf"), "--out",
                    folder], check=True, stdout=subprocess.DEVNULL)
    read = read_safetensors(os.path.join(folder, "model.safetensors"))
    gap = max(float(np.abs(read[k] - v).max()) for k, v in w["MXFP4"].items()
              if ".experts." in k and "_bias" not in k)
    # A misread layout would put llama.cpp about as far from the forward as MXFP4's rounding
    # moves it.
    ok = err["MXFP4"] <= 2 * err["Q8_0"] and moved > 4 * err["MXFP4"] and gap == 0.0
    print(f"{'PASS' if ok else 'FAIL'}: gpt-oss GGUF with MXFP4 experts: llama.cpp vs the forward "
          f"on the blocks' values max abs {err['MXFP4']:.2e} (q8_0 experts: {err['Q8_0']:.2e}; "
          f"MXFP4's rounding moves the forward by {moved:.2f}); steerkit's reading of the "
          f"file vs those values max abs {gap:.1e}")
    return ok, err["Q8_0"]


def gguf_stacks(w, cfg):
    """The f32 expert stacks of `w` (transformers' layout) by GGUF name, in numpy's order:
    gate and up `[experts, channels, hidden]`, down `[experts, hidden, channels]`."""
    out = {}
    for layer in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{layer}.mlp.experts", f"blk.{layer}"
        gu = w[f"{p}.gate_up_proj"]
        out[f"{b}.ffn_gate_exps.weight"] = np.ascontiguousarray(gu[:, :, 0::2].transpose(0, 2, 1))
        out[f"{b}.ffn_up_exps.weight"] = np.ascontiguousarray(gu[:, :, 1::2].transpose(0, 2, 1))
        out[f"{b}.ffn_down_exps.weight"] = np.ascontiguousarray(
            w[f"{p}.down_proj"].transpose(0, 2, 1))
    return out


def check_mxfp4_export(steerkit, work, cfg, w, q8_err):
    """steerkit's `--gguf-type mxfp4` export of the f32 folder, every token taking every
    expert: the stacks' bytes against gguf-py's quantizer, and llama.cpp against the forward
    on steerkit's reading of the file, which must be within twice `q8_err` (llama.cpp's error
    on the q8_0 copy of check_mxfp4). True when it passes."""
    import shutil
    import subprocess
    import gguf
    from llama_cpp import Llama
    every = dict(cfg, num_experts_per_tok=cfg["num_local_experts"])
    folder = os.path.join(work, "gpt-oss-every")
    shutil.copytree(os.path.join(work, "gpt-oss"), folder)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(every, fh)
    # Blocks whose largest magnitude sits where the scale is decided: powers of two, one ulp
    # under them (where log2f rounds up), tiny ones; block h of expert 0's first down stack
    # is its column h.
    w = dict(w)
    down = w["model.layers.0.mlp.experts.down_proj"].copy()
    edges = [np.float32(2.0) ** k for k in (-5, -1, 0, 2, 3)]
    edges += [np.nextafter(e, np.float32(0)) for e in edges] + [np.float32(2.0) ** -120]
    for h, amax in enumerate(edges):
        col = down[0, :, h]
        down[0, :, h] = (col / np.abs(col).max() * amax).astype(np.float32)
        down[0, int(np.abs(col).argmax()), h] = amax * np.sign(col[np.abs(col).argmax()])
    w["model.layers.0.mlp.experts.down_proj"] = down
    save_safetensors(w, os.path.join(folder, "model.safetensors"))
    out = os.path.join(work, "steerkit-mxfp4.gguf")
    quiet = dict(check=True, stdout=subprocess.DEVNULL)
    subprocess.run([steerkit, "export", "-m", folder, "--format", "gguf", "--gguf-type", "mxfp4",
                    "--out", out], **quiet)
    stacks = gguf_stacks(w, cfg)
    mx = [t for t in gguf.GGUFReader(out).tensors
          if t.tensor_type == gguf.GGMLQuantizationType.MXFP4]
    same = sum(np.array_equal(np.asarray(t.data).reshape(-1), gguf.quants.quantize(
        stacks[t.name], gguf.GGMLQuantizationType.MXFP4).reshape(-1)) for t in mx)
    back = os.path.join(work, "from-steerkit-mxfp4")
    subprocess.run([steerkit, "export", "-m", out, "--out", back], **quiet)
    read = read_safetensors(os.path.join(back, "model.safetensors"))
    llm = Llama(model_path=out, n_ctx=64, logits_all=True, verbose=False, seed=0,
                type_k=0, type_v=0)
    err = 0.0
    for ids in SEQS:
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)], dtype=np.float64)
        err = max(err, float(np.abs(got - forward(every, read, ids)).max()))
    ok = len(mx) == 3 * cfg["num_hidden_layers"] and same == len(mx) and err <= 2 * q8_err
    print(f"{'PASS' if ok else 'FAIL'}: steerkit's MXFP4 export: {same} of {len(mx)} expert "
          f"stacks byte for byte gguf-py's quantization; llama.cpp vs the forward on steerkit's "
          f"reading of the file max abs {err:.2e} (q8_0 experts above: {q8_err:.2e})")
    return ok


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
    passed, q8_err = check_mxfp4(steerkit, work, cfg, w16)
    ok &= passed
    ok &= check_mxfp4_export(steerkit, work, cfg, w, q8_err)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
