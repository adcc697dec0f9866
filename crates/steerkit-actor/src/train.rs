//! The trainer: targets, loss, AdamW on block `l*` only, per-epoch checkpoints and resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use steerkit_eval::run::{remove_if_there, write_atomic};
use steerkit_eval::score::refusal_score;
use steerkit_model::{widened, Mode, Model, NoHook};

use crate::adamw::{AdamW, AdamWConfig};
use crate::states::{log_softmax, pad_rows};
use crate::ActorError;

/// The role of a training prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Harmful,
    Harmless,
    Pseudo,
}

/// Which tensors of the block are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parts {
    pub attn: bool,
    pub mlp: bool,
    pub norms: bool,
}

impl std::str::FromStr for Parts {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut p = Parts {
            attn: false,
            mlp: false,
            norms: false,
        };
        for part in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            match part {
                "attn" => p.attn = true,
                "mlp" => p.mlp = true,
                "norms" => p.norms = true,
                other => return Err(format!("unknown part `{other}` (attn, mlp, norms)")),
            }
        }
        if !(p.attn || p.mlp || p.norms) {
            return Err("train at least one of attn, mlp, norms".into());
        }
        Ok(p)
    }
}

impl Parts {
    /// True when the tensor (Hugging Face name suffix) belongs to a trained part.
    pub fn includes(&self, name: &str) -> bool {
        // qwen3's per-head `self_attn.q_norm`/`k_norm` are norms, not attention maps.
        let norm = name.ends_with("norm.weight");
        (self.attn && name.contains(".self_attn.") && !norm)
            || (self.mlp && name.contains(".mlp."))
            || (self.norms && norm)
    }
}

/// Where the targets of benign (harmless and pseudo-harmful) prompts go along `R`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shift {
    /// `t = a - α P(a)`: the coordinate along `R` scaled by `1 - α`, the paper's rule.
    #[default]
    Origin,
    /// `t = a - α max(0, c(a) - c_b) R`, with `c(a) = a·R / R·R` and `c_b` its mean over the
    /// harmless prompts: only the part above the harmless mean moves, so α = 1 takes each state
    /// "just enough", to the harmless mean's coordinate (a METHODS.md idea).
    HarmlessMean,
}

impl Shift {
    fn is_origin(&self) -> bool {
        *self == Shift::Origin
    }
}

impl std::fmt::Display for Shift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Shift::Origin => "origin",
            Shift::HarmlessMean => "harmless-mean",
        })
    }
}

impl std::str::FromStr for Shift {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "origin" => Ok(Shift::Origin),
            "harmless-mean" => Ok(Shift::HarmlessMean),
            other => Err(format!("unknown shift `{other}` (origin, harmless-mean)")),
        }
    }
}

/// How targets are made from the states: the shift of each group (harmful, harmless,
/// pseudo-harmful) and where benign shifts are measured from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetRule {
    pub alphas: [f64; 3],
    pub shift: Shift,
}

impl From<[f64; 3]> for TargetRule {
    /// The paper's rule with these shifts.
    fn from(alphas: [f64; 3]) -> Self {
        TargetRule {
            alphas,
            shift: Shift::Origin,
        }
    }
}

/// Training settings (`config` in `actor.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub layer: usize,
    /// Shift of harmless and pseudo-harmful targets along `R` (`t = a - alpha P(a)`).
    pub alpha: f64,
    /// Shift of harmful targets (`t = a + alpha_harmful P(a)`).
    pub alpha_harmful: f64,
    /// Shift of harmless targets when it differs from `alpha` (0: harmless states are kept
    /// where they are, a retain target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_harmless: Option<f64>,
    pub adamw: AdamWConfig,
    pub epochs: usize,
    pub batch: usize,
    /// Largest global gradient norm (0: no clipping).
    pub clip: f64,
    pub seed: u64,
    pub parts: Parts,
    /// Recompute `R` and the targets with the current weights every epoch.
    pub refresh: bool,
    /// Gradient projection (none when absent).
    #[serde(default)]
    pub ogp: Option<OgpSettings>,
    /// How many of the last positions enter the loss, each with its own refusal vector and
    /// targets (1: the last token only, as the paper; more: the post-instruction positions).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub positions: usize,
    /// Where benign targets are shifted from (runs saved before it existed are `origin`).
    #[serde(default, skip_serializing_if = "Shift::is_origin")]
    pub shift: Shift,
    /// Weight of a first-token KL term on the harmless prompts of each batch, against their
    /// distributions before training (0: none, the paper's loss).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kl_weight: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Settings of the gradient projection (`steerkit_ogp`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OgpSettings {
    /// The capability prompts (a set name) and how many.
    pub data: String,
    pub n: usize,
    /// act: fraction of the capability inputs' energy each basis keeps, and its largest size.
    pub energy: f64,
    pub max_k: usize,
    /// Which subspace (runs saved before `grad` existed are `act`).
    #[serde(default)]
    pub estimator: Estimator,
}

/// The capability-subspace estimator.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Estimator {
    /// GPM bases of the block's linear maps' inputs on capability prompts.
    #[default]
    Act,
    /// The span of the block's cross-entropy gradients on `k` batches of `batch` capability
    /// sequences (prompts with the model's own answers of up to `answer_tokens`), recomputed
    /// at the start of every epoch and every `every` steps within it.
    Grad {
        k: usize,
        every: usize,
        batch: usize,
        answer_tokens: usize,
    },
}

