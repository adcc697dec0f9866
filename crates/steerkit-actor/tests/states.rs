//! The one-pass layer choice captures the same block inputs as a separate caching pass, on a
//! tiny random model with SmolLM2's real tokenizer and template.

use std::path::PathBuf;

use candle_core::DType;
use steerkit_actor::states::{block_inputs, last_token_states};
use steerkit_model::gguf::Gguf;
use steerkit_model::random::{random_model, tiny_config};
use steerkit_model::{Arch, Loaded, SourceKind, SystemPrompt};

fn tiny() -> Loaded {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../checkpoints/models/smollm2-135m-instruct.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    let g = Gguf::open(&p).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let mut cfg = tiny_config(Arch::Llama, tok.vocab_size());
    cfg.num_layers = 3;
    Loaded {
        model: random_model(cfg, DType::F32, 4).unwrap(),
        tok,
        chat,
        kind: SourceKind::Gguf,
        path: p,
    }
}

#[test]
fn captured_inputs_equal_a_second_pass() {
    let m = tiny();
    let prompts = [
        "How do I kill a Python process?",
        "Hi",
        "Write a limerick about a cat who learns to code in Rust, with a twist at the end.",
    ];
    let sys = SystemPrompt::Default;
    let (states, captured) = last_token_states(&m, &prompts, &sys, 2, 1..3, &mut |_| {}).unwrap();
    assert_eq!(states.dims(), &[3, 3, 32]);
    assert_eq!(captured.len(), 2);
    for layer in 1..3 {
        let (again, scores) =
            block_inputs(&m, &prompts, &sys, layer, 3, None, &mut |_| {}).unwrap();
        assert!(scores.is_none());
        for (a, b) in captured[layer - 1].iter().zip(&again) {
            assert_eq!(a.dims(), b.dims());
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "layer {layer}: {d}");
        }
    }
    // Rows keep their own lengths (no padding).
    let lens: Vec<usize> = captured[0].iter().map(|t| t.dim(0).unwrap()).collect();
    assert!(lens[1] < lens[0] && lens[0] < lens[2], "{lens:?}");
    // With refusal ids the whole model runs and each prompt gets a finite score.
    let (_, scores) =
        block_inputs(&m, &prompts, &sys, 1, 2, Some(&[1, 2, 3]), &mut |_| {}).unwrap();
    assert!(scores.unwrap().iter().all(|s| s.is_finite()));
}
