//! Last-position logits equal an independent numpy float64 forward on the same dequantized
//! GGUF weights (`scripts/reference_logits.py`, fixture `tests/fixtures/reference_logits.json`).

mod common;

use steerkit_model::{left_pad, load, LoadOptions, NoHook};

fn check(name: &str) {
    let m = load(&common::model_path(name), &LoadOptions::default()).unwrap();
    let fx = common::fixture("reference_logits.json");
    let cases = fx["models"][name].as_array().unwrap();
    let rows: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| {
            c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    // All prompts in one left-padded batch: padding must not change any row.
    let (ids, pads) = left_pad(&rows, m.tok.pad_id, &m.model.device).unwrap();
    let logits: Vec<Vec<f32>> = m
        .model
        .last_logits(&ids, &pads, &mut NoHook)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (c, got) in cases.iter().zip(&logits) {
        let mut worst = 0f32;
        for key in ["top", "sampled"] {
            for pair in c[key].as_array().unwrap() {
                let id = pair[0].as_u64().unwrap() as usize;
                let want = pair[1].as_f64().unwrap() as f32;
                worst = worst.max((got[id] - want).abs());
            }
        }
        let argmax = steerkit_model::generate::argmax(got);
        assert_eq!(
            argmax as u64,
            c["argmax"].as_u64().unwrap(),
            "{name}: argmax"
        );
        assert!(
            worst < 1e-3,
            "{name}: max abs logit error {worst} (ids {:?})",
            c["ids"]
        );
        eprintln!(
            "{name}: {} tokens, max abs error {worst:.2e}",
            c["ids"].as_array().unwrap().len()
        );
    }
}

#[test]
fn smollm2_logits_match_reference() {
    check(common::MODELS[0]);
}

#[test]
fn qwen2_logits_match_reference() {
    check(common::MODELS[1]);
}
