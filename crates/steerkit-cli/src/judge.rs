//! `steerkit judge`: classify the responses of a JSONL file; with human labels, measure the
//! judge's agreement with people.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use steerkit_data::agreement::ResponseRow;
use steerkit_data::agreement::{read_responses, tally, Confusion};
use steerkit_data::judge::{Judge, Rules, Verdict, DEFAULT_JUDGE};
use steerkit_eval::agreement::{confusion_table, table};
use steerkit_eval::model_judge::{judge_with_model, parse_answer, AnswerCache, PROMPT_VERSION};

use crate::common::{bar, DeviceArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A JSONL file of responses, one object a line. Rows with a `label` (compliance,
    /// full_refusal or partial_refusal) are compared with the judge, overall and per `model`.
    pub file: PathBuf,
    /// The field holding the response.
    #[arg(long, default_value = "completion")]
    pub field: String,
    /// Write every row, in order, with `verdict` and `judge_rule` added, to this file (written
    /// whole or not at all). Without it the rows go to stdout and the summary to stderr.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Judge rules (TOML) extending the built-in ones.
    #[arg(long)]
    pub judge_rules: Option<PathBuf>,
    /// Judge with a local chat model instead (a .gguf file, a Hugging Face folder or a cached
    /// repo id): it reads a fixed instruction, the request (the first and last 1,000
    /// characters of one over 2,000) and the response's first 600 characters and answers A
    /// (compliance), B (full refusal) or C (partial refusal); where its answer names no
    /// class, the rules decide. Slow on a CPU: 1.4 rows/s with Qwen2.5-Coder-0.5B on 2 cores,
    /// and that model is a poor judge (57% binary agreement with people on XSTest's
    /// completions; README).
    #[arg(long)]
    pub judge_model: Option<String>,
    /// The field holding the request shown to the judge model (rows without it are judged on
    /// the response alone).
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// Where the judge model's answers are cached (JSONL, keyed by model, prompt version,
    /// request and response); a rerun or a restarted run generates only what is missing.
    /// Default: `OUT.judge-cache.jsonl` beside --out, or `FILE.judge-cache.jsonl` beside the
    /// input without --out.
    #[arg(long)]
    pub judge_cache: Option<PathBuf>,
    /// Rows per batch for the judge model.
    #[arg(long, default_value_t = 16, value_parser = crate::common::positive)]
    pub batch_size: usize,
    /// Where the judge model runs.
    #[command(flatten)]
    pub on: DeviceArgs,
}

/// The judge and its name for reports: the built-in rules, or those extended by a file.
pub fn load_judge(rules: Option<&Path>) -> Result<(Judge, String)> {
    match rules {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            let rules =
                Rules::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            Ok((
                Judge::new(rules),
                format!(
                    "steerkit rules extended by {} (agreement not measured)",
                    p.display()
                ),
            ))
        }
        None => Ok((Judge::default(), DEFAULT_JUDGE.to_string())),
    }
}

/// The summary: verdict counts and, for labelled rows, agreement tables.
fn summary(
    file: &Path,
    name: &str,
    verdicts: &[Verdict],
    per_model: &BTreeMap<String, Confusion>,
) -> String {
    let count = |v: Verdict| verdicts.iter().filter(|&&x| x == v).count();
    let mut s = format!(
        "judged {} responses of {} (judge: {name}): {}\n",
        verdicts.len(),
        file.display(),
        Verdict::ALL
            .map(|v| format!("{} {}", v.as_str(), count(v)))
            .join(", ")
    );
    if per_model.is_empty() {
        return s;
    }
    let mut all = Confusion::default();
    for c in per_model.values() {
        all.merge(c);
    }
    s.push_str(&format!(
        "\n## Agreement with the human labels ({} labelled rows; 95% Wilson intervals)\n\n",
        all.n()
    ));
    let mut groups = vec![("all".to_string(), &all)];
    groups.extend(per_model.iter().map(|(m, c)| (m.clone(), c)));
    s.push_str(&table("model", &groups));
    for (m, c) in &groups {
        s.push_str(&format!(
            "\nConfusion matrix, {m}:\n\n{}",
            confusion_table(c)
        ));
    }
    s
}

