//! `steerkit judge`: classify the responses of a JSONL file; with human labels, measure the
//! judge's agreement with people.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use steerkit_data::agreement::{labelled, read_responses, Confusion};
use steerkit_data::judge::{Judge, Rules, Verdict, DEFAULT_JUDGE};
use steerkit_eval::agreement::{confusion_table, table};

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

pub fn run(a: Args) -> Result<()> {
    let (judge, name) = load_judge(a.judge_rules.as_deref())?;
    let rows = read_responses(&a.file, &a.field)?;
    let mut out = String::new();
    let mut verdicts = Vec::with_capacity(rows.len());
    for r in &rows {
        let j = judge.judge(&r.response);
        let mut o = r.object.clone();
        o.insert("verdict".into(), j.verdict.as_str().into());
        o.insert("judge_rule".into(), j.rule.into());
        out.push_str(&serde_json::Value::Object(o).to_string());
        out.push('\n');
        verdicts.push(j.verdict);
    }
    let per_model = steerkit_data::agreement::by_model(&judge, &labelled(&rows));
    let text = summary(&a.file, &name, &verdicts, &per_model);
    match &a.out {
        Some(p) => {
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
