//! GGUF export: a model's weights (for instance orthogonalized) written with the metadata of
//! the GGUF file it was loaded from (tokenizer, chat template, hyper-parameters).
//!
//! Matrices are stored as f16 or q8_0, vectors (norms, biases) as f32, as llama.cpp expects;
//! llama q/k rows are permuted back into llama.cpp's order. Only GGUF sources are supported:
//! a Hugging Face folder has no GGUF tokenizer metadata to carry over.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};
use steerkit_model::gguf::{gguf_name, permute, qk_permuted, Gguf};
use steerkit_model::{Model, ModelError};

/// Storage type of the matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F16,
    Q8_0,
}

impl GgufType {
    fn ggml(self) -> GgmlDType {
        match self {
            GgufType::F16 => GgmlDType::F16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` code.
    fn file_type(self) -> u32 {
        match self {
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
        }
    }
}

/// Writes `model` as a GGUF file with `source`'s metadata (temporary file, then rename).
pub fn write(model: &Model, source: &Gguf, ty: GgufType, out: &Path) -> Result<(), ModelError> {
    let heads = |name: &str| {
        if name.contains("q_proj") {
            Some(model.cfg.num_heads)
        } else if name.contains("k_proj") {
            Some(model.cfg.num_kv_heads)
        } else {
            None
        }
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (hf, t) in model.named_tensors() {
        let name = gguf_name(&hf)
            .ok_or_else(|| ModelError::Weights(format!("no GGUF name for `{hf}`")))?;
        let mut t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        if let Some(h) = heads(&hf).filter(|_| qk_permuted(model.cfg.arch)) {
            t = permute(&t, h)?;
        }
        let ggml = if t.rank() == 2 && t.dim(1)? % 32 == 0 {
            ty.ggml()
        } else {
            GgmlDType::F32
        };
        tensors.push((name, QTensor::quantize(&t, ggml)?));
    }
    let file_type = Value::U32(ty.file_type());
    let mut meta: Vec<(&str, &Value)> = source
        .metadata()
        .iter()
        .filter(|(k, _)| k.as_str() != "general.file_type")
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    meta.push(("general.file_type", &file_type));
    meta.sort_by_key(|(k, _)| *k);
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let tmp = out.with_extension("gguf.tmp");
    let res = (|| -> Result<(), ModelError> {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp)
                .map_err(|e| ModelError::Input(format!("{}: {e}", tmp.display())))?,
        );
        gguf_file::write(&mut f, &meta, &refs)?;
        drop(f);
        std::fs::rename(&tmp, out).map_err(|e| ModelError::Input(format!("{}: {e}", out.display())))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
