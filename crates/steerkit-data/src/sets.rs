//! Prompt sets: files, built-in sets and the benchmark registry.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A problem with a prompt file, located by file and line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}:{line}: {msg}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    #[error("{0}")]
    Spec(String),
}

pub(crate) fn line_err(path: &Path, line: usize, msg: impl Into<String>) -> DataError {
    DataError::Line {
        path: path.into(),
        line,
        msg: msg.into(),
    }
}

pub(crate) fn file_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::File {
        path: path.into(),
        msg: msg.into(),
    }
}

/// Whether a set's prompts should be answered or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    /// Safe prompts: every refusal is an over-refusal (lower is better).
    Safe,
    /// Harmful prompts: refusal is the wanted behaviour (higher is better).
    Harmful,
    /// Not known.
    Unknown,
}

/// One prompt and what its source says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptItem {
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// A named list of prompts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptSet {
    pub name: String,
    pub kind: SetKind,
    /// File path, or `builtin:NAME`.
    pub source: String,
    pub items: Vec<PromptItem>,
}

impl PromptSet {
    /// The prompts' text.
    pub fn prompts(&self) -> Vec<&str> {
        self.items.iter().map(|i| i.prompt.as_str()).collect()
    }

    /// sha256 of the prompts in order (identifies the set in run metadata).
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for i in &self.items {
            h.update(i.prompt.as_bytes());
            h.update([0u8]);
        }
        format!("{:x}", h.finalize())
    }

    /// Keeps the first `n` prompts.
    pub fn limit(mut self, n: usize) -> Self {
        self.items.truncate(n);
        self
    }
}

/// How to read a file.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// The jsonl field or csv column holding the prompt (default `prompt`).
    pub field: Option<String>,
    /// Keep at most this many prompts (after shuffling).
    pub limit: Option<usize>,
    /// Shuffle with this seed before the limit.
    pub shuffle_seed: Option<u64>,
}

/// Reads a prompt file: `.txt` (one prompt a line), `.jsonl` (a field, `prompt` by default),
/// `.csv` (a column, `prompt` by default). Blank lines are skipped.
pub fn read_file(path: &Path, opts: &ReadOptions) -> Result<Vec<PromptItem>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
    let field = opts.field.as_deref().unwrap_or("prompt");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut items = match ext {
        "jsonl" | "json" => parse_jsonl(path, &bytes, field)?,
        "csv" => parse_csv(path, &bytes, field)?,
        _ => lines(path, &bytes)?
            .into_iter()
            .map(|(_, line)| item(line.to_string(), None, None))
            .collect(),
    };
    if items.is_empty() {
        return Err(file_err(path, "no prompts in this file"));
    }
    if let Some(seed) = opts.shuffle_seed {
        items.shuffle(&mut StdRng::seed_from_u64(seed));
    }
    if let Some(n) = opts.limit {
        items.truncate(n);
    }
    Ok(items)
}

fn item(prompt: String, category: Option<String>, label: Option<String>) -> PromptItem {
    PromptItem {
        prompt,
        category,
        label,
    }
}

/// Non-blank lines with their 1-based numbers, without a UTF-8 byte-order mark at the start
/// (some editors write one); a line that is not UTF-8 is an error.
pub(crate) fn lines<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<(usize, &'a str)>, DataError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let s = std::str::from_utf8(raw).map_err(|_| line_err(path, i + 1, "not valid UTF-8"))?;
        let s = s.strip_suffix('\r').unwrap_or(s);
        if !s.trim().is_empty() {
            out.push((i + 1, s));
        }
    }
    Ok(out)
}

fn parse_jsonl(path: &Path, bytes: &[u8], field: &str) -> Result<Vec<PromptItem>, DataError> {
    let mut out = Vec::new();
    for (n, line) in lines(path, bytes)? {
        if n == 1 && line.trim_start().starts_with('[') {
            return Err(line_err(
                path,
                n,
                "a JSON array; prompt files are JSON Lines (one object a line)",
            ));
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| line_err(path, n, format!("invalid JSON: {e}")))?;
        let p = match &v[field] {
            serde_json::Value::String(s) if !s.trim().is_empty() => s.clone(),
            serde_json::Value::Null => {
                return Err(line_err(path, n, format!("no field `{field}`")))
            }
            _ => {
                return Err(line_err(
                    path,
                    n,
                    format!("field `{field}` is not a non-empty string"),
                ))
            }
        };
        let text = |k: &str| v[k].as_str().map(String::from);
        out.push(item(
            p,
            text("category").or_else(|| text("type")),
            text("label"),
        ));
    }
    Ok(out)
}

