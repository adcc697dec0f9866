//! Agreement of the default judge with human labels (XSTest v2 completions judged by people):
//! `cargo run --release -p steerkit-data --example agreement -- ../shared/datasets/xstest_judged.jsonl`
//!
//! Prints, per model: 3-class agreement, binary (refusal vs compliance) agreement of the judge
//! and of the refusal-phrase list, and the judge's recall and precision of refusals.

use std::collections::BTreeMap;

use steerkit_data::Judge;

#[derive(Default)]
struct Tally {
    n: usize,
    three: usize,
    binary: usize,
    phrase: usize,
    human_ref: usize,
    judge_ref: usize,
    both_ref: usize,
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: agreement FILE.jsonl");
    let text = std::fs::read_to_string(&path).expect("readable file");
    let j = Judge::default();
    let mut per: BTreeMap<String, Tally> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let human = v["label"].as_str().expect("a `label` field");
        let completion = v["completion"].as_str().unwrap_or("");
        let got = j.classify(completion);
        let h = human != "compliance";
        let t = per
            .entry(v["model"].as_str().unwrap_or("?").to_string())
            .or_default();
        t.n += 1;
        t.three += (got.as_str() == human) as usize;
        t.binary += (got.is_refusal() == h) as usize;
        t.phrase += (j.phrase_match(completion) == h) as usize;
        t.human_ref += h as usize;
        t.judge_ref += got.is_refusal() as usize;
        t.both_ref += (h && got.is_refusal()) as usize;
    }
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    println!("| model | n | 3-class | binary | phrase list, binary | refusal recall | refusal precision |");
    println!("|---|---|---|---|---|---|---|");
    for (m, t) in per {
        println!(
            "| {m} | {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% ({}/{}) | {:.1}% ({}/{}) |",
            t.n,
            pct(t.three, t.n),
            pct(t.binary, t.n),
            pct(t.phrase, t.n),
            pct(t.both_ref, t.human_ref),
            t.both_ref,
            t.human_ref,
            pct(t.both_ref, t.judge_ref),
            t.both_ref,
            t.judge_ref
        );
    }
}