/// Every row's verdict and the rule (or model answer) behind it, and the judge's name.
fn verdicts(a: &Args, rows: &[ResponseRow]) -> Result<(Vec<(Verdict, String)>, String)> {
    let (rules, name) = load_judge(a.judge_rules.as_deref())?;
    let Some(spec) = &a.judge_model else {
        let v = rows
            .iter()
            .map(|r| {
                let j = rules.judge(&r.response);
                (j.verdict, j.rule)
            })
            .collect();
        return Ok((v, name));
    };
    let m = a.on.load(spec)?;
    let cache_path = a.judge_cache.clone().unwrap_or_else(|| {
        let mut p = a.out.as_ref().unwrap_or(&a.file).clone().into_os_string();
        p.push(".judge-cache.jsonl");
        p.into()
    });
    // Opening appends nothing yet; a read-only folder shows at the first batch's write, so
    // check that the file can be opened for appending now.
    let mut cache = AnswerCache::open(&cache_path)
        .and_then(|c| c.check_writable().map(|()| c))
        .with_context(|| {
            format!(
                "the judge model's answer cache {} (choose another with --judge-cache)",
                cache_path.display()
            )
        })?;
    let items: Vec<(Option<&str>, &str)> = rows
        .iter()
        .map(|r| {
            let q = r.object.get(&a.prompt_field).and_then(|v| v.as_str());
            (q, r.response.as_str())
        })
        .collect();
    let pb = bar(rows.len() as u64, "judging");
    let judged = judge_with_model(&m, &items, &rules, &mut cache, a.batch_size, &mut |k| {
        pb.inc(k as u64)
    });
    pb.finish_and_clear();
    let judged = judged?;
    let unparsed = judged
        .iter()
        .filter(|j| parse_answer(&j.answer).is_none())
        .count();
    let name = format!(
        "model {spec} ({PROMPT_VERSION}; {unparsed} of {} answers named no class: the rules judged those)",
        rows.len()
    );
    Ok((
        judged.into_iter().map(|j| (j.verdict, j.rule)).collect(),
        name,
    ))
}

pub fn run(a: Args) -> Result<()> {
    let rows = read_responses(&a.file, &a.field)?;
    let (judged, name) = verdicts(&a, &rows)?;
    let mut out = String::new();
    for (r, (v, rule)) in rows.iter().zip(&judged) {
        out.push_str(&with_verdict(r, v.as_str(), rule));
        out.push('\n');
    }
    let verdicts: Vec<Verdict> = judged.iter().map(|j| j.0).collect();
    let per_model = tally(
        rows.iter()
            .zip(&verdicts)
            .filter_map(|(r, &v)| Some((r.model.as_deref().unwrap_or("?"), r.label?, v))),
    );
    let text = summary(&a.file, &name, &verdicts, &per_model);
    match &a.out {
        Some(p) => {
            crate::common::create_parent(p)?;
            steerkit_eval::run::write_atomic(p, out.as_bytes())?;
            print!("{text}");
            println!(
                "\nrows with `verdict` and `judge_rule` written to {}",
                p.display()
            );
        }
        None => {
            std::io::stdout()
                .lock()
                .write_all(out.as_bytes())
                .context("stdout")?;
            eprint!("{text}");
        }
    }
    Ok(())
}

/// A row with `verdict` and `judge_rule` added last. The row's own text is kept as written
/// (numbers beyond f64, such as long integer ids, would otherwise be rounded), unless it
/// already has one of the two fields (a file judged before), which are then replaced in place.
fn with_verdict(r: &ResponseRow, verdict: &str, rule: &str) -> String {
    let fields = [("verdict", verdict), ("judge_rule", rule)];
    if fields.iter().all(|(k, _)| !r.object.contains_key(*k)) {
        if let Some(body) = r.raw.trim_end().strip_suffix('}') {
            let sep = if r.object.is_empty() { "" } else { "," };
            let added: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\":{}", serde_json::Value::from(*v)))
                .collect();
            return format!("{}{sep}{}}}", body.trim_end(), added.join(","));
        }
    }
    let mut o = r.object.clone();
    for (k, v) in fields {
        o.insert(k.into(), v.into());
    }
    serde_json::Value::Object(o).to_string()
}
