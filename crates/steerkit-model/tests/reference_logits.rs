//! Last-position logits equal an independent numpy float64 forward on the same dequantized
//! GGUF weights (`scripts/reference_logits.py`, fixture `tests/fixtures/reference_logits.json`).

mod common;

use candle_core::{DType, Device};
use steerkit_model::{left_pad, load, LoadOptions, Model, NoHook};

/// The fixture's token rows of model `name`.
fn fixture_rows(name: &str) -> (Vec<serde_json::Value>, Vec<Vec<u32>>) {
    let fx = common::fixture("reference_logits.json");
    let cases = fx["models"][name].as_array().unwrap().clone();
    let rows: Vec<Vec<u32>> = cases.iter().map(ids_of).collect();
    (cases, rows)
}

/// A fixture case's `ids`.
fn ids_of(c: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(c["ids"].clone()).unwrap()
}

/// Last-position logits of `rows`, all in one left-padded batch (padding must not change any
/// row).
fn last_logits(m: &Model, pad_id: u32, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let (ids, pads) = left_pad(rows, pad_id, &m.device).unwrap();
    m.last_logits(&ids, &pads, &mut NoHook)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn check(name: &str) {
    let m = load(&common::model_path(name), &LoadOptions::default()).unwrap();
    let (cases, rows) = fixture_rows(name);
    let logits = last_logits(&m.model, m.tok.pad_id, &rows);
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

/// SmolLM2 loaded with bf16 matrices on the CPU computes what the f32 model with its matrices
/// rounded to bf16 computes (the kernel adds only summation-order error), and the rounding
/// keeps every fixture prompt's top token.
#[test]
fn smollm2_bf16_matrices_differ_only_by_rounding() {
    let name = common::MODELS[0];
    let path = common::model_path(name);
    let f32m = load(&path, &LoadOptions::default()).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: DType::BF16,
    };
    let m = load(&path, &opts).unwrap();
    assert_eq!(
        (m.model.matrix_dtype(), m.model.dtype),
        (DType::BF16, DType::F32)
    );
    let (cases, rows) = fixture_rows(name);
    let got = last_logits(&m.model, m.tok.pad_id, &rows);
    let rounded = steerkit_model::bf16::rounded_matrices(&f32m.model).unwrap();
    let want = last_logits(&rounded, m.tok.pad_id, &rows);
    let exact = last_logits(&f32m.model, m.tok.pad_id, &rows);
    for ((c, g), (w, e)) in cases.iter().zip(&got).zip(want.iter().zip(&exact)) {
        let diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        let (kernel, rounding) = (diff(g, w), diff(w, e));
        eprintln!("{name} bf16: kernel {kernel:.2e}, rounding {rounding:.2e}");
        assert!(
            kernel < 1e-3,
            "bf16 kernel against the rounded f32 model: {kernel}"
        );
        assert!(rounding > kernel, "the matrices were not rounded");
        assert_eq!(
            steerkit_model::generate::argmax(g) as u64,
            c["argmax"].as_u64().unwrap(),
            "top token under bf16"
        );
    }
}

/// The tiny random Qwen3 folder of `scripts/reference_qwen3.py` (per-head q/k RMSNorm,
/// `head_dim` apart from `hidden_size / heads`, tied embeddings): steerkit's logits at every
/// position equal the script's float64 forward pass, one sequence at a time, in one
/// left-padded batch and with the Differentiable forward.
#[test]
fn qwen3_tiny_logits_match_reference() {
    let dir = common::root().join("tests/fixtures/qwen3_tiny");
    let fx = qwen3_fixture();
    let m = qwen3_model(&dir);
    assert_eq!(m.cfg.arch, steerkit_model::Arch::Qwen3);
    assert_eq!(
        (m.cfg.head_dim, m.cfg.hidden_size / m.cfg.num_heads),
        (16, 8)
    );
    check_all_positions(&m, &fx["cases"], "qwen3 tiny");
}

/// The same folder with YaRN RoPE scaling in its config.json (factor 4 over an original
/// context of 4096: frequencies 0-1 kept, 2-3 interpolated, 4-7 divided by 4; cos and sin
/// times 1.139) equals the script's YaRN forward pass, which moves the logits by up to 0.86.
#[test]
fn qwen3_tiny_yarn_logits_match_reference() {
    let fx = qwen3_fixture();
    let yarn = &fx["yarn"];
    let d = qwen3_copy_with(|cfg| {
        cfg["rope_scaling"] = yarn["rope_scaling"].clone();
        cfg["max_position_embeddings"] = yarn["max_position_embeddings"].clone();
    });
    let m = qwen3_model(d.path());
    let f = m.cfg.rope_attention_factor();
    assert!((f - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12, "{f}");
    check_all_positions(&m, &yarn["cases"], "qwen3 tiny yarn");
    // Not the unscaled logits: the test can tell.
    let plain = &fx["cases"][2]["logits"][5];
    let scaled = &yarn["cases"][2]["logits"][5];
    assert_ne!(plain, scaled);
}

/// The same folder with sliding-window attention over 3 positions switched on in its
/// config.json (`use_sliding_window`, `max_window_layers` 0) equals the script's forward pass
/// with that window: the first 3 positions as without it, later ones not.
#[test]
fn qwen3_tiny_sliding_window_logits_match_reference() {
    let fx = qwen3_fixture();
    let sliding = &fx["sliding"];
    let d = qwen3_copy_with(|cfg| {
        for (k, v) in sliding["config"].as_object().unwrap() {
            cfg[k] = v.clone();
        }
    });
    let m = qwen3_model(d.path());
    assert_eq!(m.cfg.sliding_window, Some(3));
    check_all_positions(&m, &sliding["cases"], "qwen3 tiny sliding window");
    let (plain, windowed) = (&fx["cases"][2]["logits"], &sliding["cases"][2]["logits"]);
    assert_eq!(plain[2], windowed[2]);
    assert_ne!(plain[3], windowed[3]);
}

/// The tiny random Gemma 2 folder of `scripts/reference_gemma.py` (Gemma 3's conventions
/// without q/k norms and with one RoPE; blocks 0 and 2 on a window of 3; attention scores
/// soft-capped at 2 and the logits at 3) likewise; without the caps the logits are others.
#[test]
fn gemma2_tiny_logits_match_reference() {
    let (m, fx) = gemma_fixture("gemma2_tiny");
    let c = &m.cfg;
    assert_eq!(c.arch, steerkit_model::Arch::Gemma2);
    assert_eq!(windows(c), (Some(3), vec![1], None));
    assert_eq!(
        (c.attn_logit_softcapping, c.final_logit_softcapping),
        (Some(2.0), Some(3.0))
    );
    assert!(m.layers[0].q_norm.is_none());
    check_all_positions(&m, &fx["cases"], "gemma2 tiny");
    let mut uncapped = m.clone();
    uncapped.cfg.attn_logit_softcapping = None;
    uncapped.cfg.final_logit_softcapping = None;
    let rows: Vec<Vec<u32>> = fx["cases"].as_array().unwrap().iter().map(ids_of).collect();
    let (a, b) = (last_logits(&m, 0, &rows), last_logits(&uncapped, 0, &rows));
    let gap = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(gap > 0.1, "the caps change the logits by {gap} only");
}

/// The tiny random SmolLM3 folder of `scripts/reference_smollm3.py` (`no_rope_layers` [1, 0,
/// 1, 0]: blocks 1 and 3 without RoPE; a tied head): the logits at every position equal the
/// script's float64 forward (checked against transformers by
/// `scripts/check_fixture_transformers.py`), and the folder saved again says the same in
/// config.json. Without the list, every fourth block goes without, as SmolLM3Config has it;
/// a list of the wrong length and SmolLM3's sliding window are refused.
#[test]
fn smollm3_tiny_logits_match_reference() {
    let (m, fx) = gemma_fixture("smollm3_tiny");
    assert_eq!(m.cfg.arch, steerkit_model::Arch::SmolLm3);
    assert_eq!(m.cfg.nope_layers, vec![1, 3]);
    check_all_positions(&m, &fx["cases"], "smollm3 tiny");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    steerkit_model::hf::save_folder(&m, None, None, &dir).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["no_rope_layers"], serde_json::json!([1, 0, 1, 0]));
    check_all_positions(
        &qwen3_model(&dir),
        &fx["cases"],
        "smollm3 tiny, saved again",
    );
    let config = |edit: &dyn Fn(&mut serde_json::Value)| {
        config_with("smollm3_tiny", edit).map_err(|e| e.to_string())
    };
    let c = config(&|c| {
        c.as_object_mut().unwrap().remove("no_rope_layers");
    })
    .unwrap();
    assert_eq!(c.nope_layers, vec![3]);
    let err = config(&|c| c["no_rope_layers"] = serde_json::json!([1, 0])).unwrap_err();
    assert!(err.contains("2 entries for 4 layers"), "{err}");
    let err = config(&|c| c["use_sliding_window"] = true.into()).unwrap_err();
    assert!(err.contains("sliding window"), "{err}");
}

/// The tiny random Granite folder of `scripts/reference_granite.py` (embedding, residual and
/// attention multipliers and a logits scaling, all far from 1; an untied head): the logits at
/// every position equal the script's float64 forward (which
/// `scripts/check_fixture_transformers.py` checks against transformers), and the folder
/// saved again writes the four scalars under transformers' names and computes the same. The
/// scalars default to 1 when config.json leaves them out, as in GraniteConfig.
#[test]
fn granite_tiny_logits_match_reference() {
    let (m, fx) = gemma_fixture("granite_tiny");
    assert_eq!(m.cfg.arch, steerkit_model::Arch::Granite);
    let g = m.cfg.multipliers.expect("Granite's scalars");
    assert_eq!(
        (g.embedding, g.residual, g.attention, g.logits_scaling),
        (3.0, 0.5, 0.2, 4.0)
    );
    check_all_positions(&m, &fx["cases"], "granite tiny");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    steerkit_model::hf::save_folder(&m, None, None, &dir).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "granite");
    assert_eq!(cfg["attention_multiplier"], 0.2);
    assert_eq!(cfg["logits_scaling"], 4.0);
    check_all_positions(
        &qwen3_model(&dir),
        &fx["cases"],
        "granite tiny, saved again",
    );
    let d = copy_with("granite_tiny", |cfg| {
        for k in [
            "embedding_multiplier",
            "residual_multiplier",
            "attention_multiplier",
            "logits_scaling",
        ] {
            cfg.as_object_mut().unwrap().remove(k);
        }
    });
    let c = steerkit_model::hf::HfFolder::open(d.path())
        .unwrap()
        .config()
        .unwrap();
    let g = c.multipliers.expect("defaults");
    assert_eq!(
        (g.embedding, g.residual, g.attention, g.logits_scaling),
        (1.0, 1.0, 1.0, 1.0)
    );
}