/// The projection a run applies to its optimizer steps.
pub enum Projection<'a> {
    /// A subspace fixed before training (`act`).
    Fixed(&'a dyn steerkit_ogp::Subspace),
    /// Gradient bases recomputed during training from capability sequences and their block
    /// inputs at the trained layer (`grad`).
    Grad {
        examples: &'a [steerkit_ogp::capability::Example],
        inputs: &'a [Tensor],
        k: usize,
        every: usize,
        batch: usize,
    },
}

impl TrainConfig {
    /// The target rule: the shifts of the harmful, harmless and pseudo-harmful groups, and
    /// where benign shifts start.
    pub fn rule(&self) -> TargetRule {
        TargetRule {
            alphas: [
                self.alpha_harmful,
                self.alpha_harmless.unwrap_or(self.alpha),
                self.alpha,
            ],
            shift: self.shift,
        }
    }

    /// The options beyond the paper's loss that differ from their defaults, for reports:
    /// `, shift = harmless-mean, KL weight = 0.1, positions = 5` (empty when none).
    pub fn extras(&self) -> String {
        let mut s = String::new();
        if self.shift != Shift::default() {
            s.push_str(&format!(", shift = {}", self.shift));
        }
        if self.kl_weight != 0.0 {
            s.push_str(&format!(", KL weight = {}", self.kl_weight));
        }
        if self.positions != 1 {
            s.push_str(&format!(", positions = {}", self.positions));
        }
        s
    }

    /// These settings with what a resume may change (the number of epochs) taken from
    /// `other`.
    fn as_resume_of(&self, other: &TrainConfig) -> TrainConfig {
        let mut a = self.clone();
        a.epochs = other.epochs;
        a
    }

    /// Settings that must match to resume a run (all but the number of epochs).
    fn same_run(&self, other: &TrainConfig) -> bool {
        self.as_resume_of(other) == *other
    }

    /// The settings that keep `other` from resuming this run, by name.
    fn resume_differences(&self, other: &TrainConfig) -> Vec<String> {
        steerkit_eval::run::differing_settings(&self.as_resume_of(other), other)
    }
}

/// The training state of run folder `dir`, when training has started there.
fn read_state(dir: &Path) -> Result<Option<State>, ActorError> {
    let sp = dir.join(STATE);
    if !sp.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&sp).map_err(|e| crate::run_err(&sp, e.to_string()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| crate::run_err(&sp, format!("unreadable: {e}")))
}

/// True when training has started in `dir` (it holds a training state).
pub fn has_started(dir: &Path) -> bool {
    dir.join(STATE).is_file()
}

/// Fails when `dir` holds a training run whose settings differ from `cfg` in anything but the
/// number of epochs, and, unless `layer_known`, the layer (chosen later, from the prompts).
/// Cheap: meant to run before the block inputs are cached, so that a mismatch is reported
/// before minutes of work rather than after.
pub fn check_resumable(dir: &Path, cfg: &TrainConfig, layer_known: bool) -> Result<(), ActorError> {
    let Some(s) = read_state(dir)? else {
        return Ok(());
    };
    let mut want = cfg.clone();
    if !layer_known {
        want.layer = s.config.layer;
    }
    if s.config.same_run(&want) {
        Ok(())
    } else {
        Err(other_settings(dir, &s.config, &want))
    }
}

/// The folder holds a run of `saved` settings, which `wanted` may not resume: the error names
/// the settings that differ.
fn other_settings(dir: &Path, saved: &TrainConfig, wanted: &TrainConfig) -> ActorError {
    let keys = saved.resume_differences(wanted);
    crate::run_err(
        dir,
        format!(
            "holds a training run with other settings ({}); use another --out or delete it",
            keys.join(", ")
        ),
    )
}

/// Held-out prompts whose first-token refusal rate is measured after every epoch.
pub struct Val {
    pub name: String,
    pub inputs: Vec<Tensor>,
}

/// One line of `log.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub r_norm: f64,
    /// Mean projection `a·R̂` of each group's last-token states at the start of the epoch.
    pub proj_harmful: f64,
    pub proj_harmless: f64,
    pub proj_pseudo: f64,
    pub seconds: f64,
    /// `(name, share with refusal score > 0, mean refusal score)` after the epoch.
    pub val: Vec<(String, f64, f64)>,
    /// With gradient projection: the mean share of the step's norm removed (over matrices and
    /// steps).
    #[serde(default)]
    pub ogp_removed: Option<f64>,
    /// With a KL term: its mean over the epoch's steps (before the weight), the first-token
    /// KL of the batch's harmless prompts from the weights before training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
}

/// Progress events.
pub enum Progress<'a> {
    Epoch { epoch: usize, steps: usize },
    Step { loss: f64 },
    Done(&'a EpochLog),
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    epochs_done: usize,
    step: usize,
    config: TrainConfig,
}

const STATE: &str = "state.json";
/// The optimizer state of run folders made before 2026-11-28 (one file, overwritten each
/// epoch); now one file per epoch ([`optimizer_file`]).
const OPTIMIZER: &str = "optimizer.safetensors";

