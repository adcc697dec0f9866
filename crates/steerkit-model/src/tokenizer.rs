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

/// GPT-4o's (o200k) split, llama.cpp's `gpt-4o` (Phi-4-mini): letter runs that break where
/// lower case turns to upper, a contraction kept on its word, digits in groups of up to three,
/// punctuation runs that take a trailing `/` with their line breaks.
const GPT4O_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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
    /// Whether the model writes OpenAI's harmony format (gpt-oss): an answer is a reasoning
    /// message (`<|channel|>analysis<|message|>...<|end|>`) and then the final one
    /// (`<|start|>assistant<|channel|>final<|message|>...`), so `<|end|>` does not end the
    /// turn and [`Tok::answer`] reads the final message.
    pub harmony: bool,
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
        let special = |s: &str| {
            tokenizer
                .token_to_id(s)
                .is_some_and(|id| added.get(&id).is_some_and(|t| t.special))
        };
        let harmony = special("<|channel|>") && special("<|message|>");
        for s in END_OF_TURN {
            // In harmony `<|end|>` closes a message (the reasoning), not the turn.
            if harmony && *s == "<|end|>" {
                continue;
            }
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
            harmony,
        }
    }

    /// The answer in generated ids `ids`, as the user reads it: their text without control
    /// tokens, or for a harmony model ([`Tok::harmony`]) the final message's text, when the
    /// answer got that far (else the whole text, reasoning included, without control tokens).
    pub fn answer(&self, ids: &[u32]) -> Result<String> {
        match self.final_message(ids)? {
            Some(text) => Ok(text),
            None => self.decode(ids, true),
        }
    }

    /// A harmony answer's final message (after the last `<|channel|>final<|message|>`), or
    /// `None` before it begins and for other models.
    pub fn final_message(&self, ids: &[u32]) -> Result<Option<String>> {
        let header = (self.token_id("<|channel|>"), self.token_id("<|message|>"));
        let (true, (Some(channel), Some(message))) = (self.harmony, header) else {
            return Ok(None);
        };
        for at in (0..ids.len()).rev().filter(|i| ids[*i] == channel) {
            let Some(len) = ids[at + 1..].iter().position(|t| *t == message) else {
                continue;
            };
            if self.decode(&ids[at + 1..at + 1 + len], true)?.trim() == "final" {
                return self.decode(&ids[at + 2 + len..], true).map(Some);
            }
        }
        Ok(None)
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

/// GGUF token kinds (`tokenizer.ggml.token_type`): an ordinary entry, the unknown token,
/// control (special) tokens, user-defined tokens, padding entries (`[PAD<id>]`) that no text
/// produces, and SentencePiece's byte tokens (`<0x0A>`).
pub(crate) const TOKEN_NORMAL: i32 = 1;
pub(crate) const TOKEN_UNKNOWN: i32 = 2;
pub(crate) const TOKEN_CONTROL: i32 = 3;
pub(crate) const TOKEN_USER_DEFINED: i32 = 4;
pub(crate) const TOKEN_UNUSED: i32 = 5;
pub(crate) const TOKEN_BYTE: i32 = 6;

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
        // llama.cpp's name is `gpt-2`; steerkit wrote `gpt2` before it knew.
        "gpt-2" | "gpt2" | "default" => Sequence::new(vec![byte_level(true)]),
        "qwen2" => Sequence::new(vec![split(QWEN2_PATTERN)?, byte_level(false)]),
        // llama.cpp splits `dbrx` (OLMo 2's cl100k tokenizer) as Llama 3's.
        "llama-bpe" | "llama3" | "smaug-bpe" | "dbrx" => Sequence::new(vec![split(LLAMA3_PATTERN)?, byte_level(false)]),
        "gpt-4o" => Sequence::new(vec![split(GPT4O_PATTERN)?, byte_level(false)]),
        other => {
            return Err(ModelError::Tokenizer(format!(
                "GGUF pre-tokenizer `{other}` is not supported (supported: {}); load the Hugging Face folder instead",
                GGUF_PRE.join(", ")
            )))
        }
    };
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre_tok)));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    add_typed_tokens(&mut tk, tokens, token_types)?;
    Ok(tk)
}

