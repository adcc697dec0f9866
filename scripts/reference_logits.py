#!/usr/bin/env python3
"""Independent float64 reference forward pass for steerkit's GGUF models.

Usage (from the repository root):
    python scripts/reference_logits.py tests/fixtures/reference_logits.json

Dependencies: numpy and gguf (the gguf-py package from PyPI; developed with
numpy 2.x and gguf 0.19.0):
    python3 -m venv /work/venvs/ref && /work/venvs/ref/bin/pip install numpy gguf

Method
------
* Weights are read with `gguf.GGUFReader` and dequantized to f32 with
  `gguf.quants.dequantize(tensor.data, tensor.tensor_type)` (Q4_1, Q8_0, Q5_0,
  Q4_K, Q6_K, F32), then cast to float64. All arithmetic is float64.
* numpy shapes are the reverse of GGUF `ne`: a GGUF tensor with ne=[in, out] is
  a row-major [out, in] matrix, used as y = x @ W.T.
* Hugging Face-style decoder (LlamaForCausalLM / Qwen2ForCausalLM):
    h = embed[ids]
    for each block:
        x = rmsnorm(h) * attn_norm          (eps = {arch}.attention.layer_norm_rms_epsilon)
        q,k,v = x Wq^T (+bq), x Wk^T (+bk), x Wv^T (+bv)   (biases: qwen2 only)
        RoPE, NEOX / rotate_half style: pairs (i, i + hd/2),
              inv_freq_i = theta^(-2i/hd), theta = {arch}.rope.freq_base
        GQA: query head h uses KV head h // (n_head / n_head_kv)
        causal softmax(q k^T / sqrt(hd)) v, concat heads, @ Wo^T
        h += attn
        x = rmsnorm(h) * ffn_norm
        h += (silu(x Wg^T) * (x Wu^T)) Wd^T
    logits = (rmsnorm(h) * output_norm) @ LM^T, LM = output.weight if present
             else token_embd.weight (tied).
* llama.cpp's converter permutes the rows of *llama*-architecture attn_q /
  attn_k weights so that llama.cpp can use interleaved (GPT-J style) RoPE.
  For the llama model we un-permute them back to HF order
      W.reshape(n_head, hd//2, 2, in).transpose(0, 2, 1, 3).reshape(out, in)
  (n_head_kv for K) and then use rotate_half RoPE. qwen2 GGUFs are not
  permuted (llama.cpp uses NEOX RoPE for qwen2 directly). The script also
  checks that interleaved RoPE on the *permuted* weights gives the same
  logits (self-consistency check of the un-permutation).
* Inputs are fixed, hard-coded ChatML token id sequences (tokenized offline
  with the GGUF's own BPE merges; decoded text is stored next to the ids).

Output JSON: per model, per sequence: ids, decoded text, argmax id, 100
highest (id, logit) pairs, and the logit at every 499th vocab id starting at
0; plus "hidden_last_layer0": first 16 values of the residual stream after
block 0 at the last position of the first sequence.
"""
import json
import sys
import time

import numpy as np
import gguf
from gguf import quants

MODELS = {
    "smollm2-135m-instruct": "checkpoints/models/smollm2-135m-instruct.gguf",
    "qwen2.5-coder-0.5b-instruct": "checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf",
}

# ChatML prompts:
#  1) "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
#  2) "<|im_start|>user\nWrite a Python function that returns the square of a number.<|im_end|>\n<|im_start|>assistant\n"
#  3) system prompt + "Name three colors of the rainbow."
SEQUENCES = {
    "smollm2-135m-instruct": [
        [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198],
        [1, 4093, 198, 19161, 253, 5905, 1517, 338, 6765, 260, 5222, 282, 253, 1230, 30,
         2, 198, 1, 520, 9531, 198],
        [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018,
         411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 5820, 1296, 4683, 282, 260, 24594, 30,
         2, 198, 1, 520, 9531, 198],
    ],
    "qwen2.5-coder-0.5b-instruct": [
        [151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 151645, 198, 151644, 77091, 198],
        [151644, 872, 198, 7985, 264, 13027, 729, 429, 4675, 279, 9334, 315, 264, 1372, 13,
         151645, 198, 151644, 77091, 198],
        [151644, 8948, 198, 2610, 525, 1207, 16948, 11, 3465, 553, 54364, 14817, 13, 1446, 525,
         264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 675, 2326, 7987, 315, 279,
         47613, 13, 151645, 198, 151644, 77091, 198],
    ],
}

TOP_K = 100
SAMPLE_STRIDE = 499
HIDDEN_N = 16


# ---------------------------------------------------------------- tokens
def _bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_U2B = _bytes_to_unicode()


