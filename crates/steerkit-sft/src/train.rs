//! The trainer: next-token cross-entropy on answer tokens, AdamW on blocks `start..end`,
//! optional gradient projection of every step, checkpoints every few steps and exact resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use steerkit_actor::adamw::{AdamW, AdamWConfig};
use steerkit_actor::train::{
    append_ogp_rows, load_layers, non_finite, save_safetensors, step_fault, StepFault,
};
use steerkit_actor::Parts;
use steerkit_eval::run::{remove_if_there, write_atomic};
use steerkit_model::{pad_rows, unpad_rows, Mode, Model, NoHook};
pub use steerkit_ogp::capability::{answer_loss, block_inputs};
use steerkit_ogp::capability::{batch_indices, clip_to_norm, grad_projector, gradients, Example};
use steerkit_ogp::{GradBasis, GradProjector, Projector, Subspace};

use crate::SftError;

/// Gradient projection of the optimizer's steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ogp {
    None,
    /// GPM: per matrix, the top singular vectors of its inputs on the capability sequences
    /// (with the weights before training), keeping `energy` of their energy, at most `max_k`.
    Act {
        energy: f64,
        max_k: usize,
    },
    /// OGPSA: per matrix, the span of its cross-entropy gradients on `k` capability batches,
    /// recomputed every `every` steps.
    Grad {
        k: usize,
        every: usize,
    },
}

/// Training settings (`config` in `safety.json` and `state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    /// Trained blocks `start..end`.
    pub layers: (usize, usize),
    pub adamw: AdamWConfig,
    pub steps: usize,
    pub batch: usize,
    /// Largest global gradient norm (0: no clipping).
    pub clip: f64,
    pub seed: u64,
    pub parts: Parts,
    pub ogp: Ogp,
    /// Checkpoint every this many steps (and after the last).
    pub save_every: usize,
}

impl SftConfig {
    /// These settings with what a resume may change (the steps and the saving interval)
    /// taken from `other`.
    fn as_resume_of(&self, other: &SftConfig) -> SftConfig {
        let mut a = self.clone();
        a.steps = other.steps;
        a.save_every = other.save_every;
        a
    }

    /// Settings that may resume `other`'s run: equal but for the steps and the saving
    /// interval.
    pub fn same_run(&self, other: &SftConfig) -> bool {
        self.as_resume_of(other) == *other
    }

    /// The settings that keep `other` from resuming this run, by name (`adamw.lr`, `seed`).
    pub fn resume_differences(&self, other: &SftConfig) -> Vec<String> {
        steerkit_eval::run::differing_settings(&self.as_resume_of(other), other)
    }
}

/// One line of `log.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    /// Mean share of the step's norm removed by the projection, over projected matrices.
    pub removed: f64,
    /// Tokens in the batch (prompt and answer) and answer tokens (with a loss).
    pub tokens: usize,
    pub answer_tokens: usize,
    /// Seconds of the step, and of them the projection's (basis refresh and projecting).
    pub seconds: f64,
    pub ogp_seconds: f64,
}

/// What a run reports at the end (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub steps: usize,
    /// Steps of this invocation (fewer than `steps` after a resume) and their time.
    pub steps_run: usize,
    pub seconds: f64,
    pub steps_per_s: f64,
    pub tokens_per_s: f64,
    /// Share of the training time spent on the projection (0 without).
    pub ogp_share: f64,
    /// Seconds to compute the `act` bases (before training).
    pub ogp_setup_seconds: f64,
    pub first_loss: f64,
    pub last_loss: f64,
}

/// Progress events.
pub enum Progress {
    Phase(&'static str, usize),
    Advance(usize),
    Step { step: usize, loss: f64 },
}

#[derive(Serialize, Deserialize)]
struct State {
    step: usize,
    config: SftConfig,
}

const STATE: &str = "state.json";
const LOG: &str = "log.json";
const ACT_BASES: &str = "ogp_act.safetensors";
const ACT_KEY: &str = "ogp_act.key";

/// The files of one checkpoint: the trained blocks, the optimizer state and (with `grad`
/// projection) the gradient bases. Each checkpoint has its own files, and the previous ones
/// are removed only after `state.json` commits the new step: a kill between the files and the
/// commit leaves the committed step's files intact (overwritten in place, they held the next
/// checkpoint's weights beside the committed step's optimizer, and a resume trained on a mix).
/// Run folders made before 2026-11-28 hold one unnumbered set (`trained.safetensors`, ...),
/// read when the numbered file is not there.
#[derive(Clone, Copy)]
enum File {
    Weights,
    Optimizer,
    GradBases,
}

impl File {
    const ALL: [File; 3] = [File::Weights, File::Optimizer, File::GradBases];

