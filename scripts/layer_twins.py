"""Which block separates unsafe twins from safe ones along the refusal direction (README,
"ACTOR, the block"). Reads the states written by the `state_dump` example (and its `.json` shape) for three files in
this order: 128 harmful prompts, 128 harmless prompts, and a twin file (`label` safe/unsafe,
twins on consecutive lines). Per layer: the refusal direction R (harmful minus harmless mean
of the last-token block outputs, unit length), then the AUC of the projections on R for
harmful vs harmless and for unsafe vs safe twins, the twins' d', and the share of pairs whose
unsafe twin projects higher than its safe one.

    head -128 ../shared/datasets/harmful_train.jsonl > /tmp/h.jsonl
    head -128 ../shared/datasets/harmless_train.jsonl > /tmp/b.jsonl
    cargo run --release -p steerkit-actor --example state_dump -- \
        checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf /tmp/states.f32 400 \
        /tmp/h.jsonl /tmp/b.jsonl crates/steerkit-data/sets/fresh_twins.jsonl
    python scripts/layer_twins.py /tmp/states.f32 crates/steerkit-data/sets/fresh_twins.jsonl 128 128

Needs numpy.
"""
import json
import sys

import numpy as np

states_path, twins_path, n_harmful, n_harmless = sys.argv[1:5]
n_h, n_b = int(n_harmful), int(n_harmless)
labels = [json.loads(l)["label"] for l in open(twins_path) if l.strip()]
shape = json.load(open(states_path + ".json"))
n = n_h + n_b + len(labels)
assert shape["prompts"] == n, f"{states_path} holds {shape['prompts']} prompts, not {n}"
L = shape["layers"]
X = np.fromfile(states_path, dtype=np.float32).reshape(n, L, shape["hidden"])
H, B, T = X[:n_h], X[n_h : n_h + n_b], X[n_h + n_b :]
S = T[[i for i, l in enumerate(labels) if l == "safe"]]
U = T[[i for i, l in enumerate(labels) if l == "unsafe"]]
assert len(S) == len(U), "the twin file must hold as many safe as unsafe prompts"


def auc(a, b):
    """P(a > b) for two samples of continuous values (ranks; ties, which do not occur in
    these states, would be broken by order)."""
    r = np.concatenate([a, b]).argsort(kind="stable").argsort() + 1.0
    return (r[: len(a)].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b))


print("layer  AUC harmful/harmless  AUC unsafe/safe twins  twins d'  pairs unsafe > safe")
for l in range(L):
    r = H[:, l].mean(0) - B[:, l].mean(0)
    r /= np.linalg.norm(r)
    pu, ps = U[:, l] @ r, S[:, l] @ r
    d = (pu.mean() - ps.mean()) / np.sqrt((pu.var() + ps.var()) / 2)
    print(
        f"{l:5d}  {auc(H[:, l] @ r, B[:, l] @ r):20.3f}  {auc(pu, ps):21.3f}  {d:8.2f}  {np.mean(pu > ps):19.3f}"
    )