fn parse_csv(path: &Path, bytes: &[u8], field: &str) -> Result<Vec<PromptItem>, DataError> {
    let mut rd = csv::Reader::from_reader(bytes);
    let headers = rd
        .headers()
        .map_err(|e| file_err(path, e.to_string()))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let at = col(field).ok_or_else(|| file_err(path, format!("no column `{field}`")))?;
    let (cat, label) = (col("category").or_else(|| col("type")), col("label"));
    let mut out = Vec::new();
    for (i, rec) in rd.byte_records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| line_err(path, line, e.to_string()))?;
        let get = |c: Option<usize>| -> Result<Option<String>, DataError> {
            c.and_then(|c| rec.get(c))
                .map(|b| {
                    std::str::from_utf8(b)
                        .map(String::from)
                        .map_err(|_| line_err(path, line, "not valid UTF-8"))
                })
                .transpose()
        };
        let p = get(Some(at))?.unwrap_or_default();
        if p.trim().is_empty() {
            return Err(line_err(path, line, format!("empty `{field}`")));
        }
        out.push(item(p, get(cat)?, get(label)?));
    }
    Ok(out)
}

/// The built-in sets written for this project (none is copied from an evaluation set).
/// `pairs_safe` and `pairs_unsafe` are twins: line k of one and line k of the other share
/// most of their words and their category, one safe and one harmful, so that their splits
/// hold whole pairs.
pub const BUILTIN: [(&str, SetKind, &str); 5] = [
    (
        "harmful",
        SetKind::Harmful,
        include_str!("../sets/harmful.jsonl"),
    ),
    (
        "harmless",
        SetKind::Safe,
        include_str!("../sets/harmless.jsonl"),
    ),
    (
        "pseudo_harmful",
        SetKind::Safe,
        include_str!("../sets/pseudo_harmful.jsonl"),
    ),
    (
        "pairs_safe",
        SetKind::Safe,
        include_str!("../sets/pairs_safe.jsonl"),
    ),
    (
        "pairs_unsafe",
        SetKind::Harmful,
        include_str!("../sets/pairs_unsafe.jsonl"),
    ),
];

/// A built-in set's name without a split suffix, and the split: `NAME.train` and `NAME.val`
/// are fixed splits of every built-in set (every third prompt, from the third, is validation).
fn builtin_split(name: &str) -> (&str, Option<bool>) {
    match name.rsplit_once('.') {
        Some((base, "train")) => (base, Some(false)),
        Some((base, "val")) => (base, Some(true)),
        _ => (name, None),
    }
}

/// A built-in set by name; `NAME.train` and `NAME.val` are its fixed two-thirds / one-third
/// splits (every third prompt, from the third, is validation), for tuning on prompts that
/// training did not see.
pub fn builtin(name: &str) -> Result<PromptSet, DataError> {
    let (base, split) = builtin_split(name);
    let (_, kind, text) = BUILTIN.iter().find(|b| b.0 == base).ok_or_else(|| {
        DataError::Spec(format!(
            "unknown set `{name}` (built-in sets: {}; each also as NAME.train and NAME.val)",
            builtin_names()
        ))
    })?;
    let src = format!("builtin:{name}");
    let mut items = parse_jsonl(Path::new(&src), text.as_bytes(), "prompt")?;
    if let Some(val) = split {
        items = items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| (i % 3 == 2) == val)
            .map(|(_, it)| it)
            .collect();
    }
    Ok(PromptSet {
        name: name.to_string(),
        kind: *kind,
        source: src,
        items,
    })
}

fn builtin_names() -> String {
    BUILTIN.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
}

