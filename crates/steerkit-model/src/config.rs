//! The architecture description shared by every loader: what the forward pass needs to know.

use crate::error::{ModelError, Result};
use serde::Serialize;

/// Decoder families this runtime implements. They share one block; they differ in biases
/// and in how their GGUF files store the query/key rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama 2/3, SmolLM2, TinyLlama.
    Llama,
    /// Mistral (7B v0.1 attends over a sliding window of 4096 positions: `sliding_window`).
    Mistral,
    /// Qwen2 / Qwen2.5: biases on q, k and v.
    Qwen2,
    /// Qwen3 (dense): no biases; each query and key head is RMS-normed over the head
    /// dimension (`q_norm`, `k_norm`) before RoPE, and `head_dim` is set on its own (128 on
    /// every size, whatever `hidden_size / heads` is).
    Qwen3,
    /// Gemma 3, text only (`gemma3_text`: Gemma3ForCausalLM, the 1B model; of the larger,
    /// multimodal ones, `gemma3` folders, the text model is read). Per-head q/k norms as Qwen3; every norm multiplies by `1 + w`; the
    /// attention and MLP outputs are normed before they join the residual (post-norms); the
    /// embedding is scaled by `sqrt(hidden_size)`; a gelu (tanh) MLP; attention scaled by
    /// `query_pre_attn_scalar`; five blocks of six attend over a sliding window with a RoPE
    /// base of their own.
    Gemma3,
    /// Gemma 2 (`gemma2`): Gemma 3's conventions without the q/k norms and without a second
    /// RoPE; every other block attends over a sliding window; attention scores and the final
    /// logits are soft-capped (`cap tanh(x / cap)`).
    Gemma2,
    /// Phi-3 and Phi-4 (`phi3`: Phi3ForCausalLM): Llama's block, stored fused: q, k and v as
    /// one `qkv_proj`, gate and up as one `gate_up_proj` (rows concatenated in that order; see
    /// [`crate::weights::fused_parts`]). Phi-3-mini-4k attends over a sliding window of 2047
    /// positions. The 128k models and Phi-3.5-mini scale RoPE with LongRoPE
    /// ([`RopeScaling::LongRope`]); Phi-4-mini also rotates only part of each head
    /// ([`Config::rotary_dim`]).
    Phi3,
    /// IBM Granite 3 (`granite`: GraniteForCausalLM): Llama's block with four scalars: the
    /// embedding is multiplied by `embedding_multiplier`, each sublayer's output by
    /// `residual_multiplier` before it joins the residual, attention logits by
    /// `attention_multiplier` (in place of `head_dim^-1/2`), and the logits divided by
    /// `logits_scaling`.
    Granite,
    /// IBM Granite 4's attention-only models (`granitemoehybrid` whose every block is
    /// attention and which has no experts: Granite-4.0-Micro): Granite's block and four
    /// scalars, its MLP stored as `shared_mlp` (gate and up fused as `input_linear`, down as
    /// `output_linear`: [`crate::weights::fused_parts`], [`crate::weights::file_name`]), with
    /// RoPE or none (`position_embedding_type`). The hybrid models' Mamba blocks and the
    /// mixtures of experts are not implemented. GGUF files hold it as `granite`.
    #[serde(rename = "granitemoehybrid")]
    GraniteHybrid,
    /// SmolLM3 (`smollm3`): Llama's block, with no RoPE in the blocks `no_rope_layers` marks 0
    /// (every fourth: [`Config::nope_layers`]).
    SmolLm3,
    /// OLMo 2 (`olmo2`: Olmo2ForCausalLM): Llama's block with its norms moved: none before
    /// the attention and the MLP, an RMSNorm on each one's output before it joins the
    /// residual (`post_attention_layernorm`, `post_feedforward_layernorm`), and the queries
    /// and keys RMS-normed over the whole projection (all heads at once) before RoPE.
    Olmo2,
    /// OLMo 3 (`olmo3`: Olmo3ForCausalLM): OLMo 2's block; three blocks of four attend over a
    /// sliding window and rotate with plain RoPE of a base of their own
    /// ([`Config::rope_local_theta`]), every fourth over the whole context with the scaled
    /// RoPE (YaRN in the long-context models). GGUF files hold it as `olmo2` with a window.
    Olmo3,
    /// Qwen3's mixture-of-experts models (`qwen3_moe`: Qwen3-30B-A3B, Qwen3-235B-A22B):
    /// Qwen3's attention; in place of the MLP, a router picks each token's top experts
    /// ([`Config::moe`]), Llama-shaped MLPs whose outputs are summed with the router's
    /// softmax weights.
    #[serde(rename = "qwen3_moe")]
    Qwen3Moe,
    /// Qwen2's mixture-of-experts models (`qwen2_moe`: Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B):
    /// Qwen2's attention (q/k/v biases, `qkv_bias`); in place of the MLP, a router's top
    /// experts as in [`Arch::Qwen3Moe`] (weights left unnormalized in the released models)
    /// plus a shared expert every token takes, scaled per token by the sigmoid of its own
    /// one-row gate ([`MoeConfig::shared_intermediate_size`], [`crate::Experts::shared`]).
    /// GGUF files hold it as `qwen2moe`.
    #[serde(rename = "qwen2_moe")]
    Qwen2Moe,
    /// Mixtral (`mixtral`: Mixtral 8x7B, 8x22B): Mistral's attention with a mixture of experts
    /// in place of the MLP, the router's top-2 weights renormalized; its files keep the
    /// mixture under `block_sparse_moe` with the experts' gate, up and down as `w1`, `w3`,
    /// `w2` ([`crate::weights::file_name`]). GGUF files hold it as `llama` with experts.
    Mixtral,
    /// OpenAI's gpt-oss (`gpt_oss`: gpt-oss-20b, gpt-oss-120b): biases on q, k, v and o; a
    /// learned sink logit per head that joins each query's softmax and takes its share of the
    /// attention to nothing ([`crate::Block::sinks`]); every other block attends over a
    /// sliding window; in place of the MLP a router with a bias picks each token's top experts
    /// and weights them by the softmax of their logits, and each expert applies a clamped
    /// SwiGLU ([`Activation::SwigluOai`]) with biases on its projections. Its files keep the
    /// router as `mlp.router`, each block's experts stacked, gate and up interleaved in one
    /// `gate_up_proj` (`[experts, hidden, 2 * channels]`), or as MXFP4 blocks and scales
    /// (`gate_up_proj_blocks`, `gate_up_proj_scales`) as OpenAI ships them
    /// ([`crate::weights::gpt_oss_expert_source`]).
    #[serde(rename = "gpt_oss")]
    GptOss,
}

