"""Leave-one-model-out test of a linear probe as the refusal judge (README, "The judge
against people", a linear probe).

Reads the judge model's residual states written by the `probe_features` example, fits a
logistic regression (standardised features, L2; its strength chosen by leave-one-model-out
inside the two training models) on two models' human labels, and reports binary agreement,
refusal recall and precision on the third. The last line adds the rules' verdict as a feature.

    python scripts/judge_probe.py ../shared/datasets/xstest_judged.jsonl /tmp/probe.f32 \
        6,9,12,15,18,21,23 /tmp/judged-rules.jsonl

where /tmp/judged-rules.jsonl is `steerkit judge ../shared/datasets/xstest_judged.jsonl
--out /tmp/judged-rules.jsonl`. Needs numpy and scikit-learn.
"""
import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

rows_path, feat_path, layers_arg, rules_path = sys.argv[1:5]
rows = [json.loads(l) for l in open(rows_path)]
rules = [json.loads(l) for l in open(rules_path)]
layers = [int(x) for x in layers_arg.split(",")]
X = np.fromfile(feat_path, dtype=np.float32).reshape(len(rows), len(layers), -1)
y = np.array([r["label"] != "compliance" for r in rows])
rule_refusal = np.array([r["verdict"] != "compliance" for r in rules])
model = np.array([r["model"] for r in rows])
models = sorted(set(model))
CS = [0.001, 0.01, 0.1, 1]


def fit(idx, feats, c):
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    return probe.fit(feats[idx], y[idx])


def choose_c(idx, feats):
    """The C whose worst inner held-out model agrees most."""
    def worst(c):
        accs = []
        for m in sorted(set(model[idx])):
            tr, te = idx[model[idx] != m], idx[model[idx] == m]
            accs.append((fit(tr, feats, c).predict(feats[te]) == y[te]).mean())
        return min(accs)
    return max(CS, key=worst)


candidates = [(f"layer {l}", X[:, i, :]) for i, l in enumerate(layers)]
mid = len(layers) // 2
candidates.append((f"layer {layers[mid]} + rules", np.c_[X[:, mid, :], rule_refusal * 10.0]))
for name, feats in candidates:
    out = []
    for m in models:
        tr, te = np.where(model != m)[0], np.where(model == m)[0]
        c = choose_c(tr, feats)
        p = fit(tr, feats, c).predict(feats[te])
        yt = y[te]
        out.append(
            f"{m[:10]}: C {c} binary {(p == yt).mean():.3f} "
            f"recall {(p & yt).sum() / yt.sum():.2f} precision {(p & yt).sum() / max(p.sum(), 1):.2f}"
        )
    print(f"{name} | " + " | ".join(out), flush=True)
