//! Assembling a [`Model`] from named tensors, whatever file format they came from.
//!
//! Loaders provide tensors by their Hugging Face names (`model.layers.3.self_attn.q_proj.weight`);
//! every shape is checked against the configuration here, so a mismatched file is a clear
//! error, not a panic deep inside a matmul.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::config::{Arch, Config};
use crate::error::{ModelError, Result};
use crate::model::{Block, Experts, GatedMlp, Linear, Mlp, Model, SharedExpert};

/// One tensor the model needs: its name and the shape it must have.
#[derive(Debug, Clone)]
pub struct Need {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The tensors a configuration needs, in a fixed order.
pub fn needs(cfg: &Config) -> Vec<Need> {
    let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let need = |name: String, shape: Vec<usize>| Need { name, shape };
    let mut out = vec![
        need("model.embed_tokens.weight".into(), vec![cfg.vocab_size, d]),
        need("model.norm.weight".into(), vec![d]),
    ];
    if !cfg.tie_word_embeddings {
        out.push(need("lm_head.weight".into(), vec![cfg.vocab_size, d]));
    }
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        for n in block_norms(cfg).into_iter().flatten() {
            out.push(need(format!("{p}.{n}.weight"), vec![d]));
        }
        for (n, o, i) in [("q", q, d), ("k", kv, d), ("v", kv, d), ("o", d, q)] {
            out.push(need(format!("{p}.self_attn.{n}_proj.weight"), vec![o, i]));
        }
        if cfg.attention_bias {
            for (n, o) in [("q", q), ("k", kv), ("v", kv)] {
                out.push(need(format!("{p}.self_attn.{n}_proj.bias"), vec![o]));
            }
        }
        if cfg.arch.gpt_oss() {
            out.push(need(format!("{p}.self_attn.o_proj.bias"), vec![d]));
            out.push(need(format!("{p}.self_attn.sinks"), vec![cfg.num_heads]));
        }
        if cfg.arch.qk_norm() {
            let (qn, kn) = match cfg.arch.qk_norm_whole() {
                true => (q, kv),
                false => (hd, hd),
            };
            for (n, len) in [("q", qn), ("k", kn)] {
                out.push(need(format!("{p}.self_attn.{n}_norm.weight"), vec![len]));
            }
        }
        match cfg.moe.as_ref().filter(|_| cfg.is_moe_layer(l)) {
            Some(m) => {
                out.push(need(format!("{p}.mlp.gate.weight"), vec![m.num_experts, d]));
                if cfg.arch.gpt_oss() {
                    out.push(need(format!("{p}.mlp.gate.bias"), vec![m.num_experts]));
                }
                for e in 0..m.num_experts {
                    let prefix = format!("{p}.mlp.experts.{e}");
                    mlp_needs(&mut out, &prefix, m.intermediate_size, d);
                    if cfg.arch.gpt_oss() {
                        let f = m.intermediate_size;
                        for (n, len) in [("gate", f), ("up", f), ("down", d)] {
                            out.push(need(format!("{prefix}.{n}_proj.bias"), vec![len]));
                        }
                    }
                }
                if let Some(s) = m.shared_intermediate_size {
                    mlp_needs(&mut out, &format!("{p}.mlp.shared_expert"), s, d);
                    out.push(need(
                        format!("{p}.mlp.shared_expert_gate.weight"),
                        vec![1, d],
                    ));
                }
            }
            None => mlp_needs(&mut out, &format!("{p}.mlp"), f, d),
        }
    }
    out
}

/// A gated MLP's three matrices under `prefix`, of `f` channels over the hidden size `d`.
fn mlp_needs(out: &mut Vec<Need>, prefix: &str, f: usize, d: usize) {
    for (n, shape) in [
        ("gate", vec![f, d]),
        ("up", vec![f, d]),
        ("down", vec![d, f]),
    ] {
        out.push(Need {
            name: format!("{prefix}.{n}_proj.weight"),
            shape,
        });
    }
}

/// The name a tensor (steerkit's name, `model.layers.3.mlp.experts.5.gate_proj.weight`) has in
/// `arch`'s Hugging Face files: Mixtral keeps its mixture under `block_sparse_moe`, with each
/// expert's gate, up and down as `w1`, `w3` and `w2`; gpt-oss calls its router `mlp.router`
/// (its experts are stacked: [`gpt_oss_expert_source`]); Granite 4's down projection is
/// `shared_mlp.output_linear` (its gate and up are fused: [`fused_parts`]); the other
/// architectures use steerkit's.
pub fn file_name(arch: Arch, name: &str) -> String {
    if arch == Arch::GptOss {
        return name.replacen(".mlp.gate.", ".mlp.router.", 1);
    }
    if arch == Arch::GraniteHybrid {
        return name.replacen(".mlp.down_proj.", ".shared_mlp.output_linear.", 1);
    }
    if arch != Arch::Mixtral || !name.contains(".mlp.") {
        return name.to_string();
    }
    let name = name.replacen(".mlp.", ".block_sparse_moe.", 1);
    match name.contains(".experts.") {
        true => name
            .replacen(".gate_proj.", ".w1.", 1)
            .replacen(".up_proj.", ".w3.", 1)
            .replacen(".down_proj.", ".w2.", 1),
        false => name,
    }
}