impl Arch {
    /// Parses an architecture name as written in GGUF metadata or `config.json` `model_type`.
    pub fn parse(name: &str) -> Result<Arch> {
        match name {
            "llama" => Ok(Arch::Llama),
            "mistral" => Ok(Arch::Mistral),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            "gemma3_text" => Ok(Arch::Gemma3),
            "gemma2" => Ok(Arch::Gemma2),
            "phi3" => Ok(Arch::Phi3),
            "granite" => Ok(Arch::Granite),
            "granitemoehybrid" => Ok(Arch::GraniteHybrid),
            "smollm3" => Ok(Arch::SmolLm3),
            "olmo2" => Ok(Arch::Olmo2),
            "olmo3" => Ok(Arch::Olmo3),
            "qwen3_moe" => Ok(Arch::Qwen3Moe),
            "qwen2_moe" => Ok(Arch::Qwen2Moe),
            "mixtral" => Ok(Arch::Mixtral),
            "gpt_oss" => Ok(Arch::GptOss),
            other => Err(ModelError::UnsupportedArch(other.to_string())),
        }
    }

    /// The architecture's name: config.json's `model_type`, and the prefix of GGUF metadata
    /// keys for those read from GGUF.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3_text",
            Arch::Gemma2 => "gemma2",
            Arch::Phi3 => "phi3",
            Arch::Granite => "granite",
            Arch::GraniteHybrid => "granitemoehybrid",
            Arch::SmolLm3 => "smollm3",
            Arch::Olmo2 => "olmo2",
            Arch::Olmo3 => "olmo3",
            Arch::Qwen3Moe => "qwen3_moe",
            Arch::Qwen2Moe => "qwen2_moe",
            Arch::Mixtral => "mixtral",
            Arch::GptOss => "gpt_oss",
        }
    }

    /// Granite's four scalars ([`Config::multipliers`]): granite and granitemoehybrid.
    pub fn granite(self) -> bool {
        matches!(self, Arch::Granite | Arch::GraniteHybrid)
    }

    /// Whether the attention's output projection, the router and the experts' projections
    /// have biases, and each head a sink logit (gpt_oss).
    pub fn gpt_oss(self) -> bool {
        self == Arch::GptOss
    }

    /// OLMo's block (olmo2, olmo3): its norms moved, the q/k norms over the whole projection.
    pub fn olmo(self) -> bool {
        matches!(self, Arch::Olmo2 | Arch::Olmo3)
    }

    /// Whether the blocks RMS-norm their queries and keys (`q_norm`, `k_norm`): each head
    /// (qwen3, gemma3) or the whole projection ([`Arch::qk_norm_whole`]: olmo).
    pub fn qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3) || self.olmo()
    }

    /// Whether the q/k norms take the whole projection, all heads at once (olmo: weights of
    /// `heads * head_dim` entries), rather than each head.
    pub fn qk_norm_whole(self) -> bool {
        self.olmo()
    }

    /// Whether the attention's and the MLP's outputs are normed before they join the residual
    /// (gemma, olmo).
    pub fn post_norms(self) -> bool {
        self.gemma() || self.olmo()
    }

    /// Whether the attention's and the MLP's inputs are normed (every architecture but olmo).
    pub fn pre_norms(self) -> bool {
        !self.olmo()
    }

    /// Gemma's conventions: norms multiply by `1 + w`, the attention and MLP outputs are normed
    /// before they are added to the residual (`post_attention_layernorm` is that norm, and the
    /// MLP's input norm is `pre_feedforward_layernorm`), the embedding is scaled by
    /// `sqrt(hidden_size)`.
    pub fn gemma(self) -> bool {
        matches!(self, Arch::Gemma3 | Arch::Gemma2)
    }

    /// What each norm weight is added to: 1 for Gemma (weights stored as offsets), else 0.
    pub fn norm_offset(self) -> f64 {
        if self.gemma() {
            1.0
        } else {
            0.0
        }
    }
}

/// The MLP's activation, applied to the gate projection.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x sigmoid(x)` (llama, mistral, qwen).
    #[default]
    Silu,
    /// gelu's tanh approximation, `gelu_pytorch_tanh` (gemma).
    GeluTanh,
    /// gpt-oss's clamped SwiGLU, which takes the up projection too: with `g` the gate
    /// clamped above at `limit` and `u` the up projection clamped to `[-limit, limit]`, the
    /// down projection's input is `(u + 1) g sigmoid(alpha g)` (gpt-oss: alpha 1.702, limit 7).
    SwigluOai { alpha: f64, limit: f64 },
}

impl Activation {
    fn is_silu(&self) -> bool {
        *self == Activation::Silu
    }
}

