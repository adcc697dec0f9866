#!/usr/bin/env python3
"""Check steerkit's GGUF export of two variants of Llama's block against llama.cpp (via
llama-cpp-python): IBM Granite 3 (`granite`), Granite 4's attention-only models
(`granitemoehybrid`, written as `granite`) and SmolLM3 (`smollm3`).

No such model is available here, so the script makes them: random models of hidden 64 (4
query and 2 key/value heads of 16, gate and up of 96) with Qwen's real tokenizer (taken
from a Qwen2.5 GGUF through a folder export):
  - granite: `reference_granite`'s model, 3 blocks, an untied head, and Granite's four
    scalars far from 1 (embedding multiplier 3, residual 0.5, attention 0.2, logits scaling
    4); control: the reference with Llama's block (every scalar 1, attention head_dim^-1/2);
  - granite4: the granite model stored as a granitemoehybrid folder (every block attention,
    no experts, the MLP as `shared_mlp` with gate and up fused in `input_linear`) without
    RoPE (`position_embedding_type` null), which the export says with
    `granite.rope.scaling.finetuned` false; control: the reference with RoPE;
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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_granite as ref  # noqa: E402
import reference_smollm3  # noqa: E402
from check_qwen3_llamacpp import tokenizer_folder  # noqa: E402
from llamacpp_check import check as export_and_compare  # noqa: E402
from reference_qwen3 import weights  # noqa: E402

WIDE = {"hidden_size": 64, "intermediate_size": 96, "head_dim": 16, "max_position_embeddings": 512}


def granite4(cfg):
    """Granite's weights for `cfg` in a granitemoehybrid folder's layout."""
    w, f = ref.granite_weights(cfg), cfg["shared_intermediate_size"]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        gate, up = w.pop(f"{p}.mlp.gate_proj.weight"), w.pop(f"{p}.mlp.up_proj.weight")
        assert gate.shape[0] == f
        w[f"{p}.shared_mlp.input_linear.weight"] = np.concatenate([gate, up])
        w[f"{p}.shared_mlp.output_linear.weight"] = w.pop(f"{p}.mlp.down_proj.weight")
    return w


def granite4_forward(cfg, w, ids):
    """`reference_granite.forward` on a granitemoehybrid folder's weights: the shared MLP
    unfused, RoPE in every block or none (`position_embedding_type`)."""
    w, f = dict(w), cfg["shared_intermediate_size"]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        gu = w.pop(f"{p}.shared_mlp.input_linear.weight")
        w[f"{p}.mlp.gate_proj.weight"], w[f"{p}.mlp.up_proj.weight"] = gu[:f], gu[f:]
        w[f"{p}.mlp.down_proj.weight"] = w.pop(f"{p}.shared_mlp.output_linear.weight")
    turn = int(cfg.get("position_embedding_type") == "rope")
    return ref.forward(dict(cfg, no_rope_layers=[turn] * cfg["num_hidden_layers"]), w, ids)


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
    g4 = dict(granite, architectures=["GraniteMoeHybridForCausalLM"],
              model_type="granitemoehybrid", layer_types=["attention"] * 3,
              num_local_experts=0, shared_intermediate_size=96, position_embedding_type=None)
    ok &= export_and_compare(steerkit, work, tokens, "granite4", g4, granite4(g4),
                             granite4_forward, {"position_embedding_type": "rope"},
                             "with RoPE")
    smollm3 = dict(reference_smollm3.CONFIG, **WIDE, vocab_size=vocab, num_hidden_layers=8,
                   no_rope_layers=[1, 1, 1, 0, 1, 1, 1, 0])
    ok &= export_and_compare(steerkit, work, tokens, "smollm3", smollm3,
                             weights(smollm3, seed=20261129, qk_norms=False), ref.forward,
                             {"no_rope_layers": [1] * 8}, "with RoPE in every block")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