/// Builds llama.cpp's SentencePiece tokenizer (`tokenizer.ggml.model = llama`: Llama 2,
/// Mistral 7B, TinyLlama) from GGUF data.
///
/// llama.cpp splits text into characters and repeatedly joins the adjacent pair whose joined
/// text is the vocabulary entry of highest score; characters no entry covers become byte
/// tokens (`<0x0A>`). That is BPE whose merges are every (left, right) split of every entry
/// into two entries, ranked by the entry's score, with byte fallback. Before that, a space is
/// put in front of the text and of every stretch after a special token (when
/// `add_space_prefix`), and spaces become `▁`. Decoding does the reverse and keeps the
/// leading space, as llama.cpp's token pieces do (llama-cpp-python's `detokenize`).
/// Vocabularies whose joinable entries share scores are refused: llama.cpp breaks those ties
/// by position, which BPE ranks cannot express.
pub(crate) fn spm_from_gguf(
    tokens: &[String],
    scores: &[f32],
    token_types: &[i32],
    unk: Option<u32>,
    add_space_prefix: bool,
) -> Result<Tokenizer> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as Decoders;
    use tokenizers::normalizers::{Prepend, Replace, Sequence as Normalizers};
    use tokenizers::{DecoderWrapper, NormalizerWrapper};
    if scores.len() != tokens.len() || token_types.len() != tokens.len() {
        return Err(ModelError::Tokenizer(format!(
            "{} tokens, {} scores and {} token types",
            tokens.len(),
            scores.len(),
            token_types.len()
        )));
    }
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut ranked: Vec<(f32, u32, u32, (String, String))> = Vec::new();
    let mut mergeable: Vec<f32> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if token_types[i] == TOKEN_BYTE {
            continue;
        }
        let before = ranked.len();
        for (k, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(k);
            if let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) {
                ranked.push((scores[i], ia, ib, (a.to_string(), b.to_string())));
            }
        }
        if ranked.len() > before && token_types[i] == TOKEN_NORMAL {
            mergeable.push(scores[i]);
        }
    }
    // llama.cpp joins the pair of equal-scored entries that comes first in the text; BPE ranks
    // cannot say that, so such a vocabulary (one whose converter wrote one score for all, for
    // instance) would get other ids than llama.cpp's. Refused rather than tokenized wrongly.
    mergeable.sort_by(f32::total_cmp);
    let tied = mergeable.windows(2).filter(|w| w[0] == w[1]).count();
    if tied > 0 {
        return Err(ModelError::Tokenizer(format!(
            "{tied} of the {} joinable SentencePiece entries share their score with another; llama.cpp breaks such ties by position in the text, which steerkit does not reproduce (load the Hugging Face folder instead)",
            mergeable.len()
        )));
    }
    // Highest score first; the splits of one entry by their parts' ids.
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
    let merges = ranked.into_iter().map(|(_, _, _, m)| m).collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if let Some(t) = unk.and_then(|u| tokens.get(u as usize)) {
        builder = builder.unk_token(t.clone());
    }
    let mut tk = Tokenizer::new(builder.build().map_err(tok_err)?);
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        norm.push(Prepend::new("\u{2581}".into()).into());
    }
    norm.push(Replace::new(" ", "\u{2581}").map_err(tok_err)?.into());
    tk.with_normalizer(Some(Normalizers::new(norm)))
        .map_err(tok_err)?;
    tk.with_decoder(Some(Decoders::new(vec![
        DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(tok_err)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])));
    add_typed_tokens(&mut tk, tokens, token_types)?;
    Ok(tk)
}

/// Adds control tokens as special added tokens (split out of chat text only) and
/// user-defined tokens as plain added tokens (always split), as llama.cpp treats them.
fn add_typed_tokens(tk: &mut Tokenizer, tokens: &[String], token_types: &[i32]) -> Result<()> {
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
    Ok(())
}

/// The pre-tokenizers [`bpe_from_gguf`] builds, by their `tokenizer.ggml.pre` names.
const GGUF_PRE: &[&str] = &["qwen2", "llama-bpe", "smollm", "gpt-4o", "gpt-2"];

