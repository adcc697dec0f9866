//! Difference-in-means candidates from streaming means.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use steerkit_data::PromptSet;
use steerkit_eval::run::remove_if_there;
use steerkit_model::{Loaded, Mode, ModelError, NoHook, Record, SharedPrefix, Site, SystemPrompt};

/// Failures around a run folder.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Eval(#[from] steerkit_eval::EvalError),
    #[error("{}: {msg}", path.display())]
    Run { path: PathBuf, msg: String },
}

pub(crate) fn run_err(path: &Path, msg: impl Into<String>) -> RunError {
    RunError::Run {
        path: path.into(),
        msg: msg.into(),
    }
}

/// What an extraction was computed from (`extract.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExtractMeta {
    pub model: String,
    pub fingerprint: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub harmful: SetInfo,
    pub harmless: SetInfo,
    pub system: String,
    /// The template text after the user's message.
    pub post_instruction: String,
    /// Number of post-instruction positions (`-positions..=-1`).
    pub positions: usize,
    /// Where in each layer the residual was read.
    pub site: String,
}

/// A prompt set's identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetInfo {
    pub source: String,
    pub n: usize,
    pub sha256: String,
}

impl SetInfo {
    pub fn of(s: &PromptSet) -> Self {
        SetInfo {
            source: s.source.clone(),
            n: s.items.len(),
            sha256: s.hash(),
        }
    }
}

/// Mean activations and the candidate directions of a run.
pub struct Candidates {
    pub meta: ExtractMeta,
    /// `[layers, positions, hidden]`.
    pub mean_harmful: Tensor,
    pub mean_harmless: Tensor,
    /// `mean_harmful - mean_harmless`.
    pub candidates: Tensor,
}

const TENSORS: &str = "directions.safetensors";
const META: &str = "extract.json";

impl Candidates {
    /// The candidate at a layer and a position (`-positions..=-1`), `[hidden]`.
    pub fn direction(&self, layer: usize, pos: isize) -> Result<Tensor, RunError> {
        let p = self.meta.positions as isize;
        if layer >= self.meta.num_layers || pos >= 0 || pos < -p {
            return Err(run_err(
                Path::new("candidates"),
                format!("no candidate at layer {layer}, position {pos} (layers 0..{}, positions -{p}..-1)", self.meta.num_layers),
            ));
        }
        Ok(self.candidates.get(layer)?.get((p + pos) as usize)?)
    }

    /// Writes the tensors and metadata (temporary files, then renames). The old metadata goes
    /// first, so that an interruption between the two renames leaves a folder that is not
    /// reused (new tensors beside the old metadata would pass for the old extraction).
    pub fn save(&self, dir: &Path) -> Result<(), RunError> {
        std::fs::create_dir_all(dir).map_err(|e| run_err(dir, e.to_string()))?;
        let meta_path = dir.join(META);
        remove_if_there(&meta_path).map_err(|e| run_err(&meta_path, e.to_string()))?;
        let map: std::collections::HashMap<String, Tensor> = [
            ("mean_harmful".to_string(), self.mean_harmful.clone()),
            ("mean_harmless".to_string(), self.mean_harmless.clone()),
            ("candidates".to_string(), self.candidates.clone()),
        ]
        .into();
        steerkit_model::weights::save_safetensors(&map, &dir.join(TENSORS))?;
        let meta = serde_json::to_vec_pretty(&self.meta).expect("serializes");
        steerkit_eval::run::write_atomic(&meta_path, &meta)?;
        Ok(())
    }

    /// Reads a run folder.
    pub fn load(dir: &Path) -> Result<Candidates, RunError> {
        let mp = dir.join(META);
        let tp = dir.join(TENSORS);
        for p in [&mp, &tp] {
            if !p.is_file() {
                return Err(run_err(
                    dir,
                    format!(
                        "missing {} (run `steerkit extract` first)",
                        p.file_name().unwrap().to_string_lossy()
                    ),
                ));
            }
        }
        let meta: ExtractMeta =
            serde_json::from_slice(&std::fs::read(&mp).map_err(|e| run_err(&mp, e.to_string()))?)
                .map_err(|e| run_err(&mp, format!("unreadable: {e}")))?;
        let t = candle_core::safetensors::load(&tp, &Device::Cpu)
            .map_err(|e| run_err(&tp, e.to_string()))?;
        let get = |k: &str| {
            t.get(k)
                .cloned()
                .ok_or_else(|| run_err(&tp, format!("no tensor `{k}`")))
        };
        let c = Candidates {
            mean_harmful: get("mean_harmful")?,
            mean_harmless: get("mean_harmless")?,
            candidates: get("candidates")?,
            meta,
        };
        let want = [c.meta.num_layers, c.meta.positions, c.meta.hidden_size];
        if c.candidates.dims() != want {
            return Err(run_err(
                &tp,
                format!(
                    "candidates have shape {:?}, extract.json says {want:?}",
                    c.candidates.dims()
                ),
            ));
        }
        Ok(c)
    }

