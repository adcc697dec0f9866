//! Tokenizers: from `tokenizer.json`, or built from GGUF metadata so that ids equal llama.cpp's.
//!
//! llama.cpp splits control tokens out of text only when asked to parse special tokens, and
//! always splits user-defined tokens. The same split is reproduced here: control tokens are
//! special added tokens (split only in [`Tok::encode_chat`]), user-defined tokens are plain added
//! tokens.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{ModelError, Result};

/// GPT-2 style split used by llama.cpp's Qwen2 pre-tokenizer.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3 ("llama-bpe"): like Qwen2 but digits in groups of up to three.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer with the special-token facts generation needs.
#[derive(Clone)]
pub struct Tok {
    /// Splits control tokens out of text (for rendered chat templates).
    chat: Tokenizer,
    /// Treats control tokens as plain text (for untrusted user text).
    raw: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Tokens that end an assistant turn (eos, `<|im_end|>`, `<|eot_id|>`, ...).
    pub stop_ids: Vec<u32>,
    /// Id used to fill left padding (never attended to).
    pub pad_id: u32,
    /// Whether the model expects BOS before a prompt that does not already start with it.
    pub add_bos: bool,
}

/// Token strings that end a turn in the chat formats in use.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

impl Tok {
    /// Wraps a tokenizer; `eos`/`bos` are token strings or ids found by the loader.
    pub fn new(tokenizer: Tokenizer, bos_id: Option<u32>, eos_ids: &[u32], add_bos: bool) -> Self {
        let mut raw = tokenizer.clone();
        raw.set_encode_special_tokens(true);
        let mut stop_ids: Vec<u32> = eos_ids.to_vec();
        let added = tokenizer.get_added_tokens_decoder();
        for s in END_OF_TURN {
            // Only special tokens end a turn: a plain vocabulary entry spelled `</s>` does not.
            let special = |id: &u32| added.get(id).is_some_and(|t| t.special);
            if let Some(id) = tokenizer.token_to_id(s).filter(special) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        let eos_id = eos_ids.first().copied();
        let pad_id = eos_id.or(bos_id).unwrap_or(0);
        Tok {
            chat: tokenizer,
            raw,
            bos_id,
            eos_id,
            stop_ids,
            pad_id,
            add_bos,
        }
    }

    /// The underlying tokenizer (special tokens parsed).
    pub fn inner(&self) -> &Tokenizer {
        &self.chat
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.chat.get_vocab_size(true)
    }

    /// Ids of text in which control tokens (e.g. `<|im_start|>`) are recognised.
    pub fn encode_chat(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.chat.encode(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids of plain text: control-token strings are tokenized as ordinary characters.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.raw.encode(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of ids; `skip_special` drops control tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.chat.decode(ids, skip_special).map_err(tok_err)
    }

    /// The string of one token id.
    pub fn token(&self, id: u32) -> Option<String> {
        self.chat.id_to_token(id)
    }

    /// The id of a token string.
    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.chat.token_to_id(s)
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// GGUF token kinds (`tokenizer.ggml.token_type`).
pub(crate) const TOKEN_CONTROL: i32 = 3;
pub(crate) const TOKEN_USER_DEFINED: i32 = 4;

/// Builds a byte-level BPE tokenizer from GGUF vocabulary data (`tokenizer.ggml.model = gpt2`).
pub(crate) fn bpe_from_gguf(
    pre: &str,
    tokens: &[String],
    merges: &[String],
    token_types: &[i32],
) -> Result<Tokenizer> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| ModelError::Tokenizer(format!("malformed merge `{m}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(tok_err)?;
    let mut tk = Tokenizer::new(bpe);
    let byte_level =
        |regex: bool| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, regex));
    let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        let s = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        Ok(PreTokenizerWrapper::Split(s))
    };
    let pre_tok = match pre {
        "smollm" => Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), byte_level(true)]),
        "gpt2" | "default" => Sequence::new(vec![byte_level(true)]),
        "qwen2" => Sequence::new(vec![split(QWEN2_PATTERN)?, byte_level(false)]),
        "llama-bpe" | "llama3" | "smaug-bpe" => Sequence::new(vec![split(LLAMA3_PATTERN)?, byte_level(false)]),
        other => {
            return Err(ModelError::Tokenizer(format!(
                "GGUF pre-tokenizer `{other}` is not supported (supported: smollm, gpt2, qwen2, llama-bpe); load the Hugging Face folder instead"
            )))
        }
    };
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre_tok)));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (t, &ty) in tokens.iter().zip(token_types) {
        match ty {
            TOKEN_CONTROL => special.push(AddedToken::from(t.clone(), true)),
            TOKEN_USER_DEFINED => user.push(AddedToken::from(t.clone(), false).normalized(false)),
            _ => {}
        }
    }
    tk.add_special_tokens(special).map_err(tok_err)?;
    tk.add_tokens(user).map_err(tok_err)?;
    Ok(tk)
}