/// Hyper-parameters of a decoder-only transformer.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (qwen2).
    pub attention_bias: bool,
    /// Frequency-dependent RoPE scaling (Llama 3.1 and 3.2), or none. Left out of the
    /// serialized form when none, so that a model's fingerprint (which hashes it) is what it
    /// was before scaling existed, and older run folders still match their model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Sliding-window attention in every block: a query at position `p` attends to the keys at
    /// positions `p - w + 1 ..= p` only (Mistral 7B v0.1: 4096). `None`: the whole causal
    /// prefix. Left out of the serialized form when none (fingerprints, as for `rope_scaling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// The blocks of the whole-context kind (Gemma 3's every sixth block): no window, and the
    /// global RoPE. Empty: every block has the window, if there is one. Gemma keeps its kinds
    /// of block without a window too, since they also choose the RoPE base.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub full_attention_layers: Vec<usize>,
    /// RoPE base of the blocks with a sliding window, unscaled (Gemma 3: 10,000); `None`: they
    /// rotate as the others do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_local_theta: Option<f64>,
    /// Attention logits are scaled by `query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2`
    /// (Gemma).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
    /// The MLP's activation (left out of the serialized form when silu).
    #[serde(skip_serializing_if = "Activation::is_silu")]
    pub hidden_act: Activation,
    /// Soft-capping of the attention scores before the mask, `cap tanh(s / cap)` (Gemma 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// Soft-capping of the final logits (Gemma 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Partial rotation: RoPE turns the first `rotary_dim` dimensions of each query and key
    /// head (pairs `i` and `i + rotary_dim/2`) and passes the rest through (Phi-4-mini: 96 of
    /// 128; config.json's `partial_rotary_factor`, GGUF's `rope.dimension_count`). `None`:
    /// whole heads (left out of the serialized form, as for `rope_scaling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<usize>,
    /// The blocks whose attention turns nothing (NoPE: SmolLM3's every fourth block).
    /// Empty: every block rotates (left out of the serialized form then, as for
    /// `rope_scaling`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nope_layers: Vec<usize>,
    /// Granite's scalars ([`Arch::Granite`]); `None` elsewhere (left out of the serialized
    /// form then, as for `rope_scaling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multipliers: Option<Multipliers>,
    /// The mixture of experts in place of the MLP ([`Arch::Qwen3Moe`]); `None` elsewhere (left
    /// out of the serialized form then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeConfig>,
}

/// A mixture-of-experts MLP: per token, the router's softmax over `num_experts`, its `top_k`
/// largest (renormalized to sum to 1 when `norm_topk_prob`), and the sum of those experts'
/// outputs weighted by them. Each expert is Llama's gated MLP with `intermediate_size`
/// channels. The blocks in `dense_layers` have a plain MLP of the configuration's own
/// `intermediate_size` instead (Qwen3-MoE's `mlp_only_layers`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub top_k: usize,
    pub intermediate_size: usize,
    pub norm_topk_prob: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dense_layers: Vec<usize>,
    /// The channels of a shared expert beside the routed ones, which every token takes
    /// (Qwen2-MoE's `shared_expert_intermediate_size`); `None`: no shared expert (left out of
    /// the serialized form then, so that fingerprints are what they were before it existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_intermediate_size: Option<usize>,
}

/// Granite's four scalars (transformers' GraniteConfig names; each 1 when config.json is
/// silent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Multipliers {
    /// The embedding is multiplied by it.
    pub embedding: f64,
    /// Each sublayer's output is multiplied by it before it joins the residual.
    pub residual: f64,
    /// Attention logits are `q·k` times this (not `head_dim^-1/2`).
    pub attention: f64,
    /// The logits are divided by it.
    pub logits_scaling: f64,
}

/// RoPE scaling: each rotation frequency `θ^(-2i/d)` is divided by a factor of its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1's rule (`rope_type: llama3` in config.json): frequencies whose wavelength is
    /// over `original_max_position_embeddings / low_freq_factor` are divided by `factor`, those
    /// under `original_max_position_embeddings / high_freq_factor` are kept, and those between
    /// are interpolated.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Linear scaling (position interpolation, `rope_type: linear`): every frequency is
    /// divided by `factor`, as if positions were divided by it. llama.cpp writes it as
    /// `rope.scaling.type = linear` with `rope.scaling.factor`.
    Linear { factor: f64 },
    /// YaRN (`rope_type: yarn`; Qwen2.5 and Qwen3 beyond 32k tokens). Frequency `i` is kept
    /// when it turns more than `beta_fast` times over `original_max_position_embeddings`
    /// positions, divided by `factor` when it turns fewer than `beta_slow` times, and
    /// interpolated linearly in `i` between those two dimensions (rounded outwards unless
    /// `truncate` is false); cos and sin are multiplied by `attention_factor`
    /// (`0.1 ln(factor) + 1` unless config.json says otherwise), which scales attention
    /// logits by its square.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
    /// The divisors themselves, one per frequency, as llama.cpp stores them in a GGUF file
    /// (`rope_freqs.weight`).
    Divisors(Vec<f32>),
    /// LongRoPE (`rope_type: longrope`, or `su`; Phi-3's 128k models, Phi-3.5-mini, Phi-4-mini):
    /// two sets of divisors, `short_factor` for a forward pass whose positions all lie below
    /// `original_max_position_embeddings` and `long_factor` for one that goes past it, as
    /// transformers chooses them by the pass's largest position (steerkit chooses per row of
    /// a batch, so that a row computes the same alone as beside longer ones). A sequence
    /// past the original context uses the long factors at every position: generation runs
    /// the rows whole again when one crosses it (transformers' Phi-3 drops its cache there),
    /// and a shared prefix is not shared with such rows; cos and sin are multiplied
    /// by `attention_factor` (`sqrt(1 + ln(s) / ln(original))` with `s = max_position_embeddings
    /// / original` unless config.json says otherwise) in both. llama.cpp stores the two sets
    /// as `rope_factors_short.weight` and `rope_factors_long.weight`, and chooses between them
    /// by its context size instead.
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        original_max_position_embeddings: f64,
        attention_factor: f64,
    },
}