/// The tensors an architecture's files store fused, as (the fused module, its parts in row
/// order), module names after `model.layers.N.`: Phi-3 keeps q, k and v as one `qkv_proj`, and
/// gate and up as one `gate_up_proj`. steerkit holds the parts; loaders split the fused tensors
/// ([`with_fused`]) and writers join them ([`fuse`]).
pub fn fused_parts(arch: Arch) -> &'static [(&'static str, &'static [&'static str])] {
    match arch {
        Arch::Phi3 => &[
            (
                "self_attn.qkv_proj",
                &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            ),
            ("mlp.gate_up_proj", &["mlp.gate_proj", "mlp.up_proj"]),
        ],
        // Granite 4's shared MLP: gate and up as one `input_linear`.
        Arch::GraniteHybrid => &[("shared_mlp.input_linear", &["mlp.gate_proj", "mlp.up_proj"])],
        _ => &[],
    }
}

/// Output rows of the part `module` of a fused tensor.
fn part_rows(cfg: &Config, module: &str) -> usize {
    match module {
        "self_attn.q_proj" => cfg.num_heads * cfg.head_dim,
        "self_attn.k_proj" | "self_attn.v_proj" => cfg.num_kv_heads * cfg.head_dim,
        _ => cfg.intermediate_size,
    }
}

/// Where a tensor lives when its file stores it fused.
struct FusedSource {
    /// The fused tensor's name.
    name: String,
    /// Which part, of how many.
    part: usize,
    parts: usize,
    /// The part's first row, its rows, and the fused tensor's rows (a stack of experts
    /// `[experts, rows, cols]` counts as `experts * rows` rows).
    start: usize,
    rows: usize,
    total: usize,
    /// Columns: the hidden size, or the experts' channels for their down projections.
    cols: usize,
}

/// For an expert's matrix, `model.layers.N.mlp.experts.E.{proj}.weight`: the name of the
/// stack of its block's experts' (`model.layers.N.mlp.experts.{proj}.weight`, `[experts, rows,
/// cols]`, as GGUF stores them) and `E`.
pub fn expert_stack(name: &str) -> Option<(String, usize)> {
    let (block, rest) = name.split_once(".mlp.experts.")?;
    let (e, proj) = rest.split_once('.')?;
    Some((format!("{block}.mlp.experts.{proj}"), e.parse().ok()?))
}

/// An expert's matrix, in a file that stacks each block's experts ([`expert_stack`]). Read
/// only: Hugging Face files keep each expert's own, so writers ([`fuse`]) leave them as they
/// are.
fn stacked_expert_source(cfg: &Config, name: &str) -> Option<FusedSource> {
    let m = cfg.moe.as_ref()?;
    let (stack, e) = expert_stack(name)?;
    let (out, inp) = match stack.rsplit('.').nth(1)? {
        "down_proj" => (cfg.hidden_size, m.intermediate_size),
        "gate_proj" | "up_proj" => (m.intermediate_size, cfg.hidden_size),
        _ => return None,
    };
    // A stack of biases (gpt-oss), `[experts, out]`, is cut a row at a time.
    let (rows, cols) = match stack.ends_with(".bias") {
        true => (1, out),
        false => (out, inp),
    };
    Some(FusedSource {
        name: stack,
        part: e,
        parts: m.num_experts,
        start: e * rows,
        rows,
        total: m.num_experts * rows,
        cols,
    })
}

/// Where gpt-oss keeps an expert's tensor (`model.layers.N.mlp.experts.E.{gate,up,down}_proj.
/// {weight,bias}`): its block's experts stacked, `mlp.experts.gate_up_proj` (`[experts, hidden,
/// 2 * channels]`, gate and up interleaved along the last axis: gate at even columns, up at
/// odd) and `mlp.experts.down_proj` (`[experts, channels, hidden]`), their biases as
/// `gate_up_proj_bias` (`[experts, 2 * channels]`, interleaved) and `down_proj_bias`. OpenAI's
/// own files hold the two matrices as MXFP4 instead: `{stack}_blocks` (`[experts, out, in /
/// 32, 16]`, two 4-bit e2m1 values a byte, the low nibble first) and `{stack}_scales`
/// (`[experts, out, in / 32]`, a power of two `2^(s - 127)` per group of 32 values).
pub struct GptOssSource {
    /// The stack's name in the files (without `_blocks`/`_scales`).
    pub stack: String,
    pub expert: usize,
    /// Whether the tensor is a bias.
    pub bias: bool,
    /// The gate (0) or the up projection (1) of an interleaved stack; `None` for down.
    pub half: Option<usize>,
    /// How many tensors are cut from the stack: every expert's one, or its two halves.
    pub parts: usize,
}

impl GptOssSource {
    /// The tensor's place among the stack's parts: expert by expert, gate before up.
    fn slot(&self) -> usize {
        match self.half {
            Some(h) => 2 * self.expert + h,
            None => self.expert,
        }
    }
}

/// [`GptOssSource`] for a name, `None` for other names and architectures.
pub fn gpt_oss_expert_source(cfg: &Config, name: &str) -> Option<GptOssSource> {
    if !cfg.arch.gpt_oss() {
        return None;
    }
    let m = cfg.moe.as_ref()?;
    let (stack, expert) = expert_stack(name)?;
    let (block, proj) = stack.rsplit_once(".mlp.experts.")?;
    let (module, kind) = proj.split_once('.')?;
    let half = match module {
        "gate_proj" => Some(0),
        "up_proj" => Some(1),
        "down_proj" => None,
        _ => return None,
    };
    let bias = match kind {
        "weight" => false,
        "bias" => true,
        _ => return None,
    };
    let file = match (half.is_some(), bias) {
        (true, false) => "gate_up_proj",
        (true, true) => "gate_up_proj_bias",
        (false, false) => "down_proj",
        (false, true) => "down_proj_bias",
    };
    (expert < m.num_experts).then(|| GptOssSource {
        stack: format!("{block}.mlp.experts.{file}"),
        expert,
        bias,
        half,
        parts: m.num_experts * if half.is_some() { 2 } else { 1 },
    })
}

