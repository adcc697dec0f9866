//! llama.cpp control vectors (`--control-vector FILE`): a GGUF file with
//! `general.architecture = controlvector`, `controlvector.model_hint`,
//! `controlvector.layer_count`, and f32 tensors `direction.N`.
//!
//! llama.cpp adds `direction.N` to the output of block `N` (0-based; there is no slot for
//! block 0), which is where steerkit's activation addition at the output of layer `N` acts.
//! `scripts/check_llamacpp_export.py` checks this placement in llama.cpp.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};
use steerkit_model::gguf::write::{Planned, Storage};
use steerkit_model::ModelError;

/// Writes `coeff * direction` as the control vector of block `layer` (temporary file, then rename).
pub fn write(
    direction: &Tensor,
    layer: usize,
    num_layers: usize,
    coeff: f64,
    model_hint: &str,
    out: &Path,
) -> Result<(), ModelError> {
    if layer == 0 || layer >= num_layers {
        return Err(ModelError::Input(format!(
            "llama.cpp control vectors address blocks 1..{} (0-based outputs); layer {layer} cannot be written",
            num_layers - 1
        )));
    }
    let v = (direction.to_dtype(DType::F32)?.to_device(&Device::Cpu)? * coeff)?;
    let name = format!("direction.{layer}");
    let arch = Value::String("controlvector".into());
    let hint = Value::String(model_hint.into());
    let count = Value::U32(1);
    steerkit_model::gguf::write::write(
        out,
        &[
            ("general.architecture", &arch),
            ("controlvector.model_hint", &hint),
            ("controlvector.layer_count", &count),
        ],
        vec![Planned::ready(name, v, Storage::F32)],
        &|_, _| {},
    )
}
