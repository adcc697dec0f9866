#!/usr/bin/env python3
"""Check that steerkit's exported files work in llama.cpp (via llama-cpp-python).

What it checks
  1. Makes a direction run with steerkit (`extract`, then `select` with a manual
     layer choice: --layer 12 --pos -1 by default; SmolLM2 never refuses, so the
     automatic selection has nothing to select on).
  2. GGUF export: `export --format gguf` of the plain model (f16 re-export) and of
     the orthogonalized model. Each file must load in llama.cpp; for 8 short
     prompts, llama.cpp's greedy answer (the model's chat template,
     temperature 0, 24 tokens) is compared with `steerkit generate` on the same
     file. Reports k/8 identical answers and, for the others, the first
     differing token position (llama.cpp computes with f16 weights in its own
     kernels, steerkit dequantizes to f32, so a few late divergences are normal).
  3. Control vector: `export --format control-vector --scale S` writes
     `direction.N = -S * r`. llama.cpp's convention is that `direction.N` is added
     to the residual stream at the OUTPUT of 0-based block N, and its buffer holds
     n_embd floats per layer starting at layer 1 (offset (N-1)*n_embd), which is
     how llama.cpp's common loader (`--control-vector`) lays the file out. The
     script reads the file with the `gguf` package, applies it through
     `llama_set_adapter_cvec` at the file's layer N and, as controls, at N-1 and
     N+1, and compares llama.cpp's greedy answers (4 harmless prompts x 16
     tokens, on the source GGUF) with `steerkit eval --intervention add
     --coeff -S` (which adds -S * r at the output of block N). The placement at
     the file's own N must match best. An unsteered pair (llama.cpp without a
     vector vs steerkit eval without intervention) gives the agreement to expect
     from the quantized weights alone.
  5. RoPE scaling (`--rope-only` runs just this; needs a llama model): the folder's
     config.json gets a llama3 `rope_scaling`, then a linear one; steerkit exports each
     to GGUF (llama3 as `rope_freqs.weight`, linear as `rope.scaling.type`/`factor`),
     and llama.cpp's greedy answers on that file are compared with steerkit's on the
     folder and on the file, and with llama.cpp's on the unscaled model (which must
     differ).
  4. GGUF export of a Hugging Face folder (`--folder-only` runs just this): the model
     is exported as a folder, and the folder as GGUF, whose metadata steerkit then
     builds from config.json and tokenizer.json. llama.cpp must load it, answer like
     `steerkit generate` on it (as in 2), and answer the 8 prompts exactly as it does
     with the GGUF exported from the source file (same weights, same tokenizer).

How to run
  /work/venvs/llamacpp/bin/python scripts/check_llamacpp_export.py \
      target/release/steerkit checkpoints/models/smollm2-135m-instruct.gguf /tmp/sk-llamacpp

  The work dir is created if needed; outputs the script writes there (run/,
  *.gguf, ev-*/) are replaced on every run. Took about 16 minutes on 2 busy
  CPU cores (mostly llama.cpp f16 generation); progress goes to stderr.
  Exit code 0 when every check passes, 1 otherwise.

Dependencies
  Python 3.9+, llama-cpp-python (tested with 0.3.36), numpy, gguf
  (pip install llama-cpp-python numpy gguf), and a steerkit binary.
"""

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys

import numpy as np

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "Give me one tip for better sleep.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Explain what a noun is in one sentence.",
]


def run(cmd, capture=True):
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise RuntimeError("command failed (%d): %s" % (p.returncode, " ".join(cmd)))
    return p.stdout


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def load_llama(path, threads):
    from llama_cpp import Llama
    return Llama(model_path=path, n_ctx=512, verbose=False, seed=0, n_threads=threads)


def n_layer_of(llm):
    import llama_cpp
    return int(llama_cpp.llama_model_n_layer(llm.model))


