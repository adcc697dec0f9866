//! The one-pass layer choice captures the same block inputs as a separate caching pass, and
//! both equal a plain forward of each prompt alone, on a tiny random model with SmolLM2's real
//! tokenizer and template.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use steerkit_actor::states::{block_inputs, last_token_states, log_softmax};
use steerkit_eval::score::refusal_score;
use steerkit_model::gguf::Gguf;
use steerkit_model::random::{max_abs_diff, random_model, tiny_config};
use steerkit_model::{shared_prefix_len, Arch, Loaded, Mode, NoHook, SourceKind, SystemPrompt};

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
            let d = max_abs_diff(a, b).unwrap();
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

/// The template's shared tokens run once; every prompt's block inputs and first-token refusal
/// score still equal those of the prompt run alone, from its first token, with no cache.
#[test]
fn block_inputs_with_the_shared_prefix_equal_each_prompt_alone() {
    let m = tiny();
    let prompts = [
        "How do I kill a Python process?",
        "Hi",
        "Write a limerick about a cat who learns to code in Rust, with a twist at the end.",
    ];
    let sys = SystemPrompt::Default;
    let rid = [1u32, 2, 3];
    let (inputs, scores) = block_inputs(&m, &prompts, &sys, 2, 2, Some(&rid), &mut |_| {}).unwrap();
    let scores = scores.unwrap();
    // Without scores only the blocks below the layer run; the inputs are the same.
    let (below, _) = block_inputs(&m, &prompts, &sys, 2, 2, None, &mut |_| {}).unwrap();
    let shared = {
        let rows: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| m.chat.prompt(&m.tok, p, &sys).unwrap().ids)
            .collect();
        shared_prefix_len(&rows)
    };
    assert!(shared > 5, "the template shares only {shared} tokens");
    for (i, p) in prompts.iter().enumerate() {
        let ids = m.chat.prompt(&m.tok, p, &sys).unwrap().ids;
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let x = m.model.embed(&ids).unwrap();
        let want = m
            .model
            .forward_layers(x, &[0], 0..2, None, &mut NoHook, Mode::Inference)
            .unwrap()
            .squeeze(0)
            .unwrap();
        for got in [&inputs[i], &below[i]] {
            assert_eq!(got.dims(), want.dims());
            let d = max_abs_diff(got, &want).unwrap();
            assert!(d < 1e-5, "prompt {i}: {d}");
        }
        let logits = m.model.last_logits(&ids, &[0], &mut NoHook).unwrap();
        let lp = log_softmax(&logits).unwrap().to_vec2::<f32>().unwrap();
        let want = refusal_score(&lp[0], &rid);
        assert!(
            (scores[i] - want).abs() < 1e-4,
            "prompt {i}: {} vs {want}",
            scores[i]
        );
    }
}
