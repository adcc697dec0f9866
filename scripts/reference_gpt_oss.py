#!/usr/bin/env python3
"""Writes tests/fixtures/gpt_oss_tiny and tests/fixtures/gpt_oss_mxfp4_tiny: tiny random
gpt-oss models and their reference logits.

The reference is transformers' own GptOssForCausalLM (eager attention and experts) run in
float64: 3 blocks (sliding window of 4, whole context, sliding window), 4 query heads over 2
key/value heads of 8 with a sink logit per head, biases on q, k, v and o, YaRN (factor 4 over
an original context of 16, `truncate: false`), and in place of the MLP a router with a bias
that sends every token to 2 of 4 experts of 64 channels, whose gate and up projections are
stored interleaved in one `gate_up_proj` with biases, and whose clamped SwiGLU is given a
limit of 1 (the real models' 7 is never reached by random weights of this size) so that the
clamps act. Every weight is drawn at random.

gpt_oss_tiny stores the experts as transformers saves them (`gate_up_proj` as
`[experts, hidden, 2 * channels]`, `down_proj` as `[experts, channels, hidden]`). The mxfp4 copy
stores them as OpenAI's checkpoints do: MXFP4 blocks (`*_blocks`, two 4-bit e2m1 values a
byte, low nibble first, `[experts, rows, groups, 16]`) and one power-of-two scale per group of
32 (`*_scales`, e8m0: 2^(s - 127)), the other tensors as they were; its logits are those of
the model with the quantized experts, and the script checks that transformers, loading the
quantized folder itself (dequantizing on the CPU), computes the same.

How to run (pip install torch transformers safetensors):
    python3 scripts/reference_gpt_oss.py
"""
import json
import os
import shutil

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file

from transformers_fixture import logits_of, save_random, write_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "gpt_oss_tiny")
OUT_MXFP4 = os.path.join(ROOT, "tests", "fixtures", "gpt_oss_mxfp4_tiny")

# e2m1 values by their 4-bit code.
FP4 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def quantize(w):
    """MXFP4 blocks and scales of `w: [experts, rows, cols]` (cols a multiple of 32), and the
    values they stand for (float32, same shape)."""
    e, r, c = w.shape
    g = w.reshape(e, r, c // 32, 32).astype(np.float64)
    top = np.abs(g).max(axis=-1, keepdims=True)
    exp = np.ceil(np.log2(np.maximum(top, 1e-30) / 6.0)).astype(np.int64)
    scaled = g / np.exp2(exp)
    codes = np.abs(scaled[..., None] - FP4).argmin(axis=-1).astype(np.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    values = (FP4[codes] * np.exp2(exp)).reshape(e, r, c).astype(np.float32)
    return blocks, (exp[..., 0] + 127).astype(np.uint8), values


def make_mxfp4(cls):
    """The quantized copy of OUT in OUT_MXFP4, and the float folder of its values (for the
    reference logits), returned as the path of that temporary folder."""
    tensors = load_file(os.path.join(OUT, "model.safetensors"))
    quantized, plain = {}, dict(tensors)
    for name in list(tensors):
        if not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            continue
        # Stored [experts, in, out]; MXFP4 groups run along `in` of the [experts, out, in] form.
        w = tensors[name].transpose(1, 2).contiguous().numpy()
        blocks, scales, values = quantize(w)
        quantized[name + "_blocks"] = torch.from_numpy(blocks)
        quantized[name + "_scales"] = torch.from_numpy(scales)
        plain[name] = torch.from_numpy(values).transpose(1, 2).contiguous()
    for name, t in tensors.items():
        if name not in plain or not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            quantized[name] = t
    os.makedirs(OUT_MXFP4, exist_ok=True)
    save_file(quantized, os.path.join(OUT_MXFP4, "model.safetensors"), metadata={"format": "pt"})
    os.chmod(os.path.join(OUT_MXFP4, "model.safetensors"), 0o644)
    with open(os.path.join(OUT, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                   "model.embed_tokens", "lm_head"],
    }
    with open(os.path.join(OUT_MXFP4, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    values = OUT_MXFP4 + ".values"
    shutil.rmtree(values, ignore_errors=True)
    os.makedirs(values)
    shutil.copy(os.path.join(OUT, "config.json"), values)
    save_file(plain, os.path.join(values, "model.safetensors"), metadata={"format": "pt"})
    return values


def main():
    torch.manual_seed(0)
    cfg = transformers.GptOssConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=4, rms_norm_eps=1e-5,
        max_position_embeddings=256, swiglu_limit=1.0, tie_word_embeddings=False,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0,
                         "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": 16},
        pad_token_id=None, eos_token_id=1)
    cls = transformers.GptOssForCausalLM
    save_random(cls(cfg), OUT)
    write_logits(OUT, "scripts/reference_gpt_oss.py", cases=logits_of(cls, OUT))

    values = make_mxfp4(cls)
    cases = logits_of(cls, values)
    shutil.rmtree(values)
    # transformers' own reading of the quantized folder (dequantized on the CPU).
    loaded = logits_of(cls, OUT_MXFP4,
                       quantization_config=transformers.Mxfp4Config(dequantize=True))
    gap = max(abs(a - b) for x, y in zip(cases, loaded)
              for ra, rb in zip(x["logits"], y["logits"]) for a, b in zip(ra, rb))
    print(f"transformers on the mxfp4 folder vs the quantized values: max |diff| {gap:.2e}")
    assert gap < 1e-5, gap
    write_logits(OUT_MXFP4, "scripts/reference_gpt_oss.py", cases=cases)


if __name__ == "__main__":
    main()
