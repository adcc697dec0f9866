//! `steerkit safety-tune`: supervised safety fine-tuning of chosen blocks, optionally with
//! gradient projection.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::{Deserialize, Serialize};
use steerkit_actor::adamw::AdamWConfig;
use steerkit_actor::Parts;
use steerkit_eval::run::write_atomic;
use steerkit_sft::data::{own_answer_examples, refusal_examples, DEFAULT_REFUSALS};
use steerkit_sft::{Ogp, Progress, SftConfig};

use crate::common::{bar, ModelArgs, OgpArgs, SystemArgs};
use crate::directions::one_set;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Harmful prompts, trained to be refused: a file or a built-in set name.
    #[arg(long, default_value = "harmful")]
    pub harmful: String,
    /// Harmless prompts, trained on the model's own greedy answers (generated once and
    /// cached in the run folder): a file or a built-in set name.
    #[arg(long, default_value = "harmless")]
    pub harmless: String,
    /// Use the first N harmful and the first N harmless prompts.
    #[arg(long, default_value_t = 128, value_parser = crate::common::positive)]
    pub limit: usize,
    /// Refusal texts, one per line (default: five built-in refusals). Harmful prompt i gets
    /// refusal i mod n.
    #[arg(long)]
    pub refusals: Option<PathBuf>,
    /// Longest own answer to a harmless prompt, in tokens.
    #[arg(long, default_value_t = 64, value_parser = crate::common::positive)]
    pub answer_tokens: usize,
    /// Trained blocks START..END (end exclusive; default: the upper third of the model).
    #[arg(long)]
    pub layers: Option<String>,
    /// Which parts of each block train: attn (the q, k, v, o maps and their biases), mlp,
    /// norms (the RMSNorm weights, with Qwen3's per-head q/k norms), comma-separated.
    #[arg(long = "train", default_value = "attn,mlp")]
    pub parts: String,
    /// Optimizer steps in all.
    #[arg(long, default_value_t = 100, value_parser = crate::common::positive)]
    pub steps: usize,
    /// Sequences (prompt and answer) per step.
    #[arg(long, default_value_t = 8, value_parser = crate::common::positive)]
    pub batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-4, value_parser = crate::common::finite)]
    pub lr: f64,
    /// AdamW weight decay (decoupled).
    #[arg(long, default_value_t = 0.0, value_parser = crate::common::finite)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0, value_parser = crate::common::finite)]
    pub clip: f64,
    /// Seed of the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub proj: OgpArgs,
    /// grad: steps between refreshes.
    #[arg(long, default_value_t = 50, value_parser = crate::common::positive)]
    pub ogp_every: usize,
    /// Checkpoint every N steps (and after the last). A checkpoint is written once the next
    /// step's loss and gradient on its weights are sound (after the last step, one more batch
    /// checks them), so a step that saturated the outputs is never saved.
    #[arg(long, default_value_t = 25, value_parser = crate::common::positive)]
    pub save_every: usize,
    #[command(flatten)]
    pub system: SystemArgs,
    /// Run folder (answers cache, checkpoints, log); rerun with it to resume.
    #[arg(long)]
    pub out: PathBuf,
}

/// `safety.json`: what a run was trained from, for export.
#[derive(Debug, Serialize, Deserialize)]
pub struct SafetyMeta {
    pub model: String,
    pub fingerprint: String,
    pub harmful: usize,
    pub harmless: usize,
    pub capability: usize,
    pub config: SftConfig,
    /// sha256 of what the examples are made from: the prompts, the system prompt, the
    /// refusal texts and the own-answer budget (absent in runs made before 2026-11-28).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub inputs: String,
}

fn parse_layers(s: &str, n: usize) -> Result<(usize, usize)> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("--layers {s}: expected START..END"))?;
    let a: usize = a.trim().parse().with_context(|| format!("--layers {s}"))?;
    let b: usize = b.trim().parse().with_context(|| format!("--layers {s}"))?;
    if a >= b || b > n {
        bail!("--layers {s}: need START < END <= {n} (the model's layers)");
    }
    Ok((a, b))
}

