//! Hugging Face model folders (config.json, safetensors, tokenizer.json) and repo ids resolved
//! from the local Hugging Face cache.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::config::{Activation, Arch, Config, RopeScaling};
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::template::ChatTemplate;
use crate::tokenizer::Tok;

mod save;
pub use save::{save, save_folder, save_folder_as, FolderSave, SHARD_BYTES};

/// A Hugging Face model folder.
pub struct HfFolder {
    pub path: PathBuf,
    /// config.json, or for a multimodal model its text model's (see [`HfFolder::open`]).
    config: Value,
    tokenizer_config: Value,
    /// config.json's `model_type` when it describes a multimodal model whose text model is
    /// read (`gemma3`, `mistral3`).
    multimodal: Option<String>,
    /// config.json as stored (for a multimodal model, with the vision tower's configuration).
    stored_config: Value,
}

/// transformers' Gemma3TextConfig defaults for the keys that steerkit's reading of a
/// `gemma3_text` config needs and that the multimodal checkpoints leave out (Gemma 3 4B's
/// `text_config` names only its sizes, window and RoPE scaling).
const GEMMA3_TEXT_DEFAULTS: [(&str, u64); 5] = [
    ("vocab_size", 262_208),
    ("hidden_size", 2304),
    ("intermediate_size", 9216),
    ("num_hidden_layers", 26),
    ("num_attention_heads", 8),
];

/// The multimodal models whose text model steerkit reads: config.json's `model_type`, and the
/// text model's when `text_config` does not say.
const MULTIMODAL: [(&str, &str); 2] = [("gemma3", "gemma3_text"), ("mistral3", "mistral")];

/// The text model's configuration of a multimodal config.json (`model_type` gemma3 or
/// mistral3, with a `text_config`): the text config, with transformers' Gemma3TextConfig
/// defaults where a Gemma 3 one is silent, the top level's end-of-sequence ids where it has
/// none, and the head tied exactly when `head` (whether the files hold the text model's
/// `lm_head`) says so, or, when the files cannot be read, as the text config, else the top
/// level, says.
fn text_config(c: &Value, text_type: &str, head: Option<bool>) -> Value {
    let mut t = c["text_config"].clone();
    let o = t.as_object_mut().expect("checked: an object");
    o.entry("model_type")
        .or_insert_with(|| Value::String(text_type.into()));
    if text_type == "gemma3_text" {
        for (k, v) in GEMMA3_TEXT_DEFAULTS {
            o.entry(k).or_insert_with(|| v.into());
        }
    }
    for k in ["eos_token_id", "tie_word_embeddings"] {
        if let Some(v) = c.get(k) {
            o.entry(k).or_insert_with(|| v.clone());
        }
    }
    if let Some(head) = head {
        o.insert("tie_word_embeddings".into(), (!head).into());
    }
    t
}

fn read_json(path: &Path) -> Result<Value> {
    let s = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&s).map_err(|e| ModelError::BadFolder {
        path: path.into(),
        what: format!("invalid JSON: {e}"),
    })
}

impl HfFolder {
    /// Opens a folder; it must hold `config.json`. For a multimodal model (Gemma 3 4B and up:
    /// Gemma3ForConditionalGeneration; Mistral Small 3.1 and 3.2:
    /// Mistral3ForConditionalGeneration) the configuration is its text model's.
    pub fn open(path: &Path) -> Result<Self> {
        let cfg = path.join("config.json");
        if !cfg.is_file() {
            return Err(ModelError::BadFolder {
                path: path.into(),
                what: "no config.json".into(),
            });
        }
        let tc = path.join("tokenizer_config.json");
        let config = read_json(&cfg)?;
        let mut f = HfFolder {
            path: path.into(),
            stored_config: config.clone(),
            config,
            tokenizer_config: if tc.is_file() {
                read_json(&tc)?
            } else {
                Value::Null
            },
            multimodal: None,
        };
        let kind = f.config["model_type"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some((_, text_type)) = MULTIMODAL
            .iter()
            .find(|(k, _)| *k == kind && f.config["text_config"].is_object())
        {
            // transformers' tie flags for these disagree between versions and levels; the
            // files say whether there is a head of its own.
            let head = f.tensor_names().ok().map(|names| {
                names
                    .iter()
                    .any(|n| n == "language_model.lm_head.weight" || n == "lm_head.weight")
            });
            f.config = text_config(&f.config, text_type, head);
            f.multimodal = Some(kind);
        }
        Ok(f)
    }

    /// The multimodal model's `model_type` (`gemma3`, `mistral3`) when the folder holds one, of
    /// which steerkit reads the text model only: its vision tower and projector are neither
    /// loaded nor written back.
    pub fn multimodal(&self) -> Option<&str> {
        self.multimodal.as_deref()
    }

    /// The names of the tensors in the folder's safetensors files.
    fn tensor_names(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self.mmap()?.tensors().into_iter().map(|(n, _)| n).collect())
    }

