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
  6. Phi-4-mini's RoPE: the same model, without the window and with its head tied, turning 12
     of each head's 16 dimensions (partial_rotary_factor 0.75) and scaled by LongRoPE
     (`reference_phi3.PHI4_MINI`'s factors), exported twice. llama.cpp chooses the factors
     by its context size (asked for 64, it runs 256), transformers by the sequence's length:
     - original context 512 (max_position_embeddings 4096): both use the short factors for
       every sequence; the control is the reference with the long ones;
     - original context 7 (max_position_embeddings 56): every sequence (8 to 15 tokens) is
       longer, and both use the long factors; the control is the reference with the short
       ones.
     llama.cpp keeps its keys and values in f32 here: the attention factor (1.16 and 1.41)
     scales every attention logit by its square, and with llama.cpp's default f16 cache the
     short case is 0.054 off, the f32 one 0.024.

How to run (from the repository root):
  /work/venvs/llamacpp/bin/python scripts/check_phi3_llamacpp.py \\
      target/release/steerkit checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/sk-phi3
Exit code 0 when llama.cpp agrees within 0.05 and the control does not; 1 otherwise.

Dependencies: Python 3.9+, numpy, llama-cpp-python (tested with 0.3.36), gguf (gguf-py,
tested with 0.19.0).
"""
import os
import shutil
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
    ok &= longrope_checks(steerkit, folder, work, cfg["vocab_size"])
    return 0 if ok else 1


def longrope_checks(steerkit, tokenizer_from, work, vocab):
    """Step 6: Phi-4-mini's partial rotation and LongRoPE, short and long factors."""
    folder = os.path.join(work, "phi4-mini")
    os.makedirs(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_from, f), folder)
    cfg = dict(ref.PHI4_MINI, vocab_size=vocab, intermediate_size=96, num_hidden_layers=3)
    w = ref.fused_weights(cfg)
    ref.save_safetensors(w, os.path.join(folder, "model.safetensors"))
    w16 = as_f16_file(w)
    short = dict(cfg, original_max_position_embeddings=512, max_position_embeddings=4096)
    long = dict(cfg, original_max_position_embeddings=7, max_position_embeddings=56)
    # The control swaps the factor sets, the context ratio (the attention factor) kept.
    swapped = {"rope_type": "longrope", "short_factor": cfg["rope_scaling"]["long_factor"],
               "long_factor": cfg["rope_scaling"]["short_factor"]}
    ok = compare(steerkit, folder, work, "phi4-mini short", short, w16, w16,
                 dict(short, rope_scaling=swapped), forward=forward,
                 what="with the long factors", f32_cache=True)
    ok &= compare(steerkit, folder, work, "phi4-mini long", long, w16, w16,
                  dict(long, rope_scaling=swapped), forward=forward,
                  what="with the short factors", f32_cache=True)
    return ok


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
