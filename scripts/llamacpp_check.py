"""Shared steps of the llama.cpp checks of random models (check_olmo2_llamacpp.py,
check_qwen3_moe_llamacpp.py, check_llama_variants_llamacpp.py): reading a transformers
fixture, seeded weights, and the export-and-compare run."""
import json
import os
import shutil
import struct

import numpy as np

from check_qwen3_llamacpp import as_f16_file, compare, tokenizer_folder
from reference_qwen3 import save_safetensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_safetensors(path):
    """A float32 safetensors file as numpy arrays by name."""
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(info["shape"])
    return out


def fixture_gap(name, forward, sets):
    """The largest difference between `forward` on tests/fixtures/NAME and transformers'
    logits there; `sets` maps each logits.json key to the config keys it was made with."""
    fx = os.path.join(ROOT, "tests", "fixtures", name)
    with open(os.path.join(fx, "config.json")) as fh:
        cfg = json.load(fh)
    if "rope_theta" in cfg["rope_parameters"]:  # not per layer type (OLMo 3's are)
        cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    w = read_safetensors(os.path.join(fx, "model.safetensors"))
    with open(os.path.join(fx, "logits.json")) as fh:
        logits = json.load(fh)
    worst = 0.0
    for key, overrides in sets.items():
        c = dict(cfg, **overrides)
        for case in logits[key]:
            worst = max(worst, float(np.abs(forward(c, w, case["ids"])
                                            - np.array(case["logits"])).max()))
    print(f"numpy forward vs transformers (tests/fixtures/{name}): max abs {worst:.2e}")
    return worst


class Seeded:
    """Seeded float32 weights: matrices N(0, 0.2^2), norms N(1, 0.3^2)."""

    def __init__(self, seed=20261127):
        self.rng = np.random.default_rng(seed)
        self.w = {}

    def mat(self, name, shape):
        self.w[name] = (self.rng.standard_normal(shape) * 0.2).astype(np.float32)

    def norm(self, name, n):
        self.w[name] = (1 + 0.3 * self.rng.standard_normal(n)).astype(np.float32)

    def embeddings(self, cfg):
        """The embedding, an untied head and the final norm."""
        v, d = cfg["vocab_size"], cfg["hidden_size"]
        self.mat("model.embed_tokens.weight", (v, d))
        self.mat("lm_head.weight", (v, d))
        self.norm("model.norm.weight", d)

    def attention(self, p, cfg, qk_norm):
        """Block `p`'s q, k, v and o projections and q/k norms of `qk_norm(heads)` entries
        (none when `qk_norm` is None)."""
        d, hd = cfg["hidden_size"], cfg["head_dim"]
        nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.mat(f"{p}.self_attn.q_proj.weight", (nh * hd, d))
        self.mat(f"{p}.self_attn.k_proj.weight", (nkv * hd, d))
        self.mat(f"{p}.self_attn.v_proj.weight", (nkv * hd, d))
        self.mat(f"{p}.self_attn.o_proj.weight", (d, nh * hd))
        if qk_norm is not None:
            self.norm(f"{p}.self_attn.q_norm.weight", qk_norm(nh))
            self.norm(f"{p}.self_attn.k_norm.weight", qk_norm(nkv))

    def block(self, p, cfg, qk_norm):
        """Block `p`'s two input norms (attention's, MLP's) and its attention (`attention`)."""
        d = cfg["hidden_size"]
        self.norm(f"{p}.input_layernorm.weight", d)
        self.norm(f"{p}.post_attention_layernorm.weight", d)
        self.attention(p, cfg, qk_norm)

    def mlp(self, p, f, d, names=("gate_proj", "up_proj", "down_proj")):
        """A gated MLP under `p` of `f` channels over the hidden size `d`, its gate, up and
        down named `names`."""
        self.mat(f"{p}.{names[0]}.weight", (f, d))
        self.mat(f"{p}.{names[1]}.weight", (f, d))
        self.mat(f"{p}.{names[2]}.weight", (d, f))


def run(steerkit, source, work, label, cfg, w, forward, control_cfg, what, f32_cache=False):
    """Makes WORK/tokens (Qwen's tokenizer from the GGUF `source`), then `check` with the
    weights `w(cfg)` for `cfg` with that vocabulary. True when it passes."""
    tokens = os.path.join(work, "tokens")
    cfg = dict(cfg, vocab_size=tokenizer_folder(steerkit, source, work, tokens))
    return check(steerkit, work, tokens, label, cfg, w(cfg), forward, control_cfg, what,
                 f32_cache)


def check(steerkit, work, tokens, label, cfg, w, forward, control_cfg, what, f32_cache=False):
    """Writes the folder WORK/LABEL (tokenizer files from `tokens`, the weights `w`), exports
    it to GGUF and compares llama.cpp with `forward` on the f16-rounded weights, and with it
    under `cfg` changed by `control_cfg`, which must differ (`what` names that control;
    `f32_cache`: llama.cpp keeps keys and values in f32, not its default f16). True when it
    passes."""
    folder = os.path.join(work, label)
    os.makedirs(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokens, f), folder)
    save_safetensors(w, os.path.join(folder, "model.safetensors"))
    w16 = as_f16_file(w)
    return compare(steerkit, folder, work, label, cfg, w16, w16, dict(cfg, **control_cfg),
                   forward=forward, what=what, f32_cache=f32_cache)
