//! The decoder: weights as plain tensors and a forward pass with hook points.
//!
//! One block serves every architecture (they differ in biases, q/k norms, post-norms,
//! soft-caps, the MLP's activation, a mixture of experts in place of the MLP, and gpt_oss's
//! attention sinks; phi3's fused tensors are split at loading; see [`Arch`](crate::Arch)). Shapes are
//! written as `[batch, seq, hidden]` where they change. Sequences are left-padded: each row
//! has `pad` leading pad columns that no query may attend to; positions (for RoPE) count real
//! tokens only, so a padded row computes exactly what it would alone.

use candle_core::{DType, Device, Tensor, Var, D};

use crate::config::{Activation, Config};
use crate::error::{ModelError, Result};
use crate::hooks::{Hook, HookCtx, HookPoint, Site};

/// A linear map `y = x Wᵀ + b` with `W: [out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Applies the map to `x: [.., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inner = *dims.last().expect("linear input has a last dimension");
        let rows = x.elem_count() / inner;
        let x = x.reshape((rows, inner))?;
        let y = if self.weight.dtype() == DType::BF16 && x.dtype() == DType::F32 {
            // bf16 weights on the CPU (see `crate::bf16`).
            crate::bf16::matmul_t(&x, &self.weight)?
        } else {
            x.matmul(&self.weight.t()?)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("non-empty") = self.weight.dim(0)?;
        Ok(y.reshape(out)?)
    }

    fn tensors_mut(&mut self) -> impl Iterator<Item = &mut Tensor> {
        std::iter::once(&mut self.weight).chain(self.bias.as_mut())
    }
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct Block {
    /// The attention's input norm; `None` where the architecture has none (olmo2).
    pub attn_norm: Option<Tensor>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// RMSNorm weights of the queries and keys: per head, `[head_dim]` (qwen3, gemma3), or
    /// over the whole projection, `[heads * head_dim]` (olmo2); else `None`.
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    /// Each query head's sink logit `[heads]` (gpt_oss): a column of the attention's softmax
    /// with no value behind it, so that a head may attend to nothing; else `None`.
    pub sinks: Option<Tensor>,
    /// The MLP's input norm; `None` where the architecture has none (olmo2).
    pub mlp_norm: Option<Tensor>,
    /// The MLP: gated, or a mixture of gated experts.
    pub mlp: Mlp,
    /// Norms of the attention's and the MLP's outputs before they join the residual (gemma),
    /// else `None`.
    pub post_attn_norm: Option<Tensor>,
    pub post_mlp_norm: Option<Tensor>,
}

/// `0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))` from differentiable primitives.
/// `t` in f32 when it is in a half-precision dtype (f16, bf16), else unchanged (f32, and f64
/// for gradient checks): where sums, softmaxes and norms of half-precision values are taken.
pub fn widened(t: &Tensor) -> candle_core::Result<Tensor> {
    match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    }
}

fn gelu_tanh(x: &Tensor) -> candle_core::Result<Tensor> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = ((x + ((x.sqr()? * x)? * 0.044715)?)? * c)?;
    (x * 0.5)? * (inner.tanh()? + 1.0)?
}

/// Llama's gated MLP, `down(act(gate(h)) * up(h))`.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// A mixture of experts ([`crate::MoeConfig`]): the router's weights `[experts, hidden]`, its
/// bias `[experts]` where the architecture has one (gpt_oss), the experts, and the shared
/// expert where there is one (qwen2_moe).
#[derive(Debug, Clone)]
pub struct Experts {
    pub router: Tensor,
    pub router_bias: Option<Tensor>,
    pub experts: Vec<GatedMlp>,
    pub shared: Option<SharedExpert>,
}

/// An expert every token takes, its output scaled per token by `sigmoid(x gateᵀ)` (Qwen2-MoE's
/// `shared_expert` and `shared_expert_gate`, `gate`: a map to one value, `[1, hidden]`), added
/// to the routed experts' sum.
#[derive(Debug, Clone)]
pub struct SharedExpert {
    pub mlp: GatedMlp,
    pub gate: Linear,
}

/// Which rows of a mixture's input go to which expert ([`Model::route`]).
struct Routing {
    /// The row of each (row, expert) pair, grouped by expert.
    rows: Tensor,
    /// Each pair's weight.
    weights: Tensor,
    /// Each expert's pairs: `(start, len)` in `rows`.
    spans: Vec<(usize, usize)>,
}

/// A block's MLP.
#[derive(Debug, Clone)]
pub enum Mlp {
    Dense(GatedMlp),
    Moe(Experts),
}

impl GatedMlp {
    /// The output, `down(act(h Gᵀ) * (h Uᵀ))`.
    fn forward(&self, h: &Tensor, act: Activation, mode: Mode) -> Result<Tensor> {
        self.down.forward(&self.act(h, act, mode)?)
    }

    /// The input to the down projection, `act(h Gᵀ) * (h Uᵀ)` (gpt-oss's clamped SwiGLU:
    /// [`Activation::SwigluOai`]).
    fn act(&self, h: &Tensor, act: Activation, mode: Mode) -> Result<Tensor> {
        let g = self.gate.forward(h)?;
        if let Activation::SwigluOai { alpha, limit } = act {
            // `g sigmoid(alpha g)` is `silu(alpha g) / alpha` (silu has a gradient in candle).
            let g = g.minimum(limit)?;
            let glu = ((&g * alpha)?.silu()? / alpha)?;
            let u = self.up.forward(h)?.clamp(-limit, limit)?;
            return Ok(((u + 1.0)? * glu)?);
        }
        let g = match (act, mode) {
            (Activation::Silu, _) => g.silu()?,
            (Activation::GeluTanh, Mode::Inference) => g.gelu()?,
            // candle's backward of `gelu` rounds its constants to six digits (gradients off
            // by up to about 2e-4 relative); built from tanh, the gradient is exact.
            (Activation::GeluTanh, Mode::Differentiable) => gelu_tanh(&g)?,
            (Activation::SwigluOai { .. }, _) => unreachable!("computed above"),
        };
        Ok((g * self.up.forward(h)?)?)
    }

