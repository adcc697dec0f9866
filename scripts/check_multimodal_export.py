#!/usr/bin/env python3
"""Checks `steerkit export` of multimodal models against transformers.

Usage (from the repository root, after `cargo build --release`, with torch and transformers):
    python3 scripts/check_multimodal_export.py [--steerkit target/release/steerkit]

Makes tiny random Gemma3ForConditionalGeneration and Mistral3ForConditionalGeneration models
with transformers (Mistral 3 with its head tied and untied), each with a small word-level
tokenizer and an image processor's file (its settings only), and exports each with steerkit twice:

- whole (the default): transformers loads the folder as the same class, and its logits for a
  prompt holding an image equal the source's; the image processor's file is carried;
- `--text-only`: transformers loads the folder as a causal LM, and its logits for a text
  prompt equal the source's;

and each Mistral 3 model once more with `--orthogonalize` against a direction that `steerkit
extract` and `select --layer 1 --pos -1` find on random word prompts: the whole folder's
logits equal the source's under directional ablation at every layer (hooks in transformers on
the input embeddings, image features included, and every o_proj and down_proj output), on a
text prompt and on a prompt holding an image.

Prints the largest difference of each and exits 1 when one is above 1e-5.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file

from export_check import ablation_hooks, direction_run, tokenizer_files

VOCAB = 300


def gemma3():
    cfg = transformers.Gemma3Config(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=299, boi_token_index=297,
        eoi_token_index=298)
    model = transformers.Gemma3ForConditionalGeneration(cfg)
    image = dict(pixel_values=torch.randn(1, 3, 28, 28))
    ids = [2, 5, 297] + [299] * 4 + [298, 7, 9]
    return model, {"image_processor_type": "Gemma3ImageProcessor", "size": {"height": 28, "width": 28}}, ids, image


def mistral3(tied):
    cfg = transformers.Mistral3Config(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, tie_word_embeddings=tied),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=56, patch_size=14, head_dim=16),
        image_token_index=299, spatial_merge_size=2, tie_word_embeddings=tied)
    model = transformers.Mistral3ForConditionalGeneration(cfg)
    image = dict(pixel_values=torch.randn(1, 3, 56, 56), image_sizes=torch.tensor([[56, 56]]))
    ids = [2, 5] + [299] * 4 + [7, 9]
    return model, {"image_processor_type": "PixtralImageProcessor", "patch_size": 14}, ids, image


def logits(model, ids, image):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), **image).logits[0].double()


def ablated(model, r, ids, image):
    """Logits with r projected out of the input embeddings and every block's outputs."""
    lm = model.model.language_model
    writers = [m for blk in lm.layers for m in (blk.self_attn.o_proj, blk.mlp.down_proj)]
    with ablation_hooks(lm, writers, r):
        return logits(model, ids, image)


def check_orthogonalized(name, model, ids, image, steerkit, work):
    src = os.path.join(work, name)
    run = direction_run(steerkit, src, work, VOCAB - 10)
    out = os.path.join(work, f"{name}-orthogonalized")
    subprocess.run([steerkit, "export", "-m", src, "--run", run, "--orthogonalize", "--out", out],
                   check=True, stdout=subprocess.DEVNULL)
    sel = json.load(open(os.path.join(run, "selected.json")))
    r = load_file(os.path.join(run, "directions.safetensors"))["candidates"][sel["layer"], sel["pos"]]
    r = (r.double() / r.double().norm()).float()
    back = type(model).from_pretrained(out).eval()
    worst = 0.0
    text = [i for i in ids if i < 297]
    for how, prompt, extra in [("text", text, {}), ("image", ids, image)]:
        gap = (logits(back, prompt, extra) - ablated(model, r, prompt, extra)).abs().max().item()
        worst = max(worst, gap)
        print(f"{name}, orthogonalized whole, {how} prompt: "
              f"max |export - ablation at every layer| = {gap:.2e}")
    return worst


def check(name, made, steerkit, work):
    model, processor, ids, image = made
    model = model.float().eval()
    # transformers starts some weights at zero (Gemma 3's image projection), which would hide
    # the vision tower from the logits.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.2)
    src = os.path.join(work, name)
    model.save_pretrained(src)
    with open(os.path.join(src, "preprocessor_config.json"), "w") as fh:
        json.dump(processor, fh)
    tokenizer_files(src, VOCAB)
    want = logits(model, ids, image)
    worst = 0.0
    for how, extra in [("whole", []), ("text-only", ["--text-only"])]:
        out = os.path.join(work, f"{name}-{how}")
        subprocess.run([steerkit, "export", "-m", src, "--out", out, *extra], check=True,
                       stdout=subprocess.DEVNULL)
        if how == "whole":
            back = type(model).from_pretrained(out).eval()
            got = logits(back, ids, image)
            assert os.path.isfile(os.path.join(out, "preprocessor_config.json")), out
            compare = want
        else:
            back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
            text = [i for i in ids if i < 297]
            got = logits(back, text, {})
            compare = logits(model, text, {})
        gap = (got - compare).abs().max().item()
        worst = max(worst, gap)
        print(f"{name}, {how} ({type(back).__name__}): max |export - source| = {gap:.2e}")
    if name.startswith("mistral3"):
        worst = max(worst, check_orthogonalized(name, model, ids, image, steerkit, work))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steerkit", default="target/release/steerkit")
    args = ap.parse_args()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        worst = max(check("gemma3", gemma3(), args.steerkit, work),
                    check("mistral3-tied", mistral3(True), args.steerkit, work),
                    check("mistral3-untied", mistral3(False), args.steerkit, work))
    sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main()
