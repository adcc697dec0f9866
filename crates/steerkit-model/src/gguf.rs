//! GGUF files: configuration, dequantized weights, tokenizer and chat template from one file.

pub mod mxfp4;
pub mod write;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use crate::config::{Arch, Config, RopeScaling};
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::template::ChatTemplate;
use crate::tokenizer::{bpe_from_gguf, spm_from_gguf, Tok};

/// An opened GGUF file (header and metadata read; tensors read on demand).
pub struct Gguf {
    path: PathBuf,
    content: Content,
    /// The tensors stored as MXFP4 (typed f32 in `content`; read by [`mxfp4`]).
    mxfp4: HashSet<String>,
}

impl Gguf {
    /// Reads the header and metadata.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let (content, mxfp4) = match Content::read(&mut BufReader::new(f)) {
            Ok(c) => (c, HashSet::new()),
            // GGML type 39, MXFP4: llama.cpp's converter writes gpt-oss's experts so.
            Err(e) if mxfp4::is_unknown_type(&e.to_string()) => mxfp4::read_header(path)?,
            Err(e) => {
                return Err(ModelError::BadGguf {
                    path: path.into(),
                    why: e.to_string(),
                })
            }
        };
        // Catch a truncated file here, with one message, rather than tensor by tensor.
        let size = std::fs::metadata(path)
            .map_err(|e| ModelError::io(path, e))?
            .len();
        // In u128: offsets near u64::MAX must not wrap round to a small end.
        let end = content
            .tensor_infos
            .iter()
            .map(|(name, t)| {
                let n = match mxfp4.contains(name) {
                    true => t.shape.elem_count() / 32 * crate::mxfp4::BLOCK_BYTES,
                    false => {
                        t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size()
                    }
                };
                u128::from(content.tensor_data_offset) + u128::from(t.offset) + n as u128
            })
            .max()
            .unwrap_or(0);
        let size = u128::from(size);
        if end > size {
            return Err(ModelError::BadGguf {
                path: path.into(),
                why: format!("truncated: the tensors need {end} bytes, the file has {size}"),
            });
        }
        Ok(Gguf {
            path: path.into(),
            content,
            mxfp4,
        })
    }

    fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn meta_u(&self, key: &str) -> Result<Option<usize>> {
        self.meta(key)
            .map(|v| {
                v.to_u64()
                    .or_else(|_| v.to_u32().map(u64::from))
                    .or_else(|_| v.to_i32().map(|x| x as u64))
                    .map(|x| x as usize)
                    .map_err(|_| ModelError::Config(format!("GGUF key `{key}` is not an integer")))
            })
            .transpose()
    }

    /// Key/value heads: one number, or one per block as llama.cpp's converter writes Granite
    /// 4's (0 for a Mamba block), which steerkit reads when every block has the same, not 0.
    fn kv_heads(&self, key: &str, blocks: usize) -> Result<Option<usize>> {
        let Some(Value::Array(per)) = self.meta(key) else {
            return self.meta_u(key);
        };
        let counts: Vec<u64> = per
            .iter()
            .map(|v| v.to_u32().map(u64::from).or_else(|_| v.to_u64()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| ModelError::Config(format!("GGUF key `{key}` holds a non-integer")))?;
        match counts.first() {
            Some(&n) if n > 0 && counts.len() == blocks && counts.iter().all(|c| *c == n) => {
                Ok(Some(n as usize))
            }
            _ => Err(ModelError::Config(format!(
                "GGUF key `{key}` gives the blocks {counts:?} key/value heads; steerkit reads {blocks} attention blocks of one count (a 0 is a Mamba block, which it does not implement)"
            ))),
        }
    }

    fn meta_f(&self, key: &str) -> Result<Option<f64>> {
        self.meta(key)
            .map(|v| {
                v.to_f32()
                    .map(f64::from)
                    .or_else(|_| v.to_f64())
                    .map_err(|_| ModelError::Config(format!("GGUF key `{key}` is not a number")))
            })
            .transpose()
    }

    fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta(key)
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
    }

    /// The array under `key`, if the key is there.
    fn array(&self, key: &str) -> Result<Option<&Vec<Value>>> {
        self.meta(key)
            .map(|v| {
                v.to_vec()
                    .map_err(|_| ModelError::Tokenizer(format!("`{key}` is not an array")))
            })
            .transpose()
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.array(key)?
            .ok_or_else(|| ModelError::Tokenizer(format!("GGUF has no `{key}`")))?
            .iter()
            .map(|x| {
                x.to_string()
                    .cloned()
                    .map_err(|_| ModelError::Tokenizer(format!("`{key}` holds a non-string")))
            })
            .collect()
    }

    /// The architecture name in `general.architecture`.
    pub fn arch_name(&self) -> Result<&str> {
        self.meta_str("general.architecture")
            .ok_or_else(|| ModelError::Config("GGUF has no general.architecture".into()))
    }

    /// The model configuration from metadata and tensor shapes.
    pub fn config(&self) -> Result<Config> {
        let name = self.arch_name()?;
        // In GGUF, `gemma3` is the text model (config.json's gemma3_text).
        let experts = format!("{name}.expert_count");
        let key = |k: &str| format!("{name}.{k}");
        // llama.cpp's converter writes OLMo 3 as `olmo2` with a sliding window, which llama.cpp
        // obeys.
        let window = self.meta_u(&key("attention.sliding_window"))?.unwrap_or(0);
        let arch = match name {
            "gemma3" => Arch::Gemma3,
            "olmo2" if window > 0 => Arch::Olmo3,
            "qwen3moe" => Arch::Qwen3Moe,
            "qwen2moe" => Arch::Qwen2Moe,
            "gpt-oss" => Arch::GptOss,
            // llama.cpp's converter writes Mixtral as llama with experts.
            "llama" if self.meta_u(&experts)?.is_some_and(|n| n > 0) => Arch::Mixtral,
            // llama.cpp's granite without RoPE (`rope.scaling.finetuned` false: Granite 4's
            // attention-only models without it), which only granitemoehybrid folders say.
            "granite" if self.no_rope(name) => Arch::GraniteHybrid,
            other => Arch::parse(other)?,
        };
        let req = |k: &str| -> Result<usize> {
            self.meta_u(&key(k))?
                .ok_or_else(|| ModelError::Config(format!("GGUF has no `{}`", key(k))))
        };
        let rope_scaling = self.rope_scaling(name)?;
        let num_layers = req("block_count")?;
        let hidden = req("embedding_length")?;
        let heads = req("attention.head_count")?;
        let kv_heads = self
            .kv_heads(&key("attention.head_count_kv"), num_layers)?
            .unwrap_or(heads);
        let head_dim = self
            .meta_u(&key("attention.key_length"))?
            .unwrap_or(hidden / heads.max(1));
        // Partial rotation (Phi-4-mini): llama.cpp turns the first `rope.dimension_count`
        // dimensions of each head. Architectures whose q/k rows are stored permuted for
        // interleaved RoPE have no such form steerkit reads.
        let rotated = key("rope.dimension_count");
        let rotary_dim = self.meta_u(&rotated)?.filter(|d| *d != head_dim);
        if let Some(d) = rotary_dim.filter(|_| qk_permuted(arch)) {
            return Err(ModelError::Config(format!(
                "the GGUF rotates {d} of each head's {head_dim} dimensions (`{rotated}`) of a {name} model, whose q/k rows are stored for interleaved RoPE; steerkit reads partial rotation in the other architectures only"
            )));
        }
        let vocab = match self.content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims()[0],
            None => {
                return Err(ModelError::Weights(
                    "missing tensor `token_embd.weight`".into(),
                ))
            }
        };
        if arch == Arch::GptOss {
            self.gpt_oss_keys(name, window)?;
        }
        let cfg = Config {
            arch,
            vocab_size: vocab,
            hidden_size: hidden,
            // llama.cpp's gpt-oss reads the experts' length only.
            intermediate_size: match arch {
                Arch::GptOss => self
                    .meta_u(&key("feed_forward_length"))?
                    .map_or_else(|| req("expert_feed_forward_length"), Ok)?,
                _ => req("feed_forward_length")?,
            },
            num_layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: self
                .meta_f(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: self.meta_f(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            max_position_embeddings: self.meta_u(&key("context_length"))?.unwrap_or(4096),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            rope_scaling,
            // llama.cpp runs llama, mistral and qwen without a window and its converter writes
            // none (Mistral 7B v0.1 included); so does steerkit.
            sliding_window: None,
            full_attention_layers: vec![],
            rope_local_theta: None,
            query_pre_attn_scalar: None,
            hidden_act: Default::default(),
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            rotary_dim,
            nope_layers: match arch {
                Arch::SmolLm3 => llamacpp_nope_layers(num_layers),
                Arch::GraniteHybrid => (0..num_layers).collect(),
                _ => vec![],
            },
            // llama.cpp's qwen3moe: every block routes, and renormalizes the chosen weights;
            // its qwen2moe does not renormalize them, and adds a shared expert of
            // `expert_shared_feed_forward_length` channels (else `feed_forward_length`).
            moe: match arch {
                // llama.cpp's widths when the keys are absent: the MLP's over the experts a
                // token takes, and the MLP's.
                Arch::Qwen2Moe => Some(crate::config::MoeConfig {
                    num_experts: req("expert_count")?,
                    top_k: req("expert_used_count")?,
                    intermediate_size: match self.meta_u(&key("expert_feed_forward_length"))? {
                        Some(n) if n > 0 => n,
                        _ => req("feed_forward_length")? / req("expert_used_count")?.max(1),
                    },
                    norm_topk_prob: false,
                    dense_layers: vec![],
                    shared_intermediate_size: Some(
                        match self.meta_u(&key("expert_shared_feed_forward_length"))? {
                            Some(n) if n > 0 => n,
                            _ => req("feed_forward_length")?,
                        },
                    ),
                }),
                Arch::Qwen3Moe | Arch::Mixtral | Arch::GptOss => Some(crate::config::MoeConfig {
                    num_experts: req("expert_count")?,
                    top_k: req("expert_used_count")?,
                    // Mixtral's experts have the MLP's width (`feed_forward_length`).
                    intermediate_size: match arch {
                        Arch::Mixtral => req("feed_forward_length")?,
                        _ => req("expert_feed_forward_length")?,
                    },
                    norm_topk_prob: true,
                    dense_layers: vec![],
                    shared_intermediate_size: None,
                }),
                _ => None,
            },
            multipliers: match arch {
                _ if arch.granite() => Some(self.granite_multipliers(name, head_dim)?),
                _ => None,
            },
        };
        let cfg = match arch {
            _ if arch.gemma() => self.gemma(cfg, name)?,
            Arch::GptOss => llamacpp_gpt_oss(cfg, window),
            Arch::Olmo3 => self.olmo3(cfg, name, window)?,
            _ => cfg,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// What llama.cpp reads for `gemma2` and `gemma3` (the window's width, the soft-caps) and
    /// what it fixes: with a window, every block but each sixth (gemma3) or every other block
    /// from the first (gemma2) has it, and gemma3's rotate with base 10,000, unscaled;
    /// attention is scaled as [`llamacpp_gemma_attn_scalar`] says; the MLP is gelu (tanh).
    fn gemma(&self, mut cfg: Config, name: &str) -> Result<Config> {
        let cap = |k: &str| -> Result<Option<f64>> {
            Ok(self.meta_f(&format!("{name}.{k}"))?.filter(|c| *c != 0.0))
        };
        cfg.attn_logit_softcapping = cap("attn_logit_softcapping")?;
        cfg.final_logit_softcapping = cap("final_logit_softcapping")?;
        if let Some(w) = self
            .meta_u(&format!("{name}.attention.sliding_window"))?
            .filter(|w| *w > 0)
        {
            cfg.sliding_window = Some(w);
            cfg.full_attention_layers = llamacpp_gemma_full_layers(cfg.arch, cfg.num_layers);
            cfg.rope_local_theta = llamacpp_gemma_local_theta(cfg.arch);
        }
        cfg.query_pre_attn_scalar = Some(llamacpp_gemma_attn_scalar(&cfg));
        cfg.hidden_act = crate::config::Activation::GeluTanh;
        Ok(cfg)
    }

    /// OLMo 3 as llama.cpp's olmo2 reads it: the window (`window`, over 0) on the blocks
    /// `attention.sliding_window_pattern` flags (booleans or 32-bit integers, as llama.cpp
    /// takes them; blocks past the list without it, entries past the blocks unread), or else
    /// on three of every `n` blocks (`n` that key as a number, 4 when absent), and those
    /// blocks rotated unscaled with the others' base. llama.cpp reads `rope.freq_base_swa` but
    /// does not use it: a file whose value differs is refused, since what it says and what
    /// llama.cpp computes disagree.
    fn olmo3(&self, mut cfg: Config, name: &str, window: usize) -> Result<Config> {
        let pattern = format!("{name}.attention.sliding_window_pattern");
        let n = cfg.num_layers;
        let sliding: Vec<bool> = match self.content.metadata.get(&pattern) {
            Some(Value::Array(flags)) => {
                let flags: Option<Vec<bool>> = flags
                    .iter()
                    .map(|f| match f {
                        Value::Bool(b) => Some(*b),
                        Value::U32(i) => Some(*i != 0),
                        Value::I32(i) => Some(*i != 0),
                        _ => None,
                    })
                    .collect();
                match flags {
                    Some(mut f) => {
                        f.resize(n, false);
                        f
                    }
                    _ => {
                        return Err(ModelError::Config(format!(
                            "the GGUF's `{pattern}` is not a flag for each of its {n} blocks"
                        )))
                    }
                }
            }
            _ => {
                let every = self.meta_u(&pattern)?.unwrap_or(4);
                (0..n)
                    .map(|l| every == 0 || l % every < every - 1)
                    .collect()
            }
        };
        cfg.sliding_window = Some(window);
        cfg.full_attention_layers = (0..n).filter(|l| !sliding[*l]).collect();
        let swa_base = format!("{name}.rope.freq_base_swa");
        if let Some(b) = self.meta_f(&swa_base)?.filter(|b| *b != cfg.rope_theta) {
            return Err(ModelError::Config(format!(
                "the GGUF gives OLMo 3's window blocks a RoPE base of their own (`{swa_base}` {b}), which llama.cpp's olmo2 does not use; steerkit does not guess which was meant"
            )));
        }
        cfg.rope_local_theta = Some(cfg.rope_theta);
        Ok(cfg)
    }

    /// What llama.cpp's gpt-oss reads beyond steerkit's fixed form: the window, which it
    /// requires (0 would hide every position on the windowed blocks), and, refused unless they
    /// say what steerkit computes, a window pattern other than every other block and a RoPE
    /// base of the windowed blocks' own.
    fn gpt_oss_keys(&self, name: &str, window: usize) -> Result<()> {
        if window == 0 {
            return Err(ModelError::Config(format!(
                "the gpt-oss GGUF has no `{name}.attention.sliding_window` (or 0), which llama.cpp requires"
            )));
        }
        let pattern = format!("{name}.attention.sliding_window_pattern");
        if let Some(v) = self.content.metadata.get(&pattern) {
            if v.to_u32().ok() != Some(2) && v.to_i32().ok() != Some(2) {
                return Err(ModelError::Config(format!(
                    "the GGUF sets `{pattern}`; steerkit reads gpt-oss with the window on every other block from the first only"
                )));
            }
        }
        let swa_base = format!("{name}.rope.freq_base_swa");
        let base = self.meta_f(&format!("{name}.rope.freq_base"))?;
        if let Some(b) = self.meta_f(&swa_base)?.filter(|b| Some(*b) != base) {
            return Err(ModelError::Config(format!(
                "the GGUF gives the windowed blocks a RoPE base of their own (`{swa_base}` {b}), which steerkit does not read for gpt-oss"
            )));
        }
        Ok(())
    }

    /// Whether a llama.cpp granite file turns off RoPE (`rope.scaling.finetuned` false).
    fn no_rope(&self, name: &str) -> bool {
        let key = format!("{name}.rope.scaling.finetuned");
        self.meta(&key).and_then(|v| v.to_bool().ok()) == Some(false)
    }

    /// Granite's scalars as llama.cpp stores and reads them: `embedding_scale`,
    /// `residual_scale` and `logit_scale` (absent or 0: no scaling, 1), and `attention.scale`
    /// (absent or 0: `head_dim^-1/2`).
    fn granite_multipliers(
        &self,
        arch: &str,
        head_dim: usize,
    ) -> Result<crate::config::Multipliers> {
        let get = |k: &str, none: f64| -> Result<f64> {
            Ok(self
                .meta_f(&format!("{arch}.{k}"))?
                .filter(|x| *x != 0.0)
                .unwrap_or(none))
        };
        Ok(crate::config::Multipliers {
            embedding: get(GRANITE_KEYS[0], 1.0)?,
            residual: get(GRANITE_KEYS[1], 1.0)?,
            attention: get(GRANITE_KEYS[2], 1.0 / (head_dim as f64).sqrt())?,
            logits_scaling: get(GRANITE_KEYS[3], 1.0)?,
        })
    }

    /// RoPE scaling as llama.cpp reads it. `yarn`: `rope.scaling.factor`, the original context
    /// (`rope.scaling.original_context_length`, else `context_length`) and the betas
    /// (`rope.scaling.yarn_beta_fast`/`_slow`, else 32 and 1), with llama.cpp's attention
    /// factor `0.1 ln(factor) + 1`; a file that sets its own attention factor, extrapolation
    /// factor or log multiplier is refused, as is YaRN together with `rope_freqs`. Otherwise a
    /// frequency scale `1 / rope.scaling.factor` (older files: `rope.scale_linear`) unless
    /// the type is another kind, and per-frequency divisors in `rope_freqs.weight`; both apply
    /// when both are there. Other kinds are refused rather than computing other logits than
    /// llama.cpp.
    fn rope_scaling(&self, arch: &str) -> Result<Option<RopeScaling>> {
        let key = |k: &str| format!("{arch}.{k}");
        let scaling = self.meta_str(&key(rope_keys::TYPE)).unwrap_or("linear");
        let has_divisors = self.content.tensor_infos.contains_key("rope_freqs.weight");
        // llama.cpp multiplies cos and sin by this one whatever the scaling type.
        let attn = key(rope_keys::ATTN_FACTOR);
        let attn_factor = self.meta_f(&attn)?;
        // LongRoPE (Phi-3's 128k models, Phi-3.5-mini, Phi-4-mini): a divisor per frequency
        // for short contexts and one for long, each in a tensor of its own.
        let (long, short) = (LONGROPE_TENSORS[0], LONGROPE_TENSORS[1]);
        let has = |t: &str| self.content.tensor_infos.contains_key(t);
        if has(long) || has(short) {
            if !(has(long) && has(short)) {
                return Err(ModelError::Config(format!(
                    "the GGUF holds only one of `{long}` and `{short}`: LongRoPE needs both"
                )));
            }
            if scaling == "yarn" || has_divisors {
                return Err(ModelError::Config(format!(
                    "the GGUF's LongRoPE factors come with {}, which steerkit does not implement (its logits would be wrong)",
                    if has_divisors { "rope_freqs.weight" } else { "YaRN scaling" }
                )));
            }
            let ctx = match self.meta_u(&key(rope_keys::ORIGINAL_CONTEXT))? {
                Some(c) => c,
                None => self.meta_u(&key("context_length"))?.unwrap_or(4096),
            };
            let factors = |t: &str| -> Result<Vec<f32>> {
                Ok(self.tensor(t)?.flatten_all()?.to_vec1::<f32>()?)
            };
            return Ok(Some(RopeScaling::LongRope {
                short_factor: factors(short)?,
                long_factor: factors(long)?,
                original_max_position_embeddings: ctx as f64,
                attention_factor: attn_factor.unwrap_or(1.0),
            }));
        }
        if attn_factor.is_some_and(|f| f != 1.0) {
            return Err(ModelError::Config(format!(
                "the GGUF sets `{attn}` without LongRoPE factors, which steerkit does not implement (its logits would be wrong)"
            )));
        }
        if scaling == "yarn" {
            let factor = self.meta_f(&key(rope_keys::FACTOR))?.ok_or_else(|| {
                ModelError::Config(format!(
                    "GGUF YaRN scaling without `{}`",
                    key(rope_keys::FACTOR)
                ))
            })?;
            // llama.cpp's converter writes config.json's attention factor as
            // `yarn_attn_factor` (OLMo 3's 1.2079 for factor 8), and llama.cpp computes the
            // factor from `factor` under YaRN whatever it says: the standard value is read,
            // another refused.
            let standard = crate::config::yarn_attention_factor(factor, None, None);
            let said_standard = |k: &String| {
                k.ends_with("yarn_attn_factor")
                    && self
                        .meta_f(k)
                        .ok()
                        .flatten()
                        .is_some_and(|v| (v - standard).abs() <= 1e-6 * standard)
            };
            let unknown: Vec<String> = [
                "rope.scaling.yarn_attn_factor",
                "rope.scaling.yarn_ext_factor",
                "rope.scaling.yarn_log_multiplier",
            ]
            .iter()
            .map(|k| key(k))
            .filter(|k| self.content.metadata.contains_key(k) && !said_standard(k))
            .collect();
            if !unknown.is_empty() || has_divisors {
                let what = if has_divisors {
                    "rope_freqs.weight".to_string()
                } else {
                    unknown.join(", ")
                };
                return Err(ModelError::Config(format!(
                    "the GGUF's YaRN RoPE scaling comes with {what}, which steerkit does not implement (its logits would be wrong)"
                )));
            }
            let ctx = match self.meta_u(&key(rope_keys::ORIGINAL_CONTEXT))? {
                Some(c) => c,
                None => self.meta_u(&key("context_length"))?.unwrap_or(4096),
            };
            return Ok(Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: ctx as f64,
                beta_fast: self.meta_f(&key(rope_keys::BETA_FAST))?.unwrap_or(32.0),
                beta_slow: self.meta_f(&key(rope_keys::BETA_SLOW))?.unwrap_or(1.0),
                attention_factor: standard,
                truncate: true,
            }));
        }
        if !matches!(scaling, "none" | "linear") {
            return Err(ModelError::Config(format!(
                "the GGUF asks for RoPE scaling `{scaling}`; steerkit implements plain RoPE, linear and YaRN scaling and per-frequency divisors (rope_freqs) only (its logits would be wrong)"
            )));
        }
        let factor = match self.meta_f(&key(rope_keys::FACTOR))? {
            Some(f) => Some(f),
            None => self.meta_f(&key(rope_keys::SCALE_LINEAR))?,
        }
        .filter(|f| *f != 0.0 && *f != 1.0);
        let divisors = if has_divisors {
            Some(
                self.tensor("rope_freqs.weight")?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            )
        } else {
            None
        };
        Ok(match (factor, divisors) {
            (None, None) => None,
            (Some(factor), None) => Some(RopeScaling::Linear { factor }),
            (None, Some(d)) => Some(RopeScaling::Divisors(d)),
            (Some(f), Some(d)) => Some(RopeScaling::Divisors(
                d.iter().map(|x| x * f as f32).collect(),
            )),
        })
    }

    /// One tensor, dequantized to f32 on the CPU.
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let mut f = File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        if self.mxfp4.contains(name) {
            return self.mxfp4_tensor(&mut f, name);
        }
        let q = self
            .content
            .tensor(&mut f, name, &Device::Cpu)
            .map_err(|e| ModelError::BadGguf {
                path: self.path.clone(),
                why: format!("tensor `{name}`: {e}"),
            })?;
        Ok(q.dequantize(&Device::Cpu)?)
    }

    /// An MXFP4 tensor, decoded to f32.
    fn mxfp4_tensor(&self, f: &mut File, name: &str) -> Result<Tensor> {
        let packed = self.mxfp4_packed(f, name)?;
        let bytes = packed.flatten_all()?.to_vec1::<u8>()?;
        let values = crate::mxfp4::decode(&bytes, crate::mxfp4::Order::Halves).map_err(|e| {
            ModelError::BadGguf {
                path: self.path.clone(),
                why: format!("tensor `{name}`: {e}"),
            }
        })?;
        let shape = self.content.tensor_infos[name].shape.clone();
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    /// An MXFP4 tensor's blocks as they are stored, `[.., rows, row_bytes]` (u8; each row
    /// of `cols` values is `cols / 32` blocks of [`crate::mxfp4::BLOCK_BYTES`]), for loaders that
    /// decode a part at a time ([`crate::weights::with_fused`]: an expert of a stack).
    fn mxfp4_packed(&self, f: &mut File, name: &str) -> Result<Tensor> {
        use std::io::{Read, Seek};
        let info = &self.content.tensor_infos[name];
        let bad = |why: String| ModelError::BadGguf {
            path: self.path.clone(),
            why: format!("tensor `{name}`: {why}"),
        };
        let mut dims = info.shape.dims().to_vec();
        let cols = dims.last().copied().unwrap_or(0);
        if !cols.is_multiple_of(32) || cols == 0 {
            return Err(bad(format!(
                "rows of {cols} MXFP4 values are not whole blocks of 32"
            )));
        }
        *dims.last_mut().expect("a dimension") = cols / 32 * crate::mxfp4::BLOCK_BYTES;
        // Within the file: open() checked every tensor's end against its size.
        let mut bytes = vec![0u8; dims.iter().product()];
        f.seek(std::io::SeekFrom::Start(
            self.content.tensor_data_offset + info.offset,
        ))
        .and_then(|_| f.read_exact(&mut bytes))
        .map_err(|e| bad(e.to_string()))?;
        Ok(Tensor::from_vec(bytes, dims, &Device::Cpu)?)
    }

    /// Dequantizes every tensor to f32 and builds the model (Q/K rows un-permuted for llama).
    pub fn model(&self, device: &Device, dtype: DType) -> Result<Model> {
        let cfg = self.config()?;
        if cfg.moe.is_some()
            && self
                .content
                .tensor_infos
                .contains_key("blk.0.ffn_gate.0.weight")
        {
            return Err(ModelError::Weights(
                "the GGUF stores each expert as a tensor of its own (llama.cpp's layout before 2024); steerkit reads the stacked `ffn_*_exps` layout: convert the model again with a current llama.cpp".into(),
            ));
        }
        let permuted = qk_permuted(cfg.arch);
        let (nh, nkv, arch) = (cfg.num_heads, cfg.num_kv_heads, cfg.arch);
        let get = crate::weights::with_fused(&cfg, crate::weights::Layout::Gguf, |hf: &str| {
            let Some(name) = gguf_name(hf, arch) else {
                return Ok(None);
            };
            if !self.content.tensor_infos.contains_key(&name) {
                return Ok(None);
            }
            // A stack of experts in MXFP4 is decoded an expert at a time by the loader.
            if self.mxfp4.contains(&name) && name.contains("_exps.") {
                let mut f = File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
                return Ok(Some(self.mxfp4_packed(&mut f, &name)?));
            }
            let mut t = self.tensor(&name)?;
            // The shared expert's gate is one row of a matrix here; GGUF holds it as a vector
            // (steerkit) or as `{hidden, 1}` (llama.cpp's converter).
            if name.ends_with(".ffn_gate_inp_shexp.weight") {
                t = t.reshape((1, t.elem_count()))?;
            }
            let shift = stored_norm_shift(arch, &name);
            if shift != 0.0 {
                t = t.affine(1.0, -shift)?;
            }
            let heads = if name.contains("attn_q.") {
                Some(nh)
            } else if name.contains("attn_k.") {
                Some(nkv)
            } else {
                None
            };
            match heads {
                Some(h) if permuted => Ok(Some(unpermute(&t, h)?)),
                _ => Ok(Some(t)),
            }
        });
        crate::weights::build(cfg, device, dtype, get)
    }

    /// The tokenizer described by the metadata.
    pub fn tokenizer(&self) -> Result<Tok> {
        let model = self.meta_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" && model != "llama" {
            return Err(ModelError::Tokenizer(format!(
                "GGUF tokenizer model `{model}` is not supported (supported: gpt2, byte-level BPE, and llama, SentencePiece); load the Hugging Face folder instead"
            )));
        }
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match self.array("tokenizer.ggml.token_type")? {
            Some(a) => a.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let id = |k: &str| -> Result<Option<u32>> { Ok(self.meta_u(k)?.map(|x| x as u32)) };
        let flag = |k: &str| self.meta(k).and_then(|v| v.to_bool().ok());
        let tk = if model == "llama" {
            let scores: Vec<f32> = self
                .array("tokenizer.ggml.scores")?
                .ok_or_else(|| ModelError::Tokenizer("GGUF has no `tokenizer.ggml.scores`".into()))?
                .iter()
                .map(|x| x.to_f32().unwrap_or(0.0))
                .collect();
            // llama.cpp's defaults for SentencePiece vocabularies: a space prefix.
            let space = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let unk = id("tokenizer.ggml.unknown_token_id")?;
            spm_from_gguf(&tokens, &scores, &types, unk, space)?
        } else {
            let merges = self.strings("tokenizer.ggml.merges")?;
            let pre = self.meta_str("tokenizer.ggml.pre").unwrap_or("default");
            bpe_from_gguf(pre, &tokens, &merges, &types)?
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let mut eos: Vec<u32> = id("tokenizer.ggml.eos_token_id")?.into_iter().collect();
        eos.extend(id("tokenizer.ggml.eot_token_id")?);
        // llama.cpp adds BOS by default for SentencePiece vocabularies, not for BPE ones.
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama");
        Ok(Tok::new(tk, bos, &eos, add_bos))
    }

    /// The chat template from `tokenizer.chat_template` (ChatML when absent).
    pub fn chat_template(&self, tok: &Tok) -> Result<ChatTemplate> {
        let name = |id: Option<u32>| id.and_then(|i| tok.token(i)).unwrap_or_default();
        match self.meta_str("tokenizer.chat_template") {
            Some(src) => ChatTemplate::new(src, &name(tok.bos_id), &name(tok.eos_id)),
            None => Ok(ChatTemplate::chatml()),
        }
    }

    /// The metadata key/values (tokenizer, template, hyper-parameters), for re-export.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Tensor types present in the file, with counts (for `inspect`).
    pub fn tensor_types(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (name, info) in &self.content.tensor_infos {
            let ty = match self.mxfp4.contains(name) {
                true => "MXFP4".to_string(),
                false => format!("{:?}", info.ggml_dtype),
            };
            *m.entry(ty).or_insert(0) += 1;
        }
        m
    }
}

/// llama.cpp stores llama q/k rows permuted for interleaved RoPE; this restores the
/// Hugging Face order used with half-rotation RoPE. Works for weights `[out, in]` and biases `[out]`.
pub fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let out = w.dim(0)?;
    let inner = w.elem_count() / out;
    let hd = out / heads;
    let t = w
        .reshape((heads, hd / 2, 2, inner))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(w.shape())?;
    Ok(t)
}