/// Texts that tell the supported pre-tokenizers apart: digit runs (single digits, groups of
/// three, or none), contractions in both cases and whether they stay on their word, runs of
/// spaces and newlines, punctuation (and a `/` after punctuation and a line break), case
/// changes inside a word, accented and non-Latin letters, an emoji.
const PRE_CHECKS: &[&str] = &[
    "Plain words, then numbers: 7, 42, 1234567 and 3.14159.",
    "WE'LL SEE IT'S you're they'd I'M \t tabs\t\tand  double  spaces",
    "line one\n\nline three\r\n   indented\n\n\n",
    "café naïve Zürich Ελληνικά русский 日本語 中文 العربية 🦙🚀",
    "fn main() { let x: Vec<u8> = vec![0x1F; 256]; println!(\"{x:?}\"); } // $$$ ... !!!",
    "  leading spaces and trailing  ",
    "I don't know; they're sure it's fine. ./\n/ :/\n// HelloWorld camelCase XMLHttpRequest",
];

/// A tokenizer as GGUF stores it (`tokenizer.ggml.*`).
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: &'static str,
    /// `tokenizer.ggml.pre`: the pre-tokenizer that reproduces the source's ids (`default`
    /// for SentencePiece).
    pub pre: &'static str,
    /// One string per id, `0..n_vocab`; ids the tokenizer does not use are `[PAD<id>]`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` per id: normal, control (special added tokens),
    /// user-defined (other added tokens) or unused (the padding entries).
    pub types: Vec<i32>,
    /// `tokenizer.ggml.merges`, `"a b"` in rank order (byte-level BPE only).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece only): minus the rank of the first merge that
    /// forms each entry, so that llama.cpp's highest-score-first joining follows the merges.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece only).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.ggml.unknown_token_id`, when the tokenizer has one.
    pub unk: Option<u32>,
}

