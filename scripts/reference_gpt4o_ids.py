#!/usr/bin/env python3
"""Reference token ids of llama.cpp's `gpt-4o` pre-tokenizer, for steerkit's test.

Phi-4-mini's tokenizer splits text as GPT-4o's (o200k) does: case-aware letter runs with the
contraction kept on the word, digits in threes, punctuation runs that take a trailing `/`.
No such tokenizer is here, so this script makes a small real one: a byte-level BPE of 1,000
entries trained with the Hugging Face `tokenizers` library on the prompts of
../shared/datasets/harmless_train.jsonl, with that split (the regex of Phi-4-mini's
tokenizer.json) and four special tokens in Phi-4-mini's style. It writes the vocabulary as a
vocab-only GGUF file the way llama.cpp's converter writes byte-level BPE vocabularies
(`tokenizer.ggml.pre = gpt-4o`), tokenizes fixed texts with llama.cpp (llama-cpp-python,
vocab_only) and with the tokenizer itself, and fails unless the two agree.

Writes
  tests/fixtures/gpt4o_tokenizer.json   the tokenizer (Hugging Face format)
  tests/fixtures/gpt4o_ids.json         texts and llama.cpp's ids

How to run (pip install llama-cpp-python gguf tokenizers):
  python scripts/reference_gpt4o_ids.py
"""

import json
import os
import sys
import tempfile

import gguf
import llama_cpp
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from gguf_vocab import vocab_only_writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")
CORPUS = os.path.join(ROOT, "..", "shared", "datasets", "harmless_train.jsonl")

# Phi-4-mini's tokenizer.json split (GPT-4o's o200k pattern).
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
         r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
         r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}|"
         r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]

TEXTS = [
    "Hello world",
    "HelloWorld camelCase XMLHttpRequest iPhone McDonald's",
    "WE'LL SEE IT'S you're they'd I'M don't",
    "Numbers 12345 and 3.14159, 2024-11-26",
    "paths: /usr/local/bin\n/etc and a/b//c\n//\n",
    "line one\n\nline three\r\n   indented\n\n\n",
    "  leading spaces and trailing  ",
    "café naïve Zürich Ελληνικά русский 日本語 🦙",
    "fn main() { let x: Vec<u8> = vec![0x1F; 256]; } // $$$ ... !!!",
    "Can you recommend a chocolate cake recipe for two?",
    "<|user|> is text here",
    "",
]
# Texts with special tokens, tokenized with them parsed (a chat turn).
SPECIAL_TEXTS = ["<|user|>How do I kill a Python process?<|end|><|assistant|>"]


def train():
    with open(CORPUS) as f:
        prompts = [json.loads(line)["prompt"] for line in f]
    # Where the split differs from Llama 3's (a contraction kept on its word; a `/` taken into
    # the punctuation run before it) and from single digits, so that the vocabulary has
    # entries across those seams and the ids tell the splits apart.
    prompts += ["Numbers 12345 and 3.14159, 2024-11-26, 100 and 1000, 256 and 42."] * 50
    prompts += ["I don't know; they're sure it's fine, aren't they? We'll see, I'm told.",
                "Don't. WON'T. She'd've. ./\n/ :/\n// */\n/"] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(prompts, trainer)
    return tok


def write_gguf(tok, path):
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    types = [gguf.TokenType.CONTROL if t in SPECIAL else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    w = vocab_only_writer(path, "gpt2", "gpt-4o")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_eos_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    tok = train()
    tok.save(os.path.join(OUT, "gpt4o_tokenizer.json"))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vocab.gguf")
        write_gguf(tok, path)
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        raw = [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)}
               for t in TEXTS]
        special = [{"text": t,
                    "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)}
                   for t in SPECIAL_TEXTS]
    bad = 0
    for case in raw:
        hf = tok.encode(case["text"], add_special_tokens=False).ids
        if case["text"] in [s for s in SPECIAL_TEXTS] or "<|" in case["text"]:
            # A special token's text is split as text only by llama.cpp's raw mode.
            continue
        if hf != case["ids"]:
            bad += 1
            print(f"differs: {case['text']!r}\n  tokenizers {hf}\n  llama.cpp  {case['ids']}")
    for case in special:
        hf = tok.encode(case["text"], add_special_tokens=False).ids
        if hf != case["ids"]:
            bad += 1
            print(f"differs: {case['text']!r}\n  tokenizers {hf}\n  llama.cpp  {case['ids']}")
    fx = {"source": "scripts/reference_gpt4o_ids.py", "llama_cpp_python": llama_cpp.__version__,
          "raw": raw, "special": special}
    with open(os.path.join(OUT, "gpt4o_ids.json"), "w") as f:
        json.dump(fx, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote gpt4o_tokenizer.json and gpt4o_ids.json: {len(raw)} + {len(special)} cases, "
          f"{bad} where tokenizers and llama.cpp differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