    /// The folder's safetensors files, memory-mapped.
    fn mmap(&self) -> Result<MmapedSafetensors> {
        let files = self.weight_files()?;
        // Safety: the files are memory-mapped read-only; they must not change while in use.
        unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| ModelError::BadFolder {
            path: self.path.clone(),
            what: format!("unreadable safetensors: {e}"),
        })
    }

    /// The configuration from `config.json`.
    pub fn config(&self) -> Result<Config> {
        let c = &self.config;
        let arch = Arch::parse(
            c["model_type"]
                .as_str()
                .ok_or_else(|| ModelError::Config("config.json has no `model_type`".into()))?,
        )?;
        let u = |k: &str| -> Result<usize> {
            c[k].as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| ModelError::Config(format!("config.json has no integer `{k}`")))
        };
        // What the one block does not compute is an error, not silently wrong logits.
        let hidden_act = activation(c, arch)?;
        let (attn_logit_softcapping, final_logit_softcapping) = softcapping(c, arch)?;
        if c["use_bidirectional_attention"].as_bool() == Some(true) {
            return Err(ModelError::Config(
                "config.json asks for bidirectional attention (an embedding model); steerkit runs causal decoders".into(),
            ));
        }
        // transformers' defaults where config.json is silent.
        let (context, theta) = match arch {
            Arch::Gemma3 => (131_072, 1e6),
            Arch::Gemma2 => (8192, 10_000.0),
            Arch::Olmo2 | Arch::Granite | Arch::GraniteHybrid => (2048, 10_000.0),
            Arch::Olmo3 => (2048, OLMO3_THETA),
            Arch::Qwen2Moe => (32_768, 10_000.0),
            Arch::Mixtral => (131_072, 1e6),
            Arch::GptOss => (131_072, 150_000.0),
            _ => (4096, 10_000.0),
        };
        let max_position_embeddings =
            c["max_position_embeddings"].as_u64().unwrap_or(context) as usize;
        // transformers 5 writes RoPE's settings, its base included, as `rope_parameters`
        // (older versions: `rope_theta` and `rope_scaling` at the top); per layer type where
        // the blocks differ (Gemma 3: sliding_attention and full_attention).
        let params = &c["rope_parameters"];
        let per_type = params.get("full_attention").is_some();
        if arch == Arch::Olmo3 && params.is_object() && !per_type {
            return Err(ModelError::Config(
                "config.json's rope_parameters for olmo3 are not per layer type (full_attention, sliding_attention), as Olmo3Config reads them".into(),
            ));
        }
        // GptOssConfig's RoPE where config.json gives none: YaRN, factor 32 over 4096.
        let gpt_oss_yarn = serde_json::json!({
            "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "truncate": false, "original_max_position_embeddings": 4096
        });
        // Gemma 3's and OLMo 3's configuration classes read the per-type parameters only (keys
        // beside them are not read) and merge a top-level `rope_scaling` into the full
        // blocks'; a scaling named by `type` alone stays `default` there (transformers 5)
        // while older versions scaled, so that is refused rather than read one way.
        let two_ropes = matches!(arch, Arch::Gemma3 | Arch::Olmo3);
        let legacy = &c["rope_scaling"];
        if two_ropes && legacy.get("type").is_some() && legacy.get("rope_type").is_none() {
            return Err(ModelError::Config(format!(
                "config.json's rope_scaling names its kind as `type` ({}), which transformers 5 does not read for {} (its full blocks then rotate unscaled) and earlier versions did; write `rope_type`",
                legacy["type"],
                arch.name()
            )));
        }
        let merged = match per_type && two_ropes {
            true => {
                let mut full = params["full_attention"].clone();
                if let (Some(f), Some(extra)) = (full.as_object_mut(), legacy.as_object()) {
                    f.extend(extra.clone());
                }
                Some(full)
            }
            false => None,
        };
        let rope = match params {
            _ if merged.is_some() => merged.as_ref().expect("checked"),
            Value::Null if arch.gpt_oss() && c["rope_scaling"].is_null() => &gpt_oss_yarn,
            Value::Null => &c["rope_scaling"],
            // transformers' Phi-3 takes `rope_scaling` over `rope_parameters` when both are there.
            _ if arch == Arch::Phi3 && c["rope_scaling"].is_object() => &c["rope_scaling"],
            p if p.get("rope_type").is_some() || p.get("rope_theta").is_some() => p,
            _ => {
                return Err(ModelError::Config(
                    "config.json's rope_parameters are per layer type; steerkit implements one RoPE for every layer (and Gemma 3's two)".into(),
                ))
            }
        };
        // The sliding blocks' own base, unscaled: Gemma 3's (10,000 unless set) and OLMo 3's
        // (Olmo3Config's 500,000 unless set per layer type: it gives a top-level `rope_theta`
        // to the full-attention blocks only).
        let rope_local_theta = match arch {
            Arch::Gemma3 | Arch::Olmo3 if per_type => {
                let local = &params["sliding_attention"];
                if local["rope_type"].as_str().is_some_and(|t| t != "default") {
                    return Err(ModelError::Config(format!(
                        "config.json scales the sliding blocks' RoPE ({}); steerkit scales the full-attention blocks' only",
                        local["rope_type"]
                    )));
                }
                let base = match arch {
                    Arch::Olmo3 => OLMO3_THETA,
                    _ => 10_000.0,
                };
                Some(local["rope_theta"].as_f64().unwrap_or(base))
            }
            Arch::Gemma3 => Some(c["rope_local_base_freq"].as_f64().unwrap_or(10_000.0)),
            Arch::Olmo3 => match c["rope_theta"].as_f64() {
                // transformers 4.57, in which OLMo 3 came out, and llama.cpp's converter give
                // the sliding blocks the top-level base too; transformers 5 does not.
                Some(t) if t != OLMO3_THETA => {
                    return Err(ModelError::Config(format!(
                        "config.json's rope_theta {t} is the full-attention blocks' base only for transformers 5 (its sliding blocks take {OLMO3_THETA}), and every block's for transformers 4.57 and llama.cpp; write rope_parameters per layer type to say which"
                    )))
                }
                _ => Some(OLMO3_THETA),
            },
            _ => None,
        };
        // Partial rotation (Phi-4-mini): transformers' Phi-3 turns `int(head_dim * factor)`
        // dimensions; its other architectures here turn whole heads whatever the key says.
        let partial = rope["partial_rotary_factor"]
            .as_f64()
            .or(c["partial_rotary_factor"].as_f64())
            .filter(|f| *f != 1.0);
        if let Some(f) = partial.filter(|_| arch != Arch::Phi3) {
            return Err(ModelError::Config(format!(
                "config.json asks for partial_rotary_factor {f}, which transformers' {} does not read; steerkit turns part of each head for phi3 only",
                arch.name()
            )));
        }
        let rope_scaling = rope_scaling(rope, c, arch, max_position_embeddings)?;
        let rope_theta = rope["rope_theta"]
            .as_f64()
            .or(params["rope_theta"].as_f64().filter(|_| merged.is_none()))
            .or(c["rope_theta"].as_f64())
            .unwrap_or(theta);
        // An output-projection bias comes with `attention_bias` outside qwen2; there is none
        // in the one block.
        if c["mlp_bias"].as_bool() == Some(true) {
            return Err(ModelError::Config(
                "config.json sets mlp_bias, biases on the MLP's projections, which steerkit does not implement".into(),
            ));
        }
        // (Qwen2MoeConfig reads `qkv_bias` instead.)
        if !matches!(arch, Arch::Qwen2 | Arch::Qwen2Moe | Arch::GptOss)
            && c["attention_bias"].as_bool() == Some(true)
        {
            return Err(ModelError::Config(
                "config.json sets attention_bias, which gives this architecture an o_proj bias steerkit does not implement".into(),
            ));
        }
        if arch.gpt_oss() && c["attention_bias"].as_bool() == Some(false) {
            return Err(ModelError::Config(
                "config.json turns gpt-oss's attention biases off; steerkit implements gpt-oss with them".into(),
            ));
        }
        let hidden = u("hidden_size")?;
        let heads = u("num_attention_heads")?;
        let num_layers = u("num_hidden_layers")?;
        let (sliding_window, full_attention_layers) = sliding_window(c, arch, num_layers)?;
        // transformers' defaults: Gemma's 256, gpt-oss's 64 (hidden / heads for an explicit
        // null), hidden / heads otherwise.
        let absent = |k: &str| c.get(k).is_none();
        let head_dim = c["head_dim"].as_u64().map_or(
            match arch {
                _ if arch.gemma() => 256,
                Arch::GptOss if absent("head_dim") => 64,
                _ => hidden / heads.max(1),
            },
            |x| x as usize,
        );
        let cfg = Config {
            arch,
            vocab_size: u("vocab_size")?,
            hidden_size: hidden,
            // granitemoehybrid's MLP is its shared MLP.
            intermediate_size: match arch {
                Arch::GraniteHybrid => u("shared_intermediate_size")?,
                _ => u("intermediate_size")?,
            },
            num_layers,
            num_heads: heads,
            // transformers' defaults: Gemma's 4 heads of 256, gpt-oss's 8 of 64 (the heads
            // for an explicit null), the heads and hidden / heads otherwise.
            num_kv_heads: c["num_key_value_heads"].as_u64().map_or(
                match arch {
                    _ if arch.gemma() => 4,
                    Arch::GptOss if absent("num_key_value_heads") => 8,
                    _ => heads,
                },
                |x| x as usize,
            ),
            head_dim,
            // transformers' defaults: 1e-5 for Phi-3, OLMo 2 and Mixtral, 1e-6 for the others.
            rms_norm_eps: c["rms_norm_eps"].as_f64().unwrap_or(
                if matches!(
                    arch,
                    Arch::Phi3 | Arch::Olmo2 | Arch::Olmo3 | Arch::Mixtral | Arch::GptOss
                ) {
                    1e-5
                } else {
                    1e-6
                },
            ),
            rope_theta,
            max_position_embeddings,
            // transformers' default: tied for Gemma, untied otherwise.
            tie_word_embeddings: c["tie_word_embeddings"].as_bool().unwrap_or(arch.gemma()),
            // Qwen2MoeConfig's `qkv_bias`, on unless it says otherwise.
            attention_bias: match arch {
                Arch::Qwen2Moe => c["qkv_bias"].as_bool().unwrap_or(true),
                _ => matches!(arch, Arch::Qwen2 | Arch::GptOss),
            },
            rope_scaling,
            sliding_window,
            full_attention_layers,
            rope_local_theta,
            // Gemma 3's default.
            query_pre_attn_scalar: arch
                .gemma()
                .then(|| c["query_pre_attn_scalar"].as_f64().unwrap_or(256.0)),
            hidden_act,
            attn_logit_softcapping,
            final_logit_softcapping,
            rotary_dim: partial.map(|f| (head_dim as f64 * f) as usize),
            nope_layers: match arch {
                Arch::SmolLm3 => smollm3_nope_layers(c, num_layers)?,
                Arch::GraniteHybrid => granite_hybrid(c, num_layers)?,
                _ => vec![],
            },
            // GraniteConfig's defaults: 1 each.
            moe: match arch {
                // Without experts, transformers builds every block with a plain MLP.
                Arch::Qwen3Moe | Arch::Qwen2Moe
                    if c["num_experts"]
                        .as_u64()
                        .or(c["num_local_experts"].as_u64())
                        == Some(0) =>
                {
                    None
                }
                Arch::Qwen3Moe => Some(qwen_moe(c, arch, num_layers)?),
                // Qwen2MoeConfig's default shared expert: 5632 channels.
                Arch::Qwen2Moe => Some(crate::config::MoeConfig {
                    shared_intermediate_size: Some(
                        c["shared_expert_intermediate_size"]
                            .as_u64()
                            .unwrap_or(5632) as usize,
                    ),
                    ..qwen_moe(c, arch, num_layers)?
                }),
                // Mixtral's experts are of the configuration's intermediate size; its top
                // weights are always renormalized.
                Arch::Mixtral => Some(crate::config::MoeConfig {
                    num_experts: u("num_local_experts")?,
                    top_k: u("num_experts_per_tok")?,
                    intermediate_size: u("intermediate_size")?,
                    norm_topk_prob: true,
                    dense_layers: vec![],
                    shared_intermediate_size: None,
                }),
                // GptOssConfig's defaults (gpt-oss-20b's shape); `num_experts` is an alias.
                // Its softmax over the top logits is the softmax over all, renormalized.
                Arch::GptOss => Some(crate::config::MoeConfig {
                    num_experts: c["num_local_experts"]
                        .as_u64()
                        .or(c["num_experts"].as_u64())
                        .unwrap_or(128) as usize,
                    top_k: c["num_experts_per_tok"].as_u64().unwrap_or(4) as usize,
                    intermediate_size: u("intermediate_size")?,
                    norm_topk_prob: true,
                    dense_layers: vec![],
                    shared_intermediate_size: None,
                }),
                _ => None,
            },
            multipliers: arch.granite().then(|| {
                let get = |k: &str| c[k].as_f64().unwrap_or(1.0);
                crate::config::Multipliers {
                    embedding: get("embedding_multiplier"),
                    residual: get("residual_multiplier"),
                    attention: get("attention_multiplier"),
                    logits_scaling: get("logits_scaling"),
                }
            }),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The safetensors files of the folder (from the index when sharded).
    pub fn weight_files(&self) -> Result<Vec<PathBuf>> {
        let index = self.path.join("model.safetensors.index.json");
        let mut files: Vec<PathBuf> = if index.is_file() {
            let idx = read_json(&index)?;
            let map = idx["weight_map"]
                .as_object()
                .ok_or_else(|| ModelError::BadFolder {
                    path: index.clone(),
                    what: "no weight_map".into(),
                })?;
            let mut v: Vec<PathBuf> = map
                .values()
                .filter_map(|f| f.as_str())
                .map(|f| self.path.join(f))
                .collect();
            v.sort();
            v.dedup();
            v
        } else {
            let rd = std::fs::read_dir(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect()
        };
        files.sort();
        if files.is_empty() {
            return Err(ModelError::BadFolder {
                path: self.path.clone(),
                what: "no *.safetensors files".into(),
            });
        }
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(ModelError::BadFolder {
                path: self.path.clone(),
                what: format!("missing shard {}", missing.display()),
            });
        }
        Ok(files)
    }

    /// Loads the weights.
    pub fn model(&self, device: &Device, dtype: DType) -> Result<Model> {
        let cfg = self.config()?;
        let st = self.mmap()?;
        let names: std::collections::HashSet<String> =
            st.tensors().into_iter().map(|(n, _)| n).collect();
        let tied = cfg.tie_word_embeddings;
        let stored = stored_names(self.multimodal.is_some(), &names);
        let arch = cfg.arch;
        let get = crate::weights::with_fused(&cfg, crate::weights::Layout::Folder, |name: &str| {
            let name = &stored(&crate::weights::file_name(arch, name));
            if !names.contains(name) {
                return Ok(None);
            }
            let t = st.load(name, &Device::Cpu)?;
            // bf16 files loaded as bf16 keep their bits; anything else goes through f32.
            Ok(Some(match t.dtype() {
                DType::F32 => t,
                DType::BF16 if dtype == DType::BF16 => t,
                // MXFP4 blocks and scales (gpt-oss), decoded where they are cut.
                DType::U8 => t,
                _ => t.to_dtype(DType::F32)?,
            }))
        });
        crate::weights::build(cfg, device, dtype, get).map_err(|e| match e {
            ModelError::Weights(m) if !tied && m.contains("lm_head") => {
                ModelError::Weights(format!("{m} (config.json says tie_word_embeddings=false)"))
            }
            e => e,
        })
    }

    fn special(&self, key: &str) -> Option<String> {
        match &self.tokenizer_config[key] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
            _ => None,
        }
    }

    /// The tokenizer from `tokenizer.json` and the special tokens of `tokenizer_config.json`
    /// and `generation_config.json`.
    pub fn tokenizer(&self) -> Result<Tok> {
        let p = self.path.join("tokenizer.json");
        if !p.is_file() {
            return Err(ModelError::BadFolder {
                path: self.path.clone(),
                what: "no tokenizer.json".into(),
            });
        }
        let tk = Tokenizer::from_file(&p)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", p.display())))?;
        let id = |s: Option<String>| s.and_then(|s| tk.token_to_id(&s));
        let bos = id(self.special("bos_token"));
        let mut eos: Vec<u32> = id(self.special("eos_token")).into_iter().collect();
        // One id or a list of them.
        let ids = |v: &Value| -> Vec<u32> {
            match v {
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect(),
                v => v.as_u64().map(|x| x as u32).into_iter().collect(),
            }
        };
        let gen = self.path.join("generation_config.json");
        if gen.is_file() {
            eos.extend(ids(&read_json(&gen)?["eos_token_id"]));
        }
        if eos.is_empty() {
            eos.extend(ids(&self.config["eos_token_id"]));
        }
        let add_bos = self.tokenizer_config["add_bos_token"]
            .as_bool()
            .unwrap_or(false);
        Ok(Tok::new(tk, bos, &eos, add_bos))
    }

    /// The chat template from `tokenizer_config.json` or `chat_template.jinja`.
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        let src = match &self.tokenizer_config["chat_template"] {
            Value::String(s) => Some(s.clone()),
            Value::Array(a) => a
                .iter()
                .find(|t| t["name"] == "default")
                .or(a.first())
                .and_then(|t| t["template"].as_str())
                .map(String::from),
            _ => {
                let f = self.path.join("chat_template.jinja");
                f.is_file()
                    .then(|| std::fs::read_to_string(&f).map_err(|e| ModelError::io(&f, e)))
                    .transpose()?
            }
        };
        match src {
            Some(s) => ChatTemplate::new(
                &s,
                &self.special("bos_token").unwrap_or_default(),
                &self.special("eos_token").unwrap_or_default(),
            ),
            None => Ok(ChatTemplate::chatml()),
        }
    }
}

