#!/usr/bin/env python3
"""Check steerkit's Phi-3 GGUF export against llama.cpp (via llama-cpp-python).

No Phi-3 model is available here, so the script makes one: a small random Phi-3 model (3
blocks, hidden 64, 4 query and 2 key/value heads of 16, gate and up of 96) stored fused as
Phi-3 checkpoints are (`qkv_proj`, `gate_up_proj`), with config.json's sliding window of 3
positions, and Qwen's real tokenizer (taken from a Qwen2.5 GGUF through a folder export).

  1. The folder gets `reference_phi3`'s config and fused weights.
  2. `steerkit export -m WORK/phi3 --format gguf --out WORK/phi3.gguf` (f16 matrices; q, k
     and v as llama.cpp's fused `attn_qkv`, gate and up as its fused `ffn_up`).
  3. llama.cpp loads that file and computes the logits at every position of three token
     sequences (up to 15 tokens). They are compared with `reference_phi3.forward` (float64,
     transformers' Phi-3 semantics, splitting the fused products itself) on the same weights
     rounded to f16, over the whole context: llama.cpp does not apply Phi-3's window (it
     reads the key and switches it off), and steerkit reads phi3 GGUF files the same way.
  4. Control: the reference with the window of 3 must be far from llama.cpp's logits, so the
     check can tell which of the two llama.cpp computes.
  5. The same file with the key llama.cpp's converter writes for Phi-3's window
     (`phi3.attention.sliding_window` = 3, added with gguf-py's copier): llama.cpp must still
     compute the whole context, as steerkit assumes when it reads a phi3 GGUF file.

How to run (from the repository root):
  /work/venvs/llamacpp/bin/python scripts/check_phi3_llamacpp.py \\
      target/release/steerkit checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/sk-phi3
Exit code 0 when llama.cpp agrees within 0.05 and the control does not; 1 otherwise.

Dependencies: Python 3.9+, numpy, llama-cpp-python (tested with 0.3.36), gguf (gguf-py,
tested with 0.19.0).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_phi3 as ref  # noqa: E402
from check_qwen3_llamacpp import as_f16_file, compare, tokenizer_folder  # noqa: E402


def forward(cfg, w, ids):
    """The reference over the window `_reference_window` (default: the whole context)."""
    return ref.forward(dict(cfg, sliding_window=cfg.get("_reference_window", 10**9)), w, ids)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    cfg = dict(ref.CONFIG, hidden_size=64, intermediate_size=96, max_position_embeddings=512,
               original_max_position_embeddings=512)
    folder = os.path.join(work, "phi3")
    cfg["vocab_size"] = tokenizer_folder(steerkit, source, work, folder)
    w = ref.fused_weights(cfg)
    ref.save_safetensors(w, os.path.join(folder, "model.safetensors"))
    w16 = as_f16_file(w)
    windowed = dict(cfg, _reference_window=cfg["sliding_window"])
    ok = compare(steerkit, folder, work, "phi3", cfg, w16, w16, windowed,
                 forward=forward, what="with the window of 3")
    keyed = with_window_key(os.path.join(work, "phi3.gguf"), cfg["sliding_window"])
    ok &= compare(steerkit, folder, work, "phi3 + window key", cfg, w16, w16, windowed,
                  forward=forward, what="with the window of 3", gguf=keyed)
    return 0 if ok else 1


def with_window_key(path, window):
    """A copy of the GGUF file at `path` with `phi3.attention.sliding_window` set."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    out = path.replace(".gguf", "-window.gguf")
    reader = gguf.GGUFReader(path, "r")
    writer = gguf.GGUFWriter(out, arch="phi3", endianess=reader.endianess)
    key = {"phi3.attention.sliding_window": MetadataDetails(gguf.GGUFValueType.UINT32, window)}
    copy_with_new_metadata(reader, writer, key, [])
    return out


if __name__ == "__main__":
    sys.exit(main())
