//! steerkit-model: load real chat models and run them with hook points on the residual stream.
//!
//! Three sources, one entry point ([`load`]): a GGUF file (dequantized to f32, Q/K rows
//! un-permuted for llama, tokenizer built from the metadata with llama.cpp's ids), a Hugging
//! Face folder, or a Hugging Face repo id already in the local cache. Architectures
//! ([`Arch`]): llama, mistral, qwen2, qwen3, gemma2, gemma3 (and the text model of the
//! multimodal gemma3 and mistral3), phi3, granite (and granitemoehybrid, attention only),
//! smollm3, olmo2, olmo3, and the mixtures of
//! experts qwen3_moe, qwen2_moe (with a shared expert), mixtral and gpt_oss ([`MoeConfig`],
//! [`Mlp::Moe`]; gpt-oss's MXFP4 experts are decoded at loading, from its folders and from
//! llama.cpp's GGUF files).
//!
//! ```no_run
//! use steerkit_model::{load, LoadOptions, SystemPrompt, NoHook};
//! let m = load("checkpoints/models/smollm2-135m-instruct.gguf", &LoadOptions::default())?;
//! let p = m.chat.prompt(&m.tok, "Hello!", &SystemPrompt::Default)?;
//! let (ids, pads) = steerkit_model::left_pad(&[p.ids], m.tok.pad_id, &m.model.device)?;
//! let logits = m.model.last_logits(&ids, &pads, &mut NoHook)?; // [1, vocab]
//! # Ok::<(), steerkit_model::ModelError>(())
//! ```
//!
//! This crate does not print, parse flags, or choose prompts: that is the CLI's and the
//! experiment crates' job.

pub mod bf16;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod hooks;
pub mod memory;
pub mod model;
pub mod mxfp4;
pub mod prefix;
pub mod random;
pub mod scratch;
pub mod source;
pub mod space;
pub mod template;
pub mod tokenizer;
pub mod weights;

pub use config::{Activation, Arch, Config, MoeConfig, Multipliers, RopeScaling};
pub use error::{ModelError, Result};
pub use generate::{generate, GenerateOptions, Generated, Sampling};
pub use hooks::{Ablate, Add, Chain, Hook, HookCtx, HookPoint, NoHook, Record, Site};
pub use model::{
    widened, Block, Experts, GatedMlp, KvCache, Linear, Mlp, Mode, Model, SharedExpert,
};
pub use prefix::SharedPrefix;
pub use source::{
    describe_numerics, device_named, float_dtype, left_pad, load, locate, pad_rows,
    shared_prefix_len, split_fingerprint, unpad_rows, LoadOptions, Loaded, SourceKind,
};
pub use template::{ChatTemplate, Message, Prompt, SystemPrompt};
pub use tokenizer::Tok;
