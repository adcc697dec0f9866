#!/usr/bin/env python3
"""Check steerkit's GGUF export of two variants of Llama's block against llama.cpp (via
llama-cpp-python): IBM Granite 3 (`granite`) and SmolLM3 (`smollm3`).

No such model is available here, so the script makes them: random models of hidden 64 (4
query and 2 key/value heads of 16, gate and up of 96) with Qwen's real tokenizer (taken
from a Qwen2.5 GGUF through a folder export):
  - granite: `reference_granite`'s model, 3 blocks, an untied head, and Granite's four
    scalars far from 1 (embedding multiplier 3, residual 0.5, attention 0.2, logits scaling
    4); control: the reference with Llama's block (every scalar 1, attention head_dim^-1/2);
  - smollm3: 8 blocks of which every fourth (3 and 7) attends without RoPE, as SmolLM3's do
    and as llama.cpp's `smollm3` fixes (no key for it), a tied head; control: the reference
    with RoPE in every block.
Each is exported with `steerkit export --format gguf` (f16 matrices; q/k rows permuted as
for llama; Granite's scalars as `granite.embedding_scale`, `residual_scale`,
`attention.scale` and `logit_scale`), and llama.cpp's logits at every position of three
token sequences (up to 15 tokens) are compared with `reference_granite.forward` (float64;
transformers' Granite and SmolLM3 semantics) on the same weights rounded to f16.

How to run (from the repository root):
  /work/venvs/llamacpp/bin/python scripts/check_llama_variants_llamacpp.py \\
      target/release/steerkit checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/sk-variants
Exit code 0 when llama.cpp agrees within 0.05 and each control does not; 1 otherwise.

Dependencies: Python 3.9+, numpy, llama-cpp-python (tested with 0.3.36).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_granite as ref  # noqa: E402
import reference_smollm3  # noqa: E402
from check_qwen3_llamacpp import tokenizer_folder  # noqa: E402
from llamacpp_check import check as export_and_compare  # noqa: E402
from reference_qwen3 import weights  # noqa: E402

WIDE = {"hidden_size": 64, "intermediate_size": 96, "head_dim": 16, "max_position_embeddings": 512}


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    tokens = os.path.join(work, "tokens")
    vocab = tokenizer_folder(steerkit, source, work, tokens)
    granite = dict(ref.CONFIG, **WIDE, vocab_size=vocab)
    ok = export_and_compare(steerkit, work, tokens, "granite", granite,
                            ref.granite_weights(granite), ref.forward, {
                                "embedding_multiplier": 1.0, "residual_multiplier": 1.0,
                                "attention_multiplier": 16 ** -0.5, "logits_scaling": 1.0},
                            "with Llama's block (every scalar 1)")
    smollm3 = dict(reference_smollm3.CONFIG, **WIDE, vocab_size=vocab, num_hidden_layers=8,
                   no_rope_layers=[1, 1, 1, 0, 1, 1, 1, 0])
    ok &= export_and_compare(steerkit, work, tokens, "smollm3", smollm3,
                             weights(smollm3, seed=20261129, qk_norms=False), ref.forward,
                             {"no_rope_layers": [1] * 8}, "with RoPE in every block")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
