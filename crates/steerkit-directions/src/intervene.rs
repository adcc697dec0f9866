//! Interventions with a direction, as forward hooks.

use candle_core::Tensor;
use steerkit_model::{Ablate, Add, HookPoint, ModelError, Site};

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