    /// Checks that the run was made for this model's shape.
    pub fn check_model(&self, m: &Loaded, dir: &Path) -> Result<(), RunError> {
        if self.meta.hidden_size != m.model.cfg.hidden_size
            || self.meta.num_layers != m.model.cfg.num_layers
        {
            return Err(run_err(
                dir,
                format!(
                    "the directions were extracted from a model with {} layers of width {} ({}); this model has {} of width {}",
                    self.meta.num_layers,
                    self.meta.hidden_size,
                    self.meta.model,
                    m.model.cfg.num_layers,
                    m.model.cfg.hidden_size
                ),
            ));
        }
        Ok(())
    }
}

/// Mean block outputs `[layers, positions, hidden]` over a set, at the last `positions`
/// tokens of every prompt, summed batch by batch.
fn mean_activations(
    m: &Loaded,
    set: &PromptSet,
    system: &SystemPrompt,
    positions: usize,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor, RunError> {
    let layers = m.model.cfg.num_layers;
    let sites = Site::block_outputs(layers);
    let pos: Vec<isize> = (-(positions as isize)..0).collect();
    let mut sum = Tensor::zeros(
        (layers, positions, m.model.cfg.hidden_size),
        DType::F64,
        &Device::Cpu,
    )?;
    let rows = m.prompt_ids(&set.prompts(), system)?;
    // The template's shared first tokens run once; the recorded positions stay each row's own.
    let shared = SharedPrefix::new(&m.model, rows, positions, layers, &mut NoHook)?;
    for b in shared.batches(&m.model, m.tok.pad_id, batch) {
        let (ids, pads, mut cache) = b?;
        let mut rec = Record::new(sites.clone(), pos.clone());
        // Only the blocks: no final norm, no LM head.
        let x = m.model.embed(&ids)?;
        m.model.forward_layers(
            x,
            &pads,
            0..layers,
            Some(&mut cache),
            &mut rec,
            Mode::Inference,
        )?;
        let per_layer: Vec<Tensor> = sites
            .iter()
            .map(|s| {
                Ok(rec
                    .get(*s)
                    .expect("recorded")
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F64)?
                    .sum(0)?)
            })
            .collect::<Result<_, RunError>>()?;
        sum = (sum + Tensor::stack(&per_layer, 0)?)?;
        progress(pads.len());
    }
    Ok((sum / set.items.len() as f64)?.to_dtype(DType::F32)?)
}

/// Files of a run folder derived from its candidates (the selection and its scores), removed
/// when new candidates replace the old ones.
pub const STALE_AFTER_EXTRACTION: [&str; 3] = ["selected.json", "scores.csv", "scores.svg"];

/// Extracts the candidates, or reuses `dir`'s when they were computed from the same model,
/// prompts and template. `progress(n)` is told about every `n` prompts done.
pub fn extract(
    m: &Loaded,
    harmful: &PromptSet,
    harmless: &PromptSet,
    system: &SystemPrompt,
    batch: usize,
    dir: &Path,
    progress: &mut dyn FnMut(usize),
) -> Result<(Candidates, bool), RunError> {
    let post = m.chat.post_instruction_text(system)?;
    // Every prompt has the same template suffix, hence the same number of post-instruction
    // tokens; check it on the first prompt of each set.
    let positions = m
        .chat
        .prompt(&m.tok, &harmful.items[0].prompt, system)?
        .post_instruction;
    let other = m
        .chat
        .prompt(&m.tok, &harmless.items[0].prompt, system)?
        .post_instruction;
    if positions != other {
        return Err(run_err(
            dir,
            "the template's post-instruction length differs between prompts",
        ));
    }
    let meta = ExtractMeta {
        model: m.path.display().to_string(),
        fingerprint: m.fingerprint()?,
        hidden_size: m.model.cfg.hidden_size,
        num_layers: m.model.cfg.num_layers,
        harmful: SetInfo::of(harmful),
        harmless: SetInfo::of(harmless),
        system: format!("{system:?}"),
        post_instruction: post,
        positions,
        site: "block output".into(),
    };
    if let Ok(old) = Candidates::load(dir) {
        if old.meta == meta {
            return Ok((old, true));
        }
    }
    let mean_harmful = mean_activations(m, harmful, system, positions, batch, progress)?;
    let mean_harmless = mean_activations(m, harmless, system, positions, batch, progress)?;
    let candidates = (&mean_harmful - &mean_harmless)?;
    // `steerkit select`'s outputs scored the candidates about to be replaced: remove them
    // before the new candidates are written, so that a finished or half-written extraction
    // never sits beside a stale selection, but not earlier: an extraction interrupted while
    // it computes leaves the old candidates, and their selection, as they were.
    for f in STALE_AFTER_EXTRACTION {
        let p = dir.join(f);
        remove_if_there(&p).map_err(|e| run_err(&p, e.to_string()))?;
    }
    let c = Candidates {
        meta,
        mean_harmful,
        mean_harmless,
        candidates,
    };
    c.save(dir)?;
    Ok((c, false))
}