/// The tiny random Phi-4-mini-shaped folder of `scripts/reference_phi3.py --phi4-mini`: RoPE
/// turns 12 of each head's 16 dimensions and is scaled by LongRoPE, short factors for the
/// 5-token sequence and long ones for the 9- and 13-token sequences, which go past the
/// original context of 8 (`scripts/check_fixture_transformers.py` checks the reference
/// against transformers). The logits at every position equal the reference's, alone and in
/// a left-padded batch that mixes both kinds of row; the folder saved again says the same in
/// config.json and computes the same.
#[test]
fn phi4_mini_tiny_logits_match_reference() {
    let (m, fx) = gemma_fixture("phi4_mini_tiny");
    let c = &m.cfg;
    assert_eq!(
        (c.head_dim, c.rotary_dim, c.sliding_window),
        (16, Some(12), None)
    );
    assert!(c.tie_word_embeddings);
    let Some(steerkit_model::RopeScaling::LongRope {
        original_max_position_embeddings,
        attention_factor,
        ..
    }) = c.rope_scaling.clone()
    else {
        panic!("LongRoPE: {:?}", c.rope_scaling)
    };
    assert_eq!(original_max_position_embeddings, 8.0);
    assert!((attention_factor - 2f64.sqrt()).abs() < 1e-12);
    check_all_positions(&m, &fx["cases"], "phi4-mini tiny");

    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    steerkit_model::hf::save_folder(&m, None, None, &dir).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["partial_rotary_factor"], 0.75);
    assert_eq!(cfg["rope_scaling"]["rope_type"], "longrope");
    assert_eq!(cfg["original_max_position_embeddings"], 8);
    let again = qwen3_model(&dir);
    assert_eq!(again.cfg.rope_scaling, m.cfg.rope_scaling);
    check_all_positions(&again, &fx["cases"], "phi4-mini tiny, saved again");
}

