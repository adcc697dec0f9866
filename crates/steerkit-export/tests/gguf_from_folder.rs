//! GGUF export of a Hugging Face folder: the metadata built from config.json and
//! tokenizer.json equals what llama.cpp's own GGUF files carry, the weights come back as the
//! folder holds them (f16-rounded, q/k rows in llama.cpp's order for llama), and the re-loaded
//! tokenizer gives llama.cpp's ids. Folders are written from the two real GGUF models, whose
//! files llama.cpp's converter made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::DType;
use steerkit_export::gguf::{metadata, write, GgufType};
use steerkit_model::gguf::Gguf;
use steerkit_model::{load, LoadOptions, SystemPrompt};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_path(name: &str) -> PathBuf {
    let p = root().join(format!("checkpoints/models/{name}.gguf"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

/// A GGUF file's key/values, as Debug text (the values have no equality of their own).
fn keys(p: &Path) -> BTreeMap<String, String> {
    let mut f = std::fs::File::open(p).unwrap();
    let c = Content::read(&mut f).unwrap();
    c.metadata
        .iter()
        .map(|(k, v)| (k.clone(), format!("{v:?}")))
        .collect()
}

/// A copy of the GGUF file `src` at `dst` with metadata key `key` set to `value`.
fn with_key(src: &Path, dst: &Path, key: &str, value: candle_core::quantized::gguf_file::Value) {
    rewrite(src, dst, |meta, _| {
        meta.insert(key.into(), value);
    });
}

/// Copies the GGUF file `src` to `dst` with its metadata and tensors edited by `edit`.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(
        &mut std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
        &mut Vec<(String, candle_core::quantized::QTensor)>,
    ),
) {
    use candle_core::quantized::{gguf_file, QTensor};
    let mut f = std::fs::File::open(src).unwrap();
    let c = Content::read(&mut f).unwrap();
    let mut tensors: Vec<(String, QTensor)> = c
        .tensor_infos
        .keys()
        .map(|n| {
            let t = c.tensor(&mut f, n, &candle_core::Device::Cpu).unwrap();
            (n.clone(), t)
        })
        .collect();
    let mut meta = c.metadata.clone();
    edit(&mut meta, &mut tensors);
    let kv: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut std::fs::File::create(dst).unwrap(), &kv, &ts).unwrap();
}