/// Reads a gpt-oss stack with `get`: the tensor as stored, or for a matrix stored as MXFP4 its
/// scales and blocks joined into one byte tensor `[experts, out, groups, 17]` (each group's
/// scale before its 16 bytes, as [`crate::mxfp4::decode`] takes them), which [`gpt_oss_cut`]
/// decodes an expert at a time.
fn gpt_oss_read<F>(get: &F, src: &GptOssSource) -> Result<Option<Tensor>>
where
    F: Fn(&str) -> Result<Option<Tensor>>,
{
    if let Some(t) = get(&src.stack)? {
        return Ok(Some(t));
    }
    if src.bias {
        return Ok(None);
    }
    let blocks = get(&format!("{}_blocks", src.stack))?;
    let scales = get(&format!("{}_scales", src.stack))?;
    let (blocks, scales) = match (blocks, scales) {
        (Some(b), Some(s)) => (b, s),
        (None, None) => return Ok(None),
        (b, _) => {
            let (has, lacks) = match b.is_some() {
                true => ("blocks", "scales"),
                false => ("scales", "blocks"),
            };
            return Err(ModelError::Weights(format!(
                "`{0}_{has}` is there but not `{0}_{lacks}`: MXFP4 needs both",
                src.stack
            )));
        }
    };
    let ok = blocks.dtype() == DType::U8
        && scales.dtype() == DType::U8
        && blocks.rank() == 4
        && blocks.dim(3)? == 16
        && blocks.dims()[..3] == *scales.dims();
    if !ok {
        return Err(ModelError::Weights(format!(
            "`{0}_blocks` ({1:?} {2:?}) and `{0}_scales` ({3:?} {4:?}) are not MXFP4 blocks and scales (u8, [experts, rows, groups, 16] and [experts, rows, groups])",
            src.stack,
            blocks.dtype(),
            blocks.dims(),
            scales.dtype(),
            scales.dims()
        )));
    }
    Ok(Some(Tensor::cat(&[&scales.unsqueeze(3)?, &blocks], 3)?))
}

/// Cuts [`GptOssSource`]'s tensor from its stack `t` (as [`gpt_oss_read`] returns it) in
/// steerkit's form: `[out, in]` for a matrix, `[out]` for a bias.
fn gpt_oss_cut(cfg: &Config, src: &GptOssSource, t: &Tensor) -> Result<Tensor> {
    let m = cfg.moe.as_ref().expect("a gpt-oss source has experts");
    let (d, f, e) = (cfg.hidden_size, m.intermediate_size, m.num_experts);
    // The stack's rows (outputs) and columns (inputs) in steerkit's orientation.
    let (rows, cols) = match src.half {
        Some(_) => (2 * f, d),
        None => (d, f),
    };
    let bad = |want: String| {
        ModelError::Weights(format!(
            "`{}` has shape {:?} ({:?}); the configuration implies {want}",
            src.stack,
            t.dims(),
            t.dtype()
        ))
    };
    let x = if src.bias {
        if t.dims() != [e, rows] {
            return Err(bad(format!("[{e}, {rows}]")));
        }
        t.get(src.expert)?
    } else if t.dtype() == DType::U8 {
        let groups = cols / 32;
        if !cols.is_multiple_of(32) || t.dims() != [e, rows, groups, 17] {
            return Err(bad(format!(
                "MXFP4 blocks [{e}, {rows}, {groups}, 16] (inputs in groups of 32)"
            )));
        }
        // Only the rows of the half asked for (gate and up alternate) are decoded.
        let x = t.get(src.expert)?;
        let (x, rows) = match src.half {
            Some(h) => (x.reshape((f, 2, groups, 17))?.narrow(1, h, 1)?, f),
            None => (x, rows),
        };
        let packed: Vec<u8> = x.flatten_all()?.to_vec1()?;
        let values = crate::mxfp4::decode(&packed, crate::mxfp4::Order::Pairs).map_err(|e| {
            ModelError::Weights(format!("`{}` expert {}: {e}", src.stack, src.expert))
        })?;
        let x = Tensor::from_vec(values, (rows, cols), &candle_core::Device::Cpu)?;
        return Ok(x);
    } else {
        // Stored `[experts, in, out]`.
        if t.dims() != [e, cols, rows] {
            return Err(bad(format!("[{e}, {cols}, {rows}]")));
        }
        t.get(src.expert)?.t()?
    };
    let x = match src.half {
        // Gate and up alternate along the outputs.
        Some(h) => {
            let mut shape = x.dims().to_vec();
            shape[0] = f;
            shape.insert(1, 2);
            x.contiguous()?
                .reshape(shape)?
                .narrow(1, h, 1)?
                .squeeze(1)?
        }
        None => x,
    };
    Ok(x.force_contiguous()?)
}

/// gpt-oss's expert tensors of one block stacked as its files store them
/// ([`GptOssSource`]), from steerkit's (`parts`: each expert's tensor, or its gate and up in
/// turn, expert by expert).
fn gpt_oss_stack(src: &GptOssSource, parts: Vec<Tensor>) -> Result<Tensor> {
    let per: Vec<Tensor> = match src.half {
        // Gate and up interleaved along the outputs.
        Some(_) => parts
            .chunks_exact(2)
            .map(|gu| {
                let x = Tensor::stack(&[&gu[0], &gu[1]], 1)?;
                let mut shape = gu[0].dims().to_vec();
                shape[0] *= 2;
                x.reshape(shape)
            })
            .collect::<candle_core::Result<_>>()?,
        None => parts,
    };
    let t = Tensor::stack(&per, 0)?;
    // Matrices are stored `[experts, in, out]`.
    Ok(match src.bias {
        true => t,
        false => t.transpose(1, 2)?.contiguous()?,
    })
}

