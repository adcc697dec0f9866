//! `steerkit actor`: ACTOR single-layer fine-tuning.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::{Deserialize, Serialize};
use steerkit_actor::adamw::AdamWConfig;
use steerkit_actor::train::{val_refusal, Estimator, Progress, Projection};
use steerkit_actor::{Parts, PrepareOptions, TrainConfig};
use steerkit_data::PromptSet;
use steerkit_eval::run::write_atomic;
use steerkit_eval::score::refusal_token_ids;

use crate::common::{bar, ModelArgs, OgpArgs, SystemArgs};
use crate::directions::one_set;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Harmful prompts (refusals to keep): a file or a built-in set name (`harmful`, or its
    /// split `harmful.train`); repeat the flag to combine sets.
    #[arg(long, default_value = "harmful")]
    pub harmful: Vec<String>,
    /// Harmless prompts: a file or a built-in set name; repeatable.
    #[arg(long, default_value = "harmless")]
    pub harmless: Vec<String>,
    /// Pseudo-harmful prompts (safe, but the model refuses them): a file or a built-in name;
    /// repeatable.
    #[arg(long, default_value = "pseudo_harmful")]
    pub pseudo: Vec<String>,
    /// Use the first N prompts of each harmful and each harmless set.
    #[arg(long, default_value_t = 128, value_parser = crate::common::positive)]
    pub limit: usize,
    /// Use the first N prompts of each pseudo-harmful set (before --only-refused screening).
    #[arg(long, value_parser = crate::common::positive)]
    pub pseudo_limit: Option<usize>,
    /// Keep only the pseudo-harmful prompts the model refuses (first-token refusal score above
    /// --refused-above).
    #[arg(long)]
    pub only_refused: bool,
    /// The first-token refusal score (log-probability margin of refusal tokens) above which
    /// --only-refused counts a prompt as refused.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true, value_parser = crate::common::finite)]
    pub refused_above: f64,
    /// Train this block (default: the middle layer where harmful and harmless last-token
    /// states separate best, by silhouette score).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Shift of harmless and pseudo-harmful targets against the refusal vector (t = a - αP(a)).
    #[arg(long, default_value_t = 1.0, value_parser = crate::common::finite)]
    pub alpha: f64,
    /// Shift of harmful targets along the refusal vector (t = a + αP(a)); the paper uses 1,
    /// and with fixed targets it kept harmful refusals best on Qwen 0.5B (README).
    #[arg(long, default_value_t = 1.0, value_parser = crate::common::finite)]
    pub alpha_harmful: f64,
    /// Shift of harmless targets, when it should differ from --alpha (0: keep harmless states
    /// where they are, which limits the drift on ordinary prompts; a departure from the paper).
    #[arg(long, value_parser = crate::common::finite)]
    pub alpha_harmless: Option<f64>,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-4, value_parser = crate::common::finite)]
    pub lr: f64,
    /// AdamW weight decay (decoupled).
    #[arg(long, default_value_t = 0.0, value_parser = crate::common::finite)]
    pub weight_decay: f64,
    /// Passes over the training prompts; a checkpoint is saved after each.
    #[arg(long, default_value_t = 3, value_parser = crate::common::positive)]
    pub epochs: usize,
    /// Prompts per optimizer step (mixed across the three groups).
    #[arg(long, default_value_t = 16, value_parser = crate::common::positive)]
    pub batch_size: usize,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0, value_parser = crate::common::finite)]
    pub clip: f64,
    /// Seed of the per-epoch shuffle of the training prompts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which parts of the block train: attn (the q, k, v, o maps and their biases), mlp (gate,
    /// up and down; in a mixture of experts the router and every expert), norms
    /// (the RMSNorm weights, with Qwen3's per-head q/k norms), comma-separated.
    #[arg(long = "train", default_value = "attn,mlp")]
    pub parts: String,
    /// Recompute R and the targets with the current weights every epoch, as the paper does
    /// (default: keep those of the first epoch; refreshing oscillated on Qwen 0.5B, README).
    #[arg(long)]
    pub refresh: bool,
    /// Train the last N positions, each with its own refusal vector and targets (1: the last
    /// token, as the paper; 5 covers Qwen's post-instruction tokens, `<|im_end|>` to
    /// `assistant` and its newline). A METHODS.md idea, measured in the README.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub positions: u64,
    /// Where benign targets are shifted from: `origin` (t = a - αP(a), the paper) or
    /// `harmless-mean` (only the part of the coordinate along R above the harmless prompts'
    /// mean moves, so α 1 takes each state just to the harmless mean and leaves states below
    /// it alone; a METHODS.md idea, measured in the README).
    #[arg(long, default_value = "origin", value_parser = ["origin", "harmless-mean"])]
    pub shift: String,
    /// Add this weight times a first-token KL term to the loss: for the harmless prompts of
    /// each batch, KL(before training ‖ now) of the first answer token, through every block
    /// above and the head (0: none, the paper's loss; a METHODS.md idea). Experimental: on
    /// Qwen 0.5B it raised the drift it is meant to hold down, at every weight tried (README,
    /// "ACTOR, ninth round"). Costs a forward and backward of the blocks above for those
    /// prompts.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true, value_parser = crate::common::non_negative)]
    pub kl_weight: f64,
    /// A held-out set whose first-token refusal share is logged after every epoch
    /// (NAME=FILE or a built-in name; repeatable). Use it to tune α, lr and epochs.
    #[arg(long = "val", value_name = "SPEC")]
    pub vals: Vec<String>,
    #[command(flatten)]
    pub proj: OgpArgs,
    /// --ogp grad: steps between refreshes of the gradient subspace (also refreshed at the
    /// start of every epoch).
    #[arg(long, default_value_t = 10, value_parser = crate::common::positive)]
    pub ogp_every: usize,
    /// --ogp grad: sequences per capability batch (one gradient per batch).
    #[arg(long, default_value_t = 4, value_parser = crate::common::positive)]
    pub ogp_batch: usize,
    /// --ogp grad: the longest answer (tokens) the model writes to each capability prompt.
    #[arg(long, default_value_t = 32, value_parser = crate::common::positive)]
    pub ogp_answer_tokens: usize,
    /// Smallest silhouette at the layer (below it: no refusal signal, an error).
    #[arg(long, default_value_t = 0.05, allow_hyphen_values = true, value_parser = crate::common::finite)]
    pub min_silhouette: f64,
    #[command(flatten)]
    pub system: SystemArgs,
    /// Run folder (cached inputs, checkpoints, log); rerun with it to resume.
    #[arg(long)]
    pub out: PathBuf,
}

