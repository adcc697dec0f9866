//! Errors of the model runtime, one variant per kind of failure a user can act on.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The `--model` argument names nothing that exists.
    #[error("model not found: {0} (expected a .gguf file, a Hugging Face folder with config.json, or a repo id in the local HF cache)")]
    NotFound(String),
    /// A folder that is not a Hugging Face model folder.
    #[error("{}: not a model folder: {what}", path.display())]
    BadFolder { path: PathBuf, what: String },
    /// The file is not a readable GGUF file.
    #[error("{}: not a valid GGUF file: {why}", path.display())]
    BadGguf { path: PathBuf, why: String },
    /// An architecture this runtime does not implement.
    #[error("unsupported architecture `{0}` (supported: llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, granite, granitemoehybrid (attention only), smollm3, olmo2, olmo3, qwen3_moe, qwen2_moe, mixtral, gpt_oss; and the text model of gemma3 and mistral3 multimodal folders, and of gemma3 GGUF files; other multimodal models are not read)")]
    UnsupportedArch(String),
    /// A required configuration value is missing or malformed.
    #[error("bad model configuration: {0}")]
    Config(String),
    /// A tensor is missing or has the wrong shape.
    #[error("weights do not match the configuration: {0}")]
    Weights(String),
    /// Tokenizer construction or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Chat template rendering failed.
    #[error("chat template: {0}")]
    Template(String),
    /// An output does not fit on its disk.
    #[error("not enough disk space: {0}")]
    Disk(String),
    /// The model's weights do not fit in the memory the system has free.
    #[error("not enough memory: {0}")]
    Memory(String),
    /// Invalid input to a runtime call (empty prompt, bad sampling parameter, ...).
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An I/O error with the path it concerns.
    // The OS error is part of the message, not a `source`: a source would be printed a
    // second time by `{:#}` (the CLI's one-line error).
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            error,
        }
    }
}