impl Config {
    /// The RoPE frequencies `θ^(-2i/d) / divisor_i`, `i < d / 2` with `d` the rotated
    /// dimensions ([`Config::rotated_dims`]), for a forward pass whose positions stay below the
    /// original context (LongRoPE's short factors). Without scaling the result is computed
    /// exactly as before scaling existed (f32 throughout).
    pub fn rope_frequencies(&self) -> Vec<f32> {
        self.rope_frequencies_for(0)
    }

    /// The RoPE frequencies of a forward pass whose largest position is `last`: LongRoPE's long
    /// factors when `last + 1` exceeds the original context, as transformers chooses them;
    /// [`Config::rope_frequencies`] for every other kind of scaling.
    pub fn rope_frequencies_for(&self, last: usize) -> Vec<f32> {
        let base = self.unscaled_frequencies(self.rope_theta);
        let past = self.longrope_context().is_some_and(|ctx| last >= ctx);
        let divisors = match &self.rope_scaling {
            Some(RopeScaling::LongRope { long_factor, .. }) if past => Some(long_factor.clone()),
            _ => self.rope_divisors(),
        };
        match divisors {
            Some(div) => base.iter().zip(div).map(|(f, d)| f / d).collect(),
            None => base,
        }
    }

    /// LongRoPE's original context: a pass whose largest position reaches it uses the long
    /// factors; `None` for every other RoPE.
    pub fn longrope_context(&self) -> Option<usize> {
        match &self.rope_scaling {
            Some(RopeScaling::LongRope {
                original_max_position_embeddings: ctx,
                ..
            }) => Some(*ctx as usize),
            _ => None,
        }
    }

    /// How many dimensions of each head RoPE turns: [`Config::rotary_dim`], else all.
    pub fn rotated_dims(&self) -> usize {
        self.rotary_dim.unwrap_or(self.head_dim)
    }