def chat(llm, prompt, max_tokens):
    llm.reset()  # no KV prefix reuse: every answer is computed from scratch
    out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}],
                                     temperature=0, max_tokens=max_tokens)
    return out["choices"][0]["message"]["content"] or ""


def first_diff(llm, a, b):
    """First differing token position of two answers (tokenized by llama.cpp), or None."""
    ta = llm.tokenize(a.encode(), add_bos=False, special=True)
    tb = llm.tokenize(b.encode(), add_bos=False, special=True)
    for i, (x, y) in enumerate(zip(ta, tb)):
        if x != y:
            return i
    return None if len(ta) == len(tb) else min(len(ta), len(tb))


def same(a, b):
    return a.strip() == b.strip()


def steerkit_answer(sk, path, prompt, tokens):
    """`steerkit generate`'s greedy answer on a model file or folder."""
    out = run([sk, "generate", "-m", path, "--prompt", prompt, "--max-new-tokens", str(tokens)])
    return json.loads(out.strip().splitlines()[-1])["response"]


def llama_answers(path, args):
    """llama.cpp's greedy answers to PROMPTS on a GGUF file."""
    llm = load_llama(path, args.threads)
    out = [chat(llm, p, args.gen_tokens) for p in PROMPTS]
    del llm
    return out


def check_gguf(name, path, args, report):
    try:
        llm = load_llama(path, args.threads)
    except Exception as e:  # the main check: llama.cpp must accept the file
        report.append("%s: llama.cpp FAILED to load %s: %s" % (name, path, e))
        return False, None
    report.append("%s: llama.cpp loaded %s (%.0f MB, n_layer %d, n_embd %d)" % (
        name, os.path.basename(path), os.path.getsize(path) / 1e6,
        n_layer_of(llm), llm.n_embd()))
    identical, diffs, answers = 0, [], []
    for i, p in enumerate(PROMPTS):
        ours = steerkit_answer(args.steerkit, path, p, args.gen_tokens)
        theirs = chat(llm, p, args.gen_tokens)
        answers.append(theirs)
        if same(ours, theirs):
            identical += 1
        else:
            pos = first_diff(llm, ours.strip(), theirs.strip())
            diffs.append("    prompt %d differs at token %s:\n      steerkit:  %r\n      llama.cpp: %r"
                         % (i, pos, ours, theirs))
    report.append("  greedy answers identical to steerkit generate: %d/%d" % (identical, len(PROMPTS)))
    report.extend(diffs)
    ok = identical >= args.min_identical
    if not ok:
        report.append("  FAIL: fewer than %d identical" % args.min_identical)
    del llm
    return ok, answers


def check_folder(sk, model, w, args, report):
    """4. A Hugging Face folder exported to GGUF (metadata built from config.json and
    tokenizer.json, not carried over): llama.cpp must load it and answer as it answers with
    the GGUF exported from the source file itself, token for token."""
    report.append("4. GGUF export of a Hugging Face folder")
    folder = os.path.join(w, "folder")
    from_folder = os.path.join(w, "folder-f16.gguf")
    from_file = os.path.join(w, "file-f16.gguf")
    for f in (folder, from_folder, from_file):
        remove(f)
    run([sk, "export", "-m", model, "--out", folder])
    run([sk, "export", "-m", folder, "--format", "gguf", "--out", from_folder])
    run([sk, "export", "-m", model, "--format", "gguf", "--out", from_file])
    ok_a, ans_a = check_gguf("from the folder, f16", from_folder, args, report)
    if not ans_a:
        return False
    ans_b = llama_answers(from_file, args)
    equal = sum(a == b for a, b in zip(ans_a, ans_b))
    report.append("  llama.cpp answers equal to those of the export from the GGUF file: %d/%d"
                  % (equal, len(PROMPTS)))
    if equal != len(PROMPTS):
        report.append("  FAIL: the two exports answer differently in llama.cpp")
    remove(folder)
    return ok_a and equal == len(PROMPTS)


