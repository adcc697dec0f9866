//! steerkit-directions: the refusal direction of Arditi et al. (2024), METHODS.md section 1.
//!
//! - [`extract`]: mean residual-stream activations of harmful and harmless prompts at the output
//!   of every layer and every post-instruction position (streaming sums; no activation is
//!   kept), and the difference-in-means candidates `r_{l,i}`.
//! - [`select`]: scores every candidate (refusal score on harmful prompts under ablation,
//!   on harmless prompts under addition, first-token KL under ablation) and picks the direction.
//! - [`intervene`]: the hooks that apply a direction (ablation at every layer, addition at one).
//! - [`experiment`]: generation with an intervention in place (ablation, ablation in some
//!   layers, addition, a layers x scales sweep), judged, with first-token KL.
//!
//! Files of a run folder: `directions.safetensors` (`mean_harmful`, `mean_harmless`,
//! `candidates`, all `[layers, positions, hidden]` f32), `extract.json`, `scores.csv`,
//! `scores.svg`, `selected.json`.

pub mod experiment;
pub mod extract;
pub mod intervene;
pub mod select;

pub use extract::{extract, Candidates, RunError};