    /// The sliding window of block `layer`, if it has one.
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        self.sliding_window
            .filter(|_| !self.full_attention_layers.contains(&layer))
    }

    /// Whether block `layer` rotates with the local RoPE base ([`Config::rope_local_theta`]):
    /// the blocks of the sliding kind do (not in `full_attention_layers`), with a window or
    /// without, as in transformers.
    pub fn local_rope(&self, layer: usize) -> bool {
        self.rope_local_theta.is_some() && !self.full_attention_layers.contains(&layer)
    }

    /// The local RoPE frequencies `θ_local^(-2i/d)`, unscaled (f32, as [`Config::rope_frequencies`]).
    pub fn local_rope_frequencies(&self) -> Option<Vec<f32>> {
        Some(self.unscaled_frequencies(self.rope_local_theta?))
    }

    /// `θ^(-2i/d)` for `i < d / 2`, `d` the rotated dimensions, in f32.
    fn unscaled_frequencies(&self, theta: f64) -> Vec<f32> {
        let d = self.rotated_dims();
        (0..d / 2)
            .map(|i| 1.0 / (theta as f32).powf(2.0 * i as f32 / d as f32))
            .collect()
    }

    /// The factor attention logits are multiplied by: Granite's `attention_multiplier`,
    /// `query_pre_attn_scalar^-1/2` when set, else `head_dim^-1/2`.
    pub fn attention_scale(&self) -> f64 {
        if let Some(m) = self.multipliers {
            return m.attention;
        }
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// The factor RoPE's cos and sin are multiplied by: YaRN's or LongRoPE's attention factor,
    /// else 1.
    pub fn rope_attention_factor(&self) -> f64 {
        match self.rope_scaling {
            Some(RopeScaling::Yarn {
                attention_factor, ..
            })
            | Some(RopeScaling::LongRope {
                attention_factor, ..
            }) => attention_factor,
            _ => 1.0,
        }
    }

    /// RoPE frequency `i` before scaling, `θ^(-2i/d)`, in f64 (for the scaling rules).
    fn base_frequency(&self, i: usize) -> f64 {
        self.rope_theta
            .powf(-2.0 * i as f64 / self.rotated_dims() as f64)
    }

    /// The divisor of each RoPE frequency (llama.cpp's `rope_freqs`; LongRoPE's short
    /// factors), or `None` without scaling.
    pub fn rope_divisors(&self) -> Option<Vec<f32>> {
        let half = self.rotated_dims() / 2;
        match self.rope_scaling.as_ref()? {
            RopeScaling::Divisors(d) => Some(d.clone()),
            RopeScaling::LongRope { short_factor, .. } => Some(short_factor.clone()),
            RopeScaling::Linear { factor } => Some(vec![*factor as f32; half]),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: ctx,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                // The dimension index at which a frequency turns `turns` times over `ctx`.
                let d = self.rotated_dims() as f64;
                let dim_of = |turns: f64| {
                    d * (ctx / (turns * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * self.rope_theta.ln())
                };
                let (mut lo, mut hi) = (dim_of(*beta_fast), dim_of(*beta_slow));
                if *truncate {
                    (lo, hi) = (lo.floor(), hi.ceil());
                }
                let (lo, mut hi) = (lo.max(0.0), hi.min(d - 1.0));
                if lo == hi {
                    hi += 0.001;
                }
                Some(
                    (0..half)
                        .map(|i| {
                            let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                            (1.0 / (ramp / factor + 1.0 - ramp)) as f32
                        })
                        .collect(),
                )
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: lo,
                high_freq_factor: hi,
                original_max_position_embeddings: ctx,
            } => Some(
                (0..half)
                    .map(|i| {
                        let wavelen = 2.0 * std::f64::consts::PI / self.base_frequency(i);
                        if wavelen < ctx / hi {
                            1.0
                        } else if wavelen > ctx / lo {
                            *factor as f32
                        } else {
                            let smooth = (ctx / wavelen - lo) / (hi - lo);
                            (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                        }
                    })
                    .collect(),
            ),
        }
    }
}

impl Config {
    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if let Some(m) = &self.moe {
            if m.num_experts == 0 || m.top_k == 0 || m.top_k > m.num_experts {
                return bad(format!(
                    "a mixture of {} experts cannot route each token to {} of them",
                    m.num_experts, m.top_k
                ));
            }
            if m.intermediate_size == 0 {
                return bad("the experts' intermediate size must be positive".into());
            }
        }
        if self.num_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            return bad(format!(
                "layers ({}), hidden size ({}) and vocabulary ({}) must be positive",
                self.num_layers, self.hidden_size, self.vocab_size
            ));
        }
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return bad(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dimension {} must be even", self.head_dim));
        }
        // llama.cpp's phi3 takes q to span the hidden size (its fused attn_qkv is cut so),
        // and Phi-3's only RoPE scaling is LongRoPE.
        if self.arch == Arch::Phi3 && self.head_dim * self.num_heads != self.hidden_size {
            return bad(format!(
                "a phi3 model's heads ({} of {}) must span the hidden size {}",
                self.num_heads, self.head_dim, self.hidden_size
            ));
        }
        if let Some(r) = self.rotary_dim {
            if r == 0 || r > self.head_dim || !r.is_multiple_of(2) {
                return bad(format!(
                    "RoPE must turn an even number of a head's {} dimensions, at least 2 (rotary_dim {r})",
                    self.head_dim
                ));
            }
        }
        if self.arch == Arch::Phi3
            && !matches!(self.rope_scaling, None | Some(RopeScaling::LongRope { .. }))
        {
            return bad("a phi3 model's RoPE scaling is LongRoPE or none".into());
        }
        if let Some(m) = self.multipliers {
            let all = [m.embedding, m.residual, m.attention, m.logits_scaling];
            if all.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return bad(format!(
                    "Granite's multipliers must be positive and finite (embedding {}, residual {}, attention {}, logits scaling {})",
                    m.embedding, m.residual, m.attention, m.logits_scaling
                ));
            }
        }
        if let Some(s) = self.moe.as_ref().and_then(|m| m.shared_intermediate_size) {
            if self.arch != Arch::Qwen2Moe || s == 0 {
                return bad(format!(
                    "a shared expert of {s} channels in a {} model (qwen2_moe's only, with channels)",
                    self.arch.name()
                ));
            }
        }
        // granitemoehybrid turns every block or none.
        if self.arch == Arch::GraniteHybrid
            && !(self.nope_layers.is_empty() || self.nope_layers.len() == self.num_layers)
        {
            return bad(format!(
                "a granitemoehybrid model turns every block or none, not all but {:?}",
                self.nope_layers
            ));
        }
        if self.arch == Arch::Olmo3 && self.rope_local_theta.is_none() {
            return bad(
                "an olmo3 model's sliding blocks rotate with plain RoPE of a base of their own: rope_local_theta must be set".into(),
            );
        }
        if self.sliding_window == Some(0) {
            return bad("a sliding window of 0 positions attends to nothing".into());
        }
        if let Activation::SwigluOai { alpha, limit } = self.hidden_act {
            if !(alpha.is_finite() && alpha > 0.0 && limit.is_finite() && limit > 0.0) {
                return bad(format!(
                    "the clamped SwiGLU needs a positive finite alpha and limit (alpha {alpha}, limit {limit})"
                ));
            }
        }
        if let Some(l) = self.nope_layers.iter().find(|l| **l >= self.num_layers) {
            return bad(format!(
                "block {l} without RoPE does not exist (the model has {})",
                self.num_layers
            ));
        }
        if let Some(l) = self
            .full_attention_layers
            .iter()
            .find(|l| **l >= self.num_layers)
        {
            return bad(format!(
                "full-attention block {l} does not exist (the model has {})",
                self.num_layers
            ));
        }
        for (what, x) in [
            ("local RoPE base", self.rope_local_theta),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ] {
            if let Some(x) = x.filter(|x| !(x.is_finite() && *x > 0.0)) {
                return bad(format!("{what} must be positive and finite, not {x}"));
            }
        }
        match &self.rope_scaling {
            Some(RopeScaling::Divisors(d)) if d.len() != self.rotated_dims() / 2 => {
                return bad(format!(
                    "{} RoPE frequency divisors for {} rotated dimensions (needs {})",
                    d.len(),
                    self.rotated_dims(),
                    self.rotated_dims() / 2
                ));
            }
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: ctx,
                attention_factor,
            }) => {
                let half = self.rotated_dims() / 2;
                if short_factor.len() != half || long_factor.len() != half {
                    return bad(format!(
                        "LongRoPE needs {half} short and {half} long factors for {} rotated dimensions (has {} and {})",
                        self.rotated_dims(),
                        short_factor.len(),
                        long_factor.len()
                    ));
                }
                if long_factor
                    .iter()
                    .chain(short_factor)
                    .any(|x| !x.is_finite() || *x <= 0.0)
                    || !(*ctx >= 1.0 && ctx.is_finite())
                    || !(*attention_factor > 0.0 && attention_factor.is_finite())
                {
                    return bad(format!(
                        "LongRoPE needs positive finite factors, an original context of at least 1 and a positive attention factor (original context {ctx}, attention factor {attention_factor})"
                    ));
                }
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor: lo,
                high_freq_factor: hi,
                original_max_position_embeddings: ctx,
            }) if !(*factor > 0.0 && *lo > 0.0 && hi > lo && *ctx > 0.0) => {
                return bad(format!(
                    "llama3 RoPE scaling needs factor > 0 and 0 < low_freq_factor < high_freq_factor (factor {factor}, low {lo}, high {hi}, original context {ctx})"
                ));
            }
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: ctx,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            }) if !(*factor >= 1.0
                && *ctx > 0.0
                && *beta_slow > 0.0
                && beta_fast > beta_slow
                && *attention_factor > 0.0
                && attention_factor.is_finite()
                && factor.is_finite()
                && ctx.is_finite()
                && beta_fast.is_finite()) =>
            {
                return bad(format!(
                    "yarn RoPE scaling needs factor >= 1 and positive finite values with beta_fast > beta_slow (factor {factor}, original context {ctx}, beta_fast {beta_fast}, beta_slow {beta_slow}, attention factor {attention_factor})"
                ));
            }
            Some(RopeScaling::Linear { factor }) if factor.is_nan() || *factor <= 0.0 => {
                return bad(format!(
                    "linear RoPE scaling needs factor > 0 (factor {factor})"
                ));
            }
            _ => {}
        }
        // Divisors must be positive and finite; those of a rule are f32, where extreme
        // factors turn into 0 or infinity.
        if let Some(d) = self.rope_divisors() {
            if d.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                return bad(
                    "RoPE scaling gives divisors that are zero or not finite in f32".into(),
                );
            }
        }
        Ok(())
    }

    /// Number of parameters implied by the configuration (the LM head counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_heads * hd;
        let kv = self.num_kv_heads * hd;
        let norms =
            2 * usize::from(self.arch.pre_norms()) + 2 * usize::from(self.arch.post_norms());
        let mut block = d * q + 2 * d * kv + q * d + norms * d;
        if self.attention_bias {
            block += q + 2 * kv;
        }
        if self.arch.gpt_oss() {
            // The output projection's bias and a sink per head.
            block += d + self.num_heads;
        }
        if self.arch.qk_norm_whole() {
            block += q + kv;
        } else if self.arch.qk_norm() {
            block += 2 * hd;
        }
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        let mlps: usize = (0..self.num_layers)
            .map(|l| match (&self.moe, self.is_moe_layer(l)) {
                // gpt-oss: the router's bias and each expert's three biases too.
                (Some(m), true) if self.arch.gpt_oss() => {
                    m.num_experts
                        * (d + 1 + 3 * d * m.intermediate_size + 2 * m.intermediate_size + d)
                }
                (Some(m), true) => m.num_experts * (d + 3 * d * m.intermediate_size),
                _ => 3 * d * f,
            })
            .sum();
        self.vocab_size * d + self.num_layers * block + mlps + d + head
    }
}