/// Qwen3-MoE's (and Qwen2-MoE's routed) mixture of experts, as their configuration classes
/// read config.json: `num_experts` (or
/// `num_local_experts`, as transformers 5 writes it), `num_experts_per_tok`,
/// `moe_intermediate_size`, `norm_topk_prob` (false when absent), and the blocks with a plain
/// MLP: those `mlp_only_layers` lists and those whose number plus one is not a multiple of
/// `decoder_sparse_step` (1 when absent).
fn qwen_moe(c: &Value, arch: Arch, num_layers: usize) -> Result<crate::config::MoeConfig> {
    let u = |k: &str| -> Result<usize> {
        c[k].as_u64().map(|x| x as usize).ok_or_else(|| {
            ModelError::Config(format!(
                "config.json has no integer `{k}` (a {} model)",
                arch.name()
            ))
        })
    };
    let num_experts = match c["num_experts"].as_u64() {
        Some(n) => n as usize,
        None => u("num_local_experts")?,
    };
    let step = c["decoder_sparse_step"].as_u64().unwrap_or(1).max(1) as usize;
    let only: Vec<usize> = c["mlp_only_layers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as usize)
                .collect()
        })
        .unwrap_or_default();
    Ok(crate::config::MoeConfig {
        num_experts,
        top_k: u("num_experts_per_tok")?,
        intermediate_size: u("moe_intermediate_size")?,
        norm_topk_prob: c["norm_topk_prob"].as_bool().unwrap_or(false),
        dense_layers: (0..num_layers)
            .filter(|l| only.contains(l) || !(l + 1).is_multiple_of(step))
            .collect(),
        shared_intermediate_size: None,
    })
}