fn fused_source(cfg: &Config, name: &str) -> Option<FusedSource> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let module = module.strip_suffix(".weight")?;
    fused_parts(cfg.arch).iter().find_map(|(fused, parts)| {
        let part = parts.iter().position(|p| *p == module)?;
        let rows = |ps: &[&str]| ps.iter().map(|p| part_rows(cfg, p)).sum();
        Some(FusedSource {
            name: format!("model.layers.{layer}.{fused}.weight"),
            part,
            parts: parts.len(),
            start: rows(&parts[..part]),
            rows: part_rows(cfg, module),
            total: rows(parts),
            cols: cfg.hidden_size,
        })
    })
}

/// Where a loader's tensors come from: a Hugging Face folder (gpt-oss's experts stacked its
/// way, [`GptOssSource`]) or a GGUF file (every model's experts stacked by [`expert_stack`]'s
/// names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Folder,
    Gguf,
}

/// A loader for [`build`] that also serves the parts of fused tensors: `get` returns a stored
/// tensor by name (`Ok(None)` when absent); a part that is not stored on its own is cut from
/// its fused tensor, whose rows must be the parts' together, or from its block's stack of
/// experts as `layout` stacks them. Each fused tensor is read once and kept until its last
/// part has been cut from it.
pub fn with_fused<'a, F>(
    cfg: &Config,
    layout: Layout,
    get: F,
) -> impl Fn(&Need) -> Result<Option<Tensor>> + Sync + 'a
where
    F: Fn(&str) -> Result<Option<Tensor>> + Sync + 'a,
{
    let cfg = cfg.clone();
    // Fused tensors not yet asked for by all their parts: a slot each, filled by the first
    // read, with the parts that asked so far. The slot has its own lock, so the parts of one
    // tensor wait for a single read while other tensors load in parallel.
    type Slot = std::sync::Arc<std::sync::Mutex<Option<Tensor>>>;
    let read: std::sync::Mutex<std::collections::HashMap<String, (Slot, usize)>> =
        Default::default();
    move |need: &Need| {
        if let Some(t) = get(&need.name)? {
            return Ok(Some(t));
        }
        let oss = gpt_oss_expert_source(&cfg, &need.name).filter(|_| layout == Layout::Folder);
        let src =
            fused_source(&cfg, &need.name).or_else(|| stacked_expert_source(&cfg, &need.name));
        let (key, parts) = match (&oss, &src) {
            (Some(o), _) => (o.stack.clone(), o.parts),
            (None, Some(s)) => (s.name.clone(), s.parts),
            (None, None) => return Ok(None),
        };
        let slot = {
            let mut read = read.lock().expect("no panic holds it");
            let (slot, asked) = read.entry(key.clone()).or_default();
            *asked += 1;
            let slot = slot.clone();
            // The last part holds the slot itself: the tensor is freed once it is cut.
            if *asked == parts {
                read.remove(&key);
            }
            slot
        };
        let t = {
            let mut held = slot.lock().expect("no panic holds it");
            match &*held {
                Some(t) => t.clone(),
                None => {
                    let got = match &oss {
                        Some(o) => gpt_oss_read(&get, o)?,
                        None => get(&key)?,
                    };
                    match got {
                        Some(t) => held.insert(t).clone(),
                        None => return Ok(None),
                    }
                }
            }
        };
        let src = match (&oss, src) {
            (Some(o), _) => return Ok(Some(gpt_oss_cut(&cfg, o, &t)?)),
            (None, Some(s)) => s,
            (None, None) => unreachable!("returned above"),
        };
        if t.dtype() == DType::U8 {
            return ggml_mxfp4_rows(&src, &t, need).map(Some);
        }
        if t.elem_count() != src.total * src.cols || t.dims().last() != Some(&src.cols) {
            return Err(ModelError::Weights(format!(
                "`{}` has shape {:?}, the configuration implies {} rows of {}",
                src.name,
                t.dims(),
                src.total,
                src.cols
            )));
        }
        // A copy of the part's rows only: a view would keep the whole fused tensor alive for
        // each part (twice or three times the memory).
        let t = t.reshape((src.total, src.cols))?;
        let part = t.narrow(0, src.start, src.rows)?.force_contiguous()?;
        // A bias's row, `[1, out]`, is the vector `[out]`.
        Ok(Some(
            match part.dims() == [1, need.shape.iter().product()] {
                true => part.reshape(need.shape.as_slice())?,
                false => part,
            },
        ))
    }
}

/// The rows of `src`'s part from a stack of GGML MXFP4 rows `t` (a GGUF's experts, packed:
/// `[.., rows, cols / 32 * 17]` u8), decoded to f32 in `need`'s shape.
fn ggml_mxfp4_rows(src: &FusedSource, t: &Tensor, need: &Need) -> Result<Tensor> {
    use crate::mxfp4;
    let row_bytes = src.cols / 32 * mxfp4::BLOCK_BYTES;
    if !src.cols.is_multiple_of(32) || t.elem_count() != src.total * row_bytes {
        return Err(ModelError::Weights(format!(
            "`{}` holds {} bytes of MXFP4; the configuration implies {} rows of {} values",
            src.name,
            t.elem_count(),
            src.total,
            src.cols
        )));
    }
    let packed: Vec<u8> = t
        .reshape((src.total, row_bytes))?
        .narrow(0, src.start, src.rows)?
        .flatten_all()?
        .to_vec1()?;
    let values = mxfp4::decode(&packed, mxfp4::Order::Halves)
        .map_err(|e| ModelError::Weights(format!("`{}`: {e}", src.name)))?;
    Ok(Tensor::from_vec(
        values,
        need.shape.as_slice(),
        &candle_core::Device::Cpu,
    )?)
}