/// The tiny random Phi-3 folder of `scripts/reference_phi3.py` (q, k and v stored as one
/// `qkv_proj`, gate and up as one `gate_up_proj`; every block on a window of 3; an untied
/// head): the loader splits the fused tensors where transformers does, so the logits at every
/// position equal the script's float64 forward, each part stored apart (not as a view that
/// keeps the fused tensor alive). Saved again, the folder holds the fused
/// tensors, byte for byte, and none of the parts; a model whose fused tensor has other rows
/// than its configuration implies is an error naming it, and so is LongRoPE without its
/// factors or with too few, or a partial rotation that turns no dimension or an odd number.
#[test]
fn phi3_tiny_logits_match_reference() {
    let (m, fx) = gemma_fixture("phi3_tiny");
    let c = &m.cfg;
    assert_eq!(c.arch, steerkit_model::Arch::Phi3);
    assert_eq!((c.head_dim, c.sliding_window), (8, Some(3)));
    assert!(!c.tie_word_embeddings);
    check_all_positions(&m, &fx["cases"], "phi3 tiny");
    // Each part holds its own rows, not a view of the whole fused tensor.
    let held = |t: &candle_core::Tensor| match &*t.storage_and_layout().0 {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.len(),
        _ => panic!("f32 on the CPU"),
    };
    let b = &m.layers[0];
    for (name, w) in [
        ("k", &b.k.weight),
        ("v", &b.v.weight),
        ("up", &b.dense().unwrap().up.weight),
    ] {
        assert_eq!(
            held(w),
            w.elem_count(),
            "{name} keeps the fused tensor alive"
        );
    }
    // Each fused tensor is read once for all its parts.
    let dir = common::root().join("tests/fixtures/phi3_tiny");
    let stored =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let reads = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let get = steerkit_model::weights::with_fused(
        c,
        steerkit_model::weights::Layout::Folder,
        |name: &str| {
            *reads.lock().unwrap().entry(name.to_string()).or_insert(0) += 1;
            Ok(stored.get(name).cloned())
        },
    );
    let again = steerkit_model::weights::build(c.clone(), &Device::Cpu, DType::F32, get).unwrap();
    let reads = reads.into_inner().unwrap();
    for fused in ["self_attn.qkv_proj", "mlp.gate_up_proj"] {
        for l in 0..c.num_layers {
            let n = format!("model.layers.{l}.{fused}.weight");
            assert_eq!(reads.get(&n), Some(&1), "{n}");
        }
    }
    check_all_positions(&again, &fx["cases"], "phi3 tiny, loaded through with_fused");

    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    steerkit_model::hf::save_folder(&m, None, None, &dir).unwrap();
    let read = |d: &std::path::Path| {
        candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (src, saved) = (
        read(&common::root().join("tests/fixtures/phi3_tiny")),
        read(&dir),
    );
    let mut names: Vec<&String> = saved.keys().collect();
    names.sort();
    let mut want: Vec<&String> = src.keys().collect();
    want.sort();
    assert_eq!(names, want);
    for (n, t) in &src {
        let back = &saved[n];
        let gap = (t - back).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(gap.to_scalar::<f32>().unwrap(), 0.0, "{n}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "phi3");
    assert_eq!(cfg["sliding_window"], 3);
    check_all_positions(&qwen3_model(&dir), &fx["cases"], "phi3 tiny, saved again");

    // A configuration that disagrees with the stored rows.
    let d = copy_with("phi3_tiny", |cfg| cfg["num_key_value_heads"] = 4.into());
    let err = steerkit_model::hf::HfFolder::open(d.path())
        .unwrap()
        .model(&Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.0.self_attn.qkv_proj.weight"),
        "{err}"
    );
    for (key, value, says) in [
        (
            "rope_scaling",
            serde_json::json!({"type": "su", "short_factor": [1.0], "long_factor": [1.0]}),
            "LongRoPE needs 4 short and 4 long factors for 8 rotated dimensions (has 1 and 1)",
        ),
        (
            // Phi-3's "yarn" is LongRoPE, in transformers as here.
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            "longrope rope_scaling has no list of numbers `short_factor`",
        ),
        (
            "partial_rotary_factor",
            serde_json::json!(0.1),
            "an even number of a head's 8 dimensions, at least 2 (rotary_dim 0)",
        ),
        (
            "partial_rotary_factor",
            serde_json::json!(0.375),
            "(rotary_dim 3)",
        ),
    ] {
        let d = copy_with("phi3_tiny", |cfg| cfg[key] = value);
        let err = steerkit_model::hf::HfFolder::open(d.path())
            .unwrap()
            .config()
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{key}: {err}");
    }
    // Without the key, Phi-3 has no window (Mistral's default would be 4096).
    let d = copy_with("phi3_tiny", |cfg| {
        cfg.as_object_mut().unwrap().remove("sliding_window");
    });
    let c = steerkit_model::hf::HfFolder::open(d.path())
        .unwrap()
        .config()
        .unwrap();
    assert_eq!(c.sliding_window, None);
}

/// A multimodal Gemma 3 folder (Gemma3ForConditionalGeneration: `model_type` gemma3, the text
/// model's settings in `text_config`, a vision tower beside it) is read as its text model:
/// the tiny Gemma 3 fixture stored so, under the Hub's names (`language_model.model...`) and
/// under transformers 4.52-4.57's (`model.language_model...`), gives the fixture's logits; a
/// `text_config` that names only Gemma 3 4B's sizes, window and RoPE scaling gets the rest
/// from transformers' Gemma3TextConfig defaults (8 heads over 4 of 256, a vocabulary of
/// 262,208, every sixth block global), and the end-of-sequence ids of the top level. Saved, it
/// is a `gemma3_text` folder that computes the same.
#[test]
fn multimodal_gemma3_folder_reads_its_text_model() {
    let fx = gemma_fixture("gemma3_tiny").1;
    let src = common::root().join("tests/fixtures/gemma3_tiny");
    let mut text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    text.as_object_mut().unwrap().remove("architectures");
    let weights =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let vision = candle_core::Tensor::ones((16, 3, 14, 14), DType::F32, &Device::Cpu).unwrap();
    for (prefix, how) in [
        ("language_model.", "Hub names"),
        ("model.language_model.", "transformers 4.52 names"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let mut stored: std::collections::HashMap<String, candle_core::Tensor> = weights
            .iter()
            .map(|(n, t)| {
                let name = match prefix {
                    "language_model." => format!("{prefix}{n}"),
                    _ => format!("{prefix}{}", n.strip_prefix("model.").unwrap()),
                };
                (name, t.clone())
            })
            .collect();
        stored.insert(
            "vision_tower.embeddings.patch_embedding.weight".into(),
            vision.clone(),
        );
        candle_core::safetensors::save(&stored, d.path().join("model.safetensors")).unwrap();
        let config = serde_json::json!({
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "text_config": text,
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16},
            "eos_token_id": [1, 106],
        });
        std::fs::write(d.path().join("config.json"), config.to_string()).unwrap();
        let f = steerkit_model::hf::HfFolder::open(d.path()).unwrap();
        assert_eq!(f.multimodal(), Some("gemma3"));
        let m = f.model(&Device::Cpu, DType::F32).unwrap();
        assert_eq!(windows(&m.cfg), (Some(3), vec![2], Some(10_000.0)));
        check_all_positions(&m, &fx["cases"], &format!("multimodal gemma3 tiny, {how}"));
        // Written back as the text model, with the integer transformers 5.24 insists on.
        let out = d.path().join("text");
        steerkit_model::hf::save_folder(&m, None, None, &out).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model_type"], "gemma3_text");
        assert!(cfg["query_pre_attn_scalar"].is_u64(), "{cfg}");
        check_all_positions(
            &qwen3_model(&out),
            &fx["cases"],
            "multimodal gemma3 tiny, text model saved",
        );
    }
    // Gemma 3 4B's text_config, as sparse as the Hub's.
    let d = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "model_type": "gemma3",
        "text_config": {
            "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
            "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
        "eos_token_id": [1, 106],
    });
    std::fs::write(d.path().join("config.json"), config.to_string()).unwrap();
    let c = steerkit_model::hf::HfFolder::open(d.path())
        .unwrap()
        .config()
        .unwrap();
    assert_eq!(c.arch, steerkit_model::Arch::Gemma3);
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.num_layers,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim
        ),
        (262_208, 2560, 34, 8, 4, 256)
    );
    assert_eq!(c.query_pre_attn_scalar, Some(256.0));
    assert_eq!(
        windows(&c),
        (Some(1024), vec![5, 11, 17, 23, 29], Some(10_000.0))
    );
    assert_eq!(
        c.rope_scaling,
        Some(steerkit_model::RopeScaling::Linear { factor: 8.0 })
    );
    assert!(c.tie_word_embeddings);
}

