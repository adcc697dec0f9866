//! One `--model` argument, three kinds of source.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::gguf::Gguf;
use crate::hf::{resolve_repo, HfFolder};
use crate::model::Model;
use crate::template::{ChatTemplate, SystemPrompt};
use crate::tokenizer::Tok;

/// Where a model came from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Gguf,
    HfFolder,
    HfCache,
}

/// Device and dtype for loading.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// The device a `--device` name asks for (`cpu`, `cuda`: GPU 0, `metal`); CUDA and Metal need
/// a build with that feature.
pub fn device_named(name: &str) -> Result<Device> {
    let gpu = |r: candle_core::Result<Device>, what: &str| {
        r.map_err(|e| {
            ModelError::Input(format!("{what} device (build with --features {name}): {e}"))
        })
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => gpu(Device::new_cuda(0), "CUDA"),
        "metal" => gpu(Device::new_metal(0), "Metal"),
        d => Err(ModelError::Input(format!(
            "unknown device {d} (cpu, cuda or metal)"
        ))),
    }
}

/// The float dtype a `--dtype` name asks for (`f32`, `bf16`, `f16`).
pub fn float_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        d => Err(ModelError::Input(format!(
            "unknown dtype {d} (f32, bf16 or f16)"
        ))),
    }
}

/// A model with its tokenizer and chat template.
pub struct Loaded {
    pub model: Model,
    pub tok: Tok,
    pub chat: ChatTemplate,
    pub kind: SourceKind,
    /// The file or folder the weights came from.
    pub path: PathBuf,
}

impl Loaded {
    /// Token ids of each prompt formatted by the chat template as one user turn (with
    /// `system`), ready for generation.
    pub fn prompt_ids(&self, prompts: &[&str], system: &SystemPrompt) -> Result<Vec<Vec<u32>>> {
        prompts
            .iter()
            .map(|p| self.chat.prompt(&self.tok, p, system).map(|p| p.ids))
            .collect()
    }

    /// A fingerprint of the model as it computes: [`Loaded::source_fingerprint`], followed by
    /// a mark of its numerics unless it computes in f32 with f32 matrices: `+bf16` for bf16
    /// matrices computed in f32 (`--dtype bf16` on the CPU), `+bf16-compute` or
    /// `+f16-compute` for arithmetic in that dtype (on a GPU). Caches of activations and
    /// answers made one way are then not reused for another. f32 models have the source's
    /// fingerprint, as before marks existed.
    pub fn fingerprint(&self) -> Result<String> {
        Ok(format!(
            "{}{}",
            self.source_fingerprint()?,
            numerics_mark(self.model.matrix_dtype(), self.model.dtype)
        ))
    }

    /// A fingerprint of the weights: sha256 over the configuration, the size of every weight
    /// file and its first and last MiB. Cheap (no full read), and what run folders record to
    /// tell models apart. A file that differs only in its middle (a model re-exported with
    /// another trained block keeps its size, header and ends) has the same fingerprint:
    /// [`Loaded::sampled_fingerprint`] tells those apart.
    pub fn source_fingerprint(&self) -> Result<String> {
        self.hash_weights(false)
    }

    /// [`Loaded::source_fingerprint`] that also hashes 64 KiB of every 2 MiB of each weight
    /// file (about 3% of it, read from the page cache after loading): it changes when the
    /// weights differ throughout any stretch of 2 MiB or more (such a stretch holds a sampled
    /// byte). Evaluation folders record it beside the fingerprint, so that answers of a model
    /// re-exported to the same path are not resumed as the earlier model's.
    pub fn sampled_fingerprint(&self) -> Result<String> {
        self.hash_weights(true)
    }

    fn hash_weights(&self, sampled: bool) -> Result<String> {
        use sha2::{Digest, Sha256};
        use std::io::{Read, Seek, SeekFrom};
        const END: u64 = 1 << 20;
        const SAMPLE: u64 = 64 << 10;
        const STRIDE: u64 = 2 << 20;
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&self.model.cfg).expect("config serializes"));
        let files: Vec<PathBuf> = match self.kind {
            SourceKind::Gguf => vec![self.path.clone()],
            _ => crate::hf::HfFolder::open(&self.path)?.weight_files()?,
        };
        let mut buf = vec![0u8; END as usize];
        for f in files {
            let mut file = std::fs::File::open(&f).map_err(|e| ModelError::io(&f, e))?;
            let len = file.metadata().map_err(|e| ModelError::io(&f, e))?.len();
            h.update(len.to_le_bytes());
            let ends = [(0, END.min(len)), (len.saturating_sub(END), END.min(len))];
            let samples = (1..len.div_ceil(STRIDE))
                .filter(|_| sampled)
                .map(|k| (k * STRIDE, SAMPLE.min(len - k * STRIDE)));
            for (start, n) in ends.into_iter().chain(samples) {
                let chunk = &mut buf[..n as usize];
                file.seek(SeekFrom::Start(start))
                    .map_err(|e| ModelError::io(&f, e))?;
                file.read_exact(chunk).map_err(|e| ModelError::io(&f, e))?;
                h.update(&*chunk);
            }
        }
        Ok(format!("{:x}", h.finalize()))
    }
}

