//! Leave-one-model-out agreement of the learned judge with people, and the judge's speed:
//!
//! ```text
//! cargo run --release -p steerkit-eval --example judge_lomo -- ../shared/datasets/xstest_judged.jsonl \
//!     [--write-rules crates/steerkit-data/src/judge.toml]
//! ```
//!
//! For each model in the file: learn rules from the hand-written base (`judge_base.toml`) on the
//! *other* models' labelled responses only, and measure agreement on the held-out model. Then
//! the hand-written base alone and the shipped rules (learned on every model: in-sample).
//! `--write-rules` writes the rules learned on every model (the shipped `judge.toml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use steerkit_data::agreement::{by_model, labelled, read_responses, Confusion, Labelled};
use steerkit_data::judge::{Judge, Rules};
use steerkit_data::learn::{choose_options, learn, option_grid, LearnOptions, Learned};
use steerkit_data::Verdict;
use steerkit_eval::agreement::table;

/// Options chosen by leave-one-model-out inside `rows`, then rules learned on all of `rows`.
fn learn_on<'a>(rows: impl Iterator<Item = &'a Labelled>) -> (LearnOptions, Learned) {
    let mut groups: BTreeMap<String, Vec<(&str, Verdict)>> = BTreeMap::new();
    for r in rows {
        groups
            .entry(r.model.clone())
            .or_default()
            .push((r.response.as_str(), r.label));
    }
    let base = Rules::base();
    let o = choose_options(&base, &groups, &option_grid());
    let train: Vec<(&str, Verdict)> = groups.into_values().flatten().collect();
    let l = learn(&base, &train, &o);
    (o, l)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, write) = match args.as_slice() {
        [p] => (PathBuf::from(p), None),
        [p, flag, out] if flag == "--write-rules" => (PathBuf::from(p), Some(PathBuf::from(out))),
        _ => {
            eprintln!("usage: judge_lomo FILE.jsonl [--write-rules OUT.toml]");
            std::process::exit(2);
        }
    };
    let rows = match read_responses(&path, "completion") {
        Ok(r) => labelled(&r),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let models: BTreeSet<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    println!(
        "{} labelled responses of {} models; learning options chosen by leave-one-model-out \
         inside each training set from {:?}\n",
        rows.len(),
        models.len(),
        option_grid()
            .iter()
            .map(|o| (o.opening_gain, o.pivot_gain, o.min_precision))
            .collect::<Vec<_>>()
    );

    println!("## Leave one model out: learned on the other models, measured on the held-out one\n");
    let mut held = Vec::new();
    let mut pooled = Confusion::default();
    for m in &models {
        let (o, l) = learn_on(rows.iter().filter(|r| r.model != *m));
        let c = by_model(&Judge::new(l.rules), rows.iter().filter(|r| r.model == *m))
            .remove(*m)
            .expect("rows of the held-out model");
        pooled.merge(&c);
        println!(
            "- held out `{m}`: chose opening_gain {:?}, pivot_gain {:?}, min_precision {}; {} openings learned {:?}; pivots {:?}",
            o.opening_gain,
            o.pivot_gain,
            o.min_precision,
            l.openings.len(),
            l.openings,
            l.pivots
        );
        held.push((format!("{m} (held out)"), c));
    }
    held.push(("all three, pooled".into(), pooled));
    let refs: Vec<(String, &Confusion)> = held.iter().map(|(n, c)| (n.clone(), c)).collect();
    println!("\n{}", table("held-out model", &refs));

    let show = |title: &str, j: &Judge| {
        let per: BTreeMap<String, Confusion> = by_model(j, &rows);
        let refs: Vec<(String, &Confusion)> = per.iter().map(|(n, c)| (n.clone(), c)).collect();
        println!("## {title}\n\n{}", table("model", &refs));
    };
    show(
        "Hand-written base rules (judge_base.toml), no learning",
        &Judge::new(Rules::base()),
    );
    let (opts, all) = learn_on(rows.iter());
    let shipped = Judge::new(all.rules.clone());
    show(
        "Rules learned on all three models (the shipped judge.toml): in-sample, not a held-out measure",
        &shipped,
    );

    // Speed: every response judged, repeated, on this one thread.
    let t0 = Instant::now();
    let mut n = 0usize;
    while t0.elapsed().as_secs_f64() < 2.0 {
        for r in &rows {
            std::hint::black_box(shipped.judge(&r.response));
            n += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let chars: usize = rows.iter().map(|r| r.response.len()).sum();
    println!(
        "speed: {n} judgements in {secs:.2} s on one thread: {:.0} responses/s (mean response {} bytes)",
        n as f64 / secs,
        chars / rows.len()
    );

    if let Some(out) = write {
        let header = format!(
            "steerkit's refusal judge rules: judge_base.toml (hand-written; see its header) plus\n\
             phrases learned by steerkit_data::learn from {} human-labelled XSTest v2 completions\n\
             (../shared/datasets/xstest_judged.jsonl) of\n\
             {},\n\
             options chosen by leave-one-model-out inside them:\n\
             {opts:?}.\n\
             Generated by `cargo run --release -p steerkit-eval --example judge_lomo -- FILE\n\
             --write-rules crates/steerkit-data/src/judge.toml`: edit judge_base.toml, not this file.\n\
             \n\
             Phrases are matched as whole words, case-insensitively, after curly apostrophes are\n\
             straightened and whitespace is collapsed. Extend them with `--judge-rules FILE` (same\n\
             keys; a list there is added to the list here). `partial_pivots` is the learned choice\n\
             among judge_base.toml's pivots and phrases of the labelled responses.",
            rows.len(),
            models.iter().copied().collect::<Vec<_>>().join(", "),
        );
        let learned = BTreeMap::from([
            ("refusal_openings", all.openings.clone()),
            (
                "partial_pivots",
                all.pivots
                    .iter()
                    .filter(|p| !Rules::base().partial_pivots.contains(p))
                    .cloned()
                    .collect(),
            ),
        ]);
        std::fs::write(&out, all.rules.to_toml(&header, &learned)).expect("writable rules file");
        println!("rules learned on all models written to {}", out.display());
    }
}