/// A tensor to write, computed when its turn comes ([`Lazy::get`]): its shape and dtype are
/// known without computing it, so that a writer can plan a file (its header, its shards)
/// and then hold one tensor at a time instead of a whole second copy of the model. A
/// [`TensorMap`] may compute a floating-point tensor in another floating-point dtype (weight
/// orthogonalization of bf16 matrices gives f32 ones); writers store floats in their own.
#[derive(Clone)]
pub struct Lazy<'a> {
    pub dims: Vec<usize>,
    pub dtype: DType,
    make: std::rc::Rc<dyn Fn() -> Result<Tensor> + 'a>,
}

/// A change made to tensors as they are written, by name: the tensor as it is, or changed
/// (in shape as it was; a floating-point tensor stays floating-point). Weight
/// orthogonalization is one.
pub type TensorMap<'a> = &'a dyn Fn(&str, Tensor) -> Result<Tensor>;

impl<'a> Lazy<'a> {
    /// `t` as it is.
    pub fn ready(t: Tensor) -> Self {
        Lazy::new(t.dims().to_vec(), t.dtype(), move || Ok(t.clone()))
    }

    /// `t`, named `name`, through `map` when given.
    pub fn mapped(name: &str, t: Tensor, map: Option<TensorMap<'a>>) -> Self {
        match map {
            None => Lazy::ready(t),
            Some(f) => {
                let name = name.to_string();
                Lazy::new(t.dims().to_vec(), t.dtype(), move || f(&name, t.clone()))
            }
        }
    }

    /// A tensor of these dimensions and dtype that `make` computes.
    pub fn new(dims: Vec<usize>, dtype: DType, make: impl Fn() -> Result<Tensor> + 'a) -> Self {
        Lazy {
            dims,
            dtype,
            make: std::rc::Rc::new(make),
        }
    }

    /// A tensor of dimensions `dims` that `join` computes from `parts` (its dtype theirs).
    pub fn joined(
        parts: Vec<Lazy<'a>>,
        dims: Vec<usize>,
        join: impl Fn(Vec<Tensor>) -> Result<Tensor> + 'a,
    ) -> Self {
        let dtype = parts[0].dtype;
        Lazy::new(dims, dtype, move || {
            join(parts.iter().map(Lazy::get).collect::<Result<Vec<_>>>()?)
        })
    }

    /// The tensor, computed now; an error if it is not of the shape announced, or not of the
    /// dtype announced (for a floating-point one: not floating-point).
    pub fn get(&self) -> Result<Tensor> {
        let t = (self.make)()?;
        let dtype = match self.dtype.is_float() {
            true => t.dtype().is_float(),
            false => t.dtype() == self.dtype,
        };
        if t.dims() != self.dims || !dtype {
            return Err(ModelError::Weights(format!(
                "a tensor announced as {:?} {:?} was computed as {:?} {:?}",
                self.dims,
                self.dtype,
                t.dims(),
                t.dtype()
            )));
        }
        Ok(t)
    }
}

/// Parts of tensors to be joined, collected as they come, by the name of the tensor they join
/// into.
pub struct Gathering<T> {
    pending: std::collections::HashMap<String, Vec<Option<T>>>,
}

impl<T> Default for Gathering<T> {
    fn default() -> Self {
        Gathering {
            pending: Default::default(),
        }
    }
}

impl<T> Gathering<T> {
    /// `t`, part `slot` of the `parts` of `whole`; all of them, in order, once the last
    /// arrives.
    pub fn add(&mut self, whole: &str, parts: usize, slot: usize, t: T) -> Option<Vec<T>> {
        let got = self
            .pending
            .entry(whole.to_string())
            .or_insert_with(|| (0..parts).map(|_| None).collect());
        got[slot] = Some(t);
        match got.iter().all(Option::is_some) {
            true => self
                .pending
                .remove(whole)
                .map(|p| p.into_iter().flatten().collect()),
            false => None,
        }
    }

    /// The first (by name) of the tensors still missing a part.
    pub fn incomplete(&self) -> Option<&String> {
        self.pending.keys().min()
    }
}

/// The dimensions of [`gpt_oss_stack`]'s result from its parts' (all alike).
fn gpt_oss_stack_dims(src: &GptOssSource, part: &[usize]) -> Vec<usize> {
    let mut per = part.to_vec();
    let count = match src.half {
        Some(_) => {
            per[0] *= 2;
            src.parts / 2
        }
        None => src.parts,
    };
    let mut dims = vec![count];
    dims.extend(per);
    if !src.bias {
        dims.swap(1, 2);
    }
    dims
}