/// What steerkit runs of a granitemoehybrid config.json: every block attention (`layer_types`
/// `attention`, as Granite-4.0-Micro; GraniteMoeHybridConfig's default is every block Mamba)
/// and no experts (`num_local_experts` 0; its default is 8); the blocks without RoPE: none
/// with `position_embedding_type` `rope`, else all (its default, none, turns nothing).
fn granite_hybrid(c: &Value, num_layers: usize) -> Result<Vec<usize>> {
    let types = c["layer_types"].as_array();
    let attention = |t: &Value| matches!(t.as_str(), Some("attention" | "full_attention"));
    if !types.is_some_and(|t| t.len() == num_layers && t.iter().all(attention)) {
        return Err(ModelError::Config(format!(
            "config.json's layer_types ({}) are not {num_layers} attention blocks: the hybrid Granite 4 models' Mamba blocks are not implemented (Granite-4.0-Micro, attention only, is)",
            c["layer_types"]
        )));
    }
    let experts = c["num_local_experts"].as_u64().unwrap_or(8);
    if experts > 0 {
        return Err(ModelError::Config(format!(
            "config.json gives this granitemoehybrid model {experts} experts (num_local_experts), which steerkit does not implement for it"
        )));
    }
    Ok(match c["position_embedding_type"].as_str() {
        Some("rope") => vec![],
        _ => (0..num_layers).collect(),
    })
}

