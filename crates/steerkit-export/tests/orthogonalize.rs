//! Orthogonalized weights give the same greedy tokens as hook-based ablation, in memory and
//! after a safetensors round trip.

use candle_core::{Device, IndexOp, Tensor};
use steerkit_model::{
    generate, load, Ablate, GenerateOptions, Hook, HookPoint, LoadOptions, Mode, Model, NoHook,
    Sampling, SystemPrompt,
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

/// A file's bytes hashed, to compare two large files without holding both on disk.
fn digest(p: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(p).unwrap().hash(&mut h);
    h.finish()
}

/// How far the greedy continuations `expected` are from being `model`'s own greedy choice:
/// the largest logit gap `max - logit[expected token]` over every generated position of every
/// prompt, teacher-forced. Zero when `model` would generate exactly `expected`; a few hundredths
/// where rounding (f16 weights, another CPU's kernels) flips a near tie.
fn max_gap(model: &Model, prompts: &[Vec<u32>], expected: &[Vec<u32>]) -> f32 {
    let mut worst = 0f32;
    for (p, e) in prompts.iter().zip(expected) {
        let ids: Vec<u32> = p.iter().chain(e).copied().collect();
        let x = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let h = model
            .forward(&x, &[0], None, &mut NoHook, Mode::Inference)
            .unwrap()
            .i(0)
            .unwrap();
        let logits = model
            .logits(&h.narrow(0, p.len() - 1, e.len()).unwrap())
            .unwrap();
        let rows: Vec<Vec<f32>> = logits
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (row, &tok) in rows.iter().zip(e) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            worst = worst.max(max - row[tok as usize]);
        }
    }
    worst
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
    // A fixed direction (the same on every run), strong enough to change the outputs.
    let dir = steerkit_model::random::seeded_normal(576, 1).unwrap();
    let mut hook = Ablate::new(&dir, &HookPoint::ALL).unwrap();
    let hooked = greedy(&m.model, &prompts, &m.tok.stop_ids, &mut hook);
    let plain = greedy(&m.model, &prompts, &m.tok.stop_ids, &mut NoHook);
    assert_ne!(hooked, plain, "the ablation should change something");
    let ortho = steerkit_export::orthogonalize(&m.model, &dir).unwrap();
    assert!(ortho.lm_head.is_some(), "the tied head is untied");
    // Token equality is the goal, but a near tie can flip on another CPU, so the check is
    // the teacher-forced logit gap; the unmodified model shows that the check discriminates.
    let unmodified = max_gap(&m.model, &prompts, &hooked);
    assert!(unmodified > 0.5, "unmodified model's gap {unmodified}");
    let gap = max_gap(&ortho, &prompts, &hooked);
    eprintln!("orthogonalized: gap {gap:.2e} (unmodified {unmodified:.2})");
    assert!(gap < 1e-2, "orthogonalized weights: gap {gap}");
    // Written as a Hugging Face folder and loaded back.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    steerkit_model::hf::save_folder(&ortho, Some(&m.tok), Some(&m.chat), &out).unwrap();
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let gap = max_gap(&back.model, &prompts, &hooked);
    assert!(gap < 1e-2, "safetensors round trip: gap {gap}");
    // Each output is removed once compared, so that the test holds 1 GB of disk at most.
    let files = ["model.safetensors", "config.json", "tokenizer.json"];
    let folder_digests: Vec<u64> = files.iter().map(|f| digest(&out.join(f))).collect();
    std::fs::remove_dir_all(&out).unwrap();
    // As an f16 GGUF file with the source's tokenizer and template.
    let gguf = tmp.path().join("ortho.gguf");
    let src = steerkit_model::gguf::Gguf::open(&p).unwrap();
    let meta = steerkit_export::gguf::source_metadata(&src);
    let f16 = steerkit_export::gguf::GgufType::F16;
    steerkit_export::gguf::write(&ortho, &meta, f16, &gguf).unwrap();
    // Orthogonalized as written, a tensor at a time (as `steerkit export` does): the same
    // file, byte for byte, and the same folder.
    let (untied, o) = steerkit_export::Orthogonalizer::new(&m.model, &dir).unwrap();
    let map = |name: &str, t| o.apply(name, t);
    let lazy = tmp.path().join("lazy.gguf");
    let opts = steerkit_export::gguf::WriteOptions {
        map: Some(&map),
        progress: None,
    };
    steerkit_export::gguf::write_with(&untied, &meta, f16, &lazy, &opts).unwrap();
    assert_eq!(digest(&lazy), digest(&gguf));
    std::fs::remove_file(&lazy).unwrap();
    let lazy = tmp.path().join("lazy");
    let opts = steerkit_model::hf::FolderSave {
        tok: Some(&m.tok),
        chat: Some(&m.chat),
        map: Some(&map),
        ..Default::default()
    };
    steerkit_model::hf::save(&untied, &lazy, &opts).unwrap();
    for (file, want) in files.iter().zip(&folder_digests) {
        assert_eq!(digest(&lazy.join(file)), *want, "{file}");
    }
    std::fs::remove_dir_all(&lazy).unwrap();
    let back = load(gguf.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(
        back.tok.encode_text("Hello world").unwrap(),
        m.tok.encode_text("Hello world").unwrap()
    );
    let f16 = greedy(&back.model, &prompts, &back.tok.stop_ids, &mut NoHook);
    let same = f16.iter().zip(&hooked).filter(|(a, b)| a == b).count();
    let gap = max_gap(&back.model, &prompts, &hooked);
    eprintln!(
        "f16 GGUF: {same}/{} prompts token-identical to hook ablation, gap {gap:.3}",
        prompts.len()
    );
    assert!(gap < 0.1, "f16 GGUF: gap {gap}");
    // A direction of the wrong width.
    let bad = Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(steerkit_export::orthogonalize(&m.model, &bad)
        .unwrap_err()
        .to_string()
        .contains("another model"));
}

/// With bf16 matrices on the CPU, the projected matrices are kept in f32: the direction is
/// removed exactly (not up to bf16 rounding of the result), and the untouched ones stay bf16.
#[test]
fn bf16_matrices_are_projected_in_f32() -> Result<(), Box<dyn std::error::Error>> {
    use candle_core::DType;
    use steerkit_model::random::{max_abs_diff, random_model, seeded_normal, tiny_config};
    let m = random_model(tiny_config(steerkit_model::Arch::Llama, 64), DType::BF16, 3)?;
    let r = seeded_normal(32, 5)?;
    let o = steerkit_export::orthogonalize(&m, &r)?;
    let unit = r
        .broadcast_div(&r.sqr()?.sum_all()?.sqrt()?)?
        .unsqueeze(0)?;
    for blk in &o.layers {
        for w in [&blk.o.weight, &blk.dense().unwrap().down.weight] {
            assert_eq!(w.dtype(), DType::F32);
            let left = unit.matmul(w)?;
            let worst = max_abs_diff(&left, &left.zeros_like()?)?;
            assert!(worst < 1e-5, "r̂ᵀW = {worst} after orthogonalization");
        }
        assert_eq!(blk.q.weight.dtype(), DType::BF16);
    }
    assert_eq!(
        o.matrix_dtype(),
        DType::BF16,
        "the untied head is kept as it was"
    );
    Ok(())
}

/// A mixture of experts (tiny Qwen3-MoE: block 1 routes each token to 2 of 4 experts; tiny
/// gpt-oss: every block to 3 of 4, with biases on o and on every expert's down projection;
/// tiny Qwen2-MoE: Qwen3-MoE's routing beside a shared expert) orthogonalized computes what
/// hook ablation at every point of the unmodified model does: every expert's down projection
/// (and bias), the shared one's included, is projected, not only the ones a prompt happens
/// to use.
#[test]
fn mixture_of_experts_orthogonalizes_every_expert() -> Result<(), Box<dyn std::error::Error>> {
    use steerkit_model::Arch;
    for arch in [Arch::Qwen3Moe, Arch::GptOss, Arch::Qwen2Moe] {
        experts_orthogonalized(arch)?;
    }
    Ok(())
}

fn experts_orthogonalized(arch: steerkit_model::Arch) -> Result<(), Box<dyn std::error::Error>> {
    use candle_core::DType;
    use steerkit_model::random::{max_abs_diff, random_model, seeded_normal, tiny_config};
    let m = random_model(tiny_config(arch, 64), DType::F32, 3)?;
    let r = seeded_normal(32, 5)?;
    let o = steerkit_export::orthogonalize(&m, &r)?;
    let rows = [vec![3u32, 1, 4, 1, 5, 9, 2, 6], vec![5u32, 3, 5]];
    let (ids, pads) = steerkit_model::left_pad(&rows, 0, &Device::Cpu)?;
    let mut hook = Ablate::new(&r, &HookPoint::ALL)?;
    let hooked = m.last_logits(&ids, &pads, &mut hook)?;
    let baked = o.last_logits(&ids, &pads, &mut NoHook)?;
    let plain = m.last_logits(&ids, &pads, &mut NoHook)?;
    let (gap, effect) = (
        max_abs_diff(&hooked, &baked)?,
        max_abs_diff(&hooked, &plain)?,
    );
    assert!(
        gap < 1e-4 && effect > 1e-2,
        "{arch:?}: orthogonalized {gap}, ablation's effect {effect}"
    );
    // Orthogonalized as a folder is written (gpt-oss's experts stacked as its files hold
    // them), and read back: what the orthogonalized model computes.
    let (untied, ortho) = steerkit_export::Orthogonalizer::new(&m, &r)?;
    let map = |name: &str, t| ortho.apply(name, t);
    let dir = tempfile::tempdir()?;
    let opts = steerkit_model::hf::FolderSave {
        map: Some(&map),
        ..Default::default()
    };
    steerkit_model::hf::save(&untied, &dir.path().join("m"), &opts)?;
    let back = steerkit_model::hf::HfFolder::open(&dir.path().join("m"))?
        .model(&Device::Cpu, DType::F32)?;
    let read = back.last_logits(&ids, &pads, &mut NoHook)?;
    assert!(
        max_abs_diff(&read, &baked)? < 1e-5,
        "{arch:?}: folder written orthogonalized"
    );
    let Some(steerkit_model::Mlp::Moe(e)) = o.layers.get(1).map(|b| &b.mlp) else {
        panic!("block 1 is a mixture of experts")
    };
    let unit = r
        .broadcast_div(&r.sqr()?.sum_all()?.sqrt()?)?
        .unsqueeze(0)?;
    assert_eq!(e.shared.is_some(), arch == steerkit_model::Arch::Qwen2Moe);
    for x in e.experts.iter().chain(e.shared.as_ref().map(|s| &s.mlp)) {
        let left = unit.matmul(&x.down.weight)?;
        assert!(max_abs_diff(&left, &left.zeros_like()?)? < 1e-5);
        if let Some(b) = &x.down.bias {
            let along = unit.matmul(&b.unsqueeze(1)?)?;
            assert!(
                max_abs_diff(&along, &along.zeros_like()?)? < 1e-5,
                "{arch:?}"
            );
        }
    }
    Ok(())
}

/// Gemma norms each block's output before adding it to the residual, so projecting the
/// direction out of `o_proj` and `down_proj` would not keep it out: refused, with the way out.
#[test]
fn gemma_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    use candle_core::DType;
    use steerkit_model::random::{random_model, seeded_normal, tiny_config};
    use steerkit_model::Arch;
    for arch in [Arch::Gemma3, Arch::Olmo2, Arch::Olmo3] {
        let m = random_model(tiny_config(arch, 64), DType::F32, 3)?;
        let err = steerkit_export::orthogonalize(&m, &seeded_normal(32, 5)?)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("not exact for {}", arch.name())),
            "{err}"
        );
        assert!(err.contains("--intervention ablate"), "{err}");
    }
    Ok(())
}
