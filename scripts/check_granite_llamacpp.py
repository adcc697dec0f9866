#!/usr/bin/env python3
"""Check steerkit's Granite GGUF export against llama.cpp (via llama-cpp-python).

No Granite model is available here, so the script makes one: `reference_granite`'s tiny
random model widened to hidden 64 (4 query and 2 key/value heads of 16, gate and up of 96,
3 blocks, an untied head, Granite's four scalars far from 1), with Qwen's real tokenizer
(taken from a Qwen2.5 GGUF through a folder export).

  1. `steerkit export -m WORK/granite --format gguf --out WORK/granite.gguf` (f16 matrices;
     llama.cpp's `granite` architecture: q/k rows permuted as for llama, and the scalars as
     `granite.embedding_scale`, `residual_scale`, `attention.scale` and `logit_scale`).
  2. llama.cpp loads that file and computes the logits at every position of three token
     sequences (up to 15 tokens); they are compared with `reference_granite.forward`
     (float64, transformers' Granite semantics) on the same weights rounded to f16.
  3. Control: the reference with every scalar at 1 (Llama's block) must be far from
     llama.cpp's logits, so the check can tell the two apart.

How to run (from the repository root):
  /work/venvs/llamacpp/bin/python scripts/check_granite_llamacpp.py \\
      target/release/steerkit checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/sk-granite
Exit code 0 when llama.cpp agrees within 0.05 and the control does not; 1 otherwise.

Dependencies: Python 3.9+, numpy, llama-cpp-python (tested with 0.3.36).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_granite as ref  # noqa: E402
from check_qwen3_llamacpp import as_f16_file, compare, tokenizer_folder  # noqa: E402
from reference_qwen3 import save_safetensors  # noqa: E402


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    cfg = dict(ref.CONFIG, hidden_size=64, intermediate_size=96, head_dim=16,
               max_position_embeddings=512)
    folder = os.path.join(work, "granite")
    cfg["vocab_size"] = tokenizer_folder(steerkit, source, work, folder)
    w = ref.granite_weights(cfg)
    save_safetensors(w, os.path.join(folder, "model.safetensors"))
    w16 = as_f16_file(w)
    plain = dict(cfg, embedding_multiplier=1.0, residual_multiplier=1.0,
                 attention_multiplier=cfg["head_dim"] ** -0.5, logits_scaling=1.0)
    ok = compare(steerkit, folder, work, "granite", cfg, w16, w16, plain,
                 forward=ref.forward, what="with Llama's block (every scalar 1)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