/// SmolLM3's blocks without RoPE: those `no_rope_layers` marks 0, or, without the list, every
/// `no_rope_layer_interval`-th (4 unless set), as SmolLM3Config builds it.
fn smollm3_nope_layers(c: &Value, num_layers: usize) -> Result<Vec<usize>> {
    match c["no_rope_layers"].as_array() {
        Some(flags) => {
            if flags.len() != num_layers {
                return Err(ModelError::Config(format!(
                    "config.json's no_rope_layers has {} entries for {num_layers} layers",
                    flags.len()
                )));
            }
            Ok((0..num_layers)
                .filter(|&l| flags[l].as_u64() == Some(0) || flags[l].as_bool() == Some(false))
                .collect())
        }
        None => {
            let every = c["no_rope_layer_interval"].as_u64().unwrap_or(4).max(1) as usize;
            Ok((0..num_layers).filter(|l| (l + 1) % every == 0).collect())
        }
    }
}

/// Where a text model's tensor (`model.layers.0...`, `lm_head.weight`) is stored: under its own
/// name, or in a multimodal model under `language_model.` (the Hub's checkpoints, and what
/// transformers writes) or with `model.` replaced by `model.language_model.` (the names
/// transformers 4.52-4.57 used in memory), whichever the file holds.
fn stored_names(
    multimodal: bool,
    names: &std::collections::HashSet<String>,
) -> impl Fn(&str) -> String {
    let hub = names.iter().any(|n| n.starts_with("language_model."));
    move |name: &str| match (multimodal, hub, name.strip_prefix("model.")) {
        (false, _, _) => name.to_string(),
        (true, true, _) => format!("language_model.{name}"),
        (true, false, Some(rest)) => format!("model.language_model.{rest}"),
        (true, false, None) => name.to_string(),
    }
}

