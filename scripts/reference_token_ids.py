#!/usr/bin/env python3
# Write a reference fixture of llama.cpp token ids for steerkit's tokenizer tests.
#
# For each of the two test models under checkpoints/models/ (smollm2-135m-instruct and
# qwen2.5-coder-0.5b-instruct) this loads the GGUF vocabulary with llama-cpp-python
# (vocab_only=True, so no weights are read) and records:
#   - metadata: tokenizer.ggml.add_bos_token (if present), the bos/eos token ids, and the chat
#     template string from tokenizer.chat_template;
#   - "raw" cases: llm.tokenize(S, add_bos=False, special=False) for a fixed list of strings,
#     plus llm.detokenize(ids) of the result;
#   - "chat" cases: the model's own chat template rendered with jinja2 for a fixed list of user
#     messages (once with no system message, once with system "You are terse."), with
#     add_generation_prompt=True, and llm.tokenize(rendered, add_bos=False, special=True).
# The output is pretty-printed UTF-8 JSON (ensure_ascii=False):
#   {"llama_cpp_python_version": ..., "models": {NAME: {"metadata": {...},
#     "raw": [{"text", "ids", "detok"}], "chat": [{"user", "system", "rendered", "ids"}]}}}
#
# Usage (run from the repository root):
#   python scripts/reference_token_ids.py tests/fixtures/llamacpp_token_ids.json
#
# Dependencies (llama-cpp-python compiles llama.cpp from its sdist; it takes a while on few cores):
#   python3 -m venv /work/venvs/llamacpp
#   CMAKE_BUILD_PARALLEL_LEVEL=2 /work/venvs/llamacpp/bin/pip install llama-cpp-python jinja2
#   # only if the default build fails: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install ...
#   /work/venvs/llamacpp/bin/python scripts/reference_token_ids.py tests/fixtures/llamacpp_token_ids.json
# Models directory: checkpoints/models/ (override with STEERKIT_MODELS_DIR); fetch them with
# scripts/fetch-models.sh.
import json
import os
import re
import sys

import jinja2
import llama_cpp
from llama_cpp import Llama

MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]

RAW_STRINGS = [
    "Hello world",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "How do I kill a Python process?",
    "12345 and 3.14159 and 1,000,000",
    "line one\r\nline two\r\n",
    "tabs\tand\nnewlines\n\n",
    "naïve café résumé",
    "日本語のテキスト",
    "emoji 🤖🔥 and 👨‍👩‍👧",
    "Ünïcödé ÅÄÖ ß",
    "<|im_start|>user is literal text here",
    "don't you'll I'm",
    "x^2 + y_1 = {a: [1, 2]}",
    "    indented code\n\tdef f(x):\n\t\treturn x*2",
    "",
]

CHAT_USERS = [
    "How do I make a pipe bomb?",
    "How can I kill a Python process?",
    "Why should ants earn less than men?",
    "emoji 🤖 and digits 2024\r\nnew line",
]

SYSTEM = "You are terse."


def raise_exception(message):
    # Some HF chat templates call raise_exception(); jinja2 has no such builtin.
    raise jinja2.exceptions.TemplateError(message)


def token_text(llm, tok):
    if tok is None or tok < 0:
        return None
    return llm.detokenize([tok], special=True).decode("utf-8", errors="replace")


def model_fixture(path):
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    md = llm.metadata
    template = md.get("tokenizer.chat_template")
    bos_id = llm.token_bos()
    eos_id = llm.token_eos()
    bos_text = token_text(llm, bos_id) or ""
    eos_text = token_text(llm, eos_id) or ""

    metadata = {
        "add_bos_token": md.get("tokenizer.ggml.add_bos_token"),
        "add_eos_token": md.get("tokenizer.ggml.add_eos_token"),
        "add_space_prefix": md.get("tokenizer.ggml.add_space_prefix"),
        "tokenizer_model": md.get("tokenizer.ggml.model"),
        "tokenizer_pre": md.get("tokenizer.ggml.pre"),
        "bos_token_id": bos_id,
        "bos_token": bos_text,
        "eos_token_id": eos_id,
        "eos_token": eos_text,
        "n_vocab": llm.n_vocab(),
        "chat_template": template,
    }

    raw = []
    for s in RAW_STRINGS:
        ids = llm.tokenize(s.encode("utf-8"), add_bos=False, special=False)
        detok = llm.detokenize(ids).decode("utf-8", errors="replace")
        raw.append({"text": s, "ids": list(ids), "detok": detok})

    chat = []
    if template is not None:
        env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
        env.globals["raise_exception"] = raise_exception
        tmpl = env.from_string(template)
        for u in CHAT_USERS:
            for system in (None, SYSTEM):
                messages = [{"role": "user", "content": u}]
                if system is not None:
                    messages.insert(0, {"role": "system", "content": system})
                rendered = tmpl.render(
                    messages=messages,
                    add_generation_prompt=True,
                    bos_token=bos_text,
                    eos_token=eos_text,
                )
                ids = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
                chat.append({"user": u, "system": system, "rendered": rendered, "ids": list(ids)})

    return {"metadata": metadata, "raw": raw, "chat": chat}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/reference_token_ids.py OUT.json")
    out = sys.argv[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    models_dir = os.environ.get("STEERKIT_MODELS_DIR", os.path.join(root, "checkpoints", "models"))
    result = {"llama_cpp_python_version": llama_cpp.__version__, "models": {}}
    for name in MODELS:
        path = os.path.join(models_dir, name + ".gguf")
        if not os.path.isfile(path):
            sys.exit(f"reference_token_ids: missing model {path} (run scripts/fetch-models.sh)")
        result["models"][name] = model_fixture(path)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    text = json.dumps(result, ensure_ascii=False, indent=2)
    # Keep each id list on one line so the fixture stays short and diffable.
    text = re.sub(
        r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    with open(out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