/// The inverse of [`unpermute`]: llama.cpp's row order for llama q/k.
pub fn permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let out = w.dim(0)?;
    let inner = w.elem_count() / out;
    let hd = out / heads;
    Ok(w.reshape((heads, 2, hd / 2, inner))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(w.shape())?)
}

/// What llama.cpp's gpt-oss fixes: its experts' SwiGLU (alpha 1.702, limit 7), a window (of
/// `window` positions, when there is one) on every other block from the first.
fn llamacpp_gpt_oss(mut cfg: Config, window: usize) -> Config {
    cfg.hidden_act = LLAMACPP_GPT_OSS_SWIGLU;
    if window > 0 {
        cfg.sliding_window = Some(window);
        cfg.full_attention_layers = (0..cfg.num_layers).filter(|l| l % 2 == 1).collect();
    }
    cfg
}

/// The clamped SwiGLU llama.cpp computes for gpt-oss whatever the file says.
pub const LLAMACPP_GPT_OSS_SWIGLU: crate::config::Activation =
    crate::config::Activation::SwigluOai {
        alpha: 1.702,
        limit: 7.0,
    };

/// Whether an architecture's GGUF files store q/k rows permuted.
pub fn qk_permuted(arch: Arch) -> bool {
    matches!(
        arch,
        Arch::Llama
            | Arch::Mistral
            | Arch::Granite
            | Arch::GraniteHybrid
            | Arch::SmolLm3
            | Arch::Mixtral
    )
}

