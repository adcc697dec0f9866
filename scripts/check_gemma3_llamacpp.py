#!/usr/bin/env python3
"""Check steerkit's Gemma 3 GGUF export against llama.cpp (via llama-cpp-python).

No Gemma model is available here, so the script makes one: a small random Gemma 3 text model
(6 blocks, hidden 64, 4 query and 2 key/value heads of 32) of the shape llama.cpp computes:
blocks 0-4 on a sliding window (3 positions here) with RoPE base 10,000, block 5 on the whole
context with base 1,000,000 and linear scaling (factor 2), attention scaled by head_dim. It
uses Qwen's real tokenizer (taken from a Qwen2.5 GGUF through a folder export).

  1. The folder gets `reference_gemma3`'s config and weights (norms drawn around 0, as Gemma
     stores them: offsets from 1).
  2. `steerkit export -m WORK/gemma3 --format gguf --out WORK/gemma3.gguf` (f16 matrices; the
     norms written as llama.cpp's converter writes them, 1 + w).
  3. llama.cpp loads that file and computes the logits at every position of three token
     sequences (up to 15 tokens: past the window). They are compared with
     `reference_gemma3.forward` (float64, transformers' Gemma 3 semantics) on the same weights
     rounded to f16 as the file holds them. That reference is what steerkit's own test
     (`gemma3_tiny_logits_match_reference`) matches to 1e-4, so agreement here means llama.cpp,
     steerkit's GGUF and steerkit's runtime agree, and that the reference, written from
     transformers' definition, agrees with llama.cpp's independent implementation.
  4. Control: the reference without the sliding window (every block on the whole context with
     the global RoPE) must be far from llama.cpp's logits, so the check can tell.

How to run (from the repository root):
  /work/venvs/llamacpp/bin/python scripts/check_gemma3_llamacpp.py \\
      target/release/steerkit checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/sk-gemma3
Exit code 0 when llama.cpp agrees within 0.05 and the control does not; 1 otherwise.

Dependencies: Python 3.9+, numpy, llama-cpp-python (tested with 0.3.36).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_gemma3 as ref  # noqa: E402
from check_qwen3_llamacpp import as_f16_file, compare, tokenizer_folder  # noqa: E402


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    cfg = dict(ref.CONFIG)
    cfg.update(
        hidden_size=64,
        intermediate_size=96,
        head_dim=32,
        query_pre_attn_scalar=32,
        num_hidden_layers=6,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        max_position_embeddings=512,
    )
    folder = os.path.join(work, "gemma3")
    cfg["vocab_size"] = tokenizer_folder(steerkit, source, work, folder)
    w = ref.weights(cfg, seed=20261128, norm_mean=0.0, post_norms=True)
    ref.save_safetensors(w, os.path.join(folder, "model.safetensors"))
    w16 = as_f16_file(w)
    whole = dict(cfg, layer_types=["full_attention"] * 6)
    ok = compare(steerkit, folder, work, "gemma3", cfg, w16, w16, whole,
                 forward=ref.forward, what="without the sliding window")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
