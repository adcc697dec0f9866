//! steerkit-export: bake an intervention into weights and write them out.
//!
//! - [`orthogonalize`]: weight orthogonalization (METHODS.md 1.5), `W <- W - r̂ r̂ᵀ W` for every
//!   matrix that writes to the residual stream: token embedding rows, attention output and MLP
//!   down projections. A tied LM head is untied first and kept unchanged. The result computes
//!   what directional ablation at every layer computes, with no hook.
//! - Hugging Face safetensors folders are written by `steerkit_model::hf::save` (temporary
//!   folder, then rename; sharded with an index above 2 GiB; a multimodal source whole, its
//!   vision tower carried).

pub mod control_vector;
pub mod gguf;

use candle_core::{DType, Tensor};
use steerkit_model::{Model, ModelError};

/// `W - r̂ (r̂ᵀ W)` for `W: [hidden, in]` (the output side lives in the residual stream).
/// Computed in f32 and returned in `dtype`, the model's compute dtype: for bf16 matrices on
/// the CPU that is f32 (rounding the result back to bf16 would leave `r̂ᵀW` at rounding
/// noise instead of zero; f32 and bf16 matrices compute side by side).
fn project_rows_out(w: &Tensor, unit: &Tensor, dtype: DType) -> Result<Tensor, ModelError> {
    let d = unit.dim(0)?;
    let wf = w.to_dtype(DType::F32)?;
    let u = unit.to_dtype(DType::F32)?.reshape((d, 1))?;
    let coef = u.t()?.matmul(&wf)?; // [1, in]
    Ok((wf - u.matmul(&coef)?)?.to_dtype(dtype)?)
}

/// A copy of `model` with `direction` projected out of everything that writes to the residual.
///
/// Refused for Gemma: its blocks norm their outputs before adding them to the residual, and a
/// norm's per-channel weights turn an output orthogonal to the direction into one that is not.
pub fn orthogonalize(model: &Model, direction: &Tensor) -> Result<Model, ModelError> {
    if model.cfg.arch.gemma() {
        return Err(ModelError::Config(format!(
            "weight orthogonalization is not exact for {}: its blocks norm their outputs before adding them to the residual, which brings the direction back; use hook-based ablation (`steerkit ablate`, `steerkit eval --intervention ablate`)",
            model.cfg.arch.name()
        )));
    }
    let d = model.cfg.hidden_size;
    if direction.dims() != [d] {
        return Err(ModelError::Input(format!(
            "the direction has shape {:?}, the model's hidden size is {d} (a direction from another model?)",
            direction.dims()
        )));
    }
    let r = direction.to_dtype(DType::F32)?.to_device(&model.device)?;
    let norm = r.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    if !norm.is_finite() || norm == 0.0 {
        return Err(ModelError::Input(
            "the direction has zero or non-finite norm".into(),
        ));
    }
    let unit = (r / norm as f64)?;
    let mut m = model.clone();
    let dt = model.dtype;
    if m.lm_head.is_none() {
        m.lm_head = Some(m.embed.clone());
        m.cfg.tie_word_embeddings = false;
    }
    // Embedding rows are residual vectors: E - (E r̂) r̂ᵀ.
    m.embed = project_rows_out(&m.embed.t()?, &unit, dt)?
        .t()?
        .contiguous()?;
    for blk in m.layers.iter_mut() {
        blk.o.weight = project_rows_out(&blk.o.weight, &unit, dt)?;
        blk.down.weight = project_rows_out(&blk.down.weight, &unit, dt)?;
        for b in [&mut blk.o.bias, &mut blk.down.bias].into_iter().flatten() {
            *b = project_rows_out(&b.reshape((d, 1))?, &unit, dt)?.flatten_all()?;
        }
    }
    Ok(m)
}
