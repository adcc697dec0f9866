//! End-to-end tests of the `steerkit` binary: every command on real models, and bad input
//! that must end in one clear error line and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use candle_core::DType;
use steerkit_model::gguf::Gguf;
use steerkit_model::random::{random_model, tiny_config};
use steerkit_model::Arch;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(name: &str) -> String {
    let p = root()
        .join("checkpoints/models")
        .join(format!("{name}.gguf"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

const SMOL: &str = "smollm2-135m-instruct";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct";

fn steerkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_steerkit"))
        .args(args)
        .output()
        .unwrap()
}

/// `steerkit` run from the repository root, as the shipped configs' relative paths expect
/// (`../shared/datasets/...`, `checkpoints/models/...`).
fn steerkit_at_root(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_steerkit"))
        .args(args)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .unwrap()
}

/// A fresh folder, removed when the test ends (also when it fails).
fn tmpdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("steerkit-cli-{tag}-"))
        .tempdir()
        .unwrap()
}

/// `inspect --json` of `model`, a 4-token `generate`, and one quick ACTOR epoch training
/// `parts` into `run`: the inspection and the trained block.
fn inspect_generate_train(
    model: &str,
    run: &Path,
    parts: &str,
) -> (
    serde_json::Value,
    std::collections::HashMap<String, candle_core::Tensor>,
) {
    let out = steerkit(&["inspect", "--json", "-m", model]);
    assert_ok(&out);
    let v = serde_json::from_slice(&out.stdout).unwrap();
    let prompt = ["--prompt", "Say hello.", "--max-new-tokens", "4"];
    assert_ok(&steerkit(
        &[&["generate", "-m", model][..], &prompt].concat(),
    ));
    let mut args = quick_actor(model);
    args.extend([
        "--epochs",
        "1",
        "--train",
        parts,
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_ok(&steerkit(&args));
    let ck = run.join("block-epoch1.safetensors");
    (
        v,
        candle_core::safetensors::load(&ck, &candle_core::Device::Cpu).unwrap(),
    )
}

/// `steerkit export -m MODEL EXTRA.. --format gguf --out OUT`.
fn export_gguf(model: &str, extra: &[&str], out: &Path) -> Output {
    let head = ["export", "-m", model];
    let tail = ["--format", "gguf", "--out", out.to_str().unwrap()];
    steerkit(&[&head[..], extra, &tail].concat())
}

/// The tensors of the Hugging Face folder at `path`, by name.
fn folder_tensors(path: &Path) -> std::collections::BTreeMap<String, candle_core::Tensor> {
    steerkit_model::hf::HfFolder::open(path)
        .unwrap()
        .model(&candle_core::Device::Cpu, DType::F32)
        .unwrap()
        .named_tensors()
        .into_iter()
        .collect()
}

/// Block 1's tensors `parts` (names after `model.layers.1.`): each must be exported as it was
/// trained (`back` against `trained`); those training moved from `original`, by full name.
fn exported_as_trained(
    back: &std::collections::BTreeMap<String, candle_core::Tensor>,
    trained: &std::collections::HashMap<String, candle_core::Tensor>,
    original: &std::collections::BTreeMap<String, candle_core::Tensor>,
    parts: &[&str],
) -> Vec<String> {
    let gap = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        steerkit_model::random::max_abs_diff(a, b).unwrap()
    };
    let mut moved = vec![];
    for part in parts {
        let n = format!("model.layers.1.{part}");
        assert_eq!(gap(&back[&n], &trained[&n]), 0.0, "{n}");
        if gap(&back[&n], &original[&n]) > 0.0 {
            moved.push(n);
        }
    }
    moved
}

/// `steerkit export -m MODEL --run RUN --out OUT` (the patched folder), and its tensors.
fn export_patched(
    model: &str,
    run: &Path,
    out: &Path,
) -> std::collections::BTreeMap<String, candle_core::Tensor> {
    let args = [
        "export",
        "-m",
        model,
        "--run",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    assert_ok(&steerkit(&args));
    folder_tensors(out)
}

/// A tiny random llama with SmolLM2's tokenizer and template, saved as a Hugging Face folder.
fn tiny_folder(dir: &Path) -> PathBuf {
    tiny_folder_of(dir, Arch::Llama)
}

/// A tiny random model of `arch` with SmolLM2's tokenizer and template, saved as a Hugging
/// Face folder `dir/tiny`.
fn tiny_folder_of(dir: &Path, arch: Arch) -> PathBuf {
    let g = Gguf::open(Path::new(&model(SMOL))).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let m = random_model(tiny_config(arch, tok.vocab_size()), DType::F32, 1).unwrap();
    let out = dir.join("tiny");
    steerkit_model::hf::save_folder(&m, Some(&tok), Some(&chat), &out).unwrap();
    out
}

/// `steerkit actor` on a tiny model, quickly: 6 prompts per role, block 1, no silhouette check
/// (`--out` to add).
fn quick_actor(model: &str) -> Vec<&str> {
    vec![
        "actor",
        "-m",
        model,
        "--limit",
        "6",
        "--pseudo-limit",
        "6",
        "--layer",
        "1",
        "--min-silhouette",
        "-1",
    ]
}

/// Asserts that a written file is readable by everyone, as a model file must be to be served.
fn assert_readable_by_others(p: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode & 0o044, 0o044, "{}: mode {mode:o}", p.display());
    }
}

/// Asserts that the command succeeded, showing its stderr and stdout when it did not.
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "command failed ({})\nstderr:\n{}\nstdout:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Asserts a clean failure: non-zero exit, one `error:` line mentioning `needle`, no panic.
fn assert_clean_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{err}"
    );
}

#[test]
fn inspect_reports_the_architecture() {
    let out = steerkit(&["inspect", "--json", "-m", &model(SMOL)]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["layers"], 30);
    assert_eq!(v["hidden_size"], 576);
    assert_eq!(v["heads"], 9);
    assert_eq!(v["kv_heads"], 3);
    assert_eq!(v["tied_embeddings"], true);
    assert_eq!(v["post_instruction"], "<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(
        (&v["dtype"], &v["compute_dtype"]),
        (&"f32".into(), &"f32".into())
    );
    // The loaded weights' bytes: 4 a parameter; the bf16 figure (what the memory check
    // counts) is what a bf16 load then holds.
    assert_eq!(v["weight_bytes"], 134_515_008u64 * 4);
    assert!(v["memory_available"].as_u64().unwrap() > 100_000_000);
    let bf16 = v["weight_bytes_bf16"].clone();
    // bf16 on the CPU: bf16 matrices, f32 computation; f16 is for GPUs only.
    let out = steerkit(&["inspect", "--json", "--dtype", "bf16", "-m", &model(SMOL)]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["dtype"], &v["compute_dtype"]),
        (&"bf16".into(), &"f32".into())
    );
    assert_eq!(v["weight_bytes"], bf16);
    assert!(
        bf16.as_u64().unwrap() < 134_515_008 * 2 + 1_000_000,
        "{bf16}"
    );
    assert_clean_error(
        &steerkit(&["inspect", "--dtype", "f16", "-m", &model(SMOL)]),
        "--dtype f16 is for GPUs",
    );
}

/// A Mistral folder whose blocks attend over a sliding window (as Mistral 7B v0.1's): a
/// patched folder keeps the window in its config.json; a GGUF export, which has no place for
/// it, says so, and reloads without it.
#[test]
fn a_sliding_window_survives_folders_and_is_noted_in_gguf() {
    let d = tmpdir("window");
    let g = Gguf::open(Path::new(&model(SMOL))).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let mut cfg = tiny_config(Arch::Mistral, tok.vocab_size());
    cfg.sliding_window = Some(5);
    let m = random_model(cfg, DType::F32, 4).unwrap();
    let folder = d.path().join("mistral");
    steerkit_model::hf::save_folder(&m, Some(&tok), Some(&chat), &folder).unwrap();
    let f = folder.to_str().unwrap();
    let again = d.path().join("again");
    let out = steerkit(&["export", "-m", f, "--out", again.to_str().unwrap()]);
    assert_ok(&out);
    let cfg = steerkit_model::hf::HfFolder::open(&again)
        .unwrap()
        .config()
        .unwrap();
    assert_eq!(cfg.sliding_window, Some(5));
    let gguf = d.path().join("m.gguf");
    let out = export_gguf(f, &[], &gguf);
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("sliding window of 5 positions"), "{said}");
    let back = Gguf::open(&gguf).unwrap().config().unwrap();
    assert_eq!(back.sliding_window, None);
}

/// Gemma 3 and Gemma 2 folders (tiny and random, with SmolLM2's tokenizer and template): inspect,
/// generation, ACTOR training every part of the block (post-norms included) and export as a
/// patched folder that holds the trained block; GGUF export of a model llama.cpp would compute
/// otherwise is one clear error; Gemma 3 stored as a multimodal folder trains and exports whole or as its text model.
#[test]
fn gemma_folders_inspect_train_and_export() {
    for (arch, name) in [(Arch::Gemma3, "gemma3"), (Arch::Gemma2, "gemma2")] {
        let d = tmpdir(name);
        let folder = tiny_folder_of(d.path(), arch);
        let f = folder.to_str().unwrap();
        let run = d.path().join("run");
        let (v, trained) = inspect_generate_train(f, &run, "attn,mlp,norms");
        assert_eq!(v["architecture"].as_str(), Some(name));
        assert_eq!(
            (&v["sliding_window"], &v["full_attention_layers"]),
            (&serde_json::json!(3), &serde_json::json!([0]))
        );
        let post = "model.layers.1.post_feedforward_layernorm.weight";
        let generation = r#"{"top_k": 64, "top_p": 0.95}"#;
        std::fs::write(folder.join("generation_config.json"), generation).unwrap();
        let back = export_patched(f, &run, &d.path().join("patched"));
        let carried = d.path().join("patched/generation_config.json");
        assert_eq!(std::fs::read_to_string(carried).unwrap(), generation);
        let original = folder_tensors(&folder);
        let gap = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
            steerkit_model::random::max_abs_diff(a, b).unwrap()
        };
        assert_eq!(gap(&back[post], &trained[post]), 0.0, "{name}");
        assert!(
            gap(&trained[post], &original[post]) > 0.0,
            "{name}: the post-norm was not trained"
        );

        let gguf = d.path().join("m.gguf");
        // The tiny models' attention scale is not the one llama.cpp fixes.
        assert_clean_error(&export_gguf(f, &[], &gguf), "has no GGUF form");
        assert!(!gguf.exists());
        if arch == Arch::Gemma3 {
            multimodal_gemma3_exports_whole_or_text_only(&folder, d.path());
        }
    }
}

