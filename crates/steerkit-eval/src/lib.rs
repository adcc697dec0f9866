//! steerkit-eval: refusal and utility measured on prompt sets, with intervals.
//!
//! - [`stats`]: Wilson intervals and paired differences.
//! - [`agreement`]: a refusal judge's agreement with human labels, as Markdown tables.
//! - [`model_judge`]: a local chat model as the refusal judge, cached, with the rules as
//!   fallback.
//! - [`score`]: the first-token refusal score (one forward pass, no generation).
//! - [`run`]: an evaluation run folder: responses generated in batches and appended to JSONL as
//!   they come (a rerun resumes), judged, summarised into `report.json`, `report.md` and
//!   `report.svg`.
//!
//! It does not parse flags or print: the CLI does.

pub mod agreement;
pub mod model_judge;
pub mod report;
pub mod run;
pub mod score;
pub mod stats;
pub mod utility;

pub use run::{evaluate, EvalError, EvalOptions, Progress};