/// The tiny random Granite 4 attention-only folder of `scripts/reference_granite4.py`
/// (transformers' own GraniteMoeHybridForCausalLM in float64: every block attention, no
/// experts, the shared MLP's gate and up fused as `input_linear`, Granite's four scalars far
/// from 1): steerkit's logits at every position equal transformers', with RoPE and without
/// it (`position_embedding_type` null, the class's default), and again after the folder is
/// saved and read back. Mamba blocks, absent layer types (Mamba by default) and experts are
/// refused.
#[test]
fn granite4_tiny_logits_match_transformers() {
    let (m, fx) = gemma_fixture("granite4_tiny");
    assert_eq!(m.cfg.arch, steerkit_model::Arch::GraniteHybrid);
    assert_eq!(m.cfg.intermediate_size, 40);
    assert!(m.cfg.nope_layers.is_empty());
    assert_eq!(m.cfg.multipliers.map(|g| g.embedding), Some(3.0));
    check_all_positions(&m, &fx["cases"], "granite4 tiny");
    let nope = copy_with("granite4_tiny", |c| {
        c["position_embedding_type"] = serde_json::Value::Null
    });
    let nope = qwen3_model(nope.path());
    assert_eq!(nope.cfg.nope_layers, vec![0, 1, 2]);
    check_all_positions(&nope, &fx["cases_nope"], "granite4 tiny, no RoPE");
    let out = tempfile::tempdir().unwrap();
    for (model, cases, name) in [(&m, "cases", "rope"), (&nope, "cases_nope", "nope")] {
        let dir = out.path().join(name);
        steerkit_model::hf::save_folder(model, None, None, &dir).unwrap();
        check_all_positions(&qwen3_model(&dir), &fx[cases], "granite4 tiny, saved again");
    }
    let config = |edit: &dyn Fn(&mut serde_json::Value)| config_with("granite4_tiny", edit);
    for (edit, needle) in [
        (
            &(|c: &mut serde_json::Value| c["layer_types"][1] = "mamba".into())
                as &dyn Fn(&mut serde_json::Value),
            "Mamba",
        ),
        (
            &|c: &mut serde_json::Value| {
                c.as_object_mut().unwrap().remove("layer_types");
            },
            "Mamba",
        ),
        (
            &|c: &mut serde_json::Value| c["num_local_experts"] = 4.into(),
            "experts",
        ),
    ] {
        let err = config(edit).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

/// The tiny random OLMo 2 folder of `scripts/reference_olmo2.py` (transformers' own
/// Olmo2ForCausalLM in float64: no input norms, output norms on the attention and the MLP,
/// q/k norms over the whole projections of 4 query and 2 key/value heads, every norm weight
/// drawn at random): steerkit's logits at every position equal transformers', and again
/// after the folder is saved and read back.
#[test]
fn olmo2_tiny_logits_match_transformers() {
    let (m, fx) = gemma_fixture("olmo2_tiny");
    assert_eq!(m.cfg.arch, steerkit_model::Arch::Olmo2);
    assert_eq!((m.cfg.rope_theta, m.cfg.rms_norm_eps), (500_000.0, 1e-6));
    let blk = &m.layers[0];
    assert!(blk.attn_norm.is_none() && blk.mlp_norm.is_none());
    assert_eq!(blk.q_norm.as_ref().unwrap().dims(), [32]);
    assert_eq!(blk.k_norm.as_ref().unwrap().dims(), [16]);
    check_all_positions(&m, &fx["cases"], "olmo2 tiny");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    steerkit_model::hf::save_folder(&m, None, None, &dir).unwrap();
    check_all_positions(&qwen3_model(&dir), &fx["cases"], "olmo2 tiny, saved again");
}

/// The tiny random OLMo 3 folder of `scripts/reference_olmo2.py --olmo3` (transformers' own
/// Olmo3ForCausalLM in float64: blocks 0-2 on a window of 3 with plain RoPE of base 10,000,
/// block 3 on the whole context with YaRN over base 500,000, RoPE per layer type):
/// steerkit's logits at every position equal transformers', and again after the folder is
/// saved and read back. Without the window, or with the sliding blocks on the full blocks'
/// RoPE, the logits move far past the tolerance. config.json's other forms: `layer_types`
/// absent (every fourth block full), the older top-level `rope_theta`/`rope_scaling`
/// (sliding blocks on 500,000), keys beside the per-type ones (not read, as in
/// transformers), a top-level `rope_scaling` beside them (merged into the full blocks'), and,
/// refused, a top-level base or a `type`-named scaling that transformers 4.57 and 5 read
/// differently, a flat `rope_parameters`, and a null window.
#[test]
fn olmo3_tiny_logits_match_transformers() {
    use steerkit_model::random::max_abs_diff;
    use steerkit_model::{Arch, RopeScaling};
    let (m, fx) = gemma_fixture("olmo3_tiny");
    assert_eq!(m.cfg.arch, Arch::Olmo3);
    assert_eq!(windows(&m.cfg), (Some(3), vec![3], Some(10_000.0)));
    assert_eq!(m.cfg.rope_theta, 500_000.0);
    assert!(matches!(
        m.cfg.rope_scaling,
        Some(RopeScaling::Yarn { factor: 4.0, .. })
    ));
    assert!(m.layers[0].attn_norm.is_none());
    check_all_positions(&m, &fx["cases"], "olmo3 tiny");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    steerkit_model::hf::save_folder(&m, None, None, &dir).unwrap();
    let saved = qwen3_model(&dir);
    assert_eq!(windows(&saved.cfg), windows(&m.cfg));
    check_all_positions(&saved, &fx["cases"], "olmo3 tiny, saved again");
    // The window and the sliding blocks' own RoPE each matter.
    let ids =
        candle_core::Tensor::new(&[[3u32, 95, 0, 47, 47, 8, 61, 20, 11]], &Device::Cpu).unwrap();
    let a = m.last_logits(&ids, &[0], &mut NoHook).unwrap();
    let moved = |edit: &dyn Fn(&mut steerkit_model::Config)| {
        let mut other = m.clone();
        edit(&mut other.cfg);
        let b = other.last_logits(&ids, &[0], &mut NoHook).unwrap();
        max_abs_diff(&a, &b).unwrap()
    };
    let no_window = moved(&|c| c.sliding_window = None);
    let one_rope = moved(&|c| c.rope_local_theta = None);
    assert!(
        no_window > 1e-2 && one_rope > 1e-2,
        "window {no_window}, sliding RoPE {one_rope}"
    );
    let config = |edit: &dyn Fn(&mut serde_json::Value)| config_with("olmo3_tiny", edit);
    let c = config(&|c| {
        c.as_object_mut().unwrap().remove("layer_types");
        c["num_hidden_layers"] = 8.into();
    })
    .unwrap();
    assert_eq!(c.full_attention_layers, vec![3, 7]);
    // The form transformers 4.57 wrote: the base and YaRN at the top level.
    let older = |theta: f64| {
        move |c: &mut serde_json::Value| {
            let o = c.as_object_mut().unwrap();
            let p = o.remove("rope_parameters").unwrap();
            let mut yarn = p["full_attention"].clone();
            yarn.as_object_mut().unwrap().remove("rope_theta");
            o.insert("rope_scaling".into(), yarn);
            o.insert("rope_theta".into(), theta.into());
        }
    };
    let c = config(&older(500_000.0)).unwrap();
    assert_eq!(
        (c.rope_theta, c.rope_local_theta),
        (500_000.0, Some(500_000.0))
    );
    assert!(matches!(c.rope_scaling, Some(RopeScaling::Yarn { .. })));
    let err = config(&older(10_000.0)).unwrap_err().to_string();
    assert!(err.contains("transformers 4.57"), "{err}");
    let err = config(&|c| c["rope_parameters"] = serde_json::json!({"rope_theta": 1e4}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("per layer type"), "{err}");
    // transformers 5's save of a flat YaRN: flat keys beside the per-type ones, unread.
    let c = config(&|c| {
        let p = &mut c["rope_parameters"];
        p["full_attention"] = serde_json::json!({"rope_type": "default", "rope_theta": 5e5});
        p["rope_type"] = "yarn".into();
        p["factor"] = 4.0.into();
        p["rope_theta"] = 1e4.into();
    })
    .unwrap();
    assert_eq!((c.rope_theta, c.rope_scaling), (500_000.0, None));
    // A top-level rope_scaling joins the full blocks' parameters.
    let c = config(&|c| {
        c["rope_parameters"]["full_attention"] =
            serde_json::json!({"rope_type": "default", "rope_theta": 5e5});
        c["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 2.0});
    })
    .unwrap();
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
    let err = config(&|c| c["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`type`"), "{err}");
    let err = config(&|c| c["sliding_window"] = serde_json::Value::Null)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sliding_window null"), "{err}");
}

/// The tiny random Qwen2-MoE folder of `scripts/reference_qwen2_moe.py` (transformers' own
/// Qwen2MoeForCausalLM in float64: blocks 0 and 2 route each token to 2 of 4 experts beside
/// a shared expert of 40 channels under its sigmoid gate, block 1 has a plain MLP, q/k/v
/// biases): steerkit's logits at every position equal transformers', with the top-2 weights
/// left as they are (`norm_topk_prob` false, the released models') and renormalized, and
/// after the folder is saved and read back. Without the shared expert, or with its gate
/// left out, the logits move far past the tolerance. `qkv_bias: false` drops the biases; a
/// sliding window is refused; no experts means every block plain.
#[test]
fn qwen2_moe_tiny_logits_match_transformers() {
    use steerkit_model::random::max_abs_diff;
    let (m, fx) = gemma_fixture("qwen2_moe_tiny");
    assert_eq!(m.cfg.arch, steerkit_model::Arch::Qwen2Moe);
    let moe = m.cfg.moe.clone().expect("a mixture of experts");
    assert_eq!(
        (moe.top_k, moe.norm_topk_prob, moe.shared_intermediate_size),
        (2, false, Some(40))
    );
    assert_eq!(moe.dense_layers, vec![1]);
    assert!(m.cfg.attention_bias);
    check_all_positions(&m, &fx["cases"], "qwen2_moe tiny");
    let normalized = copy_with("qwen2_moe_tiny", |c| c["norm_topk_prob"] = true.into());
    check_all_positions(
        &qwen3_model(normalized.path()),
        &fx["cases_normalized"],
        "qwen2_moe tiny, normalized",
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    steerkit_model::hf::save_folder(&m, None, None, &dir).unwrap();
    check_all_positions(
        &qwen3_model(&dir),
        &fx["cases"],
        "qwen2_moe tiny, saved again",
    );
    // The shared expert, and its gate, each matter.
    let ids =
        candle_core::Tensor::new(&[[3u32, 95, 0, 47, 47, 8, 61, 20, 11]], &Device::Cpu).unwrap();
    let a = m.last_logits(&ids, &[0], &mut NoHook).unwrap();
    let moved = |edit: &dyn Fn(&mut steerkit_model::SharedExpert)| {
        let mut other = m.clone();
        for b in &mut other.layers {
            if let steerkit_model::Mlp::Moe(e) = &mut b.mlp {
                edit(e.shared.as_mut().expect("a shared expert"));
            }
        }
        let b = other.last_logits(&ids, &[0], &mut NoHook).unwrap();
        max_abs_diff(&a, &b).unwrap()
    };
    let silent = moved(&|s| s.mlp.down.weight = s.mlp.down.weight.zeros_like().unwrap());
    let open = moved(&|s| s.gate.weight = s.gate.weight.zeros_like().unwrap());
    assert!(
        silent > 1e-2 && open > 1e-2,
        "shared expert {silent}, its gate {open}"
    );
    let config = |edit: &dyn Fn(&mut serde_json::Value)| config_with("qwen2_moe_tiny", edit);
    assert!(
        !config(&|c| c["qkv_bias"] = false.into())
            .unwrap()
            .attention_bias
    );
    let err = config(&|c| c["use_sliding_window"] = true.into()).unwrap_err();
    assert!(err.to_string().contains("sliding window"), "{err}");
    assert!(config(&|c| c["num_experts"] = 0.into())
        .unwrap()
        .moe
        .is_none());
}

/// The tiny random Qwen3-MoE folder of `scripts/reference_qwen3_moe.py` (transformers' own
/// Qwen3MoeForCausalLM in float64: blocks 0 and 2 route each token to 2 of 4 experts, block 1
/// has a plain MLP): steerkit's logits at every position equal transformers', with the top-2
/// weights renormalized (`norm_topk_prob`, the released models') and without; the same with
/// the Hub's `num_experts` for transformers 5's `num_local_experts`, and after the folder is
/// saved and read back.
#[test]
fn qwen3_moe_tiny_logits_match_transformers() {
    let (m, fx) = gemma_fixture("qwen3_moe_tiny");
    assert_eq!(m.cfg.arch, steerkit_model::Arch::Qwen3Moe);
    let moe = m.cfg.moe.clone().expect("a mixture of experts");
    assert_eq!(
        (moe.num_experts, moe.top_k, moe.intermediate_size),
        (4, 2, 24)
    );
    assert_eq!(
        (moe.norm_topk_prob, moe.dense_layers.clone()),
        (true, vec![1])
    );
    assert!(m.layers[1].dense().is_some() && m.layers[2].dense().is_none());
    check_all_positions(&m, &fx["cases"], "qwen3_moe tiny");
    let plain = copy_with("qwen3_moe_tiny", |c| c["norm_topk_prob"] = false.into());
    let unnormalized = &fx["cases_unnormalized"];
    check_all_positions(
        &qwen3_model(plain.path()),
        unnormalized,
        "qwen3_moe, unnormalized",
    );
    let hub = copy_with("qwen3_moe_tiny", |c| {
        let o = c.as_object_mut().unwrap();
        let n = o.remove("num_local_experts").unwrap();
        o.insert("num_experts".into(), n);
    });
    check_all_positions(
        &qwen3_model(hub.path()),
        &fx["cases"],
        "qwen3_moe, num_experts",
    );
    // Without experts (either key at 0) every block is plain, as transformers builds it.
    for key in ["num_local_experts", "num_experts"] {
        let none = copy_with("qwen3_moe_tiny", |c| c[key] = 0.into());
        let cfg = steerkit_model::hf::HfFolder::open(none.path())
            .unwrap()
            .config()
            .unwrap();
        assert!(cfg.moe.is_none() && !cfg.is_moe_layer(0), "{key}");
    }
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    steerkit_model::hf::save_folder(&m, None, None, &dir).unwrap();
    // Each expert under its own name, as transformers reads them.
    let saved =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        saved["model.layers.2.mlp.experts.3.down_proj.weight"].dims(),
        [32, 24]
    );
    assert!(!saved.contains_key("model.layers.2.mlp.experts.down_proj.weight"));
    check_all_positions(
        &qwen3_model(&dir),
        &fx["cases"],
        "qwen3_moe tiny, saved again",
    );
}

/// The tiny random Mixtral folder of `scripts/reference_mixtral.py` (transformers' own
/// MixtralForCausalLM in float64: every block routes each token to 2 of 4 experts stored
/// under `block_sparse_moe` as `w1`, `w3`, `w2`; a sliding window of 4): steerkit's logits at
/// every position equal transformers', and again after the folder is saved (under Mixtral's
/// names) and read back.
#[test]
fn mixtral_tiny_logits_match_transformers() {
    let (m, fx) = gemma_fixture("mixtral_tiny");
    assert_eq!(m.cfg.arch, steerkit_model::Arch::Mixtral);
    let moe = m.cfg.moe.clone().expect("a mixture of experts");
    assert_eq!(
        (moe.num_experts, moe.top_k, moe.intermediate_size),
        (4, 2, 48)
    );
    assert_eq!((m.cfg.sliding_window, m.cfg.head_dim), (Some(4), 8));
    check_all_positions(&m, &fx["cases"], "mixtral tiny");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    steerkit_model::hf::save_folder(&m, None, None, &dir).unwrap();
    let names: Vec<String> =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
    assert!(
        names.contains(&"model.layers.1.block_sparse_moe.experts.3.w2.weight".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains(".mlp.")), "{names:?}");
    check_all_positions(
        &qwen3_model(&dir),
        &fx["cases"],
        "mixtral tiny, saved again",
    );
}

/// The tiny random gpt-oss folder of `scripts/reference_gpt_oss.py` (transformers' own
/// GptOssForCausalLM in float64: sink logits, biases on q/k/v/o, a window of 4 on blocks 0
/// and 2, YaRN, a router with a bias, experts stacked with gate and up interleaved and a
/// clamped SwiGLU whose limit 1 is reached): steerkit's logits at every position equal
/// transformers', and again after the folder is saved (experts stacked again) and read back.
/// Leaving the sinks out moves the logits far more than the tolerance, so the test would
/// see them missing.
#[test]
fn gpt_oss_tiny_logits_match_transformers() {
    use steerkit_model::random::max_abs_diff;
    use steerkit_model::{Activation, Arch, RopeScaling};
    let (m, fx) = gemma_fixture("gpt_oss_tiny");
    assert_eq!(m.cfg.arch, Arch::GptOss);
    let moe = m.cfg.moe.clone().expect("a mixture of experts");
    assert_eq!(
        (moe.num_experts, moe.top_k, moe.intermediate_size),
        (4, 2, 64)
    );
    assert_eq!(
        m.cfg.hidden_act,
        Activation::SwigluOai {
            alpha: 1.702,
            limit: 1.0
        }
    );
    assert_eq!(
        (m.cfg.sliding_window, m.cfg.full_attention_layers.clone()),
        (Some(4), vec![1])
    );
    assert!(matches!(
        m.cfg.rope_scaling,
        Some(RopeScaling::Yarn {
            truncate: false,
            ..
        })
    ));
    check_all_positions(&m, &fx["cases"], "gpt-oss tiny");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    steerkit_model::hf::save_folder(&m, None, None, &dir).unwrap();
    let saved =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let source = candle_core::safetensors::load(
        common::root().join("tests/fixtures/gpt_oss_tiny/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<&String> = saved.keys().collect();
    let mut want: Vec<&String> = source.keys().collect();
    names.sort();
    want.sort();
    assert_eq!(names, want, "the saved folder holds the source's names");
    for name in [
        "model.layers.2.mlp.experts.gate_up_proj",
        "model.layers.0.mlp.experts.down_proj_bias",
    ] {
        let d = max_abs_diff(&saved[name], &source[name]).unwrap();
        assert_eq!(d, 0.0, "{name} stacked as the source stores it");
    }
    check_all_positions(
        &qwen3_model(&dir),
        &fx["cases"],
        "gpt-oss tiny, saved again",
    );
    // Without the sinks the logits move.
    let mut no_sinks = m.clone();
    for b in &mut no_sinks.layers {
        b.sinks = None;
    }
    let ids =
        candle_core::Tensor::new(&[[3u32, 95, 0, 47, 47, 8, 61, 20, 11]], &Device::Cpu).unwrap();
    let a = m.last_logits(&ids, &[0], &mut NoHook).unwrap();
    let b = no_sinks.last_logits(&ids, &[0], &mut NoHook).unwrap();
    let moved = max_abs_diff(&a, &b).unwrap();
    assert!(moved > 1e-2, "the sinks move the logits by {moved}");
    // Nor is the clamp idle: without it they move too.
    let mut unclamped = m.clone();
    unclamped.cfg.hidden_act = Activation::SwigluOai {
        alpha: 1.702,
        limit: 1e9,
    };
    let c = unclamped.last_logits(&ids, &[0], &mut NoHook).unwrap();
    let moved = max_abs_diff(&a, &c).unwrap();
    assert!(moved > 1e-2, "the clamp moves the logits by {moved}");
}

/// The same model with its experts stored as OpenAI ships gpt-oss, MXFP4 blocks and scales
/// (`scripts/reference_gpt_oss.py` quantized them and checked that transformers reads the
/// folder back to the same logits): steerkit decodes them to the same logits.
#[test]
fn gpt_oss_mxfp4_logits_match_transformers() {
    let (m, fx) = gemma_fixture("gpt_oss_mxfp4_tiny");
    check_all_positions(&m, &fx["cases"], "gpt-oss tiny, MXFP4 experts");
}

/// Bad gpt-oss folders are clear errors: blocks without their scales, a NaN scale (255), a
/// null window for its sliding blocks; and config.json's absent keys take GptOssConfig's
/// defaults (heads of 64, 8 key/value heads, a window of 128 on every other block, YaRN).
#[test]
fn gpt_oss_bad_folders_and_defaults() {
    use candle_core::Tensor;
    let src = common::root().join("tests/fixtures/gpt_oss_mxfp4_tiny");
    let d = tempfile::tempdir().unwrap();
    let copy = |name: &str,
                edit: &dyn Fn(
        &mut std::collections::HashMap<String, Tensor>,
        &mut serde_json::Value,
    )| {
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut t =
            candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        edit(&mut t, &mut c);
        candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        steerkit_model::hf::HfFolder::open(&dir).unwrap()
    };
    let err = |f: steerkit_model::hf::HfFolder| {
        f.model(&Device::Cpu, DType::F32).unwrap_err().to_string()
    };
    let f = copy("no-scales", &|t, _| {
        t.remove("model.layers.1.mlp.experts.down_proj_scales");
    });
    let e = err(f);
    assert!(
        e.contains("down_proj_blocks` is there but not") && e.contains("_scales"),
        "{e}"
    );
    let f = copy("nan-scale", &|t, _| {
        let n = "model.layers.2.mlp.experts.gate_up_proj_scales";
        let dims = t[n].dims().to_vec();
        *t.get_mut(n).unwrap() = Tensor::full(255u8, dims, &Device::Cpu).unwrap();
    });
    let e = err(f);
    assert!(
        e.contains("255") && e.contains("layers.2.mlp.experts.gate_up_proj"),
        "{e}"
    );
    let f = copy("null-window", &|_, c| {
        c["sliding_window"] = serde_json::Value::Null
    });
    let e = f.config().unwrap_err().to_string();
    assert!(e.contains("sliding_window null"), "{e}");
    let f = copy("defaults", &|_, c| {
        let o = c.as_object_mut().unwrap();
        for k in [
            "head_dim",
            "num_key_value_heads",
            "sliding_window",
            "layer_types",
            "rope_parameters",
            "swiglu_limit",
        ] {
            o.remove(k);
        }
        o.insert("num_attention_heads".into(), 64.into());
    });
    let c = f.config().unwrap();
    assert_eq!(
        (c.head_dim, c.num_kv_heads, c.sliding_window),
        (64, 8, Some(128))
    );
    assert_eq!(c.full_attention_layers, vec![1]);
    assert_eq!(
        c.hidden_act,
        steerkit_model::Activation::SwigluOai {
            alpha: 1.702,
            limit: 7.0
        }
    );
    assert!(matches!(
        c.rope_scaling,
        Some(steerkit_model::RopeScaling::Yarn { factor, truncate: false, .. }) if factor == 32.0
    ));
    // An explicit null is transformers' other default: hidden / heads, and the heads.
    let f = copy("nulls", &|_, c| {
        c["head_dim"] = serde_json::Value::Null;
        c["num_key_value_heads"] = serde_json::Value::Null;
    });
    let c = f.config().unwrap();
    assert_eq!((c.head_dim, c.num_kv_heads), (8, 4));
}

/// A tiny fixture folder (`scripts/reference_gemma.py` and the others), loaded, and its
/// logits.json.
fn gemma_fixture(name: &str) -> (Model, serde_json::Value) {
    let dir = common::root().join("tests/fixtures").join(name);
    let p = dir.join("logits.json");
    let fx = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    (qwen3_model(&dir), fx)
}

/// A configuration's window, its blocks without it, and the window blocks' RoPE base.
fn windows(c: &steerkit_model::Config) -> (Option<usize>, Vec<usize>, Option<f64>) {
    (
        c.sliding_window,
        c.full_attention_layers.clone(),
        c.rope_local_theta,
    )
}

/// The tiny random Gemma 3 folder of `scripts/reference_gemma.py` (norms as `1 + w`,
/// post-norms, a scaled embedding, gelu, q/k norms, `query_pre_attn_scalar`, two blocks with a
/// sliding window of 3 and a local RoPE base, one with the whole context and linearly scaled
/// RoPE): steerkit's logits at every position equal the script's float64 forward pass.
#[test]
fn gemma3_tiny_logits_match_reference() {
    let (m, fx) = gemma_fixture("gemma3_tiny");
    let c = &m.cfg;
    assert_eq!(c.arch, steerkit_model::Arch::Gemma3);
    assert_eq!(windows(c), (Some(3), vec![2], Some(10_000.0)));
    assert_eq!(c.hidden_act, steerkit_model::Activation::GeluTanh);
    assert!(c.tie_word_embeddings);
    check_all_positions(&m, &fx["cases"], "gemma3 tiny");
    // transformers 5 writes the two RoPEs as `rope_parameters` per layer type.
    let d = copy_with("gemma3_tiny", |cfg| {
        let o = cfg.as_object_mut().unwrap();
        for k in ["rope_theta", "rope_local_base_freq", "rope_scaling"] {
            o.remove(k);
        }
        cfg["rope_parameters"] = serde_json::json!({
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        });
    });
    check_all_positions(
        &qwen3_model(d.path()),
        &fx["cases"],
        "gemma3 tiny, v5 config",
    );
    // The keys Gemma 3 1B's own config.json uses: the pattern, not layer_types; no tie key.
    let d = copy_with("gemma3_tiny", |cfg| {
        let o = cfg.as_object_mut().unwrap();
        o.remove("layer_types");
        o.remove("tie_word_embeddings");
        cfg["sliding_window_pattern"] = serde_json::json!(3);
    });
    check_all_positions(
        &qwen3_model(d.path()),
        &fx["cases"],
        "gemma3 tiny, the hub's keys",
    );
}

/// A copy of the tiny Qwen3 folder with its config.json changed by `edit`.
fn qwen3_copy_with(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    copy_with("qwen3_tiny", edit)
}

/// The configuration steerkit reads from the fixture folder `name` with its config.json
/// changed by `edit`.
fn config_with(
    name: &str,
    edit: &dyn Fn(&mut serde_json::Value),
) -> steerkit_model::Result<steerkit_model::Config> {
    let d = copy_with(name, edit);
    steerkit_model::hf::HfFolder::open(d.path())
        .unwrap()
        .config()
}

/// A copy of the fixture folder `name` with its config.json changed by `edit`.
fn copy_with(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = common::root().join("tests/fixtures").join(name);
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    d
}

fn qwen3_fixture() -> serde_json::Value {
    let p = common::root().join("tests/fixtures/qwen3_tiny/logits.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn qwen3_model(dir: &std::path::Path) -> Model {
    steerkit_model::hf::HfFolder::open(dir)
        .unwrap()
        .model(&Device::Cpu, DType::F32)
        .unwrap()
}

/// Logits at every position of each case (`ids`, `logits`) within 1e-4, in inference and
/// differentiable mode, and at the last position in one left-padded batch.
fn check_all_positions(m: &Model, cases: &serde_json::Value, name: &str) {
    use candle_core::Tensor;
    use steerkit_model::Mode;
    let cases = cases.as_array().unwrap();
    let want = |c: &serde_json::Value| -> Vec<Vec<f32>> {
        serde_json::from_value(c["logits"].clone()).unwrap()
    };
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    for mode in [Mode::Inference, Mode::Differentiable] {
        for c in cases {
            let row = ids_of(c);
            let t = Tensor::new(row.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let h = m.forward(&t, &[0], None, &mut NoHook, mode).unwrap();
            let got: Vec<Vec<f32>> = m.logits(&h).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
            let worst = got
                .iter()
                .zip(want(c))
                .map(|(g, w)| diff(g, &w))
                .fold(0f32, f32::max);
            eprintln!(
                "{name} {mode:?}: {} tokens, max abs error {worst:.2e}",
                row.len()
            );
            assert!(worst < 1e-4, "{name} {mode:?}: max abs error {worst}");
        }
    }
    let rows: Vec<Vec<u32>> = cases.iter().map(ids_of).collect();
    for (c, g) in cases.iter().zip(&last_logits(m, 0, &rows)) {
        let worst = diff(g, want(c).last().unwrap());
        assert!(
            worst < 1e-4,
            "{name}, left-padded batch: max abs error {worst}"
        );
    }
}