# The scalings check 5 gives the model's folder, and what the exported GGUF must hold.
# llama3: factor 8, low 1, high 4, original context 64. With SmolLM2's theta of 100000, 3 of
# its 32 frequencies are kept, 4 interpolated and 25 divided by 8, so that a prompt of 30
# tokens already sees the change; the GGUF holds the divisors (`rope_freqs.weight`).
# linear: every frequency divided by 4; the GGUF says `rope.scaling.type = linear` and
# `rope.scaling.factor = 4` and holds no divisors.
ROPE_CASES = [
    ("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    ("linear", {"rope_type": "linear", "factor": 4.0}),
]


def rope_form(path):
    """How a GGUF stores its RoPE scaling: the divisors tensor, or the linear keys."""
    import gguf
    r = gguf.GGUFReader(path)
    if any(t.name == "rope_freqs.weight" for t in r.tensors):
        return "rope_freqs.weight"
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    kind = r.fields.get(arch + ".rope.scaling.type")
    factor = r.fields.get(arch + ".rope.scaling.factor")
    if kind is None or factor is None:
        return "none"
    return "%s x%g" % (bytes(kind.parts[-1]).decode(), float(factor.parts[-1][0]))


def check_rope(sk, model, w, args, report):
    """5. RoPE scaling. For each of ROPE_CASES, the model's folder gets that `rope_scaling`
    and steerkit exports it to GGUF. llama.cpp's greedy answers on that file must equal
    steerkit's on the folder (the rule) and on the file (as steerkit reads it back), and
    differ from llama.cpp's on the unscaled model."""
    report.append("5. RoPE scaling")
    folder = os.path.join(w, "rope-folder")
    plain = os.path.join(w, "plain-f16.gguf")
    remove(plain)
    run([sk, "export", "-m", model, "--format", "gguf", "--out", plain])
    theirs_plain = llama_answers(plain, args)
    n, ok = len(PROMPTS), True
    for kind, rule in ROPE_CASES:
        scaled = os.path.join(w, "rope-%s-f16.gguf" % kind)
        for f in (folder, scaled):
            remove(f)
        run([sk, "export", "-m", model, "--out", folder])
        cfg_path = os.path.join(folder, "config.json")
        cfg = json.load(open(cfg_path))
        cfg["rope_scaling"] = rule
        json.dump(cfg, open(cfg_path, "w"), indent=2)
        run([sk, "export", "-m", folder, "--format", "gguf", "--out", scaled])
        form = rope_form(scaled)
        want = "rope_freqs.weight" if kind == "llama3" else "linear x%g" % rule["factor"]
        report.append("  %s: %s stores it as %s (expected %s)"
                      % (kind, os.path.basename(scaled), form, want))
        ours_rule = [steerkit_answer(sk, folder, p, args.gen_tokens) for p in PROMPTS]
        ours_file = [steerkit_answer(sk, scaled, p, args.gen_tokens) for p in PROMPTS]
        theirs = llama_answers(scaled, args)
        rule_file = sum(same(a, b) for a, b in zip(ours_rule, ours_file))
        file_llama = sum(same(a, b) for a, b in zip(ours_file, theirs))
        rule_llama = sum(same(a, b) for a, b in zip(ours_rule, theirs))
        changed = sum(not same(a, b) for a, b in zip(theirs, theirs_plain))
        report.append("    steerkit on the folder (the rule) = steerkit on the GGUF: %d/%d"
                      % (rule_file, n))
        report.append("    steerkit on the GGUF = llama.cpp on the GGUF: %d/%d" % (file_llama, n))
        report.append("    steerkit on the folder = llama.cpp on the GGUF: %d/%d" % (rule_llama, n))
        report.append("    llama.cpp answers the scaling changed (against the unscaled file): %d/%d"
                      % (changed, n))
        good = form == want and file_llama >= args.min_identical \
            and rule_llama >= args.min_identical and changed >= 1
        if not good:
            report.append("    FAIL")
        ok &= good
        remove(folder)
    return ok


def read_cvec(path):
    import gguf
    r = gguf.GGUFReader(path)
    dirs = {}
    for t in r.tensors:
        if t.name.startswith("direction."):
            dirs[int(t.name.split(".")[1])] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    return dirs


def set_cvec(llm, layer_vecs, n_embd):
    """Apply {layer: vector} like llama.cpp's common loader; {} clears."""
    import llama_cpp
    fn = getattr(llama_cpp, "llama_set_adapter_cvec", None) or llama_cpp.llama_apply_adapter_cvec
    ctx = llm._ctx.ctx
    if not layer_vecs:
        rc = fn(ctx, None, 0, n_embd, -1, -1)
    else:
        top = max(layer_vecs)
        buf = np.zeros(top * n_embd, dtype=np.float32)  # layer il at offset (il-1)*n_embd
        for il, v in layer_vecs.items():
            assert il >= 1, "llama.cpp control vectors start at layer 1"
            buf[(il - 1) * n_embd: il * n_embd] = v
        rc = fn(ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size, n_embd,
                min(layer_vecs), top)
    if rc != 0:
        raise RuntimeError("llama_set_adapter_cvec returned %d" % rc)


def read_eval(folder, set_name):
    rows = [json.loads(l) for l in open(os.path.join(folder, "responses", set_name + ".jsonl"))]
    rows.sort(key=lambda r: r["i"])
    return rows


def common_prefix_tokens(llm, a, b):
    ta = llm.tokenize(a.strip().encode(), add_bos=False, special=True)
    tb = llm.tokenize(b.strip().encode(), add_bos=False, special=True)
    n = 0
    for x, y in zip(ta, tb):
        if x != y:
            break
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("steerkit", help="steerkit binary")
    ap.add_argument("model", help="source model GGUF (e.g. smollm2-135m-instruct.gguf)")
    ap.add_argument("work", help="work dir (created; the script's outputs in it are replaced)")
    ap.add_argument("--layer", type=int, default=12, help="manual layer for select (default 12)")
    ap.add_argument("--scale", type=float, default=8.0, help="control vector scale (default 8)")
    ap.add_argument("--gen-tokens", type=int, default=24)
    ap.add_argument("--cv-tokens", type=int, default=16)
    ap.add_argument("--cv-prompts", type=int, default=4)
    ap.add_argument("--min-identical", type=int, default=5,
                    help="identical answers (of 8) required per GGUF export (default 5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folder-only", action="store_true",
                    help="run only check 4 (GGUF export of a Hugging Face folder)")
    ap.add_argument("--rope-only", action="store_true",
                    help="run only check 5 (RoPE scaling, llama3 and linear; a llama-architecture model)")
    args = ap.parse_args()
    args.steerkit = os.path.abspath(args.steerkit)
    model = os.path.abspath(args.model)
    w = os.path.abspath(args.work)
    os.makedirs(w, exist_ok=True)
    sk = args.steerkit
    report, ok = [], True

    if args.rope_only:
        ok = check_rope(sk, model, w, args, report)
        print("\n".join(report))
        sys.exit(0 if ok else 1)
    if args.folder_only:
        ok = check_folder(sk, model, w, args, report)
        print("\n".join(report))
        sys.exit(0 if ok else 1)

    # 1. direction run
    rundir = os.path.join(w, "run")
    remove(rundir)
    run([sk, "extract", "-m", model, "--limit", "16", "--out", rundir])
    run([sk, "select", "-m", model, "--run", rundir, "--harmful-val", "harmful",
         "--harmless-val", "harmless", "--limit", "8", "--layer", str(args.layer), "--pos", "-1"])
    sel = json.load(open(os.path.join(rundir, "selected.json")))
    report.append("1. direction run: layer %s pos %s (%s)" % (sel["layer"], sel["pos"], rundir))

    # 2. GGUF exports
    report.append("2. GGUF export")
    plain = os.path.join(w, "plain-f16.gguf")
    ortho = os.path.join(w, "ortho-f16.gguf")
    for f in (plain, ortho):
        remove(f)
    run([sk, "export", "-m", model, "--format", "gguf", "--out", plain])
    run([sk, "export", "-m", model, "--run", rundir, "--orthogonalize", "--format", "gguf", "--out", ortho])
    ok_p, ans_p = check_gguf("plain f16", plain, args, report)
    ok_o, ans_o = check_gguf("orthogonalized f16", ortho, args, report)
    ok &= ok_p and ok_o
    if ans_p and ans_o:
        changed = sum(not same(a, b) for a, b in zip(ans_p, ans_o))
        report.append("  orthogonalization changed %d/%d llama.cpp answers" % (changed, len(PROMPTS)))

    # 3. control vector
    report.append("3. control vector (scale %g)" % args.scale)
    cv = os.path.join(w, "cv.gguf")
    remove(cv)
    run([sk, "export", "-m", model, "--run", rundir, "--format", "control-vector",
         "--scale", str(args.scale), "--out", cv])
    dirs = read_cvec(cv)
    if len(dirs) != 1:
        report.append("  FAIL: expected one direction.N tensor, found %s" % sorted(dirs))
        ok = False
    else:
        (n, vec), = dirs.items()
        report.append("  %s holds direction.%d (n_embd %d, |v| %.2f)" % (os.path.basename(cv), n, vec.size,
                                                                      float(np.linalg.norm(vec))))
        ev_add = os.path.join(w, "ev-add")
        ev_base = os.path.join(w, "ev-base")
        for d in (ev_add, ev_base):
            remove(d)
        common = [sk, "eval", "-m", model, "--set", "harmless", "--limit", str(args.cv_prompts),
                  "--max-new-tokens", str(args.cv_tokens)]
        run(common + ["--run", rundir, "--intervention", "add", "--coeff", str(-args.scale), "--out", ev_add])
        run(common + ["--out", ev_base])
        rows_add, rows_base = read_eval(ev_add, "harmless"), read_eval(ev_base, "harmless")
        llm = load_llama(model, args.threads)
        n_embd = llm.n_embd()
        n_layer = n_layer_of(llm)

        def score(rows, placement):
            set_cvec(llm, placement, n_embd)
            eq, pref, texts = 0, 0, []
            for r in rows:
                t = chat(llm, r["prompt"], args.cv_tokens)
                texts.append(t)
                eq += same(t, r["response"])
                pref += common_prefix_tokens(llm, t, r["response"])
            return eq, pref, texts

        eq, pref, _ = score(rows_base, {})
        report.append("  unsteered: llama.cpp (source GGUF) vs steerkit eval: %d/%d identical, "
                      "%d common-prefix tokens" % (eq, len(rows_base), pref))
        results = {}
        for layer in (n - 1, n, n + 1):
            if layer < 1 or layer >= n_layer:
                continue
            eq, pref, texts = score(rows_add, {layer: vec})
            results[layer] = (eq, pref)
            report.append("  vector at llama.cpp layer %2d%s: %d/%d identical to steerkit add@%d, "
                          "%d common-prefix tokens" % (layer, " (file's N)" if layer == n else "",
                                                      eq, len(rows_add), n, pref))
        set_cvec(llm, {}, n_embd)
        best = max(results, key=lambda l: results[l])
        unique = sum(results[l] == results[best] for l in results) == 1
        if best == n and unique:
            report.append("  => direction.%d in llama.cpp (output of block %d) matches steerkit's "
                          "output-of-block-%d addition" % (n, n, n))
        else:
            report.append("  FAIL: best-matching llama.cpp layer is %d%s, expected %d"
                          % (best, "" if unique else " (tie)", n))
            ok = False
        del llm

    ok &= check_folder(sk, model, w, args, report)
    ok &= check_rope(sk, model, w, args, report)
    print("\n".join(report))
    print("RESULT: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
