#!/usr/bin/env python3
"""Check steerkit's Qwen3 GGUF export against llama.cpp (via llama-cpp-python).

No Qwen3 model is available here, so the script makes one: a small random Qwen3 (2 blocks,
hidden 64, 4 query and 2 key/value heads of 32: `head_dim` is not hidden / heads, as in real
Qwen3 models) with Qwen's real tokenizer, taken from a Qwen2.5 GGUF through a folder export.

  1. `steerkit export -m QWEN2.5.gguf --out WORK/tok` writes a folder; its tokenizer files are
     kept, its config.json and weights are replaced by the random Qwen3's
     (`reference_qwen3.weights`, norms drawn around 1 so that q_norm/k_norm matter).
  2. `steerkit export -m WORK/qwen3 --format gguf --out WORK/qwen3.gguf` (f16).
  3. llama.cpp loads that file and computes the logits at every position of three token
     sequences. They are compared with `reference_qwen3.forward` (float64, transformers'
     Qwen3 semantics) on the same weights rounded to f16 as the file holds them. The
     reference is what steerkit's own test (`qwen3_tiny_logits_match_reference`) matches to
     1e-4, so agreement here means llama.cpp, steerkit's GGUF and steerkit's runtime agree.
  4. Control: the reference without q_norm/k_norm must be far from llama.cpp's logits (so
     the check can tell).
  5. YaRN: the folder's config.json gets `rope_scaling` yarn (factor 4, original context
     4096, as `reference_qwen3.YARN`); steerkit exports it to GGUF (`rope.scaling.type yarn`,
     factor, original context) and llama.cpp's logits are compared with the reference's YaRN
     forward pass in the same way; the unscaled reference must be far from them.

How to run (from the repository root):
  /work/venvs/llamacpp/bin/python scripts/check_qwen3_llamacpp.py \\
      target/release/steerkit checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/sk-qwen3
Exit code 0 when llama.cpp agrees within 0.05 (f16 weights; logits have a standard deviation of about 1.6)
and the control does not; 1 otherwise. About a minute.

Dependencies: Python 3.9+, numpy, llama-cpp-python (tested with 0.3.36).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_qwen3 as ref  # noqa: E402

TOL = 0.05

# Token sequences (Qwen's ids) whose logits are compared at every position.
SEQS = [
    [151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 151645, 198, 151644, 77091, 198],
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
    [9707, 11, 1879, 0, 2585, 525, 498, 30],
]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    steerkit, source, work = sys.argv[1:]
    cfg = dict(ref.CONFIG)
    cfg.update(hidden_size=64, intermediate_size=96, head_dim=32, max_position_embeddings=512)
    folder = os.path.join(work, "qwen3")
    cfg["vocab_size"] = tokenizer_folder(steerkit, source, work, folder)
    w = ref.weights(cfg)
    ref.save_safetensors(w, os.path.join(folder, "model.safetensors"))
    w16 = as_f16_file(w)
    no_qk = {k: (np.ones_like(v) if ("q_norm" in k or "k_norm" in k) else v) for k, v in w16.items()}
    yarn_cfg = dict(cfg, rope_scaling=ref.YARN, max_position_embeddings=16384)
    ok = True
    for label, c, control, control_cfg in [
        ("qwen3", cfg, no_qk, cfg),
        ("qwen3 + yarn", yarn_cfg, w16, cfg),
    ]:
        ok &= compare(steerkit, folder, work, label, c, w16, control, control_cfg)
    return 0 if ok else 1


def tokenizer_folder(steerkit, source, work, folder):
    """Empties `work`, makes `folder` in it holding the tokenizer files of the GGUF model
    `source` (through a steerkit folder export) and returns its vocabulary size."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    tok = os.path.join(work, "tok")
    subprocess.run([steerkit, "export", "-m", source, "--out", tok], check=True)
    with open(os.path.join(tok, "config.json")) as fh:
        vocab = json.load(fh)["vocab_size"]
    os.makedirs(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok, f), folder)
    shutil.rmtree(tok)
    return vocab


def as_f16_file(w):
    """The weights as an f16 GGUF holds them: matrices rounded to f16, vectors in f32."""
    return {k: (v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v) for k, v in w.items()}


def compare(steerkit, folder, work, label, cfg, w16, control, control_cfg,
            forward=ref.forward, what=None, gguf=None, f32_cache=False):
    """Exports `folder` with config `cfg` to GGUF and compares llama.cpp's logits with the
    reference `forward` on `w16`, and with it on `control` weights under `control_cfg`,
    which must differ (`what` names the control in the summary line). With `gguf`, that
    file is loaded instead of an export; with `f32_cache`, llama.cpp keeps keys and values
    in f32 rather than its default f16."""
    from llama_cpp import Llama

    gguf_path = gguf
    if gguf_path is None:
        with open(os.path.join(folder, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2)
        gguf_path = os.path.join(work, label.replace(" + ", "-") + ".gguf")
        subprocess.run(
            [steerkit, "export", "-m", folder, "--format", "gguf", "--out", gguf_path], check=True
        )
    cache = {"type_k": 0, "type_v": 0} if f32_cache else {}  # 0: GGML_TYPE_F32
    llm = Llama(model_path=gguf_path, n_ctx=64, logits_all=True, verbose=False, seed=0, **cache)
    seqs = SEQS
    worst, ctl_min, spread = 0.0, float("inf"), 0.0
    for ids in seqs:
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)], dtype=np.float64)
        want = forward(cfg, w16, ids)
        without = forward(control_cfg, control, ids)
        err = float(np.abs(got - want).max())
        ctl = float(np.abs(got - without).max())
        spread = max(spread, float(want.std()))
        top = int((got.argmax(-1) == want.argmax(-1)).sum())
        print(
            f"{label}, {len(ids):2d} tokens: llama.cpp vs reference max abs {err:.2e}, "
            f"top token equal at {top}/{len(ids)} positions; "
            f"control max abs {ctl:.2f}",
            file=sys.stderr,
        )
        worst, ctl_min = max(worst, err), min(ctl_min, ctl)
    ok = worst < TOL and ctl_min > 10 * TOL
    what = what or ("without q/k norms" if label == "qwen3" else "without YaRN")
    print(
        f"{'PASS' if ok else 'FAIL'}: {label} GGUF in llama.cpp, max abs logit error {worst:.2e} "
        f"(tolerance {TOL}, logit spread {spread:.2f}); {what} at least {ctl_min:.2f}"
    )
    return ok


if __name__ == "__main__":
    sys.exit(main())