impl Config {
    /// Whether block `layer`'s MLP is a mixture of experts.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| !m.dense_layers.contains(&layer))
    }

    /// The configuration as a Hugging Face `config.json` object.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let arch_class = match self.arch {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
            Arch::Gemma2 => "Gemma2ForCausalLM",
            Arch::Phi3 => "Phi3ForCausalLM",
            Arch::Granite => "GraniteForCausalLM",
            Arch::GraniteHybrid => "GraniteMoeHybridForCausalLM",
            Arch::SmolLm3 => "SmolLM3ForCausalLM",
            Arch::Olmo2 => "Olmo2ForCausalLM",
            Arch::Olmo3 => "Olmo3ForCausalLM",
            Arch::Qwen3Moe => "Qwen3MoeForCausalLM",
            Arch::Qwen2Moe => "Qwen2MoeForCausalLM",
            Arch::Mixtral => "MixtralForCausalLM",
            Arch::GptOss => "GptOssForCausalLM",
        };
        let mut j = serde_json::json!({
            "architectures": [arch_class],
            "model_type": self.arch.name(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "torch_dtype": "float32",
            "rope_scaling": self.rope_scaling.as_ref().map(|r| r.to_hf_json(self)),
        });
        match self.hidden_act {
            Activation::Silu => j["hidden_act"] = "silu".into(),
            // Gemma's configs name it so.
            Activation::GeluTanh => j["hidden_activation"] = "gelu_pytorch_tanh".into(),
            Activation::SwigluOai { alpha, limit } => {
                j["swiglu_alpha"] = alpha.into();
                j["swiglu_limit"] = limit.into();
            }
        }
        if self.arch.gpt_oss() {
            // GptOssConfig puts YaRN (factor 32) in place of absent RoPE parameters: they are
            // always written, in transformers 5's form.
            let mut p = match &self.rope_scaling {
                Some(r) => r.to_hf_json(self),
                None => serde_json::json!({"rope_type": "default"}),
            };
            p["rope_theta"] = self.rope_theta.into();
            j["rope_parameters"] = p;
            if let Some(o) = j.as_object_mut() {
                o.remove("rope_scaling");
            }
        }
        if self.arch == Arch::GraniteHybrid {
            // Every block attention, no experts, the MLP's width as the shared MLP's; RoPE
            // or none. The Mamba settings are unused; they are written so that
            // GraniteMoeHybridConfig's check (heads times head size = twice the hidden size)
            // holds.
            let inner = 2 * self.hidden_size;
            let heads = [128, 64, 32, 16, 8, 4, 2, 1]
                .into_iter()
                .find(|h| inner.is_multiple_of(*h))
                .unwrap_or(1);
            j["layer_types"] = vec!["attention"; self.num_layers].into();
            j["num_local_experts"] = 0.into();
            j["shared_intermediate_size"] = self.intermediate_size.into();
            j["position_embedding_type"] = match self.nope_layers.is_empty() {
                true => "rope".into(),
                false => serde_json::Value::Null,
            };
            j["mamba_expand"] = 2.into();
            j["mamba_n_heads"] = heads.into();
            j["mamba_d_head"] = (inner / heads).into();
        }
        if self.arch == Arch::Qwen2Moe {
            // Qwen2MoeConfig's name for the q/k/v biases (on unless it says otherwise).
            j["qkv_bias"] = self.attention_bias.into();
            if let Some(o) = j.as_object_mut() {
                o.remove("attention_bias");
            }
        }
        if self.arch == Arch::Olmo3 {
            // Per layer type, in transformers 5's form: Olmo3Config gives the sliding blocks
            // 500,000 whatever a top-level `rope_theta` says.
            let mut full = match &self.rope_scaling {
                Some(r) => r.to_hf_json(self),
                None => serde_json::json!({"rope_type": "default"}),
            };
            full["rope_theta"] = self.rope_theta.into();
            let local = self.rope_local_theta.unwrap_or(self.rope_theta);
            j["rope_parameters"] = serde_json::json!({
                "full_attention": full,
                "sliding_attention": {"rope_type": "default", "rope_theta": local},
            });
            if let Some(o) = j.as_object_mut() {
                o.remove("rope_scaling");
                o.remove("rope_theta");
            }
        }
        if let Some(s) = self.query_pre_attn_scalar {
            // An integer where it is one: transformers 5.24's Gemma configs refuse 8.0.
            j["query_pre_attn_scalar"] = context_json(s);
        }
        if self.arch == Arch::SmolLm3 {
            let flags: Vec<u8> = (0..self.num_layers)
                .map(|l| u8::from(!self.nope_layers.contains(&l)))
                .collect();
            j["no_rope_layers"] = flags.into();
        }
        if let Some(m) = self.multipliers {
            j["embedding_multiplier"] = m.embedding.into();
            j["residual_multiplier"] = m.residual.into();
            j["attention_multiplier"] = m.attention.into();
            j["logits_scaling"] = m.logits_scaling.into();
        }
        match (&self.moe, self.arch) {
            (Some(m), Arch::Mixtral | Arch::GptOss) => {
                j["num_local_experts"] = m.num_experts.into();
                j["num_experts_per_tok"] = m.top_k.into();
            }
            (Some(m), _) => {
                j["num_experts"] = m.num_experts.into();
                j["num_experts_per_tok"] = m.top_k.into();
                j["moe_intermediate_size"] = m.intermediate_size.into();
                j["norm_topk_prob"] = m.norm_topk_prob.into();
                j["decoder_sparse_step"] = 1.into();
                j["mlp_only_layers"] = m.dense_layers.clone().into();
                if let Some(s) = m.shared_intermediate_size {
                    j["shared_expert_intermediate_size"] = s.into();
                }
            }
            // A configuration without experts (every block plain).
            (None, Arch::Qwen3Moe | Arch::Qwen2Moe) => j["num_experts"] = 0.into(),
            (None, _) => {}
        }
        if let Some(r) = self.rotary_dim {
            // transformers turns `int(head_dim * factor)` dimensions: the factor must not
            // round below `r`.
            let hd = self.head_dim as f64;
            let f = match ((r as f64 / hd) * hd).floor() as usize == r {
                true => r as f64 / hd,
                false => (r as f64 + 0.5) / hd,
            };
            j["partial_rotary_factor"] = f.into();
        }
        // Phi-3's configuration class reads the original context at the top level (4096 when
        // absent), beside the rope_scaling object.
        if let Some(RopeScaling::LongRope {
            original_max_position_embeddings: ctx,
            ..
        }) = &self.rope_scaling
        {
            j["original_max_position_embeddings"] = context_json(*ctx);
        }
        if let Some(theta) = self.rope_local_theta.filter(|_| self.arch.gemma()) {
            j["rope_local_base_freq"] = theta.into();
        }
        if self.arch.gemma() {
            j["final_logit_softcapping"] = self.final_logit_softcapping.into();
            j["attn_logit_softcapping"] = self.attn_logit_softcapping.into();
        }
        let full = &self.full_attention_layers;
        let layer_types = || -> serde_json::Value {
            (0..self.num_layers)
                .map(|l| match full.contains(&l) {
                    true => "full_attention",
                    false => "sliding_attention",
                })
                .collect::<Vec<_>>()
                .into()
        };
        // transformers gives Mistral and Gemma a window of 4096 when the key is absent, so
        // theirs is always written, null for none; Gemma's kinds of block too.
        let window = self.sliding_window.is_some();
        // gpt-oss's: 128, and every other block windowed, when the keys are absent; OLMo 3's
        // 4096, and three blocks of four.
        let always = self.arch.gemma() || self.arch.gpt_oss() || self.arch == Arch::Olmo3;
        if window || matches!(self.arch, Arch::Mistral | Arch::Mixtral) || always {
            j["sliding_window"] = self.sliding_window.into();
        }
        if always || (window && !full.is_empty()) {
            j["layer_types"] = layer_types();
        }
        if window && matches!(self.arch, Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe) {
            // Qwen's configs switch the window on, from block `max_window_layers` up
            // (layer_types, when written, says the same or more).
            let leading = (0..self.num_layers)
                .take_while(|l| full.contains(l))
                .count();
            j["use_sliding_window"] = true.into();
            j["max_window_layers"] = leading.into();
        }
        j
    }
}