/// The MLP's activation: `hidden_act` (`hidden_activation` in Gemma's configs), silu for
/// every architecture but Gemma, whose is gelu's tanh approximation, and gpt-oss, whose is
/// its clamped SwiGLU (`swiglu_alpha`, `swiglu_limit`; 1.702 and 7 when absent; its
/// `hidden_act` is not read, as in transformers).
fn activation(c: &Value, arch: Arch) -> Result<Activation> {
    if arch.gpt_oss() {
        return Ok(Activation::SwigluOai {
            alpha: c["swiglu_alpha"].as_f64().unwrap_or(1.702),
            limit: c["swiglu_limit"].as_f64().unwrap_or(7.0),
        });
    }
    let (want, name, act) = match arch.gemma() {
        true => (
            "hidden_activation",
            "gelu_pytorch_tanh",
            Activation::GeluTanh,
        ),
        false => ("hidden_act", "silu", Activation::Silu),
    };
    let given = c[want].as_str().or(c["hidden_act"].as_str());
    match given {
        Some(a) if a != name => Err(ModelError::Config(format!(
            "config.json asks for activation `{a}`; steerkit implements {name} for {}",
            arch.name()
        ))),
        _ => Ok(act),
    }
}

/// Soft-capping of the attention scores and of the final logits: Gemma's
/// `attn_logit_softcapping` and `final_logit_softcapping` (null: none; absent: transformers'
/// defaults, 50 and 30 for Gemma 2, none for Gemma 3); refused for the other architectures.
fn softcapping(c: &Value, arch: Arch) -> Result<(Option<f64>, Option<f64>)> {
    let defaults = match arch {
        Arch::Gemma2 => (Some(50.0), Some(30.0)),
        _ => (None, None),
    };
    let read = |k: &str, default: Option<f64>| -> Result<Option<f64>> {
        let cap = match c.get(k) {
            None => default,
            Some(v) => v.as_f64(),
        };
        match cap {
            Some(x) if !arch.gemma() => Err(ModelError::Config(format!(
                "config.json asks for {k} {x}, which steerkit implements for Gemma only"
            ))),
            cap => Ok(cap),
        }
    };
    Ok((
        read("attn_logit_softcapping", defaults.0)?,
        read("final_logit_softcapping", defaults.1)?,
    ))
}

