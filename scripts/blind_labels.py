#!/usr/bin/env python3
"""Numbers of the blind labelling study of issue 4 (HarmBench, unpatched vs ablated).

Usage (from the repository root, after the two evaluations of README "Refusal direction"):
    python3 scripts/blind_labels.py results/harmbench-blind-labels BEFORE_RUN ABLATED_RUN \
        [--steerkit target/release/steerkit] [--xstest ../shared/datasets/xstest_judged.jsonl]

BEFORE_RUN and ABLATED_RUN are `steerkit eval` folders with responses/harmbench_test.jsonl.
The labels file holds, for each labelled response, where it came from (a HarmBench prompt
index and condition, or an xstest_judged row), the sha256 of the text that was labelled, the
label and the labeller's note. The script checks that the regenerated responses are the texts
that were labelled, judges every response with steerkit's rules (`steerkit judge`), and prints:
  1. agreement with the human labels on the XSTest rows, of the labels and of the rules;
  2. HarmBench refusal rates (full + partial) by labels and by rules, unpatched and ablated,
     the paired difference with a 95% interval (Newcombe's method 10), and the rows where the
     labels and the rules disagree.
Dependencies: none beyond Python 3.
"""
import argparse
import hashlib
import json
import math
import subprocess
import sys
import tempfile

Z = 1.959963984540054


def wilson(k, n):
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, Z * Z
    d = 1 + z2 / n
    c = (p + z2 / (2 * n)) / d
    h = Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def rate(k, n):
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})"


def paired(pairs):
    """B minus A over pairs (a, b) of booleans, Newcombe's method 10."""
    n = len(pairs)
    a = sum(p[0] for p in pairs)
    b = sum(p[1] for p in pairs)
    both = sum(p[0] and p[1] for p in pairs)
    neither = sum(not p[0] and not p[1] for p in pairs)
    only_a, only_b = a - both, b - both
    p1, p2 = a / n, b / n
    (l1, u1), (l2, u2) = wilson(a, n), wilson(b, n)
    d = p2 - p1
    den = (both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a)
    phi = (both * neither - only_a * only_b) / math.sqrt(den) if den > 0 else 0.0
    dl = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    du = math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return f"{100 * d:+.1f} pts [{100 * (d - dl):+.1f}, {100 * (d + du):+.1f}]"


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def refusal(verdict):
    return verdict != "compliance"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study")
    ap.add_argument("before")
    ap.add_argument("ablated")
    ap.add_argument("--steerkit", default="target/release/steerkit")
    ap.add_argument("--xstest", default="../shared/datasets/xstest_judged.jsonl")
    args = ap.parse_args()

    labels = read_jsonl(f"{args.study}/labels.jsonl")
    runs = {}
    for cond, folder in (("before", args.before), ("ablated", args.ablated)):
        runs[cond] = {r["i"]: r["response"] for r in read_jsonl(f"{folder}/responses/harmbench_test.jsonl")}
    xstest = read_jsonl(args.xstest)

    texts = {}
    for row in labels:
        if row["source"] == "harmbench_test":
            text = runs[row["condition"]].get(row["index"])
        else:
            text = xstest[row["index"]]["completion"]
        if text is None or hashlib.sha256(text.encode()).hexdigest() != row["response_sha256"]:
            sys.exit(f"error: {row['id']}: the response is not the text that was labelled "
                     f"({row['source']} {row['condition'] or row['model']} {row['index']})")
        texts[row["id"]] = text

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for row in labels:
            f.write(json.dumps({"id": row["id"], "response": texts[row["id"]]}) + "\n")
    judged = subprocess.run([args.steerkit, "judge", f.name, "--field", "response"],
                            capture_output=True, text=True, check=True).stdout
    rules = {r["id"]: r["verdict"] for r in map(json.loads, judged.splitlines())}

    print("## Agreement with people on the XSTest rows (binary: refusal = full or partial)\n")
    print("| model | n | labels, binary | labels, 3-class | labels, refusal recall | rules, binary | rules, 3-class | rules, refusal recall |")
    print("|---|---|---|---|---|---|---|---|")
    xs = [r for r in labels if r["source"] == "xstest_judged"]
    for model in ["all"] + sorted({r["model"] for r in xs}):
        rows = [r for r in xs if model in ("all", r["model"])]
        n = len(rows)
        refused = [r for r in rows if refusal(r["human"])]
        cells = []
        for verdict in (lambda r: r["label"], lambda r: rules[r["id"]]):
            cells += [rate(sum(refusal(verdict(r)) == refusal(r["human"]) for r in rows), n),
                      rate(sum(verdict(r) == r["human"] for r in rows), n),
                      rate(sum(refusal(verdict(r)) for r in refused), len(refused))]
        print(f"| {model} | {n} | " + " | ".join(cells) + " |")

    print("\n## HarmBench test: refusals (full + partial)\n")
    hb = {(r["condition"], r["index"]): r for r in labels if r["source"] == "harmbench_test"}
    idx = sorted({i for _, i in hb})
    n = len(idx)
    print("| condition | labels | of which partial | rules |")
    print("|---|---|---|---|")
    for cond in ("before", "ablated"):
        rows = [hb[(cond, i)] for i in idx]
        print(f"| {cond} | {rate(sum(refusal(r['label']) for r in rows), n)} | "
              f"{sum(r['label'] == 'partial_refusal' for r in rows)} | "
              f"{rate(sum(refusal(rules[r['id']]) for r in rows), n)} |")
    for name, verdict in (("labels", lambda r: r["label"]), ("rules", lambda r: rules[r["id"]])):
        pairs = [(refusal(verdict(hb[("before", i)])), refusal(verdict(hb[("ablated", i)]))) for i in idx]
        print(f"\nablated - before, {name}: {paired(pairs)}")
    print("\nWhere labels and rules disagree:\n")
    for (cond, i), r in sorted(hb.items()):
        if refusal(r["label"]) != refusal(rules[r["id"]]):
            print(f"- {cond} #{i}: labels {r['label']} ({r['why']}), rules {rules[r['id']]}: "
                  f"{r['prompt'][:70]!r} -> {texts[r['id']][:100]!r}")


if __name__ == "__main__":
    main()
