//! The architecture description shared by every loader: what the forward pass needs to know.

use crate::error::{ModelError, Result};
use serde::Serialize;

/// Decoder families this runtime implements. They share one block; they differ in biases
/// and in how their GGUF files store the query/key rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama 2/3, SmolLM2, TinyLlama.
    Llama,
    /// Mistral (no sliding window: prompts here are far shorter than the window).
    Mistral,
    /// Qwen2 / Qwen2.5: biases on q, k and v.
    Qwen2,
}

impl Arch {
    /// Parses an architecture name as written in GGUF metadata or `config.json` `model_type`.
    pub fn parse(name: &str) -> Result<Arch> {
        match name {
            "llama" => Ok(Arch::Llama),
            "mistral" => Ok(Arch::Mistral),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(ModelError::UnsupportedArch(other.to_string())),
        }
    }

    /// Name as used in GGUF metadata keys.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Hyper-parameters of a decoder-only transformer.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (qwen2).
    pub attention_bias: bool,
}

impl Config {
    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.num_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            return bad(format!(
                "layers ({}), hidden size ({}) and vocabulary ({}) must be positive",
                self.num_layers, self.hidden_size, self.vocab_size
            ));
        }
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return bad(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dimension {} must be even", self.head_dim));
        }
        Ok(())
    }

    /// Number of parameters implied by the configuration (the LM head counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_heads * hd;
        let kv = self.num_kv_heads * hd;
        let mut block = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d;
        if self.attention_bias {
            block += q + 2 * kv;
        }
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.num_layers * block + d + head
    }
}

impl Config {
    /// The configuration as a Hugging Face `config.json` object.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let arch_class = match self.arch {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        };
        serde_json::json!({
            "architectures": [arch_class],
            "model_type": self.arch.name(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        })
    }
}