impl Tok {
    /// This tokenizer as GGUF vocabulary data for a model with `n_vocab` embedding rows.
    ///
    /// Byte-level BPE tokenizers whose pre-tokenizer llama.cpp knows by name, and
    /// SentencePiece-style ones (BPE with byte fallback: Llama 2, Mistral), can be written.
    /// What is not in the JSON is found by behaviour: the tokenizer that `bpe_from_gguf` or
    /// `spm_from_gguf` builds from the data (under each supported pre-tokenizer name, or
    /// with and without the space prefix) must give this tokenizer's ids on every text of a
    /// fixed check list; the first that does is chosen, and none is an error. The check
    /// includes chat turns with control tokens for byte-level BPE, not for SentencePiece,
    /// where llama.cpp puts a space after every special token whatever the source did.
    pub fn gguf_vocab(&self, n_vocab: usize) -> Result<GgufVocab> {
        let json: serde_json::Value =
            serde_json::from_str(&self.chat.to_string(false).map_err(tok_err)?).map_err(tok_err)?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return Err(ModelError::Tokenizer(format!(
                "a {} tokenizer cannot be written to GGUF (supported: BPE, byte-level or with byte fallback)",
                model["type"].as_str().unwrap_or("non-BPE")
            )));
        }
        let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
        let mut types = vec![TOKEN_USER_DEFINED; n_vocab];
        let mut place = |id: u64, s: &str, ty: i32| -> Result<()> {
            let slot = tokens.get_mut(id as usize).ok_or_else(|| {
                ModelError::Tokenizer(format!(
                    "token `{s}` has id {id}, but the model has only {n_vocab} embedding rows"
                ))
            })?;
            *slot = Some(s.to_string());
            types[id as usize] = ty;
            Ok(())
        };
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| ModelError::Tokenizer("the BPE model has no vocabulary".into()))?;
        for (s, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| ModelError::Tokenizer(format!("token `{s}` has no integer id")))?;
            place(id, s, TOKEN_NORMAL)?;
        }
        for t in json["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(s)) = (t["id"].as_u64(), t["content"].as_str()) else {
                return Err(ModelError::Tokenizer(format!("malformed added token {t}")));
            };
            let special = t["special"].as_bool().unwrap_or(false);
            place(
                id,
                s,
                if special {
                    TOKEN_CONTROL
                } else {
                    TOKEN_USER_DEFINED
                },
            )?;
        }
        // Ids past the tokenizer's are padding, as llama.cpp's converter writes them; so are
        // those entries already (a folder written from a GGUF file).
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let pad = format!("[PAD{i}]");
                if t.as_ref()
                    .is_none_or(|t| *t == pad && types[i] == TOKEN_NORMAL)
                {
                    types[i] = TOKEN_UNUSED;
                }
                t.unwrap_or(pad)
            })
            .collect();
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| ModelError::Tokenizer("the BPE model has no merges".into()))?
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(p) => match p.as_slice() {
                    [a, b] => Some(format!("{} {}", a.as_str()?, b.as_str()?)),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| ModelError::Tokenizer("a merge is neither `a b` nor [a, b]".into()))?;
        let unk = model["unk_token"].as_str().and_then(|u| self.token_id(u));
        if model["byte_fallback"] == true {
            return self.spm_vocab(tokens, types, &merges, unk);
        }
        for pre in GGUF_PRE {
            if self.same_ids(bpe_from_gguf(pre, &tokens, &merges, &types)?, true)? {
                return Ok(GgufVocab {
                    model: "gpt2",
                    pre,
                    tokens,
                    types,
                    merges,
                    scores: None,
                    add_space_prefix: None,
                    unk,
                });
            }
        }
        Err(ModelError::Tokenizer(format!(
            "no GGUF pre-tokenizer that steerkit writes ({}) reproduces this tokenizer's ids",
            GGUF_PRE.join(", ")
        )))
    }

    /// The SentencePiece (`llama`) form of a BPE tokenizer with byte fallback: byte tokens
    /// and the unknown token typed, scores from the merge ranks, the space prefix found by
    /// behaviour.
    fn spm_vocab(
        &self,
        tokens: Vec<String>,
        mut types: Vec<i32>,
        merges: &[String],
        unk: Option<u32>,
    ) -> Result<GgufVocab> {
        let is_byte = |t: &str| {
            t.len() == 6
                && t.starts_with("<0x")
                && t.ends_with('>')
                && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
        };
        for (t, ty) in tokens.iter().zip(types.iter_mut()) {
            if *ty == TOKEN_NORMAL && is_byte(t) {
                *ty = TOKEN_BYTE;
            }
        }
        // A folder lists `<unk>` among the special added tokens; llama.cpp types it unknown.
        let plain = |ty: Option<&i32>| matches!(ty, Some(&TOKEN_NORMAL) | Some(&TOKEN_CONTROL));
        if let Some(u) = unk.filter(|u| plain(types.get(*u as usize))) {
            types[u as usize] = TOKEN_UNKNOWN;
        }
        let index: std::collections::HashMap<&str, usize> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        // Entries no merge forms come last, each with a score of its own (no ties).
        let mut scores: Vec<f32> = (0..tokens.len())
            .map(|i| -((merges.len() + 1 + i) as f32))
            .collect();
        let mut formed = vec![false; tokens.len()];
        for (rank, m) in merges.iter().enumerate() {
            let joined: String = m.split(' ').collect();
            if let Some(&i) = index.get(joined.as_str()) {
                if !formed[i] {
                    formed[i] = true;
                    scores[i] = -(rank as f32);
                }
            }
        }
        for space in [true, false] {
            if self.same_ids(spm_from_gguf(&tokens, &scores, &types, unk, space)?, false)? {
                return Ok(GgufVocab {
                    model: "llama",
                    pre: "default",
                    tokens,
                    types,
                    merges: Vec::new(),
                    scores: Some(scores),
                    add_space_prefix: Some(space),
                    unk,
                });
            }
        }
        Err(ModelError::Tokenizer(
            "this SentencePiece-style tokenizer's ids cannot be reproduced by llama.cpp's SentencePiece tokenizer".into(),
        ))
    }

    /// Whether the tokenizer `candidate` gives this tokenizer's ids on the pre-tokenizer check
    /// texts, as plain text and (with `chat`) in a chat turn with control tokens.
    fn same_ids(&self, candidate: Tokenizer, chat: bool) -> Result<bool> {
        let eos: Vec<u32> = self.eos_id.into_iter().collect();
        let other = Tok::new(candidate, self.bos_id, &eos, self.add_bos);
        let mut special: Vec<(u32, String)> = self
            .chat
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        special.sort();
        let control: Vec<String> = special.into_iter().take(2).map(|(_, s)| s).collect();
        for text in PRE_CHECKS {
            if self.encode_text(text)? != other.encode_text(text)? {
                return Ok(false);
            }
            let turn = format!("{}{text}{}", control.join("user\n"), control.join(""));
            if chat && self.encode_chat(&turn)? != other.encode_chat(&turn)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `<unk>`, `a`, `b`, `ab`, `ba` with the given scores.
    fn tiny(scores: &[f32]) -> Result<Tokenizer> {
        let tokens: Vec<String> = ["<unk>", "a", "b", "ab", "ba"].map(String::from).to_vec();
        let types = [TOKEN_UNKNOWN, 1, 1, 1, 1];
        spm_from_gguf(&tokens, scores, &types, Some(0), false)
    }

    fn ids(tk: &Tokenizer, text: &str) -> Vec<u32> {
        tk.encode(text, false).unwrap().get_ids().to_vec()
    }

    /// The higher-scored entry is joined first, as in llama.cpp; equal scores are refused.
    #[test]
    fn sentencepiece_joins_by_score_and_refuses_ties() {
        assert_eq!(
            ids(&tiny(&[0.0, -1.0, -2.0, -3.0, -4.0]).unwrap(), "aba"),
            [3, 1]
        );
        assert_eq!(
            ids(&tiny(&[0.0, -1.0, -2.0, -4.0, -3.0]).unwrap(), "aba"),
            [1, 4]
        );
        let err = tiny(&[0.0, -1.0, -2.0, -3.0, -3.0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 of the 2 joinable"), "{err}");
    }

    /// A folder lists `<unk>` among its special tokens; its GGUF form types it unknown, and
    /// byte tokens byte.
    #[test]
    fn sentencepiece_unknown_and_byte_tokens_are_typed() {
        let tokens: Vec<String> = ["<unk>", "<s>", "<0x41>", "a", "b", "ab"]
            .map(String::from)
            .to_vec();
        let types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE, 1, 1, 1];
        let mut tk = spm_from_gguf(
            &tokens,
            &[0.0, 0.0, 0.0, -1.0, -2.0, -3.0],
            &types,
            Some(0),
            true,
        )
        .unwrap();
        tk.add_special_tokens([AddedToken::from("<unk>", true)])
            .unwrap();
        let tok = Tok::new(tk, Some(1), &[1], true);
        let v = tok.gguf_vocab(8).unwrap();
        assert_eq!(v.model, "llama");
        assert_eq!(v.unk, Some(0));
        assert_eq!(v.add_space_prefix, Some(true));
        assert_eq!(
            &v.types[..6],
            &[TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE, 1, 1, 1]
        );
        assert_eq!(&v.types[6..], &[TOKEN_UNUSED, TOKEN_UNUSED]);
    }

    /// A harmony answer (gpt-oss): `<|end|>` after the reasoning does not stop generation, and
    /// the answer is the final message; without a final message it is the whole text, and a
    /// tokenizer without harmony's tokens keeps `<|end|>` as the end of a turn.
    #[test]
    fn harmony_answers_are_the_final_message() {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        let words = [
            "<unk>",
            "analysis",
            "final",
            "assistant",
            "We",
            "refuse",
            "Sure",
        ];
        let specials = [
            "<|start|>",
            "<|channel|>",
            "<|message|>",
            "<|end|>",
            "<|return|>",
        ];
        let vocab = words
            .iter()
            .chain(&specials)
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("<unk>".into())
            .build()
            .unwrap();
        let mut tk = Tokenizer::new(model);
        tk.with_pre_tokenizer(Some(Whitespace {}));
        let make = |names: &[&str]| {
            let mut tk = tk.clone();
            tk.add_special_tokens(names.iter().map(|s| AddedToken::from(*s, true)))
                .unwrap();
            tk
        };
        let id = |s: &str| (words.len() + specials.iter().position(|x| *x == s).unwrap()) as u32;
        let tok = Tok::new(make(&specials), None, &[id("<|return|>")], false);
        assert!(tok.harmony);
        assert_eq!(tok.stop_ids, [id("<|return|>")]);
        let answer = "<|channel|>analysis<|message|>We refuse<|end|><|start|>assistant<|channel|>final<|message|>Sure";
        let ids = tok.encode_chat(answer).unwrap();
        assert_eq!(tok.answer(&ids).unwrap(), "Sure");
        let unfinished = tok
            .encode_chat("<|channel|>analysis<|message|>We refuse")
            .unwrap();
        assert_eq!(tok.answer(&unfinished).unwrap(), "analysis We refuse");
        assert_eq!(tok.final_message(&unfinished).unwrap(), None);
        let plain = Tok::new(make(&["<|end|>"]), None, &[], false);
        assert!(!plain.harmony);
        assert_eq!(plain.stop_ids, [id("<|end|>")]);
    }
}