/// What llama.cpp adds to the GGUF tensor `name` of an `arch` model: Gemma's norms are stored
/// as the factors `1 + w` (steerkit keeps `w`, the offset), everything else as it is.
pub fn stored_norm_shift(arch: Arch, name: &str) -> f64 {
    match name.ends_with("norm.weight") {
        true => arch.norm_offset(),
        false => 0.0,
    }
}

/// The RoPE base llama.cpp gives the window blocks of a Gemma model: 10,000 for gemma3, the
/// model's own for gemma2.
pub fn llamacpp_gemma_local_theta(arch: Arch) -> Option<f64> {
    (arch == Arch::Gemma3).then_some(10_000.0)
}

/// The blocks without a window in llama.cpp's Gemma models: every sixth (gemma3), every
/// second (gemma2).
pub fn llamacpp_gemma_full_layers(arch: Arch, num_layers: usize) -> Vec<usize> {
    let every = if arch == Arch::Gemma3 { 6 } else { 2 };
    (0..num_layers).filter(|l| (l + 1) % every == 0).collect()
}

/// The `query_pre_attn_scalar` llama.cpp implies for a Gemma model: `hidden / heads` for the
/// 27B models (62 blocks in gemma3, 46 in gemma2), `head_dim` otherwise.
pub fn llamacpp_gemma_attn_scalar(cfg: &Config) -> f64 {
    let big = if cfg.arch == Arch::Gemma3 { 62 } else { 46 };
    match cfg.num_layers {
        n if n == big => (cfg.hidden_size / cfg.num_heads) as f64,
        _ => cfg.head_dim as f64,
    }
}