impl RopeScaling {
    /// config.json's `rope_scaling` object. Divisors from a GGUF file are written as a rule
    /// when they follow one: linear when they are all equal, llama3 (as Llama 3.1 and 3.2
    /// files) when the rule's boundaries, read off the divisors with `low_freq_factor` 1, give
    /// the same divisors back. Other divisors have no config.json form; they are written as
    /// `{"rope_type": "steerkit_divisors", "divisors": [...]}`, which steerkit reads back but
    /// transformers does not.
    pub fn to_hf_json(&self, cfg: &Config) -> serde_json::Value {
        match self {
            RopeScaling::Linear { factor } => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: ctx,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => {
                let mut j = serde_json::json!({
                    "rope_type": "yarn",
                    "factor": factor,
                    "original_max_position_embeddings": context_json(*ctx),
                    "beta_fast": beta_fast,
                    "beta_slow": beta_slow,
                    "attention_factor": attention_factor,
                });
                if !truncate {
                    j["truncate"] = serde_json::json!(false);
                }
                j
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: ctx,
            } => {
                let ctx = context_json(*ctx);
                serde_json::json!({
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": ctx,
                })
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: ctx,
                attention_factor,
            } => serde_json::json!({
                "rope_type": "longrope",
                "short_factor": short_factor,
                "long_factor": long_factor,
                "original_max_position_embeddings": context_json(*ctx),
                "attention_factor": attention_factor,
            }),
            // The recovered rules are linear or llama3, never divisors again.
            RopeScaling::Divisors(d) => match linear_rule(d).or_else(|| llama3_rule(cfg, d)) {
                Some(rule) => rule.to_hf_json(cfg),
                None => serde_json::json!({"rope_type": "steerkit_divisors", "divisors": d}),
            },
        }
    }
}

