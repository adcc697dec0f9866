//! GGUF export: a model's weights (for instance patched or orthogonalized) with llama.cpp's
//! metadata (hyper-parameters, tokenizer, chat template).
//!
//! The metadata comes from either source a model is loaded from:
//! - a GGUF file: [`source_metadata`] carries its key/values over unchanged;
//! - a Hugging Face folder: [`metadata`] builds them from the configuration and the tokenizer
//!   (byte-level BPE, with the pre-tokenizer name whose ids equal the tokenizer's, or
//!   SentencePiece-style BPE with byte fallback; see [`steerkit_model::Tok::gguf_vocab`]).
//! - RoPE scaling is written as llama.cpp reads it: linear scaling as `rope.scaling.type` and
//!   `rope.scaling.factor`, YaRN as its type, factor and original context, Llama 3's as
//!   `rope_freqs.weight` divisors, LongRoPE as `rope_factors_long.weight` and
//!   `rope_factors_short.weight` with its original context and `rope.scaling.attn_factor`;
//!   partial rotation as `rope.dimension_count`.
//!
//! Matrices are stored as f16 or q8_0, vectors (norms, biases) as f32, as llama.cpp expects;
//! llama q/k rows are permuted into llama.cpp's order.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device};
use steerkit_model::gguf::write::{Planned, Storage};
use steerkit_model::gguf::{gguf_name, permute, qk_permuted, stored_norm_shift, Gguf};
use steerkit_model::weights::{Gathering, Layout, Lazy, TensorMap};
use steerkit_model::{Arch, ChatTemplate, Config, Model, ModelError, RopeScaling, Tok};

/// A RoPE scaling's original context as GGUF stores it: a whole number of positions.
fn gguf_context(scaling: &str, ctx: f64) -> Result<u32, ModelError> {
    if ctx.fract() != 0.0 || ctx < 1.0 || ctx > u32::MAX as f64 {
        return Err(ModelError::Config(format!(
            "{scaling}'s original context {ctx} is not a whole number of positions GGUF can hold"
        )));
    }
    Ok(ctx as u32)
}

/// Storage type of the matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F16,
    Q8_0,
    /// A mixture of experts' stacked experts (`ffn_*_exps`) in GGML's MXFP4, as llama.cpp's
    /// gpt-oss files hold them (4.25 bits a weight), the other matrices in q8_0; only for
    /// models with experts.
    Mxfp4Moe,
}