    fn named_linears_mut(&mut self) -> [(&'static str, &mut Linear); 3] {
        [
            ("gate_proj", &mut self.gate),
            ("up_proj", &mut self.up),
            ("down_proj", &mut self.down),
        ]
    }
}

impl Block {
    /// The block's MLP when it is a plain (dense) one.
    pub fn dense(&self) -> Option<&GatedMlp> {
        match &self.mlp {
            Mlp::Dense(m) => Some(m),
            Mlp::Moe(_) => None,
        }
    }

    /// [`Block::dense`], mutable.
    pub fn dense_mut(&mut self) -> Option<&mut GatedMlp> {
        match &mut self.mlp {
            Mlp::Dense(m) => Some(m),
            Mlp::Moe(_) => None,
        }
    }

    /// Every matrix (and bias) that writes into the residual stream: the attention's output
    /// projection and the MLP's down projection, or every expert's.
    pub fn residual_writers_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = vec![&mut self.o];
        match &mut self.mlp {
            Mlp::Dense(m) => out.push(&mut m.down),
            Mlp::Moe(e) => {
                out.extend(e.experts.iter_mut().map(|x| &mut x.down));
                out.extend(e.shared.as_mut().map(|s| &mut s.mlp.down));
            }
        }
        out
    }

    /// Every tensor of the block with its Hugging Face name suffix (after `model.layers.N.`),
    /// mutable so that trainers can swap in variables. With post-norms (gemma, olmo2) the
    /// MLP's input norm, if any, is `pre_feedforward_layernorm` and `post_attention_layernorm`
    /// is the attention's output norm; without, `post_attention_layernorm` is the MLP's input
    /// norm.
    pub fn named_tensors_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mlp_norm = match self.post_attn_norm {
            Some(_) => "pre_feedforward_layernorm.weight",
            None => "post_attention_layernorm.weight",
        };
        let mut out: Vec<(String, &mut Tensor)> = vec![];
        for (name, norm) in [
            ("input_layernorm.weight", &mut self.attn_norm),
            (mlp_norm, &mut self.mlp_norm),
            ("post_attention_layernorm.weight", &mut self.post_attn_norm),
            ("post_feedforward_layernorm.weight", &mut self.post_mlp_norm),
            ("self_attn.q_norm.weight", &mut self.q_norm),
            ("self_attn.k_norm.weight", &mut self.k_norm),
            ("self_attn.sinks", &mut self.sinks),
        ] {
            if let Some(t) = norm.as_mut() {
                out.push((name.into(), t));
            }
        }
        let mut linears: Vec<(String, &mut Linear)> = vec![
            ("self_attn.q_proj".into(), &mut self.q),
            ("self_attn.k_proj".into(), &mut self.k),
            ("self_attn.v_proj".into(), &mut self.v),
            ("self_attn.o_proj".into(), &mut self.o),
        ];
        match &mut self.mlp {
            Mlp::Dense(m) => {
                for (name, lin) in m.named_linears_mut() {
                    linears.push((format!("mlp.{name}"), lin));
                }
            }
            Mlp::Moe(e) => {
                out.push(("mlp.gate.weight".into(), &mut e.router));
                if let Some(b) = e.router_bias.as_mut() {
                    out.push(("mlp.gate.bias".into(), b));
                }
                for (i, x) in e.experts.iter_mut().enumerate() {
                    for (name, lin) in x.named_linears_mut() {
                        linears.push((format!("mlp.experts.{i}.{name}"), lin));
                    }
                }
                if let Some(s) = e.shared.as_mut() {
                    linears.push(("mlp.shared_expert_gate".into(), &mut s.gate));
                    for (name, lin) in s.mlp.named_linears_mut() {
                        linears.push((format!("mlp.shared_expert.{name}"), lin));
                    }
                }
            }
        }
        for (name, lin) in linears {
            for (i, t) in lin.tensors_mut().enumerate() {
                let kind = if i == 0 { "weight" } else { "bias" };
                out.push((format!("{name}.{kind}"), t));
            }
        }
        out
    }
}

/// How the forward pass is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Fused kernels (rms_norm, rope, softmax_last_dim): fastest, no gradients.
    #[default]
    Inference,
    /// Composed ops only, so that every weight on the path receives a gradient.
    Differentiable,
}

