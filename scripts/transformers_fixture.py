"""Shared steps of the scripts that make a tiny fixture with transformers itself
(reference_olmo2.py, reference_qwen3_moe.py): random weights, the folder, float64 logits."""
import json
import os

import torch
import transformers

# Token sequences of 5, 9 and 13 tokens (ids below 96, the fixtures' vocabulary).
CASES = [[1, 5, 9, 13, 2], [3, 95, 0, 47, 47, 8, 61, 20, 11], list(range(7, 7 + 13 * 5, 5))]


def save_random(model, out):
    """Draws every weight of `model` at random (norms around 1, the rest N(0, 0.2^2): some
    start at zero in transformers, such as a router) and saves it as float32 in `out`,
    without a generation config and readable by everyone."""
    model = model.float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    os.chmod(os.path.join(out, "model.safetensors"), 0o644)


def logits_of(cls, folder, **overrides):
    """`cls` loaded from `folder` in float64 (eager attention and experts), with the config
    keys in `overrides`: its logits at every position of each of CASES, rounded to 7
    decimals."""
    model = cls.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager",
                                experts_implementation="eager", **overrides).eval()
    out = []
    with torch.no_grad():
        for ids in CASES:
            logits = model(torch.tensor([ids])).logits[0]
            out.append({"ids": ids, "logits": [[round(x, 7) for x in row]
                                               for row in logits.tolist()]})
    return out


def write_logits(folder, script, **sets):
    """logits.json in `folder`: the script's name, transformers' version and each set."""
    with open(os.path.join(folder, "logits.json"), "w") as f:
        json.dump({"script": script, "transformers": transformers.__version__, **sets}, f)
    print("wrote", folder, "with", ", ".join(f"{len(v)} {k}" for k, v in sets.items()))
