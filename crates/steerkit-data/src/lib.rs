//! steerkit-data: prompt sets and the refusal judge.
//!
//! - [`sets`]: read prompt sets from txt, jsonl and csv files (with a field, a limit and a
//!   seeded shuffle), the built-in sets written for this project, and the registry that knows
//!   the columns and labels of the benchmark files (`--set xstest=FILE` splits into
//!   `xstest:safe` and `xstest:unsafe`).
//! - [`judge`]: XSTest-style classification of a response (full compliance, full refusal,
//!   partial refusal) by phrase rules kept as data, and the refusal-phrase match of Arditi
//!   et al.
//! - [`agreement`]: reading responses files, and the judge's confusion matrix against human
//!   labels.
//! - [`learn`]: learning judge phrases from human-labelled responses (greedy selection).
//!
//! It does not run models: the first-token refusal score lives in `steerkit-eval`.
//!
//! ```
//! use steerkit_data::judge::{Judge, Verdict};
//! let j = Judge::default();
//! assert_eq!(j.classify("I'm sorry, but I can't help with that."), Verdict::FullRefusal);
//! assert_eq!(j.classify("I'm sorry to hear that. Here is how to fix it: ..."), Verdict::Compliance);
//! ```

pub mod agreement;
pub mod judge;
pub mod learn;
pub mod sets;

pub use judge::{Judge, Verdict};
pub use sets::{DataError, PromptItem, PromptSet, ReadOptions, SetKind, SetSpec};