/// The blocks llama.cpp's `smollm3` runs without RoPE: every fourth (a fixed step, no key).
pub fn llamacpp_nope_layers(num_layers: usize) -> Vec<usize> {
    (0..num_layers).filter(|l| (l + 1) % 4 == 0).collect()
}

/// llama.cpp's keys (after `{arch}.`) for Granite's embedding, residual and attention
/// multipliers and its logits scaling, in that order.
pub const GRANITE_KEYS: [&str; 4] = [
    "embedding_scale",
    "residual_scale",
    "attention.scale",
    "logit_scale",
];

/// LongRoPE's two sets of frequency divisors in a GGUF file, long then short.
pub const LONGROPE_TENSORS: [&str; 2] = ["rope_factors_long.weight", "rope_factors_short.weight"];

/// llama.cpp's RoPE scaling keys (after `{arch}.`): read by [`Gguf::config`], written by
/// GGUF exports.
pub mod rope_keys {
    pub const TYPE: &str = "rope.scaling.type";
    pub const FACTOR: &str = "rope.scaling.factor";
    /// Older files' linear factor.
    pub const SCALE_LINEAR: &str = "rope.scale_linear";
    pub const ORIGINAL_CONTEXT: &str = "rope.scaling.original_context_length";
    /// What llama.cpp multiplies RoPE's cos and sin by (LongRoPE's attention factor).
    pub const ATTN_FACTOR: &str = "rope.scaling.attn_factor";
    pub const BETA_FAST: &str = "rope.scaling.yarn_beta_fast";
    pub const BETA_SLOW: &str = "rope.scaling.yarn_beta_slow";
}