def decode(tokens, token_types, ids):
    out = b""
    for i in ids:
        t = tokens[i]
        if token_types[i] == 3 or not all(c in _U2B for c in t):  # control/special token
            out += t.encode("utf-8")
        else:
            out += bytes(_U2B[c] for c in t)
    return out.decode("utf-8", errors="replace")


# ---------------------------------------------------------------- model
def field(reader, key):
    return reader.fields[key].contents()


class Model:
    def __init__(self, path):
        self.r = gguf.GGUFReader(path)
        r = self.r
        self.arch = field(r, "general.architecture")
        a = self.arch
        self.n_layer = int(field(r, f"{a}.block_count"))
        self.d = int(field(r, f"{a}.embedding_length"))
        self.n_head = int(field(r, f"{a}.attention.head_count"))
        self.n_kv = int(field(r, f"{a}.attention.head_count_kv"))
        self.hd = self.d // self.n_head
        self.eps = float(field(r, f"{a}.attention.layer_norm_rms_epsilon"))
        self.theta = float(field(r, f"{a}.rope.freq_base"))
        f = r.fields["tokenizer.ggml.tokens"]
        self.tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        self.token_types = list(field(r, "tokenizer.ggml.token_type"))
        self.tensors = {t.name: t for t in r.tensors}
        self.permuted_qk = self.arch == "llama"
        self.W = {}
        for name, t in self.tensors.items():
            w = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))
            self.W[name] = w.reshape(shape)
        self.lm_head_name = "output.weight" if "output.weight" in self.W else "token_embd.weight"
        # HF-order (un-permuted) q/k weights for the rotate_half path.
        self.W_hf = {}
        for i in range(self.n_layer):
            for kind, nh in (("q", self.n_head), ("k", self.n_kv)):
                name = f"blk.{i}.attn_{kind}.weight"
                w = self.W[name]
                if self.permuted_qk:
                    out_dim, in_dim = w.shape
                    w = (w.reshape(nh, self.hd // 2, 2, in_dim)
                         .transpose(0, 2, 1, 3).reshape(out_dim, in_dim))
                self.W_hf[name] = w

    def rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, interleaved):
        # x: [T, n, hd]
        T = x.shape[0]
        hd = self.hd
        inv = self.theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # [hd/2]
        ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]      # [T, hd/2]
        cos = np.cos(ang)[:, None, :]
        sin = np.sin(ang)[:, None, :]
        if interleaved:  # GPT-J / llama.cpp "normal": pairs (2i, 2i+1)
            x0, x1 = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2] = x0 * cos - x1 * sin
            out[..., 1::2] = x0 * sin + x1 * cos
            return out
        h = hd // 2  # NEOX / HF rotate_half: pairs (i, i + hd/2)
        x0, x1 = x[..., :h], x[..., h:]
        return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)

    def forward(self, ids, interleaved=False, want_layer0=False, raw_qk=None):
        """interleaved=False: rotate_half RoPE on HF-order q/k weights (the reference).
        interleaved=True: GPT-J style RoPE on the raw GGUF-order q/k weights.
        raw_qk overrides which q/k weights are used (debug variants)."""
        W = self.W
        if raw_qk is None:
            raw_qk = interleaved
        Wqk = self.W if raw_qk else self.W_hf
        T = len(ids)
        h = W["token_embd.weight"][np.asarray(ids)]  # [T, d]
        layer0 = None
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        group = self.n_head // self.n_kv
        for i in range(self.n_layer):
            p = f"blk.{i}."
            x = self.rmsnorm(h, W[p + "attn_norm.weight"])
            q = x @ Wqk[p + "attn_q.weight"].T
            k = x @ Wqk[p + "attn_k.weight"].T
            v = x @ W[p + "attn_v.weight"].T
            for name, arr in (("attn_q.bias", "q"), ("attn_k.bias", "k"), ("attn_v.bias", "v")):
                if p + name in W:
                    if arr == "q":
                        q = q + W[p + name]
                    elif arr == "k":
                        k = k + W[p + name]
                    else:
                        v = v + W[p + name]
            q = self.rope(q.reshape(T, self.n_head, self.hd), interleaved)
            k = self.rope(k.reshape(T, self.n_kv, self.hd), interleaved)
            v = v.reshape(T, self.n_kv, self.hd)
            att = np.empty((T, self.n_head, self.hd))
            for hh in range(self.n_head):
                kv = hh // group
                s = (q[:, hh, :] @ k[:, kv, :].T) / np.sqrt(self.hd) + mask
                s = s - s.max(axis=-1, keepdims=True)
                pr = np.exp(s)
                pr /= pr.sum(axis=-1, keepdims=True)
                att[:, hh, :] = pr @ v[:, kv, :]
            h = h + att.reshape(T, self.d) @ W[p + "attn_output.weight"].T
            x = self.rmsnorm(h, W[p + "ffn_norm.weight"])
            g = x @ W[p + "ffn_gate.weight"].T
            u = x @ W[p + "ffn_up.weight"].T
            h = h + ((g / (1.0 + np.exp(-g))) * u) @ W[p + "ffn_down.weight"].T
            if i == 0 and want_layer0:
                layer0 = h[-1].copy()
        x = self.rmsnorm(h[-1:], W["output_norm.weight"])
        logits = (x @ W[self.lm_head_name].T)[0]
        return logits, layer0


