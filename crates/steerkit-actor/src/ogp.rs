//! The capability subspaces of the trained block (activation-based gradient projection):
//! inputs of every linear map of block `l*` on capability prompts, their GPM bases, saved in
//! the run folder and reused.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use steerkit_model::Model;
use steerkit_ogp::{gpm_basis, Projector};

use crate::states::pad_rows;
use crate::train::OgpSettings;
use crate::ActorError;

const BASES: &str = "ogp_bases.safetensors";
const META: &str = "ogp.json";

/// Per matrix: its name, the basis size and the share of the inputs' energy it keeps.
pub type BasisSummary = Vec<(String, usize, f64)>;

/// The projector for block `layer` from the block inputs of capability prompts, or the one
/// saved in `dir` for the same settings. Returns the projector and, per matrix, the basis size
/// and the energy it keeps.
pub fn capability_projector(
    model: &Model,
    layer: usize,
    inputs: &[Tensor],
    settings: &OgpSettings,
    dir: &Path,
) -> Result<(Projector, BasisSummary), ActorError> {
    // The settings and the inputs themselves: bases of other capability prompts (another
    // system prompt, model or set) are not reused.
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for t in inputs {
        h.update(format!("{:?}", t.dims()).as_bytes());
        for x in t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
        {
            h.update(x.to_le_bytes());
        }
    }
    let inputs_hash = format!("{:x}", h.finalize());
    let key = serde_json::to_string(&(layer, settings, inputs_hash)).expect("serializes");
    let meta_path = dir.join(META);
    if let (Ok(old), Ok(t)) = (
        std::fs::read_to_string(&meta_path),
        candle_core::safetensors::load(dir.join(BASES), &Device::Cpu),
    ) {
        if let Ok((k, summary)) = serde_json::from_str::<(String, BasisSummary)>(&old) {
            if k == key {
                return Ok((Projector::new(t).to_device(&model.device)?, summary));
            }
        }
    }
    let (bases, summary) = layer_bases(model, layer, inputs, settings.energy, settings.max_k)?;
    steerkit_model::weights::save_safetensors(&bases, &dir.join(BASES))?;
    steerkit_eval::run::write_atomic(
        &meta_path,
        serde_json::to_string_pretty(&(key, &summary))
            .expect("serializes")
            .as_bytes(),
    )?;
    Ok((Projector::new(bases).to_device(&model.device)?, summary))
}

/// The GPM bases (`[in, k]`, f32, named `model.layers.L.…weight`) of every linear map of block
/// `layer` from its inputs `inputs` (block inputs of capability sequences, `[tokens, hidden]`
/// each), with per matrix the basis size and the energy kept. q/k/v and gate/up share a basis.
pub fn layer_bases(
    model: &Model,
    layer: usize,
    inputs: &[Tensor],
    energy: f64,
    max_k: usize,
) -> Result<(HashMap<String, Tensor>, BasisSummary), ActorError> {
    if inputs.is_empty() {
        return Err(ActorError::Input(
            "no capability prompts for the projection".into(),
        ));
    }
    // Inputs of every linear map, all real positions of all prompts.
    let mut rows: HashMap<String, Vec<Tensor>> = HashMap::new();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    for chunk in refs.chunks(16) {
        let (x, pads) = pad_rows(chunk)?;
        let x = x.to_device(&model.device)?.to_dtype(model.dtype)?;
        for (name, a) in model.linear_inputs(layer, &x, &pads)? {
            rows.entry(name)
                .or_default()
                .push(a.to_device(&Device::Cpu)?);
        }
    }
    // q/k/v and gate/up share their inputs: one basis each.
    let mut by_input: HashMap<String, steerkit_ogp::Basis> = HashMap::new();
    let mut bases = HashMap::new();
    let mut summary = Vec::new();
    let mut names: Vec<&String> = rows.keys().collect();
    names.sort();
    for name in names {
        // An MLP's (or an expert's) gate and up read the same rows.
        let gated = name
            .strip_suffix("gate_proj.weight")
            .or_else(|| name.strip_suffix("up_proj.weight"));
        let shared = match (name.as_str(), gated) {
            (
                "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight",
                _,
            ) => "attention input".to_string(),
            (_, Some(prefix)) => format!("{prefix}input"),
            (other, None) => other.to_string(),
        };
        if !by_input.contains_key(&shared) {
            let a = Tensor::cat(&rows[name], 0)?;
            let b = gpm_basis(&a, energy, max_k).map_err(|e| ActorError::Input(e.to_string()))?;
            by_input.insert(shared.clone(), b);
        }
        let b = &by_input[&shared];
        let full = format!("model.layers.{layer}.{name}");
        summary.push((full.clone(), b.u.dim(1)?, b.energy));
        bases.insert(full, b.u.to_dtype(candle_core::DType::F32)?);
    }
    Ok((bases, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use steerkit_model::random::{random_model, seeded_normal, tiny_config};
    use steerkit_model::Arch;

    /// Saved bases are reused for the same inputs only: inputs of other capability prompts
    /// (another system prompt, say) get their own, as a fresh folder would.
    #[test]
    fn saved_bases_follow_the_inputs() {
        let model = random_model(tiny_config(Arch::Llama, 64), DType::F32, 3).unwrap();
        let settings = OgpSettings {
            data: "harmless".into(),
            n: 2,
            energy: 0.9,
            max_k: 8,
            estimator: Default::default(),
        };
        let inputs = |seed| {
            vec![seeded_normal(5 * 32, seed)
                .unwrap()
                .reshape((5, 32))
                .unwrap()]
        };
        let dir = tempfile::tempdir().unwrap();
        // Names and sizes exactly, energies to rounding (the sums run in parallel).
        let same = |a: &BasisSummary, b: &BasisSummary| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.0 == y.0 && x.1 == y.1 && (x.2 - y.2).abs() < 1e-9)
        };
        let (_, first) =
            capability_projector(&model, 1, &inputs(1), &settings, dir.path()).unwrap();
        let (_, reused) =
            capability_projector(&model, 1, &inputs(1), &settings, dir.path()).unwrap();
        assert!(same(&first, &reused));
        let (_, other) =
            capability_projector(&model, 1, &inputs(2), &settings, dir.path()).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let (_, want) =
            capability_projector(&model, 1, &inputs(2), &settings, fresh.path()).unwrap();
        assert!(same(&other, &want), "{other:?} against {want:?}");
        assert!(!same(&other, &first), "the first inputs' bases were reused");
    }
}
