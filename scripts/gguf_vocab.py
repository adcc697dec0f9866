"""A vocab-only GGUF writer for the tokenizer fixtures (reference_spm_ids.py,
reference_gpt4o_ids.py): a `llama` file with the few hyper-parameters llama.cpp reads even for
a vocab-only load."""
import gguf


def vocab_only_writer(path, tokenizer_model, pre):
    """A GGUFWriter at `path` with those hyper-parameters and `tokenizer.ggml.model`/`pre` set;
    the caller adds the vocabulary and writes the file."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    return w
