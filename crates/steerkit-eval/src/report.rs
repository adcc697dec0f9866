//! Reports: per-set refusal rates with intervals, as JSON, a Markdown table and an SVG chart,
//! and the comparison of two runs on the same prompts.

use std::path::Path;

use serde::{Deserialize, Serialize};
use steerkit_data::{Judge, PromptSet, SetKind, Verdict};

use crate::run::{write_atomic, Answer, EvalError};
use crate::stats::{paired_diff, PairedDiff, Rate};

/// The measurements of one set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetReport {
    pub name: String,
    pub kind: SetKind,
    pub source: String,
    pub n: usize,
    /// Full refusals.
    pub full_refusal: Rate,
    /// Full and partial refusals.
    pub refusal: Rate,
    pub compliance: Rate,
    /// The refusal-phrase match of METHODS.md (Arditi et al.).
    pub phrase_match: Rate,
    /// Mean first-token refusal score (log-odds).
    pub mean_refusal_score: f64,
    /// Per prompt (in set order): whether it was judged a refusal (full or partial).
    pub refused: Vec<bool>,
    pub prompts: Vec<String>,
}

impl SetReport {
    /// Judges `answers` (in set order) of `set`.
    pub fn new(set: &PromptSet, answers: &[&Answer], judge: &Judge) -> Self {
        let n = answers.len();
        let verdicts: Vec<Verdict> = answers
            .iter()
            .map(|a| judge.classify(&a.response))
            .collect();
        let count = |f: &dyn Fn(Verdict) -> bool| verdicts.iter().filter(|v| f(**v)).count();
        let phrase = answers
            .iter()
            .filter(|a| judge.phrase_match(&a.response))
            .count();
        SetReport {
            name: set.name.clone(),
            kind: set.kind,
            source: set.source.clone(),
            n,
            full_refusal: Rate::new(count(&|v| v == Verdict::FullRefusal), n),
            refusal: Rate::new(count(&|v| v.is_refusal()), n),
            compliance: Rate::new(count(&|v| v == Verdict::Compliance), n),
            phrase_match: Rate::new(phrase, n),
            mean_refusal_score: answers.iter().map(|a| a.refusal_score).sum::<f64>()
                / n.max(1) as f64,
            refused: verdicts.iter().map(|v| v.is_refusal()).collect(),
            prompts: answers.iter().map(|a| a.prompt.clone()).collect(),
        }
    }
}

/// A whole run's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub fingerprint: String,
    pub condition: String,
    pub judge: String,
    pub max_new_tokens: usize,
    pub system: String,
    pub sets: Vec<SetReport>,
    pub utility: Utility,
}

/// Utility measures of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Utility {
    /// Mean cross-entropy on the built-in plain-text sample.
    pub plain_text_cross_entropy: crate::utility::CrossEntropy,
    /// First-token KL from a reference model on harmless prompts (when one was given).
    pub first_token_kl: Option<crate::utility::FirstTokenKl>,
}

/// How a set kind reads in reports.
pub fn kind_str(k: SetKind) -> &'static str {
    match k {
        SetKind::Safe => "safe (lower is better)",
        SetKind::Harmful => "harmful (higher is better)",
        SetKind::Unknown => "unlabelled",
    }
}

impl Report {
    /// The numerics of the evaluated model in words (f32, bf16 matrices, ...), from the mark
    /// on its fingerprint.
    pub fn numerics(&self) -> String {
        steerkit_model::describe_numerics(steerkit_model::split_fingerprint(&self.fingerprint).1)
    }