impl GgufType {
    /// The storage of the matrices that are not experts stored otherwise.
    fn storage(self) -> Storage {
        match self {
            GgufType::F16 => Storage::F16,
            GgufType::Q8_0 | GgufType::Mxfp4Moe => Storage::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` code.
    fn file_type(self) -> u32 {
        match self {
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
            // LLAMA_FTYPE_MOSTLY_MXFP4_MOE.
            GgufType::Mxfp4Moe => 38,
        }
    }
}

/// GGUF key/value pairs, written before the tensors.
pub type Metadata = Vec<(String, Value)>;

/// The key/values of a GGUF source model, carried over as they are.
pub fn source_metadata(source: &Gguf) -> Metadata {
    source
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// llama.cpp's architecture name: its converter writes Mistral 7B models as `llama`.
pub fn gguf_arch(arch: Arch) -> &'static str {
    match arch {
        // Mixtral too, with experts.
        Arch::Llama | Arch::Mistral | Arch::Mixtral => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Qwen3 => "qwen3",
        Arch::Gemma3 => "gemma3",
        Arch::Gemma2 => "gemma2",
        Arch::Phi3 => "phi3",
        // Granite 4's attention-only models too, as llama.cpp's converter names them.
        Arch::Granite | Arch::GraniteHybrid => "granite",
        Arch::SmolLm3 => "smollm3",
        // OLMo 3 too, with a window (llama.cpp's converter writes it so).
        Arch::Olmo2 | Arch::Olmo3 => "olmo2",
        Arch::Qwen3Moe => "qwen3moe",
        Arch::Qwen2Moe => "qwen2moe",
        Arch::GptOss => "gpt-oss",
    }
}

/// Whether llama.cpp's gpt-oss computes this gpt-oss model: it fixes the experts' SwiGLU
/// (alpha 1.702, limit 7) and puts the window, which it requires, on every other block from
/// the first.
fn gpt_oss_has_a_form(cfg: &Config) -> Result<(), ModelError> {
    use steerkit_model::gguf::LLAMACPP_GPT_OSS_SWIGLU;
    let no_form = |what: String| {
        Err(ModelError::Config(format!(
            "this gpt-oss model {what}, which llama.cpp's gpt-oss fixes otherwise: it has no GGUF form; export it as safetensors"
        )))
    };
    if cfg.hidden_act != LLAMACPP_GPT_OSS_SWIGLU {
        return no_form(format!("clamps its SwiGLU as {:?}", cfg.hidden_act));
    }
    let odd: Vec<usize> = (0..cfg.num_layers).filter(|l| l % 2 == 1).collect();
    if cfg.sliding_window.is_none() || cfg.full_attention_layers != odd {
        return no_form(format!(
            "has a window of {:?} with blocks {:?} of the whole context",
            cfg.sliding_window, cfg.full_attention_layers
        ));
    }
    Ok(())
}

/// The keys llama.cpp's olmo2 reads for an OLMo model: for OLMo 3 the window and which blocks
/// have it (a flag per block). llama.cpp rotates the window's blocks without scaling, as
/// OLMo 3 does, but with the others' base (it reads `rope.freq_base_swa` and does not use
/// it), and every block without per-frequency divisors (it passes none to its RoPE); so a
/// model with such scaling (llama3, LongRoPE, divisors), whose window's blocks have a base of
/// their own, or which has blocks that rotate otherwise than the others without a window,
/// has no GGUF form.
fn olmo_keys(cfg: &Config) -> Result<Vec<(String, Value)>, ModelError> {
    let no_form = |what: String| {
        Err(ModelError::Config(format!(
            "this {} model {what}, which llama.cpp's olmo2 does not compute: it has no GGUF form; export it as safetensors",
            cfg.arch.name()
        )))
    };
    if let Some(r) = cfg
        .rope_scaling
        .as_ref()
        .filter(|r| !matches!(r, RopeScaling::Linear { .. } | RopeScaling::Yarn { .. }))
    {
        return no_form(format!("scales RoPE per frequency ({r:?})"));
    }
    let local = (0..cfg.num_layers).any(|l| cfg.local_rope(l));
    if let Some(t) = cfg
        .rope_local_theta
        .filter(|t| local && *t != cfg.rope_theta)
    {
        return no_form(format!(
            "rotates its sliding blocks with base {t}, the others with {}",
            cfg.rope_theta
        ));
    }
    let Some(w) = cfg.sliding_window else {
        if local && cfg.rope_scaling.is_some() {
            return no_form(
                "rotates its sliding blocks otherwise than the others, without a window".into(),
            );
        }
        return Ok(vec![]);
    };
    let flags = (0..cfg.num_layers)
        .map(|l| Value::Bool(cfg.window_of(l).is_some()))
        .collect();
    Ok(vec![
        (
            "olmo2.attention.sliding_window".into(),
            Value::U32(w as u32),
        ),
        (
            "olmo2.attention.sliding_window_pattern".into(),
            Value::Array(flags),
        ),
    ])
}

/// The keys llama.cpp reads for a Gemma model (the window's width, the soft-caps), after
/// checking that the model is one llama.cpp computes: it fixes the rest (which blocks have the
/// window, gemma3's base 10,000 for their RoPE, the attention scale), so a model that differs
/// has no GGUF form.
fn gemma_keys(cfg: &Config) -> Result<Vec<(String, Value)>, ModelError> {
    use steerkit_model::gguf::{
        llamacpp_gemma_attn_scalar, llamacpp_gemma_full_layers, llamacpp_gemma_local_theta,
    };
    let arch = gguf_arch(cfg.arch);
    let no_form = |what: String| {
        Err(ModelError::Config(format!(
            "{what}, which llama.cpp's {arch} fixes otherwise: this model has no GGUF form; export it as safetensors"
        )))
    };
    let scalar = llamacpp_gemma_attn_scalar(cfg);
    if cfg.query_pre_attn_scalar != Some(scalar) {
        return no_form(format!(
            "the attention is scaled by query_pre_attn_scalar {:?}, not {scalar}",
            cfg.query_pre_attn_scalar
        ));
    }
    let mut keys = vec![];
    for (k, cap) in [
        ("attn_logit_softcapping", cfg.attn_logit_softcapping),
        ("final_logit_softcapping", cfg.final_logit_softcapping),
    ] {
        if let Some(c) = cap {
            keys.push((format!("{arch}.{k}"), Value::F32(c as f32)));
        }
    }
    let Some(w) = cfg.sliding_window else {
        // Without a window llama.cpp rotates every block with the global base.
        if let Some(l) = (0..cfg.num_layers).find(|l| cfg.local_rope(*l)) {
            return no_form(format!(
                "without a window, block {l} still rotates with the local base {:?}",
                cfg.rope_local_theta
            ));
        }
        return Ok(keys);
    };
    let full = llamacpp_gemma_full_layers(cfg.arch, cfg.num_layers);
    if cfg.full_attention_layers != full {
        return no_form(format!(
            "blocks {:?} attend over the whole context, not {full:?}",
            cfg.full_attention_layers
        ));
    }
    let local = llamacpp_gemma_local_theta(cfg.arch);
    if cfg.rope_local_theta != local {
        return no_form(format!(
            "the window's blocks rotate with base {:?}, not {local:?}",
            cfg.rope_local_theta
        ));
    }
    keys.push((
        format!("{arch}.attention.sliding_window"),
        Value::U32(w as u32),
    ));
    Ok(keys)
}

/// Key/values for a model loaded from a Hugging Face folder: the hyper-parameters llama.cpp
/// reads, the tokenizer (`tokenizer.ggml.*`) and the chat template. `name` becomes
/// `general.name`.
pub fn metadata(
    cfg: &Config,
    tok: &Tok,
    chat: &ChatTemplate,
    name: &str,
) -> Result<Metadata, ModelError> {
    let arch = gguf_arch(cfg.arch);
    if cfg.arch == Arch::GptOss {
        gpt_oss_has_a_form(cfg)?;
    }
    let qwen2moe = cfg.arch == Arch::Qwen2Moe;
    if matches!(cfg.arch, Arch::Qwen3Moe | Arch::Qwen2Moe) && cfg.moe.is_none() {
        return Err(ModelError::Config(format!(
            "this {} model has no experts (every block plain), which llama.cpp's {arch} cannot read: it has no GGUF form; export it as safetensors",
            cfg.arch.name()
        )));
    }
    // llama.cpp's mixtures route in every block and renormalize the chosen weights, except
    // qwen2moe, which leaves them as they are and always has a shared expert.
    if let Some(m) = &cfg.moe {
        if !m.dense_layers.is_empty() || m.norm_topk_prob == qwen2moe {
            let (does, how) = match qwen2moe {
                true => ("normalizes", "leaves them as they are"),
                false => ("leaves unnormalized", "normalizes them"),
            };
            return Err(ModelError::Config(format!(
                "this {} model has plain MLP blocks {:?} or {does} its top-{} weights; llama.cpp's {arch} routes in every block and {how}, so it has no GGUF form; export it as safetensors",
                cfg.arch.name(),
                m.dense_layers,
                m.top_k
            )));
        }
        if m.shared_intermediate_size.is_some() != qwen2moe {
            return Err(ModelError::Config(format!(
                "this {} model's shared expert ({:?} channels) is not what llama.cpp's {arch} computes: it has no GGUF form; export it as safetensors",
                cfg.arch.name(),
                m.shared_intermediate_size
            )));
        }
    }
    // llama.cpp's olmo2 and qwen2moe take the heads to span the hidden size.
    let spanning = cfg.arch.olmo() || cfg.arch == Arch::Qwen2Moe;
    if spanning && cfg.num_heads * cfg.head_dim != cfg.hidden_size {
        return Err(ModelError::Config(format!(
            "this {} model's {} heads of {} do not span its hidden size {}, as llama.cpp's {arch} takes them to: it has no GGUF form; export it as safetensors",
            cfg.arch.name(), cfg.num_heads, cfg.head_dim, cfg.hidden_size
        )));
    }
    if cfg.arch == Arch::SmolLm3
        && cfg.nope_layers != steerkit_model::gguf::llamacpp_nope_layers(cfg.num_layers)
    {
        return Err(ModelError::Config(format!(
            "this smollm3 model runs blocks {:?} without RoPE; llama.cpp's smollm3 fixes every fourth, so it has no GGUF form; export it as safetensors",
            cfg.nope_layers
        )));
    }
    if cfg.rotary_dim.is_some() && qk_permuted(cfg.arch) {
        return Err(ModelError::Config(format!(
            "this {arch} model turns {} of each head's {} dimensions; llama.cpp's {arch} stores q/k rows for interleaved RoPE over whole heads, so it has no GGUF form; export it as safetensors",
            cfg.rotated_dims(),
            cfg.head_dim
        )));
    }
    let u = |x: usize| Value::U32(x as u32);
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let vocab = tok.gguf_vocab(cfg.vocab_size)?;
    let mut m: Metadata = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
    ];
    let hp = [
        ("context_length", u(cfg.max_position_embeddings)),
        ("embedding_length", u(cfg.hidden_size)),
        ("block_count", u(cfg.num_layers)),
        ("feed_forward_length", u(cfg.intermediate_size)),
        ("attention.head_count", u(cfg.num_heads)),
        ("attention.head_count_kv", u(cfg.num_kv_heads)),
        ("attention.key_length", u(cfg.head_dim)),
        ("attention.value_length", u(cfg.head_dim)),
        ("rope.dimension_count", u(cfg.rotated_dims())),
        ("rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("vocab_size", u(cfg.vocab_size)),
    ];
    m.extend(hp.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)));
    if let Some(e) = &cfg.moe {
        m.extend(
            [
                ("expert_count", u(e.num_experts)),
                ("expert_used_count", u(e.top_k)),
                ("expert_feed_forward_length", u(e.intermediate_size)),
            ]
            .map(|(k, v)| (format!("{arch}.{k}"), v)),
        );
        if let Some(s) = e.shared_intermediate_size {
            m.push((format!("{arch}.expert_shared_feed_forward_length"), u(s)));
        }
    }
    if cfg.arch.gemma() {
        m.extend(gemma_keys(cfg)?);
    }
    if cfg.arch.olmo() {
        m.extend(olmo_keys(cfg)?);
    }
    if let (Arch::GptOss, Some(w)) = (cfg.arch, cfg.sliding_window) {
        m.push((format!("{arch}.attention.sliding_window"), u(w)));
    }
    // llama.cpp's granite turns every block unless `rope.scaling.finetuned` is false, which
    // turns none.
    if cfg.arch.granite() && !cfg.nope_layers.is_empty() {
        if cfg.nope_layers.len() != cfg.num_layers {
            return Err(ModelError::Config(format!(
                "this {} model turns some blocks and not others ({:?} without RoPE), which llama.cpp's granite cannot: it has no GGUF form; export it as safetensors",
                cfg.arch.name(),
                cfg.nope_layers
            )));
        }
        m.push((format!("{arch}.rope.scaling.finetuned"), Value::Bool(false)));
    }
    if let Some(g) = cfg.multipliers {
        let values = [g.embedding, g.residual, g.attention, g.logits_scaling];
        m.extend(
            steerkit_model::gguf::GRANITE_KEYS
                .iter()
                .zip(values)
                .map(|(k, v)| (format!("{arch}.{k}"), Value::F32(v as f32))),
        );
    }
    m.extend([
        (
            "tokenizer.ggml.model".into(),
            Value::String(vocab.model.into()),
        ),
        ("tokenizer.ggml.pre".into(), Value::String(vocab.pre.into())),
        ("tokenizer.ggml.tokens".into(), strings(vocab.tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vocab.types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(tok.add_bos),
        ),
        (
            "tokenizer.chat_template".into(),
            Value::String(chat.source().to_string()),
        ),
    ]);
    if !vocab.merges.is_empty() {
        m.push(("tokenizer.ggml.merges".into(), strings(vocab.merges)));
    }
    if let Some(scores) = vocab.scores {
        let scores = scores.into_iter().map(Value::F32).collect();
        m.push(("tokenizer.ggml.scores".into(), Value::Array(scores)));
    }
    if let Some(space) = vocab.add_space_prefix {
        m.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(space)));
    }
    let ids = [
        ("bos_token_id", tok.bos_id),
        ("eos_token_id", tok.eos_id),
        ("unknown_token_id", vocab.unk),
    ];
    m.extend(
        ids.into_iter()
            .filter_map(|(k, id)| Some((format!("tokenizer.ggml.{k}"), Value::U32(id?)))),
    );
    Ok(m)
}

/// What [`write_with`] does besides writing the model.
#[derive(Clone, Copy, Default)]
pub struct WriteOptions<'a> {
    /// Applied to every tensor as it is written, by its name in [`Model::named_tensors`]
    /// (weight orthogonalization: [`crate::Orthogonalizer`]).
    pub map: Option<TensorMap<'a>>,
    /// Told the bytes written so far, and in all.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

/// Writes `model` as a GGUF file with `meta` (temporary file, then rename), each tensor
/// computed, stored and dropped in turn ([`steerkit_model::gguf::write`]). The file type and
/// quantization version keys are set here.
pub fn write(model: &Model, meta: &Metadata, ty: GgufType, out: &Path) -> Result<(), ModelError> {
    write_with(model, meta, ty, out, &WriteOptions::default())
}

/// [`write`], with each tensor through `opts.map` and progress told to `opts.progress`.
pub fn write_with(
    model: &Model,
    meta: &Metadata,
    ty: GgufType,
    out: &Path,
    opts: &WriteOptions,
) -> Result<(), ModelError> {
    let map = opts.map;
    // Granite 4's attention-only models compute what Granite's do: written as that (the MLP
    // unfused, under Granite's names), as llama.cpp's converter names them.
    let as_granite;
    let model = match model.cfg.arch {
        Arch::GraniteHybrid => {
            let mut m = model.clone();
            m.cfg.arch = Arch::Granite;
            as_granite = m;
            &as_granite
        }
        _ => model,
    };
    let heads = |name: &str| {
        if name.contains("q_proj") {
            Some(model.cfg.num_heads)
        } else if name.contains("k_proj") {
            Some(model.cfg.num_kv_heads)
        } else {
            None
        }
    };
    let arch = match meta.iter().find(|(k, _)| k == "general.architecture") {
        Some((_, Value::String(a))) => a.clone(),
        _ => {
            return Err(ModelError::Config(
                "GGUF metadata without general.architecture".into(),
            ))
        }
    };
    // Metadata first, so that a model GGUF cannot describe fails before any quantization.
    let mut tensors: Vec<Planned> = Vec::new();
    let mut own = vec![("general.quantization_version".to_string(), Value::U32(2))];
    // RoPE scaling, as llama.cpp reads it: linear scaling as a frequency scale in the metadata,
    // YaRN as its type, factor, original context and (when not the defaults) betas, any other
    // as one divisor per frequency (`rope_freqs.weight`). These keys are the writer's, so a
    // source file's are not carried over beside the other form.
    use steerkit_model::gguf::rope_keys as rk;
    let scaling_keys = [
        rk::TYPE,
        rk::FACTOR,
        rk::SCALE_LINEAR,
        rk::ORIGINAL_CONTEXT,
        rk::BETA_FAST,
        rk::BETA_SLOW,
        rk::ATTN_FACTOR,
    ]
    .map(|k| format!("{arch}.{k}"));
    match &model.cfg.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => own.extend([
            (scaling_keys[0].clone(), Value::String("linear".into())),
            (scaling_keys[1].clone(), Value::F32(*factor as f32)),
        ]),
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: ctx,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
        }) => {
            // llama.cpp computes the attention factor from the factor and rounds the ramp's
            // ends outwards; a model that does otherwise has no GGUF form it would read.
            // gpt-oss's does not round them (`truncate: false`); llama.cpp runs it rounded all
            // the same, as the files its own converter writes are (see the README).
            let standard = steerkit_model::config::yarn_attention_factor(*factor, None, None);
            let rounded = *truncate || model.cfg.arch == Arch::GptOss;
            if (attention_factor - standard).abs() > 1e-6 * standard || !rounded {
                return Err(ModelError::Config(format!(
                    "this model's YaRN scaling (attention factor {attention_factor}, truncate {truncate}) differs from llama.cpp's (attention factor {standard:.6}, ends rounded): it has no GGUF form; export it as safetensors"
                )));
            }
            let ctx = gguf_context("YaRN", *ctx)?;
            own.extend([
                (scaling_keys[0].clone(), Value::String("yarn".into())),
                (scaling_keys[1].clone(), Value::F32(*factor as f32)),
                (scaling_keys[3].clone(), Value::U32(ctx)),
            ]);
            if *beta_fast != 32.0 || *beta_slow != 1.0 {
                own.extend([
                    (scaling_keys[4].clone(), Value::F32(*beta_fast as f32)),
                    (scaling_keys[5].clone(), Value::F32(*beta_slow as f32)),
                ]);
            }
        }
        Some(RopeScaling::LongRope {
            long_factor: long,
            short_factor: short,
            original_max_position_embeddings: ctx,
            attention_factor: attn,
        }) => {
            own.extend([
                (
                    scaling_keys[3].clone(),
                    Value::U32(gguf_context("LongRoPE", *ctx)?),
                ),
                (scaling_keys[6].clone(), Value::F32(*attn as f32)),
            ]);
            let names = steerkit_model::gguf::LONGROPE_TENSORS;
            for (name, f) in names.iter().zip([long, short]) {
                let t = candle_core::Tensor::new(f.as_slice(), &Device::Cpu)?;
                tensors.push(Planned::ready(*name, t, Storage::F32));
            }
        }
        Some(_) => {
            let d = model.cfg.rope_divisors().expect("scaling has divisors");
            let t = candle_core::Tensor::new(d.as_slice(), &Device::Cpu)?;
            tensors.push(Planned::ready("rope_freqs.weight", t, Storage::F32));
        }
    }
    if ty == GgufType::Mxfp4Moe && model.cfg.moe.is_none() {
        return Err(ModelError::Input(format!(
            "MXFP4 stores a mixture's experts; this {} model has none: write f16 or q8_0",
            model.cfg.arch.name()
        )));
    }
    let mut named: Vec<(String, Lazy)> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| {
            let lazy = Lazy::mapped(&n, t, map);
            (n, lazy)
        })
        .collect();
    // llama.cpp's olmo2, gpt-oss and qwen2moe need a head of their own: a tied one is
    // written as a copy (of the embedding as it is, not as `map` makes it).
    let own_head =
        model.cfg.arch.olmo() || model.cfg.arch.gpt_oss() || model.cfg.arch == Arch::Qwen2Moe;
    if own_head && model.lm_head.is_none() {
        named.push(("lm_head.weight".into(), Lazy::ready(model.embed.clone())));
    }
    // Fused parts joined (Phi-3); the experts are stacked GGUF's way below.
    let named = steerkit_model::weights::fuse(&model.cfg, Layout::Gguf, named)?;
    // Each block's experts are stacked `[experts, rows, cols]` as GGUF stores them, when the
    // stack is written.
    let experts = model.cfg.moe.as_ref().map_or(0, |m| m.num_experts);
    let mut groups = Gathering::default();
    let mut any_mxfp4 = false;
    for (hf, t) in named {
        let (hf, t) = match steerkit_model::weights::expert_stack(&hf).filter(|_| experts > 0) {
            Some((group, e)) if e < experts => {
                let Some(parts) = groups.add(&group, experts, e, t) else {
                    continue;
                };
                let mut dims = vec![parts.len()];
                dims.extend(&parts[0].dims);
                let stack = |got: Vec<_>| Ok(candle_core::Tensor::stack(&got, 0)?);
                (group, Lazy::joined(parts, dims, stack))
            }
            _ => (hf, t),
        };
        let name = gguf_name(&hf, model.cfg.arch)
            .ok_or_else(|| ModelError::Weights(format!("no GGUF name for `{hf}`")))?;
        let shift = stored_norm_shift(model.cfg.arch, &name);
        let heads = heads(&hf).filter(|_| qk_permuted(model.cfg.arch));
        // The shared expert's gate, one row here, is a vector in GGUF (kept in f32).
        let flat = name.ends_with(".ffn_gate_inp_shexp.weight");
        let dims = match flat {
            true => vec![t.dims.iter().product()],
            false => t.dims.clone(),
        };
        // The router stays f32, as llama.cpp's converter and quantizer keep it: rounding it
        // changes which experts a token takes.
        // Biases stay f32 too, stacked ones (gpt-oss's experts') included: llama.cpp adds
        // them only in f32.
        let kept_f32 = name.ends_with("ffn_gate_inp.weight") || name.ends_with(".bias");
        let stack = name.ends_with("_exps.weight") && dims.len() == 3;
        let matrix = !kept_f32 && dims.len() >= 2;
        let cols = *dims.last().unwrap_or(&0);
        let storage = if ty == GgufType::Mxfp4Moe && stack && Storage::Mxfp4.fits(cols) {
            any_mxfp4 = true;
            Storage::Mxfp4
        } else if matrix && cols.is_multiple_of(32) {
            ty.storage()
        } else {
            Storage::F32
        };
        let make = move || -> Result<candle_core::Tensor, ModelError> {
            let mut t = t.get()?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            if shift != 0.0 {
                t = t.affine(1.0, shift)?;
            }
            if let Some(h) = heads {
                t = permute(&t, h)?;
            }
            if flat {
                t = t.flatten_all()?;
            }
            Ok(t)
        };
        tensors.push(Planned {
            name,
            dims,
            storage,
            make: Box::new(make),
        });
    }
    if let Some(group) = groups.incomplete() {
        return Err(ModelError::Weights(format!("`{group}` misses an expert")));
    }
    // No stack could be MXFP4 (no columns in whole blocks): the file is q8_0's.
    let file_type = match ty {
        GgufType::Mxfp4Moe if !any_mxfp4 => GgufType::Q8_0,
        _ => ty,
    };
    own.push((
        "general.file_type".into(),
        Value::U32(file_type.file_type()),
    ));
    let mut kv: Vec<(&str, &Value)> = meta
        .iter()
        .filter(|(k, _)| own.iter().all(|(o, _)| o != k) && !scaling_keys.contains(k))
        .map(|(k, v)| (k.as_str(), v))
        .chain(own.iter().map(|(k, v)| (k.as_str(), v)))
        .collect();
    kv.sort_by_key(|(k, _)| *k);
    steerkit_model::gguf::write::write(out, &kv, tensors, opts.progress.unwrap_or(&|_, _| {}))
}