def main():
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1])
        sys.exit(2)
    out_path = sys.argv[1]
    result = {
        "method": ("numpy float64 HF-style decoder forward on gguf-py dequantized GGUF weights "
                   "(RMSNorm, rotate_half/NEOX RoPE, GQA, causal softmax, SwiGLU); llama attn_q/attn_k "
                   "rows un-permuted from llama.cpp interleaved order; last-position logits"),
        "gguf_version": None,
        "gguf_py_version": getattr(gguf, "__version__", None),
        "numpy_version": np.__version__,
        "top_k": TOP_K,
        "sample_stride": SAMPLE_STRIDE,
        "models": {},
    }
    try:
        from importlib.metadata import version
        result["gguf_py_version"] = version("gguf")
    except Exception:
        pass
    for mname, path in MODELS.items():
        t0 = time.time()
        m = Model(path)
        t_load = time.time() - t0
        result["gguf_version"] = int(field(m.r, "GGUF.version"))
        print(f"{mname}: arch={m.arch} layers={m.n_layer} d={m.d} heads={m.n_head}/{m.n_kv} "
              f"hd={m.hd} eps={m.eps!r} theta={m.theta} lm_head={m.lm_head_name} "
              f"permuted_qk={m.permuted_qk} load+dequant={t_load:.1f}s", flush=True)
        entries = []
        for si, ids in enumerate(SEQUENCES[mname]):
            t1 = time.time()
            logits, layer0 = m.forward(ids, interleaved=False, want_layer0=(si == 0))
            dt = time.time() - t1
            if m.permuted_qk:
                # Self-consistency: interleaved RoPE on the GGUF-order (permuted) weights
                # must give the same logits as rotate_half on the un-permuted weights.
                alt, _ = m.forward(ids, interleaved=True)
                diff = float(np.max(np.abs(alt - logits)))
                assert diff < 1e-6, f"interleaved/neox mismatch {diff}"
                # Typical bug: rotate_half RoPE on the permuted weights.
                wrong, _ = m.forward(ids, interleaved=False, raw_qk=True)
            else:
                diff = 0.0
                # Typical bug: interleaved RoPE on the (unpermuted) qwen2 weights.
                wrong, _ = m.forward(ids, interleaved=True)
            wrong_am = int(np.argmax(wrong))
            wrong_diff = float(np.max(np.abs(wrong - logits)))
            order = np.argsort(-logits, kind="stable")
            am = int(order[0])
            text = decode(m.tokens, m.token_types, ids)
            e = {
                "ids": ids,
                "decoded": text,
                "argmax": am,
                "argmax_token": m.tokens[am],
                "top": [[int(j), round(float(logits[j]), 6)] for j in order[:TOP_K]],
                "sampled": [[int(j), round(float(logits[j]), 6)]
                            for j in range(0, len(logits), SAMPLE_STRIDE)],
                # Debug aid: what a wrong RoPE pairing convention produces.
                "debug_wrong_rope": {"argmax": wrong_am,
                                     "argmax_token": m.tokens[wrong_am],
                                     "max_abs_diff": round(wrong_diff, 6)},
            }
            if layer0 is not None:
                e["hidden_last_layer0"] = [round(float(x), 6) for x in layer0[:HIDDEN_N]]
                result.setdefault("_layer0", {})[mname] = e["hidden_last_layer0"]
            entries.append(e)
            print(f"  seq{si} len={len(ids)} forward={dt:.2f}s argmax={am} {m.tokens[am]!r} "
                  f"top5={[m.tokens[j] for j in order[:5]]} max|neox-interleaved|={diff:.2e}",
                  flush=True)
            print(f"    wrong-RoPE variant: argmax={wrong_am} {m.tokens[wrong_am]!r} "
                  f"max|diff|={wrong_diff:.3f}", flush=True)
            print(f"    {text!r}", flush=True)
        result["models"][mname] = entries
        del m
    layer0 = result.pop("_layer0")
    result["hidden_last_layer0"] = layer0
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
