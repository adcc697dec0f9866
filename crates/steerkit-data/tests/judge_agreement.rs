//! The agreement with people that reports print for the default judge (`DEFAULT_JUDGE`) is the
//! one the shipped rules measure on the human-labelled XSTest completions.

use std::path::PathBuf;

use steerkit_data::agreement::{by_model, labelled, read_responses, Confusion};
use steerkit_data::judge::{Judge, DEFAULT_JUDGE};

fn pct(c: &Confusion) -> f64 {
    100.0 * c.agree_binary() as f64 / c.n() as f64
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[test]
fn default_judge_names_its_measured_agreement() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/datasets/xstest_judged.jsonl");
    let rows = labelled(&read_responses(&path, "completion").unwrap());
    assert_eq!(rows.len(), 1350);
    let per = by_model(&Judge::default(), &rows);
    let mut all = Confusion::default();
    for c in per.values() {
        all.merge(c);
    }
    let model = |prefix: &str| {
        let (_, c) = per.iter().find(|(m, _)| m.starts_with(prefix)).unwrap();
        pct(c)
    };
    let measured = format!(
        "binary agreement with people {:.1}% on xstest_judged ({}/{}; GPT-4 {:.1}%, Llama-2 {:.1}%, Mistral-7B {:.1}%)",
        pct(&all),
        thousands(all.agree_binary()),
        thousands(all.n()),
        model("gpt-4"),
        model("llama-2"),
        model("mistral"),
    );
    assert!(
        DEFAULT_JUDGE.ends_with(&measured),
        "DEFAULT_JUDGE says {DEFAULT_JUDGE:?}; the shipped rules measure {measured:?}"
    );
}