    /// Reads `report.json` from a run folder.
    pub fn read(dir: &Path) -> Result<Report, EvalError> {
        let p = dir.join("report.json");
        if !p.exists() {
            return Err(EvalError::Mismatch(format!(
                "{}: not an evaluation folder (no report.json; `steerkit eval --out` writes one)",
                dir.display()
            )));
        }
        let bytes = std::fs::read(&p).map_err(crate::run::io(&p))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EvalError::Mismatch(format!("{}: {e}", p.display())))
    }

    /// The Markdown table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Evaluation\n\nmodel `{}` ({}) · condition `{}` · greedy, {} new tokens · system prompt: {} · judge: {}\n\n",
            self.model,
            self.numerics(),
            self.condition,
            self.max_new_tokens,
            self.system,
            self.judge
        );
        s.push_str("| set | kind | n | refusal (full + partial) | full refusal | compliance | phrase match | mean refusal score |\n");
        s.push_str("|---|---|---|---|---|---|---|---|\n");
        for r in &self.sets {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {:+.2} |\n",
                r.name,
                kind_str(r.kind),
                r.n,
                r.refusal.display(),
                r.full_refusal.display(),
                r.compliance.display(),
                r.phrase_match.display(),
                r.mean_refusal_score
            ));
        }
        s.push_str("\nRates with 95% Wilson intervals and counts.\n\n");
        let ce = &self.utility.plain_text_cross_entropy;
        s.push_str(&format!(
            "Utility: mean cross-entropy {:.3} nats/token on the built-in plain-text sample ({} tokens)",
            ce.mean_nats, ce.tokens
        ));
        match &self.utility.first_token_kl {
            Some(k) => s.push_str(&format!(
                "; first-token KL from `{}` {:.4} nats (mean over {} prompts of `{}`).\n",
                k.reference, k.mean, k.n, k.set
            )),
            None => s.push_str(".\n"),
        }
        s
    }

    /// Writes `report.json`, `report.md` and `report.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), EvalError> {
        write_atomic(
            &dir.join("report.json"),
            &serde_json::to_vec_pretty(self).expect("serializes"),
        )?;
        write_atomic(&dir.join("report.md"), self.markdown().as_bytes())?;
        let bars: Vec<Bar> = self
            .sets
            .iter()
            .map(|r| Bar {
                label: format!("{} (n={})", r.name, r.n),
                value: r.refusal.rate,
                lo: r.refusal.lo,
                hi: r.refusal.hi,
            })
            .collect();
        let title = format!("Refusal rate (full + partial), {}", self.condition);
        write_atomic(
            &dir.join("report.svg"),
            svg_bars(&title, &bars, 0.0, 1.0).as_bytes(),
        )
    }
}

