//! Interventions with a direction, as forward hooks.

use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};
use steerkit_model::{Ablate, Add, HookPoint, ModelError, Site};

/// A short content hash of a direction (its f32 values): evaluation runs name the direction
/// they were answered under by it, so a re-extracted direction in the same folder never
/// reuses old answers and a moved folder keeps them.
pub fn direction_id(direction: &Tensor) -> Result<String, ModelError> {
    let v: Vec<f32> = direction.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    Ok(format!("{:x}", h.finalize())[..12].to_string())
}

/// Directional ablation `x <- x - (x·r̂) r̂` at every layer, at the block input, after
/// attention and at the block output (so both sub-layer outputs are covered).
pub fn ablation(direction: &Tensor) -> Result<Ablate, ModelError> {
    Ablate::new(direction, &HookPoint::ALL)
}

/// Activation addition `x <- x + c·r` at the output of `layer` (where the direction was read).
pub fn addition(direction: &Tensor, layer: usize, coeff: f64) -> Result<Add, ModelError> {
    Add::new(
        Site {
            layer,
            point: HookPoint::Output,
        },
        direction,
        coeff,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn direction_ids_follow_the_values() {
        let a = Tensor::new(&[1f32, 0.5, -2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, 0.5, -2.5], &Device::Cpu).unwrap();
        let id = direction_id(&a).unwrap();
        assert_eq!(id.len(), 12);
        assert_eq!(id, direction_id(&a.clone()).unwrap());
        assert_ne!(id, direction_id(&b).unwrap());
        // The same values in another dtype (as loaded on a GPU) give the same id.
        let a16 = a.to_dtype(DType::F16).unwrap();
        assert_eq!(id, direction_id(&a16).unwrap());
    }
}