/// The sliding window and the blocks of the whole-context kind, as transformers reads
/// config.json. `sliding_window`: a number, `null` (no window) or absent (transformers' default,
/// 4096). Llama has no window. Mistral's is on every block. Qwen2's and Qwen3's is off unless
/// `use_sliding_window`, then on the blocks `layer_types` names, or else on those from
/// `max_window_layers` up. Gemma's is on the blocks `layer_types` names, or else on every
/// block but each `sliding_window_pattern`-th (Gemma 3, default 6), or on every other block
/// from the first (Gemma 2); OLMo 3's on the blocks `layer_types` names, or else on three of
/// every four. Gemma's and OLMo 3's kinds of block are kept without a window too, since they
/// also choose the RoPE.
fn sliding_window(c: &Value, arch: Arch, num_layers: usize) -> Result<(Option<usize>, Vec<usize>)> {
    let window = match c.get("sliding_window") {
        // Phi-3's and Mixtral's default is none, gpt-oss's 128.
        None if matches!(arch, Arch::Phi3 | Arch::Mixtral) => None,
        None if arch.gpt_oss() => Some(128),
        None => Some(4096),
        Some(Value::Null) => None,
        Some(w) => Some(w.as_u64().ok_or_else(|| {
            ModelError::Config(format!(
                "config.json's sliding_window is {w}, not a whole number"
            ))
        })? as usize),
    };
    // granitemoehybrid's `layer_types` say attention or Mamba (`granite_hybrid` checks
    // them), not windows.
    let types = match arch {
        Arch::GraniteHybrid => None,
        _ => layer_types(c, num_layers)?,
    };
    // The window on the blocks for which `sliding` says so; the others attend to everything.
    let on = |sliding: &dyn Fn(usize) -> bool| -> (Option<usize>, Vec<usize>) {
        let full: Vec<usize> = (0..num_layers).filter(|l| !sliding(*l)).collect();
        match window {
            Some(_) if full.len() < num_layers => (window, full),
            _ if arch.gemma() || arch == Arch::Olmo3 => (window, full),
            _ => (None, vec![]),
        }
    };
    Ok(match arch {
        Arch::Llama | Arch::Granite | Arch::Olmo2 | Arch::GraniteHybrid => (None, vec![]),
        Arch::SmolLm3 if c["use_sliding_window"].as_bool() == Some(true) => {
            return Err(ModelError::Config(
                "config.json asks for SmolLM3's sliding window (on its NoPE blocks), which steerkit does not implement".into(),
            ))
        }
        Arch::SmolLm3 => (None, vec![]),
        Arch::Qwen2Moe if c["use_sliding_window"].as_bool() == Some(true) => {
            return Err(ModelError::Config(
                "config.json asks for Qwen2-MoE's sliding window, which steerkit does not implement (the released models do not use it)".into(),
            ))
        }
        Arch::Qwen2Moe => (None, vec![]),
        Arch::Mistral | Arch::Phi3 | Arch::Mixtral => (window, vec![]),
        Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe
            if c["use_sliding_window"].as_bool() != Some(true) =>
        {
            (None, vec![])
        }
        _ if types.is_some() => {
            let types = types.as_ref().expect("checked");
            on(&|l| types[l])
        }
        Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe => {
            // transformers' default for Qwen2 and Qwen3 configs.
            let from = c["max_window_layers"].as_u64().unwrap_or(28) as usize;
            on(&|l| l >= from)
        }
        Arch::Gemma3 => {
            let every = c["sliding_window_pattern"].as_u64().unwrap_or(6).max(1) as usize;
            on(&|l| (l + 1) % every != 0)
        }
        // Olmo3Config's default: every fourth block attends to everything.
        Arch::Olmo3 => on(&|l| (l + 1) % 4 != 0),
        // Every other block from the first (Gemma 2's and gpt-oss's defaults).
        Arch::Gemma2 | Arch::GptOss => on(&|l| l % 2 == 0),
    })
    .and_then(|(w, full)| {
        // transformers cannot run a gpt-oss or an OLMo 3 whose sliding blocks have no window.
        let sliding = types.as_ref().is_none_or(|t| t.contains(&true));
        match (arch.gpt_oss() || arch == Arch::Olmo3) && w.is_none() && sliding {
            true => Err(ModelError::Config(format!(
                "config.json gives {}'s sliding blocks no window (sliding_window null), which transformers cannot run",
                arch.name()
            ))),
            false => Ok((w, full)),
        }
    })
}

/// Olmo3Config's RoPE base (`default_theta`).
const OLMO3_THETA: f64 = 500_000.0;

/// transformers 5's `layer_types`, as whether each block is of the sliding kind; `None` when
/// absent.
fn layer_types(c: &Value, num_layers: usize) -> Result<Option<Vec<bool>>> {
    let Some(types) = c["layer_types"].as_array() else {
        return Ok(None);
    };
    if types.len() != num_layers {
        return Err(ModelError::Config(format!(
            "config.json's layer_types names {} blocks of {num_layers}",
            types.len()
        )));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("sliding_attention") => Ok(true),
            Some("full_attention") => Ok(false),
            _ => Err(ModelError::Config(format!(
                "config.json's layer_types holds {t}; steerkit knows full_attention and sliding_attention"
            ))),
        })
        .collect::<Result<Vec<bool>>>()
        .map(Some)
}