/// One horizontal bar with an interval.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart with interval whiskers, values on `[min, max]` shown as percent.
pub fn svg_bars(title: &str, bars: &[Bar], min: f64, max: f64) -> String {
    let (left, width, row) = (260.0, 420.0, 28.0);
    let height = 60.0 + row * bars.len() as f64 + 30.0;
    let x = |v: f64| left + width * ((v - min) / (max - min)).clamp(0.0, 1.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"14\">{}</text>\n",
        left + width + 60.0,
        esc(title)
    );
    for t in 0..=4 {
        let v = min + (max - min) * t as f64 / 4.0;
        let xv = x(v);
        s.push_str(&format!(
            "<line x1=\"{xv}\" y1=\"40\" x2=\"{xv}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{xv}\" y=\"{}\" text-anchor=\"middle\">{:.0}%</text>\n",
            height - 30.0,
            height - 14.0,
            100.0 * v
        ));
    }
    for (i, b) in bars.iter().enumerate() {
        let y = 48.0 + row * i as f64;
        let zero = x(0f64.clamp(min, max));
        let (x0, x1) = if b.value >= 0.0 {
            (zero, x(b.value))
        } else {
            (x(b.value), zero)
        };
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n<rect x=\"{x0}\" y=\"{y}\" width=\"{}\" height=\"16\" fill=\"#4a7bb7\"/>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<text x=\"{}\" y=\"{}\">{:.1}%</text>\n",
            left - 8.0,
            y + 12.0,
            esc(&b.label),
            (x1 - x0).max(0.5),
            x(b.lo),
            y + 8.0,
            x(b.hi),
            y + 8.0,
            x(b.hi) + 4.0,
            y + 12.0,
            100.0 * b.value
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// One set compared across two runs.
#[derive(Debug, Clone, Serialize)]
pub struct SetComparison {
    pub name: String,
    pub kind: SetKind,
    /// A's and B's refusal rates over the prompts both runs answered (the pairs of `diff`).
    pub a: Rate,
    pub b: Rate,
    /// B minus A over the prompts both runs answered.
    pub diff: PairedDiff,
    /// How many prompts of this set each run answered (more than `diff.n` where one run
    /// answered prompts the other did not).
    pub a_answered: usize,
    pub b_answered: usize,
}

/// Pairs two runs' outcomes by prompt: the k-th copy of a prompt in `a` with the k-th copy of
/// it in `b` (so a set that repeats a prompt pairs each copy once); prompts only one run
/// answered are left out.
fn pair_by_prompt(a: (&[String], &[bool]), b: (&[String], &[bool])) -> Vec<(bool, bool)> {
    let mut in_b: std::collections::HashMap<&str, std::collections::VecDeque<bool>> =
        std::collections::HashMap::new();
    for (p, &r) in b.0.iter().zip(b.1) {
        in_b.entry(p.as_str()).or_default().push_back(r);
    }
    a.0.iter()
        .zip(a.1)
        .filter_map(|(p, &ra)| Some((ra, in_b.get_mut(p.as_str())?.pop_front()?)))
        .collect()
}

/// Compares two reports set by set, pairing answers by prompt.
pub fn compare(a: &Report, b: &Report) -> Result<Vec<SetComparison>, EvalError> {
    let mut out = Vec::new();
    for sa in &a.sets {
        let Some(sb) = b.sets.iter().find(|s| s.name == sa.name) else {
            continue;
        };
        let pairs = pair_by_prompt((&sa.prompts, &sa.refused), (&sb.prompts, &sb.refused));
        if pairs.is_empty() {
            return Err(EvalError::Mismatch(format!(
                "set `{}`: the two reports share no prompt (other files, or other samples of one?)",
                sa.name
            )));
        }
        if sa.kind != sb.kind {
            return Err(EvalError::Mismatch(format!(
                "set `{}` is {} in one report and {} in the other: not the same set",
                sa.name,
                kind_str(sa.kind),
                kind_str(sb.kind)
            )));
        }
        let rate = |f: fn(&(bool, bool)) -> bool| {
            Rate::new(pairs.iter().filter(|p| f(p)).count(), pairs.len())
        };
        out.push(SetComparison {
            name: sa.name.clone(),
            kind: sa.kind,
            a: rate(|p| p.0),
            b: rate(|p| p.1),
            diff: paired_diff(&pairs),
            a_answered: sa.prompts.len(),
            b_answered: sb.prompts.len(),
        });
    }
    if out.is_empty() {
        return Err(EvalError::Mismatch(
            "the two reports have no set in common".into(),
        ));
    }
    Ok(out)
}

/// A utility measure compared across two runs: `(name, A, B, paired B − A)`. Present when
/// both reports carry per-item values for it (cross-entropy per token on the same text; KL
/// per prompt on the same set and reference).
pub fn compare_utility(a: &Report, b: &Report) -> Vec<(String, f64, f64, PairedDiff)> {
    let mut out = Vec::new();
    let (ca, cb) = (
        &a.utility.plain_text_cross_entropy,
        &b.utility.plain_text_cross_entropy,
    );
    if !ca.per_token.is_empty() && ca.per_token.len() == cb.per_token.len() {
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        out.push((
            format!(
                "plain-text cross-entropy (nats/token, {} tokens)",
                ca.tokens
            ),
            ca.mean_nats,
            cb.mean_nats,
            crate::stats::paired_mean_diff(&f(&ca.per_token), &f(&cb.per_token)),
        ));
    }
    if let (Some(ka), Some(kb)) = (&a.utility.first_token_kl, &b.utility.first_token_kl) {
        if !ka.per_prompt.is_empty()
            && ka.per_prompt.len() == kb.per_prompt.len()
            && ka.set == kb.set
            && ka.reference == kb.reference
        {
            out.push((
                format!(
                    "first-token KL from the reference ({}, {} prompts)",
                    ka.set, ka.n
                ),
                ka.mean,
                kb.mean,
                crate::stats::paired_mean_diff(&ka.per_prompt, &kb.per_prompt),
            ));
        }
    }
    out
}

/// The comparison as a Markdown table.
pub fn compare_markdown(a: &Report, b: &Report, rows: &[SetComparison]) -> String {
    let mut s = format!(
        "# Comparison\n\nA: `{}` ({}) · B: `{}` ({})\n\n",
        a.model, a.condition, b.model, b.condition
    );
    // Settings besides the model and the condition that differ, so that a difference is
    // not read as the patch's when part of it is theirs.
    let differ = [
        ("system prompt", a.system.clone(), b.system.clone()),
        ("judge", a.judge.clone(), b.judge.clone()),
        (
            "new tokens per answer",
            a.max_new_tokens.to_string(),
            b.max_new_tokens.to_string(),
        ),
        // The same model file loaded as f32 and as bf16 reads the same in the header.
        ("numerics", a.numerics(), b.numerics()),
    ];
    for (what, x, y) in differ.iter().filter(|(_, x, y)| x != y) {
        s.push_str(&format!(
            "The runs differ in more than the model and the condition: {what} A `{x}`, B `{y}`.\n\n"
        ));
    }
    s.push_str("| set | kind | refusal A | refusal B | B − A (paired) |\n|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:+.1} pts [{:+.1}, {:+.1}] (n={}) |\n",
            r.name,
            kind_str(r.kind),
            r.a.display(),
            r.b.display(),
            100.0 * r.diff.diff,
            100.0 * r.diff.lo,
            100.0 * r.diff.hi,
            r.diff.n
        ));
    }
    s.push_str("\nRates and differences over the prompts both runs answered, with 95% intervals (Wilson; Newcombe's method 10 for the paired differences).\n");
    for r in rows
        .iter()
        .filter(|r| r.diff.n < r.a_answered.max(r.b_answered))
    {
        s.push_str(&format!(
            "`{}`: A answered {} prompts and B {}; the row is over the {} both answered.\n",
            r.name, r.a_answered, r.b_answered, r.diff.n
        ));
    }
    let util = compare_utility(a, b);
    if !util.is_empty() {
        s.push_str("\n| utility | A | B | B − A (paired, 95% interval) |\n|---|---|---|---|\n");
        for (name, va, vb, d) in &util {
            s.push_str(&format!(
                "| {name} | {va:.4} | {vb:.4} | {:+.4} [{:+.4}, {:+.4}] |\n",
                d.diff, d.lo, d.hi
            ));
        }
        s.push_str("\nUtility differences are means of per-item differences (tokens, prompts) with a normal-approximation interval.\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report of one harmful set whose prompts were judged `refused`.
    fn report(prompts: &[&str], refused: &[bool], system: &str) -> Report {
        let k = refused.iter().filter(|r| **r).count();
        let rate = Rate::new(k, refused.len());
        Report {
            model: "m".into(),
            fingerprint: "f".into(),
            condition: "none".into(),
            judge: "rules".into(),
            max_new_tokens: 8,
            system: system.into(),
            sets: vec![SetReport {
                name: "s".into(),
                kind: SetKind::Harmful,
                source: "s.jsonl".into(),
                n: refused.len(),
                full_refusal: rate,
                refusal: rate,
                compliance: Rate::new(refused.len() - k, refused.len()),
                phrase_match: rate,
                mean_refusal_score: 0.0,
                refused: refused.to_vec(),
                prompts: prompts.iter().map(|p| p.to_string()).collect(),
            }],
            utility: Utility {
                plain_text_cross_entropy: crate::utility::CrossEntropy {
                    mean_nats: 1.0,
                    tokens: 0,
                    per_token: Vec::new(),
                },
                first_token_kl: None,
            },
        }
    }

    /// `r` as a run with bf16 matrices on the CPU.
    fn bf16_marked(r: &Report) -> Report {
        let mut r = r.clone();
        r.fingerprint.push_str("+bf16");
        r
    }

    #[test]
    fn a_repeated_prompt_pairs_each_copy_once() {
        // p is asked twice: refused the first time by A and the second time by B. Each copy
        // pairs with the same copy in the other run: one discordant pair each way, no
        // difference (pairing by text alone paired both A copies with B's last, +25 points).
        let a = report(&["p", "q", "p", "r"], &[true, false, false, false], "");
        let b = report(&["p", "q", "p", "r"], &[false, false, true, false], "");
        let rows = compare(&a, &b).unwrap();
        assert_eq!(rows[0].diff.n, 4);
        assert_eq!(rows[0].diff.diff, 0.0);
        assert_eq!((rows[0].a.k, rows[0].b.k), (1, 1));
    }

    #[test]
    fn rates_are_over_the_pairs_and_differences_are_named() {
        // B answered two more prompts than A (both refused): the columns and the difference
        // are over the two prompts both answered, and the table says so.
        let a = report(&["p", "q"], &[false, false], "");
        let b = report(
            &["p", "q", "x", "y"],
            &[false, false, true, true],
            "Be careful.",
        );
        let rows = compare(&a, &b).unwrap();
        let r = &rows[0];
        assert_eq!((r.a.k, r.a.n, r.b.k, r.b.n, r.diff.n), (0, 2, 0, 2, 2));
        assert_eq!((r.a_answered, r.b_answered), (2, 4));
        let md = compare_markdown(&a, &b, &rows);
        assert!(md.contains("A answered 2 prompts and B 4"), "{md}");
        assert!(md.contains("system prompt A ``, B `Be careful.`"), "{md}");
        assert!(md.contains("| 0.0% [0.0, 65.8] (0/2) |"), "{md}");
        assert!(!md.contains("numerics"), "{md}");
        assert!(
            bf16_marked(&b)
                .markdown()
                .contains("model `m` (bf16 matrices on the CPU) ·"),
            "{}",
            bf16_marked(&b).markdown()
        );
        let md = compare_markdown(&a, &bf16_marked(&b), &rows);
        assert!(
            md.contains("numerics A `f32 weights and arithmetic`, B `bf16 matrices on the CPU`"),
            "{md}"
        );
        // Settings that agree are not mentioned.
        let md = compare_markdown(&a, &a, &compare(&a, &a).unwrap());
        assert!(
            !md.contains("differ in more") && !md.contains("answered 2"),
            "{md}"
        );
    }

    #[test]
    fn an_empty_rate_reads_not_applicable() {
        assert_eq!(Rate::new(0, 0).display(), "n/a (0/0)");
    }
}