/// What [`Loaded::fingerprint`] appends for a model with `matrix` matrices computing in
/// `compute`.
fn numerics_mark(matrix: DType, compute: DType) -> String {
    match (matrix, compute) {
        (DType::F32, DType::F32) => String::new(),
        (DType::BF16, DType::F32) => "+bf16".into(),
        (m, c) if m == c => format!("+{}-compute", m.as_str()),
        (m, c) => format!("+{}-matrices-{}-compute", m.as_str(), c.as_str()),
    }
}

/// The [`Loaded::source_fingerprint`] part of a [`Loaded::fingerprint`], and its numerics mark
/// (empty for f32).
pub fn split_fingerprint(f: &str) -> (&str, &str) {
    match f.find('+') {
        Some(at) => f.split_at(at),
        None => (f, ""),
    }
}

/// In words, the numerics a fingerprint's mark (from [`split_fingerprint`]) stands for.
pub fn describe_numerics(mark: &str) -> String {
    match mark {
        "" => "f32 weights and arithmetic".into(),
        "+bf16" => "bf16 matrices on the CPU".into(),
        other => {
            let m = other.trim_start_matches('+').replace('-', " ");
            m.replace("compute", "arithmetic")
        }
    }
}

/// The file or folder a model spec names, and its kind: a .gguf file, a Hugging Face folder,
/// or a repo id (owner/name) found in the local HF cache. Reads no weights.
pub fn locate(spec: &str) -> Result<(PathBuf, SourceKind)> {
    let path = Path::new(spec);
    if path.is_file() {
        Ok((path.into(), SourceKind::Gguf))
    } else if path.is_dir() {
        Ok((path.into(), SourceKind::HfFolder))
    } else if looks_like_repo_id(spec) {
        Ok((resolve_repo(spec)?, SourceKind::HfCache))
    } else {
        Err(ModelError::NotFound(spec.into()))
    }
}

/// Loads a model from a GGUF file, a Hugging Face folder, or a cached repo id (`owner/name`).
pub fn load(spec: &str, opts: &LoadOptions) -> Result<Loaded> {
    let (path, kind) = locate(spec)?;
    if kind == SourceKind::Gguf {
        let g = Gguf::open(&path)?;
        let tok = g.tokenizer()?;
        let chat = g.chat_template(&tok)?;
        let model = g.model(&opts.device, opts.dtype)?;
        return Ok(Loaded {
            model,
            tok,
            chat,
            kind,
            path,
        });
    }
    let dir = path;
    let f = HfFolder::open(&dir)?;
    let tok = f.tokenizer()?;
    let chat = f.chat_template()?;
    let model = f.model(&opts.device, opts.dtype)?;
    Ok(Loaded {
        model,
        tok,
        chat,
        kind,
        path: dir,
    })
}

fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p != &"."
                && p != &".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The number of leading tokens every row shares (a chat template's system prompt and turn
/// header), leaving at least one token of each row: what [`Model::prefix_cache`] can run once.
///
/// [`Model::prefix_cache`]: crate::Model::prefix_cache
pub fn shared_prefix_len(rows: &[Vec<u32>]) -> usize {
    let Some(first) = rows.first() else {
        return 0;
    };
    let mut n = rows
        .iter()
        .map(Vec::len)
        .min()
        .unwrap_or(0)
        .saturating_sub(1);
    for r in &rows[1..] {
        n = first[..n].iter().zip(r).take_while(|(a, b)| a == b).count();
    }
    n
}

/// Left-pads id sequences into `[batch, max_len]` and returns the pad count of each row.
pub fn left_pad(rows: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<(Tensor, Vec<usize>)> {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    if len == 0 || rows.iter().any(|r| r.is_empty()) {
        return Err(ModelError::Input("empty prompt".into()));
    }
    let mut flat = Vec::with_capacity(rows.len() * len);
    let mut pads = Vec::with_capacity(rows.len());
    for r in rows {
        let pad = len - r.len();
        flat.extend(std::iter::repeat_n(pad_id, pad));
        flat.extend_from_slice(r);
        pads.push(pad);
    }
    Ok((Tensor::from_vec(flat, (rows.len(), len), device)?, pads))
}

/// Left-pads `[tokens, hidden]` rows with zeros into `[batch, max_tokens, hidden]`, and
/// returns the pad counts (the model masks pad columns): batches of cached residual states.
pub fn pad_rows(rows: &[&Tensor]) -> candle_core::Result<(Tensor, Vec<usize>)> {
    let t = rows
        .iter()
        .map(|r| r.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let max = t.iter().copied().max().unwrap_or(0);
    let mut out = Vec::with_capacity(rows.len());
    let mut pads = Vec::with_capacity(rows.len());
    for (r, len) in rows.iter().zip(t) {
        let pad = max - len;
        pads.push(pad);
        out.push(if pad == 0 {
            (*r).clone()
        } else {
            let z = Tensor::zeros((pad, r.dim(1)?), r.dtype(), r.device())?;
            Tensor::cat(&[&z, *r], 0)?
        });
    }
    Tensor::stack(&out, 0).map(|x| (x, pads))
}

/// The rows of a left-padded `[batch, seq, hidden]` tensor without their pad columns, each
/// `[tokens, hidden]` (f32, CPU): the inverse of [`pad_rows`], for caching states.
pub fn unpad_rows(x: &Tensor, pads: &[usize]) -> candle_core::Result<Vec<Tensor>> {
    let t = x.dim(1)?;
    pads.iter()
        .enumerate()
        .map(|(b, &pad)| {
            x.get(b)?
                .narrow(0, pad, t - pad)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)
        })
        .collect()
}
