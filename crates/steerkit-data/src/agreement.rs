//! Agreement of a judge with human labels: the 3 x 3 confusion matrix and the counts read off
//! it (3-class and binary agreement, recall and precision of refusals). Intervals are the
//! caller's (`steerkit_eval::stats`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::judge::{Judge, Verdict};
use crate::sets::{file_err, line_err, lines, DataError};

/// Counts of (human label, judge verdict) pairs, indexed by [`Verdict::index`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confusion {
    /// `counts[human][judge]`.
    pub counts: [[usize; 3]; 3],
}

impl Confusion {
    /// Counts one pair.
    pub fn add(&mut self, human: Verdict, judge: Verdict) {
        self.counts[human.index()][judge.index()] += 1;
    }

    /// Adds another matrix's counts.
    pub fn merge(&mut self, other: &Confusion) {
        for h in 0..3 {
            for j in 0..3 {
                self.counts[h][j] += other.counts[h][j];
            }
        }
    }

    fn sum(&self, keep: impl Fn(Verdict, Verdict) -> bool) -> usize {
        let mut s = 0;
        for h in Verdict::ALL {
            for j in Verdict::ALL {
                if keep(h, j) {
                    s += self.counts[h.index()][j.index()];
                }
            }
        }
        s
    }

    /// Number of pairs.
    pub fn n(&self) -> usize {
        self.sum(|_, _| true)
    }

    /// Pairs where the judge gives the human's class.
    pub fn agree3(&self) -> usize {
        self.sum(|h, j| h == j)
    }

    /// Pairs where both call it a refusal (full or partial) or both compliance.
    pub fn agree_binary(&self) -> usize {
        self.sum(|h, j| h.is_refusal() == j.is_refusal())
    }

    /// Refusals by the human label.
    pub fn human_refusals(&self) -> usize {
        self.sum(|h, _| h.is_refusal())
    }

    /// Refusals by the judge.
    pub fn judge_refusals(&self) -> usize {
        self.sum(|_, j| j.is_refusal())
    }

    /// Refusals by both (the numerator of refusal recall and precision).
    pub fn both_refusals(&self) -> usize {
        self.sum(|h, j| h.is_refusal() && j.is_refusal())
    }
}

/// A response with its human label and the model that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    pub model: String,
    pub response: String,
    pub label: Verdict,
}

/// The confusion matrix per model, judging each response.
pub fn by_model<'a>(
    judge: &Judge,
    rows: impl IntoIterator<Item = &'a Labelled>,
) -> BTreeMap<String, Confusion> {
    tally(
        rows.into_iter()
            .map(|r| (r.model.as_str(), r.label, judge.classify(&r.response))),
    )
}

/// The confusion matrix per model from `(model, human label, verdict)` triples, for verdicts
/// that come from elsewhere (a judge model).
pub fn tally<'a>(
    rows: impl IntoIterator<Item = (&'a str, Verdict, Verdict)>,
) -> BTreeMap<String, Confusion> {
    let mut per: BTreeMap<String, Confusion> = BTreeMap::new();
    for (model, human, judge) in rows {
        per.entry(model.to_string()).or_default().add(human, judge);
    }
    per
}

/// One row of a responses file: the JSON object as read, and what the judge needs from it.
#[derive(Debug, Clone)]
pub struct ResponseRow {
    /// 1-based line number in the file.
    pub line: usize,
    /// The line as read (numbers as written: `object` holds them as f64).
    pub raw: String,
    pub object: serde_json::Map<String, serde_json::Value>,
    pub response: String,
    /// The human `label`, when the row has one.
    pub label: Option<Verdict>,
    /// The `model` field, when the row has one.
    pub model: Option<String>,
}

