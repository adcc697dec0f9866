//! Orthogonalized weights give the same greedy tokens as hook-based ablation, in memory and
//! after a safetensors round trip.

use candle_core::{Device, Tensor};
use steerkit_model::{
    generate, load, Ablate, GenerateOptions, Hook, HookPoint, LoadOptions, Model, NoHook, Sampling,
    SystemPrompt,
};

fn greedy(model: &Model, prompts: &[Vec<u32>], stop: &[u32], hook: &mut dyn Hook) -> Vec<Vec<u32>> {
    let opts = GenerateOptions {
        max_new_tokens: 16,
        sampling: Sampling::Greedy,
        stop_ids: stop.to_vec(),
        pad_id: 0,
        keep_first_logprobs: false,
    };
    generate(model, prompts, &opts, hook, &mut |_| {})
        .unwrap()
        .into_iter()
        .map(|g| g.ids)
        .collect()
}

#[test]
fn orthogonalized_weights_equal_hook_ablation() {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../checkpoints/models/smollm2-135m-instruct.gguf");
    assert!(p.is_file(), "run scripts/fetch-models.sh");
    let m = load(p.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let texts = [
        "Name three fruits.",
        "What is the boiling point of water?",
        "Write a haiku about rain.",
        "How do I sort a list in Python?",
        "Who wrote Hamlet?",
        "Give me a synonym for happy.",
        "What is 15 times 4?",
        "Describe a cat in one sentence.",
        "What is the capital of Japan?",
        "Suggest a name for a dog.",
        "How many legs does a spider have?",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            m.chat
                .prompt(&m.tok, t, &SystemPrompt::Default)
                .unwrap()
                .ids
        })
        .collect();
    // A fixed direction, strong enough to change the outputs.
    let dir = Tensor::randn(0f32, 1.0, 576, &Device::Cpu).unwrap();
    let mut hook = Ablate::new(&dir, &HookPoint::ALL).unwrap();
    let hooked = greedy(&m.model, &prompts, &m.tok.stop_ids, &mut hook);
    let plain = greedy(&m.model, &prompts, &m.tok.stop_ids, &mut NoHook);
    assert_ne!(hooked, plain, "the ablation should change something");
    let ortho = steerkit_export::orthogonalize(&m.model, &dir).unwrap();
    assert!(ortho.lm_head.is_some(), "the tied head is untied");
    let baked = greedy(&ortho, &prompts, &m.tok.stop_ids, &mut NoHook);
    assert_eq!(baked, hooked);
    // Written as a Hugging Face folder and loaded back.
    let out = std::env::temp_dir().join(format!("steerkit-ortho-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    steerkit_model::hf::save_folder(&ortho, Some(&m.tok), Some(&m.chat), &out).unwrap();
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(
        greedy(&back.model, &prompts, &back.tok.stop_ids, &mut NoHook),
        hooked
    );
    std::fs::remove_dir_all(&out).unwrap();
    // As an f16 GGUF file with the source's tokenizer and template.
    let gguf = std::env::temp_dir().join(format!("steerkit-ortho-{}.gguf", std::process::id()));
    let src = steerkit_model::gguf::Gguf::open(&p).unwrap();
    steerkit_export::gguf::write(&ortho, &src, steerkit_export::gguf::GgufType::F16, &gguf)
        .unwrap();
    let back = load(gguf.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(
        back.tok.encode_text("Hello world").unwrap(),
        m.tok.encode_text("Hello world").unwrap()
    );
    let f16 = greedy(&back.model, &prompts, &back.tok.stop_ids, &mut NoHook);
    let same = f16.iter().zip(&hooked).filter(|(a, b)| a == b).count();
    eprintln!(
        "f16 GGUF: {same}/{} prompts token-identical to hook ablation",
        prompts.len()
    );
    assert_eq!(f16, hooked);
    std::fs::remove_file(&gguf).unwrap();
    // A direction of the wrong width.
    let bad = Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(steerkit_export::orthogonalize(&m.model, &bad)
        .unwrap_err()
        .to_string()
        .contains("another model"));
}