/// Named tensors (Hugging Face names) in the form an architecture's files store them: the
/// parts of each fused tensor ([`fused_parts`]) joined, where its last part was; for a folder
/// ([`Layout::Folder`]), gpt-oss's experts stacked as its files hold them ([`GptOssSource`];
/// matrices in the tensors' dtype, not MXFP4). GGUF writers stack every model's experts their
/// own way. Nothing is computed here: a joined tensor is computed from its parts when asked.
pub fn fuse<'a>(
    cfg: &Config,
    layout: Layout,
    tensors: Vec<(String, Lazy<'a>)>,
) -> Result<Vec<(String, Lazy<'a>)>> {
    let mut out = Vec::with_capacity(tensors.len());
    let mut pending = Gathering::default();
    for (name, t) in tensors {
        let oss = gpt_oss_expert_source(cfg, &name).filter(|_| layout == Layout::Folder);
        if let Some(o) = oss {
            if let Some(parts) = pending.add(&o.stack, o.parts, o.slot(), t) {
                let dims = gpt_oss_stack_dims(&o, &parts[0].dims);
                let name = o.stack.clone();
                out.push((
                    name,
                    Lazy::joined(parts, dims, move |got| gpt_oss_stack(&o, got)),
                ));
            }
            continue;
        }
        let Some(src) = fused_source(cfg, &name) else {
            out.push((name, t));
            continue;
        };
        if let Some(parts) = pending.add(&src.name, src.parts, src.part, t) {
            let mut dims = parts[0].dims.clone();
            dims[0] = parts.iter().map(|p| p.dims[0]).sum();
            let cat = |got: Vec<Tensor>| Ok(Tensor::cat(&got, 0)?);
            out.push((src.name, Lazy::joined(parts, dims, cat)));
        }
    }
    if let Some(fused) = pending.incomplete() {
        return Err(ModelError::Weights(format!("`{fused}` is missing a part")));
    }
    Ok(out)
}

/// The names of a block's `[hidden]` norms, `None` where the architecture has none: the
/// attention's input norm, the MLP's input norm, the attention's and the MLP's output norms
/// (the order [`build`] takes them in). `post_attention_layernorm` is the MLP's input norm
/// where there are no output norms.
fn block_norms(cfg: &Config) -> [Option<&'static str>; 4] {
    let (pre, post) = (cfg.arch.pre_norms(), cfg.arch.post_norms());
    [
        pre.then_some("input_layernorm"),
        pre.then_some(match post {
            true => "pre_feedforward_layernorm",
            false => "post_attention_layernorm",
        }),
        post.then_some("post_attention_layernorm"),
        post.then_some("post_feedforward_layernorm"),
    ]
}

/// The dtypes a model asked for as `dtype` on `device` is stored in: (matrices, everything
/// else). The model computes in the second. On the CPU, bf16 means bf16 matrices with f32
/// activations, norms and biases (see [`crate::bf16`]); elsewhere every tensor takes `dtype`.
pub fn storage_dtypes(device: &Device, dtype: DType) -> (DType, DType) {
    if device.is_cpu() && dtype == DType::BF16 {
        (DType::BF16, DType::F32)
    } else {
        (dtype, dtype)
    }
}

/// Bytes the weights of a model configured as `cfg` take loaded as `dtype` on `device`
/// (stored as [`storage_dtypes`] says).
pub fn weight_bytes(cfg: &Config, device: &Device, dtype: DType) -> u64 {
    let (matrices, rest) = storage_dtypes(device, dtype);
    // Saturating: a corrupt configuration's shapes are refused by the shape check, not here.
    needs(cfg).iter().fold(0u64, |sum, n| {
        let dt = if n.shape.len() == 2 { matrices } else { rest };
        let elems = n
            .shape
            .iter()
            .fold(1u64, |a, d| a.saturating_mul(*d as u64));
        sum.saturating_add(elems.saturating_mul(dt.size_in_bytes() as u64))
    })
}

/// Told, after each tensor [`build`] loads, the bytes loaded so far and the bytes of all the
/// weights (in the dtypes they are stored in): what a progress bar needs.
pub type LoadWatcher = dyn Fn(u64, u64) + Send + Sync;

static WATCHER: std::sync::RwLock<Option<std::sync::Arc<LoadWatcher>>> =
    std::sync::RwLock::new(None);

/// Sets the process's load watcher (`None` clears it); every later [`build`] reports to it.
/// Process-wide, for a command-line tool's progress bar: libraries loading models on several
/// threads at once should leave it unset.
pub fn watch_loading(w: Option<std::sync::Arc<LoadWatcher>>) {
    *WATCHER.write().unwrap_or_else(|e| e.into_inner()) = w;
}