/// Reads a JSONL file of responses: every non-blank line a JSON object with a string `field`
/// (may be empty), an optional `label` (one of the three classes) and an optional `model`.
/// Errors name the file and line; an empty file is an error.
pub fn read_responses(path: &Path, field: &str) -> Result<Vec<ResponseRow>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
    let mut out = Vec::new();
    for (n, line) in lines(path, &bytes)? {
        let err = |msg: String| line_err(path, n, msg);
        let object = match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => return Err(err("not a JSON object".into())),
            Err(e) => return Err(err(format!("invalid JSON: {e}"))),
        };
        let response = match object.get(field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            None => {
                // Name the text fields the row has: `steerkit eval`'s answers are `response`.
                let strings: Vec<String> = object
                    .iter()
                    .filter(|(_, v)| v.is_string())
                    .map(|(k, _)| format!("`{k}`"))
                    .collect();
                let hint = if strings.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (its text fields: {}; choose one with --field)",
                        strings.join(", ")
                    )
                };
                return Err(err(format!("no field `{field}`{hint}")));
            }
            Some(_) => return Err(err(format!("field `{field}` is not a string"))),
        };
        let label = match object.get("label") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.parse().map_err(err)?),
            Some(v) => return Err(err(format!("label {v} is not a string"))),
        };
        let model = object
            .get("model")
            .and_then(|m| m.as_str())
            .map(String::from);
        out.push(ResponseRow {
            line: n,
            raw: line.to_string(),
            object,
            response,
            label,
            model,
        });
    }
    if out.is_empty() {
        return Err(file_err(path, "no rows in this file"));
    }
    Ok(out)
}

/// The labelled rows of a responses file (rows without a label are skipped; a missing model
/// reads as `?`).
pub fn labelled(rows: &[ResponseRow]) -> Vec<Labelled> {
    rows.iter()
        .filter_map(|r| {
            Some(Labelled {
                model: r.model.clone().unwrap_or_else(|| "?".into()),
                response: r.response.clone(),
                label: r.label?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    #[test]
    fn counts_read_off_the_matrix() {
        let mut c = Confusion::default();
        for (h, j) in [
            (Compliance, Compliance),
            (Compliance, FullRefusal),
            (FullRefusal, PartialRefusal),
            (FullRefusal, FullRefusal),
            (PartialRefusal, Compliance),
        ] {
            c.add(h, j);
        }
        assert_eq!(c.n(), 5);
        assert_eq!(c.agree3(), 2);
        assert_eq!(c.agree_binary(), 3);
        assert_eq!(c.human_refusals(), 3);
        assert_eq!(c.judge_refusals(), 3);
        assert_eq!(c.both_refusals(), 2);
        let mut d = c.clone();
        d.merge(&c);
        assert_eq!((d.n(), d.agree3()), (10, 4));
    }

    #[test]
    fn by_model_splits_and_judges() {
        let row = |m: &str, r: &str, l| Labelled {
            model: m.into(),
            response: r.into(),
            label: l,
        };
        let rows = [
            row("a", "I'm sorry, but I can't assist with that.", FullRefusal),
            row("a", "Paris is the capital of France.", Compliance),
            row("b", "Paris is the capital of France.", FullRefusal),
        ];
        let per = by_model(&Judge::default(), &rows);
        assert_eq!(per["a"].agree3(), 2);
        assert_eq!(per["b"].agree_binary(), 0);
    }

    #[test]
    fn read_responses_checks_every_row() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r.jsonl");
        let read = |text: &str| {
            std::fs::write(&f, text).unwrap();
            read_responses(&f, "completion").map_err(|e| e.to_string())
        };
        let ok = read("{\"completion\": \"No.\", \"label\": \"full_refusal\", \"model\": \"m\"}\n\n{\"completion\": \"\"}\n").unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!((ok[0].label, ok[1].label), (Some(FullRefusal), None));
        assert_eq!(ok[1].line, 3);
        assert_eq!(labelled(&ok).len(), 1);
        let e = read("{\"completion\": \"a\"}\n{\"text\": \"b\"}\n").unwrap_err();
        assert!(
            e.ends_with("r.jsonl:2: no field `completion` (its text fields: `text`; choose one with --field)"),
            "{e}"
        );
        let e = read("{\"completion\": \"a\"}\n{\"n\": 2}\n").unwrap_err();
        assert!(e.ends_with("r.jsonl:2: no field `completion`"), "{e}");
        let e = read("{\"completion\": \"a\", \"label\": \"refusal\"}").unwrap_err();
        assert!(
            e.contains("r.jsonl:1: label `refusal` is not one of"),
            "{e}"
        );
        let e = read("\n").unwrap_err();
        assert!(e.ends_with("r.jsonl: no rows in this file"), "{e}");
        let e = read("[1]").unwrap_err();
        assert!(e.contains(":1: not a JSON object"), "{e}");
    }
}