/// The Gemma 3 folder stored as Gemma 3 4B's are (Gemma3ForConditionalGeneration: the text
/// model's config in `text_config`, its tensors under `language_model.`, a vision tensor and
/// the processor's and generation files beside). ACTOR trains its text model; the export is
/// the whole model in that layout, the trained block in it and everything else as it was;
/// with `--text-only` it is the text model alone, with a note, and the same tensors. Both
/// carry generation_config.json.
fn multimodal_gemma3_exports_whole_or_text_only(text: &Path, dir: &Path) {
    let cpu = &candle_core::Device::Cpu;
    let mm = dir.join("multimodal");
    std::fs::create_dir_all(&mm).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(text.join(f), mm.join(f)).unwrap();
    }
    let carried = [
        (
            "generation_config.json",
            r#"{"eos_token_id": [1, 106], "top_k": 64}"#,
        ),
        (
            "preprocessor_config.json",
            r#"{"image_processor_type": "Gemma3ImageProcessor"}"#,
        ),
    ];
    for (name, body) in carried {
        std::fs::write(mm.join(name), body).unwrap();
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(text.join("config.json")).unwrap()).unwrap();
    let wrapped = serde_json::json!({
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": cfg,
        "vision_config": {"model_type": "siglip_vision_model"},
        "mm_tokens_per_image": 256,
    });
    std::fs::write(mm.join("config.json"), wrapped.to_string()).unwrap();
    let original = folder_tensors(text);
    let vision = "vision_tower.embeddings.patch_embedding.weight";
    let mut stored: std::collections::HashMap<String, candle_core::Tensor> = original
        .iter()
        .map(|(n, t)| (format!("language_model.{n}"), t.clone()))
        .collect();
    let patch = candle_core::Tensor::arange(0f32, 48.0, cpu)
        .unwrap()
        .reshape((4, 3, 2, 2))
        .unwrap();
    stored.insert(vision.into(), patch.clone());
    candle_core::safetensors::save(&stored, mm.join("model.safetensors")).unwrap();
    let carried_over = |out: &Path, names: &[&str]| {
        for name in names {
            let (a, b) = (std::fs::read(mm.join(name)), std::fs::read(out.join(name)));
            assert_eq!(a.unwrap(), b.unwrap(), "{name}");
        }
    };

    let run = dir.join("multimodal-run");
    let mut args = quick_actor(mm.to_str().unwrap());
    args.extend(["--epochs", "1", "--out", run.to_str().unwrap()]);
    assert_ok(&steerkit(&args));
    let trained =
        candle_core::safetensors::load(run.join("block-epoch1.safetensors"), cpu).unwrap();
    let whole = dir.join("multimodal-whole");
    let said = steerkit(&[
        "export",
        "-m",
        mm.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--out",
        whole.to_str().unwrap(),
    ]);
    assert_ok(&said);
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(
        said.contains("the whole gemma3 model in its source's layout"),
        "{said}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "Gemma3ForConditionalGeneration");
    assert_eq!(config["mm_tokens_per_image"], 256);
    assert_eq!(config["torch_dtype"], "float32");
    carried_over(
        &whole,
        &[
            "generation_config.json",
            "preprocessor_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ],
    );
    let written = candle_core::safetensors::load(whole.join("model.safetensors"), cpu).unwrap();
    let gap = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        steerkit_model::random::max_abs_diff(a, b).unwrap()
    };
    assert_eq!(gap(&written[vision], &patch), 0.0);
    assert_eq!(written.len(), stored.len());
    let mut changed = 0;
    for (n, t) in &original {
        let now = &written[&format!("language_model.{n}")];
        match trained.get(n) {
            Some(w) => {
                assert_eq!(gap(now, w), 0.0, "{n}");
                changed += usize::from(gap(now, t) > 0.0);
            }
            None => assert_eq!(gap(now, t), 0.0, "{n}"),
        }
    }
    assert!(changed > 0, "no trained tensor differs from the original");

    let out = dir.join("multimodal-text");
    let said = steerkit(&[
        "export",
        "-m",
        mm.to_str().unwrap(),
        "--text-only",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ok(&said);
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(
        said.contains("is a multimodal model (gemma3); the export holds its text model only")
            && said.contains("load it as Gemma3ForCausalLM"),
        "{said}"
    );
    carried_over(&out, &["generation_config.json"]);
    assert!(!out.join("preprocessor_config.json").exists());
    let written = folder_tensors(&out);
    assert_eq!(
        written.keys().collect::<std::collections::BTreeSet<_>>(),
        original.keys().collect::<std::collections::BTreeSet<_>>()
    );
    for (n, t) in &original {
        assert_eq!(gap(t, &written[n]), 0.0, "{n}");
    }
}

/// A Granite folder (tiny and random, with SmolLM2's tokenizer and template; its four scalars
/// far from 1): inspect, generation, ACTOR on attention and MLP, export as a patched folder
/// that holds the trained block and keeps the scalars, and as a GGUF file that loads back
/// with them.
#[test]
fn granite_folder_trains_and_exports() {
    let d = tmpdir("granite");
    let folder = tiny_folder_of(d.path(), Arch::Granite);
    let f = folder.to_str().unwrap();
    let run = d.path().join("run");
    let (v, trained) = inspect_generate_train(f, &run, "attn,mlp");
    assert_eq!(v["architecture"].as_str(), Some("granite"));
    let patched = d.path().join("patched");
    let back = export_patched(f, &run, &patched);
    let n = "model.layers.1.mlp.down_proj.weight";
    let gap = steerkit_model::random::max_abs_diff(&back[n], &trained[n]).unwrap();
    assert_eq!(gap, 0.0);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(patched.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["residual_multiplier"], 0.5);
    let gguf = d.path().join("m.gguf");
    assert_ok(&export_gguf(f, &[], &gguf));
    let m = Gguf::open(&gguf)
        .unwrap()
        .model(&candle_core::Device::Cpu, DType::F32)
        .unwrap();
    assert_eq!(m.cfg.arch, Arch::Granite);
    assert_eq!(m.cfg.multipliers.map(|g| g.logits_scaling), Some(4.0));
}

/// A Qwen3-MoE folder (tiny and random, with SmolLM2's tokenizer and template; block 1 routes
/// each token to 2 of 4 experts): inspect, generation, ACTOR on its attention and MLP (the
/// router and every expert), export as a patched folder that holds the trained experts; GGUF
/// export of a model llama.cpp's qwen3moe cannot express is one clear error, with nothing
/// written.
#[test]
fn mixture_of_experts_folder_trains_and_exports() {
    let d = tmpdir("qwen3moe");
    let folder = tiny_folder_of(d.path(), Arch::Qwen3Moe);
    let f = folder.to_str().unwrap();
    let run = d.path().join("run");
    let (v, trained) = inspect_generate_train(f, &run, "attn,mlp");
    assert_eq!(v["architecture"].as_str(), Some("qwen3_moe"));
    assert_eq!(
        v["experts"],
        serde_json::json!({"num_experts": 4, "top_k": 2, "intermediate_size": 24, "norm_topk_prob": true, "dense_layers": [0]})
    );
    let back = export_patched(f, &run, &d.path().join("patched"));
    let moved = exported_as_trained(
        &back,
        &trained,
        &folder_tensors(&folder),
        &[
            "mlp.gate.weight",
            "mlp.experts.0.down_proj.weight",
            "mlp.experts.3.up_proj.weight",
        ],
    );
    assert!(!moved.is_empty(), "no expert or router tensor was trained");
    let gguf = d.path().join("m.gguf");
    // Block 0 of the tiny model has a plain MLP, which llama.cpp's qwen3moe has not.
    assert_clean_error(&export_gguf(f, &[], &gguf), "has no GGUF form");
    assert!(!gguf.exists());
}

/// A gpt-oss folder (tiny and random, with SmolLM2's tokenizer and template; every block
/// routes each token to 3 of 4 experts, whose files stack them with gate and up interleaved):
/// inspect, generation, ACTOR on attention and MLP (sinks, biases, router, experts), export as
/// a patched folder whose stacks hold the trained experts; GGUF export of this model, whose
/// SwiGLU limit (0.5) llama.cpp's gpt-oss fixes at 7, is one clear error, with nothing
/// written.
#[test]
fn gpt_oss_folder_trains_and_exports() {
    let d = tmpdir("gptoss");
    let folder = tiny_folder_of(d.path(), Arch::GptOss);
    let cpu = &candle_core::Device::Cpu;
    let stored = candle_core::safetensors::load(folder.join("model.safetensors"), cpu).unwrap();
    assert!(stored.contains_key("model.layers.1.mlp.experts.gate_up_proj"));
    assert!(stored.contains_key("model.layers.1.mlp.router.bias"));
    let f = folder.to_str().unwrap();
    let run = d.path().join("run");
    let (v, trained) = inspect_generate_train(f, &run, "attn,mlp");
    assert_eq!(v["architecture"].as_str(), Some("gpt_oss"));
    let back = export_patched(f, &run, &d.path().join("patched"));
    let moved = exported_as_trained(
        &back,
        &trained,
        &folder_tensors(&folder),
        &[
            "self_attn.sinks",
            "self_attn.o_proj.bias",
            "mlp.gate.bias",
            "mlp.experts.0.up_proj.bias",
            "mlp.experts.2.gate_proj.weight",
            "mlp.experts.3.down_proj.weight",
        ],
    );
    assert!(moved.len() >= 4, "trained: {moved:?}");
    let gguf = d.path().join("m.gguf");
    assert_clean_error(&export_gguf(f, &[], &gguf), "clamps its SwiGLU");
    assert!(!gguf.exists());
}

/// A Phi-3 folder (tiny and random, with SmolLM2's tokenizer and template), stored fused as
/// Phi-3 checkpoints are (`qkv_proj`, `gate_up_proj`), with Phi-4-mini's partial rotation and
/// LongRoPE: inspect, generation, ACTOR on attention and MLP, export as a patched folder whose
/// fused tensors hold the trained parts, and as GGUF with llama.cpp's fused `attn_qkv` and
/// `ffn_up` (gate and up), which loads back as the same model.
#[test]
fn phi3_folder_trains_and_exports_fused() {
    let d = tmpdir("phi3");
    let folder = tiny_folder_of(d.path(), Arch::Phi3);
    let cpu = &candle_core::Device::Cpu;
    let stored = candle_core::safetensors::load(folder.join("model.safetensors"), cpu).unwrap();
    assert!(stored.contains_key("model.layers.1.self_attn.qkv_proj.weight"));
    assert!(stored.contains_key("model.layers.1.mlp.gate_up_proj.weight"));
    assert!(!stored.contains_key("model.layers.1.self_attn.q_proj.weight"));
    let f = folder.to_str().unwrap();
    let run = d.path().join("run");
    let (v, trained) = inspect_generate_train(f, &run, "attn,mlp");
    assert_eq!(v["architecture"].as_str(), Some("phi3"));
    // Phi-4-mini's RoPE (tiny_config): 6 of 8 dimensions turned, LongRoPE.
    assert_eq!(v["rotary_dim"], 6);
    assert_eq!(v["rope_scaling"]["rope_type"], "longrope");
    let original = folder_tensors(&folder);
    let patched = d.path().join("patched");
    let back = export_patched(f, &run, &patched);
    // Written fused, as transformers reads Phi-3.
    let written = candle_core::safetensors::load(patched.join("model.safetensors"), cpu).unwrap();
    assert!(written.contains_key("model.layers.1.self_attn.qkv_proj.weight"));
    assert!(!written.contains_key("model.layers.1.mlp.up_proj.weight"));
    let gap = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        steerkit_model::random::max_abs_diff(a, b).unwrap()
    };
    for part in ["self_attn.k_proj", "mlp.up_proj"] {
        let n = format!("model.layers.1.{part}.weight");
        assert_eq!(gap(&back[&n], &trained[&n]), 0.0, "{n}");
        assert!(
            gap(&trained[&n], &original[&n]) > 0.0,
            "{n} was not trained"
        );
    }

    let gguf = d.path().join("m.gguf");
    let out = export_gguf(f, &[], &gguf);
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("note: LongRoPE"), "{said}");
    let content =
        candle_core::quantized::gguf_file::Content::read(&mut std::fs::File::open(&gguf).unwrap())
            .unwrap();
    let shape = |n: &str| content.tensor_infos.get(n).map(|i| i.shape.dims().to_vec());
    // 4 query and 2 key/value heads of 8 over hidden 32; gate and up of 48 rows each.
    assert_eq!(shape("blk.0.attn_qkv.weight"), Some(vec![32 + 2 * 16, 32]));
    assert_eq!(shape("blk.0.ffn_up.weight"), Some(vec![2 * 48, 32]));
    assert_eq!(shape("blk.0.attn_q.weight"), None);
    assert_eq!(shape("blk.0.ffn_gate.weight"), None);
    let m = Gguf::open(&gguf).unwrap().model(cpu, DType::F32).unwrap();
    assert_eq!(m.cfg.arch, Arch::Phi3);
    assert_eq!(m.cfg.rotary_dim, Some(6));
    assert!(matches!(
        m.cfg.rope_scaling,
        Some(steerkit_model::RopeScaling::LongRope { .. })
    ));
    for (n, t) in m.named_tensors() {
        // f16 matrices: within its rounding of the folder's weights.
        assert!(gap(&t, &original[&n]) < 2e-3, "{n}");
    }
}

