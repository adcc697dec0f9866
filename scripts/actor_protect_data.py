#!/usr/bin/env python3
"""Write the capability files of the README's "ACTOR, sixth round" (gradient projection used
to protect harmful behaviour). Run from the repository root, with ../shared beside it:

    python3 scripts/actor_protect_data.py /tmp/exp

writes
  OUT/protect.jsonl     64 built-in harmless prompts, then the 312 harmful training prompts
                        of the Qwen config (run qh: --ogp act --ogp-data OUT/protect.jsonl
                        --ogp-limit 376)
  OUT/harmful312.jsonl  the 312 harmful training prompts alone (run qg: --ogp grad
                        --ogp-data OUT/harmful312.jsonl --ogp-limit 312)

The harmful training prompts are those `steerkit actor` reads from the config's `harmful`
list: the first 128 of harmful_train, then the `.train` splits of the built-in `harmful` and
`pairs_unsafe` sets (every third prompt, from the third, is their `.val` split).
"""
import json
import os
import sys


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_split(path):
    return [r for i, r in enumerate(rows(path)) if i % 3 != 2]


def write(path, prompts):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p["prompt"]}) + "\n")
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    sets = "crates/steerkit-data/sets"
    harmful = (rows("../shared/datasets/harmful_train.jsonl")[:128]
               + train_split(os.path.join(sets, "harmful.jsonl"))
               + train_split(os.path.join(sets, "pairs_unsafe.jsonl")))
    harmless = rows(os.path.join(sets, "harmless.jsonl"))[:64]
    write(os.path.join(out, "protect.jsonl"), harmless + harmful)
    write(os.path.join(out, "harmful312.jsonl"), harmful)
    print("wrote %d + %d prompts to %s" % (len(harmless) + len(harmful), len(harmful), out))


if __name__ == "__main__":
    main()