/// The GGUF tensor name of a Hugging Face tensor name of an `arch` model.
pub fn gguf_name(hf: &str, arch: Arch) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    if name == "self_attn.sinks" {
        return Some(format!("blk.{layer}.attn_sinks.weight"));
    }
    let (module, kind) = name.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        // Gemma's and OLMo 2's is the attention's output norm; Gemma's MLP input norm is the
        // next; gpt-oss's MLP input norm has that name.
        "post_attention_layernorm" if arch.post_norms() || arch.gpt_oss() => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        // Phi-3 files hold gate and up only fused, as `ffn_up`.
        "mlp.gate_proj" | "mlp.up_proj" if arch == Arch::Phi3 => return None,
        "self_attn.qkv_proj" => "attn_qkv",
        "mlp.gate_up_proj" => "ffn_up",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        // A mixture of experts: the router, and each matrix of every expert stacked
        // `[experts, rows, cols]` (named so by `weights::with_fused`).
        "mlp.gate" => "ffn_gate_inp",
        "mlp.experts.gate_proj" => "ffn_gate_exps",
        "mlp.experts.up_proj" => "ffn_up_exps",
        "mlp.experts.down_proj" => "ffn_down_exps",
        // Qwen2-MoE's shared expert and its gate.
        "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_expert.up_proj" => "ffn_up_shexp",
        "mlp.shared_expert.down_proj" => "ffn_down_shexp",
        "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}
