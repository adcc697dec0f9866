//! Agreement of the judge with the human labels of a judged XSTest file:
//! `cargo run --release -p steerkit-data --example agreement -- ../shared/datasets/xstest_judged.jsonl`

use steerkit_data::{Judge, Verdict};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: agreement FILE.jsonl");
    let text = std::fs::read_to_string(&path).expect("readable file");
    let j = Judge::default();
    let mut per: std::collections::BTreeMap<String, [usize; 5]> = Default::default();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let human = v["label"].as_str().expect("label");
        let got = j.classify(v["completion"].as_str().unwrap_or(""));
        let phrase = j.phrase_match(v["completion"].as_str().unwrap_or(""));
        let h_ref = human != "compliance";
        let e = per
            .entry(v["model"].as_str().unwrap_or("?").to_string())
            .or_default();
        e[0] += 1;
        e[1] += (got.as_str() == human) as usize;
        e[2] += (got.is_refusal() == h_ref) as usize;
        e[3] += (phrase == h_ref) as usize;
        e[4] += (h_ref && got.is_refusal()) as usize;
        let _ = Verdict::Compliance;
    }
    for (m, e) in per {
        println!(
            "{m}: n={} 3-class {:.1}% binary {:.1}% phrase-list binary {:.1}% refusals caught {}",
            e[0],
            100.0 * e[1] as f64 / e[0] as f64,
            100.0 * e[2] as f64 / e[0] as f64,
            100.0 * e[3] as f64 / e[0] as f64,
            e[4]
        );
    }
}
