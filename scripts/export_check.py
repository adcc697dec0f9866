"""Shared steps of the scripts that check `steerkit export` against transformers
(check_multimodal_export.py, check_gpt_oss_export.py): a word-level tokenizer for a tiny
random model, a direction found by `steerkit extract` and `select`, and directional ablation
by hooks in transformers."""
import contextlib
import json
import os
import subprocess

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace


def tokenizer_files(folder, vocab):
    """tokenizer.json (words `w0` .. `w{vocab-1}`) and tokenizer_config.json with a chat
    template, in `folder`."""
    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as fh:
        json.dump({"bos_token": "w2", "eos_token": "w1", "chat_template":
                   "{% for m in messages %}w3 {{ m['content'] }} w4 w5{% endfor %}"}, fh)


def direction_run(steerkit, src, work, top):
    """A run folder with a direction that `steerkit extract` and `select --layer 1 --pos -1`
    find on 8 + 8 prompts of 6 random words `w10` .. `w{top-1}`."""
    rng = torch.Generator().manual_seed(1)
    files = []
    for role in ("harmful", "harmless"):
        path = os.path.join(work, f"{role}.txt")
        with open(path, "w") as fh:
            for _ in range(8):
                words = torch.randint(10, top, (6,), generator=rng).tolist()
                fh.write(" ".join(f"w{w}" for w in words) + "\n")
        files.append(path)
    run = os.path.join(work, "run-" + os.path.basename(src))
    quiet = dict(check=True, stdout=subprocess.DEVNULL)
    subprocess.run([steerkit, "extract", "-m", src, "--harmful", files[0], "--harmless",
                    files[1], "--limit", "8", "--out", run], **quiet)
    subprocess.run([steerkit, "select", "-m", src, "--run", run, "--harmful-val", files[0],
                    "--harmless-val", files[1], "--limit", "8", "--layer", "1", "--pos", "-1"],
                   **quiet)
    return run


@contextlib.contextmanager
def ablation_hooks(lm, writers, r):
    """Within the block: `r` (a unit vector) projected out of the output of every module in
    `writers` (a tuple output's first element) and, unless `lm` is None, out of the input
    embeddings `lm` is called with (a multimodal model's language model)."""
    cut = lambda h: h - (h @ r)[..., None] * r

    def embeds(_module, args, kwargs):
        kwargs["inputs_embeds"] = cut(kwargs["inputs_embeds"])
        return args, kwargs

    def output(_module, _args, out):
        return (cut(out[0]), *out[1:]) if isinstance(out, tuple) else cut(out)

    hooks = [m.register_forward_hook(output) for m in writers]
    if lm is not None:
        hooks.append(lm.register_forward_pre_hook(embeds, with_kwargs=True))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