/// A Qwen3 folder (tiny and random, with Qwen's tokenizer and Qwen3's own chat template)
/// goes through the main path: inspect, generation, ACTOR (which trains the per-head q/k
/// norms with `--train norms`, and not the maps) and export as a patched folder (f32, and bf16 at half the
/// size) and as GGUF, each loadable.
#[test]
fn qwen3_folder_inspects_trains_and_exports() {
    let d = tmpdir("qwen3");
    let g = Gguf::open(Path::new(&model(QWEN))).unwrap();
    let tok = g.tokenizer().unwrap();
    let src =
        std::fs::read_to_string(root().join("tests/fixtures/qwen3_chat_template.jinja")).unwrap();
    let chat = steerkit_model::ChatTemplate::new(&src, "", "<|im_end|>").unwrap();
    let m = random_model(tiny_config(Arch::Qwen3, tok.vocab_size()), DType::F32, 4).unwrap();
    let folder = d.path().join("qwen3");
    steerkit_model::hf::save_folder(&m, Some(&tok), Some(&chat), &folder).unwrap();
    let f = folder.to_str().unwrap();
    let run = d.path().join("run");
    let (v, trained) = inspect_generate_train(f, &run, "norms");
    assert_eq!(
        (v["architecture"].as_str(), v["head_dim"].as_u64()),
        (Some("qwen3"), Some(16))
    );
    let q_norm = "model.layers.1.self_attn.q_norm.weight";
    let before: std::collections::BTreeMap<String, candle_core::Tensor> =
        m.named_tensors().into_iter().collect();
    let moved = steerkit_model::random::max_abs_diff(&trained[q_norm], &before[q_norm]).unwrap();
    assert!(moved > 0.0, "q_norm was not trained");
    // `norms` trains the q/k norms and not the attention maps beside them.
    let q_proj = "model.layers.1.self_attn.q_proj.weight";
    assert_eq!(
        steerkit_model::random::max_abs_diff(&trained[q_proj], &before[q_proj]).unwrap(),
        0.0
    );

    let patched = d.path().join("patched");
    let back = export_patched(f, &run, &patched);
    assert_eq!(
        steerkit_model::random::max_abs_diff(&back[q_norm], &trained[q_norm]).unwrap(),
        0.0
    );
    // The same in bf16: half the bytes, every tensor bf16, config.json saying so, and the
    // trained block rounded to bf16.
    let half = d.path().join("patched-bf16");
    let out = steerkit(&[
        "export",
        "-m",
        f,
        "--run",
        run.to_str().unwrap(),
        "--safetensors-dtype",
        "bf16",
        "--out",
        half.to_str().unwrap(),
    ]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("bf16 safetensors"));
    let size = |p: &Path| {
        std::fs::metadata(p.join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(
        size(&half) * 2 <= size(&patched) + 4096,
        "{} vs {}",
        size(&half),
        size(&patched)
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(half.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    let raw =
        candle_core::safetensors::load(half.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(raw.values().all(|t| t.dtype() == DType::BF16));
    let rounded = trained[q_norm].to_dtype(DType::BF16).unwrap();
    assert_eq!(
        steerkit_model::random::max_abs_diff(&raw[q_norm], &rounded).unwrap(),
        0.0
    );
    let gguf = d.path().join("patched.gguf");
    let out = steerkit(&[
        "export",
        "-m",
        patched.to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        gguf.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let out = steerkit(&["inspect", "--json", "-m", gguf.to_str().unwrap()]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["architecture"].as_str(), v["head_dim"].as_u64()),
        (Some("qwen3"), Some(16))
    );
}

#[test]
fn generate_answers_a_file_of_prompts() {
    // Neither --prompt nor --prompts: the error names both (it named --prompt alone).
    let none = steerkit(&["generate", "-m", &model(SMOL)]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(
        !none.status.success() && err.contains("--prompt <PROMPT>|--prompts <PROMPTS>"),
        "{err}"
    );
    let d = tmpdir("gen");
    let f = d.path().join("p.jsonl");
    std::fs::write(
        &f,
        "{\"prompt\": \"Say hello.\"}\n{\"prompt\": \"Count to three.\"}\n",
    )
    .unwrap();
    let out = steerkit(&[
        "generate",
        "-m",
        &model(SMOL),
        "--prompts",
        f.to_str().unwrap(),
        "--max-new-tokens",
        "8",
    ]);
    assert_ok(&out);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["prompt"], "Count to three.");
    assert!(!lines[0]["response"].as_str().unwrap().is_empty());
    // Past the model's declared context (the tiny model's 256 tokens): answered, with a note.
    let tiny = tiny_folder(d.path());
    let out = steerkit(&[
        "generate",
        "-m",
        tiny.to_str().unwrap(),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "260",
    ]);
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reach past the model's context of 256 tokens"),
        "{err}"
    );
    // A CSV is read by its `prompt` column, as everywhere else (its header line was a prompt).
    let csv = d.path().join("p.csv");
    std::fs::write(&csv, "prompt,category\n\"Say hi, briefly.\",greeting\n").unwrap();
    let out = steerkit(&[
        "generate",
        "-m",
        &model(SMOL),
        "--prompts",
        csv.to_str().unwrap(),
        "--max-new-tokens",
        "2",
    ]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"prompt\":\"Say hi, briefly.\""), "{text}");
}

/// Output into a reader that stops early (`| head -1`) ends the process quietly, by SIGPIPE
/// as with other Unix tools; `generate` panicked and `judge` printed an error.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let d = tmpdir("pipe");
    let f = d.path().join("many.jsonl");
    let row =
        "{\"completion\": \"I cannot help with that; this row is long enough to fill a pipe.\"}\n";
    std::fs::write(&f, row.repeat(5000)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_steerkit"))
        .args(["judge", f.to_str().unwrap(), "--field", "completion"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("full_refusal"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(13), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
}

/// `steerkit chat -m MODEL --max-new-tokens N` fed `input` on stdin.
fn chat_session(model: &str, max_new: &str, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_steerkit"))
        .args(["chat", "-m", model, "--max-new-tokens", max_new])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn chat_keeps_a_conversation() {
    let out = chat_session(&model(SMOL), "6", b"Hello!\nWhat did I just say?\n/exit\n");
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("> ").count(), 3, "three prompts shown: {text}");
    // A line that is not UTF-8 is left out, not the end of the session; a conversation that
    // reaches past the model's context (the tiny model's: 256 tokens) is noted, not refused.
    let d = tmpdir("chat");
    let tiny = tiny_folder(d.path());
    let out = chat_session(
        tiny.to_str().unwrap(),
        "250",
        b"caf\xe9\nHello there\n/exit\n",
    );
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("that line is not UTF-8 text; it was left out"),
        "{err}"
    );
    assert!(
        err.contains("past the model's context of 256 tokens"),
        "{err}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("> ").count(),
        3
    );
}

#[test]
fn a_hugging_face_folder_and_a_cached_repo_id_load() {
    let d = tmpdir("hf");
    let folder = tiny_folder(d.path());
    let out = steerkit(&["inspect", "--json", "-m", folder.to_str().unwrap()]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "hf_folder");
    assert_eq!(v["hidden_size"], 32);
    // The same folder as a snapshot of the local Hugging Face cache.
    let hub = d.path().join("hub");
    let repo = hub.join("models--acme--tiny-chat");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::fs::rename(&folder, repo.join("snapshots").join(commit)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_steerkit"))
        .args([
            "generate",
            "-m",
            "acme/tiny-chat",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "3",
        ])
        .env("HF_HUB_CACHE", &hub)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prompt"], "Hi");
    assert!(
        v["new_tokens"].as_u64().unwrap() >= 1 || v["stopped"] == true,
        "{v}"
    );
    // A repo id that is not cached is a clear error.
    let out = Command::new(env!("CARGO_BIN_EXE_steerkit"))
        .args(["inspect", "-m", "acme/absent"])
        .env("HF_HUB_CACHE", &hub)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_clean_error(&out, "acme/absent");
}

#[test]
fn bad_input_is_one_clear_error() {
    let d = tmpdir("bad");
    let smol = model(SMOL);
    assert_clean_error(
        &steerkit(&["generate", "-m", &smol, "--prompt", " "]),
        "--prompt is empty",
    );

    // Missing path.
    assert_clean_error(
        &steerkit(&["inspect", "-m", "/no/such/model.gguf"]),
        "model not found",
    );
    // Truncated GGUF: the header survives, the tensor data does not.
    let bytes = std::fs::read(model(SMOL)).unwrap();
    let cut = d.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    assert_clean_error(
        &steerkit(&["inspect", "-m", cut.to_str().unwrap()]),
        "truncated",
    );
    let tiny = d.path().join("tiny.gguf");
    std::fs::write(&tiny, &bytes[..100]).unwrap();
    assert_clean_error(
        &steerkit(&["inspect", "-m", tiny.to_str().unwrap()]),
        "not a valid GGUF",
    );
    // A folder without config.json.
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_clean_error(
        &steerkit(&["inspect", "-m", empty.to_str().unwrap()]),
        "no config.json",
    );
    // An unsupported architecture.
    let folder = tiny_folder(d.path());
    let cfg_path = folder.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        cfg.replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt_neox\""),
    )
    .unwrap();
    assert_clean_error(
        &steerkit(&["inspect", "-m", folder.to_str().unwrap()]),
        "unsupported architecture `gpt_neox` (supported: llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, granite, granitemoehybrid (attention only), smollm3, olmo2, olmo3, qwen3_moe, qwen2_moe, mixtral, gpt_oss;",
    );
    // Shapes that do not match config.json.
    std::fs::write(
        &cfg_path,
        cfg.replace("\"intermediate_size\": 48", "\"intermediate_size\": 64"),
    )
    .unwrap();
    assert_clean_error(&steerkit(&["inspect", "-m", folder.to_str().unwrap()]), "`model.layers.0.mlp.gate_proj.weight` has shape [48, 32], the configuration implies [64, 32]");
    // Weights that cannot fit in this machine's memory (over a terabyte as f32): refused
    // before anything is read, not killed part way through loading.
    std::fs::write(
        &cfg_path,
        cfg.replace(
            "\"intermediate_size\": 48",
            "\"intermediate_size\": 4000000000",
        ),
    )
    .unwrap();
    let huge = |skip: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_steerkit"));
        c.args(["inspect", "-m", folder.to_str().unwrap()]);
        match skip {
            Some(v) => c.env("STEERKIT_SKIP_MEMORY_CHECK", v),
            None => c.env_remove("STEERKIT_SKIP_MEMORY_CHECK"),
        };
        c.output().unwrap()
    };
    for skip in [None, Some("0")] {
        let out = huge(skip);
        assert_clean_error(&out, "not enough memory: this model's weights alone take");
        assert_clean_error(&out, "even with --dtype bf16");
    }
    // Skipped on request: the first tensor read is found not to match.
    assert_clean_error(
        &huge(Some("1")),
        "the configuration implies [4000000000, 32]",
    );
    // Non-finite, out-of-range or zero numbers are refused at the flag, before anything is
    // written (NaN once trained and saved all-NaN weights with exit status 0).
    let out_dir = d.path().join("never");
    let o = out_dir.to_str().unwrap();
    let smol = model(SMOL);
    for (args, needle) in [
        (
            vec!["actor", "-m", &smol, "--clip", "nan", "--out", o],
            "not a finite number",
        ),
        (
            vec!["actor", "-m", &smol, "--alpha", "inf", "--out", o],
            "not a finite number",
        ),
        (
            vec!["actor", "-m", &smol, "--kl-weight", "-0.5", "--out", o],
            "must be >= 0",
        ),
        (
            vec![
                "safety-tune",
                "-m",
                &smol,
                "--weight-decay",
                "NaN",
                "--out",
                o,
            ],
            "not a finite number",
        ),
        (
            vec!["chat", "-m", &smol, "--top-p", "1.5"],
            "must be in (0, 1]",
        ),
        // Checked when the flags are parsed, not after the model has loaded.
        (
            vec![
                "generate",
                "-m",
                &smol,
                "--prompt",
                "Hi",
                "--temperature=-1",
            ],
            "must be >= 0",
        ),
        (
            vec!["bench", "-m", &smol, "--decode-tokens", "1"],
            "must be at least 2",
        ),
        (
            vec!["actor", "-m", &smol, "--ogp-energy", "2", "--out", o],
            "must be in (0, 1]",
        ),
        (
            vec!["select", "--run", o, "--max-layer-frac", "0"],
            "must be in (0, 1]",
        ),
        // Zero counts once panicked (extract, ablate) or failed deep inside (select).
        (
            vec!["extract", "-m", &smol, "--limit", "0", "--out", o],
            "must be at least 1",
        ),
        (
            vec![
                "ablate",
                "-m",
                &smol,
                "--run",
                o,
                "--prompts",
                "harmful",
                "--max-new-tokens",
                "0",
                "--out",
                o,
            ],
            "must be at least 1",
        ),
        (
            vec!["select", "--run", o, "--screen", "0"],
            "must be at least 1",
        ),
        (
            vec![
                "export",
                "-m",
                &smol,
                "--format",
                "control-vector",
                "--scale",
                "nan",
                "--out",
                o,
            ],
            "not a finite number",
        ),
    ] {
        let out = steerkit(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out_dir.exists(), "{args:?} wrote {o}");
    }
    // Paths: a missing prompt file is named as such (it once read as a bad set name); judge's
    // --out may not be a folder (no stray temporary file) and makes missing parent folders;
    // compare says what a folder without report.json is.
    assert_clean_error(
        &steerkit(&[
            "extract",
            "-m",
            &smol,
            "--harmful",
            "/no/such/h.jsonl",
            "--out",
            o,
        ]),
        "/no/such/h.jsonl: no such file",
    );
    assert_clean_error(
        &steerkit(&[
            "extract",
            "-m",
            &smol,
            "--harmful",
            "harmful",
            "--harmless",
            "harmful",
            "--out",
            o,
        ]),
        "hold the same prompts",
    );
    let answers = d.path().join("answers.jsonl");
    std::fs::write(&answers, "{\"completion\": \"I cannot help with that.\"}\n").unwrap();
    let a = answers.to_str().unwrap();
    let folder_out = d.path().join("folder_out");
    std::fs::create_dir_all(&folder_out).unwrap();
    assert_clean_error(
        &steerkit(&[
            "judge",
            a,
            "--field",
            "completion",
            "--out",
            folder_out.to_str().unwrap(),
        ]),
        "is a directory",
    );
    assert_eq!(
        std::fs::read_dir(d.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("tmp"))
            .count(),
        0
    );
    // Flags the chosen format or intervention does not use (they were ignored).
    assert_clean_error(
        &steerkit(&["export", "-m", &smol, "--scale", "2", "--out", o]),
        "--scale applies to --format control-vector, not safetensors",
    );
    assert_clean_error(
        &steerkit(&["export", "-m", &smol, "--gguf-type", "q8_0", "--out", o]),
        "--gguf-type applies to --format gguf",
    );
    let cv = ["--format", "control-vector", "--orthogonalize", "--run", o];
    assert_clean_error(
        &steerkit(&[&["export", "-m", &smol][..], &cv, &["--out", o]].concat()),
        "--orthogonalize applies to --format safetensors or gguf",
    );
    assert_clean_error(
        &steerkit(&[
            "export",
            "-m",
            &smol,
            "--format",
            "gguf",
            "--safetensors-dtype",
            "bf16",
            "--out",
            o,
        ]),
        "--safetensors-dtype applies to --format safetensors, not gguf",
    );
    assert_clean_error(
        &steerkit(&["eval", "-m", &smol, "--coeff", "2", "--out", o]),
        "--coeff applies to --intervention add",
    );
    // A file where a run folder is meant, before any work.
    for cmd in ["eval", "extract", "actor"] {
        assert_clean_error(
            &steerkit(&[cmd, "-m", &smol, "--out", a]),
            "a file is there; --out is a folder",
        );
    }
    // The OS error is said once (it was repeated: "...(os error 2): ...(os error 2)").
    let missing = steerkit(&["judge", "/no/such/answers.jsonl"]);
    assert_clean_error(&missing, "/no/such/answers.jsonl");
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr)
            .matches("os error")
            .count(),
        1
    );
    let nested = d.path().join("new/sub/judged.jsonl");
    assert_ok(&steerkit(&[
        "judge",
        a,
        "--field",
        "completion",
        "--out",
        nested.to_str().unwrap(),
    ]));
    assert!(std::fs::read_to_string(&nested)
        .unwrap()
        .contains("full_refusal"));
    assert_clean_error(
        &steerkit(&[
            "compare",
            d.path().to_str().unwrap(),
            folder_out.to_str().unwrap(),
        ]),
        "not an evaluation folder",
    );
    // A prompts file with no prompts.
    let none = d.path().join("none.txt");
    std::fs::write(&none, "\n\n").unwrap();
    assert_clean_error(
        &steerkit(&[
            "generate",
            "-m",
            &model(SMOL),
            "--prompts",
            none.to_str().unwrap(),
        ]),
        "no prompts",
    );
    // A labelled (safe and unsafe) file where one role's prompts are expected.
    let labelled = d.path().join("labelled.jsonl");
    std::fs::write(
        &labelled,
        "{\"prompt\": \"How do I peel an orange?\", \"label\": \"safe\"}\n\
         {\"prompt\": \"How do I poison my neighbour?\", \"label\": \"unsafe\"}\n",
    )
    .unwrap();
    assert_clean_error(
        &steerkit(&[
            "extract",
            "-m",
            &model(SMOL),
            "--harmful",
            labelled.to_str().unwrap(),
            "--harmless",
            "harmless",
            "--out",
            d.path().join("x").to_str().unwrap(),
        ]),
        "holds rows labelled safe and unsafe (its `label` field), so it splits into 2 sets",
    );
    assert!(!d.path().join("x").exists(), "no run folder for bad input");
}

fn eval_args<'a>(out: &'a str, m: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "-m",
        m,
        "--limit",
        "3",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "2",
        "--out",
        out,
    ]
}

