//! An evaluation run folder.
//!
//! ```text
//! OUT/meta.json               model fingerprint, generation settings, set hashes
//! OUT/responses/SET.jsonl     one line per answered prompt, appended as batches finish
//! OUT/report.json|md|svg      written at the end (temporary file, then rename)
//! ```
//! A rerun with the same model and settings reads what is saved and generates only the rest;
//! a folder that holds another model's run is refused.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use steerkit_data::{Judge, PromptSet};
use steerkit_model::{generate, GenerateOptions, Hook, Loaded, Sampling, SystemPrompt};

use crate::report::{Report, SetReport};
use crate::score::{refusal_score, refusal_token_ids};

/// Failures of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] steerkit_model::ModelError),
    // The OS error is part of the message, not a `source`: a source would be printed a
    // second time by `{:#}` (the CLI's one-line error).
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Mismatch(String),
    /// The output folder holds answers made with other settings (another model or numerics,
    /// condition, token budget, system prompt, or other prompts in a set): they cannot be
    /// resumed, and a caller that owns the folder may remove it and answer again.
    #[error("{0}")]
    SavedForOtherSettings(String),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |error| EvalError::Io {
        path: path.into(),
        error,
    }
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub system: SystemPrompt,
    pub judge: Judge,
    /// Names the judge in the report.
    pub judge_name: String,
    /// A label for the patch or intervention applied ("none" for the plain model).
    pub condition: String,
    /// Labels the same condition had in folders saved by earlier versions of steerkit: such a
    /// folder resumes, and its meta.json takes the current label.
    pub earlier_labels: Vec<String>,
}

/// Progress events for a caller's progress bar.
pub enum Progress<'a> {
    /// A set starts: its name, its size, how many answers were already saved.
    Set {
        name: &'a str,
        total: usize,
        done: usize,
    },
    /// Prompts answered since the last event.
    Answered(usize),
}

/// One saved answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub i: usize,
    pub prompt: String,
    pub response: String,
    pub new_tokens: usize,
    pub stopped: bool,
    /// First-token refusal score (log-odds).
    pub refusal_score: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Meta {
    model: String,
    fingerprint: String,
    /// [`steerkit_model::Loaded::sampled_fingerprint`] (absent in folders made before
    /// 2026-11-28, which resume on the fingerprint alone).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sampled: String,
    condition: String,
    max_new_tokens: usize,
    system: String,
    sets: BTreeMap<String, String>,
}

/// The settings in which two records differ, as dotted paths of their JSON form
/// (`adamw.lr`, `alpha`), for an error that says what changed. Arrays and values compare
/// whole; a key only one side has counts as a difference.
pub fn differing_settings<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        &p,
                        out,
                    );
                }
            }
            _ if a != b => out.push(if path.is_empty() {
                "(all)".into()
            } else {
                path.into()
            }),
            _ => {}
        }
    }
    let (Ok(a), Ok(b)) = (serde_json::to_value(a), serde_json::to_value(b)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(&a, &b, "", &mut out);
    out
}

/// Removes the file at `path`; one that is not there is no error.
pub fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Writes `bytes` to `path` through a temporary file (`PATH.tmp`, removed on failure) and a
/// rename. A directory at `path` is an error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    if path.is_dir() {
        return Err(EvalError::Mismatch(format!(
            "{}: is a directory; give a file name",
            path.display()
        )));
    }
    steerkit_model::scratch::write_through(
        path,
        true,
        |p, e| io(p)(e),
        |mut file, tmp| std::io::Write::write_all(&mut file, bytes).map_err(io(tmp)),
    )
}

/// Reads the complete lines of a responses file, dropping a torn last line (a kill mid-write)
/// and truncating the file to what was read.
fn read_answers(path: &Path, set: &PromptSet) -> Result<BTreeMap<usize, Answer>, EvalError> {
    let mut out = BTreeMap::new();
    if !path.exists() {
        return Ok(out);
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    for line in bytes[..complete].split(|&b| b == b'\n') {
        let Ok(a) = serde_json::from_slice::<Answer>(line) else {
            continue;
        };
        if set.items.get(a.i).is_some_and(|it| it.prompt == a.prompt) {
            out.insert(a.i, a);
        }
    }
    if complete < bytes.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(complete as u64).map_err(io(path))?;
    }
    Ok(out)
}

fn system_label(s: &SystemPrompt) -> String {
    match s {
        SystemPrompt::Default => "default".into(),
        SystemPrompt::None => "none".into(),
        SystemPrompt::Custom(t) => format!("custom: {t}"),
    }
}

