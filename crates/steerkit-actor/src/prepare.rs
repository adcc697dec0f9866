//! Everything before training: the target layer, the training examples and the cache of their
//! block inputs in the run folder (reused when the model, prompts and settings are the same).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use steerkit_data::PromptSet;
use steerkit_eval::run::write_atomic;
use steerkit_eval::score::refusal_token_ids;
use steerkit_model::{Loaded, SystemPrompt};

use crate::states::{block_inputs, last_token_states, silhouette};
use crate::train::{block_last, Group, Val};
use crate::{run_err, ActorError};
use steerkit_model::Mode;

/// Settings of the preparation.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub system: SystemPrompt,
    pub batch: usize,
    /// Train this layer instead of choosing by silhouette.
    pub layer: Option<usize>,
    /// The silhouette choice looks at layers in `[lo, hi)` of the depth (middle layers).
    pub layer_range: (f64, f64),
    /// Keep only the pseudo-harmful prompts whose first-token refusal score exceeds this.
    pub only_refused: Option<f64>,
    /// Smallest silhouette at the target layer: below it the model shows no refusal signal.
    pub min_silhouette: f64,
}

/// The prepared run.
pub struct Prepared {
    pub layer: usize,
    /// Silhouette by layer (only the layers scored).
    pub silhouettes: Vec<(usize, f64)>,
    pub data: Vec<(Group, Tensor)>,
    pub vals: Vec<Val>,
    pub kept_pseudo: usize,
    pub total_pseudo: usize,
    /// True when the cache of an earlier run was reused.
    pub reused: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheMeta {
    key: String,
    layer: usize,
    silhouettes: Vec<(usize, f64)>,
    groups: Vec<Group>,
    vals: Vec<(String, usize)>,
    kept_pseudo: usize,
    total_pseudo: usize,
}

const CACHE_META: &str = "inputs.json";
const CACHE: &str = "inputs.safetensors";

fn cache_key(
    m: &Loaded,
    sets: [&PromptSet; 3],
    vals: &[PromptSet],
    opts: &PrepareOptions,
) -> Result<String, ActorError> {
    let mut h = Sha256::new();
    h.update(m.fingerprint()?);
    for s in sets.iter().chain(vals.iter().collect::<Vec<_>>().iter()) {
        h.update(s.name.as_bytes());
        h.update(s.hash());
    }
    h.update(format!(
        "{:?}|{:?}|{:?}|{:?}",
        opts.system, opts.layer, opts.layer_range, opts.only_refused
    ));
    Ok(format!("{:x}", h.finalize()))
}

/// The description of the cache in `dir`, when there is a readable one.
fn read_meta(dir: &Path) -> Option<CacheMeta> {
    serde_json::from_slice(&std::fs::read(dir.join(CACHE_META)).ok()?).ok()
}

fn load_cache(dir: &Path, key: &str) -> Option<Prepared> {
    let meta = read_meta(dir)?;
    if meta.key != key {
        return None;
    }
    let t = candle_core::safetensors::load(dir.join(CACHE), &Device::Cpu).ok()?;
    let data = meta
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| Some((*g, t.get(&format!("train.{i}"))?.clone())))
        .collect::<Option<Vec<_>>>()?;
    let vals = meta
        .vals
        .iter()
        .enumerate()
        .map(|(k, (name, n))| {
            Some(Val {
                name: name.clone(),
                inputs: (0..*n)
                    .map(|i| t.get(&format!("val.{k}.{i}")).cloned())
                    .collect::<Option<Vec<_>>>()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Prepared {
        layer: meta.layer,
        silhouettes: meta.silhouettes,
        data,
        vals,
        kept_pseudo: meta.kept_pseudo,
        total_pseudo: meta.total_pseudo,
        reused: true,
    })
}

/// Fails when the silhouette at the training layer is below `min`: no refusal signal there.
fn check_signal(layer: usize, sil: f64, min: f64) -> Result<(), ActorError> {
    if sil < min {
        return Err(ActorError::Input(format!(
            "no refusal signal at layer {layer}: harmful and harmless states are not separable (silhouette {sil:.3} < {min}); this model may not refuse, or choose another --layer"
        )));
    }
    Ok(())
}

/// Chooses the layer (unless given), screens the pseudo-harmful prompts (when asked) and caches
/// the block inputs of every training and validation prompt in `dir`.
/// `progress(phase, n)` is told about every `n` prompts done.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    m: &Loaded,
    harmful: &PromptSet,
    harmless: &PromptSet,
    pseudo: &PromptSet,
    vals: &[PromptSet],
    opts: &PrepareOptions,
    dir: &Path,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<Prepared, ActorError> {
    for s in [harmful, harmless, pseudo]
        .iter()
        .chain(vals.iter().collect::<Vec<_>>().iter())
    {
        if s.items.is_empty() {
            return Err(ActorError::Input(format!("the set `{}` is empty", s.name)));
        }
    }
    let n = m.model.cfg.num_layers;
    if let Some(l) = opts.layer {
        if l >= n {
            return Err(ActorError::Input(format!(
                "layer {l} is out of range: the model has layers 0..{}",
                n - 1
            )));
        }
    }
    let key = cache_key(m, [harmful, harmless, pseudo], vals, opts)?;
    // A cache made with a lower --min-silhouette (or none) is checked against this one: the
    // silhouette at the cached layer is in it.
    if let Some(p) = load_cache(dir, &key) {
        if let Some(&(_, sil)) = p.silhouettes.iter().find(|(l, _)| *l == p.layer) {
            check_signal(p.layer, sil, opts.min_silhouette)?;
            return Ok(p);
        }
    }
    // Caching anew where training has started would resume that training on other prompts.
    if crate::train::has_started(dir) && read_meta(dir).is_some_and(|m| m.key != key) {
        return Err(run_err(
            dir,
            "holds a training run prepared from other prompts or preparation settings (model, \
             sets, validation sets, system prompt, layer, screening); use another --out or \
             delete it",
        ));
    }
    let hp = harmful.prompts();
    let bp = harmless.prompts();
    let ids = refusal_token_ids(&m.tok);
    let (layer, silhouettes, h_in, b_in) = match opts.layer {
        Some(l) => {
            let mut inputs = |p: &[&str]| {
                block_inputs(m, p, &opts.system, l, opts.batch, None, &mut |k| {
                    progress("caching block inputs", k)
                })
                .map(|x| x.0)
            };
            (l, Vec::new(), inputs(&hp)?, inputs(&bp)?)
        }
        None => {
            let both: Vec<&str> = hp.iter().chain(&bp).copied().collect();
            let lo = ((opts.layer_range.0 * n as f64).floor() as usize).min(n - 1);
            let hi = ((opts.layer_range.1 * n as f64).ceil() as usize).clamp(lo + 1, n);
            // One pass: last-token states for the choice, and the inputs of every candidate
            // layer, so that the chosen one needs no second pass.
            let (states, mut inputs) =
                last_token_states(m, &both, &opts.system, opts.batch, lo..hi, &mut |k| {
                    progress("choosing the layer", k)
                })?;
            let labels: Vec<bool> = (0..both.len()).map(|i| i < hp.len()).collect();
            let mut sil = Vec::new();
            for l in lo..hi {
                if let Some(s) = silhouette(&states.get(l)?, &labels)? {
                    sil.push((l, s));
                }
            }
            let best = sil
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|x| x.0)
                .ok_or_else(|| {
                    ActorError::Input("need two harmful and two harmless prompts".into())
                })?;
            let mut chosen = inputs.swap_remove(best - lo);
            let b_in = chosen.split_off(hp.len());
            (best, sil, chosen, b_in)
        }
    };
    // The refusal signal at the layer: silhouette of the block's last-token outputs (already
    // measured when the layer was chosen; otherwise one block forward from the cached inputs).
    let sil_at = match silhouettes.iter().find(|(l, _)| *l == layer) {
        Some((_, s)) => *s,
        None => {
            let rows: Vec<&Tensor> = h_in.iter().chain(&b_in).collect();
            let mut outs = Vec::new();
            for chunk in rows.chunks(opts.batch.max(1)) {
                outs.push(
                    block_last(&m.model, layer, chunk, Mode::Inference)?.to_device(&Device::Cpu)?,
                );
            }
            let labels: Vec<bool> = (0..rows.len()).map(|i| i < h_in.len()).collect();
            silhouette(&Tensor::cat(&outs, 0)?, &labels)?.unwrap_or(0.0)
        }
    };
    check_signal(layer, sil_at, opts.min_silhouette)?;
    let mut caching = |p: &[&str], screen: bool| {
        block_inputs(
            m,
            p,
            &opts.system,
            layer,
            opts.batch,
            screen.then_some(ids.as_slice()),
            &mut |k| progress("caching block inputs", k),
        )
    };
    let (p_in, p_scores) = caching(&pseudo.prompts(), opts.only_refused.is_some())?;
    let total_pseudo = p_in.len();
    let p_in: Vec<Tensor> = match (opts.only_refused, p_scores) {
        (Some(th), Some(sc)) => p_in
            .into_iter()
            .zip(sc)
            .filter(|(_, s)| *s > th)
            .map(|(t, _)| t)
            .collect(),
        _ => p_in,
    };
    if p_in.is_empty() {
        return Err(ActorError::Input(format!(
            "none of the {total_pseudo} pseudo-harmful prompts of `{}` is refused (first-token refusal score > {}); there is no over-refusal to remove",
            pseudo.name,
            opts.only_refused.unwrap_or(0.0)
        )));
    }
    let kept_pseudo = p_in.len();
    let mut silhouettes = silhouettes;
    if !silhouettes.iter().any(|(l, _)| *l == layer) {
        silhouettes.push((layer, sil_at));
    }
    let mut val_sets = Vec::new();
    for v in vals {
        let (inputs, _) = caching(&v.prompts(), false)?;
        val_sets.push(Val {
            name: v.name.clone(),
            inputs,
        });
    }
    let mut data: Vec<(Group, Tensor)> = Vec::new();
    data.extend(h_in.into_iter().map(|t| (Group::Harmful, t)));
    data.extend(b_in.into_iter().map(|t| (Group::Harmless, t)));
    data.extend(p_in.into_iter().map(|t| (Group::Pseudo, t)));
    // The cache: tensors first, then the metadata that names them (the commit point).
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (i, (_, t)) in data.iter().enumerate() {
        map.insert(format!("train.{i}"), t.clone());
    }
    for (k, v) in val_sets.iter().enumerate() {
        for (i, t) in v.inputs.iter().enumerate() {
            map.insert(format!("val.{k}.{i}"), t.clone());
        }
    }
    // The folder is made only now, so that an error above leaves nothing behind.
    std::fs::create_dir_all(dir).map_err(|e| run_err(dir, e.to_string()))?;
    steerkit_model::weights::save_safetensors(&map, &dir.join(CACHE))?;
    let meta = CacheMeta {
        key,
        layer,
        silhouettes: silhouettes.clone(),
        groups: data.iter().map(|(g, _)| *g).collect(),
        vals: val_sets
            .iter()
            .map(|v| (v.name.clone(), v.inputs.len()))
            .collect(),
        kept_pseudo,
        total_pseudo,
    };
    write_atomic(
        &dir.join(CACHE_META),
        &serde_json::to_vec_pretty(&meta).expect("serializes"),
    )?;
    Ok(Prepared {
        layer,
        silhouettes,
        data,
        vals: val_sets,
        kept_pseudo,
        total_pseudo,
        reused: false,
    })
}
