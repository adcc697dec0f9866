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

/// A TOML parse error of `text` on one line: `line L, column C: what is wrong`, the column
/// in characters (the parser's own message spans several lines, and one-line error reports
/// kept only "TOML parse error at line L, column C").
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let line = before.matches('\n').count() + 1;
            let column = before[line_start..].chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn toml_errors_say_where_in_characters_on_one_line() {
        let text = "system = \"Réponds\"\nphrases = [\"a\",\nx = 1\n";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        let m = super::toml_error(text, &e);
        assert!(m.starts_with("line 3, column 3: "), "{m}");
        assert!(!m.contains('\n'), "{m}");
        // A column counts characters: `é` is two bytes.
        let text = "a = \"é\" b\n";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        assert!(super::toml_error(text, &e).starts_with("line 1, column 9: "));
    }
}
