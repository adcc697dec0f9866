//! steerkit-export: bake an intervention into weights and write them out.
//!
//! - [`orthogonalize`]: weight orthogonalization (METHODS.md 1.5), `W <- W - r̂ r̂ᵀ W` for every
//!   matrix that writes to the residual stream: token embedding rows, attention output and MLP
//!   down projections (every expert's in a mixture of experts). A tied LM head is untied first and kept unchanged. The result computes
//!   what directional ablation at every layer computes, with no hook.
//! - Hugging Face safetensors folders are written by `steerkit_model::hf::save` (temporary
//!   folder, then rename; sharded with an index above 2 GiB; a multimodal source whole, its
//!   vision tower carried).

pub mod control_vector;
pub mod gguf;

use candle_core::{DType, Device, Tensor};
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

/// `direction / |direction|` in f32 on `device`, for a model of hidden size `d`.
fn unit_direction(direction: &Tensor, d: usize, device: &Device) -> Result<Tensor, ModelError> {
    if direction.dims() != [d] {
        return Err(ModelError::Input(format!(
            "the direction has shape {:?}, the model's hidden size is {d} (a direction from another model?)",
            direction.dims()
        )));
    }
    let r = direction.to_dtype(DType::F32)?.to_device(device)?;
    let norm = r.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    if !norm.is_finite() || norm == 0.0 {
        return Err(ModelError::Input(
            "the direction has zero or non-finite norm".into(),
        ));
    }
    Ok((r / norm as f64)?)
}

/// For a multimodal model (config.json's `model_type` `kind`) written whole after its text
/// model was orthogonalized against `direction`: the change to the tensors carried beside the
/// text model ([`steerkit_model::hf::FolderSave::carried`]). Mistral 3's projector writes
/// image features into the residual stream through `multi_modal_projector.linear_2` (weight
/// `[hidden, in]`, and a bias when it has one); the direction is projected out of it as out of
/// the text model's writers, so that the folder ablates at image positions too. Other tensors
/// pass unchanged (in f32). Other kinds are refused.
pub fn orthogonalize_carried(
    kind: &str,
    direction: &Tensor,
    hidden: usize,
) -> Result<impl Fn(&str, Tensor) -> Result<Tensor, ModelError>, ModelError> {
    if kind != "mistral3" {
        return Err(ModelError::Config(format!(
            "weight orthogonalization of a {kind} model's image projector is not implemented; export its text model alone with --text-only"
        )));
    }
    let unit = unit_direction(direction, hidden, &Device::Cpu)?;
    Ok(move |name: &str, t: Tensor| -> Result<Tensor, ModelError> {
        let writer = |suffix: &str| {
            name.strip_suffix(suffix)
                .is_some_and(|p| p.ends_with("multi_modal_projector.linear_2"))
        };
        if writer(".weight") && t.dims().first() == Some(&hidden) {
            project_rows_out(&t, &unit, DType::F32)
        } else if writer(".bias") && t.dims() == [hidden] {
            Ok(project_rows_out(&t.reshape((hidden, 1))?, &unit, DType::F32)?.flatten_all()?)
        } else if writer(".weight") || writer(".bias") {
            Err(ModelError::Weights(format!(
                "`{name}` has shape {:?}; the text model's hidden size is {hidden}",
                t.dims()
            )))
        } else {
            Ok(t)
        }
    })
}

/// Weight orthogonalization as a change made to each tensor by name
/// ([`steerkit_model::weights::TensorMap`]): exporters apply it to one tensor at a time as
/// they write, so that the projected model is never held beside the loaded one.
pub struct Orthogonalizer {
    unit: Tensor,
    /// Names (as [`Model::named_tensors`] gives them) of the tensors that write to the residual.
    writers: std::collections::HashSet<String>,
    dtype: DType,
    hidden: usize,
}

