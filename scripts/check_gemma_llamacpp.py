#!/usr/bin/env python3
"""Check steerkit's Gemma 3 and Gemma 2 GGUF exports against llama.cpp (via llama-cpp-python).

No Gemma model is available here, so the script makes one: a small random Gemma 3 text model
(6 blocks, hidden 64, 4 query and 2 key/value heads of 32) of the shape llama.cpp computes:
blocks 0-4 on a sliding window (3 positions here) with RoPE base 10,000, block 5 on the whole
context with base 1,000,000 and linear scaling (factor 2), attention scaled by head_dim. It
uses Qwen's real tokenizer (taken from a Qwen2.5 GGUF through a folder export).

  1. The folder gets `reference_gemma`'s config and weights (norms drawn around 0, as Gemma
     stores them: offsets from 1).
  2. `steerkit export -m WORK/gemma3 --format gguf --out WORK/gemma3.gguf` (f16 matrices; the
     norms written as llama.cpp's converter writes them, 1 + w).
  3. llama.cpp loads that file and computes the logits at every position of three token
     sequences (up to 15 tokens: past the window). They are compared with
     `reference_gemma.forward` (float64, transformers' Gemma 3 semantics) on the same weights
     rounded to f16 as the file holds them. That reference is what steerkit's own test
     (`gemma3_tiny_logits_match_reference`) matches to 1e-4, so agreement here means llama.cpp,
     steerkit's GGUF and steerkit's runtime agree, and that the reference, written from
     transformers' definition, agrees with llama.cpp's independent implementation.
  4. Control: the reference without the sliding window (every block on the whole context with
     the global RoPE) must be far from llama.cpp's logits, so the check can tell.
  5. Gemma 2, the same way: 4 blocks (0 and 2 on the window, 1 and 3 on the whole context, one
     RoPE), attention scores soft-capped at 2 and the final logits at 3 (small caps, so that
     they bind in so small a model); the control is the reference without soft-capping.

How to run (from the repository root):
  /work/venvs/llamacpp/bin/python scripts/check_gemma_llamacpp.py \\
      target/release/steerkit checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/sk-gemma3
Exit code 0 when llama.cpp agrees within 0.05 and the control does not; 1 otherwise.

Dependencies: Python 3.9+, numpy, llama-cpp-python (tested with 0.3.36).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_gemma as ref  # noqa: E402
from check_qwen3_llamacpp import as_f16_file, compare, tokenizer_folder  # noqa: E402


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    gemma3 = dict(ref.CONFIG, num_hidden_layers=6,
                  layer_types=["sliding_attention"] * 5 + ["full_attention"])
    gemma2 = dict(ref.GEMMA2, num_hidden_layers=4,
                  layer_types=["sliding_attention", "full_attention"] * 2)
    ok = check(steerkit, source, work, "gemma3", gemma3, 20261128,
               dict(layer_types=["full_attention"] * 6), "without the sliding window")
    ok &= check(steerkit, source, work, "gemma2", gemma2, 20261129,
                dict(attn_logit_softcapping=None, final_logit_softcapping=None),
                "without soft-capping")
    return 0 if ok else 1


def check(steerkit, source, work, label, cfg, seed, control, what):
    """Makes a random model of `cfg` (made a little larger, with Qwen's tokenizer), exports it
    to GGUF and compares llama.cpp's logits with the reference, and with the reference under
    `cfg` changed by `control`, which must differ."""
    cfg = dict(cfg, hidden_size=64, intermediate_size=96, head_dim=32, query_pre_attn_scalar=32,
               max_position_embeddings=512)
    work = os.path.join(work, label)
    folder = os.path.join(work, label)
    cfg["vocab_size"] = tokenizer_folder(steerkit, source, work, folder)
    w = ref.gemma_weights(cfg, seed)
    ref.save_safetensors(w, os.path.join(folder, "model.safetensors"))
    w16 = as_f16_file(w)
    return compare(steerkit, folder, work, label, cfg, w16, w16, dict(cfg, **control),
                   forward=ref.forward, what=what)


if __name__ == "__main__":
    sys.exit(main())
