//! ACTOR (Dabas et al., ICML 2025; METHODS.md section 2): fine-tune a single decoder block so
//! that harmless and pseudo-harmful prompts move away from the refusal direction while harmful
//! ones keep (or gain) their projection on it.
//!
//! - [`states`]: cached block inputs, last-token states, the silhouette score for the layer;
//! - [`prepare`]: the layer choice, the training sets (optionally only the pseudo-harmful
//!   prompts the model refuses) and the input cache of a run folder;
//! - [`train`]: targets `a ∓ αP(a)`, loss `1 - cos`, AdamW on the block, checkpoints, resume;
//! - [`adamw`]: the optimizer, with its state saved for exact resumes;
//! - [`ogp`]: capability subspaces of the block for activation-based gradient projection.

pub mod adamw;
pub mod ogp;
pub mod plot;
pub mod prepare;
pub mod states;
pub mod train;

use std::path::{Path, PathBuf};

pub use prepare::{prepare, PrepareOptions, Prepared};
pub use train::{train, Group, Parts, TrainConfig};

/// Failures of an ACTOR run.
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error(transparent)]
    Model(#[from] steerkit_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Eval(#[from] steerkit_eval::EvalError),
    #[error(transparent)]
    Ogp(#[from] steerkit_ogp::OgpError),
    #[error("{0}")]
    Input(String),
    #[error("training diverged: {0}")]
    Diverged(String),
    #[error("{}: {msg}", path.display())]
    Run { path: PathBuf, msg: String },
}

pub(crate) fn run_err(path: &Path, msg: impl Into<String>) -> ActorError {
    ActorError::Run {
        path: path.into(),
        msg: msg.into(),
    }
}