/// A context length (or another count) for config.json: an integer when it is one, as
/// transformers expects.
fn context_json(ctx: f64) -> serde_json::Value {
    if ctx.fract() == 0.0 && ctx > 0.0 && ctx < 1e15 {
        serde_json::json!(ctx as u64)
    } else {
        serde_json::json!(ctx)
    }
}

/// YaRN's attention factor when config.json gives none: `0.1 ln(factor) + 1` (1 for factors
/// up to 1), or with `mscale` and `mscale_all_dim` the ratio of that formula with each as the
/// multiplier of the logarithm (DeepSeek's form).
pub fn yarn_attention_factor(factor: f64, mscale: Option<f64>, mscale_all_dim: Option<f64>) -> f64 {
    let get = |m: f64| {
        if factor <= 1.0 {
            1.0
        } else {
            0.1 * m * factor.ln() + 1.0
        }
    };
    match (mscale, mscale_all_dim) {
        (Some(a), Some(b)) if a != 0.0 && b != 0.0 => get(a) / get(b),
        _ => get(1.0),
    }
}

/// LongRoPE's attention factor when config.json gives none: `sqrt(1 + ln(factor) /
/// ln(original_context))`, 1 for factors up to 1 (transformers' and llama.cpp's converter's
/// rule; `factor` is `max_position_embeddings / original_context` unless given).
pub fn longrope_attention_factor(factor: f64, original_context: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        (1.0 + factor.ln() / original_context.ln()).sqrt()
    }
}

/// Linear scaling, when every divisor is the same factor other than 1.
fn linear_rule(divisors: &[f32]) -> Option<RopeScaling> {
    let first = *divisors.first()?;
    (first != 1.0 && divisors.iter().all(|d| *d == first)).then_some(RopeScaling::Linear {
        factor: first as f64,
    })
}

/// The llama3 rule that gives `divisors` for `cfg`'s frequencies, if one does (to 1e-4
/// relative). The rule depends on its context length and frequency factors only through the
/// two boundary wavelengths, so `low_freq_factor` is set to 1 and the other two follow from
/// the interpolated frequencies (at least two are needed).
fn llama3_rule(cfg: &Config, divisors: &[f32]) -> Option<RopeScaling> {
    let half = cfg.head_dim / 2;
    let factor = divisors.iter().copied().fold(f32::MIN, f32::max) as f64;
    if divisors.len() != half || factor <= 1.0 {
        return None;
    }
    // Between the boundaries, 1/d = (1 - s)/factor + s with s = (ctx/λ - lo)/(hi - lo), which
    // is linear in 1/λ: s = a/λ + b. Two interpolated points give a and b.
    let pts: Vec<(f64, f64)> = divisors
        .iter()
        .enumerate()
        .filter(|(_, d)| (**d as f64) > 1.0 + 1e-6 && (**d as f64) < factor - 1e-6)
        .map(|(i, d)| {
            let s = (1.0 / *d as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
            (cfg.base_frequency(i) / (2.0 * std::f64::consts::PI), s)
        })
        .collect();
    let (&(x0, s0), &(x1, s1)) = (pts.first()?, pts.last()?);
    if pts.len() < 2 || (x1 - x0).abs() < 1e-12 {
        return None;
    }
    let a = (s1 - s0) / (x1 - x0);
    let b = s0 - a * x0;
    // s = (ctx/λ - lo)/(hi - lo) with lo = 1: a = ctx/(hi - 1), b = -1/(hi - 1).
    if b >= 0.0 {
        return None;
    }
    let hi = 1.0 - 1.0 / b;
    let ctx = a * (hi - 1.0);
    // The values as a config.json would write them (f32 divisors leave a few ulps), else
    // as recovered.
    let round = |x: f64, to: f64| (x * to).round() / to;
    let candidates = [
        (round(factor, 1e3), round(hi, 1e3), ctx.round()),
        (factor, hi, ctx),
    ];
    candidates.into_iter().find_map(|(factor, hi, ctx)| {
        let rule = RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: hi,
            original_max_position_embeddings: ctx,
        };
        let check = Config {
            rope_scaling: Some(rule.clone()),
            ..cfg.clone()
        };
        let back = check.rope_divisors()?;
        let same = back
            .iter()
            .zip(divisors)
            .all(|(x, y)| ((x - y) / y).abs() < 1e-4);
        same.then_some(rule)
    })
}