/// config.json's `rope_scaling` (or transformers 5's `rope_parameters`, `v`): none, `default`,
/// `linear`, `llama3` (Llama 3.1 and 3.2), `yarn`, `longrope` (for Phi-3 also `su` and
/// `yarn`, which transformers reads as LongRoPE), or the divisors steerkit writes for a GGUF
/// source's `rope_freqs` that follow no named rule. Other kinds (dynamic, ...) are refused
/// rather than run with plain RoPE. YaRN reads its keys as transformers 5 does: `factor` as
/// given (transformers 4.4x-4.5x replaced it by `max_position_embeddings /
/// original_max_position_embeddings` when the latter is there), the original context from
/// the object or else `max_position_embeddings` (`max_pos`), `beta_fast`/`beta_slow` 32 and 1
/// unless set, and the attention factor from `attention_factor`, or `mscale`/`mscale_all_dim`,
/// or `factor`. LongRoPE's original context comes from the object or the top level of
/// config.json (`c`; Phi-3's default 4096), its attention factor from `attention_factor`, or
/// `factor`, or `max_pos` over the original context.
fn rope_scaling(v: &Value, c: &Value, arch: Arch, max_pos: usize) -> Result<Option<RopeScaling>> {
    if v.is_null() {
        return Ok(None);
    }
    // transformers 5's `rope_parameters` may hold only the base (`rope_theta`): plain RoPE.
    let untyped = if v.get("factor").is_none() {
        "default"
    } else {
        "?"
    };
    let kind = v["rope_type"]
        .as_str()
        .or(v["type"].as_str())
        .unwrap_or(untyped);
    let kind = match (arch, kind) {
        (Arch::Phi3, "su" | "yarn") => "longrope",
        (_, k) => k,
    };
    let num = |k: &str| {
        v[k].as_f64().ok_or_else(|| {
            ModelError::Config(format!(
                "config.json's {kind} rope_scaling has no number `{k}`"
            ))
        })
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        })),
        "yarn" => {
            let factor = num("factor")?;
            // As in transformers: a missing or zero beta takes the default.
            let opt = |k: &str| v[k].as_f64().filter(|x| *x != 0.0);
            Ok(Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: v["original_max_position_embeddings"]
                    .as_f64()
                    .unwrap_or(max_pos as f64),
                beta_fast: opt("beta_fast").unwrap_or(32.0),
                beta_slow: opt("beta_slow").unwrap_or(1.0),
                attention_factor: v["attention_factor"].as_f64().unwrap_or_else(|| {
                    crate::config::yarn_attention_factor(
                        factor,
                        v["mscale"].as_f64(),
                        v["mscale_all_dim"].as_f64(),
                    )
                }),
                truncate: v["truncate"].as_bool().unwrap_or(true),
            }))
        }
        "longrope" => {
            let factors = |k: &str| -> Result<Vec<f32>> {
                let a: Option<Vec<f32>> = v[k]
                    .as_array()
                    .map(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
                    .unwrap_or(None);
                a.ok_or_else(|| {
                    ModelError::Config(format!(
                        "config.json's longrope rope_scaling has no list of numbers `{k}`"
                    ))
                })
            };
            // transformers' Phi-3 takes the top level's (4096 when absent) over the object's.
            let ctx = match arch {
                Arch::Phi3 => Some(
                    c["original_max_position_embeddings"]
                        .as_f64()
                        .unwrap_or(4096.0),
                ),
                _ => v["original_max_position_embeddings"]
                    .as_f64()
                    .or(c["original_max_position_embeddings"].as_f64()),
            }
                .ok_or_else(|| {
                    ModelError::Config(
                        "config.json's longrope rope_scaling has no original_max_position_embeddings".into(),
                    )
                })?;
            let factor = v["factor"].as_f64().unwrap_or(max_pos as f64 / ctx);
            Ok(Some(RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: ctx,
                attention_factor: v["attention_factor"]
                    .as_f64()
                    .unwrap_or_else(|| crate::config::longrope_attention_factor(factor, ctx)),
            }))
        }
        "steerkit_divisors" => {
            let d: Option<Vec<f32>> = v["divisors"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
                .unwrap_or(None);
            d.map(|d| Some(RopeScaling::Divisors(d))).ok_or_else(|| {
                ModelError::Config("config.json's rope_scaling divisors are not numbers".into())
            })
        }
        other => Err(ModelError::Config(format!(
            "config.json asks for RoPE scaling `{other}`; steerkit implements plain RoPE, linear, llama3, yarn and longrope scaling only (its logits would be wrong)"
        ))),
    }
}

/// Resolves `owner/name` to a snapshot folder in the local Hugging Face cache through hf-hub.
/// Only cached files are used: nothing is downloaded.
pub fn resolve_repo(repo_id: &str) -> Result<PathBuf> {
    let (owner, name) = repo_id
        .split_once('/')
        .ok_or_else(|| ModelError::NotFound(repo_id.into()))?;
    let client = hf_hub::HFClientSync::new()
        .map_err(|e| ModelError::Config(format!("hf-hub client: {e}")))?;
    let repo = client.model(owner, name);
    let cfg = repo
        .download_file()
        .filename("config.json")
        .local_files_only(true)
        .send()
        .map_err(|e| {
            ModelError::NotFound(format!(
                "{repo_id} (not in the local Hugging Face cache: {e}; download it first, e.g. `hf download {repo_id}`)"
            ))
        })?;
    let dir = cfg
        .parent()
        .ok_or_else(|| ModelError::NotFound(repo_id.into()))?
        .to_path_buf();
    Ok(dir)
}