/// `actor.json`: what a run was trained from, for export and reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct ActorMeta {
    pub model: String,
    pub fingerprint: String,
    pub layer: usize,
    pub silhouettes: Vec<(usize, f64)>,
    pub harmful: usize,
    pub harmless: usize,
    pub pseudo_kept: usize,
    pub pseudo_total: usize,
    pub config: TrainConfig,
}

/// The prompts of one role from one or more sets, each cut to its first `limit`, in order.
fn role_set(specs: &[String], role: &str, limit: Option<usize>) -> Result<PromptSet> {
    let mut sets = specs
        .iter()
        .map(|s| one_set(s, role, limit))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    let mut all = sets.next().context("no set given")?;
    for s in sets {
        all.name = format!("{}+{}", all.name, s.name);
        all.source = format!("{} + {}", all.source, s.source);
        all.items.extend(s.items);
    }
    Ok(all)
}

/// The training, validation and capability sets, read from their files.
pub(crate) struct Inputs {
    harmful: PromptSet,
    harmless: PromptSet,
    pseudo: PromptSet,
    vals: Vec<PromptSet>,
    /// `--ogp-data`, when gradient projection is on.
    capability: Option<PromptSet>,
}

/// Reads them, the first thing `run` does (the capability set too, which was read only after
/// minutes of caching); `steerkit run` calls it before its first phase starts.
pub(crate) fn read_inputs(a: &Args) -> Result<Inputs> {
    Ok(Inputs {
        harmful: role_set(&a.harmful, "harmful", Some(a.limit))?,
        harmless: role_set(&a.harmless, "harmless", Some(a.limit))?,
        pseudo: role_set(&a.pseudo, "pseudo", a.pseudo_limit)?,
        vals: a
            .vals
            .iter()
            .map(|s| one_set(s, "val", None))
            .collect::<Result<Vec<_>>>()?,
        capability: a.proj.capability_set()?,
    })
}