/// Loads every needed tensor with `get` (in parallel), checks shapes, converts to the dtypes of
/// [`storage_dtypes`] on `device`, and builds the model. `get` returns `Ok(None)` for an absent
/// tensor. On the CPU, weights that cannot fit in the memory available are refused before
/// anything is read ([`crate::memory::check_fits`]).
pub fn build<F>(cfg: Config, device: &Device, dtype: DType, get: F) -> Result<Model>
where
    F: Fn(&Need) -> Result<Option<Tensor>> + Sync,
{
    cfg.validate()?;
    if cfg.arch.gemma() && dtype == DType::F16 {
        return Err(ModelError::Config(
            "Gemma's activations overflow f16; use --dtype bf16 or f32".into(),
        ));
    }
    // What the weights take loaded: checked against the memory, and the load bar's total.
    let total = weight_bytes(&cfg, device, dtype);
    let skip = std::env::var(crate::memory::SKIP_MEMORY_CHECK).is_ok_and(|v| v == "1");
    if device.is_cpu() && !skip {
        let bf16 = weight_bytes(&cfg, device, DType::BF16);
        crate::memory::check_fits(total, bf16, dtype, crate::memory::available_memory())?;
    }
    let watcher = WATCHER.read().unwrap_or_else(|e| e.into_inner()).clone();
    let done = std::sync::atomic::AtomicU64::new(0);
    let (matrix_dtype, dtype) = storage_dtypes(device, dtype);
    let needs = needs(&cfg);
    let loaded: Vec<Tensor> = needs
        .par_iter()
        .map(|n| {
            let t = get(n)?
                .ok_or_else(|| ModelError::Weights(format!("missing tensor `{}`", n.name)))?;
            if t.dims() != n.shape.as_slice() {
                return Err(ModelError::Weights(format!(
                    "`{}` has shape {:?}, the configuration implies {:?}",
                    n.name,
                    t.dims(),
                    n.shape
                )));
            }
            let dt = if t.rank() == 2 { matrix_dtype } else { dtype };
            let t = t.to_dtype(dt)?.to_device(device)?;
            if let Some(w) = &watcher {
                let bytes = (t.elem_count() * dt.size_in_bytes()) as u64;
                let now = done.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
                w(now, total);
            }
            Ok(t)
        })
        .collect::<Vec<Result<Tensor>>>()
        // The first failure in file order, so the message does not depend on thread timing.
        .into_iter()
        .collect::<Result<_>>()?;
    let mut it = needs.iter().map(|n| n.name.as_str()).zip(loaded);
    let mut next = |want: &str| -> Tensor {
        let (name, t) = it.next().expect("needs() and build() agree on the order");
        debug_assert_eq!(name, want);
        t
    };
    let embed = next("model.embed_tokens.weight");
    let norm = next("model.norm.weight");
    let lm_head = (!cfg.tie_word_embeddings).then(|| next("lm_head.weight"));
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        let [attn_norm, mlp_norm, post_attn_norm, post_mlp_norm] =
            block_norms(&cfg).map(|n| n.map(|n| next(&format!("{p}.{n}.weight"))));
        let lin = |w: Tensor| Linear {
            weight: w,
            bias: None,
        };
        let mut q = lin(next(&format!("{p}.self_attn.q_proj.weight")));
        let mut k = lin(next(&format!("{p}.self_attn.k_proj.weight")));
        let mut v = lin(next(&format!("{p}.self_attn.v_proj.weight")));
        let mut o = lin(next(&format!("{p}.self_attn.o_proj.weight")));
        if cfg.attention_bias {
            q.bias = Some(next(&format!("{p}.self_attn.q_proj.bias")));
            k.bias = Some(next(&format!("{p}.self_attn.k_proj.bias")));
            v.bias = Some(next(&format!("{p}.self_attn.v_proj.bias")));
        }
        let gpt_oss = cfg.arch.gpt_oss();
        let mut sinks = None;
        if gpt_oss {
            o.bias = Some(next(&format!("{p}.self_attn.o_proj.bias")));
            sinks = Some(next(&format!("{p}.self_attn.sinks")));
        }
        let (q_norm, k_norm) = if cfg.arch.qk_norm() {
            (
                Some(next(&format!("{p}.self_attn.q_norm.weight"))),
                Some(next(&format!("{p}.self_attn.k_norm.weight"))),
            )
        } else {
            (None, None)
        };
        let moe = cfg.moe.as_ref().filter(|_| cfg.is_moe_layer(l));
        let router = moe.map(|_| next(&format!("{p}.mlp.gate.weight")));
        let router_bias = (moe.is_some() && gpt_oss).then(|| next(&format!("{p}.mlp.gate.bias")));
        let mut gated = |prefix: &str, biased: bool| {
            let mut m = GatedMlp {
                gate: lin(next(&format!("{prefix}.gate_proj.weight"))),
                up: lin(next(&format!("{prefix}.up_proj.weight"))),
                down: lin(next(&format!("{prefix}.down_proj.weight"))),
            };
            if biased {
                for (n, l) in [
                    ("gate", &mut m.gate),
                    ("up", &mut m.up),
                    ("down", &mut m.down),
                ] {
                    l.bias = Some(next(&format!("{prefix}.{n}_proj.bias")));
                }
            }
            m
        };
        let mlp = match (moe, router) {
            (Some(m), Some(router)) => {
                let experts = (0..m.num_experts)
                    .map(|e| gated(&format!("{p}.mlp.experts.{e}"), gpt_oss))
                    .collect();
                let shared = m
                    .shared_intermediate_size
                    .map(|_| gated(&format!("{p}.mlp.shared_expert"), false));
                let shared = shared.map(|mlp| SharedExpert {
                    mlp,
                    gate: lin(next(&format!("{p}.mlp.shared_expert_gate.weight"))),
                });
                Mlp::Moe(Experts {
                    router,
                    router_bias,
                    experts,
                    shared,
                })
            }
            _ => Mlp::Dense(gated(&format!("{p}.mlp"), false)),
        };
        layers.push(Block {
            attn_norm,
            q,
            k,
            v,
            o,
            q_norm,
            k_norm,
            sinks,
            mlp_norm,
            mlp,
            post_attn_norm,
            post_mlp_norm,
        });
    }
    Ok(Model {
        cfg,
        embed,
        layers,
        norm,
        lm_head,
        device: device.clone(),
        dtype,
    })
}

/// Writes `tensors` as a safetensors file at `path`, through `PATH.tmp` and a rename, so an
/// interrupted write never leaves a torn file (nor, on an error, the temporary one); tensors
/// in name order, written by [`write_safetensors`] (so the file is 0644 on Unix).
pub fn save_safetensors<K>(
    tensors: &std::collections::HashMap<K, Tensor>,
    path: &std::path::Path,
) -> Result<()>
where
    K: AsRef<str> + Ord + std::fmt::Display,
{
    let mut named: Vec<(&K, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let lazy = named
        .into_iter()
        .map(|(k, t)| (k.to_string(), Lazy::ready(t.clone())))
        .collect();
    let io = |p: &std::path::Path, e| ModelError::io(p, e);
    crate::scratch::write_through(path, true, io, |file, tmp| {
        write_safetensors_to(file, tmp, lazy, &|_| {})
    })
}

/// Writes a safetensors file at `path` from tensors computed one at a time, each dropped once
/// written: the header (with `"format": "pt"`, as PyTorch's files have) comes from their
/// announced shapes and dtypes; `progress` is told the bytes of data written so far. The
/// tensors are laid out by element size, largest first, so that each starts on a multiple of
/// its own (as the safetensors library lays them out). There is no temporary file: the
/// callers write into a folder that is renamed when complete.
pub fn write_safetensors(
    path: &std::path::Path,
    tensors: Vec<(String, Lazy)>,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| ModelError::io(path, e))?;
    write_safetensors_to(&file, path, tensors, progress)
}