/// Key/value cache for incremental decoding of a left-padded batch.
///
/// New columns are concatenated at each step. (A preallocated buffer written in place was
/// measured: no faster on CPU, and a higher peak memory.)
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Columns already in the cache.
    pub len: usize,
    /// The column where each row's left pad columns begin: 0, unless the cache holds a prefix
    /// shared by every row ([`KvCache::shared`]), whose rows are padded after it.
    pad_at: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// This cache (of a batch of one: a prefix that every row of a batch shares) repeated for
    /// `rows` rows. The rows that follow are left-padded *after* the prefix: their pad columns
    /// start at the prefix's end, and positions continue from it.
    pub fn shared(&self, rows: usize) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|slot| {
                slot.as_ref()
                    .map(|(k, v)| -> Result<(Tensor, Tensor)> {
                        if k.dim(0)? != 1 {
                            return Err(ModelError::Input(format!(
                                "a shared prefix cache must hold one row, not {}",
                                k.dim(0)?
                            )));
                        }
                        let rep = |x: &Tensor| -> Result<Tensor> {
                            let mut d = x.dims().to_vec();
                            d[0] = rows;
                            Ok(x.broadcast_as(d)?.contiguous()?)
                        };
                        Ok((rep(k)?, rep(v)?))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            len: self.len,
            pad_at: self.len,
        })
    }

    /// Keeps only the rows in `keep` (used to drop finished sequences from a batch).
    pub fn select_rows(&mut self, keep: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(keep, 0)?;
            *v = v.index_select(keep, 0)?;
        }
        Ok(())
    }

    /// Appends `k`, `v` (`[b, kv_heads, t, hd]`) to a layer's cache and returns all columns.
    fn append(
        slot: &mut Option<(Tensor, Tensor)>,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// A loaded decoder.
#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: Config,
    /// Token embedding `[vocab, hidden]`.
    pub embed: Tensor,
    pub layers: Vec<Block>,
    /// Final norm weight `[hidden]`.
    pub norm: Tensor,
    /// Untied LM head `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Tensor>,
    pub device: Device,
    pub dtype: DType,
}

/// Additive mask value for disallowed keys: finite, so a fully masked pad row stays NaN-free.
const MASKED: f32 = -1e9;

/// RoPE tables and attention mask per kind of block: whole context or sliding window, global
/// or local RoPE, or none.
#[derive(Default)]
struct Positions {
    kinds: [Option<((Tensor, Tensor), Tensor)>; 8],
}

impl Positions {
    /// The kind of block `layer`: 4 without RoPE, plus 2 for a window, plus 1 for the local
    /// RoPE.
    fn kind(cfg: &Config, layer: usize) -> usize {
        4 * usize::from(cfg.nope_layers.contains(&layer))
            + 2 * usize::from(cfg.window_of(layer).is_some())
            + usize::from(cfg.local_rope(layer))
    }

    /// Block `layer`'s RoPE tables and mask.
    fn of(&self, m: &Model, layer: usize) -> (&(Tensor, Tensor), &Tensor) {
        let (rope, mask) = self.kinds[Self::kind(&m.cfg, layer)]
            .as_ref()
            .expect("positions() built every kind the layers use");
        (rope, mask)
    }
}

/// `cap tanh(x / cap)` (Gemma 2's soft-capping), or `x` without a cap.
fn softcap(x: Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(c) => Ok(((x / c)?.tanh()? * c)?),
        None => Ok(x),
    }
}

/// The position (for RoPE and the sliding window) of column `c` of a row whose `pad` pad
/// columns start at column `pad_at`: real tokens are counted, pad columns are not (a pad
/// column gets `pad_at`: it is masked, any value will do).
fn position(c: usize, pad_at: usize, pad: usize) -> usize {
    match c {
        c if c < pad_at => c,
        c if c < pad_at + pad => pad_at,
        c => c - pad,
    }
}