    fn stem(self) -> &'static str {
        match self {
            File::Weights => "trained",
            File::Optimizer => "optimizer",
            File::GradBases => "ogp_grad",
        }
    }

    /// The file of checkpoint `step`.
    fn at(self, dir: &Path, step: usize) -> PathBuf {
        dir.join(format!("{}-step{step}.safetensors", self.stem()))
    }

    /// The file of checkpoint `step` to read: the numbered one, or a legacy folder's.
    fn read(self, dir: &Path, step: usize) -> PathBuf {
        let p = self.at(dir, step);
        let legacy = dir.join(format!("{}.safetensors", self.stem()));
        if !p.is_file() && legacy.is_file() {
            legacy
        } else {
            p
        }
    }
}

/// Removes every checkpoint file but step `keep`'s: the previous checkpoint's, those an
/// interrupted run wrote but never committed (and their temporary files), and, with `legacy`,
/// a legacy folder's unnumbered ones (not before a checkpoint replaces them).
fn remove_other_checkpoints(dir: &Path, keep: usize, legacy: bool) -> Result<(), SftError> {
    let io = |p: &Path, e: std::io::Error| SftError::Input(format!("{}: {e}", p.display()));
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let ours = File::ALL.iter().any(|f| {
            let Some(rest) = name.strip_prefix(f.stem()) else {
                return false;
            };
            let numbered = rest.strip_prefix("-step").and_then(|r| {
                let (n, tmp) = match r.strip_suffix(".safetensors.tmp") {
                    Some(n) => (n, true),
                    None => (r.strip_suffix(".safetensors")?, false),
                };
                n.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| n.parse::<usize>().ok().map(|n| (n, tmp)))?
            });
            match numbered {
                Some((step, tmp)) => tmp || step != keep,
                None => legacy && (rest == ".safetensors" || rest == ".safetensors.tmp"),
            }
        });
        if ours {
            remove_if_there(&path).map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

/// The last checkpoint of a run folder: the step and the trained blocks' file.
pub fn last_checkpoint(dir: &Path) -> Result<Option<(usize, PathBuf)>, SftError> {
    let p = dir.join(STATE);
    let Ok(b) = std::fs::read(&p) else {
        return Ok(None);
    };
    let s: State = serde_json::from_slice(&b)
        .map_err(|e| SftError::Input(format!("{}: unreadable: {e}", p.display())))?;
    Ok((s.step > 0).then(|| (s.step, File::Weights.read(dir, s.step))))
}

/// Refuses `steps` below the step the run folder `dir` was trained to: training never goes
/// back (checked by [`train`], and by a caller before its own preparation).
pub fn check_steps(dir: &Path, steps: usize) -> Result<(), SftError> {
    match last_checkpoint(dir)? {
        Some((done, _)) => steps_reach(dir, done, steps),
        None => Ok(()),
    }
}

/// Refuses `steps` below `done`, the step the run folder `dir` was trained to.
fn steps_reach(dir: &Path, done: usize, steps: usize) -> Result<(), SftError> {
    if done <= steps {
        return Ok(());
    }
    Err(SftError::Input(format!(
        "{} holds a run trained to step {done}, past --steps {steps}: training never goes \
         back (give --steps {done} or more to continue it, or use another --out)",
        dir.display()
    )))
}

/// Blocks `layers` run on the original weights: the block inputs at each of them, from those
/// at the first.
fn inputs_at_each_layer(
    model: &Model,
    first: &[Tensor],
    layers: (usize, usize),
) -> Result<Vec<Vec<Tensor>>, SftError> {
    let mut out = vec![first.to_vec()];
    for l in layers.0..layers.1 - 1 {
        let prev = out.last().expect("one at least");
        let mut next = Vec::with_capacity(prev.len());
        for chunk in prev.chunks(16) {
            let refs: Vec<&Tensor> = chunk.iter().collect();
            let (x, pads) = pad_rows(&refs)?;
            let x = x.to_device(&model.device)?.to_dtype(model.dtype)?;
            let y = model.forward_layers(x, &pads, l..l + 1, None, &mut NoHook, Mode::Inference)?;
            next.extend(unpad_rows(&y, &pads)?);
        }
        out.push(next);
    }
    Ok(out)
}

/// Trains blocks `cfg.layers` of `model` in place on `data`, with gradient projection from
/// `capability` (sequences the model should keep predicting; unused with [`Ogp::None`]).
/// Checkpoints go to `dir`; a rerun with the same settings resumes after the last checkpoint
/// (a larger `steps` extends a finished run).
pub fn train(
    model: &mut Model,
    data: &[Example],
    capability: &[Example],
    cfg: &SftConfig,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary, SftError> {
    let (a, b) = cfg.layers;
    let n_layers = model.layers.len();
    if a >= b || b > n_layers {
        return Err(SftError::Input(format!(
            "layers {a}..{b}: need start < end <= {n_layers}"
        )));
    }
    if data.is_empty() || cfg.batch == 0 || cfg.steps == 0 || cfg.save_every == 0 {
        return Err(SftError::Input(
            "nothing to train: no examples, or batch, steps or save-every of 0".into(),
        ));
    }
    if let Some(e) = data
        .iter()
        .chain(capability)
        .find(|e| e.start == 0 || e.start >= e.ids.len())
    {
        return Err(SftError::Input(format!(
            "an example without prompt or answer ({} tokens, answer from {})",
            e.ids.len(),
            e.start
        )));
    }
    match cfg.ogp {
        Ogp::None => {}
        Ogp::Act { energy, max_k } if energy > 0.0 && energy <= 1.0 && max_k > 0 => {}
        Ogp::Grad { k, every } if k > 0 && every > 0 => {}
        _ => {
            return Err(SftError::Input(format!(
                "bad projection settings {:?}",
                cfg.ogp
            )))
        }
    }
    if cfg.ogp != Ogp::None && capability.is_empty() {
        return Err(SftError::Input(
            "gradient projection needs capability data".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| SftError::Input(format!("{}: {e}", dir.display())))?;
    // The frozen part runs once, on the original weights. `grad` needs the capability
    // sequences' inputs throughout; `act` only when its bases are not saved yet.
    let grad = matches!(cfg.ogp, Ogp::Grad { .. });
    progress(Progress::Phase(
        "block inputs",
        data.len() + if grad { capability.len() } else { 0 },
    ));
    let inputs = block_inputs(model, data, a, 16, &mut |k| progress(Progress::Advance(k)))?;
    let cap_inputs = if grad {
        block_inputs(model, capability, a, 16, &mut |k| {
            progress(Progress::Advance(k))
        })?
    } else {
        Vec::new()
    };
    // Activation bases from the original weights (before any checkpoint is loaded).
    let t_setup = Instant::now();
    let act = match cfg.ogp {
        Ogp::Act { energy, max_k } => {
            // Saved bases are reused when they were built for the same blocks, settings and
            // capability sequences (the original weights are the same: the run's model).
            let key = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                for e in capability {
                    e.ids.hash(&mut h);
                    e.start.hash(&mut h);
                }
                format!("{:?} {energy} {max_k} {:x}", cfg.layers, h.finish())
            };
            let (file, key_file) = (dir.join(ACT_BASES), dir.join(ACT_KEY));
            let saved = match std::fs::read_to_string(&key_file) {
                Ok(k) if k == key => candle_core::safetensors::load(&file, &Device::Cpu).ok(),
                _ => None,
            };
            let bases = match saved {
                Some(b) => b,
                None => {
                    progress(Progress::Phase("capability subspaces", b - a));
                    let first = block_inputs(model, capability, a, 16, &mut |_| {})?;
                    let per_layer = inputs_at_each_layer(model, &first, cfg.layers)?;
                    let mut bases = HashMap::new();
                    for (l, x) in (a..b).zip(&per_layer) {
                        let (bs, _) = steerkit_actor::ogp::layer_bases(model, l, x, energy, max_k)?;
                        bases.extend(bs);
                        progress(Progress::Advance(1));
                    }
                    save_safetensors(&bases, &file)?;
                    write_atomic(&key_file, key.as_bytes())?;
                    bases
                }
            };
            Some(Projector::new(bases).to_device(&model.device)?)
        }
        _ => None,
    };
    let ogp_setup_seconds = t_setup.elapsed().as_secs_f64();
    // Resume.
    let sp = dir.join(STATE);
    let mut start = 0;
    if let Ok(bytes) = std::fs::read(&sp) {
        let s: State = serde_json::from_slice(&bytes)
            .map_err(|e| SftError::Input(format!("{}: unreadable: {e}", sp.display())))?;
        if !s.config.same_run(cfg) {
            return Err(SftError::Input(format!(
                "{} holds a run with other settings; use another --out or delete it",
                dir.display()
            )));
        }
        steps_reach(dir, s.step, cfg.steps)?;
        if s.step > 0 {
            load_layers(model, &File::Weights.read(dir, s.step))?;
            start = s.step;
            // Files of checkpoints never committed, or not yet removed, go now: a rerun that
            // trains no further would otherwise keep them for good.
            // A legacy folder's unnumbered files go only once a numbered checkpoint is
            // committed (all of its files are written before the commit).
            remove_other_checkpoints(dir, s.step, File::Weights.at(dir, s.step).is_file())?;
        }
    }
    let mut vars: Vec<(String, Var)> = Vec::new();
    let mut all: Vec<(String, Var)> = Vec::new();
    for l in a..b {
        let blk = model.trainable_block(l)?;
        vars.extend(blk.iter().filter(|(n, _)| cfg.parts.includes(n)).cloned());
        all.extend(blk);
    }
    let mut opt = AdamW::new(vars.clone(), cfg.adamw)?;
    let mut grad_proj = GradProjector::default();
    if start > 0 {
        let p = File::Optimizer.read(dir, start);
        let st = candle_core::safetensors::load(&p, &model.device)
            .map_err(|e| SftError::Input(format!("{}: {e}", p.display())))?;
        if !opt.restore(&st, start) {
            return Err(SftError::Input(format!(
                "{}: does not match the blocks",
                p.display()
            )));
        }
        if matches!(cfg.ogp, Ogp::Grad { .. }) {
            let gb = File::GradBases.read(dir, start);
            let bases = candle_core::safetensors::load(&gb, &model.device)
                .map_err(|e| SftError::Input(format!("{}: {e}", gb.display())))?;
            for (name, t) in bases {
                grad_proj.bases.insert(name, GradBasis::from_tensor(&t)?);
            }
        }
    }
    let mut logs: Vec<StepLog> = std::fs::read(dir.join(LOG))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    logs.truncate(start);
    let t_run = Instant::now();
    if start < cfg.steps {
        progress(Progress::Phase("training", cfg.steps));
        progress(Progress::Advance(start));
    }
    // Per matrix per step, written to `ogp.csv` at each checkpoint.
    let mut ogp_rows = String::new();
    let mut last_saved = start;
    let subspace_used = cfg.ogp != Ogp::None;
    // A checkpoint is committed only once the next step's loss and gradient, computed on its
    // weights, show them sound: a step that saturates the outputs (zero gradient) is seen one
    // step later, and its weights must not become the run's result. After the last step, one
    // more batch checks the final weights.
    let mut pending = false;
    for step in start..=cfg.steps {
        let check_only = step == cfg.steps;
        if check_only && !pending {
            break;
        }
        let t0 = Instant::now();
        let mut ogp_secs = 0.0;
        let idx = batch_indices(data.len(), cfg.batch, step, cfg.seed);
        let rows: Vec<&Tensor> = idx.iter().map(|&i| &inputs[i]).collect();
        let ex: Vec<&Example> = idx.iter().map(|&i| &data[i]).collect();
        let loss = answer_loss(model, a, &rows, &ex)?;
        let lv = steerkit_ogp::scalar_f64(&loss)?;
        let (gs, gn) = gradients(&loss, &vars)?;
        // The last committed checkpoint, named for an error.
        let last = |saved: usize| {
            (saved > 0).then(|| {
                let file = File::Weights.read(dir, saved);
                format!("step {saved}, {}", file.display())
            })
        };
        if let Some(fault) = step_fault(lv, gn) {
            // The weights that gave this loss are those after the previous step.
            let kept = fault.about_checkpoint(last(last_saved).as_deref(), last_saved == step);
            let at = if check_only {
                format!("the weights after step {step}, checked on one more batch")
            } else {
                format!("step {}", step + 1)
            };
            return Err(SftError::Diverged(format!("{at}: {fault}; {kept}")));
        }
        // This step's loss vouches for the weights it ran on: the pending checkpoint commits.
        let save_secs = if pending {
            let t = Instant::now();
            let weights: HashMap<String, Tensor> = all
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect();
            if let Some(name) = non_finite(&weights)? {
                let fault = StepFault::NonFinite(format!("`{name}` holds NaN or infinite values"));
                let kept = fault.about_checkpoint(last(last_saved).as_deref(), false);
                return Err(SftError::Diverged(format!("step {step}: {fault}; {kept}")));
            }
            save_safetensors(&weights, &File::Weights.at(dir, step))?;
            save_safetensors(&opt.state(), &File::Optimizer.at(dir, step))?;
            if matches!(cfg.ogp, Ogp::Grad { .. }) {
                let bases = grad_proj
                    .bases
                    .iter()
                    .map(|(n, b)| Ok((n.clone(), b.to_tensor()?)))
                    .collect::<Result<HashMap<_, _>, steerkit_ogp::OgpError>>()?;
                save_safetensors(&bases, &File::GradBases.at(dir, step))?;
            }
            if subspace_used {
                append_ogp_rows(
                    dir,
                    "step,matrix,step_norm,removed_norm",
                    last_saved + 1,
                    &ogp_rows,
                )?;
                ogp_rows.clear();
            }
            write_atomic(
                &dir.join(LOG),
                &serde_json::to_vec(&logs).expect("serializes"),
            )?;
            write_atomic(&dir.join("log.csv"), log_csv(&logs).as_bytes())?;
            // The commit point: a crash before it resumes from the previous checkpoint.
            let state = State {
                step,
                config: cfg.clone(),
            };
            write_atomic(&sp, &serde_json::to_vec_pretty(&state).expect("serializes"))?;
            remove_other_checkpoints(dir, step, true)?;
            last_saved = step;
            t.elapsed().as_secs_f64()
        } else {
            0.0
        };
        if check_only {
            break;
        }
        // Gradient bases: refreshed on schedule with the current weights (after the commit, so
        // that a checkpoint holds the bases its own step used).
        if let Ogp::Grad { k, every } = cfg.ogp {
            if step % every == 0 || grad_proj.bases.is_empty() {
                let t = Instant::now();
                // The old bases are freed first: each is as large as k gradients.
                grad_proj.bases.clear();
                grad_proj = grad_projector(
                    model,
                    a,
                    &vars,
                    &cap_inputs,
                    capability,
                    k,
                    cfg.batch,
                    step / every,
                )?;
                ogp_secs += t.elapsed().as_secs_f64();
            }
        }
        let gs = clip_to_norm(gs, gn, cfg.clip)?;
        let subspace: Option<&dyn Subspace> = match &cfg.ogp {
            Ogp::None => None,
            Ogp::Act { .. } => act.as_ref().map(|p| p as &dyn Subspace),
            Ogp::Grad { .. } => Some(&grad_proj),
        };
        let projected = opt.apply_subspace(&gs, subspace)?;
        ogp_secs += projected.seconds;
        for (name, norm, removed) in &projected.matrices {
            ogp_rows.push_str(&format!("{},{name},{norm:.6e},{removed:.6e}\n", step + 1));
        }
        logs.push(StepLog {
            step: step + 1,
            loss: lv,
            grad_norm: gn,
            removed: projected.mean_share().unwrap_or(0.0),
            tokens: ex.iter().map(|e| e.ids.len()).sum(),
            answer_tokens: ex.iter().map(|e| e.answer_len()).sum(),
            seconds: t0.elapsed().as_secs_f64() - save_secs,
            ogp_seconds: ogp_secs,
        });
        progress(Progress::Step {
            step: step + 1,
            loss: lv,
        });
        pending = (step + 1) % cfg.save_every == 0 || step + 1 == cfg.steps;
    }
    let ran = &logs[start.min(logs.len())..];
    let secs: f64 = ran.iter().map(|l| l.seconds).sum();
    let summary = Summary {
        steps: cfg.steps,
        steps_run: ran.len(),
        seconds: t_run.elapsed().as_secs_f64(),
        steps_per_s: if secs > 0.0 {
            ran.len() as f64 / secs
        } else {
            0.0
        },
        tokens_per_s: if secs > 0.0 {
            ran.iter().map(|l| l.tokens).sum::<usize>() as f64 / secs
        } else {
            0.0
        },
        ogp_share: if secs > 0.0 {
            ran.iter().map(|l| l.ogp_seconds).sum::<f64>() / secs
        } else {
            0.0
        },
        ogp_setup_seconds,
        first_loss: logs.first().map_or(f64::NAN, |l| l.loss),
        last_loss: logs.last().map_or(f64::NAN, |l| l.loss),
    };
    if !ran.is_empty() {
        write_atomic(
            &dir.join("summary.json"),
            &serde_json::to_vec_pretty(&summary).expect("serializes"),
        )?;
    }
    Ok(summary)
}

/// The step log as CSV.
pub fn log_csv(logs: &[StepLog]) -> String {
    let mut s = String::from(
        "step,loss,grad_norm,removed_share,tokens,answer_tokens,seconds,ogp_seconds\n",
    );
    for l in logs {
        s.push_str(&format!(
            "{},{:.6},{:.5},{:.4},{},{},{:.3},{:.3}\n",
            l.step,
            l.loss,
            l.grad_norm,
            l.removed,
            l.tokens,
            l.answer_tokens,
            l.seconds,
            l.ogp_seconds
        ));
    }
    s
}
