//! Safety tuning (`steerkit safety-tune`): supervised fine-tuning of a range of decoder blocks
//! on refusals for harmful prompts and on the model's own answers for harmless ones, with
//! AdamW, checkpoints, exact resume and optional orthogonal gradient projection
//! ([`steerkit_ogp`]): `act` (GPM bases of each trained matrix's inputs on capability
//! sequences) or `grad` (the span of language-modelling gradients on capability batches,
//! refreshed every few steps).
//!
//! - [`data`]: training sequences (prompt, answer, end of turn), refusal texts, the cache of
//!   the model's own answers;
//! - [`train`]: the trainer.
//!
//! The layers below the first trained block are frozen, so their outputs (the first trained
//! block's inputs) are computed once; each step runs the trained blocks and everything above
//! them, and the loss is the mean next-token cross-entropy over answer tokens only.

pub mod data;
pub mod train;

pub use data::Example;
pub use steerkit_actor::ActorError as SftError;
pub use train::{train, Ogp, Progress, SftConfig, Summary};