/// Checks of the arguments alone, before any work (also run by `steerkit run --dry-run`).
pub fn validate(a: &Args) -> Result<()> {
    a.parts.parse::<Parts>().map_err(anyhow::Error::msg)?;
    if a.lr <= 0.0 {
        bail!("--lr must be a positive number");
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let parts: Parts = a.parts.parse().map_err(anyhow::Error::msg)?;
    let Inputs {
        harmful,
        harmless,
        pseudo,
        vals,
        capability: capability_set,
    } = read_inputs(&a)?;
    // The settings first, so that a run folder trained with other ones is reported before
    // the block inputs are cached (minutes); the layer is filled in once chosen.
    let mut cfg = TrainConfig {
        layer: a.layer.unwrap_or(0),
        alpha: a.alpha,
        alpha_harmful: a.alpha_harmful,
        alpha_harmless: a.alpha_harmless,
        adamw: AdamWConfig {
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..Default::default()
        },
        epochs: a.epochs,
        batch: a.batch_size,
        clip: a.clip,
        seed: a.seed,
        parts,
        refresh: a.refresh,
        positions: a.positions as usize,
        shift: a.shift.parse().map_err(anyhow::Error::msg)?,
        kl_weight: a.kl_weight,
        ogp: (a.proj.ogp != "none").then(|| steerkit_actor::train::OgpSettings {
            data: a.proj.ogp_data.clone(),
            n: a.proj.ogp_limit,
            energy: a.proj.ogp_energy,
            max_k: a.proj.ogp_max_k,
            estimator: if a.proj.ogp == "grad" {
                Estimator::Grad {
                    k: a.proj.ogp_k,
                    every: a.ogp_every,
                    batch: a.ogp_batch,
                    answer_tokens: a.ogp_answer_tokens,
                }
            } else {
                Estimator::Act
            },
        }),
    };
    steerkit_actor::train::check_resumable(&a.out, &cfg, a.layer.is_some())?;
    let m = a.model.load()?;
    let t0 = std::time::Instant::now();
    let total = (harmful.items.len() + harmless.items.len() + pseudo.items.len())
        + vals.iter().map(|v| v.items.len()).sum::<usize>();
    let pb = bar(total as u64, "preparing");
    let opts = PrepareOptions {
        system: a.system.choice(),
        batch: 32,
        layer: a.layer,
        layer_range: (0.25, 0.75),
        only_refused: a.only_refused.then_some(a.refused_above),
        min_silhouette: a.min_silhouette,
    };
    let prep = steerkit_actor::prepare(
        &m,
        &harmful,
        &harmless,
        &pseudo,
        &vals,
        &opts,
        &a.out,
        &mut |phase, k| {
            pb.set_message(phase.to_string());
            pb.inc(k as u64);
        },
    )?;
    pb.finish_and_clear();
    let prep_secs = t0.elapsed().as_secs_f64();
    let sil = prep
        .silhouettes
        .iter()
        .find(|(l, _)| *l == prep.layer)
        .map_or(f64::NAN, |x| x.1);
    println!(
        "layer {} (silhouette {sil:.3}); {} harmful, {} harmless, {} of {} pseudo-harmful prompts{}; {}",
        prep.layer,
        harmful.items.len(),
        harmless.items.len(),
        prep.kept_pseudo,
        prep.total_pseudo,
        if a.only_refused { " (refused ones)" } else { "" },
        if prep.reused {
            "block inputs reused from the run folder".to_string()
        } else {
            format!("block inputs cached in {prep_secs:.1} s")
        }
    );
    cfg.layer = prep.layer;
    let meta = ActorMeta {
        model: m.path.display().to_string(),
        fingerprint: m.fingerprint()?,
        layer: prep.layer,
        silhouettes: prep.silhouettes.clone(),
        harmful: harmful.items.len(),
        harmless: harmless.items.len(),
        pseudo_kept: prep.kept_pseudo,
        pseudo_total: prep.total_pseudo,
        config: cfg.clone(),
    };
    write_atomic(
        &a.out.join("actor.json"),
        &serde_json::to_vec_pretty(&meta)?,
    )?;
    let ids = refusal_token_ids(&m.tok);
    let mut model = m.model.clone();
    for v in &prep.vals {
        let (share, mean) = val_refusal(&model, prep.layer, &v.inputs, &ids, 32)?;
        println!(
            "before training: {} refused {:.1}% (first-token score {mean:+.2})",
            v.name,
            100.0 * share
        );
    }
    let mut act_projector = None;
    let mut capability = None;
    if let (Some(o), Some(set)) = (&cfg.ogp, &capability_set) {
        let t = std::time::Instant::now();
        match o.estimator {
            Estimator::Act => {
                let (inputs, _) = steerkit_actor::states::block_inputs(
                    &m,
                    &set.prompts(),
                    &a.system.choice(),
                    prep.layer,
                    32,
                    None,
                    &mut |_| {},
                )?;
                let (p, summary) = steerkit_actor::ogp::capability_projector(
                    &m.model, prep.layer, &inputs, o, &a.out,
                )?;
                let sizes: Vec<String> = summary
                    .iter()
                    .map(|(n, k, e)| {
                        format!(
                            "{} k={k} ({:.1}%)",
                            n.rsplit('.').nth(1).unwrap_or(n),
                            100.0 * e
                        )
                    })
                    .collect();
                println!(
                    "gradient projection (act) on {} capability prompts of `{}`: {} ({:.1} s)",
                    set.items.len(),
                    set.name,
                    sizes.join(", "),
                    t.elapsed().as_secs_f64()
                );
                act_projector = Some(p);
            }
            Estimator::Grad { answer_tokens, .. } => {
                let pb = bar(set.items.len() as u64, "capability answers");
                let examples = steerkit_ogp::capability::own_answer_examples(
                    &m,
                    &set.prompts(),
                    &a.system.choice(),
                    answer_tokens,
                    &a.out.join("answers.json"),
                    &mut |k| pb.inc(k as u64),
                )?;
                let inputs = steerkit_ogp::capability::block_inputs(
                    &m.model,
                    &examples,
                    prep.layer,
                    16,
                    &mut |_| {},
                )?;
                pb.finish_and_clear();
                println!(
                    "gradient projection (grad) on {} capability prompts of `{}` with own answers ({:.1} s)",
                    set.items.len(),
                    set.name,
                    t.elapsed().as_secs_f64()
                );
                capability = Some((examples, inputs));
            }
        }
    }
    let projection = match (&cfg.ogp, &act_projector, &capability) {
        (_, Some(p), _) => Some(Projection::Fixed(p)),
        (Some(o), _, Some((examples, inputs))) => match o.estimator {
            Estimator::Grad {
                k, every, batch, ..
            } => Some(Projection::Grad {
                examples,
                inputs,
                k,
                every,
                batch,
            }),
            Estimator::Act => None,
        },
        _ => None,
    };
    let pb = bar(0, "training");
    let t1 = std::time::Instant::now();
    let logs = steerkit_actor::train::train_projected(
        &mut model,
        &prep.data,
        &prep.vals,
        &ids,
        &cfg,
        projection,
        &a.out,
        &mut |p| match p {
            Progress::Epoch { epoch, steps } => {
                pb.set_length(steps as u64);
                pb.set_position(0);
                pb.set_message(format!("epoch {epoch}/{}", cfg.epochs));
            }
            Progress::Step { loss } => {
                pb.inc(1);
                pb.set_message(format!("epoch loss {loss:.4}"));
            }
            Progress::Done(l) => {
                pb.suspend(|| {
                    let val: Vec<String> = l
                        .val
                        .iter()
                        .map(|(n, s, _)| format!("{n} refused {:.1}%", 100.0 * s))
                        .collect();
                    let ogp = l
                        .ogp_removed
                        .map(|r| format!(", {:.0}% of each step projected out", 100.0 * r))
                        .unwrap_or_default();
                    let kl = l
                        .kl
                        .map(|k| format!(", harmless first-token KL {k:.4}"))
                        .unwrap_or_default();
                    println!(
                        "epoch {}: loss {:.4}, |R| {:.2}, projections harmful {:+.2} harmless {:+.2} pseudo {:+.2}{ogp}{kl}, {:.1} s{}{}",
                        l.epoch,
                        l.loss,
                        l.r_norm,
                        l.proj_harmful,
                        l.proj_harmless,
                        l.proj_pseudo,
                        l.seconds,
                        if val.is_empty() { "" } else { "; " },
                        val.join(", ")
                    )
                });
            }
        },
    )?;
    pb.finish_and_clear();
    let train_secs = t1.elapsed().as_secs_f64();
    let per_epoch: Vec<String> = logs.iter().map(|l| format!("{:.1}", l.seconds)).collect();
    println!(
        "trained to epoch {} ({train_secs:.1} s in this run; seconds per epoch: {}); total {:.1} s",
        logs.len(),
        per_epoch.join(", "),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "checkpoints, log.csv and loss.svg in {r}; export with: steerkit export -m {} --run {r} --out DIR",
        a.model.model,
        r = a.out.display()
    );
    Ok(())
}

/// Is `run` an ACTOR run folder?
pub fn is_actor_run(run: &Path) -> bool {
    run.join("actor.json").is_file()
}

/// The model with an ACTOR run's last checkpoint (or that of `epoch`) in place.
pub fn patched(
    m: &steerkit_model::Loaded,
    run: &Path,
    epoch: Option<usize>,
) -> Result<steerkit_model::Model> {
    crate::common::check_trained_on(m, run, "actor.json")?;
    let Some((last, file)) = steerkit_actor::train::last_checkpoint(run)? else {
        bail!("{}: no completed epoch to export yet", run.display());
    };
    let (epoch, file) = match epoch {
        None => (last, file),
        Some(e) if (1..=last).contains(&e) => (e, steerkit_actor::train::block_file(run, e)),
        Some(e) => bail!(
            "{}: epoch {e} is not a completed epoch (epochs 1..={last} are)",
            run.display()
        ),
    };
    let mut model = m.model.clone();
    let layer = steerkit_actor::train::load_block(&mut model, &file)?;
    println!("block {layer} from epoch {epoch} of {}", run.display());
    Ok(model)
}