/// The optimizer state after epoch `epoch`. One file per epoch, the previous one removed only
/// after the epoch is committed (`state.json`): a kill between the files and the commit leaves
/// the committed epoch's state intact (one overwritten file held the next epoch's moments
/// beside the committed epoch's weights, and the resumed run trained from a mix).
fn optimizer_file(dir: &Path, epoch: usize) -> std::path::PathBuf {
    dir.join(format!("optimizer-epoch{epoch}.safetensors"))
}

/// The checkpoint file of an epoch.
pub fn block_file(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("block-epoch{epoch}.safetensors"))
}

/// Writes tensors to `path` through a temporary file and a rename.
pub fn save_safetensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<(), ActorError> {
    Ok(steerkit_model::weights::save_safetensors(map, path)?)
}

/// The name of a tensor holding NaN or an infinity, if any: a step whose loss was finite can
/// still leave such weights (a huge learning rate), and they must never be saved.
pub fn non_finite(map: &HashMap<String, Tensor>) -> candle_core::Result<Option<String>> {
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for n in names {
        let values = map[n]
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if !values.iter().all(|x| x.is_finite()) {
            return Ok(Some(n.clone()));
        }
    }
    Ok(None)
}

/// A training step that must stop the run.
#[derive(Debug, Clone, PartialEq)]
pub enum StepFault {
    /// A NaN or infinite loss or gradient norm.
    NonFinite(String),
    /// A gradient norm of exactly 0 at a loss above 1e-3: a step too large (a learning rate
    /// of 1e6, say) drove the outputs where no gradient reaches them (a cross-entropy stuck at
    /// `ln(vocabulary)`, a cosine loss at 1), and every later step would be a no-op. The
    /// weights that gave it are broken, not only the step.
    Saturated(String),
}

impl std::fmt::Display for StepFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepFault::NonFinite(m) | StepFault::Saturated(m) => f.write_str(m),
        }
    }
}

impl StepFault {
    /// What the error of a run stopped by this fault says of its last checkpoint: `last`
    /// names it (`None`: nothing was saved), and `from_it` says the failing step ran on its
    /// weights (the first step after it), so the fault may be the checkpoint's own.
    pub fn about_checkpoint(&self, last: Option<&str>, from_it: bool) -> String {
        match (last, from_it, self) {
            (None, ..) => "nothing was saved".into(),
            (Some(c), true, StepFault::Saturated(_)) => format!(
                "the last checkpoint ({c}) holds the weights that gave it: train again with a \
                 lower --lr in another --out"
            ),
            (Some(c), true, StepFault::NonFinite(_)) => format!(
                "the last checkpoint is kept ({c}); this loss came from its weights, so unless \
                 the data caused it (a NaN in a prompt's states), it is broken too"
            ),
            (Some(c), false, _) => format!("the last good checkpoint is kept ({c})"),
        }
    }
}

/// What is wrong with a training step's loss and global gradient norm, if anything. An
/// ordinary batch never has an exactly zero gradient; one already at its targets (loss near
/// 0) may, and is not a fault.
pub fn step_fault(loss: f64, grad_norm: f64) -> Option<StepFault> {
    if !loss.is_finite() || !grad_norm.is_finite() {
        Some(StepFault::NonFinite(format!(
            "loss {loss}, gradient norm {grad_norm}"
        )))
    } else if grad_norm == 0.0 && loss > 1e-3 {
        Some(StepFault::Saturated(format!(
            "loss {loss:.6} with a gradient norm of 0: the outputs saturated and no step can \
             move them (a learning rate too high?)"
        )))
    } else {
        None
    }
}

/// The last completed epoch of a run folder and its checkpoint (None: nothing trained yet).
pub fn last_checkpoint(dir: &Path) -> Result<Option<(usize, PathBuf)>, ActorError> {
    let p = dir.join(STATE);
    if !p.is_file() {
        return Ok(None);
    }
    let s: State =
        serde_json::from_slice(&std::fs::read(&p).map_err(|e| crate::run_err(&p, e.to_string()))?)
            .map_err(|e| crate::run_err(&p, format!("unreadable: {e}")))?;
    if s.epochs_done == 0 {
        return Ok(None);
    }
    let f = block_file(dir, s.epochs_done);
    if !f.is_file() {
        return Err(crate::run_err(
            dir,
            format!(
                "state.json says epoch {} is done but {} is missing",
                s.epochs_done,
                f.display()
            ),
        ));
    }
    Ok(Some((s.epochs_done, f)))
}