pub fn run(a: Args) -> Result<()> {
    let parts: Parts = a.parts.parse().map_err(anyhow::Error::msg)?;
    if !(a.lr > 0.0 && a.lr.is_finite()) {
        bail!("--lr must be a positive number");
    }
    let refusals: Vec<String> = match &a.refusals {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let r: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if r.is_empty() {
                bail!("{}: no refusal texts", p.display());
            }
            r
        }
        None => DEFAULT_REFUSALS.iter().map(|s| s.to_string()).collect(),
    };
    let harmful = one_set(&a.harmful, "harmful", Some(a.limit))?;
    let harmless = one_set(&a.harmless, "harmless", Some(a.limit))?;
    let capability = a.proj.capability_set()?;
    let m = a.model.load()?;
    let n = m.model.layers.len();
    let layers = match &a.layers {
        Some(s) => parse_layers(s, n)?,
        None => (n - n / 3, n),
    };
    let cfg = SftConfig {
        layers,
        adamw: AdamWConfig {
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..Default::default()
        },
        steps: a.steps,
        batch: a.batch_size,
        clip: a.clip,
        seed: a.seed,
        parts,
        ogp: match a.proj.ogp.as_str() {
            "act" => Ogp::Act {
                energy: a.proj.ogp_energy,
                max_k: a.proj.ogp_max_k,
            },
            "grad" => Ogp::Grad {
                k: a.proj.ogp_k,
                every: a.ogp_every,
            },
            _ => Ogp::None,
        },
        save_every: a.save_every,
    };
    // A run folder holds one training run: another model, this one with bf16 matrices instead
    // of f32 (or the reverse), other settings or other examples would resume from checkpoints
    // they did not make. Checked before anything is generated or written there.
    let fingerprint = m.fingerprint()?;
    let system = a.system.choice();
    let inputs = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let sets = [Some(&harmful), Some(&harmless), capability.as_ref()];
        for s in sets.iter().flatten() {
            h.update(s.hash());
        }
        h.update(format!("{system:?}|{refusals:?}|{}", a.answer_tokens).as_bytes());
        format!("{:x}", h.finalize())
    };
    let earlier = a.out.join("safety.json");
    if let Ok(bytes) = std::fs::read(&earlier) {
        let old = crate::common::RunOrigin::parse(&earlier, &bytes)?;
        if old.fingerprint != fingerprint {
            bail!(
                "{} holds a safety-tuning run of {} (another model, or another --dtype); use another --out or delete it",
                a.out.display(),
                old.model
            );
        }
        let started = a.out.join("state.json").is_file();
        if let (true, Ok(old)) = (started, serde_json::from_slice::<SafetyMeta>(&bytes)) {
            let other_examples = !old.inputs.is_empty() && old.inputs != inputs;
            if !old.config.same_run(&cfg) || other_examples {
                let mut what = old.config.resume_differences(&cfg);
                if other_examples {
                    what.push("examples".into());
                }
                bail!(
                    "{} holds a safety-tuning run with other settings or other examples (here: {}; examples are the prompts, system prompt, refusals and answer tokens); only --steps and --save-every may change on a resume: use another --out or delete it",
                    a.out.display(),
                    what.join(", ")
                );
            }
        }
    }
    // Before the answers are made and the settings recorded.
    steerkit_sft::train::check_steps(&a.out, cfg.steps)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let t0 = std::time::Instant::now();
    let mut prompts: Vec<&str> = harmless.prompts();
    if let Some(c) = &capability {
        prompts.extend(c.prompts());
    }
    let pb = bar(prompts.len() as u64, "own answers");
    let cache = a.out.join("answers.json");
    let mut own = own_answer_examples(&m, &prompts, &system, a.answer_tokens, &cache, &mut |k| {
        pb.inc(k as u64)
    })?;
    pb.finish_and_clear();
    let cap_examples = own.split_off(harmless.items.len());
    let mut data = refusal_examples(&m, &harmful.prompts(), &refusals, &system)?;
    data.extend(own);
    println!(
        "{} harmful prompts (refusals), {} harmless prompts (own answers, at most {} tokens){}; blocks {}..{}; {:.1} s",
        harmful.items.len(),
        harmless.items.len(),
        a.answer_tokens,
        capability
            .as_ref()
            .map(|c| format!(", {} capability prompts of `{}`", c.items.len(), c.name))
            .unwrap_or_default(),
        layers.0,
        layers.1,
        t0.elapsed().as_secs_f64()
    );
    let meta = SafetyMeta {
        model: m.path.display().to_string(),
        fingerprint,
        harmful: harmful.items.len(),
        harmless: harmless.items.len(),
        capability: cap_examples.len(),
        config: cfg.clone(),
        inputs,
    };
    write_atomic(
        &a.out.join("safety.json"),
        &serde_json::to_vec_pretty(&meta)?,
    )?;
    let mut model = m.model.clone();
    let pb = bar(0, "preparing");
    let summary =
        steerkit_sft::train(
            &mut model,
            &data,
            &cap_examples,
            &cfg,
            &a.out,
            &mut |p| match p {
                Progress::Phase(name, len) => {
                    pb.set_message(name);
                    pb.set_length(len as u64);
                    pb.set_position(0);
                }
                Progress::Advance(k) => pb.inc(k as u64),
                Progress::Step { loss, .. } => {
                    pb.inc(1);
                    pb.set_message(format!("training, loss {loss:.4}"));
                }
            },
        )?;
    pb.finish_and_clear();
    println!(
        "step {}: loss {:.4} (first step {:.4}); {} steps in this run, {:.1} s: {:.3} steps/s, {:.0} tokens/s{}",
        summary.steps,
        summary.last_loss,
        summary.first_loss,
        summary.steps_run,
        summary.seconds,
        summary.steps_per_s,
        summary.tokens_per_s,
        match cfg.ogp {
            Ogp::None => String::new(),
            Ogp::Act { .. } => format!(
                "; projection {:.1}% of the step time (+{:.1} s to build act bases)",
                100.0 * summary.ogp_share,
                summary.ogp_setup_seconds
            ),
            // Building grad bases is part of the steps that refresh them.
            Ogp::Grad { .. } => format!(
                "; projection and grad bases {:.1}% of the step time",
                100.0 * summary.ogp_share
            ),
        }
    );
    println!(
        "checkpoints and log.csv in {r}; export with: steerkit export -m {} --run {r} --out DIR",
        a.model.model,
        r = a.out.display()
    );
    Ok(())
}

/// Is `run` a safety-tuning run folder?
pub fn is_safety_run(run: &Path) -> bool {
    run.join("safety.json").is_file()
}

/// The model with a safety-tuning run's last checkpoint in place.
pub fn patched(m: &steerkit_model::Loaded, run: &Path) -> Result<steerkit_model::Model> {
    crate::common::check_trained_on(m, run, "safety.json")?;
    let Some((step, file)) = steerkit_sft::train::last_checkpoint(run)? else {
        bail!("{}: no checkpoint to export yet", run.display());
    };
    let mut model = m.model.clone();
    let layers = steerkit_actor::train::load_layers(&mut model, &file)?;
    println!(
        "blocks {}..={} from step {step} of {}",
        layers[0],
        layers[layers.len() - 1],
        run.display()
    );
    Ok(model)
}