/// Runs (or resumes) an evaluation and writes the report. With `reference` (a model and a
/// harmless set), the report includes the first-token KL of `m` from the reference there.
pub fn evaluate(
    m: &Loaded,
    sets: &[PromptSet],
    opts: &EvalOptions,
    reference: Option<(&Loaded, &PromptSet)>,
    hook: &mut dyn Hook,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, EvalError> {
    let resp_dir = out.join("responses");
    std::fs::create_dir_all(&resp_dir).map_err(io(&resp_dir))?;
    let meta = Meta {
        model: m.path.display().to_string(),
        fingerprint: m.fingerprint()?,
        sampled: m.sampled_fingerprint()?,
        condition: opts.condition.clone(),
        max_new_tokens: opts.max_new_tokens,
        system: system_label(&opts.system),
        sets: sets.iter().map(|s| (s.name.clone(), s.hash())).collect(),
    };
    let meta_path = out.join("meta.json");
    let old: Option<Meta> = if meta_path.exists() {
        let bytes = std::fs::read(&meta_path).map_err(io(&meta_path))?;
        Some(serde_json::from_slice(&bytes).map_err(|e| {
            EvalError::Mismatch(format!("{}: unreadable ({e})", meta_path.display()))
        })?)
    } else {
        None
    };
    let mut merged = meta.clone();
    if let Some(old) = old {
        let (old_source, old_mark) = steerkit_model::split_fingerprint(&old.fingerprint);
        let (new_source, new_mark) = steerkit_model::split_fingerprint(&meta.fingerprint);
        if old_source == new_source && old_mark != new_mark {
            return Err(EvalError::SavedForOtherSettings(format!(
                "{} holds a run of this model with {}, not {}; choose another --out",
                out.display(),
                steerkit_model::describe_numerics(old_mark),
                steerkit_model::describe_numerics(new_mark)
            )));
        }
        if old.fingerprint == meta.fingerprint
            && !old.sampled.is_empty()
            && old.sampled != meta.sampled
        {
            return Err(EvalError::SavedForOtherSettings(format!(
                "{} holds answers of a model with the same size and ends as {} but other weights between (exported again to the same path?); choose another --out",
                out.display(),
                old.model
            )));
        }
        if old.fingerprint != meta.fingerprint {
            return Err(EvalError::SavedForOtherSettings(format!(
                "{} holds a run of another model ({}); choose another --out",
                out.display(),
                old.model
            )));
        }
        let condition = if opts.earlier_labels.contains(&old.condition) {
            &meta.condition
        } else {
            &old.condition
        };
        // What differs, saved -> here.
        let mut differs = Vec::new();
        if condition != &meta.condition {
            differs.push(format!("condition {} -> {}", old.condition, meta.condition));
        }
        if old.max_new_tokens != meta.max_new_tokens {
            differs.push(format!(
                "new tokens {} -> {}",
                old.max_new_tokens, meta.max_new_tokens
            ));
        }
        if old.system != meta.system {
            differs.push(format!("system {} -> {}", old.system, meta.system));
        }
        if !differs.is_empty() {
            return Err(EvalError::SavedForOtherSettings(format!(
                "{} holds a run with other settings (saved -> here: {}); choose another --out",
                out.display(),
                differs.join(", ")
            )));
        }
        for (name, hash) in old.sets {
            match meta.sets.get(&name) {
                Some(h) if *h != hash => {
                    return Err(EvalError::SavedForOtherSettings(format!(
                        "{}: set `{name}` has other prompts than in the saved run; choose another --out",
                        out.display()
                    )))
                }
                Some(_) => {}
                // Sets evaluated earlier into the same folder stay recorded.
                None => {
                    merged.sets.insert(name, hash);
                }
            }
        }
    }
    write_atomic(
        &meta_path,
        &serde_json::to_vec_pretty(&merged).expect("serializes"),
    )?;

    let refusal_ids = refusal_token_ids(&m.tok);
    let gen_opts = GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        sampling: Sampling::Greedy,
        stop_ids: m.tok.stop_ids.clone(),
        pad_id: m.tok.pad_id,
        keep_first_logprobs: true,
    };
    let mut reports = Vec::new();
    for set in sets {
        let path = resp_dir.join(format!("{}.jsonl", set.name.replace(':', "_")));
        let mut answers = read_answers(&path, set)?;
        progress(Progress::Set {
            name: &set.name,
            total: set.items.len(),
            done: answers.len(),
        });
        let mut todo: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, it) in set.items.iter().enumerate() {
            if !answers.contains_key(&i) {
                todo.push((i, m.chat.prompt(&m.tok, &it.prompt, &opts.system)?.ids));
            }
        }
        // Similar lengths together: less padding.
        todo.sort_by_key(|t| std::cmp::Reverse(t.1.len()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        for batch in todo.chunks(opts.batch_size.max(1)) {
            let ids: Vec<Vec<u32>> = batch.iter().map(|b| b.1.clone()).collect();
            let gens = generate(&m.model, &ids, &gen_opts, hook, &mut |_| {})?;
            let mut buf = Vec::new();
            for ((i, _), g) in batch.iter().zip(gens) {
                let lp = g
                    .first_logprobs
                    .as_deref()
                    .expect("asked for first log-probs");
                let a = Answer {
                    i: *i,
                    prompt: set.items[*i].prompt.clone(),
                    response: m.tok.answer(&g.ids)?,
                    new_tokens: g.ids.len(),
                    stopped: g.stopped,
                    refusal_score: refusal_score(lp, &refusal_ids),
                };
                serde_json::to_writer(&mut buf, &a).expect("serializes");
                buf.push(b'\n');
                answers.insert(*i, a);
            }
            // One write per batch, so a kill leaves at most one torn line.
            file.write_all(&buf).map_err(io(&path))?;
            file.flush().map_err(io(&path))?;
            progress(Progress::Answered(batch.len()));
        }
        let ordered: Vec<&Answer> = answers.values().collect();
        reports.push(SetReport::new(set, &ordered, &opts.judge));
    }
    let cross_entropy = crate::utility::cross_entropy(m, crate::utility::PLAIN_TEXT, hook)?;
    let first_token_kl = match reference {
        Some((r, set)) => Some(crate::utility::first_token_kl(
            r,
            m,
            &set.name,
            &set.prompts(),
            &opts.system,
            opts.batch_size,
            hook,
        )?),
        None => None,
    };
    let report = Report {
        model: meta.model,
        fingerprint: meta.fingerprint,
        condition: opts.condition.clone(),
        judge: opts.judge_name.clone(),
        max_new_tokens: opts.max_new_tokens,
        system: meta.system,
        sets: reports,
        utility: crate::report::Utility {
            plain_text_cross_entropy: cross_entropy,
            first_token_kl,
        },
    };
    report.write(out)?;
    Ok(report)
}