/// Copies a checkpoint's tensors into the model (names `model.layers.N.…`; every tensor of
/// each block named in the file must be there). Returns the blocks, in order.
pub fn load_layers(model: &mut Model, file: &Path) -> Result<Vec<usize>, ActorError> {
    let t = candle_core::safetensors::load(file, &Device::Cpu)
        .map_err(|e| crate::run_err(file, e.to_string()))?;
    let mut layers: Vec<usize> = t
        .keys()
        .filter_map(|k| {
            k.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .collect();
    layers.sort_unstable();
    layers.dedup();
    if layers.is_empty() {
        return Err(crate::run_err(file, "no block tensors"));
    }
    let n = model.layers.len();
    let dev = model.device.clone();
    let dtype = model.dtype;
    for &layer in &layers {
        let blk = model.layers.get_mut(layer).ok_or_else(|| {
            crate::run_err(file, format!("block {layer}, but the model has {n} layers"))
        })?;
        for (name, slot) in blk.named_tensors_mut() {
            let key = format!("model.layers.{layer}.{name}");
            let v = t
                .get(&key)
                .ok_or_else(|| crate::run_err(file, format!("no tensor `{key}`")))?;
            if v.dims() != slot.dims() {
                return Err(crate::run_err(
                    file,
                    format!(
                        "`{key}` has shape {:?}, the model {:?}",
                        v.dims(),
                        slot.dims()
                    ),
                ));
            }
            *slot = v.to_device(&dev)?.to_dtype(dtype)?;
        }
    }
    Ok(layers)
}

/// [`load_layers`] for a checkpoint of one block; returns that block.
pub fn load_block(model: &mut Model, file: &Path) -> Result<usize, ActorError> {
    match load_layers(model, file)?.as_slice() {
        [l] => Ok(*l),
        more => Err(crate::run_err(
            file,
            format!("holds blocks {more:?}, not one block"),
        )),
    }
}

/// Last-token output of block `layer` for rows of cached inputs (left-padded together),
/// `[rows, hidden]`.
pub fn block_last(
    model: &Model,
    layer: usize,
    rows: &[&Tensor],
    mode: Mode,
) -> Result<Tensor, ActorError> {
    Ok(block_tail(model, layer, rows, 1, mode)?.squeeze(1)?)
}

/// Output of block `layer` at the last `n` positions of rows of cached inputs (left-padded
/// together), `[rows, n, hidden]`.
pub fn block_tail(
    model: &Model,
    layer: usize,
    rows: &[&Tensor],
    n: usize,
    mode: Mode,
) -> Result<Tensor, ActorError> {
    let (x, pads) = pad_rows(rows)?;
    let x = x.to_device(&model.device)?.to_dtype(model.dtype)?;
    Ok(model.block_tail(layer, &x, &pads, n, mode)?)
}

/// States at the last `n` positions of every example with the current weights,
/// `[examples, n, hidden]` (f64, CPU).
fn current_states(
    model: &Model,
    layer: usize,
    inputs: &[&Tensor],
    batch: usize,
    n: usize,
) -> Result<Tensor, ActorError> {
    let mut parts = Vec::new();
    for chunk in inputs.chunks(batch.max(1)) {
        parts.push(
            block_tail(model, layer, chunk, n, Mode::Inference)?
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F64)?,
        );
    }
    // Detached: the targets are constants for the loss.
    Ok(Tensor::cat(&parts, 0)?.detach())
}

/// How much the block's states may grow in one epoch before the epoch counts as diverged.
/// ACTOR shifts states by a few times `R`; a block whose outputs grow a hundredfold has been
/// blown up by its steps (their loss can stay finite, and their gradients vanish).
const MAX_GROWTH: f64 = 100.0;

/// The mean L2 norm of the rows (last dimension) of states `[examples, positions, hidden]`.
fn mean_row_norm(a: &Tensor) -> Result<f64, ActorError> {
    let norms = a.to_dtype(DType::F64)?.sqr()?.sum(D::Minus1)?.sqrt()?;
    Ok(norms.mean_all()?.to_scalar::<f64>()?)
}

/// [`targets`] at each position of states `a: [examples, n, hidden]`, each with the refusal
/// vector of its own position: (targets `[examples, n, hidden]`, and the last position's `R`
/// and mean projections).
pub fn position_targets(
    a: &Tensor,
    groups: &[Group],
    rule: TargetRule,
) -> Result<(Tensor, Tensor, [f64; 3]), ActorError> {
    let mut ts = Vec::new();
    let mut last = None;
    for p in 0..a.dim(1)? {
        let (t, r, proj) = targets(&a.narrow(1, p, 1)?.squeeze(1)?.contiguous()?, groups, rule)?;
        ts.push(t);
        last = Some((r, proj));
    }
    let (r, proj) = last.ok_or_else(|| ActorError::Input("no positions to train".into()))?;
    Ok((Tensor::stack(&ts, 1)?, r, proj))
}

/// The refusal vector and the targets: `R = mean_harmful a - mean_harmless a`, and
/// `t = a + alphas[0] P(a)` for harmful rows, `t = a - alphas[1|2] P(a)` for harmless and
/// pseudo-harmful ones, with `P(a) = (a·R / R·R) R` (or, with [`Shift::HarmlessMean`], only
/// the part of `P(a)` above the harmless mean's). Returns (targets, R, mean projections a·R̂
/// per group in the order harmful, harmless, pseudo). `a` is detached.
pub fn targets(
    a: &Tensor,
    groups: &[Group],
    rule: TargetRule,
) -> Result<(Tensor, Tensor, [f64; 3]), ActorError> {
    // Constants for the loss: no gradient flows into the targets.
    let a = &a.detach();
    let mean_of = |g: Group| -> Result<Option<Tensor>, ActorError> {
        let idx: Vec<u32> = groups
            .iter()
            .enumerate()
            .filter(|(_, x)| **x == g)
            .map(|(i, _)| i as u32)
            .collect();
        if idx.is_empty() {
            return Ok(None);
        }
        let i = Tensor::new(idx.as_slice(), a.device())?;
        Ok(Some(a.index_select(&i, 0)?.mean(0)?))
    };
    let (Some(h), Some(b)) = (mean_of(Group::Harmful)?, mean_of(Group::Harmless)?) else {
        return Err(ActorError::Input(
            "ACTOR needs harmful and harmless prompts".into(),
        ));
    };
    let r = (h - b)?;
    let rr = r.sqr()?.sum_all()?.to_scalar::<f64>()?;
    if rr <= 0.0 || !rr.is_finite() {
        return Err(ActorError::Input(
            "the harmful and harmless means coincide: no refusal vector".into(),
        ));
    }
    let coef: Vec<f64> = (a.matmul(&r.unsqueeze(1)?)? / rr)?.squeeze(1)?.to_vec1()?;
    let rnorm = rr.sqrt();
    let index = |g: &Group| match g {
        Group::Harmful => 0,
        Group::Harmless => 1,
        Group::Pseudo => 2,
    };
    let mut sums = [0.0f64; 3];
    let mut counts = [0usize; 3];
    for (c, g) in coef.iter().zip(groups) {
        sums[index(g)] += c;
        counts[index(g)] += 1;
    }
    // Benign coordinates are shifted from 0 (the paper) or from the harmless mean's.
    let from = match rule.shift {
        Shift::Origin => None,
        Shift::HarmlessMean => Some(sums[1] / counts[1] as f64),
    };
    let alphas = rule.alphas;
    let shift: Vec<f64> = coef
        .iter()
        .zip(groups)
        .map(|(c, g)| match (g, from) {
            (Group::Harmful, _) => alphas[0] * c,
            (_, None) => -alphas[index(g)] * c,
            (_, Some(m)) => -alphas[index(g)] * (c - m).max(0.0),
        })
        .collect();
    let n = shift.len();
    let shift = Tensor::from_vec(shift, (n, 1), a.device())?;
    let t = (a + shift.broadcast_mul(&r.unsqueeze(0)?)?)?;
    let proj = std::array::from_fn(|k| {
        if counts[k] == 0 {
            f64::NAN
        } else {
            sums[k] * rnorm / counts[k] as f64
        }
    });
    Ok((t, r, proj))
}

/// `mean(1 - cos(h, t))` over rows, in f32 at least (squares of f16 states overflow).
pub fn cosine_loss(h: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    let (h, t) = (&widened(h)?, &widened(t)?);
    let dot = (h * t)?.sum(D::Minus1)?;
    let nh = h.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nt = t.sqr()?.sum(D::Minus1)?.sqrt()?;
    let cos = (dot / ((nh * nt)? + 1e-12)?)?;
    cos.affine(-1.0, 1.0)?.mean_all()
}

/// Log-probabilities of the first answer token, `[rows, vocab]` (f32 for half-precision
/// models, else the model's dtype), for rows of
/// cached inputs of block `layer`: blocks `layer..` at every position, the last block at the
/// last one, the final norm and the head. Differentiable in `mode`.
pub fn first_token_log_probs(
    model: &Model,
    layer: usize,
    rows: &[&Tensor],
    mode: Mode,
) -> Result<Tensor, ActorError> {
    let n = model.cfg.num_layers;
    let (x, pads) = pad_rows(rows)?;
    let x = x.to_device(&model.device)?.to_dtype(model.dtype)?;
    let y = model.forward_layers(x, &pads, layer..n - 1, None, &mut NoHook, mode)?;
    let y = model.block_last(n - 1, &y, &pads, mode)?;
    let h = model.final_norm(&y, mode)?;
    // Not in bf16: its log-probabilities are too coarse for a KL of a few hundredths.
    Ok(log_softmax(&widened(&model.logits(&h)?)?)?)
}

/// Mean `KL(reference ‖ current)` over rows of first-token log-probabilities `[rows, vocab]`.
pub fn first_token_kl(reference: &Tensor, current: &Tensor) -> candle_core::Result<Tensor> {
    (reference.exp()? * (reference - current)?)?
        .sum(D::Minus1)?
        .mean_all()
}

/// First-token refusal statistics of held-out prompts from their cached inputs at `layer`:
/// (share with refusal score > 0, mean score).
pub fn val_refusal(
    model: &Model,
    layer: usize,
    inputs: &[Tensor],
    refusal_ids: &[u32],
    batch: usize,
) -> Result<(f64, f64), ActorError> {
    let mut scores = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(batch.max(1)) {
        let rows: Vec<&Tensor> = chunk.iter().collect();
        let lp: Vec<Vec<f32>> = first_token_log_probs(model, layer, &rows, Mode::Inference)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        scores.extend(lp.iter().map(|l| refusal_score(l, refusal_ids)));
    }
    let k = scores.len().max(1) as f64;
    Ok((
        scores.iter().filter(|s| **s > 0.0).count() as f64 / k,
        scores.iter().sum::<f64>() / k,
    ))
}

/// Trains block `cfg.layer` of `model` in place on cached inputs, writing checkpoints to
/// `dir`. Resumes after the last completed epoch when `dir` holds a run with the same settings;
/// `model` must then hold the original weights, as in a fresh process (fixed targets are
/// taken from them before the checkpoint is loaded). Returns the log of every epoch, including
/// those done before a resume.
pub fn train(
    model: &mut Model,
    data: &[(Group, Tensor)],
    vals: &[Val],
    refusal_ids: &[u32],
    cfg: &TrainConfig,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<EpochLog>, ActorError> {
    train_projected(model, data, vals, refusal_ids, cfg, None, dir, progress)
}

/// [`train`] with every optimizer step projected off the capability subspaces of `projection`
/// (named like the block's tensors, `model.layers.N.mlp.up_proj.weight`). The norm removed per
/// matrix per step goes to `ogp.csv`.
#[allow(clippy::too_many_arguments)]
pub fn train_projected(
    model: &mut Model,
    data: &[(Group, Tensor)],
    vals: &[Val],
    refusal_ids: &[u32],
    cfg: &TrainConfig,
    projection: Option<Projection>,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<EpochLog>, ActorError> {
    if data.is_empty() || cfg.batch == 0 || cfg.epochs == 0 {
        return Err(ActorError::Input(
            "nothing to train: no prompts, batch 0 or 0 epochs".into(),
        ));
    }
    let layer = cfg.layer;
    let inputs: Vec<&Tensor> = data.iter().map(|(_, t)| t).collect();
    // Cached inputs are `[tokens, hidden]` per prompt.
    let shortest = inputs
        .iter()
        .map(|t| t.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let shortest = shortest.into_iter().min().unwrap_or(0);
    if cfg.positions == 0 || cfg.positions > shortest {
        return Err(ActorError::Input(format!(
            "--positions {}: the shortest training prompt has {shortest} tokens",
            cfg.positions
        )));
    }
    let groups: Vec<Group> = data.iter().map(|(g, _)| *g).collect();
    if !(cfg.kl_weight >= 0.0 && cfg.kl_weight.is_finite()) {
        return Err(ActorError::Input(format!(
            "KL weight {}: must be a finite number >= 0",
            cfg.kl_weight
        )));
    }
    // The KL term's reference: the harmless prompts' first-token distributions under the
    // weights before training (so taken before a resume loads its checkpoint). `kl_row[i]`
    // is example i's row in it.
    let mut kl_row = vec![None; data.len()];
    let reference = if cfg.kl_weight > 0.0 {
        let harmless: Vec<usize> = (0..data.len())
            .filter(|&i| groups[i] == Group::Harmless)
            .collect();
        let mut parts = Vec::new();
        for chunk in harmless.chunks(cfg.batch.max(1) * 2) {
            let rows: Vec<&Tensor> = chunk.iter().map(|&i| inputs[i]).collect();
            parts.push(first_token_log_probs(model, layer, &rows, Mode::Inference)?);
        }
        for (k, &i) in harmless.iter().enumerate() {
            kl_row[i] = Some(k as u32);
        }
        Some(Tensor::cat(&parts, 0)?.detach())
    } else {
        None
    };
    let mut fixed: Option<(Tensor, Tensor, [f64; 3])> = None;
    let mut logs = read_log(dir);
    let mut start = 0;
    let mut resume_state = None;
    if let Some(s) = read_state(dir)? {
        if !s.config.same_run(cfg) {
            return Err(other_settings(dir, &s.config, cfg));
        }
        if s.epochs_done > 0 {
            if !cfg.refresh && s.epochs_done < cfg.epochs {
                // Fixed targets are the first epoch's, from the weights before any training:
                // take them before the checkpoint replaces those weights, so that a resumed
                // run trains towards the same targets as an uninterrupted one.
                let a = current_states(model, layer, &inputs, cfg.batch * 2, cfg.positions)?;
                fixed = Some(position_targets(&a, &groups, cfg.rule())?);
            }
            load_block(model, &block_file(dir, s.epochs_done))?;
            start = s.epochs_done;
            resume_state = Some(s.step);
        }
    }
    if logs.len() > start {
        // Rows of an epoch written but never committed (a kill before the commit).
        logs.truncate(start);
        write_log(dir, &logs)?;
    }
    let all = model.trainable_block(layer)?;
    let trained: Vec<(String, Var)> = all
        .iter()
        .filter(|(n, _)| cfg.parts.includes(n))
        .cloned()
        .collect();
    let mut opt = AdamW::new(trained, cfg.adamw)?;
    if let Some(step) = resume_state {
        let p = Some(optimizer_file(dir, start))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| dir.join(OPTIMIZER));
        let st = candle_core::safetensors::load(&p, &model.device)
            .map_err(|e| crate::run_err(&p, e.to_string()))?;
        if !opt.restore(&st, step) {
            return Err(crate::run_err(
                &p,
                "optimizer state does not match the block",
            ));
        }
    }
    let mut grad_basis: Option<steerkit_ogp::GradProjector> = None;
    // The states with the current weights, computed at the end of the previous epoch.
    let mut states_now: Option<Tensor> = None;
    for epoch in start + 1..=cfg.epochs {
        // The states with the current weights: new targets when refreshing, and the logged
        // projections and |R| either way.
        let a = match states_now.take() {
            Some(a) => a,
            None => current_states(model, layer, &inputs, cfg.batch * 2, cfg.positions)?,
        };
        // An epoch's time counts the states at its end (those at its start are the previous
        // epoch's end, or, for the first epoch of a run, not counted).
        let t0 = Instant::now();
        let now = position_targets(&a, &groups, cfg.rule())?;
        if cfg.refresh || fixed.is_none() {
            fixed = Some(now.clone());
        }
        let (tg, _, _) = fixed.clone().expect("computed");
        let (_, r, proj) = now;
        let tg = tg.to_dtype(model.dtype)?.to_device(&model.device)?;
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
            cfg.seed.wrapping_add(epoch as u64),
        ));
        let steps = order.len().div_ceil(cfg.batch);
        progress(Progress::Epoch { epoch, steps });
        let (mut loss_sum, mut gn_sum) = (0.0, 0.0);
        let (mut removed_sum, mut removed_n) = (0.0, 0usize);
        let (mut kl_sum, mut kl_n) = (0.0, 0usize);
        let mut ogp_rows = String::new();
        for (step, chunk) in order.chunks(cfg.batch).enumerate() {
            let rows: Vec<&Tensor> = chunk.iter().map(|&i| inputs[i]).collect();
            let idx = Tensor::new(
                chunk
                    .iter()
                    .map(|&i| i as u32)
                    .collect::<Vec<_>>()
                    .as_slice(),
                &model.device,
            )?;
            let h = block_tail(model, layer, &rows, cfg.positions, Mode::Differentiable)?;
            let mut loss = cosine_loss(&h, &tg.index_select(&idx, 0)?)?;
            let kl_rows: Vec<(usize, u32)> = chunk
                .iter()
                .filter_map(|&i| kl_row[i].map(|k| (i, k)))
                .collect();
            if let (Some(reference), false) = (&reference, kl_rows.is_empty()) {
                let rows: Vec<&Tensor> = kl_rows.iter().map(|&(i, _)| inputs[i]).collect();
                let at: Vec<u32> = kl_rows.iter().map(|&(_, k)| k).collect();
                let at = Tensor::new(at.as_slice(), &model.device)?;
                let kl = first_token_kl(
                    &reference.index_select(&at, 0)?,
                    &first_token_log_probs(model, layer, &rows, Mode::Differentiable)?,
                )?;
                kl_sum += steerkit_ogp::scalar_f64(&kl)?;
                kl_n += 1;
                loss = (loss + (kl * cfg.kl_weight)?)?;
            }
            let lv = steerkit_ogp::scalar_f64(&loss)?;
            let (gs, gn) = steerkit_ogp::capability::gradients(&loss, opt.vars())?;
            if let Some(fault) = step_fault(lv, gn) {
                // The weights that gave this loss are the previous step's: at an epoch's first
                // step, those of the last checkpoint.
                let last = (epoch > 1).then(|| block_file(dir, epoch - 1).display().to_string());
                let mut kept = fault.about_checkpoint(last.as_deref(), step == 0);
                if last.is_some() && step == 0 && matches!(fault, StepFault::Saturated(_)) {
                    kept.push_str(&format!(
                        " (epochs before {} can still be exported with --epoch)",
                        epoch - 1
                    ));
                }
                return Err(ActorError::Diverged(format!(
                    "epoch {epoch}, step {}: {fault}; {kept}",
                    step + 1
                )));
            }
            let gs = steerkit_ogp::capability::clip_to_norm(gs, gn, cfg.clip)?;
            // Gradient bases: at the start of each epoch (so a resume recomputes them from the
            // same weights) and every `every` steps within it.
            if let Some(Projection::Grad {
                examples,
                inputs: cap,
                k,
                every,
                batch,
            }) = &projection
            {
                if step % every.max(&1) == 0 {
                    // The old basis is freed first: it is as large as k gradients.
                    drop(grad_basis.take());
                    grad_basis = Some(steerkit_ogp::capability::grad_projector(
                        model,
                        layer,
                        opt.vars(),
                        cap,
                        examples,
                        *k,
                        *batch,
                        (epoch - 1) * steps + step,
                    )?);
                }
            }
            let subspace: Option<&dyn steerkit_ogp::Subspace> = match &projection {
                Some(Projection::Fixed(p)) => Some(*p),
                Some(Projection::Grad { .. }) => grad_basis
                    .as_ref()
                    .map(|g| g as &dyn steerkit_ogp::Subspace),
                None => None,
            };
            for (name, norm, removed) in opt.apply_subspace(&gs, subspace)?.matrices {
                ogp_rows.push_str(&format!(
                    "{epoch},{},{name},{norm:.6e},{removed:.6e}\n",
                    step + 1
                ));
                if norm > 0.0 {
                    removed_sum += removed / norm;
                    removed_n += 1;
                }
            }
            loss_sum += lv;
            gn_sum += gn;
            progress(Progress::Step { loss: lv });
        }
        let mut val = Vec::new();
        for v in vals {
            let (share, mean) = val_refusal(model, layer, &v.inputs, refusal_ids, cfg.batch * 2)?;
            val.push((v.name.clone(), share, mean));
        }
        // Finite weights can still give non-finite states (huge ones overflow): such a block
        // is not saved either. The states serve the next epoch.
        let next = current_states(model, layer, &inputs, cfg.batch * 2, cfg.positions)?;
        let log = EpochLog {
            epoch,
            loss: loss_sum / steps as f64,
            grad_norm: gn_sum / steps as f64,
            r_norm: r.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt(),
            proj_harmful: proj[0],
            proj_harmless: proj[1],
            proj_pseudo: proj[2],
            seconds: t0.elapsed().as_secs_f64(),
            val,
            ogp_removed: (removed_n > 0).then(|| removed_sum / removed_n as f64),
            kl: (kl_n > 0).then(|| kl_sum / kl_n as f64),
        };
        // Checkpoint: block, optimizer, log, then state.json (the commit point). A kill
        // before the commit leaves a log row past the committed epoch, which the resume
        // truncates; written after it, the row of a kill in between was lost.
        let block: HashMap<String, Tensor> = all
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let broken = match non_finite(&block)? {
            Some(name) => Some(format!("`{name}` holds NaN or infinite values")),
            None => match (mean_row_norm(&a)?, mean_row_norm(&next)?) {
                (_, after) if !after.is_finite() => {
                    Some("its states hold NaN or infinite values".to_string())
                }
                (before, after) if after > MAX_GROWTH * before => Some(format!(
                    "its states grew {:.1e}-fold in one epoch (mean norm {before:.3e} -> {after:.3e}; a learning rate too high?)",
                    after / before
                )),
                _ => None,
            },
        };
        if let Some(what) = broken {
            return Err(ActorError::Diverged(format!(
                "epoch {epoch}: after training, {what}; nothing of this epoch is saved{}",
                if epoch > 1 {
                    format!(
                        " (the last good checkpoint: {})",
                        block_file(dir, epoch - 1).display()
                    )
                } else {
                    String::new()
                }
            )));
        }
        states_now = Some(next);
        if projection.is_some() {
            append_ogp_rows(
                dir,
                "epoch,step,matrix,step_norm,removed_norm",
                epoch,
                &ogp_rows,
            )?;
        }
        save_safetensors(&block, &block_file(dir, epoch))?;
        save_safetensors(&opt.state(), &optimizer_file(dir, epoch))?;
        logs.push(log);
        write_log(dir, &logs)?;
        let state = State {
            epochs_done: epoch,
            step: opt.step,
            config: cfg.clone(),
        };
        write_atomic(
            &dir.join(STATE),
            &serde_json::to_vec_pretty(&state).expect("serializes"),
        )?;
        for old in [optimizer_file(dir, epoch - 1), dir.join(OPTIMIZER)] {
            remove_if_there(&old).map_err(|e| crate::run_err(&old, e.to_string()))?;
        }
        progress(Progress::Done(logs.last().expect("pushed")));
    }
    Ok(logs)
}

const LOG: &str = "log.json";

/// `ogp.csv`: the norm of every projected step and the norm removed, per matrix per step,
/// under `header`. Rows whose first column (epoch, or step) is `from` or later (left by an
/// interrupted run) are replaced by `rows`.
pub fn append_ogp_rows(
    dir: &Path,
    header: &str,
    from: usize,
    rows: &str,
) -> Result<(), ActorError> {
    let p = dir.join("ogp.csv");
    let mut text: String = std::fs::read_to_string(&p)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            l.split(',')
                .next()
                .and_then(|e| e.parse::<usize>().ok())
                .is_some_and(|e| e < from)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.insert_str(0, &format!("{header}\n"));
    text.push_str(rows);
    write_atomic(&p, text.as_bytes())?;
    Ok(())
}

fn read_log(dir: &Path) -> Vec<EpochLog> {
    std::fs::read(dir.join(LOG))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_log(dir: &Path, logs: &[EpochLog]) -> Result<(), ActorError> {
    write_atomic(
        &dir.join(LOG),
        &serde_json::to_vec_pretty(logs).expect("serializes"),
    )?;
    write_atomic(&dir.join("log.csv"), log_csv(logs).as_bytes())?;
    write_atomic(
        &dir.join("loss.svg"),
        crate::plot::loss_svg(logs).as_bytes(),
    )?;
    Ok(())
}

/// The epoch log as CSV (one column pair per validation set).
pub fn log_csv(logs: &[EpochLog]) -> String {
    let mut s =
        String::from("epoch,loss,grad_norm,r_norm,proj_harmful,proj_harmless,proj_pseudo,seconds");
    let kl = logs.iter().any(|l| l.kl.is_some());
    if kl {
        s.push_str(",first_token_kl");
    }
    if let Some(l) = logs.first() {
        for (name, _, _) in &l.val {
            s.push_str(&format!(",{name}_refusal_share,{name}_refusal_score"));
        }
    }
    s.push('\n');
    for l in logs {
        s.push_str(&format!(
            "{},{:.6},{:.5},{:.4},{:.4},{:.4},{:.4},{:.2}",
            l.epoch,
            l.loss,
            l.grad_norm,
            l.r_norm,
            l.proj_harmful,
            l.proj_harmless,
            l.proj_pseudo,
            l.seconds
        ));
        if kl {
            s.push_str(&l.kl.map(|k| format!(",{k:.5}")).unwrap_or(",".into()));
        }
        for (_, share, mean) in &l.val {
            s.push_str(&format!(",{share:.4},{mean:.4}"));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::Parts;

    /// Each tensor of a block belongs to one part; Qwen3's per-head q/k norms are norms,
    /// not attention maps, although their names are under `self_attn`.
    #[test]
    fn parts_split_the_block() {
        let p = |s: &str| -> Parts { s.parse().unwrap() };
        let l = "model.layers.3.";
        for (name, part) in [
            ("self_attn.q_proj.weight", "attn"),
            ("self_attn.k_proj.bias", "attn"),
            ("self_attn.o_proj.weight", "attn"),
            ("self_attn.q_norm.weight", "norms"),
            ("self_attn.k_norm.weight", "norms"),
            ("input_layernorm.weight", "norms"),
            ("post_attention_layernorm.weight", "norms"),
            ("pre_feedforward_layernorm.weight", "norms"),
            ("post_feedforward_layernorm.weight", "norms"),
            ("mlp.down_proj.weight", "mlp"),
        ] {
            let full = format!("{l}{name}");
            for other in ["attn", "mlp", "norms"] {
                assert_eq!(p(other).includes(&full), other == part, "{name} in {other}");
            }
        }
    }
}