impl Model {
    /// Every tensor with its Hugging Face name (`model.layers.3.mlp.up_proj.weight`).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut m = self.clone();
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), m.embed.clone()),
            ("model.norm.weight".to_string(), m.norm.clone()),
        ];
        if let Some(h) = &m.lm_head {
            out.push(("lm_head.weight".into(), h.clone()));
        }
        for (l, blk) in m.layers.iter_mut().enumerate() {
            for (name, t) in blk.named_tensors_mut() {
                out.push((format!("model.layers.{l}.{name}"), t.clone()));
            }
        }
        out
    }

    /// Makes every tensor of block `layer` a trainable variable (shared storage: an optimizer
    /// step on a returned [`Var`] changes the model). Run the block in [`Mode::Differentiable`]
    /// so that every variable receives a gradient.
    pub fn trainable_block(&mut self, layer: usize) -> Result<Vec<(String, Var)>> {
        let n = self.layers.len();
        let blk = self.layers.get_mut(layer).ok_or_else(|| {
            ModelError::Input(format!("layer {layer} does not exist (the model has {n})"))
        })?;
        let mut vars = Vec::new();
        for (name, t) in blk.named_tensors_mut() {
            // Trained in the compute dtype (f32 for a model whose CPU matrices are bf16).
            let v = Var::from_tensor(&t.to_dtype(self.dtype)?)?;
            *t = v.as_tensor().clone();
            vars.push((format!("model.layers.{layer}.{name}"), v));
        }
        Ok(vars)
    }

    /// Bytes the weights occupy (a tied head counted once).
    pub fn weight_bytes(&self) -> usize {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// The dtype the weight matrices are stored in (`dtype`, the compute dtype, except for
    /// bf16 on the CPU: bf16 matrices, f32 compute). Read off the LM head, which neither
    /// training (f32 blocks) nor orthogonalization (f32 results) replaces.
    pub fn matrix_dtype(&self) -> DType {
        self.head().dtype()
    }

    /// The LM head matrix `[vocab, hidden]` (the embedding when tied).
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Embeds token ids `[batch, seq]` into `[batch, seq, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .to_dtype(self.dtype)?;
        let x = flat.reshape((b, t, self.cfg.hidden_size))?;
        if self.cfg.arch.gemma() {
            // sqrt(hidden_size), rounded to the compute dtype as transformers does.
            return Ok((x * (self.cfg.hidden_size as f64).sqrt())?);
        }
        if let Some(m) = self.cfg.multipliers {
            return Ok((x * m.embedding)?);
        }
        Ok(x)
    }

    /// Runs the whole stack and returns the final-normed hidden states `[batch, seq, hidden]`.
    ///
    /// `pads[b]` is the number of left pad columns of row `b`. With a cache, `ids` holds only
    /// the new columns and the cache grows by `seq`.
    pub fn forward(
        &self,
        ids: &Tensor,
        pads: &[usize],
        cache: Option<&mut KvCache>,
        hook: &mut dyn Hook,
        mode: Mode,
    ) -> Result<Tensor> {
        let x = self.embed(ids)?;
        let x = self.forward_layers(x, pads, 0..self.cfg.num_layers, cache, hook, mode)?;
        self.final_norm(&x, mode)
    }

    /// Runs the tokens `ids` (one row: a prefix that later batches share) through blocks
    /// `0..top` with `hook`, and returns their keys and values and the residual after the last
    /// of those blocks (`[1, len, hidden]`; `None` for no tokens). [`KvCache::shared`] repeats
    /// the keys and values for a batch whose rows continue after the prefix, so shared tokens
    /// (a chat template's system prompt and turn header) are computed once instead of per row.
    pub fn prefix_cache(
        &self,
        ids: &[u32],
        top: usize,
        hook: &mut dyn Hook,
    ) -> Result<(KvCache, Option<Tensor>)> {
        let mut cache = KvCache::new();
        if ids.is_empty() {
            return Ok((cache, None));
        }
        let ids = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let x = self.embed(&ids)?;
        let x = self.forward_layers(x, &[0], 0..top, Some(&mut cache), hook, Mode::Inference)?;
        Ok((cache, Some(x)))
    }

    /// Runs blocks `layers` on the residual `x: [batch, seq, hidden]` (their input), returning
    /// the residual after the last of them (not normed). Used by trainers that cache a
    /// block's input and run only that block.
    pub fn forward_layers(
        &self,
        mut x: Tensor,
        pads: &[usize],
        layers: std::ops::Range<usize>,
        mut cache: Option<&mut KvCache>,
        hook: &mut dyn Hook,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        if pads.len() != b {
            return Err(ModelError::Input(format!(
                "{} pad counts for a batch of {b}",
                pads.len()
            )));
        }
        let offset = cache.as_ref().map_or(0, |c| c.len);
        let pad_at = cache.as_ref().map_or(0, |c| c.pad_at);
        let positions = self.positions(layers.clone(), pads, pad_at, offset, t)?;
        if let Some(c) = cache.as_deref_mut() {
            if c.layers.len() < self.cfg.num_layers {
                c.layers.resize(self.cfg.num_layers, None);
            }
        }
        for l in layers {
            let site = |point| HookCtx {
                site: Site { layer: l, point },
                offset,
            };
            if let Some(y) = hook.call(site(HookPoint::Input), &x)? {
                x = y;
            }
            let blk = &self.layers[l];
            let (rope, mask) = positions.of(self, l);
            let h = self.pre_norm(&x, blk.attn_norm.as_ref(), mode)?;
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let a = self.attention(blk, &h, rope, mask, kv, mode)?;
            x = (x + self.post_norm(a, blk.post_attn_norm.as_ref(), mode)?)?;
            if let Some(y) = hook.call(site(HookPoint::AfterAttention), &x)? {
                x = y;
            }
            x = (&x + self.mlp(blk, &x, mode)?)?;
            if let Some(y) = hook.call(site(HookPoint::Output), &x)? {
                x = y;
            }
        }
        if let Some(c) = cache {
            c.len = offset + t;
        }
        Ok(x)
    }

    /// The output of block `layer` at the last position only, `[batch, hidden]`, for the block
    /// input `x: [batch, seq, hidden]` left-padded by `pads`: equal to the last column of
    /// [`Model::forward_layers`] over that one block (no hooks), but keys and values are the
    /// only part computed at every position; queries, the output projection and the MLP run
    /// for the last position alone. For trainers whose loss reads the last token only, that
    /// is about `seq` times less work than the whole block.
    pub fn block_last(
        &self,
        layer: usize,
        x: &Tensor,
        pads: &[usize],
        mode: Mode,
    ) -> Result<Tensor> {
        Ok(self.block_tail(layer, x, pads, 1, mode)?.squeeze(1)?)
    }

    /// Block `layer`'s output at the last `n` columns, `[batch, n, hidden]`: [`Model::block_last`]
    /// for the last `n` positions (queries, output projection and MLP run for those alone).
    /// Every row must have at least `n` real (not pad) columns.
    pub fn block_tail(
        &self,
        layer: usize,
        x: &Tensor,
        pads: &[usize],
        n: usize,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        if pads.len() != b || t == 0 {
            return Err(ModelError::Input(format!(
                "{} pad counts for a batch of {b} rows of {t} columns",
                pads.len()
            )));
        }
        if n == 0 || pads.iter().any(|p| p + n > t) {
            return Err(ModelError::Input(format!(
                "the last {n} positions of a batch of {t} columns: a row has fewer real tokens"
            )));
        }
        let blk = self
            .layers
            .get(layer)
            .ok_or_else(|| ModelError::Input(format!("layer {layer} does not exist")))?;
        let nkv = self.cfg.num_kv_heads;
        let h = self.pre_norm(x, blk.attn_norm.as_ref(), mode)?;
        let (cos, sin) = self.rope_tables(pads, 0, 0, t, layer)?;
        let k = self.rope(&self.keys(blk, &h, mode)?, &cos, &sin, mode)?;
        let v = self.heads(blk.v.forward(&h)?, nkv)?;
        // The last columns: their queries, rotations and mask rows.
        let (cos, sin) = self.rope_tables(pads, 0, t - n, n, layer)?;
        let h_tail = h.narrow(1, t - n, n)?;
        let q = self.rope(&self.queries(blk, &h_tail, mode)?, &cos, &sin, mode)?;
        let mask = self.attention_mask(pads, 0, t - n, n, layer)?;
        let mix = self.attend(&q, &k, &v, &mask, blk.sinks.as_ref(), mode)?;
        let a = self.post_norm(blk.o.forward(&mix)?, blk.post_attn_norm.as_ref(), mode)?;
        let x = (x.narrow(1, t - n, n)? + a)?;
        Ok((&x + self.mlp(blk, &x, mode)?)?)
    }

    /// The inputs of every linear map of block `layer` for the block input `x: [batch, seq,
    /// hidden]` (left-padded by `pads`), as `[rows, in]` matrices of the real (not pad)
    /// positions, named by the Hugging Face weight they multiply (`self_attn.q_proj.weight`):
    /// what gradient projection (GPM) needs to keep those maps' outputs unchanged.
    pub fn linear_inputs(
        &self,
        layer: usize,
        x: &Tensor,
        pads: &[usize],
    ) -> Result<Vec<(String, Tensor)>> {
        let (b, t, _) = x.dims3()?;
        let blk = self
            .layers
            .get(layer)
            .ok_or_else(|| ModelError::Input(format!("layer {layer} does not exist")))?;
        let mode = Mode::Inference;
        let rope = self.rope_tables(pads, 0, 0, t, layer)?;
        let mask = self.attention_mask(pads, 0, 0, t, layer)?;
        let h1 = self.pre_norm(x, blk.attn_norm.as_ref(), mode)?;
        let mix = self.attention_mix(blk, &h1, &rope, &mask, None, mode)?;
        let a = self.post_norm(blk.o.forward(&mix)?, blk.post_attn_norm.as_ref(), mode)?;
        let x2 = (x + a)?;
        let h2 = self.pre_norm(&x2, blk.mlp_norm.as_ref(), mode)?;
        // Row indices of the real positions.
        let keep: Vec<u32> = pads
            .iter()
            .enumerate()
            .flat_map(|(r, &p)| (p..t).map(move |c| (r * t + c) as u32))
            .collect();
        let keep = Tensor::new(keep, x.device())?;
        let rows = |m: &Tensor| -> Result<Tensor> {
            let d = m.dim(2)?;
            Ok(m.reshape((b * t, d))?.index_select(&keep, 0)?)
        };
        let (h1, mix, h2) = (rows(&h1)?, rows(&mix)?, rows(&h2)?);
        let mut out = vec![
            ("self_attn.q_proj.weight".into(), h1.clone()),
            ("self_attn.k_proj.weight".into(), h1.clone()),
            ("self_attn.v_proj.weight".into(), h1),
            ("self_attn.o_proj.weight".into(), mix),
        ];
        let act = self.cfg.hidden_act;
        let mut gated = |prefix: String, m: &GatedMlp, x: Tensor| -> Result<()> {
            out.push((format!("{prefix}.down_proj.weight"), m.act(&x, act, mode)?));
            out.push((format!("{prefix}.gate_proj.weight"), x.clone()));
            out.push((format!("{prefix}.up_proj.weight"), x));
            Ok(())
        };
        match &blk.mlp {
            Mlp::Dense(m) => gated("mlp".into(), m, h2)?,
            // The router reads every row; each expert the rows routed to it (an expert that
            // none reaches has no inputs, and so no basis).
            Mlp::Moe(e) => {
                let r = self.route(e, &h2, mode)?;
                let routed = h2.index_select(&r.rows, 0)?;
                for (ex, m) in e.experts.iter().enumerate() {
                    let (start, len) = r.spans[ex];
                    if len > 0 {
                        gated(
                            format!("mlp.experts.{ex}"),
                            m,
                            routed.narrow(0, start, len)?,
                        )?;
                    }
                }
                if let Some(s) = &e.shared {
                    gated("mlp.shared_expert".into(), &s.mlp, h2.clone())?;
                    out.push(("mlp.shared_expert_gate.weight".into(), h2.clone()));
                }
                out.push(("mlp.gate.weight".into(), h2));
            }
        }
        Ok(out)
    }

    /// The final RMSNorm.
    pub fn final_norm(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.rms_norm(x, &self.norm, mode)
    }

    /// Logits `[.., vocab]` of final-normed hidden states `[.., hidden]` (soft-capped where
    /// the architecture does).
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let logits = Linear {
            weight: self.head().clone(),
            bias: None,
        }
        .forward(h)?;
        let logits = match self.cfg.multipliers {
            Some(m) => (logits / m.logits_scaling)?,
            None => logits,
        };
        softcap(logits, self.cfg.final_logit_softcapping)
    }

    /// Last-position logits `[batch, vocab]` (f32) of a left-padded batch, with a hook.
    pub fn last_logits(&self, ids: &Tensor, pads: &[usize], hook: &mut dyn Hook) -> Result<Tensor> {
        let h = self.forward(ids, pads, None, hook, Mode::Inference)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?;
        Ok(self.logits(&last)?.to_dtype(DType::F32)?)
    }

    /// The MLP's contribution to the residual `x` (its input norm, and its output norm where
    /// the architecture has one).
    fn mlp(&self, blk: &Block, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = self.pre_norm(x, blk.mlp_norm.as_ref(), mode)?;
        let m = match &blk.mlp {
            Mlp::Dense(m) => m.forward(&h, self.cfg.hidden_act, mode)?,
            Mlp::Moe(e) => self.experts(e, &h, mode)?,
        };
        self.post_norm(m, blk.post_mlp_norm.as_ref(), mode)
    }

    /// A mixture of experts on `h: [.., hidden]` ([`crate::MoeConfig`]): the router's softmax
    /// (in f32 for half precision), each token's `top_k` experts (ties to the lower index), their weights
    /// renormalized where the configuration says, and the weighted sum of those experts'
    /// outputs, plus the shared expert's output scaled by its gate's sigmoid where there is one
    /// ([`SharedExpert`]). Each routed expert runs on its own tokens only. In differentiable
    /// mode the gradient reaches the router through the weights; which experts a token takes
    /// is a choice, with none (as in transformers).
    fn experts(&self, e: &Experts, h: &Tensor, mode: Mode) -> Result<Tensor> {
        let dims = h.dims().to_vec();
        let d = *dims.last().expect("hidden states have a last dimension");
        let x = h.reshape((h.elem_count() / d, d))?;
        let r = self.route(e, &x, mode)?;
        // Every (token, expert) pair, grouped by expert: one gather, each expert on its own
        // slice, one scatter back.
        let xs = x.index_select(&r.rows, 0)?;
        let mut ys = Vec::new();
        for (ex, mlp) in e.experts.iter().enumerate() {
            let (start, len) = r.spans[ex];
            if len > 0 {
                ys.push(mlp.forward(&xs.narrow(0, start, len)?, self.cfg.hidden_act, mode)?);
            }
        }
        let y = Tensor::cat(&ys, 0)?.broadcast_mul(&r.weights.unsqueeze(1)?)?;
        let mut out = x.zeros_like()?.index_add(&r.rows, &y, 0)?;
        if let Some(s) = &e.shared {
            let scale = candle_nn::ops::sigmoid(&s.gate.forward(&x)?)?;
            let y = s.mlp.forward(&x, self.cfg.hidden_act, mode)?;
            out = (out + y.broadcast_mul(&scale)?)?;
        }
        Ok(out.reshape(dims)?)
    }

    /// The router's choice for the rows of `x: [n, hidden]` ([`crate::MoeConfig`]): the
    /// softmax (in f32 for half precision), each row's `top_k` experts (ties to the lower
    /// index), their weights renormalized where the configuration says. The pairs are
    /// grouped by expert: `rows` and `weights` (`[n * top_k]`, in `x`'s dtype), and each
    /// expert's `(start, len)` in them. In differentiable mode the gradient reaches the router
    /// through the weights; which experts a row takes is a choice, with none (as in
    /// transformers).
    fn route(&self, e: &Experts, x: &Tensor, mode: Mode) -> Result<Routing> {
        let moe = self.cfg.moe.as_ref().ok_or_else(|| {
            ModelError::Config("a mixture-of-experts block without its configuration".into())
        })?;
        let n = x.dim(0)?;
        let logits = Linear {
            weight: e.router.clone(),
            bias: e.router_bias.clone(),
        }
        .forward(x)?;
        let logits = widened(&logits)?;
        let probs = match mode {
            Mode::Inference => candle_nn::ops::softmax_last_dim(&logits)?,
            Mode::Differentiable => candle_nn::ops::softmax(&logits, D::Minus1)?,
        };
        let (ne, k) = (moe.num_experts, moe.top_k);
        // The choice, on the host (in f64 there: not every device converts to it).
        let values: Vec<Vec<f64>> = probs
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .to_vec2()?;
        let mut by_expert: Vec<Vec<(u32, u32)>> = vec![vec![]; ne];
        let mut chosen = Vec::with_capacity(n * k);
        for (row, p) in values.iter().enumerate() {
            let mut order: Vec<usize> = (0..ne).collect();
            let larger = |a: &usize, b: &usize| p[*b].total_cmp(&p[*a]).then(a.cmp(b));
            if k < ne {
                order.select_nth_unstable_by(k - 1, larger);
            }
            for (j, &ex) in order.iter().take(k).enumerate() {
                chosen.push((row * ne + ex) as u32);
                by_expert[ex].push((row as u32, (row * k + j) as u32));
            }
        }
        let dev = x.device();
        let mut w = probs
            .flatten_all()?
            .index_select(&Tensor::new(chosen, dev)?, 0)?
            .reshape((n, k))?;
        if moe.norm_topk_prob {
            w = w.broadcast_div(&w.sum_keepdim(1)?)?;
        }
        let (mut rows, mut slots, mut spans) = (vec![], vec![], vec![]);
        for pairs in &by_expert {
            spans.push((rows.len(), pairs.len()));
            rows.extend(pairs.iter().map(|p| p.0));
            slots.extend(pairs.iter().map(|p| p.1));
        }
        let weights = w
            .flatten_all()?
            .index_select(&Tensor::new(slots, dev)?, 0)?
            .to_dtype(x.dtype())?;
        Ok(Routing {
            rows: Tensor::new(rows, dev)?,
            weights,
            spans,
        })
    }

    /// A sublayer's output `x` as it joins the residual: normed by `w` where the architecture
    /// norms it (gemma), times Granite's residual multiplier.
    fn post_norm(&self, x: Tensor, w: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let x = match w {
            Some(w) => self.rms_norm(&x, w, mode)?,
            None => x,
        };
        match self.cfg.multipliers {
            Some(m) => Ok((x * m.residual)?),
            None => Ok(x),
        }
    }

    /// RMSNorm with weight `w` (`1 + w` for gemma, whose weights are offsets from 1).
    fn rms_norm(&self, x: &Tensor, w: &Tensor, mode: Mode) -> Result<Tensor> {
        let offset = self.cfg.arch.norm_offset();
        if offset != 0.0 && matches!(x.dtype(), DType::F16 | DType::BF16) {
            // As transformers' Gemma norms: `1 + w` and the product in f32, then rounded.
            let x32 = x.to_dtype(DType::F32)?;
            let w32 = w.to_dtype(DType::F32)?;
            let y = self.rms_norm_with(&x32, &w32.affine(1.0, offset)?, mode)?;
            return Ok(y.to_dtype(x.dtype())?);
        }
        let shifted;
        let w = if offset != 0.0 {
            shifted = w.affine(1.0, offset)?;
            &shifted
        } else {
            w
        };
        self.rms_norm_with(x, w, mode)
    }

    /// RMSNorm with the factors `w` as they are.
    fn rms_norm_with(&self, x: &Tensor, w: &Tensor, mode: Mode) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        match mode {
            // The fused kernel has no f64 version; f64 is for gradient checks.
            Mode::Inference if x.dtype() != DType::F64 => {
                Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?)
            }
            _ => {
                // Half precision is normalised in f32; f32 and f64 stay as they are.
                let dt = x.dtype();
                let x = widened(x)?;
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                let y = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
                Ok(y.to_dtype(dt)?.broadcast_mul(w)?)
            }
        }
    }

    /// The RoPE tables and attention masks of the new columns for the kinds of block (whole
    /// context, sliding window) among `layers`.
    fn positions(
        &self,
        layers: std::ops::Range<usize>,
        pads: &[usize],
        pad_at: usize,
        offset: usize,
        t: usize,
    ) -> Result<Positions> {
        let mut p = Positions::default();
        for l in layers {
            let slot = &mut p.kinds[Positions::kind(&self.cfg, l)];
            if slot.is_none() {
                *slot = Some((
                    self.rope_tables(pads, pad_at, offset, t, l)?,
                    self.attention_mask(pads, pad_at, offset, t, l)?,
                ));
            }
        }
        Ok(p)
    }

    /// cos/sin tables `[batch, seq, rotated_dims/2]` of block `layer` for the positions of the new
    /// columns. Row `b` has `pads[b]` pad columns starting at column `pad_at`; columns after
    /// them continue the positions of those before.
    fn rope_tables(
        &self,
        pads: &[usize],
        pad_at: usize,
        offset: usize,
        t: usize,
        layer: usize,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.cfg.rotated_dims() / 2;
        let local = self.cfg.local_rope(layer);
        let b = pads.len();
        if self.cfg.nope_layers.contains(&layer) {
            // No rotation (SmolLM3's NoPE blocks): cos 1 and sin 0 leave q and k as they are.
            let shape = (b, t, half);
            let one = Tensor::ones(shape, self.dtype, &self.device)?;
            return Ok((one, Tensor::zeros(shape, self.dtype, &self.device)?));
        }
        // The frequencies once per call: the local or the global ones, and LongRoPE's long set
        // with the original context, from which a row uses it.
        let (inv, long) = match local {
            true => (
                self.cfg.local_rope_frequencies().expect("a local base"),
                None,
            ),
            false => (
                self.cfg.rope_frequencies(),
                self.cfg
                    .longrope_context()
                    .map(|ctx| (ctx, self.cfg.rope_frequencies_for(ctx))),
            ),
        };
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for &pad in pads {
            // Each row's largest position in this pass (positions grow along a row) chooses
            // its LongRoPE factors, so that a row computes the same alone as in a batch.
            let last = position((offset + t).saturating_sub(1), pad_at, pad);
            let inv = match &long {
                Some((ctx, l)) if last >= *ctx => l,
                _ => &inv,
            };
            for c in offset..offset + t {
                let pos = position(c, pad_at, pad) as f32;
                for f in inv {
                    let a = pos * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        // YaRN scales both (and so every attention logit by the square); local RoPE is unscaled.
        let scale = if local {
            1.0
        } else {
            self.cfg.rope_attention_factor() as f32
        };
        if scale != 1.0 {
            cos.iter_mut()
                .chain(sin.iter_mut())
                .for_each(|x| *x *= scale);
        }
        let shape = (b, t, half);
        let cos = Tensor::from_vec(cos, shape, &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, shape, &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }

    /// Additive mask `[batch, 1, seq, offset + seq]` of block `layer`: causal, no attention to
    /// the pad columns `pad_at..pad_at + pads[b]`, and, where the block has a sliding window
    /// `w`, none to keys `w` or more positions back.
    fn attention_mask(
        &self,
        pads: &[usize],
        pad_at: usize,
        offset: usize,
        t: usize,
        layer: usize,
    ) -> Result<Tensor> {
        let tk = offset + t;
        let window = self.cfg.window_of(layer).unwrap_or(usize::MAX);
        let mut m = Vec::with_capacity(pads.len() * t * tk);
        for &pad in pads {
            for q in offset..offset + t {
                let qpos = position(q, pad_at, pad);
                // A pad query may see itself only, which keeps its softmax finite.
                for k in 0..tk {
                    let real = k < pad_at || k >= pad_at + pad;
                    let ok = k == q || (k < q && real && qpos - position(k, pad_at, pad) < window);
                    m.push(if ok { 0.0 } else { MASKED });
                }
            }
        }
        Ok(Tensor::from_vec(m, (pads.len(), 1, t, tk), &self.device)?.to_dtype(self.dtype)?)
    }

    /// RoPE on `x` `[b, h, t, hd]`: the first [`Config::rotated_dims`] dimensions of each head
    /// turn, the others pass.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> Result<Tensor> {
        let (hd, r) = (self.cfg.head_dim, self.cfg.rotated_dims());
        if r == hd {
            return self.rope_whole(x, cos, sin, mode);
        }
        // Both parts contiguous, so that the result is too (attention multiplies by its
        // transpose).
        let turned = self.rope_whole(&x.narrow(D::Minus1, 0, r)?, cos, sin, mode)?;
        let passed = x.narrow(D::Minus1, r, hd - r)?.contiguous()?;
        Ok(Tensor::cat(&[&turned.contiguous()?, &passed], D::Minus1)?)
    }

    /// RoPE on every dimension of `x`'s heads.
    fn rope_whole(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Inference => Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?),
            Mode::Differentiable => {
                // x: [b, h, t, hd]; cos/sin: [b, t, hd/2] -> [b, 1, t, hd]
                let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
                let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
                let hd = x.dim(D::Minus1)?;
                let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
                let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
                let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
            }
        }
    }

    fn attention(
        &self,
        blk: &Block,
        h: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mode: Mode,
    ) -> Result<Tensor> {
        blk.o
            .forward(&self.attention_mix(blk, h, rope, mask, cache, mode)?)
    }

    /// Attention up to the output projection: the heads' mixed values `[b, t, heads*hd]`.
    fn attention_mix(
        &self,
        blk: &Block,
        h: &Tensor,
        (cos, sin): &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mode: Mode,
    ) -> Result<Tensor> {
        let q = self.queries(blk, h, mode)?;
        let k = self.keys(blk, h, mode)?;
        let v = self.heads(blk.v.forward(h)?, self.cfg.num_kv_heads)?;
        let q = self.rope(&q, cos, sin, mode)?;
        let k = self.rope(&k, cos, sin, mode)?;
        let (k, v) = match cache {
            Some(slot) => KvCache::append(slot, k, v)?,
            None => (k, v),
        };
        self.attend(&q, &k, &v, mask, blk.sinks.as_ref(), mode)
    }

    /// The query heads `[b, heads, t, hd]` of the normed residual `h`, before RoPE (each head
    /// RMS-normed where the architecture does).
    fn queries(&self, blk: &Block, h: &Tensor, mode: Mode) -> Result<Tensor> {
        let q = self.projection_norm(blk.q.forward(h)?, blk.q_norm.as_ref(), mode)?;
        let q = self.heads(q, self.cfg.num_heads)?;
        self.head_norm(q, blk.q_norm.as_ref(), mode)
    }

    /// The key heads `[b, kv_heads, t, hd]` of `h`, before RoPE; see [`Model::queries`].
    fn keys(&self, blk: &Block, h: &Tensor, mode: Mode) -> Result<Tensor> {
        let k = self.projection_norm(blk.k.forward(h)?, blk.k_norm.as_ref(), mode)?;
        let k = self.heads(k, self.cfg.num_kv_heads)?;
        self.head_norm(k, blk.k_norm.as_ref(), mode)
    }

    /// RMSNorm of every head over its `head_dim` entries (qwen3's `q_norm`/`k_norm`).
    fn head_norm(&self, x: Tensor, w: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        match w {
            Some(w) if !self.cfg.arch.qk_norm_whole() => self.rms_norm(&x, w, mode),
            _ => Ok(x),
        }
    }

    /// RMSNorm of a query or key projection `[b, t, heads*hd]` over all its heads at once
    /// (olmo2's `q_norm`/`k_norm`).
    fn projection_norm(&self, y: Tensor, w: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        match w {
            Some(w) if self.cfg.arch.qk_norm_whole() => self.rms_norm(&y, w, mode),
            _ => Ok(y),
        }
    }

    /// An input norm (RMSNorm), or `x` itself where the architecture has none (olmo2).
    fn pre_norm(&self, x: &Tensor, w: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        match w {
            Some(w) => self.rms_norm(x, w, mode),
            None => Ok(x.clone()),
        }
    }

    /// `[b, t, heads*hd]` -> `[b, heads, t, hd]`.
    fn heads(&self, y: Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, _) = y.dims3()?;
        Ok(y.reshape((b, t, heads, self.cfg.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Scaled dot-product attention of queries `q: [b, heads, t, hd]` (rotated) over keys and
    /// values `[b, kv_heads, tk, hd]` with the additive `mask: [b, 1, t, tk]`, returning the
    /// heads' mixed values `[b, t, heads*hd]`. With `sinks` (`[heads]`, gpt_oss) each head's
    /// softmax has one more column, its sink logit, whose share of the attention goes to no
    /// value.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        sinks: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let rep = nh / nkv;
        let tk = k.dim(2)?;
        // Group the query heads that share a key/value head: [b, nkv, rep*t, hd]; no copies of k/v.
        let q = (q.reshape((b, nkv, rep * t, hd))? * self.cfg.attention_scale())?;
        let att = q.matmul(&k.t()?)?.reshape((b, nh, t, tk))?;
        let att = softcap(att, self.cfg.attn_logit_softcapping)?;
        let att = att.broadcast_add(mask)?;
        let att = match sinks {
            Some(s) => {
                let s = s.reshape((1, nh, 1, 1))?.broadcast_as((b, nh, t, 1))?;
                Tensor::cat(&[&att, &s.to_dtype(att.dtype())?.contiguous()?], 3)?
            }
            None => att,
        };
        let att = match mode {
            Mode::Inference => candle_nn::ops::softmax_last_dim(&att)?,
            Mode::Differentiable => candle_nn::ops::softmax(&att, D::Minus1)?,
        };
        let att = match sinks {
            Some(_) => att.narrow(3, 0, tk)?.contiguous()?,
            None => att,
        };
        let y = att.reshape((b, nkv, rep * t, tk))?.matmul(v)?; // [b, nkv, rep*t, hd]
        let y = y
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        Ok(y)
    }
}