impl Orthogonalizer {
    /// The orthogonalizer of `model` against `direction`, and `model` with a tied head untied
    /// (the head is the embedding as it is; storage shared, nothing copied), which is the
    /// model to apply it to.
    ///
    /// Refused for Gemma and OLMo 2: their blocks norm their outputs before adding them to
    /// the residual, and a norm's per-channel weights turn an output orthogonal to the
    /// direction into one that is not.
    pub fn new(model: &Model, direction: &Tensor) -> Result<(Model, Self), ModelError> {
        if model.cfg.arch.post_norms() {
            return Err(ModelError::Config(format!(
                "weight orthogonalization is not exact for {}: its blocks norm their outputs before adding them to the residual, which brings the direction back; use hook-based ablation (`steerkit ablate`, `steerkit eval --intervention ablate`)",
                model.cfg.arch.name()
            )));
        }
        let hidden = model.cfg.hidden_size;
        let unit = unit_direction(direction, hidden, &model.device)?;
        let mut m = model.clone();
        if m.lm_head.is_none() {
            m.lm_head = Some(m.embed.clone());
            m.cfg.tie_word_embeddings = false;
        }
        // Embedding rows are residual vectors; in each block, the tensors of the maps that
        // write to the residual, found by identity among the block's named tensors.
        let mut writers = std::collections::HashSet::from(["model.embed_tokens.weight".into()]);
        let mut blocks = m.layers.clone();
        for (l, blk) in blocks.iter_mut().enumerate() {
            let ids: std::collections::HashSet<_> = blk
                .residual_writers_mut()
                .into_iter()
                .flat_map(|lin| {
                    std::iter::once(lin.weight.id()).chain(lin.bias.as_ref().map(Tensor::id))
                })
                .collect();
            for (name, t) in blk.named_tensors_mut() {
                if ids.contains(&t.id()) {
                    writers.insert(format!("model.layers.{l}.{name}"));
                }
            }
        }
        let dtype = model.dtype;
        Ok((
            m,
            Orthogonalizer {
                unit,
                writers,
                dtype,
                hidden,
            },
        ))
    }

    /// `t`, named `name`: with the direction projected out of its output side when it writes
    /// to the residual (`W - r̂ r̂ᵀ W`; an embedding's rows, a bias), else as it is.
    pub fn apply(&self, name: &str, t: Tensor) -> Result<Tensor, ModelError> {
        if !self.writers.contains(name) {
            return Ok(t);
        }
        let d = self.hidden;
        let unit = self.unit.to_device(t.device())?;
        match t.dims() {
            [_, n] if name == "model.embed_tokens.weight" && *n == d => {
                Ok(project_rows_out(&t.t()?, &unit, self.dtype)?
                    .t()?
                    .contiguous()?)
            }
            [rows, _] if *rows == d => project_rows_out(&t, &unit, self.dtype),
            [rows] if *rows == d => {
                Ok(project_rows_out(&t.reshape((d, 1))?, &unit, self.dtype)?.flatten_all()?)
            }
            dims => Err(ModelError::Weights(format!(
                "`{name}` has shape {dims:?}; it writes to a residual stream of {d}"
            ))),
        }
    }
}

/// A copy of `model` with `direction` projected out of everything that writes to the residual
/// ([`Orthogonalizer`], applied to every tensor now).
pub fn orthogonalize(model: &Model, direction: &Tensor) -> Result<Model, ModelError> {
    let (mut m, o) = Orthogonalizer::new(model, direction)?;
    m.embed = o.apply("model.embed_tokens.weight", m.embed.clone())?;
    for (l, blk) in m.layers.iter_mut().enumerate() {
        for (name, t) in blk.named_tensors_mut() {
            *t = o.apply(&format!("model.layers.{l}.{name}"), t.clone())?;
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mistral 3's projector output layer loses the direction, weight and bias; every other
    /// tensor passes unchanged; another kind of model is refused.
    #[test]
    fn image_projector_is_orthogonalized() {
        let cpu = &Device::Cpu;
        let r = Tensor::new(&[3f32, 0.0, 4.0, 0.0], cpu).unwrap();
        let f = orthogonalize_carried("mistral3", &r, 4).unwrap();
        let w = Tensor::arange(0f32, 24.0, cpu)
            .unwrap()
            .reshape((4, 6))
            .unwrap();
        let unit = (&r / 5.0).unwrap().reshape((1, 4)).unwrap();
        let along = |t: &Tensor| -> f32 {
            let t = t.reshape((4, ())).unwrap();
            unit.matmul(&t)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(along(&w) > 1.0);
        for name in [
            "multi_modal_projector.linear_2.weight",
            "model.multi_modal_projector.linear_2.weight",
        ] {
            assert!(along(&f(name, w.clone()).unwrap()) < 1e-5, "{name}");
        }
        let b = Tensor::new(&[1f32, 2.0, 3.0, 4.0], cpu).unwrap();
        let b2 = f("multi_modal_projector.linear_2.bias", b.clone()).unwrap();
        assert_eq!(b2.dims(), [4]);
        assert!(along(&b2) < 1e-6);
        let same = f("multi_modal_projector.linear_1.weight", w.clone()).unwrap();
        assert_eq!(same.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        let wrong = f("multi_modal_projector.linear_2.weight", w.t().unwrap());
        assert!(wrong.unwrap_err().to_string().contains("hidden size is 4"));
        assert!(orthogonalize_carried("gemma3", &r, 4).is_err());
    }
}