/// Benchmark files this project knows: file stem, set name, kind, and how a `label` column
/// splits it.
const REGISTRY: &[(&str, SetKind)] = &[
    ("harmbench_test", SetKind::Harmful),
    ("harmful_train", SetKind::Harmful),
    ("harmful_val", SetKind::Harmful),
    ("harmless_train", SetKind::Safe),
    ("harmless_val", SetKind::Safe),
    ("orbench_hard_train", SetKind::Safe),
    ("orbench_hard_val", SetKind::Safe),
    ("orbench_hard_test", SetKind::Safe),
];

/// A `--set` argument: `NAME` (built-in), `NAME=FILE`, or `NAME:safe=FILE` /
/// `NAME:harmful=FILE` to state the kind of an unregistered file.
#[derive(Debug, Clone)]
pub struct SetSpec {
    pub name: String,
    pub file: Option<PathBuf>,
    pub kind: Option<SetKind>,
}

impl std::str::FromStr for SetSpec {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        let (lhs, file) = match s.split_once('=') {
            Some((l, f)) if !f.is_empty() => (l, Some(PathBuf::from(f))),
            Some(_) => return Err(DataError::Spec(format!("`{s}`: empty file after `=`"))),
            None => (s, None),
        };
        let (name, kind) = match lhs.split_once(':') {
            Some((n, "safe")) => (n, Some(SetKind::Safe)),
            Some((n, "harmful")) => (n, Some(SetKind::Harmful)),
            Some((_, k)) => {
                return Err(DataError::Spec(format!(
                    "`{s}`: kind `{k}` is not safe or harmful"
                )))
            }
            None => (lhs, None),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(DataError::Spec(format!(
                "`{s}`: a set name is letters, digits, `_`, `-` or `.`"
            )));
        }
        Ok(SetSpec {
            name: name.into(),
            file,
            kind,
        })
    }
}

/// Resolves a spec into one or more sets. An XSTest-style file (a `label` of `safe`/`unsafe`)
/// splits into `NAME:safe` and `NAME:unsafe`.
pub fn resolve(spec: &SetSpec, opts: &ReadOptions) -> Result<Vec<PromptSet>, DataError> {
    let Some(file) = &spec.file else {
        let mut s = builtin(&spec.name)?;
        if let Some(seed) = opts.shuffle_seed {
            s.items.shuffle(&mut StdRng::seed_from_u64(seed));
        }
        if let Some(n) = opts.limit {
            s = s.limit(n);
        }
        return Ok(vec![s]);
    };
    // Read everything first; the limit applies per split set.
    let all = read_file(
        file,
        &ReadOptions {
            limit: None,
            ..opts.clone()
        },
    )?;
    let source = file.display().to_string();
    let labels: Vec<Option<&str>> = all.iter().map(|i| i.label.as_deref()).collect();
    let xstest_like = labels
        .iter()
        .all(|l| matches!(l, Some("safe") | Some("unsafe")));
    let limit = |mut v: Vec<PromptItem>| {
        if let Some(n) = opts.limit {
            v.truncate(n);
        }
        v
    };
    if xstest_like && spec.kind.is_none() {
        let split = |lab: &str, kind| PromptSet {
            name: format!("{}:{lab}", spec.name),
            kind,
            source: source.clone(),
            items: limit(
                all.iter()
                    .filter(|i| i.label.as_deref() == Some(lab))
                    .cloned()
                    .collect(),
            ),
        };
        return Ok(vec![
            split("safe", SetKind::Safe),
            split("unsafe", SetKind::Harmful),
        ]);
    }
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let kind = spec
        .kind
        .or_else(|| {
            REGISTRY
                .iter()
                .find(|r| r.0 == spec.name || r.0 == stem)
                .map(|r| r.1)
        })
        .or_else(|| {
            let base = builtin_split(&spec.name).0;
            BUILTIN.iter().find(|b| b.0 == base).map(|b| b.1)
        })
        .unwrap_or(SetKind::Unknown);
    Ok(vec![PromptSet {
        name: spec.name.clone(),
        kind,
        source,
        items: limit(all),
    }])
}