/// [`write_safetensors`] into `file`, opened (empty) at `path`.
fn write_safetensors_to(
    file: &std::fs::File,
    path: &std::path::Path,
    mut tensors: Vec<(String, Lazy)>,
    progress: &dyn Fn(u64),
) -> Result<()> {
    use std::io::Write;
    tensors.sort_by_key(|(_, t)| std::cmp::Reverse(t.dtype.size_in_bytes()));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    let mut sizes = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let size = t.dims.iter().product::<usize>() * t.dtype.size_in_bytes();
        let info = serde_json::json!({
            "dtype": safetensors::Dtype::from(t.dtype),
            "shape": t.dims,
            "data_offsets": [offset, offset + size],
        });
        if header.insert(name.clone(), info).is_some() || name == "__metadata__" {
            return Err(ModelError::Weights(format!(
                "`{name}` is written twice to {}",
                path.display()
            )));
        }
        offset += size;
        sizes.push(size);
    }
    let mut text = serde_json::Value::Object(header).to_string();
    // The data starts on a multiple of 8 bytes, as the safetensors library writes files.
    text.push_str(&" ".repeat((8 - (8 + text.len()) % 8) % 8));
    let io = |e: std::io::Error| ModelError::io(path, e);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(text.as_bytes()).map_err(io)?;
    let mut done = 0u64;
    for ((name, t), size) in tensors.into_iter().zip(sizes) {
        let want = t.dtype;
        let t = t.get()?;
        let data = safetensors::View::data(&t);
        if data.len() != size || t.dtype() != want {
            return Err(ModelError::Weights(format!(
                "`{name}`: {} bytes of {} computed, {size} of {} announced",
                data.len(),
                t.dtype().as_str(),
                want.as_str()
            )));
        }
        w.write_all(&data).map_err(io)?;
        done += size as u64;
        progress(done);
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    readable(path)
}

/// Mode 0644 on Unix (whatever the umask: these are model files, meant to be served).
fn readable(path: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| ModelError::io(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The safetensors library reads what [`write_safetensors`] writes (data on a multiple of
    /// 8 bytes, PyTorch's format key), tensor by tensor as computed; a tensor computed in
    /// another dtype than announced, or a name given twice, is an error.
    #[test]
    fn safetensors_written_a_tensor_at_a_time() {
        let cpu = &Device::Cpu;
        let a = Tensor::new(&[[1f32, -2.5, 3.0]], cpu).unwrap();
        let b = Tensor::new(&[7u32, 8], cpu).unwrap();
        let c = Tensor::new(&[0.5f32, 0.25], cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let calls = std::cell::Cell::new(0);
        let counted = Lazy::new(vec![2], DType::BF16, || {
            calls.set(calls.get() + 1);
            Ok(c.clone())
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let seen = std::cell::RefCell::new(vec![]);
        let d = Tensor::new(&[-9i64], cpu).unwrap();
        let e = Tensor::new(&[5i32, -6], cpu).unwrap();
        let tensors = vec![
            ("a".to_string(), Lazy::ready(a.clone())),
            ("b".to_string(), Lazy::ready(b.clone())),
            ("c".to_string(), counted),
            ("d".to_string(), Lazy::ready(d)),
            ("e".to_string(), Lazy::ready(e)),
        ];
        write_safetensors(&path, tensors, &|d| seen.borrow_mut().push(d)).unwrap();
        // Laid out by element size: d (8 bytes), a, b, e (4), c (2).
        assert_eq!(
            (calls.get(), seen.into_inner()),
            (1, vec![8, 20, 28, 36, 40])
        );
        let bytes = std::fs::read(&path).unwrap();
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(header % 8, 0);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let format = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format").cloned());
        assert_eq!(format.as_deref(), Some("pt"));
        let back = candle_core::safetensors::load(&path, cpu).unwrap();
        assert_eq!(
            back["a"].to_vec2::<f32>().unwrap(),
            a.to_vec2::<f32>().unwrap()
        );
        assert_eq!(back["b"].to_vec1::<u32>().unwrap(), [7, 8]);
        assert_eq!(back["d"].to_vec1::<i64>().unwrap(), [-9]);
        assert_eq!(back["e"].to_vec1::<i32>().unwrap(), [5, -6]);
        assert_eq!(meta.info("c").unwrap().data_offsets, (36, 40));
        assert_eq!(back["c"].dtype(), DType::BF16);
        assert_eq!(
            back["c"]
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            [0.5, 0.25]
        );
        let other = Lazy::new(vec![1, 3], DType::F16, move || Ok(a.clone()));
        let err = write_safetensors(&path, vec![("a".into(), other)], &|_| {}).unwrap_err();
        assert!(err.to_string().contains("of f32 computed"), "{err}");
        let twice = vec![
            ("b".to_string(), Lazy::ready(b.clone())),
            ("b".to_string(), Lazy::ready(b)),
        ];
        let err = write_safetensors(&path, twice, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("written twice"), "{err}");
    }
}
