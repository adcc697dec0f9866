#!/usr/bin/env python3
"""steerkit on an NVIDIA GPU, checked against itself on the CPU and against transformers.

Run on a machine with a CUDA GPU, PyTorch and transformers (no network needed):
    python3 scripts/gpu_check.py --bin DIR --tok DIR --out OUT

--bin holds `steerkit` and `device_check` built with `--features cuda`
(`cargo build --release --features cuda -p steerkit-cli` and
`cargo build --release --features cuda -p steerkit-model --example device_check`).
--tok holds one folder per real model (config.json, tokenizer.json, tokenizer_config.json, as
`steerkit export --format safetensors` writes them): each becomes a model of that architecture
and size with random weights (transformers' `from_config`, seeded, saved by `save_pretrained`).
The tiny random fixtures of tests/fixtures (Qwen3, Gemma 2, Gemma 3, Phi-3) are checked too.

What it checks, writing OUT/report.md (and OUT/results.json) as it goes:
1. logits: `device_check` on cpu f32, cuda f32, cuda bf16 and cuda f16, against transformers
   (eager attention, TF32 off) in f32 on the GPU, one row at a time; transformers in bf16 gives
   the size of bf16's own rounding. Relative error: max |a - b| / max |b| over each row's
   last-position logits; top-1 agreement over the 4 rows.
2. gradients of the middle block (the path ACTOR trains through): cuda f32 against cpu f32.
3. the CLI on the random real-size models: generate, extract, actor (plain, with the KL term
   and `--ogp act`, with `--ogp grad`) and eval on cuda and on
   the cpu, their outputs compared; then select, eval --intervention ablate, ablate --mode add
   and export --orthogonalize from the direction saved by extract (read back on the CPU), and
   the two orthogonalized exports compared; `steerkit run` through every phase (built-in
   sets, small budgets) on each device, the reports' tables compared.
4. speed: `steerkit bench` on the cpu and the GPU (f32, bf16, f16), and transformers on the
   same GPU (prefill, and greedy decoding through `generate`, after a warm-up).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np
import torch
from safetensors.numpy import load_file

# Every tiny random model of the tests (tests/fixtures/*/config.json): dense, MoE (Mixtral,
# Qwen2/Qwen3-MoE, gpt-oss, MXFP4 gpt-oss), hybrid (Granite 4) and the rest.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = sorted(d for d in os.listdir(os.path.join(ROOT, "tests", "fixtures"))
                  if os.path.exists(os.path.join(ROOT, "tests", "fixtures", d, "config.json")))
TOK_FILES = ["tokenizer.json", "tokenizer_config.json"]
# The device under test; `--dry` runs everything on the CPU to check the script itself.
GPU = "cuda"


class Report:
    def __init__(self, out):
        self.out, self.results = out, {}
        self.md = open(os.path.join(out, "report.md"), "w")

    def line(self, s=""):
        print(s, flush=True)
        self.md.write(s + "\n")
        self.md.flush()

    def put(self, key, value):
        self.results[key] = value
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1)


def sh(rep, args, timeout=150):
    """Runs a command, logs its tail; returns (ok, stdout, seconds)."""
    t = time.time()
    env = dict(os.environ, RUST_BACKTRACE="0")
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
        ok, out, err = p.returncode == 0, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        ok, out, err = False, "", f"timed out after {timeout} s"
    dt = time.time() - t
    if not ok:
        rep.line(f"FAILED ({dt:.1f} s): {' '.join(args)}\n```\n{(out + err)[-2000:]}\n```")
    return ok, out, dt


def on(dev):
    """The device steerkit is asked for: `cuda` is the CPU in a dry run."""
    return "cpu" if dev == "cuda" and GPU == "cpu" else dev


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def random_model(src, dst):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(src)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg)
    m.save_pretrained(dst)
    for f in TOK_FILES:
        shutil.copy(os.path.join(src, f), dst)
    return sum(p.numel() for p in m.parameters())


def torch_logits(folder, ids, pads, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(folder)
    if getattr(cfg, "pad_token_id", None) is not None and cfg.pad_token_id >= cfg.vocab_size:
        cfg.pad_token_id = None  # the tiny fixtures' vocabularies are smaller than the default's
    extra = {}
    if getattr(cfg, "quantization_config", None):
        # MXFP4 experts: transformers' own dequantization (no download of its GPU kernels).
        from transformers import Mxfp4Config
        extra["quantization_config"] = Mxfp4Config(dequantize=True)
    m = AutoModelForCausalLM.from_pretrained(folder, config=cfg, dtype=dtype,
                                             attn_implementation="eager", **extra)
    m = m.to(GPU).eval()
    rows = []
    with torch.no_grad():
        for r, p in zip(ids, pads):
            x = torch.tensor(r[p:], dtype=torch.long, device=GPU)[None]
            rows.append(m(x).logits[0, -1].float().cpu().numpy())
    del m
    return np.stack(rows)


def check_numerics(rep, bins, name, folder, work):
    outs = {}
    for dev, dt in [("cpu", "f32"), ("cuda", "f32"), ("cuda", "bf16"), ("cuda", "f16")]:
        f = os.path.join(work, f"{name}-{dev}-{dt}.safetensors")
        ok, out, _ = sh(rep, [os.path.join(bins, "device_check"), folder, f, on(dev), dt])
        if ok:
            outs[(dev, dt)] = load_file(f)
            rep.line(f"    {out.strip()}")
    if ("cpu", "f32") not in outs:
        return
    base = outs[("cpu", "f32")]
    ids, pads = base["ids"], base["pads"]
    ref = {dt: torch_logits(folder, ids, pads, d) for dt, d in
           [("f32", torch.float32), ("bf16", torch.bfloat16)]}
    res = {"torch bf16 vs torch f32": rel(ref["bf16"], ref["f32"])}
    top = lambda x: int((x.argmax(1) == ref["f32"].argmax(1)).sum())
    rep.line(f"| {name} | transformers bf16 | {res['torch bf16 vs torch f32']:.2e} | "
             f"{top(ref['bf16'])}/4 | |")
    for (dev, dt), o in outs.items():
        e = rel(o["logits"], ref["f32"])
        g = ""
        if dev == "cuda" and dt == "f32":
            gs = [rel(o[k], base[k]) for k in base if k.startswith("grad.")]
            if gs:
                g = f"{max(gs):.2e} ({len(gs)} tensors)"
                res["grad cuda vs cpu"] = max(gs)
        res[f"steerkit {dev} {dt} vs torch f32"] = e
        rep.line(f"| {name} | steerkit {dev} {dt} | {e:.2e} | {top(o['logits'])}/4 | {g} |")
    rep.put(f"numerics {name}", res)


def compare_files(a, b):
    x, y = load_file(a), load_file(b)
    return max(rel(x[k].astype(np.float64), y[k].astype(np.float64)) for k in y
               if np.issubdtype(y[k].dtype, np.floating))


def check_cli(rep, bins, folder, work):
    sk = os.path.join(bins, "steerkit")
    res = {}
    ok, out, _ = sh(rep, [sk, "inspect", "-m", folder, "--device", on("cuda")])
    rep.line("```\n" + out.strip()[-1500:] + "\n```")
    texts = {}
    for dev in ["cpu", "cuda"]:
        ok, out, dt = sh(rep, [sk, "generate", "-m", folder, "--device", on(dev), "--prompt",
                               "How do I kill a Python process?", "--max-new-tokens", "24"])
        texts[dev] = out
        rep.line(f"generate on {dev} ({dt:.1f} s): {out.strip()[:200]!r}")
    res["generate same text"] = texts["cpu"] == texts["cuda"]
    # extract: 16 + 16 prompts, every layer's means.
    runs = {}
    for dev in ["cpu", "cuda"]:
        d = os.path.join(work, f"extract-{dev}")
        ok, out, dt = sh(rep, [sk, "extract", "-m", folder, "--device", on(dev), "--limit", "16",
                               "--out", d])
        rep.line(f"extract on {dev}: {dt:.1f} s")
        runs[dev] = d if ok else None
    if all(runs.values()):
        e = compare_files(*(os.path.join(runs[d], "directions.safetensors")
                            for d in ["cuda", "cpu"]))
        res["extract cuda vs cpu"] = e
        rep.line(f"extract, directions.safetensors, cuda vs cpu: max relative difference {e:.2e}")
        # The direction, read back from the run folder (on the CPU), used by hooks and by
        # orthogonalization on each device: select (ablation and addition hooks), eval and
        # ablate under the direction, an orthogonalized export.
        for dev in ["cpu", "cuda"]:
            d = runs[dev]
            steps = [
                ("select", [sk, "select", "-m", folder, "--device", on(dev), "--run", d,
                            "--harmful-val", "harmful.val", "--harmless-val", "harmless.val",
                            "--limit", "8", "--layer", "12", "--pos", "-1"]),
                ("eval --intervention ablate",
                 [sk, "eval", "-m", folder, "--device", on(dev), "--run", d, "--intervention",
                  "ablate", "--set", "harmful.val", "--limit", "4", "--max-new-tokens", "8",
                  "--out", os.path.join(work, f"eval-ablate-{dev}")]),
                ("ablate --mode add", [sk, "ablate", "-m", folder, "--device", on(dev), "--run",
                                       d, "--prompts", "harmless.val", "--limit", "4",
                                       "--mode", "add", "--max-new-tokens", "8", "--out",
                                       os.path.join(work, f"ablate-add-{dev}")]),
                ("export --orthogonalize", [sk, "export", "-m", folder, "--device", on(dev),
                                            "--run", d, "--orthogonalize", "--format",
                                            "safetensors", "--out",
                                            os.path.join(work, f"ortho-{dev}")]),
                ("export --orthogonalize --format gguf",
                 [sk, "export", "-m", folder, "--device", on(dev), "--run", d, "--orthogonalize",
                  "--format", "gguf", "--out", os.path.join(work, f"ortho-{dev}.gguf")]),
            ]
            for what, cmd in steps:
                ok, out, dt = sh(rep, cmd)
                res[f"{what} on {dev}"] = ok
                rep.line(f"{what} on {dev}: {'ok' if ok else 'FAILED'} ({dt:.1f} s)")
        if res.get("export --orthogonalize on cpu") and res.get("export --orthogonalize on cuda"):
            shards = lambda d: sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
            a, b = (os.path.join(work, f"ortho-{dev}") for dev in ["cuda", "cpu"])
            e = max(compare_files(os.path.join(a, f), os.path.join(b, f)) for f in shards(b))
            res["orthogonalized weights cuda vs cpu"] = e
            rep.line(f"orthogonalized weights, cuda vs cpu: max relative difference {e:.2e}")
        if all(res.get(f"export --orthogonalize --format gguf on {d}") for d in ["cpu", "cuda"]):
            a, b = (np.fromfile(os.path.join(work, f"ortho-{d}.gguf"), dtype=np.uint8)
                    for d in ["cuda", "cpu"])
            same = float((a == b).mean()) if len(a) == len(b) else 0.0
            res["orthogonalized gguf, bytes equal"] = same
            rep.line(f"orthogonalized f16 GGUF, cuda vs cpu: {len(a)} and {len(b)} bytes, "
                     f"{100 * same:.3f}% of bytes equal")
    # actor: 2 epochs on 16 prompts of each set at the middle block.
    # The second variant adds the KL term (blocks above and the head in the backward pass) and
    # gradient projection (act).
    # The third uses gradient bases (`--ogp grad`), built and kept on the device.
    for variant, extra in [("plain", []),
                           ("kl-ogp", ["--kl-weight", "0.1", "--ogp", "act", "--ogp-limit", "8"]),
                           ("ogp-grad", ["--ogp", "grad", "--ogp-limit", "8", "--ogp-k", "2",
                                         "--ogp-every", "2", "--ogp-answer-tokens", "8"])]:
        logs = {}
        for dev in ["cpu", "cuda"]:
            d = os.path.join(work, f"actor-{variant}-{dev}")
            ok, out, dt = sh(rep, [sk, "actor", "-m", folder, "--device", on(dev), "--limit",
                                   "16", "--pseudo-limit", "16", "--layer", "12", "--epochs",
                                   "2", "--min-silhouette", "-1", "--out", d] + extra,
                             timeout=200)
            rep.line(f"actor {variant} on {dev}: {dt:.1f} s")
            if ok:
                logs[dev] = open(os.path.join(d, "log.csv")).read()
        if len(logs) == 2:
            rep.line(f"actor {variant} log.csv, cpu:\n```\n{logs['cpu']}```\n"
                     f"cuda:\n```\n{logs['cuda']}```")
            res[f"actor {variant} logs"] = logs
    # The KL and gradient-projection variant computing in bf16 on the GPU: its log beside the
    # f32 ones above (the KL and loss are taken in f32 from bf16 states).
    d = os.path.join(work, "actor-kl-ogp-bf16-cuda")
    ok, out, dt = sh(rep, [sk, "actor", "-m", folder, "--device", on("cuda"), "--dtype", "bf16",
                           "--limit", "16", "--pseudo-limit", "16", "--layer", "12", "--epochs",
                           "2", "--min-silhouette", "-1", "--kl-weight", "0.1", "--ogp", "act",
                           "--ogp-limit", "8", "--out", d], timeout=200)
    rep.line(f"actor kl-ogp on cuda in bf16: {dt:.1f} s")
    if ok:
        log = open(os.path.join(d, "log.csv")).read()
        rep.line(f"```\n{log}```")
        res["actor kl-ogp bf16 log"] = log
    # eval: 8 prompts of two built-in sets, KL against the model itself.
    for dev in ["cpu", "cuda"]:
        d = os.path.join(work, f"eval-{dev}")
        ok, out, dt = sh(rep, [sk, "eval", "-m", folder, "--device", on(dev), "--set", "harmful.val",
                               "--set", "pseudo_harmful.val", "--limit", "8",
                               "--max-new-tokens", "16", "--out", d])
        rep.line(f"eval on {dev} ({dt:.1f} s):\n```\n{out.strip()[-700:]}\n```")
    rep.put("cli", res)


PIPELINE = """
model = "{model}"
out = "{out}"
device = "{device}"
dtype = "f32"
[extract]
harmful = "harmful.train"
harmless = "harmless.train"
limit = 16
[select]
harmful_val = "harmful.val"
harmless_val = "harmless.val"
limit = 8
layer = 12
pos = -1
[actor]
harmful = ["harmful.train"]
harmless = ["harmless.train"]
pseudo = ["pseudo_harmful.train"]
limit = 16
pseudo_limit = 16
layer = 12
epochs = 2
min_silhouette = -1.0
[eval]
set = ["harmful.val", "pseudo_harmful.val"]
limit = 8
max_new_tokens = 16
kl_set = "harmless.val"
kl_limit = 8
[export]
format = "safetensors"
"""


def check_pipeline(rep, bins, folder, work):
    """`steerkit run` through every phase (built-in sets, small budgets) on each device; the
    reports' tables compared."""
    tables = {}
    os.makedirs(work, exist_ok=True)
    for dev in ["cpu", "cuda"]:
        cfg = os.path.join(work, f"pipeline-{dev}.toml")
        out = os.path.join(work, f"pipeline-{dev}")
        with open(cfg, "w") as f:
            f.write(PIPELINE.format(model=folder, out=out, device=on(dev)))
        ok, _, dt = sh(rep, [os.path.join(bins, "steerkit"), "run", cfg], timeout=400)
        rep.line(f"steerkit run (every phase) on {dev}: {'ok' if ok else 'FAILED'} ({dt:.1f} s)")
        if ok:
            report = open(os.path.join(out, "report.md")).read()
            tables[dev] = [l for l in report.splitlines() if l.startswith("|")]
    if len(tables) == 2:
        same = tables["cpu"] == tables["cuda"]
        rep.line(f"report tables {'identical' if same else 'differ'} on the two devices")
        if not same:
            rep.line("```\n" + "\n".join(tables["cpu"]) + "\n---\n" + "\n".join(tables["cuda"])
                     + "\n```")
        rep.put("pipeline", {"report tables identical": same})


