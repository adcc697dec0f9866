#!/usr/bin/env python3
"""Reference token ids of llama.cpp's SentencePiece ("llama") tokenizer, for steerkit's test.

Neither model here has a SentencePiece vocabulary (both are byte-level BPE), so this script
makes a small real one: it trains a SentencePiece BPE model the way Llama 2's was set up
(byte fallback, digits split, whitespace kept, no normalisation) on botchan.txt, the English
novel that ships with sentencepiece's own tests, writes its vocabulary as a vocab-only GGUF
file the way llama.cpp's converter writes SentencePiece vocabularies (tokens, scores, token
types: normal, unknown, control, user-defined, byte), and tokenizes fixed texts with
llama.cpp (llama-cpp-python, vocab_only), plain and with special tokens parsed.

Writes
  tests/fixtures/spm_vocab.gguf   the vocabulary (about 40 KB)
  tests/fixtures/spm_ids.json     texts and llama.cpp's ids

How to run (pip install llama-cpp-python gguf sentencepiece; pip download of the
sentencepiece 0.2.0 source for botchan.txt needs PyPI):
  python scripts/reference_spm_ids.py
"""

import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import gguf
import llama_cpp
import sentencepiece as spm

from gguf_vocab import vocab_only_writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")

TEXTS = [
    "Hello world",
    " Hello world",
    "Hello  world, two spaces",
    "   leading and trailing   ",
    "line one\nline two\n\nthree",
    "Numbers 12345 and 3.14159, 2024-11-26",
    "I was a boy who never got a chance to play.",
    "The master said: 'Can you jump from the second floor?'",
    "café naïve Zürich 日本語 🦙",
    "tab\tseparated\tvalues",
    "<s> is text here, and so is </s>",
    "",
    "a",
    "supercalifragilisticexpialidocious",
]
# Texts with special tokens, tokenized with them parsed (a chat turn).
SPECIAL = [
    "<s>[INST] How do I kill a Python process? [/INST]",
    "[INST] Hello [/INST] Hi there.</s><s>[INST] Again [/INST]",
]


def train(tmp):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "-q", "-d", tmp, "sentencepiece==0.2.0"], check=True)
    sdist = glob.glob(os.path.join(tmp, "sentencepiece-*.tar.gz"))[0]
    with tarfile.open(sdist) as t:
        member = [m for m in t.getmembers() if m.name.endswith("test/botchan.txt")][0]
        t.extract(member, tmp)
    corpus = os.path.join(tmp, member.name)
    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, model_type="bpe", vocab_size=1000,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        user_defined_symbols=["[INST]", "[/INST]"], unk_id=0, bos_id=1, eos_id=2,
        minloglevel=2)
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


def write_gguf(sp, path):
    w = vocab_only_writer(path, "llama", "default")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif sp.id_to_piece(i) in ("[INST]", "[/INST]"):
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        sp = train(tmp)
        gguf_path = os.path.join(OUT, "spm_vocab.gguf")
        write_gguf(sp, gguf_path)
    llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
    raw = [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)}
           for t in TEXTS]
    for case in raw:
        case["detok"] = llm.detokenize(case["ids"]).decode("utf-8", errors="replace")
    special = [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)}
               for t in SPECIAL]
    fx = {"source": "scripts/reference_spm_ids.py", "llama_cpp_python": llama_cpp.__version__,
          "bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id(),
          "raw": raw, "special": special}
    with open(os.path.join(OUT, "spm_ids.json"), "w") as f:
        json.dump(fx, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", gguf_path, "and spm_ids.json:", len(raw), "+", len(special), "cases")


if __name__ == "__main__":
    main()