/// A tensor's values as an f16 GGUF holds them: matrices rounded to f16, vectors in f32.
fn f16_values(t: &candle_core::Tensor) -> Vec<f32> {
    let t = if t.rank() == 2 {
        t.to_dtype(DType::F16).unwrap()
    } else {
        t.clone()
    };
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// A tensor's values rounded to bf16, as a bf16 folder holds them.
fn bf16_values(t: &candle_core::Tensor) -> Vec<f32> {
    let t = t
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Every tensor of `back` equals `src`'s as `stored` (the file's rounding) gives them.
fn assert_same_weights(
    src: &steerkit_model::Model,
    back: &steerkit_model::Model,
    stored: fn(&candle_core::Tensor) -> Vec<f32>,
    name: &str,
) {
    let theirs: BTreeMap<String, candle_core::Tensor> = back.named_tensors().into_iter().collect();
    let ours = src.named_tensors();
    assert_eq!(ours.len(), theirs.len(), "{name}: tensor count");
    for (n, t) in ours {
        assert!(stored(&t) == stored(&theirs[&n]), "{name}: tensor {n}");
    }
}

/// The error of loading `p`, which must fail.
fn load_error(p: &Path) -> String {
    load(p.to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("the file should be refused")
        .to_string()
}

/// A committed fixture, parsed.
fn fixture(name: &str) -> serde_json::Value {
    let p = root().join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// `encode` gives each case's `ids` for its `text`.
fn assert_ids(cases: &serde_json::Value, encode: impl Fn(&str) -> Vec<u32>) {
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(encode(text), ids(&case["ids"]), "{text:?}");
    }
}

/// A fixture's list of ids.
fn ids(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn check(name: &str) {
    let path = model_path(name);
    let d = tempfile::tempdir().unwrap();
    let src = load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    // A bf16 folder, as Hugging Face publishes most models, removed once loaded: the disk holds
    // one of the two files at a time (Qwen's are 1.0 and 1.3 GB; CI machines may have little).
    let folder = d.path().join("folder");
    let (tok, chat) = (Some(&src.tok), Some(&src.chat));
    steerkit_model::hf::save_folder_as(&src.model, tok, chat, &folder, DType::BF16).unwrap();
    let hf = load(folder.to_str().unwrap(), &LoadOptions::default()).unwrap();
    std::fs::remove_dir_all(&folder).unwrap();
    assert_same_weights(&src.model, &hf.model, bf16_values, name);
    // Two models in memory at a time: the source's tokenizer is all that is needed of it now.
    let stop_ids = src.tok.stop_ids.clone();
    drop(src);
    let out = d.path().join("model.gguf");
    let meta = metadata(&hf.model.cfg, &hf.tok, &hf.chat, "folder").unwrap();
    write(&hf.model, &meta, GgufType::F16, &out).unwrap();

    // Every hyper-parameter and tokenizer key of llama.cpp's file is written with its value,
    // but for three llama.cpp writes from files a folder does not have here.
    let (want, got) = (keys(&path), keys(&out));
    let arch = Gguf::open(&path).unwrap().arch_name().unwrap().to_string();
    let skipped = ["padding_token_id", "unknown_token_id", "add_space_prefix"];
    let mut compared = 0;
    for (k, v) in &want {
        let ours = k.starts_with(&format!("{arch}.")) || k.starts_with("tokenizer.");
        if !ours || skipped.iter().any(|s| k.ends_with(s)) {
            continue;
        }
        assert_eq!(got.get(k), Some(v), "{name}: key {k}");
        compared += 1;
    }
    assert!(compared >= 14, "{name}: only {compared} keys compared");
    assert_eq!(got["general.architecture"], want["general.architecture"]);

    // The weights: what the folder holds, rounded to f16 (vectors kept in f32). bf16 values
    // within f16's range are f16 values too; the rounding itself is checked from an f32 folder
    // in `qwen3_exports_to_folder_and_gguf`.
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_same_weights(&hf.model, &back.model, f16_values, name);
    drop(hf);

    // Token ids of the re-loaded file equal llama.cpp's on the fixture texts and chat prompts.
    let fx = fixture("llamacpp_token_ids.json");
    let m = &fx["models"][name];
    assert_ids(&m["raw"], |t| back.tok.encode_text(t).unwrap());
    for case in m["chat"].as_array().unwrap() {
        let user = case["user"].as_str().unwrap();
        let system = match case["system"].as_str() {
            Some(s) => SystemPrompt::Custom(s.into()),
            None => SystemPrompt::Default,
        };
        let p = back.chat.prompt(&back.tok, user, &system).unwrap();
        assert_eq!(p.ids, ids(&case["ids"]), "{name}: chat ids of {user:?}");
    }
    assert_eq!(back.tok.stop_ids, stop_ids);
}

#[test]
fn smollm2_folder_exports_llama_cpp_metadata_and_weights() {
    check("smollm2-135m-instruct");
}

#[test]
fn qwen2_folder_exports_llama_cpp_metadata_and_weights() {
    check("qwen2.5-coder-0.5b-instruct");
}

/// A tokenizer that no GGUF pre-tokenizer reproduces, or with more tokens than the model has
/// rows, is an error that says so (and writes nothing).
#[test]
fn tokenizers_gguf_cannot_hold_are_errors() {
    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let cfg = g.config().unwrap();
    let err = tok.gguf_vocab(1000).unwrap_err().to_string();
    assert!(err.contains("only 1000 embedding rows"), "{err}");

    let mut other = tok.inner().clone();
    other.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    let other = steerkit_model::Tok::new(other, tok.bos_id, &[tok.eos_id.unwrap()], false);
    let err = metadata(&cfg, &other, &chat, "x").unwrap_err().to_string();
    assert!(err.contains("no GGUF pre-tokenizer"), "{err}");
}

/// A SentencePiece vocabulary (the test fixture, llama.cpp's `llama` tokenizer, trained by
/// `scripts/reference_spm_ids.py`) in a folder, where tokenizer.json holds it as BPE with
/// byte fallback, is written back to GGUF as llama.cpp's SentencePiece data: the same tokens,
/// token kinds and special ids, a space prefix, and llama.cpp's ids when loaded again.
#[test]
fn sentencepiece_folder_exports_llama_cpp_vocabulary() {
    use steerkit_model::random::{random_model, tiny_config};
    let vocab = root().join("tests/fixtures/spm_vocab.gguf");
    let g = Gguf::open(&vocab).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let cfg = tiny_config(steerkit_model::Arch::Llama, tok.vocab_size());
    let m = random_model(cfg, DType::F32, 5).unwrap();
    let d = tempfile::tempdir().unwrap();
    let folder = d.path().join("folder");
    steerkit_model::hf::save_folder(&m, Some(&tok), Some(&chat), &folder).unwrap();
    let hf = load(folder.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let out = d.path().join("spm.gguf");
    let meta = metadata(&hf.model.cfg, &hf.tok, &hf.chat, "spm").unwrap();
    write(&hf.model, &meta, GgufType::F16, &out).unwrap();
    let (want, got) = (keys(&vocab), keys(&out));
    for k in [
        "model",
        "tokens",
        "token_type",
        "bos_token_id",
        "eos_token_id",
        "unknown_token_id",
    ] {
        let k = format!("tokenizer.ggml.{k}");
        assert_eq!(got.get(&k), want.get(&k), "{k}");
    }
    assert_eq!(got["tokenizer.ggml.add_space_prefix"], "Bool(true)");
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let fx = fixture("spm_ids.json");
    assert_ids(&fx["raw"], |t| back.tok.encode_text(t).unwrap());
    assert_ids(&fx["special"], |t| back.tok.encode_chat(t).unwrap());
}

/// A byte-level BPE tokenizer that splits text as GPT-4o's does (Phi-4-mini's; the fixture
/// is trained by `scripts/reference_gpt4o_ids.py`) in a folder is written to GGUF with
/// llama.cpp's `gpt-4o` pre-tokenizer, found by behaviour, and the file's tokenizer gives
/// llama.cpp's ids, as the folder's own does. With GPT-2's split instead it is written as
/// llama.cpp's `gpt-2`.
#[test]
fn gpt4o_folder_exports_llama_cpp_vocabulary() {
    use steerkit_model::random::{random_model, tiny_config};
    let tk = tokenizers::Tokenizer::from_file(root().join("tests/fixtures/gpt4o_tokenizer.json"))
        .unwrap();
    let end = tk.token_to_id("<|endoftext|>").unwrap();
    let tok = steerkit_model::Tok::new(tk, None, &[end], false);
    let chat = steerkit_model::ChatTemplate::chatml();
    let cfg = tiny_config(steerkit_model::Arch::Llama, tok.vocab_size());
    let m = random_model(cfg, DType::F32, 6).unwrap();
    let d = tempfile::tempdir().unwrap();
    let folder = d.path().join("folder");
    steerkit_model::hf::save_folder(&m, Some(&tok), Some(&chat), &folder).unwrap();
    let hf = load(folder.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let out = d.path().join("gpt4o.gguf");
    let meta = metadata(&hf.model.cfg, &hf.tok, &hf.chat, "gpt4o").unwrap();
    write(&hf.model, &meta, GgufType::F16, &out).unwrap();
    assert_eq!(keys(&out)["tokenizer.ggml.pre"], "String(\"gpt-4o\")");
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let fx = fixture("gpt4o_ids.json");
    for t in [&hf.tok, &back.tok] {
        assert_ids(&fx["raw"], |s| t.encode_text(s).unwrap());
        assert_ids(&fx["special"], |s| t.encode_chat(s).unwrap());
    }

    // The same vocabulary with GPT-2's split is written under llama.cpp's name for it,
    // `gpt-2` (llama.cpp refuses `gpt2`), and reads back with the folder's ids.
    let mut gpt2 = tok.inner().clone();
    let split = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, false, true);
    gpt2.with_pre_tokenizer(Some(split));
    let gpt2 = steerkit_model::Tok::new(gpt2, None, &[end], false);
    let meta = metadata(&hf.model.cfg, &gpt2, &chat, "gpt2").unwrap();
    let out = d.path().join("gpt2.gguf");
    write(&hf.model, &meta, GgufType::F16, &out).unwrap();
    assert_eq!(keys(&out)["tokenizer.ggml.pre"], "String(\"gpt-2\")");
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    for case in fx["raw"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = gpt2.encode_text(text).unwrap();
        assert_eq!(back.tok.encode_text(text).unwrap(), want, "{text:?}");
    }
}

/// RoPE scaling goes to GGUF as llama.cpp reads it: Llama 3's as `rope_freqs.weight` (one
/// divisor per frequency), which comes back as the same divisors and from them back to the
/// llama3 rule in a folder's config.json; linear scaling as `rope.scaling.type` and
/// `.factor`. A GGUF asking for another scaling is refused when loaded, not run with plain
/// RoPE.
#[test]
fn gguf_rope_scaling() {
    use candle_core::quantized::gguf_file::Value;
    use steerkit_model::random::{random_model, tiny_config, tiny_rope_scaling};
    use steerkit_model::RopeScaling;
    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let mut cfg = tiny_config(steerkit_model::Arch::Llama, tok.vocab_size());
    let rule = tiny_rope_scaling();
    cfg.rope_scaling = Some(rule.clone());
    let m = random_model(cfg.clone(), DType::F32, 3).unwrap();
    let d = tempfile::tempdir().unwrap();
    let meta = metadata(&m.cfg, &tok, &chat, "tiny").unwrap();
    let scaled = d.path().join("scaled.gguf");
    write(&m, &meta, GgufType::F16, &scaled).unwrap();
    let back = load(scaled.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let divisors = cfg.rope_divisors().unwrap();
    assert_eq!(
        back.model.cfg.rope_scaling,
        Some(RopeScaling::Divisors(divisors))
    );
    assert_eq!(back.model.cfg.rope_frequencies(), cfg.rope_frequencies());
    let folder = d.path().join("folder");
    steerkit_model::hf::save_folder(&back.model, None, None, &folder).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(json["rope_scaling"], rule.to_hf_json(&cfg));
    assert_eq!(json["rope_scaling"]["rope_type"], "llama3");

    // Linear scaling: the type and factor in the metadata (any architecture reads them), no
    // divisors; back as the same rule, in GGUF and in config.json.
    let mut m_lin = m.clone();
    m_lin.cfg.rope_scaling = Some(RopeScaling::Linear { factor: 4.0 });
    let lin = m_lin.cfg.clone();
    // The source's own scaling keys are replaced, not carried over beside the model's.
    let mut meta_lin = meta.clone();
    meta_lin.push(("llama.rope.scaling.factor".into(), Value::F32(8.0)));
    let linear = d.path().join("linear.gguf");
    write(&m_lin, &meta_lin, GgufType::F16, &linear).unwrap();
    let kv = keys(&linear);
    assert_eq!(kv["llama.rope.scaling.type"], "String(\"linear\")");
    assert_eq!(kv["llama.rope.scaling.factor"], "F32(4.0)");
    let c = Content::read(&mut std::fs::File::open(&linear).unwrap()).unwrap();
    assert!(
        !c.tensor_infos.contains_key("rope_freqs.weight"),
        "no divisors beside the factor"
    );
    let back = load(linear.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(back.model.cfg.rope_scaling, lin.rope_scaling);
    let base: Vec<f32> = (0..lin.head_dim / 2)
        .map(|i| 1.0 / (lin.rope_theta as f32).powf(2.0 * i as f32 / lin.head_dim as f32))
        .collect();
    let want: Vec<f32> = base.iter().map(|f| f / 4.0).collect();
    assert_eq!(back.model.cfg.rope_frequencies(), want);
    let folder = d.path().join("linear-folder");
    steerkit_model::hf::save_folder(&back.model, None, None, &folder).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["rope_scaling"],
        serde_json::json!({"rope_type": "linear", "factor": 4.0})
    );

    // Kinds steerkit does not compute are refused when loaded (the writer owns the scaling
    // keys, so the file is edited after writing).
    let dynamic = d.path().join("dynamic.gguf");
    with_key(
        &linear,
        &dynamic,
        "llama.rope.scaling.type",
        Value::String("dynamic".into()),
    );
    let err = load_error(&dynamic);
    assert!(err.contains("RoPE scaling `dynamic`"), "{err}");

    // YaRN: type, factor and original context in the metadata (betas only when not 32 and 1),
    // no divisors; back as the same rule with llama.cpp's attention factor, and the same
    // logits as the model written.
    let mut m_yarn = m.clone();
    let yarn_rule = |beta_fast: f64, beta_slow: f64| RopeScaling::Yarn {
        factor: 4.0,
        original_max_position_embeddings: 128.0,
        beta_fast,
        beta_slow,
        attention_factor: steerkit_model::config::yarn_attention_factor(4.0, None, None),
        truncate: true,
    };
    let rule = yarn_rule(32.0, 1.0);
    m_yarn.cfg.rope_scaling = Some(rule.clone());
    let yarn = d.path().join("yarn.gguf");
    write(&m_yarn, &meta_lin, GgufType::F16, &yarn).unwrap();
    let kv = keys(&yarn);
    assert_eq!(kv["llama.rope.scaling.type"], "String(\"yarn\")");
    assert_eq!(kv["llama.rope.scaling.factor"], "F32(4.0)");
    assert_eq!(kv["llama.rope.scaling.original_context_length"], "U32(128)");
    assert!(!kv.contains_key("llama.rope.scaling.yarn_beta_fast"));
    let back = load(yarn.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(back.model.cfg.rope_scaling, Some(rule));
    let ids = candle_core::Tensor::new(&[[5u32, 300, 7000, 12, 44, 9]], &candle_core::Device::Cpu)
        .unwrap();
    let last = |m: &steerkit_model::Model| {
        m.last_logits(&ids, &[0], &mut steerkit_model::NoHook)
            .unwrap()
    };
    // The same f16 weights from the linear file, given the rule in memory.
    let mut same = load(linear.to_str().unwrap(), &LoadOptions::default())
        .unwrap()
        .model;
    same.cfg.rope_scaling = back.model.cfg.rope_scaling.clone();
    let gap = steerkit_model::random::max_abs_diff(&last(&back.model), &last(&same)).unwrap();
    assert_eq!(gap, 0.0, "yarn GGUF against the rule in memory");
    same.cfg.rope_scaling = None;
    let moved = steerkit_model::random::max_abs_diff(&last(&back.model), &last(&same)).unwrap();
    assert!(moved > 1e-2, "YaRN changes the logits: {moved}");
    // A file with an attention factor of its own is refused; a model whose YaRN llama.cpp
    // would compute otherwise is not written.
    let own = d.path().join("own.gguf");
    with_key(
        &yarn,
        &own,
        "llama.rope.scaling.yarn_attn_factor",
        Value::F32(1.0),
    );
    let err = load_error(&own);
    assert!(err.contains("rope.scaling.yarn_attn_factor"), "{err}");
    let attn = d.path().join("attn.gguf");
    with_key(
        &linear,
        &attn,
        "llama.rope.scaling.attn_factor",
        Value::F32(1.2),
    );
    let err = load_error(&attn);
    assert!(err.contains("rope.scaling.attn_factor"), "{err}");
    // Betas other than 32 and 1 are written, and read back.
    let mut betas = m_yarn.clone();
    let rule = yarn_rule(16.0, 2.0);
    betas.cfg.rope_scaling = Some(rule.clone());
    let with_betas = d.path().join("betas.gguf");
    write(&betas, &meta_lin, GgufType::F16, &with_betas).unwrap();
    let kv = keys(&with_betas);
    assert_eq!(kv["llama.rope.scaling.yarn_beta_fast"], "F32(16.0)");
    assert_eq!(kv["llama.rope.scaling.yarn_beta_slow"], "F32(2.0)");
    let back = load(with_betas.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(back.model.cfg.rope_scaling, Some(rule));
    let mut odd = m_yarn.clone();
    if let Some(RopeScaling::Yarn {
        attention_factor, ..
    }) = odd.cfg.rope_scaling.as_mut()
    {
        *attention_factor = 1.0;
    }
    let no = d.path().join("no.gguf");
    let err = write(&odd, &meta_lin, GgufType::F16, &no)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no GGUF form"), "{err}");
    assert!(!no.exists());
}

/// A Qwen3 model (here a tiny random one with Qwen's real tokenizer) goes through a folder
/// and an f16 GGUF as llama.cpp's converter writes Qwen3: architecture `qwen3`, `head_dim` as
/// `key_length`, the per-head norms as `attn_q_norm`/`attn_k_norm` vectors, and q/k rows in
/// Hugging Face order (llama.cpp rotates qwen3 heads in halves, as qwen2). Both load back as
/// the same model.
#[test]
fn qwen3_exports_to_folder_and_gguf() {
    use steerkit_model::random::{random_model, tiny_config};
    use steerkit_model::Arch;
    let g = Gguf::open(&model_path("qwen2.5-coder-0.5b-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let m = random_model(tiny_config(Arch::Qwen3, tok.vocab_size()), DType::F32, 11).unwrap();
    let d = tempfile::tempdir().unwrap();
    let folder = d.path().join("folder");
    steerkit_model::hf::save_folder(&m, Some(&tok), Some(&chat), &folder).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(json["model_type"], "qwen3");
    assert_eq!(json["architectures"][0], "Qwen3ForCausalLM");
    assert_eq!(
        (json["head_dim"].as_u64(), json["attention_bias"].as_bool()),
        (Some(16), Some(false))
    );
    let hf = load(folder.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(hf.model.cfg.arch, Arch::Qwen3);
    let want: BTreeMap<String, candle_core::Tensor> = m.named_tensors().into_iter().collect();
    for (n, t) in hf.model.named_tensors() {
        assert!(
            steerkit_model::random::max_abs_diff(&t, &want[&n]).unwrap() == 0.0,
            "folder: {n}"
        );
    }

    let out = d.path().join("qwen3.gguf");
    let meta = metadata(&hf.model.cfg, &hf.tok, &hf.chat, "qwen3").unwrap();
    write(&hf.model, &meta, GgufType::F16, &out).unwrap();
    let kv = keys(&out);
    assert_eq!(kv["general.architecture"], "String(\"qwen3\")");
    assert_eq!(kv["qwen3.attention.key_length"], "U32(16)");
    assert_eq!(kv["qwen3.embedding_length"], "U32(32)");
    assert_eq!(kv["tokenizer.ggml.pre"], "String(\"qwen2\")");
    let mut f = std::fs::File::open(&out).unwrap();
    let c = Content::read(&mut f).unwrap();
    let mut raw = |n: &str| {
        c.tensor(&mut f, n, &candle_core::Device::Cpu)
            .unwrap()
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
    };
    for (gguf, hf_name) in [
        (
            "blk.1.attn_q_norm.weight",
            "model.layers.1.self_attn.q_norm.weight",
        ),
        (
            "blk.1.attn_k_norm.weight",
            "model.layers.1.self_attn.k_norm.weight",
        ),
        (
            "blk.1.attn_q.weight",
            "model.layers.1.self_attn.q_proj.weight",
        ),
        (
            "blk.1.attn_k.weight",
            "model.layers.1.self_attn.k_proj.weight",
        ),
    ] {
        assert_eq!(
            f16_values(&raw(gguf)),
            f16_values(&want[hf_name]),
            "{gguf} in Hugging Face order"
        );
    }
    assert_eq!(
        c.tensor_infos["blk.0.attn_q_norm.weight"].ggml_dtype,
        candle_core::quantized::GgmlDType::F32
    );
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(
        (back.model.cfg.arch, back.model.cfg.head_dim),
        (Arch::Qwen3, 16)
    );
    assert_same_weights(&m, &back.model, f16_values, "qwen3");
}

/// Gemma 3 and Gemma 2 models of the shape llama.cpp computes (a window on every block but
/// each sixth, or every other block; base 10,000 on gemma3's window blocks; attention scaled by
/// `head_dim`) go to GGUF as llama.cpp's converter writes them: architecture `gemma3` or
/// `gemma2`, `attention.sliding_window`, gemma2's soft-caps, the norms stored as `1 + w` under
/// llama.cpp's names (`post_attention_norm`, `ffn_norm` for the MLP's input norm,
/// `post_ffw_norm`), and load back as the same models. One llama.cpp would compute otherwise
/// (the tiny config's attention scale) is an error naming the difference.
#[test]
fn gemma_exports_to_gguf_when_llamacpp_computes_it() {
    use steerkit_model::random::{max_abs_diff, random_model, tiny_config};
    use steerkit_model::Arch;
    let g = Gguf::open(&model_path("qwen2.5-coder-0.5b-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let cfg = tiny_config(Arch::Gemma3, tok.vocab_size());
    let err = metadata(&cfg, &tok, &chat, "odd").unwrap_err().to_string();
    assert!(
        err.contains("query_pre_attn_scalar Some(8.0), not 16"),
        "{err}"
    );
    let d = tempfile::tempdir().unwrap();
    for (arch, layers, full, local) in [
        (Arch::Gemma3, 6, vec![5], Some(10_000.0)),
        (Arch::Gemma2, 4, vec![1, 3], None),
    ] {
        let mut cfg = tiny_config(arch, tok.vocab_size());
        cfg.num_layers = layers;
        cfg.full_attention_layers = full.clone();
        cfg.rope_local_theta = local;
        cfg.query_pre_attn_scalar = Some(16.0);
        let m = random_model(cfg, DType::F32, 11).unwrap();
        let name = steerkit_export::gguf::gguf_arch(arch);
        let out = d.path().join(format!("{name}.gguf"));
        let meta = metadata(&m.cfg, &tok, &chat, name).unwrap();
        write(&m, &meta, GgufType::F16, &out).unwrap();
        let kv = keys(&out);
        assert_eq!(kv["general.architecture"], format!("String(\"{name}\")"));
        assert_eq!(kv[&format!("{name}.attention.sliding_window")], "U32(3)");
        if arch == Arch::Gemma2 {
            assert_eq!(kv["gemma2.attn_logit_softcapping"], "F32(2.0)");
            assert_eq!(kv["gemma2.final_logit_softcapping"], "F32(3.0)");
        }
        let mut f = std::fs::File::open(&out).unwrap();
        let c = Content::read(&mut f).unwrap();
        let want: BTreeMap<String, candle_core::Tensor> = m.named_tensors().into_iter().collect();
        for (gguf, hf) in [
            ("blk.2.attn_norm.weight", "input_layernorm"),
            (
                "blk.2.post_attention_norm.weight",
                "post_attention_layernorm",
            ),
            ("blk.2.ffn_norm.weight", "pre_feedforward_layernorm"),
            ("blk.2.post_ffw_norm.weight", "post_feedforward_layernorm"),
            ("output_norm.weight", ""),
        ] {
            let hf = match hf {
                "" => "model.norm.weight".to_string(),
                n => format!("model.layers.2.{n}.weight"),
            };
            let raw = c
                .tensor(&mut f, gguf, &candle_core::Device::Cpu)
                .unwrap()
                .dequantize(&candle_core::Device::Cpu)
                .unwrap();
            let shifted = (&want[&hf] + 1.0).unwrap();
            assert!(
                max_abs_diff(&raw, &shifted).unwrap() < 1e-6,
                "{gguf} = 1 + {hf}"
            );
        }
        let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let b = &back.model.cfg;
        assert_eq!(
            (
                b.arch,
                b.sliding_window,
                &b.full_attention_layers,
                b.rope_local_theta
            ),
            (arch, Some(3), &full, local)
        );
        assert_eq!(
            (b.query_pre_attn_scalar, b.hidden_act),
            (Some(16.0), steerkit_model::Activation::GeluTanh)
        );
        assert_eq!(
            (b.attn_logit_softcapping, b.final_logit_softcapping),
            (m.cfg.attn_logit_softcapping, m.cfg.final_logit_softcapping)
        );
        let cpu = &candle_core::Device::Cpu;
        for (n, t) in back.model.named_tensors() {
            let a = candle_core::Tensor::new(f16_values(&t), cpu).unwrap();
            let b = candle_core::Tensor::new(f16_values(&want[&n]), cpu).unwrap();
            let gap = max_abs_diff(&a, &b).unwrap();
            assert!(gap < 1e-6, "{name} {n}: {gap}");
        }
    }
}

/// A Phi-3 model that, as Phi-4-mini, turns 6 of each head's 8 dimensions and scales RoPE with
/// LongRoPE exports to GGUF as llama.cpp's phi3 (fused `attn_qkv` and `ffn_up`, the untied
/// head, `rope.dimension_count` 6, the two factor tensors, the original context and the
/// attention factor) and loads back as the same model. A file with only one of the factor
/// tensors, or with an attention factor and no LongRoPE, is refused at loading rather than run
/// with other RoPE; a llama model with partial rotation has no GGUF form (its q/k rows are
/// stored for interleaved RoPE over whole heads).
#[test]
fn phi3_gguf_round_trip_and_refusals() {
    use steerkit_model::random::{max_abs_diff, random_model, tiny_config};
    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let mut cfg = tiny_config(steerkit_model::Arch::Phi3, tok.vocab_size());
    cfg.tie_word_embeddings = false;
    let m = random_model(cfg, DType::F32, 12).unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("phi3.gguf");
    let meta = metadata(&m.cfg, &tok, &chat, "phi3").unwrap();
    write(&m, &meta, GgufType::F16, &out).unwrap();
    assert_eq!(keys(&out)["general.architecture"], "String(\"phi3\")");
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(back.model.cfg.arch, steerkit_model::Arch::Phi3);
    let want: BTreeMap<String, candle_core::Tensor> = m.named_tensors().into_iter().collect();
    let cpu = &candle_core::Device::Cpu;
    for (n, t) in back.model.named_tensors() {
        let a = candle_core::Tensor::new(f16_values(&t), cpu).unwrap();
        let b = candle_core::Tensor::new(f16_values(&want[&n]), cpu).unwrap();
        assert!(max_abs_diff(&a, &b).unwrap() < 1e-6, "{n}");
    }
    let k = keys(&out);
    assert_eq!(k["phi3.rope.dimension_count"], "U32(6)");
    assert_eq!(k["phi3.rope.scaling.original_context_length"], "U32(64)");
    assert_eq!(k["phi3.rope.scaling.attn_factor"], "F32(1.25)");
    assert_eq!(back.model.cfg.rotary_dim, Some(6));
    assert_eq!(back.model.cfg.rope_scaling, m.cfg.rope_scaling);
    // A short row and one past the original context of 64 (long factors).
    let rows = [
        vec![3u32, 1, 4, 1, 5],
        (0..70u32).map(|i| 7 * i + 2).collect(),
    ];
    close_but_for(&m, &back.model, &rows, 0.05, "RoPE's scaling", |c| {
        c.rope_scaling = None
    });

    let one = d.path().join("one.gguf");
    rewrite(&out, &one, |_, tensors| {
        tensors.retain(|(n, _)| n != "rope_factors_short.weight");
    });
    let err = load_error(&one);
    assert!(
        err.contains("only one of `rope_factors_long.weight`"),
        "{err}"
    );
    let attn = d.path().join("attn.gguf");
    rewrite(&out, &attn, |_, tensors| {
        tensors.retain(|(n, _)| !n.starts_with("rope_factors"));
    });
    let err = load_error(&attn);
    assert!(
        err.contains("`phi3.rope.scaling.attn_factor` without LongRoPE factors"),
        "{err}"
    );
    let mut llama = tiny_config(steerkit_model::Arch::Llama, tok.vocab_size());
    llama.rotary_dim = Some(6);
    let err = metadata(&llama, &tok, &chat, "llama")
        .unwrap_err()
        .to_string();
    assert!(err.contains("turns 6 of each head's 8 dimensions"), "{err}");
}

/// A Granite model exports to GGUF as llama.cpp's `granite` (q/k rows permuted as for llama,
/// the four scalars under llama.cpp's keys) and loads back with the same scalars (to f32)
/// and within f16 rounding of its logits (`scripts/check_llama_variants_llamacpp.py` runs such a
/// file in llama.cpp).
#[test]
fn granite_gguf_round_trip() {
    let (m, d, out) = tiny_gguf(steerkit_model::Arch::Granite, 5, |_| {});
    let k = keys(&out);
    assert_eq!(k["general.architecture"], "String(\"granite\")");
    assert_eq!(k["granite.logit_scale"], "F32(4.0)");
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let (a, b) = (
        m.cfg.multipliers.unwrap(),
        back.model.cfg.multipliers.unwrap(),
    );
    for (x, y) in [
        (a.embedding, b.embedding),
        (a.residual, b.residual),
        (a.attention, b.attention),
        (a.logits_scaling, b.logits_scaling),
    ] {
        assert_eq!(x as f32, y as f32);
    }
    let rows = [vec![3u32, 1, 4, 1, 5], vec![9u32, 2, 6]];
    close_but_for(&m, &back.model, &rows, 0.02, "the scalars", |c| {
        c.multipliers = None
    });
    // Without `attention.scale` (or with 0), llama.cpp scales by head_dim^-1/2; without
    // the others, by 1.
    let bare = d.path().join("bare.gguf");
    rewrite(&out, &bare, |meta, _| {
        meta.remove("granite.attention.scale");
        meta.insert(
            "granite.residual_scale".into(),
            candle_core::quantized::gguf_file::Value::F32(0.0),
        );
    });
    let g = load(bare.to_str().unwrap(), &LoadOptions::default())
        .unwrap()
        .model
        .cfg
        .multipliers
        .unwrap();
    assert_eq!((g.attention, g.residual), (1.0 / 8f64.sqrt(), 1.0));
}

/// A Granite 4 attention-only model exports to GGUF as llama.cpp's `granite` with the MLP
/// unfused; with RoPE it loads back as Granite, without it (`rope.scaling.finetuned` false,
/// which llama.cpp's granite obeys) as granitemoehybrid without RoPE, each within f16
/// rounding of its logits (`scripts/check_llama_variants_llamacpp.py` runs the second in
/// llama.cpp). Key/value heads given per block, as llama.cpp's converter writes them for
/// these models, read the same; a 0 among them (a Mamba block) is refused. A model that
/// turns some blocks and not others is refused.
#[test]
fn granite4_gguf_round_trip() {
    use candle_core::quantized::gguf_file::Value;
    use steerkit_model::Arch;
    for nope in [false, true] {
        let (m, _d, out) = tiny_gguf(Arch::GraniteHybrid, 5, |c| {
            if nope {
                c.nope_layers = (0..c.num_layers).collect();
            }
        });
        let k = keys(&out);
        assert_eq!(k["general.architecture"], "String(\"granite\")");
        assert_eq!(
            k.get("granite.rope.scaling.finetuned").map(String::as_str),
            nope.then_some("Bool(false)")
        );
        assert!(tensor_infos(&out).contains_key("blk.1.ffn_gate.weight"));
        let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let want = if nope {
            Arch::GraniteHybrid
        } else {
            Arch::Granite
        };
        assert_eq!(back.model.cfg.arch, want);
        assert_eq!(back.model.cfg.nope_layers, m.cfg.nope_layers);
        let gap = last_logits_gap(&m, &back.model);
        assert!(
            gap < 0.02,
            "nope {nope}: f16 GGUF against the f32 model: {gap}"
        );
        let per_block = |counts: [u32; 2]| {
            let p = out.with_extension("kv.gguf");
            let values = counts.iter().map(|c| Value::U32(*c)).collect();
            with_key(
                &out,
                &p,
                "granite.attention.head_count_kv",
                Value::Array(values),
            );
            Gguf::open(&p).unwrap().config()
        };
        assert_eq!(per_block([2, 2]).unwrap().num_kv_heads, 2);
        let err = per_block([2, 0]).unwrap_err().to_string();
        assert!(err.contains("Mamba"), "{err}");
    }
    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let mut c = steerkit_model::random::tiny_config(Arch::Granite, tok.vocab_size());
    c.nope_layers = vec![1];
    let err = metadata(&c, &tok, &g.chat_template(&tok).unwrap(), "x").unwrap_err();
    assert!(err.to_string().contains("no GGUF form"), "{err}");
}

/// An OLMo 2 model exports to GGUF as llama.cpp's `olmo2` (output norms as
/// `post_attention_norm` and `post_ffw_norm`, no input norms, q/k norms over the whole
/// projections, q/k rows as they are, a tied head written as `output.weight`, which
/// llama.cpp's olmo2 needs) and loads back as OLMo 2 within f16 rounding of its logits
/// (`scripts/check_olmo2_llamacpp.py` runs such a file in llama.cpp). Heads that do not span
/// the hidden size, which llama.cpp's olmo2 cannot read, are refused. The same file with a
/// window (as llama.cpp's converter writes OLMo 3) reads as OLMo 3: without a pattern on
/// three blocks of four, with a numeric one on the blocks llama.cpp puts it on; with a window
/// RoPE base of its own, which llama.cpp does not use, it is refused.
#[test]
fn olmo2_gguf_round_trip() {
    // 4 heads of 8 span the hidden size 32, as llama.cpp's olmo2 needs.
    let (m, d, out) = tiny_gguf(steerkit_model::Arch::Olmo2, 5, |c| c.head_dim = 8);
    assert!(m.cfg.tie_word_embeddings);
    assert_eq!(keys(&out)["general.architecture"], "String(\"olmo2\")");
    let infos = tensor_infos(&out);
    for (name, len) in [
        ("blk.1.post_attention_norm.weight", 32),
        ("blk.1.post_ffw_norm.weight", 32),
        ("blk.1.attn_q_norm.weight", 4 * 8),
        ("blk.1.attn_k_norm.weight", 2 * 8),
    ] {
        assert_eq!(infos[name].shape.dims(), [len], "{name}");
    }
    assert!(!infos.contains_key("blk.1.attn_norm.weight"));
    assert!(!infos.contains_key("blk.1.ffn_norm.weight"));
    assert!(infos.contains_key("output.weight"));
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(back.model.cfg.arch, steerkit_model::Arch::Olmo2);
    let gap = last_logits_gap(&m, &back.model);
    assert!(gap < 0.02, "f16 GGUF against the f32 model: {gap}");

    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let mut wide = m.cfg.clone();
    wide.head_dim = 16;
    let err = metadata(&wide, &tok, &g.chat_template(&tok).unwrap(), "x").unwrap_err();
    assert!(err.to_string().contains("no GGUF form"), "{err}");
    use candle_core::quantized::gguf_file::Value;
    let windowed = |extra: Vec<(&str, Value)>| {
        let path = d.path().join("windowed.gguf");
        rewrite(&out, &path, |meta, _| {
            meta.insert("olmo2.attention.sliding_window".into(), Value::U32(4));
            for (k, v) in extra {
                meta.insert(k.into(), v);
            }
        });
        Gguf::open(&path).unwrap().config()
    };
    let c = windowed(vec![]).unwrap();
    assert_eq!(c.arch, steerkit_model::Arch::Olmo3);
    assert_eq!(
        (c.sliding_window, c.full_attention_layers),
        (Some(4), vec![])
    );
    let pattern = "olmo2.attention.sliding_window_pattern";
    let c = windowed(vec![(pattern, Value::U32(2))]).unwrap();
    assert_eq!(c.full_attention_layers, vec![1]);
    let c = windowed(vec![(pattern, Value::U32(0))]).unwrap();
    assert!(c.full_attention_layers.is_empty());
    let swa = ("olmo2.rope.freq_base_swa", Value::F32(10.0));
    let err = windowed(vec![swa]).unwrap_err().to_string();
    assert!(err.contains("freq_base_swa"), "{err}");
    // Flags as 32-bit integers, blocks past a short list without the window, entries past
    // the blocks unread, as llama.cpp reads them; flags of another type are an error.
    let flags = Value::Array(vec![Value::U32(1), Value::U32(0)]);
    assert_eq!(
        windowed(vec![(pattern, flags)])
            .unwrap()
            .full_attention_layers,
        vec![1]
    );
    let flags = Value::Array(vec![Value::Bool(true)]);
    assert_eq!(
        windowed(vec![(pattern, flags)])
            .unwrap()
            .full_attention_layers,
        vec![1]
    );
    let flags = Value::Array(vec![Value::Bool(true); 3]);
    assert!(windowed(vec![(pattern, flags)])
        .unwrap()
        .full_attention_layers
        .is_empty());
    let flags = Value::Array(vec![Value::U8(1); 2]);
    let err = windowed(vec![(pattern, flags)]).unwrap_err().to_string();
    assert!(err.contains("not a flag for each"), "{err}");
}

/// An OLMo 3 model (block 1 on a window of 3 with plain RoPE, block 0 on the whole context
/// with YaRN) exports to GGUF as llama.cpp's converter writes it, `olmo2` with the window
/// and a flag per block, and loads back as the same OLMo 3 within f16 rounding of its logits
/// (`scripts/check_olmo2_llamacpp.py` runs such a file in llama.cpp). What llama.cpp's olmo2
/// computes otherwise has no GGUF form: a window RoPE base of its own (llama.cpp uses the
/// others'), per-frequency scaling (it passes no divisors), and, without a window, blocks
/// that rotate unscaled beside YaRN ones.
#[test]
fn olmo3_gguf_round_trip() {
    use candle_core::quantized::gguf_file::Value;
    use steerkit_model::Arch;
    let (m, _d, out) = tiny_gguf(Arch::Olmo3, 5, |c| {
        c.head_dim = 8;
        c.rope_local_theta = Some(c.rope_theta);
    });
    let k = keys(&out);
    assert_eq!(k["general.architecture"], "String(\"olmo2\")");
    assert_eq!(k["olmo2.attention.sliding_window"], "U32(3)");
    assert_eq!(
        k["olmo2.attention.sliding_window_pattern"],
        format!(
            "{:?}",
            Value::Array(vec![Value::Bool(false), Value::Bool(true)])
        )
    );
    assert_eq!(k["olmo2.rope.scaling.type"], "String(\"yarn\")");
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let c = &back.model.cfg;
    assert_eq!(c.arch, Arch::Olmo3);
    assert_eq!(
        (
            c.sliding_window,
            c.full_attention_layers.clone(),
            c.rope_local_theta
        ),
        (Some(3), vec![0], Some(m.cfg.rope_theta))
    );
    let gap = last_logits_gap(&m, &back.model);
    assert!(gap < 0.02, "f16 GGUF against the f32 model: {gap}");
    // llama.cpp's converter writes config.json's YaRN attention factor, which llama.cpp
    // recomputes from the factor: the standard value is read, another refused.
    let with_attn = |v: f32| {
        let p = out.with_extension("attn.gguf");
        with_key(
            &out,
            &p,
            "olmo2.rope.scaling.yarn_attn_factor",
            Value::F32(v),
        );
        Gguf::open(&p).unwrap().config()
    };
    let standard = steerkit_model::config::yarn_attention_factor(4.0, None, None) as f32;
    assert_eq!(
        with_attn(standard).unwrap().rope_scaling,
        m.cfg.rope_scaling
    );
    let err = with_attn(1.5).unwrap_err().to_string();
    assert!(err.contains("yarn_attn_factor"), "{err}");

    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let refused = |edit: &dyn Fn(&mut steerkit_model::Config)| {
        let mut c = m.cfg.clone();
        edit(&mut c);
        let err = metadata(&c, &tok, &chat, "x").unwrap_err().to_string();
        assert!(err.contains("no GGUF form"), "{err}");
    };
    refused(&|c| c.rope_local_theta = Some(100.0));
    refused(&|c| c.rope_scaling = Some(steerkit_model::random::tiny_rope_scaling()));
    refused(&|c| c.sliding_window = None);
}

/// The largest difference between two models' last logits on two short rows.
fn last_logits_gap(a: &steerkit_model::Model, b: &steerkit_model::Model) -> f64 {
    let cpu = &candle_core::Device::Cpu;
    let rows = [vec![3u32, 1, 4, 1, 5], vec![9u32, 2, 6]];
    let (ids, pads) = steerkit_model::left_pad(&rows, 0, cpu).unwrap();
    let logits = |m: &steerkit_model::Model| {
        m.last_logits(&ids, &pads, &mut steerkit_model::NoHook)
            .unwrap()
    };
    steerkit_model::random::max_abs_diff(&logits(a), &logits(b)).unwrap()
}

/// A GGUF file's tensors, by name.
fn tensor_infos(
    p: &Path,
) -> std::collections::HashMap<String, candle_core::quantized::gguf_file::TensorInfo> {
    let mut f = std::fs::File::open(p).unwrap();
    Content::read(&mut f).unwrap().tensor_infos
}

/// A tiny random `arch` model with SmolLM2's tokenizer and template (its configuration
/// changed by `edit`), written to an f16 GGUF file `ARCH.gguf` in a new temporary folder.
fn tiny_gguf(
    arch: steerkit_model::Arch,
    seed: u64,
    edit: impl FnOnce(&mut steerkit_model::Config),
) -> (steerkit_model::Model, tempfile::TempDir, PathBuf) {
    use steerkit_model::random::{random_model, tiny_config};
    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let mut cfg = tiny_config(arch, tok.vocab_size());
    edit(&mut cfg);
    let m = random_model(cfg, DType::F32, seed).unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join(format!("{}.gguf", arch.name()));
    let meta = metadata(&m.cfg, &tok, &chat, arch.name()).unwrap();
    write(&m, &meta, GgufType::F16, &out).unwrap();
    (m, d, out)
}

/// A Qwen3-MoE model (every block routing, as llama.cpp's `qwen3moe` has it) exports to GGUF
/// with its experts stacked (`ffn_gate_exps` `[experts, channels, hidden]`, the router as
/// `ffn_gate_inp`) and the three expert keys, and loads back as the same mixture within f16
/// rounding of its logits (`scripts/check_qwen3_moe_llamacpp.py` runs such a file in
/// llama.cpp).
#[test]
fn qwen3_moe_gguf_round_trip() {
    let (m, _d, out) = tiny_gguf(steerkit_model::Arch::Qwen3Moe, 7, |c| {
        c.moe.as_mut().unwrap().dense_layers.clear()
    });
    let k = keys(&out);
    assert_eq!(k["general.architecture"], "String(\"qwen3moe\")");
    assert_eq!(k["qwen3moe.expert_count"], "U32(4)");
    assert_eq!(k["qwen3moe.expert_used_count"], "U32(2)");
    assert_eq!(k["qwen3moe.expert_feed_forward_length"], "U32(24)");
    let infos = tensor_infos(&out);
    for (name, dims) in [
        ("blk.0.ffn_gate_inp.weight", vec![4, 32]),
        ("blk.1.ffn_gate_exps.weight", vec![4, 24, 32]),
        ("blk.1.ffn_up_exps.weight", vec![4, 24, 32]),
        ("blk.1.ffn_down_exps.weight", vec![4, 32, 24]),
    ] {
        assert_eq!(infos[name].shape.dims(), dims.as_slice(), "{name}");
    }
    assert!(!infos.contains_key("blk.1.ffn_gate.weight"));
    // The router stays f32, as llama.cpp keeps it; the experts are f16.
    assert_eq!(
        infos["blk.1.ffn_gate_inp.weight"].ggml_dtype,
        GgmlDType::F32
    );
    assert_eq!(
        infos["blk.1.ffn_gate_exps.weight"].ggml_dtype,
        GgmlDType::F16
    );
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(back.model.cfg.moe, m.cfg.moe);
    let gap = last_logits_gap(&m, &back.model);
    assert!(gap < 0.02, "f16 GGUF against the f32 model: {gap}");
    // With a plain block, or weights left unnormalized, llama.cpp would compute otherwise.
    let mut plain = m.cfg.clone();
    plain.moe.as_mut().unwrap().norm_topk_prob = false;
    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let err = metadata(&plain, &tok, &chat, "x").unwrap_err();
    assert!(err.to_string().contains("no GGUF form"), "{err}");
    // Without experts (a qwen3_moe configuration with none), neither.
    plain.moe = None;
    let err = metadata(&plain, &tok, &chat, "x").unwrap_err();
    assert!(err.to_string().contains("no experts"), "{err}");
}

/// A Qwen2-MoE model (every block routing, as llama.cpp's `qwen2moe` has it) exports to GGUF
/// with its experts stacked and its shared expert as llama.cpp names it (`ffn_*_shexp`, the
/// gate as the vector `ffn_gate_inp_shexp`, in f32) with its width
/// (`expert_shared_feed_forward_length`), and loads back as the same mixture within f16
/// rounding of its logits (`scripts/check_qwen3_moe_llamacpp.py` runs such a file in
/// llama.cpp); its tied head is written as `output.weight`, which llama.cpp's qwen2moe needs.
/// The gate as llama.cpp's converter writes it, `{hidden, 1}`, reads the same. llama.cpp's
/// qwen2moe leaves the top weights unnormalized and always has a shared expert: a model that
/// normalizes them, or has none, is refused.
#[test]
fn qwen2_moe_gguf_round_trip() {
    let (m, _d, out) = tiny_gguf(steerkit_model::Arch::Qwen2Moe, 7, |c| {
        c.moe.as_mut().unwrap().dense_layers.clear()
    });
    let k = keys(&out);
    assert_eq!(k["general.architecture"], "String(\"qwen2moe\")");
    assert_eq!(k["qwen2moe.expert_shared_feed_forward_length"], "U32(20)");
    let infos = tensor_infos(&out);
    for (name, dims) in [
        ("blk.1.ffn_gate_exps.weight", vec![4, 24, 32]),
        ("blk.1.ffn_gate_shexp.weight", vec![20, 32]),
        ("blk.1.ffn_up_shexp.weight", vec![20, 32]),
        ("blk.1.ffn_down_shexp.weight", vec![32, 20]),
        ("blk.1.ffn_gate_inp_shexp.weight", vec![32]),
        ("blk.1.attn_q.bias", vec![32]),
    ] {
        assert_eq!(infos[name].shape.dims(), dims.as_slice(), "{name}");
    }
    assert_eq!(
        infos["blk.1.ffn_gate_inp_shexp.weight"].ggml_dtype,
        GgmlDType::F32
    );
    assert!(m.cfg.tie_word_embeddings && infos.contains_key("output.weight"));
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(back.model.cfg.moe, m.cfg.moe);
    assert_eq!(back.model.cfg.arch, steerkit_model::Arch::Qwen2Moe);
    let gap = last_logits_gap(&m, &back.model);
    assert!(gap < 0.02, "f16 GGUF against the f32 model: {gap}");
    let converted = _d.path().join("converted.gguf");
    rewrite(&out, &converted, |_, tensors| {
        for (name, t) in tensors.iter_mut() {
            if name.ends_with("ffn_gate_inp_shexp.weight") {
                let row = t.dequantize(&candle_core::Device::Cpu).unwrap();
                let row = row.reshape((1, row.elem_count())).unwrap();
                *t = candle_core::quantized::QTensor::quantize(&row, GgmlDType::F32).unwrap();
            }
        }
    });
    assert_eq!(
        tensor_infos(&converted)["blk.1.ffn_gate_inp_shexp.weight"]
            .shape
            .dims(),
        [1, 32]
    );
    let again = load(converted.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(last_logits_gap(&back.model, &again.model), 0.0);
    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    for edit in [
        |m: &mut steerkit_model::MoeConfig| m.norm_topk_prob = true,
        |m: &mut steerkit_model::MoeConfig| m.shared_intermediate_size = None,
    ] {
        let mut c = m.cfg.clone();
        edit(c.moe.as_mut().unwrap());
        let err = metadata(&c, &tok, &chat, "x").unwrap_err();
        assert!(err.to_string().contains("no GGUF form"), "{err}");
    }
}

/// A gpt-oss model exports to GGUF as llama.cpp's `gpt-oss` reads it (sinks as
/// `attn_sinks`, the MLP's input norm as `post_attention_norm`, biases on the attention's
/// output, the router and every expert, each stacked `[experts, channels]`, the window's
/// width) and loads back as the same model within f16 rounding of its logits
/// (`scripts/check_gpt_oss_llamacpp.py` runs such a file in llama.cpp). A model whose SwiGLU
/// or windows llama.cpp would compute otherwise is refused.
#[test]
fn gpt_oss_gguf_round_trip() {
    let (m, _d, out) = tiny_gguf(steerkit_model::Arch::GptOss, 11, |c| {
        c.hidden_act = steerkit_model::gguf::LLAMACPP_GPT_OSS_SWIGLU;
        c.full_attention_layers = vec![1];
    });
    let k = keys(&out);
    assert_eq!(k["general.architecture"], "String(\"gpt-oss\")");
    assert_eq!(k["gpt-oss.attention.sliding_window"], "U32(3)");
    assert_eq!(k["gpt-oss.expert_used_count"], "U32(3)");
    let infos = tensor_infos(&out);
    for (name, dims) in [
        ("blk.0.attn_sinks.weight", vec![4]),
        ("blk.0.attn_output.bias", vec![32]),
        ("blk.0.post_attention_norm.weight", vec![32]),
        ("blk.0.ffn_gate_inp.bias", vec![4]),
        ("blk.1.ffn_gate_exps.bias", vec![4, 48]),
        ("blk.1.ffn_down_exps.bias", vec![4, 32]),
        ("blk.1.ffn_up_exps.weight", vec![4, 48, 32]),
        ("output.weight", vec![m.cfg.vocab_size, 32]),
    ] {
        assert_eq!(infos[name].shape.dims(), dims.as_slice(), "{name}");
    }
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let c = &back.model.cfg;
    assert_eq!(c.arch, steerkit_model::Arch::GptOss);
    assert_eq!(
        (c.moe.clone(), c.hidden_act),
        (m.cfg.moe.clone(), m.cfg.hidden_act)
    );
    assert_eq!(
        (c.sliding_window, c.full_attention_layers.clone()),
        (Some(3), vec![1])
    );
    let gap = last_logits_gap(&m, &back.model);
    assert!(gap < 0.02, "f16 GGUF against the f32 model: {gap}");
    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let mut other = m.cfg.clone();
    other.hidden_act = steerkit_model::Activation::SwigluOai {
        alpha: 1.702,
        limit: 0.5,
    };
    let err = metadata(&other, &tok, &chat, "x").unwrap_err().to_string();
    assert!(
        err.contains("clamps its SwiGLU") && err.contains("no GGUF form"),
        "{err}"
    );
    other = m.cfg.clone();
    other.full_attention_layers = vec![0];
    let err = metadata(&other, &tok, &chat, "x").unwrap_err().to_string();
    assert!(err.contains("no GGUF form"), "{err}");
    // Keys llama.cpp reads that steerkit's gpt-oss does not compute: refused on reading; a
    // file without the window too.
    use candle_core::quantized::gguf_file::Value as V;
    for (key, value, needle) in [
        (
            "gpt-oss.attention.sliding_window_pattern",
            V::U32(3),
            "every other block",
        ),
        (
            "gpt-oss.rope.freq_base_swa",
            V::F32(500.0),
            "RoPE base of their own",
        ),
        (
            "gpt-oss.attention.sliding_window",
            V::U32(0),
            "which llama.cpp requires",
        ),
    ] {
        let edited = _d.path().join("edited.gguf");
        rewrite(&out, &edited, |kv, _| {
            kv.insert(key.to_string(), value.clone());
        });
        let err = Gguf::open(&edited)
            .unwrap()
            .config()
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{key}: {err}");
    }
}

/// `--gguf-type mxfp4`: a gpt-oss model's experts written as GGML MXFP4 (type 39, file type
/// 38, each stack with its own dimensions), the other matrices q8_0. Read back, each expert
/// matrix is exactly llama.cpp's quantization of the original (steerkit's encoder, decoded),
/// and the logits stay near the f32 model's; a Qwen3-MoE stack whose columns are not whole
/// blocks stays q8_0 or f32; a model without experts is refused, with no file left.
/// `scripts/check_gpt_oss_llamacpp.py` checks such a file in llama.cpp.
#[test]
fn mxfp4_export_of_experts() {
    use steerkit_model::mxfp4::{decode, encode, Order};
    let (m, d, _) = tiny_gguf(steerkit_model::Arch::GptOss, 11, |c| {
        c.hidden_act = steerkit_model::gguf::LLAMACPP_GPT_OSS_SWIGLU;
        c.full_attention_layers = vec![1];
        c.moe.as_mut().unwrap().intermediate_size = 64;
    });
    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let meta = metadata(&m.cfg, &tok, &chat, "x").unwrap();
    let out = d.path().join("mxfp4.gguf");
    write(&m, &meta, GgufType::Mxfp4Moe, &out).unwrap();
    let back = Gguf::open(&out).unwrap();
    assert_eq!(
        format!("{:?}", back.metadata()["general.file_type"]),
        "U32(38)"
    );
    let types = back.tensor_types();
    // gate, up and down stacks of 2 blocks.
    assert_eq!(types.get("MXFP4"), Some(&6), "{types:?}");
    assert!(types.contains_key("Q8_0"), "{types:?}");
    let loaded = back.model(&candle_core::Device::Cpu, DType::F32).unwrap();
    // The f32 model with each expert matrix quantized and decoded in memory.
    let mut rounded = m.clone();
    for (b, (blk, read)) in rounded.layers.iter_mut().zip(&loaded.layers).enumerate() {
        let (steerkit_model::Mlp::Moe(a), steerkit_model::Mlp::Moe(z)) = (&mut blk.mlp, &read.mlp)
        else {
            panic!("block {b} routes");
        };
        for (x, y) in a.experts.iter_mut().zip(&z.experts) {
            for (p, q) in [
                (&mut x.gate, &y.gate),
                (&mut x.up, &y.up),
                (&mut x.down, &y.down),
            ] {
                let v: Vec<f32> = p.weight.flatten_all().unwrap().to_vec1().unwrap();
                let want = decode(&encode(&v, Order::Halves).unwrap(), Order::Halves).unwrap();
                let got: Vec<f32> = q.weight.flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(got, want, "block {b}");
                p.weight = candle_core::Tensor::from_vec(
                    want,
                    p.weight.shape(),
                    &candle_core::Device::Cpu,
                )
                .unwrap();
            }
        }
    }
    // Every other tensor is what a q8_0 export holds; MXFP4 moves the logits.
    let q8 = d.path().join("q8.gguf");
    write(&m, &meta, GgufType::Q8_0, &q8).unwrap();
    let q8 = Gguf::open(&q8)
        .unwrap()
        .model(&candle_core::Device::Cpu, DType::F32)
        .unwrap();
    let theirs: std::collections::HashMap<String, candle_core::Tensor> =
        q8.named_tensors().into_iter().collect();
    for (name, t) in loaded.named_tensors() {
        if !name.contains(".experts.") {
            let gap = steerkit_model::random::max_abs_diff(&t, &theirs[&name]).unwrap();
            assert_eq!(gap, 0.0, "{name}");
        }
    }
    let moved = last_logits_gap(&m, &rounded);
    assert!(moved > 1e-2, "MXFP4 experts move the logits by {moved}");

    let (q, d2, _) = tiny_gguf(steerkit_model::Arch::Qwen3Moe, 7, |c| {
        c.moe.as_mut().unwrap().dense_layers.clear()
    });
    let meta = metadata(&q.cfg, &tok, &chat, "x").unwrap();
    let out = d2.path().join("mxfp4.gguf");
    write(&q, &meta, GgufType::Mxfp4Moe, &out).unwrap();
    let types = Gguf::open(&out).unwrap().tensor_types();
    // gate and up ([4, 24, 32]) in MXFP4; down ([4, 32, 24]) cannot be.
    assert_eq!(types.get("MXFP4"), Some(&4), "{types:?}");

    let (plain, d3, _) = tiny_gguf(steerkit_model::Arch::Qwen2, 3, |_| {});
    let meta = metadata(&plain.cfg, &tok, &chat, "x").unwrap();
    let out = d3.path().join("none.gguf");
    let err = write(&plain, &meta, GgufType::Mxfp4Moe, &out).unwrap_err();
    assert!(err.to_string().contains("experts"), "{err}");
    assert!(!out.exists() && !out.with_extension("gguf.tmp").exists());
}

/// `values` (`[.., cols]`, cols a multiple of 32) as GGML MXFP4 blocks, laid out as ggml's
/// `block_mxfp4` (the e8m0 scale, then value j in the low nibble of byte j and value j + 16
/// in its high nibble), and the values they stand for.
fn mxfp4_blocks(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    const FP4: [f32; 16] = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];
    let (mut bytes, mut back) = (vec![], vec![]);
    for g in values.chunks_exact(32) {
        let top = g.iter().fold(1e-30f32, |m, x| m.max(x.abs()));
        let e = (top / 6.0).log2().ceil() as i32;
        let scale = 2f32.powi(e);
        let code = |x: f32| {
            (0..16)
                .min_by(|a, b| {
                    (x / scale - FP4[*a])
                        .abs()
                        .total_cmp(&(x / scale - FP4[*b]).abs())
                })
                .unwrap() as u8
        };
        let codes: Vec<u8> = g.iter().map(|x| code(*x)).collect();
        bytes.push((e + 127) as u8);
        bytes.extend((0..16).map(|j| codes[j] | (codes[j + 16] << 4)));
        back.extend(codes.iter().map(|c| FP4[*c as usize] * scale));
    }
    (bytes, back)
}

/// The start of a GGUF v3 file that declares `tensors` tensors and no key/values, and whose
/// first tensor is `name`, 32 MXFP4 values (GGML type 39) at offset 0.
fn mxfp4_header(tensors: u64, name: &[u8]) -> Vec<u8> {
    let mut b: Vec<u8> = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((name.len() as u64).to_le_bytes());
    b.extend(name);
    b.extend(1u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(39u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b
}

/// A gpt-oss GGUF whose experts are GGML MXFP4 (type 39, which llama.cpp's converter writes
/// for gpt-oss and candle cannot read): steerkit finds those tensors, decodes them and loads
/// the model; its logits equal those of the same file with the experts stored as the f32
/// values the blocks stand for. `scripts/check_gpt_oss_llamacpp.py` checks the layout
/// against llama.cpp's own reading. A GGUF with only such a tensor and nothing else opens,
/// and says what it lacks.
#[test]
fn gpt_oss_gguf_with_mxfp4_experts() {
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, QTensor};
    let (_m, d, out) = tiny_gguf(steerkit_model::Arch::GptOss, 11, |c| {
        c.hidden_act = steerkit_model::gguf::LLAMACPP_GPT_OSS_SWIGLU;
        c.full_attention_layers = vec![1];
        c.moe.as_mut().unwrap().intermediate_size = 64;
    });
    let (plain, packed) = (d.path().join("plain.gguf"), d.path().join("mxfp4.gguf"));
    let mut stacks: Vec<(String, Vec<usize>)> = vec![];
    rewrite(&out, &plain, |_, tensors| {
        for (name, t) in tensors.iter_mut() {
            if name.contains("_exps.weight") {
                let x = t.dequantize(&candle_core::Device::Cpu).unwrap();
                let values: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let back = candle_core::Tensor::from_vec(
                    mxfp4_blocks(&values).1,
                    x.shape(),
                    &candle_core::Device::Cpu,
                )
                .unwrap();
                *t = QTensor::quantize(&back, GgmlDType::F32).unwrap();
                stacks.push((name.clone(), x.dims().to_vec()));
            }
        }
    });
    // The same stacks as MXFP4: written as q8_0 of half the rows (the same bytes: 34 per 32
    // q8_0 values, 17 per 32 MXFP4 ones), then typed 39 with all the rows.
    rewrite(&plain, &packed, |_, tensors| {
        for (name, t) in tensors.iter_mut() {
            if name.contains("_exps.weight") {
                let x = t.dequantize(&candle_core::Device::Cpu).unwrap();
                let values: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let mut dims = x.dims().to_vec();
                dims[1] /= 2;
                let raw = mxfp4_blocks(&values).0;
                *t = qtensor_from_ggml(GgmlDType::Q8_0, &raw, dims, &candle_core::Device::Cpu)
                    .unwrap();
            }
        }
    });
    let mut bytes = std::fs::read(&packed).unwrap();
    for (name, dims) in &stacks {
        let at = bytes
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .unwrap()
            + name.len();
        assert_eq!(
            bytes[at..at + 4],
            3u32.to_le_bytes(),
            "{name}: 3 dimensions"
        );
        // Dimensions innermost first: columns, rows, experts.
        bytes[at + 12..at + 20].copy_from_slice(&(dims[1] as u64).to_le_bytes());
        let ty = at + 4 + 3 * 8;
        assert_eq!(bytes[ty..ty + 4], 8u32.to_le_bytes(), "{name}: q8_0");
        bytes[ty..ty + 4].copy_from_slice(&39u32.to_le_bytes());
    }
    std::fs::write(&packed, &bytes).unwrap();
    assert!(
        Content::read(&mut std::fs::File::open(&packed).unwrap()).is_err(),
        "candle alone cannot read it"
    );
    let a = load(plain.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let b = load(packed.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(last_logits_gap(&a.model, &b.model), 0.0);
    // Only an MXFP4 tensor: the header opens; what is missing is said.
    let name = b"blk.0.ffn_up_exps.weight";
    let mut lone = mxfp4_header(1, name);
    lone.resize(lone.len().div_ceil(32) * 32 + 17, 0);
    let path = d.path().join("lone.gguf");
    std::fs::write(&path, &lone).unwrap();
    let err = Gguf::open(&path).unwrap().config().unwrap_err().to_string();
    assert!(err.contains("general.architecture"), "{err}");
    lone.truncate(lone.len() - 1);
    std::fs::write(&path, &lone).unwrap();
    let err = Gguf::open(&path).err().expect("truncated").to_string();
    assert!(err.contains("truncated"), "{err}");
    // A second tensor whose name claims 2^62 bytes: an error, not an allocation.
    let mut huge = mxfp4_header(2, name);
    huge.extend((1u64 << 62).to_le_bytes());
    huge.resize(huge.len() + 64, 0);
    std::fs::write(&path, &huge).unwrap();
    let err = Gguf::open(&path).err().expect("refused").to_string();
    assert!(err.contains("tensor name of"), "{err}");
}

/// A Mixtral model exports to GGUF as llama.cpp's converter writes Mixtral: `llama` with
/// experts (q/k rows permuted, the expert keys), and loads back as Mixtral within f16
/// rounding of its logits (`scripts/check_qwen3_moe_llamacpp.py` runs such a file in
/// llama.cpp).
#[test]
fn mixtral_gguf_round_trip() {
    let (m, _d, out) = tiny_gguf(steerkit_model::Arch::Mixtral, 9, |_| {});
    let k = keys(&out);
    assert_eq!(k["general.architecture"], "String(\"llama\")");
    assert_eq!(k["llama.expert_count"], "U32(4)");
    assert_eq!(
        tensor_infos(&out)["blk.1.ffn_down_exps.weight"]
            .shape
            .dims(),
        [4, 32, 48]
    );
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(back.model.cfg.arch, steerkit_model::Arch::Mixtral);
    assert_eq!(back.model.cfg.moe, m.cfg.moe);
    let gap = last_logits_gap(&m, &back.model);
    assert!(gap < 0.02, "f16 GGUF against the f32 model: {gap}");
    // llama.cpp's layout before 2024, one tensor per expert: a clear error, not a wrong model.
    let old = _d.path().join("old.gguf");
    rewrite(&out, &old, |_, tensors| {
        let t =
            candle_core::Tensor::zeros((48, 32), DType::F32, &candle_core::Device::Cpu).unwrap();
        let q = candle_core::quantized::QTensor::quantize(&t, GgmlDType::F32).unwrap();
        tensors.push(("blk.0.ffn_gate.0.weight".into(), q));
    });
    let err = Gguf::open(&old)
        .unwrap()
        .model(&candle_core::Device::Cpu, DType::F32)
        .unwrap_err();
    assert!(err.to_string().contains("layout before 2024"), "{err}");
}

/// Asserts that the model read back from GGUF, `back`, gives `m`'s last logits on `rows`
/// within `tol` (f16's rounding of the weights), and that what the test is about (`what`,
/// removed from `back`'s configuration by `strip`) moves them ten times more.
fn close_but_for(
    m: &steerkit_model::Model,
    back: &steerkit_model::Model,
    rows: &[Vec<u32>],
    tol: f64,
    what: &str,
    strip: impl FnOnce(&mut steerkit_model::Config),
) {
    let cpu = &candle_core::Device::Cpu;
    let logits = |m: &steerkit_model::Model| {
        let (ids, pads) = steerkit_model::left_pad(rows, 0, cpu).unwrap();
        m.last_logits(&ids, &pads, &mut steerkit_model::NoHook)
            .unwrap()
    };
    let diff = steerkit_model::random::max_abs_diff;
    let gap = diff(&logits(m), &logits(back)).unwrap();
    let mut plain = back.clone();
    strip(&mut plain.cfg);
    let effect = diff(&logits(back), &logits(&plain)).unwrap();
    assert!(
        gap < tol && effect > 10.0 * gap,
        "f16 GGUF against the f32 model: {gap}; without {what}: {effect}"
    );
}

/// A SmolLM3 model whose blocks without RoPE are every fourth (the real models' pattern, which
/// llama.cpp's `smollm3` fixes) exports to GGUF and loads back with them and within f16
/// rounding (`scripts/check_llama_variants_llamacpp.py` runs such a file in llama.cpp); one with
/// another pattern has no GGUF form and is refused.
#[test]
fn smollm3_gguf_round_trip() {
    use steerkit_model::random::{random_model, tiny_config};
    let g = Gguf::open(&model_path("smollm2-135m-instruct")).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let mut cfg = tiny_config(steerkit_model::Arch::SmolLm3, tok.vocab_size());
    let err = metadata(&cfg, &tok, &chat, "smollm3")
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks [1] without RoPE"), "{err}");
    cfg.num_layers = 4;
    cfg.nope_layers = vec![3];
    let m = random_model(cfg, DType::F32, 6).unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("smollm3.gguf");
    let meta = metadata(&m.cfg, &tok, &chat, "smollm3").unwrap();
    write(&m, &meta, GgufType::F16, &out).unwrap();
    assert_eq!(keys(&out)["general.architecture"], "String(\"smollm3\")");
    let back = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(back.model.cfg.nope_layers, vec![3]);
    let rows = [vec![3u32, 1, 4, 1, 5, 9, 2, 6], vec![9u32, 2, 6]];
    close_but_for(&m, &back.model, &rows, 0.02, "NoPE", |c| {
        c.nope_layers.clear()
    });
}