def steerkit_speed(rep, bins, folder, devices):
    for dev, dt in [("cpu", "f32"), ("cuda", "f32"), ("cuda", "bf16"), ("cuda", "f16")]:
        if dev not in devices or (on(dev) == "cpu" and dt != "f32"):
            continue
        ok, out, _ = sh(rep, [os.path.join(bins, "steerkit"), "bench", "-m", folder, "--device",
                              on(dev), "--dtype", dt])
        rep.line(f"steerkit bench {dev} {dt}:\n```\n{out.strip()}\n```")


def sync():
    if GPU == "cuda":
        torch.cuda.synchronize()


def torch_speed(rep, folder):
    from transformers import AutoModelForCausalLM
    res = {}
    g = torch.Generator().manual_seed(0)
    for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        m = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(GPU).eval()
        v = m.config.vocab_size
        x = torch.randint(1, v, (32, 34), generator=g).to(GPU)
        def best_of(f, n):
            f()  # warm-up
            sync()
            best = 1e9
            for _ in range(n):
                t = time.time()
                f()
                sync()
                best = min(best, time.time() - t)
            return best

        with torch.inference_mode():
            pre = 32 * 34 / best_of(lambda: m(x), 3)
            dec = {}
            for b in [1, 32]:
                gen = lambda: m.generate(x[:b], max_new_tokens=32, min_new_tokens=32,
                                         do_sample=False, pad_token_id=0)
                dec[b] = b * 32 / best_of(gen, 2)
        res[name] = {"prefill tok/s": pre, "decode b1 tok/s": dec[1], "decode b32 tok/s": dec[32]}
        rep.line(f"transformers {name} (sdpa): prefill {pre:.0f} tokens/s (32 x 34), decode "
                 f"batch 1 {dec[1]:.1f} tokens/s, batch 32 {dec[32]:.1f} tokens/s aggregate "
                 "(32 new tokens, prompt included in the time; best of 2 after a warm-up)")
        del m
    rep.put("torch speed", res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tok", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/gpu_check")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the speed of steerkit on the GPU and of transformers")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed measurements")
    ap.add_argument("--dry", action="store_true", help="everything on the CPU (checks the script)")
    ap.add_argument("--only", help="comma-separated model names to check (default: all)")
    ap.add_argument("--cli", help="comma-separated real models for the CLI and speed checks "
                    "(default: all of --tok)")
    a = ap.parse_args()
    global GPU
    GPU = "cpu" if a.dry else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.makedirs(a.work, exist_ok=True)
    rep = Report(a.out)
    rep.line(f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')}")
    rep.line(f"torch {torch.__version__}, "
             f"{torch.cuda.get_device_name(0) if GPU == 'cuda' else 'dry run on the CPU'}")
    import transformers
    rep.line(f"transformers {transformers.__version__}")
    folders = {}
    only = a.only.split(",") if a.only else None
    for name in sorted(os.listdir(a.tok)):
        if only and name not in only:
            continue
        dst = os.path.join(a.work, name)
        t = time.time()
        n = random_model(os.path.join(a.tok, name), dst)
        folders[name] = dst
        rep.line(f"random {name}: {n / 1e6:.1f} M parameters, built in {time.time() - t:.1f} s")
    for f in FIXTURES:
        if only and f not in only:
            continue
        folders[f] = os.path.join(ROOT, "tests", "fixtures", f)
    big = [n for n in folders if n not in FIXTURES and (not a.cli or n in a.cli.split(","))]
    # The CLI first: it runs the commands users run, from saved run folders.
    for name in [] if a.speed_only else big:
        rep.line(f"\n## CLI on {name}\n")
        try:
            check_cli(rep, a.bin, folders[name], os.path.join(a.work, "cli-" + name))
        except Exception:
            rep.line(f"CLI check failed\n```\n{traceback.format_exc()[-1500:]}\n```")
        try:
            check_pipeline(rep, a.bin, folders[name], os.path.join(a.work, "cli-" + name))
        except Exception:
            rep.line(f"pipeline check failed\n```\n{traceback.format_exc()[-1500:]}\n```")
    rep.line("\n## Logits and gradients\n")
    rep.line("| model | run | logits, relative error vs transformers f32 | top-1 agrees | "
             "gradients, cuda vs cpu |")
    rep.line("|---|---|---|---|---|")
    for name, folder in ({} if a.speed_only else folders).items():
        try:
            check_numerics(rep, a.bin, name, folder, a.work)
        except Exception:
            rep.line(f"{name}: check failed\n```\n{traceback.format_exc()[-1500:]}\n```")
    for name in [] if a.no_speed else big:
        rep.line(f"\n## steerkit's speed on {name}\n")
        steerkit_speed(rep, a.bin, folders[name], ["cuda"] if a.speed_only else ["cpu", "cuda"])
        rep.line(f"\n## transformers' speed on {name}\n")
        try:
            torch_speed(rep, folders[name])
        except Exception:
            rep.line(f"speed failed\n```\n{traceback.format_exc()[-1500:]}\n```")

if __name__ == "__main__":
    sys.exit(main())