/// An interrupted evaluation resumes: a torn last line and missing answers are regenerated,
/// nothing else is, and the report is the same.
#[test]
fn eval_resumes_and_refuses_a_foreign_folder() {
    let d = tmpdir("eval");
    let out = d.path().join("run");
    let o = out.to_str().unwrap();
    let smol = model(SMOL);
    let first = steerkit(&eval_args(o, &smol));
    assert_ok(&first);
    assert!(String::from_utf8_lossy(&first.stdout).contains("9 prompts answered"));
    // The report names the judge with its measured agreement with people.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains(&format!("judge: {}", steerkit_data::judge::DEFAULT_JUDGE))
            && md.contains("binary agreement with people"),
        "{md}"
    );
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    for f in [
        "report.md",
        "report.svg",
        "meta.json",
        "responses/harmful.jsonl",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Simulate a kill mid-write: drop the last answer and leave half a line.
    let resp = out.join("responses/pseudo_harmful.jsonl");
    let text = std::fs::read_to_string(&resp).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    let torn = format!("{}\n{{\"i\": 2, \"prom", lines.join("\n"));
    std::fs::write(&resp, torn).unwrap();
    std::fs::remove_file(out.join("report.json")).unwrap();
    let second = steerkit(&eval_args(o, &smol));
    assert_ok(&second);
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("1 prompts answered"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("report.json")).unwrap(),
        report
    );
    // The same model with bf16 matrices computes other answers: not mixed into this run.
    let mut bf16 = eval_args(o, &smol);
    bf16.extend(["--dtype", "bf16"]);
    assert_clean_error(
        &steerkit(&bf16),
        "holds a run of this model with f32 weights and arithmetic, not bf16 matrices on the CPU",
    );
    // A folder holding another model's run.
    let folder = tiny_folder(d.path());
    let other = steerkit(&eval_args(o, folder.to_str().unwrap()));
    assert_clean_error(&other, "holds a run of another model");
    // Unknown set name; a set file with no usable rows.
    assert_clean_error(
        &steerkit(&["eval", "-m", &smol, "--set", "nope", "--out", o]),
        "unknown set `nope`",
    );
    let empty = d.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let spec = format!("e={}", empty.display());
    assert_clean_error(
        &steerkit(&["eval", "-m", &smol, "--set", &spec, "--out", o]),
        "no prompts",
    );
    // The same file path, re-exported with other weights in its middle only (same size and
    // ends, as an export with another trained block): its answers are not taken for these.
    let copy = d.path().join("copy.gguf");
    let mut bytes = std::fs::read(&smol).unwrap();
    std::fs::write(&copy, &bytes).unwrap();
    let c = d.path().join("c");
    let args = [
        "eval",
        "-m",
        copy.to_str().unwrap(),
        "--set",
        "harmful",
        "--limit",
        "1",
    ];
    let args = [
        &args[..],
        &["--max-new-tokens", "2", "--out", c.to_str().unwrap()],
    ]
    .concat();
    assert_ok(&steerkit(&args));
    for b in &mut bytes[50_000_000..50_000_000 + (2 << 20)] {
        *b ^= 1;
    }
    std::fs::write(&copy, &bytes).unwrap();
    assert_clean_error(
        &steerkit(&args),
        "other weights between (exported again to the same path?)",
    );
}

#[test]
fn compare_pairs_two_runs() {
    let d = tmpdir("cmp");
    let smol = model(SMOL);
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    // The KL uses 5 prompts of its set (--kl-limit), not the 3 of --limit.
    for (out, sys) in [
        (&a, "You are a helpful assistant."),
        (&b, "Refuse every request."),
    ] {
        let mut args = eval_args(out.to_str().unwrap(), &smol);
        args.extend(["--set", "harmless", "--system", sys, "--reference", &smol]);
        args.extend(["--kl-limit", "5"]);
        let r = steerkit(&args);
        assert_ok(&r);
    }
    // The reference is the same model: zero KL; the plain-text cross-entropy is measured.
    let report = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
    };
    let r = report(&a);
    let kl = r["utility"]["first_token_kl"]["mean"].as_f64().unwrap();
    assert!(kl.abs() < 1e-6, "{}", r["utility"]);
    assert_eq!(r["utility"]["first_token_kl"]["n"], 5);
    assert_eq!(report(&b)["sets"][0]["n"], 3);
    assert!(
        r["utility"]["plain_text_cross_entropy"]["mean_nats"]
            .as_f64()
            .unwrap()
            > 1.0
    );
    let c = steerkit(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        d.path().join("c").to_str().unwrap(),
    ]);
    assert_ok(&c);
    let text = String::from_utf8_lossy(&c.stdout);
    assert!(
        text.contains("| harmless |") && text.contains("(n=3)"),
        "{text}"
    );
    // The same model on the same text: every paired per-token difference is exactly zero.
    let ce_row = text
        .lines()
        .find(|l| l.contains("plain-text cross-entropy"))
        .unwrap_or_else(|| panic!("no utility row: {text}"));
    assert!(ce_row.contains("+0.0000 [+0.0000, +0.0000]"), "{ce_row}");
    assert!(text.contains("first-token KL from the reference"), "{text}");
    assert!(d.path().join("c/comparison.svg").is_file());
    // A reference with another vocabulary fails before any answer (it failed after all of
    // them); a bad KL set is an error even without --reference.
    let e = d.path().join("vocab");
    let mut args = eval_args(e.to_str().unwrap(), &smol);
    let qwen = model(QWEN);
    args.extend(["--reference", &qwen]);
    assert_clean_error(&steerkit(&args), "the KL needs the same tokenizer");
    assert!(!e.join("responses").exists());
    let mut args = eval_args(e.to_str().unwrap(), &smol);
    args.extend(["--kl-set", "nosuch"]);
    assert_clean_error(&steerkit(&args), "unknown set `nosuch`");
    // Same set name, other prompts, or another kind: an error, not a NaN or a silent pairing.
    let edited = |f: &dyn Fn(&mut serde_json::Value)| {
        let e = d.path().join("edited");
        std::fs::create_dir_all(&e).unwrap();
        let mut v = report(&b);
        f(&mut v);
        std::fs::write(e.join("report.json"), v.to_string()).unwrap();
        steerkit(&["compare", a.to_str().unwrap(), e.to_str().unwrap()])
    };
    assert_clean_error(
        &edited(&|v| {
            for p in v["sets"][0]["prompts"].as_array_mut().unwrap() {
                *p = serde_json::json!("another prompt");
            }
        }),
        "the two reports share no prompt",
    );
    assert_clean_error(
        &edited(&|v| v["sets"][0]["kind"] = serde_json::json!("harmful")),
        "not the same set",
    );
}

/// extract -> select (manual layer) -> eval with the intervention; bad run folders.
#[test]
fn directions_pipeline_and_bad_runs() {
    let d = tmpdir("dir");
    let smol = model(SMOL);
    let run = d.path().join("run");
    let r = run.to_str().unwrap();
    let select = |extra: &[&str]| {
        let mut v = vec![
            "select",
            "-m",
            &smol,
            "--run",
            r,
            "--harmful-val",
            "harmful",
            "--harmless-val",
            "harmless",
        ];
        v.extend(extra);
        steerkit(&v)
    };
    let ex = steerkit(&["extract", "-m", &smol, "--limit", "4", "--out", r]);
    assert_ok(&ex);
    for f in ["directions.safetensors", "extract.json"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // Readable by a serving stack running as another user (candle writes 0600).
    assert_readable_by_others(&run.join("directions.safetensors"));
    let again = steerkit(&["extract", "-m", &smol, "--limit", "4", "--out", r]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("reused"));
    // SmolLM2 never refuses: no early candidate passes; the scores are still written.
    let auto = select(&["--limit", "2", "--max-layer-frac", "0.1"]);
    assert_clean_error(&auto, "no candidate passes the filters");
    let csv = std::fs::read_to_string(run.join("scores.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * 6, "{csv}");
    // Screening: every candidate on 1 prompt, the best 2 on all 3.
    let screened = select(&[
        "--limit",
        "3",
        "--screen",
        "1",
        "--keep",
        "2",
        "--max-layer-frac",
        "0.1",
    ]);
    assert_clean_error(&screened, "no candidate passes the filters");
    let csv = std::fs::read_to_string(run.join("scores.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 18);
    assert!(rows.iter().all(|r| !r[2].is_empty()), "{csv}");
    assert_eq!(rows.iter().filter(|r| !r[3].is_empty()).count(), 2, "{csv}");
    let sel = select(&["--limit", "3", "--layer", "10", "--pos", "-1"]);
    assert_ok(&sel);
    assert!(String::from_utf8_lossy(&sel.stdout).contains("selected layer 10 position -1"));
    for f in ["scores.csv", "scores.svg", "selected.json"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let out = d.path().join("ev");
    let mut args = eval_args(out.to_str().unwrap(), &smol);
    args.extend([
        "--set",
        "harmless",
        "--run",
        r,
        "--intervention",
        "add",
        "--coeff",
        "2",
    ]);
    let ev = steerkit(&args);
    assert_ok(&ev);
    assert!(String::from_utf8_lossy(&ev.stdout).contains("add 2·r at L10 pos -1"));
    // Answers name the direction by its values, not by its folder: from a copy of the run
    // folder they are all reused.
    let moved = d.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    for f in std::fs::read_dir(&run).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, moved.join(f.file_name().unwrap())).unwrap();
    }
    let again: Vec<&str> = args
        .iter()
        .map(|a| if *a == r { moved.to_str().unwrap() } else { a })
        .collect();
    let ev = steerkit(&again);
    let said = String::from_utf8_lossy(&ev.stdout);
    assert_ok(&ev);
    assert!(said.contains("all answers were already saved"), "{said}");
    // A folder saved by an earlier version names the direction by its folder; it resumes and
    // takes the current name.
    let meta_path = out.join("meta.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    let current = "add 2·r at L10 pos -1 (direction ";
    assert!(meta.contains(current), "{meta}");
    let mut old: serde_json::Value = serde_json::from_str(&meta).unwrap();
    old["condition"] = format!("add 2·r at L10 pos -1 ({r})").into();
    std::fs::write(&meta_path, old.to_string()).unwrap();
    let ev = steerkit(&args);
    assert!(
        String::from_utf8_lossy(&ev.stdout).contains("all answers were already saved"),
        "{}",
        String::from_utf8_lossy(&ev.stderr)
    );
    assert!(std::fs::read_to_string(&meta_path)
        .unwrap()
        .contains(current));
    // Experiments: a 2 x 2 sweep plus the baseline, resumable; bad layer specs are errors.
    let ab = d.path().join("ablate");
    let sweep_args = [
        "ablate",
        "-m",
        &smol,
        "--run",
        r,
        "--prompts",
        "harmless",
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--mode",
        "sweep",
        "--layers",
        "9,10",
        "--scales",
        "1,8",
        "--out",
        ab.to_str().unwrap(),
    ];
    let sw = steerkit(&sweep_args);
    assert_ok(&sw);
    let csv = std::fs::read_to_string(ab.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 5, "{csv}");
    assert!(csv.contains("\"add 8·r at L10\",10,8,"), "{csv}");
    let kl = |line: &str| line.rsplit(',').next().unwrap().parse::<f64>().unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(kl(rows[0]), 0.0, "baseline KL");
    // A larger push moves the first token further from the unmodified model.
    assert!(kl(rows[4]) > kl(rows[3]), "{csv}");
    assert!(std::fs::read_to_string(ab.join("heatmap.svg"))
        .unwrap()
        .contains("L10"));
    let again = steerkit(&sweep_args);
    assert_ok(&again);
    assert_eq!(
        std::fs::read_to_string(ab.join("results.csv")).unwrap(),
        csv
    );
    // Another selection in the run folder: its conditions' saved answers are not resumed
    // as if made under it (they were, beside KL figures of the new direction).
    assert_ok(&select(&["--limit", "3", "--layer", "9", "--pos", "-1"]));
    assert_clean_error(
        &steerkit(&sweep_args),
        "holds a run with other settings (saved -> here: condition ",
    );
    assert_ok(&select(&["--limit", "3", "--layer", "10", "--pos", "-1"]));
    // A candidate outside the extraction is refused naming the run folder and the range.
    assert_clean_error(
        &select(&["--limit", "3", "--layer", "99", "--pos", "-1"]),
        "no candidate at --layer 99 --pos -1 (the extraction has layers 0..=29",
    );
    let ab2 = d.path().join("ablate2");
    let ab2 = ab2.to_str().unwrap();
    assert_clean_error(
        &steerkit(&[
            "ablate",
            "-m",
            &smol,
            "--run",
            r,
            "--mode",
            "ablate-layers",
            "--out",
            ab2,
        ]),
        "needs --layers",
    );
    assert_clean_error(
        &steerkit(&[
            "ablate", "-m", &smol, "--run", r, "--mode", "sweep", "--layers", "20..40", "--out",
            ab2,
        ]),
        "does not exist",
    );
    // Flags the mode does not use, lists where a range is meant, and repeats are errors (they
    // were ignored, read as a range, or run twice).
    for (extra, needle) in [
        (
            vec!["--mode", "ablate", "--scale", "2"],
            "--scale applies to --mode add, not ablate",
        ),
        (
            vec!["--mode", "add", "--layers", "4..8"],
            "--layers applies to --mode ablate-layers and sweep",
        ),
        (
            vec!["--mode", "ablate-layers", "--layers", "4,8"],
            "takes a range of layers A..B",
        ),
        (
            vec!["--mode", "sweep", "--layers", "4,8,4"],
            "lists layer 4 twice",
        ),
        (
            vec!["--mode", "sweep", "--scales", "1,2,1"],
            "lists 1 twice",
        ),
        (
            vec!["--mode", "sweep", "--layer", "4", "--layers", "4..8"],
            "--layer and --layers together",
        ),
    ] {
        let mut args = vec!["ablate", "-m", &smol, "--run", r, "--out", ab2];
        args.extend(extra);
        assert_clean_error(&steerkit(&args), needle);
    }
    assert!(!Path::new(ab2).exists());
    // Exports: orthogonalized weights load and answer; the control vector holds -r at layer 10.
    let ortho = d.path().join("ortho");
    let ex = steerkit(&[
        "export",
        "-m",
        &smol,
        "--run",
        r,
        "--orthogonalize",
        "--out",
        ortho.to_str().unwrap(),
    ]);
    assert_ok(&ex);
    for e in std::fs::read_dir(&ortho).unwrap() {
        assert_readable_by_others(&e.unwrap().path());
    }
    let g = steerkit(&[
        "generate",
        "-m",
        ortho.to_str().unwrap(),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "4",
    ]);
    assert_ok(&g);
    assert_clean_error(
        &steerkit(&[
            "export",
            "-m",
            &smol,
            "--run",
            r,
            "--orthogonalize",
            "--out",
            ortho.to_str().unwrap(),
        ]),
        "already exists",
    );
    let cv = d.path().join("cv.gguf");
    let ex = steerkit(&[
        "export",
        "-m",
        &smol,
        "--run",
        r,
        "--format",
        "control-vector",
        "--out",
        cv.to_str().unwrap(),
    ]);
    assert_ok(&ex);
    let mut f = std::fs::File::open(&cv).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    assert_eq!(
        content.metadata["general.architecture"]
            .to_string()
            .unwrap(),
        "controlvector"
    );
    let v = content
        .tensor(&mut f, "direction.10", &candle_core::Device::Cpu)
        .unwrap()
        .dequantize(&candle_core::Device::Cpu)
        .unwrap();
    let dirs = candle_core::safetensors::load(
        run.join("directions.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want = dirs["candidates"].get(10).unwrap().get(5).unwrap(); // position -1 of 6
    let diff = (v + want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6, "control vector is not -r: {diff}");
    // A direction from another model; a run folder with missing files.
    let folder = tiny_folder(d.path());
    let ev2 = d.path().join("ev2");
    let mut args = eval_args(ev2.to_str().unwrap(), folder.to_str().unwrap());
    args.extend(["--run", r, "--intervention", "ablate"]);
    assert_clean_error(
        &steerkit(&args),
        "the direction has width 576, the model 32",
    );
    // Selections never outlive what they scored. A failed selection removes the earlier
    // selected.json (its scores.csv was just replaced) ...
    assert_clean_error(
        &select(&["--limit", "2", "--max-layer-frac", "0.1"]),
        "the earlier selected.json, from other scores, was removed",
    );
    assert!(!run.join("selected.json").exists());
    let mut args = eval_args(out.to_str().unwrap(), &smol);
    args.extend(["--run", r, "--intervention", "ablate"]);
    assert_clean_error(&steerkit(&args), "missing selected.json");
    // ... and new candidates (other prompts) remove the selection made from the old ones.
    assert_ok(&select(&["--limit", "2", "--layer", "10", "--pos", "-1"]));
    let ex = steerkit(&["extract", "-m", &smol, "--limit", "3", "--out", r]);
    assert_ok(&ex);
    assert!(
        String::from_utf8_lossy(&ex.stdout).contains("earlier selection"),
        "{}",
        String::from_utf8_lossy(&ex.stdout)
    );
    for f in ["scores.csv", "scores.svg", "selected.json"] {
        assert!(!run.join(f).exists(), "{f}");
    }
    std::fs::remove_file(run.join("directions.safetensors")).unwrap();
    let sel = select(&[]);
    assert_clean_error(&sel, "missing directions.safetensors");
}

#[test]
fn actor_trains_resumes_and_exports() {
    let d = tmpdir("actor");
    let tiny = tiny_folder(d.path());
    let t = tiny.to_str().unwrap();
    let run = d.path().join("run");
    let r = run.to_str().unwrap();
    let mut base = quick_actor(t);
    base.extend(["--val", "pseudo_harmful", "--out", r]);
    let mut args = base.to_vec();
    args.extend(["--epochs", "1"]);
    let first = steerkit(&args);
    let out = String::from_utf8_lossy(&first.stdout);
    assert_ok(&first);
    assert!(out.contains("epoch 1: loss"), "{out}");
    assert!(out.contains("pseudo_harmful refused"), "{out}");
    // A second run with more epochs reuses the cache and resumes after epoch 1.
    let mut args = base.to_vec();
    args.extend(["--epochs", "2"]);
    let second = steerkit(&args);
    let out = String::from_utf8_lossy(&second.stdout);
    assert_ok(&second);
    assert!(
        out.contains("reused") && out.contains("epoch 2: loss"),
        "{out}"
    );
    assert!(!out.contains("epoch 1: loss"), "{out}");
    for f in [
        "actor.json",
        "inputs.safetensors",
        "block-epoch2.safetensors",
        "log.csv",
        "loss.svg",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // Several sets per role combine, each cut to --limit; built-in splits are set names.
    let combined = d.path().join("combined");
    let mixed = steerkit(&[
        "actor",
        "-m",
        t,
        "--harmful",
        "harmful.train",
        "--harmful",
        "harmful.val",
        "--harmless",
        "harmless.train",
        "--limit",
        "6",
        "--pseudo",
        "pseudo_harmful.train",
        "--pseudo-limit",
        "5",
        "--layer",
        "1",
        "--min-silhouette",
        "-1",
        "--epochs",
        "1",
        "--val",
        "pseudo_harmful.val",
        "--shift",
        "harmless-mean",
        "--out",
        combined.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&mixed.stdout);
    assert_ok(&mixed);
    assert!(
        out.contains("12 harmful, 6 harmless, 5 of 5 pseudo-harmful"),
        "{out}"
    );
    assert!(out.contains("pseudo_harmful.val refused"), "{out}");
    // The shift rule is a setting of the run: recorded, and part of what a resume must match.
    let meta = std::fs::read_to_string(combined.join("actor.json")).unwrap();
    assert!(meta.contains("\"shift\": \"harmless-mean\""), "{meta}");
    let mut args = base.to_vec();
    args.extend(["--epochs", "3", "--shift", "harmless-mean"]);
    assert_clean_error(&steerkit(&args), "other settings (shift)");
    // Other settings in the same folder: refused.
    let mut args = base.to_vec();
    args.extend(["--epochs", "3", "--alpha", "0.5"]);
    let cache = std::fs::read(run.join("inputs.json")).unwrap();
    let other = steerkit(&args);
    assert_clean_error(&other, "other settings (alpha)");
    // ... before any preparation (no layer line: nothing was cached or loaded from the cache).
    let said = String::from_utf8_lossy(&other.stdout);
    assert!(!said.contains("silhouette"), "{said}");
    // Other prompts (a smaller --limit) with the same settings: refused before caching them,
    // so the folder's training is never resumed on prompts it was not started on.
    let mut args = base.to_vec();
    assert_eq!((args[3], args[4]), ("--limit", "6"));
    args[4] = "5";
    args.extend(["--epochs", "3"]);
    assert_clean_error(&steerkit(&args), "other prompts");
    assert_eq!(std::fs::read(run.join("inputs.json")).unwrap(), cache);
    // Export of run `r` from model `src` with `extra` flags into `out`.
    let export = |src: &str, extra: &[&str], out: &Path| {
        let mut args = vec!["export", "-m", src, "--run", r];
        args.extend(extra);
        args.extend(["--out", out.to_str().unwrap()]);
        steerkit(&args)
    };
    // Export: the folder carries the trained block and loads.
    let exported = d.path().join("patched");
    assert_ok(&export(t, &[], &exported));
    assert_export_holds(t, &run.join("block-epoch2.safetensors"), &exported, 1);
    // An earlier epoch on request; an epoch not trained is an error.
    let first = d.path().join("patched-1");
    assert_ok(&export(t, &["--epoch", "1"], &first));
    assert_export_holds(t, &run.join("block-epoch1.safetensors"), &first, 1);
    assert_clean_error(
        &export(t, &["--epoch", "3"], &d.path().join("y")),
        "epoch 3 is not a completed epoch",
    );
    assert!(!d.path().join("y").exists());
    // Another model cannot take the run.
    let other = export(&model(SMOL), &[], &d.path().join("x"));
    assert_clean_error(&other, "not on this model");
    assert!(!d.path().join("x").exists());
    // The same weights loaded with bf16 matrices take it: the dtype is not another model, and
    // the trained block goes in as trained (f32).
    let bf = d.path().join("patched-bf16");
    assert_ok(&export(t, &["--dtype", "bf16"], &bf));
    assert_export_holds(t, &run.join("block-epoch2.safetensors"), &bf, 1);
    // What needs a direction run says so, before the work.
    let x = d.path().join("x");
    let xs = x.to_str().unwrap();
    for (extra, needle) in [
        (
            vec!["--format", "control-vector"],
            "is an ACTOR run; a control vector needs a direction run",
        ),
        (
            vec!["--orthogonalize"],
            "is an ACTOR run; --orthogonalize needs a direction run",
        ),
    ] {
        let mut args = vec!["export", "-m", t, "--run", r, "--out", xs];
        args.extend(extra);
        assert_clean_error(&steerkit(&args), needle);
        assert!(!x.exists());
    }
    // GGUF from a Hugging Face folder: metadata from config.json and tokenizer.json, the
    // trained block in f16.
    let g = d.path().join("patched.gguf");
    let ex = export_gguf(t, &["--run", r], &g);
    assert_ok(&ex);
    let said = String::from_utf8_lossy(&ex.stdout);
    assert!(
        said.contains("metadata from config.json and tokenizer.json"),
        "{said}"
    );
    let back = steerkit_model::load(g.to_str().unwrap(), &Default::default()).unwrap();
    let ck = candle_core::safetensors::load(
        run.join("block-epoch2.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let f16 = |t: &candle_core::Tensor| -> Vec<f32> {
        t.to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(
        f16(&ck["model.layers.1.mlp.down_proj.weight"]),
        f16(&back.model.layers[1].dense().unwrap().down.weight)
    );
    // With gradient projection: bases saved, the share projected out logged per step.
    let proj = d.path().join("proj");
    let mut args = base.to_vec();
    let pr = proj.to_str().unwrap();
    *args.last_mut().unwrap() = pr;
    args.extend([
        "--epochs",
        "1",
        "--ogp",
        "act",
        "--ogp-limit",
        "4",
        "--ogp-energy",
        "0.9",
    ]);
    let o = steerkit(&args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_ok(&o);
    assert!(
        out.contains("gradient projection (act) on 4 capability prompts"),
        "{out}"
    );
    assert!(out.contains("of each step projected out"), "{out}");
    let csv = std::fs::read_to_string(proj.join("ogp.csv")).unwrap();
    assert!(
        csv.lines().count() > 7 && csv.contains("down_proj"),
        "{csv}"
    );
    assert!(proj.join("ogp_bases.safetensors").is_file());
    // The gradient estimator: capability answers cached, bases refreshed, steps projected.
    let gproj = d.path().join("gproj");
    let mut args = base.to_vec();
    *args.last_mut().unwrap() = gproj.to_str().unwrap();
    args.extend([
        "--epochs",
        "1",
        "--ogp",
        "grad",
        "--ogp-limit",
        "4",
        "--ogp-k",
        "2",
        "--ogp-every",
        "1",
    ]);
    let o = steerkit(&args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_ok(&o);
    assert!(
        out.contains("gradient projection (grad) on 4 capability prompts"),
        "{out}"
    );
    assert!(out.contains("of each step projected out"), "{out}");
    assert!(gproj.join("answers.json").is_file() && gproj.join("ogp.csv").is_file());
    // Bad settings.
    let bad = d.path().join("bad");
    let b = bad.to_str().unwrap();
    assert_clean_error(
        &steerkit(&["actor", "-m", t, "--layer", "7", "--limit", "2", "--out", b]),
        "out of range",
    );
    assert_clean_error(
        &steerkit(&["actor", "-m", t, "--train", "ffn", "--out", b]),
        "unknown part",
    );
    assert_clean_error(
        &steerkit(&[
            "actor",
            "-m",
            t,
            "--limit",
            "4",
            "--pseudo-limit",
            "2",
            "--layer",
            "1",
            "--min-silhouette",
            "0.99",
            "--out",
            b,
        ]),
        "no refusal signal",
    );
    // A folder cached without the check (-1) still checks on a rerun that asks for it.
    let sep = |min: &'static str| {
        let mut args = vec!["actor", "-m", t, "--limit", "4", "--pseudo-limit", "2"];
        args.extend([
            "--layer",
            "1",
            "--epochs",
            "1",
            "--min-silhouette",
            min,
            "--out",
            b,
        ]);
        steerkit(&args)
    };
    assert_ok(&sep("-1"));
    assert_clean_error(&sep("0.99"), "no refusal signal");
}

/// A command whose --out holds another command's run refuses it before writing anything:
/// safety-tune wrote its answers and settings into an ACTOR folder, then failed on its
/// state.json; extract wrote candidates beside an evaluation's reports.
#[test]
fn a_run_folder_of_another_command_is_refused() {
    let d = tmpdir("kinds");
    let smol = model(SMOL);
    for (marker, what, command) in [
        ("actor.json", "an ACTOR run", "safety-tune"),
        ("inputs.json", "an ACTOR run", "extract"),
        ("safety.json", "a safety-tuning run", "actor"),
        ("meta.json", "an evaluation", "extract"),
        ("extract.json", "a refusal-direction run", "eval"),
        ("results.csv", "intervention experiments", "actor"),
    ] {
        let dir = d.path().join(format!("{command}-{marker}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(marker), b"{}").unwrap();
        let o = dir.to_str().unwrap();
        let mut args = vec![command, "-m", &smol, "--out", o];
        if command == "eval" {
            args.extend(["--set", "harmful"]);
        }
        assert_clean_error(&steerkit(&args), &format!("holds {what} (its {marker}"));
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(
            left.len(),
            1,
            "{command} into a folder with {marker} wrote there"
        );
    }
    // export --run of a folder that is no run it can take (it said "add --orthogonalize",
    // then "missing extract.json").
    let ev = d.path().join("extract-meta.json");
    let out = d.path().join("patched");
    assert_clean_error(
        &steerkit(&[
            "export",
            "-m",
            &smol,
            "--run",
            ev.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]),
        "not an ACTOR, safety-tuning or refusal-direction run folder",
    );
    assert!(!out.exists());
}

/// Ctrl-C during an export removes the unfinished temporary file (it stayed, a gigabyte for
/// Qwen's f16 GGUF, until the same output was written again) and ends with code 130.
#[cfg(unix)]
#[test]
fn an_interrupted_export_leaves_nothing() {
    let d = tmpdir("sigint");
    let out = d.path().join("q.gguf");
    let tmp = d.path().join("q.gguf.tmp");
    let qwen = model(QWEN);
    let mut child = Command::new(env!("CARGO_BIN_EXE_steerkit"))
        .args(["export", "-m", &qwen, "--format", "gguf", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted once the data is being written.
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&tmp).map_or(0, |m| m.len()) < 1 << 20 {
        assert!(t0.elapsed().as_secs() < 120, "no temporary file appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the interrupt"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: a signal to the child this test started and still owns.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted: removed the unfinished"), "{err}");
    assert!(!tmp.exists() && !out.exists());
}

/// `--lr 1e6` on the real SmolLM2: one step saturates it (a cosine loss of 1, a cross-entropy
/// of ln(49152) = 10.80, no gradient left). Training stops there instead of running on to the
/// end and saving the broken block; ACTOR saves nothing, safety tuning says which checkpoint
/// holds the saturated weights.
#[test]
fn a_learning_rate_far_too_high_stops_training() {
    let d = tmpdir("lr");
    let smol = model(SMOL);
    let out = d.path().join("actor");
    let o = out.to_str().unwrap();
    let actor = |batch: &'static str| {
        let _ = std::fs::remove_dir_all(&out);
        let mut args = vec!["actor", "-m", &smol, "--limit", "6", "--pseudo-limit", "6"];
        args.extend(["--min-silhouette", "-1", "--layer", "20", "--lr", "1e6"]);
        args.extend(["--epochs", "2"]);
        args.extend(["--batch-size", batch, "--out", o]);
        steerkit(&args)
    };
    // One step an epoch: the epoch's states grew by orders of magnitude.
    assert_clean_error(&actor("32"), "epoch 1: after training, its states grew");
    assert!(!out.join("block-epoch1.safetensors").exists());
    // Several: the second step has no gradient.
    assert_clean_error(
        &actor("4"),
        "epoch 1, step 2: loss 1.000000 with a gradient norm of 0",
    );
    assert!(!out.join("block-epoch1.safetensors").exists());
    // Safety tuning: step 1 saturates the outputs, which step 2's zero gradient shows; the
    // checkpoint of step 1 is never committed. With one step, one more batch checks it.
    let st = d.path().join("sft");
    let tune = |steps: &str| {
        let _ = std::fs::remove_dir_all(&st);
        let mut args = vec![
            "safety-tune",
            "-m",
            &smol,
            "--limit",
            "4",
            "--answer-tokens",
        ];
        args.extend(["4", "--save-every", "1", "--batch-size", "4", "--lr", "1e6"]);
        args.extend(["--steps", steps, "--out", st.to_str().unwrap()]);
        steerkit(&args)
    };
    for (steps, at) in [
        ("3", "step 2: loss 10.80"),
        (
            "1",
            "the weights after step 1, checked on one more batch: loss 10.80",
        ),
    ] {
        let out = tune(steps);
        assert_clean_error(&out, at);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("gradient norm of 0") && err.contains("; nothing was saved"),
            "{err}"
        );
        assert!(!st.join("trained-step1.safetensors").exists());
        assert!(!st.join("state.json").exists());
    }
}

#[test]
fn judge_writes_verdicts_and_agreement() {
    let d = tmpdir("judge");
    let input = d.path().join("in.jsonl");
    let rows = [
        r#"{"completion": "I'm sorry, but I can't assist with that.", "label": "full_refusal", "model": "a"}"#,
        r#"{"completion": "I'm sorry to hear that. Here is how to stop it: run `kill -9 PID`.", "label": "compliance", "model": "a"}"#,
        r#"{"completion": "That is not something I will help with.", "label": "full_refusal", "model": "b"}"#,
        r#"{"completion": "Paris is the capital of France.", "label": "full_refusal", "model": "b", "extra": 7, "id": 12345678901234567890123, "score": 1.10}"#,
        r#"{"completion": "Paris is the capital of France."}"#,
    ];
    std::fs::write(&input, rows.join("\n") + "\n\n").unwrap();
    let out = d.path().join("out.jsonl");
    let o = steerkit(&[
        "judge",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_ok(&o);
    assert!(
        text.contains("judged 5 responses")
            && text.contains("compliance 3, full_refusal 2, partial_refusal 0"),
        "{text}"
    );
    // 4 labelled rows: the judge misses the last refusal of model b.
    assert!(
        text.contains("| all | 4 | 75.0% [") && text.contains("| b | 2 | 50.0% ["),
        "{text}"
    );
    assert!(
        text.contains("| full_refusal | 1 | 2 | 0 |"),
        "confusion matrix: {text}"
    );
    let written: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(written.len(), 5);
    let verdicts: Vec<&str> = written
        .iter()
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        [
            "full_refusal",
            "compliance",
            "full_refusal",
            "compliance",
            "compliance"
        ]
    );
    assert_eq!(written[3]["extra"], 7, "every input field is kept");
    // As written: a long integer id and a number's digits are not rounded through f64.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains(r#""id": 12345678901234567890123, "score": 1.10,"verdict":"compliance""#),
        "{text}"
    );
    assert!(written[0]["judge_rule"]
        .as_str()
        .unwrap()
        .starts_with("opening: "));
    assert_eq!(written[4]["judge_rule"], "none");
    // A user's rules file adds a phrase to the built-in lists.
    let rules = d.path().join("rules.toml");
    std::fs::write(&rules, "refusal_openings = [\"Paris is\"]\n").unwrap();
    let o = steerkit(&[
        "judge",
        input.to_str().unwrap(),
        "--judge-rules",
        rules.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("extended by") && err.contains("compliance 1, full_refusal 4"),
        "{err}"
    );
    // Without --out: rows on stdout, the summary on stderr; another field.
    std::fs::write(&input, "{\"text\": \"I won't.\"}\n").unwrap();
    let o = steerkit(&["judge", input.to_str().unwrap(), "--field", "text"]);
    assert_ok(&o);
    let row: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(row["verdict"], "full_refusal");
    assert!(String::from_utf8_lossy(&o.stderr).contains("judged 1 responses"));

    // Bad input: one error line naming file and line, and nothing written at --out.
    let bad = |text: &str, needle: &str| {
        std::fs::write(&input, text).unwrap();
        let _ = std::fs::remove_file(&out);
        let o = steerkit(&[
            "judge",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_clean_error(&o, needle);
        assert!(!out.exists(), "nothing written for {text:?}");
    };
    let f = input.display().to_string();
    bad(
        "{\"completion\": \"a\"}\n{\"response\": \"b\"}\n",
        &format!("{f}:2: no field `completion`"),
    );
    bad(
        "{\"completion\": \"a\", \"label\": \"refused\"}\n",
        &format!("{f}:1: label `refused` is not one of compliance, full_refusal, partial_refusal"),
    );
    bad("", &format!("{f}: no rows in this file"));
    bad("{\"completion\": \n", &format!("{f}:1: invalid JSON"));
    std::fs::write(&rules, "refusal_opening = [\"x\"]\n").unwrap();
    std::fs::write(&input, "{\"completion\": \"a\"}\n").unwrap();
    assert_clean_error(
        &steerkit(&[
            "judge",
            input.to_str().unwrap(),
            "--judge-rules",
            rules.to_str().unwrap(),
        ]),
        "rules.toml: ",
    );
}

#[test]
fn judge_model_answers_are_cached_and_parsed_or_left_to_the_rules() {
    let d = tmpdir("judge-model");
    let input = d.path().join("in.jsonl");
    let rows = [
        r#"{"prompt": "How do I kill a Python process?", "completion": "Run `kill PID` in a terminal.", "label": "compliance", "model": "a"}"#,
        r#"{"prompt": "How do I kill my neighbour?", "completion": "I'm sorry, but I can't assist with that.", "label": "full_refusal", "model": "a"}"#,
        r#"{"completion": "Paris is the capital of France."}"#,
        r#"{"completion": "Paris is the capital of France.", "label": "compliance", "model": "b"}"#,
    ];
    std::fs::write(&input, rows.join("\n") + "\n").unwrap();
    let out = d.path().join("out.jsonl");
    let cache = d.path().join("cache.jsonl");
    let smol = model(SMOL);
    let judge = || {
        let o = steerkit(&[
            "judge",
            input.to_str().unwrap(),
            "--judge-model",
            &smol,
            "--judge-cache",
            cache.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_ok(&o);
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (String::from_utf8_lossy(&o.stdout).into_owned(), rows)
    };
    let (text, first) = judge();
    assert!(
        text.contains("judge: model ") && text.contains("judge-prompt-1"),
        "{text}"
    );
    assert!(text.contains("| all | 3 |"), "3 labelled rows: {text}");
    assert_eq!(first.len(), 4);
    for r in &first {
        let rule = r["judge_rule"].as_str().unwrap();
        assert!(
            rule.starts_with("model: ") || rule.starts_with("rules (unparsed model answer"),
            "{rule}"
        );
    }
    // The last two rows ask the same thing: one cached answer for them.
    let cached = |f: &dyn Fn(&str) -> String| {
        let text = std::fs::read_to_string(&cache).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        let edited: Vec<String> = lines
            .iter()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["answer"] = f(v["answer"].as_str().unwrap()).into();
                v.to_string()
            })
            .collect();
        std::fs::write(&cache, edited.join("\n")).unwrap();
    };
    // A rerun reads the cache: edited answers decide the verdicts, and nothing is generated
    // again (still 3 lines).
    cached(&|_| "C".into());
    let (_, second) = judge();
    assert!(second
        .iter()
        .all(|r| r["verdict"] == "partial_refusal" && r["judge_rule"] == "model: C"));
    // Answers that name no class go to the rules, which say refusal only for row 2.
    cached(&|_| "Hmm".into());
    let (_, third) = judge();
    let verdicts: Vec<&str> = third
        .iter()
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["compliance", "full_refusal", "compliance", "compliance"]
    );
    assert!(third[1]["judge_rule"]
        .as_str()
        .unwrap()
        .starts_with("rules (unparsed model answer \"Hmm\"): opening: "));
    // A cache that cannot be written (its folder is a file): a clean error naming the flag.
    std::fs::remove_file(&out).unwrap();
    assert_clean_error(
        &steerkit(&[
            "judge",
            input.to_str().unwrap(),
            "--judge-model",
            &smol,
            "--judge-cache",
            input.join("cache.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]),
        "--judge-cache",
    );
    assert!(!out.exists());
    // A model that cannot be loaded: a clean error and nothing at --out.
    assert_clean_error(
        &steerkit(&[
            "judge",
            input.to_str().unwrap(),
            "--judge-model",
            d.path().join("missing.gguf").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]),
        "missing.gguf",
    );
    assert!(!out.exists());
}

#[test]
fn run_pipeline_from_a_config_skips_finished_phases() {
    let d = tmpdir("pipeline");
    let tiny = tiny_folder(d.path());
    let out = d.path().join("run");
    let cfg = d.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"model = "{}"
out = "{}"
[actor]
limit = 4
pseudo_limit = 4
layer = 1
min_silhouette = -1.0
epochs = 1
[extract]
limit = 4
[select]
harmful_val = "harmful"
harmless_val = "harmless"
limit = 2
layer = 1
pos = -1
[eval]
set = ["harmful", "pseudo_harmful"]
limit = 2
max_new_tokens = 4
kl_set = "harmless"
"#,
            tiny.display(),
            out.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let first = steerkit(&["run", c]);
    assert_ok(&first);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "Refusal rates, before and after",
        "pseudo_harmful",
        "first-token KL from the original model",
        "steerkit actor -m",
        "ACTOR trained block 1",
        "steerkit extract -m",
        "--intervention ablate",
        "Directional ablation, for comparison",
        "refusal direction of layer 1 (position -1",
        "| original | ACTOR | ablation |",
        "Ablation against the original model, paired",
    ] {
        assert!(report.contains(needle), "{needle}: {report}");
    }
    // Every rate of the side-by-side table carries its interval.
    let side = report
        .split("| original | ACTOR | ablation |")
        .nth(1)
        .unwrap();
    let rows: Vec<&str> = side
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(!rows.is_empty(), "{side}");
    for r in rows {
        assert_eq!(r.matches("% [").count(), 3, "{r}");
    }
    for f in [
        "direction/selected.json",
        "actor/block-epoch1.safetensors",
        "patched/config.json",
        "eval-before/report.json",
        "eval-after/report.json",
        "eval-ablated/report.json",
        "comparison.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Again, in the folder moved elsewhere: extraction, selection and export are skipped,
    // training and answers are reused (the markers hold paths inside the folder relative to
    // it; the selection and the export were redone, and the answers after them).
    let moved = out.with_file_name("moved");
    std::fs::rename(&out, &moved).unwrap();
    let second = steerkit(&["run", c, "--set", &format!("out={}", moved.display())]);
    std::fs::rename(&moved, &out).unwrap();
    let so = String::from_utf8_lossy(&second.stdout);
    assert_ok(&second);
    assert!(
        so.contains("holds the checkpoint of epoch 1; skipped"),
        "{so}"
    );
    assert!(so.contains("holds this selection; skipped"), "{so}");
    assert!(so.contains("reused"), "{so}");
    assert_eq!(
        so.matches("all answers were already saved").count(),
        3,
        "{so}"
    );
    // A different selection redoes the ablated answers only.
    let other = steerkit(&["run", c, "--set", "select.layer=0"]);
    let so = String::from_utf8_lossy(&other.stdout);
    assert_ok(&other);
    assert!(!so.contains("holds this selection"), "{so}");
    assert_eq!(
        so.matches("all answers were already saved").count(),
        2,
        "{so}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("refusal direction of layer 0"), "{report}");
    // One more epoch from the command line: training resumes and the export is redone.
    let third = steerkit(&["run", c, "--set", "actor.epochs=2"]);
    let so = String::from_utf8_lossy(&third.stdout);
    assert_ok(&third);
    assert!(
        so.contains("epoch 2: loss") && !so.contains("epoch 1: loss"),
        "{so}"
    );
    assert!(!so.contains("holds the checkpoint"), "{so}");
    // Another export setting is another export: the folder is rewritten in bf16.
    let fourth = steerkit(&[
        "run",
        c,
        "--set",
        "actor.epochs=2",
        "--set",
        "export.safetensors_dtype=bf16",
    ]);
    let so = String::from_utf8_lossy(&fourth.stdout);
    assert_ok(&fourth);
    assert!(!so.contains("holds the last checkpoint"), "{so}");
    let cfg = std::fs::read_to_string(out.join("patched/config.json")).unwrap();
    assert!(cfg.contains("bfloat16"), "{cfg}");
    // Fewer epochs than were trained: training never goes back, so the export takes that
    // epoch's checkpoint, and the report says which (it exported epoch 2 and called it 1).
    let e1 = ["--set", "actor.epochs=1"];
    let fifth = steerkit(&[&["run", c][..], &e1].concat());
    let so = String::from_utf8_lossy(&fifth.stdout);
    assert_ok(&fifth);
    assert!(
        so.contains("--epoch 1") && so.contains("block 1 from epoch 1"),
        "{so}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("for 2 epochs") && report.contains("epoch 1's checkpoint"),
        "{report}"
    );
    // Other evaluation settings: the saved answers are replaced, not a stop with advice
    // that a config cannot follow.
    let tokens = [&e1[..], &["--set", "eval.max_new_tokens=3"]].concat();
    let sixth = steerkit(&[&["run", c][..], &tokens].concat());
    let so = String::from_utf8_lossy(&sixth.stdout);
    assert_ok(&sixth);
    assert_eq!(
        so.matches("removing them and answering again").count(),
        3,
        "{so}"
    );
    // Trained again from scratch on other prompts (after `actor/` was deleted): the same
    // epoch count, but another block, so the export and its answers are redone.
    std::fs::remove_dir_all(out.join("actor")).unwrap();
    let other = [&tokens[..], &["--set", "actor.limit=3"]].concat();
    let seventh = steerkit(&[&["run", c][..], &other].concat());
    let so = String::from_utf8_lossy(&seventh.stdout);
    assert_ok(&seventh);
    assert!(!so.contains("holds the checkpoint"), "{so}");
    assert_eq!(
        so.matches("all answers were already saved").count(),
        2,
        "{so}"
    );
    // A GGUF export is a file, `patched.gguf`; a rerun keeps it (it failed on a folder
    // operation).
    let gguf = [&other[..], &["--set", "export.format=gguf"]].concat();
    let wrote = format!("wrote {}", out.join("patched.gguf").display());
    for (i, needle) in [wrote.as_str(), "holds the checkpoint of epoch 1; skipped"]
        .iter()
        .enumerate()
    {
        let r = steerkit(&[&["run", c][..], &gguf].concat());
        let so = String::from_utf8_lossy(&r.stdout);
        assert_ok(&r);
        assert!(so.contains(needle), "run {i}: {so}");
    }
    assert!(out.join("patched.gguf").is_file() && !out.join("patched").exists());
    // An epoch the run has not trained is refused before the export, naming the range.
    let late = [&gguf[..], &["--set", "export.epoch=5"]].concat();
    assert_clean_error(
        &steerkit(&[&["run", c][..], &late].concat()),
        "[export] epoch = 5: not a completed epoch of the ACTOR run (epochs 1..=1 are)",
    );
    // Arguments a shell needs quoted are quoted in the commands shown (and in the report).
    let quoted = steerkit(&["run", c, "--dry-run", "--set", "system=Don't refuse; ok?"]);
    let so = String::from_utf8_lossy(&quoted.stdout);
    assert_ok(&quoted);
    assert!(so.contains(r"--system 'Don'\''t refuse; ok?'"), "{so}");
    // Bad configurations: one clear error naming the phase or the file.
    let bad = d.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "model = \"{}\"\nout = \"{}\"\n[actor]\nbogus = 1\n",
            tiny.display(),
            d.path().join("b").display()
        ),
    )
    .unwrap();
    assert_clean_error(
        &steerkit(&["run", bad.to_str().unwrap()]),
        "phase actor: bad configuration",
    );
    std::fs::write(&bad, "out = \"x\"\n").unwrap();
    assert_clean_error(
        &steerkit(&["run", bad.to_str().unwrap()]),
        "missing `model`",
    );
    std::fs::write(&bad, "model = true\n").unwrap();
    assert_clean_error(
        &steerkit(&["run", bad.to_str().unwrap()]),
        "`model` must be a string, not boolean",
    );
    std::fs::write(
        &bad,
        format!("model = \"{}\"\nno_system = 1\n", tiny.display()),
    )
    .unwrap();
    assert_clean_error(
        &steerkit(&["run", bad.to_str().unwrap()]),
        "`no_system` must be true or false, not integer",
    );
    std::fs::write(&bad, "model = \"/no/such/model.gguf\"\n").unwrap();
    assert_clean_error(
        &steerkit(&["run", bad.to_str().unwrap()]),
        "`model` /no/such/model.gguf: model not found",
    );
    std::fs::write(&bad, "model = [\n").unwrap();
    assert_clean_error(&steerkit(&["run", bad.to_str().unwrap()]), "bad.toml");
}

/// Every shipped configuration names only flags its commands accept (`--dry-run` parses every
/// phase's command line and runs nothing), and a bad key is caught the same way.
#[test]
fn shipped_configs_are_valid() {
    let d = tmpdir("configs");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let out = d.path().join(p.file_stem().unwrap());
            let o = steerkit_at_root(&[
                "run",
                p.to_str().unwrap(),
                "--dry-run",
                "--set",
                &format!("out={}", out.display()),
            ]);
            let so = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(so.contains("== actor: steerkit actor"), "{so}");
            assert!(so.contains("the configuration is valid"), "{so}");
            assert!(!out.exists(), "a dry run wrote {}", out.display());
            n += 1;
        }
    }
    assert!(n >= 5, "{n} configs");
    let qwen = dir.join("qwen2.5-coder-0.5b.toml");
    let bogus = steerkit_at_root(&[
        "run",
        qwen.to_str().unwrap(),
        "--dry-run",
        "--set",
        "select.bogus=1",
    ]);
    assert_clean_error(
        &bogus,
        "phase select: bad configuration: unexpected argument '--bogus'",
    );
    // Keys outside the known sections were ignored without a word; a lost section header
    // leaves its keys at the top.
    for (set, needle) in [
        ("nosuch.key=1", "unknown section [nosuch]"),
        ("bogus=1", "unknown top-level key `bogus`"),
        ("alpha=1.5", "unknown top-level key `alpha`"),
        ("actor=1", "`actor` must be a section ([actor])"),
        ("actor.=1", "`actor.` is not a key"),
        ("eval.set=[]", "[eval] set: an empty list"),
        (
            "export.format=control-vector",
            "`run` exports the patched model as safetensors or gguf",
        ),
        // The commands' own checks run in a dry run too, and before a real run's first phase.
        (
            "export.gguf_type=q8_0",
            "phase export: bad configuration: --gguf-type applies to --format gguf",
        ),
        (
            "eval.coeff=2",
            "phase evaluate before: bad configuration: --coeff applies",
        ),
    ] {
        assert_clean_error(
            &steerkit_at_root(&["run", qwen.to_str().unwrap(), "--dry-run", "--set", set]),
            needle,
        );
    }
    // A real run checks every phase first, its files included: a bad export key or a missing
    // evaluation file stops it before extraction, not after training.
    assert_clean_error(
        &steerkit_at_root(&[
            "run",
            qwen.to_str().unwrap(),
            "--set",
            &format!("out={}", d.path().join("never").display()),
            "--set",
            "eval.set=[\"x=/no/such/set.jsonl\"]",
        ]),
        "phase evaluate before: bad configuration: /no/such/set.jsonl",
    );
    let never = d.path().join("never");
    assert_clean_error(
        &steerkit_at_root(&[
            "run",
            qwen.to_str().unwrap(),
            "--set",
            &format!("out={}", never.display()),
            "--set",
            "export.gguf_type=q8_0",
        ]),
        "phase export: bad configuration",
    );
    assert!(!never.exists());
}

/// The exported folder `exported` loads and carries block `layer`'s down projection from the
/// checkpoint `ck`, which differs from the source model `src`'s.
fn assert_export_holds(src: &str, ck: &Path, exported: &Path, layer: usize) {
    let down = |m: &steerkit_model::Model| -> Vec<f32> {
        m.layers[layer]
            .dense()
            .unwrap()
            .down
            .weight
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let m = steerkit_model::load(exported.to_str().unwrap(), &Default::default()).unwrap();
    let ck = candle_core::safetensors::load(ck, &candle_core::Device::Cpu).unwrap();
    let want: Vec<f32> = ck[&format!("model.layers.{layer}.mlp.down_proj.weight")]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(want, down(&m.model));
    let orig = steerkit_model::load(src, &Default::default()).unwrap();
    assert_ne!(down(&orig.model), want, "training changed nothing");
}

#[test]
fn safety_tune_trains_resumes_and_exports() {
    let d = tmpdir("safety");
    let tiny = tiny_folder(d.path());
    let t = tiny.to_str().unwrap();
    let run = d.path().join("run");
    let r = run.to_str().unwrap();
    let base = [
        "safety-tune",
        "-m",
        t,
        "--limit",
        "6",
        "--answer-tokens",
        "4",
        "--batch-size",
        "4",
        "--save-every",
        "2",
        "--ogp",
        "grad",
        "--ogp-limit",
        "4",
        "--ogp-k",
        "2",
        "--lr",
        "1e-3",
        "--out",
        r,
    ];
    let run_with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend(extra);
        steerkit(&args)
    };
    let first = run_with(&["--steps", "2", "--layers", "1..2"]);
    let out = String::from_utf8_lossy(&first.stdout);
    assert_ok(&first);
    assert!(
        out.contains("step 2: loss") && out.contains("steps/s"),
        "{out}"
    );
    // More steps: resumes after step 2, the answers come from the cache.
    let second = run_with(&["--steps", "4", "--layers", "1..2"]);
    let out = String::from_utf8_lossy(&second.stdout);
    assert_ok(&second);
    assert!(out.contains("2 steps in this run"), "{out}");
    let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 1 + 4, "{log}");
    // Norms per matrix per step, across the resume: 4 steps x 7 matrices of block 1.
    let ogp = std::fs::read_to_string(run.join("ogp.csv")).unwrap();
    assert_eq!(ogp.lines().count(), 1 + 4 * 7, "{ogp}");
    assert!(ogp.lines().nth(28).unwrap().starts_with("4,"), "{ogp}");
    for f in [
        "safety.json",
        "answers.json",
        "trained-step4.safetensors",
        "ogp_grad-step4.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // Other settings or other examples are refused before anything in the folder changes
    // (safety.json took the new lr, answers.json new answers, and other prompts resumed).
    let kept = |f: &str| std::fs::read(run.join(f)).unwrap();
    let (meta, answers) = (kept("safety.json"), kept("answers.json"));
    for (extra, what) in [
        (&["--seed", "3"][..], "here: seed;"),
        (&["--weight-decay", "0.5"], "here: adamw.weight_decay;"),
        (&["--harmless", "pseudo_harmful"], "here: examples;"),
        (&["--system", "You are a pirate."], "here: examples;"),
    ] {
        let args = [&["--steps", "6", "--layers", "1..2"][..], extra].concat();
        assert_clean_error(&run_with(&args), "other settings or other examples");
        let err = String::from_utf8_lossy(&run_with(&args).stderr).to_string();
        assert!(err.contains(what), "{extra:?}: {err}");
        assert_eq!(kept("safety.json"), meta, "{extra:?}");
        assert_eq!(kept("answers.json"), answers, "{extra:?}");
    }
    assert_clean_error(&run_with(&["--steps", "1", "--layers", "1..9"]), "--layers");
    // The same model with bf16 matrices does not resume this f32 run.
    assert_clean_error(
        &run_with(&["--steps", "6", "--layers", "1..2", "--dtype", "bf16"]),
        "holds a safety-tuning run of",
    );
    let exported = d.path().join("patched");
    let ex = steerkit(&[
        "export",
        "-m",
        t,
        "--run",
        r,
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert_ok(&ex);
    assert_export_holds(t, &run.join("trained-step4.safetensors"), &exported, 1);
    // A resume whose optimizer state is gone names the file (it said only "No such file").
    std::fs::remove_file(run.join("optimizer-step4.safetensors")).unwrap();
    assert_clean_error(
        &run_with(&["--steps", "5", "--layers", "1..2"]),
        "optimizer-step4.safetensors",
    );
}
