//! `steerkit extract` and `steerkit select`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use steerkit_data::sets::{resolve, ReadOptions, SetSpec};
use steerkit_data::PromptSet;
use steerkit_directions::extract::Candidates;
use steerkit_directions::select::{scores_csv, scores_svg, select, SelectOptions, Selected};
use steerkit_eval::run::write_atomic;

use crate::common::{bar, ModelArgs, SystemArgs};

/// Reads one prompt set from a `--harmful`-style argument (a file or a built-in name).
pub fn one_set(spec: &str, name: &str, limit: Option<usize>) -> Result<PromptSet> {
    let path = std::path::Path::new(spec);
    let looks_like_a_file = spec.contains(['/', '\\'])
        || matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "json" | "txt" | "csv")
        );
    if !spec.contains('=') && !path.exists() && looks_like_a_file {
        bail!("{spec}: no such file (the {name} prompts are a file or the name of a built-in set)");
    }
    let spec: SetSpec = if spec.contains('=') || !path.exists() {
        spec.parse()?
    } else {
        format!("{name}={spec}").parse()?
    };
    let opts = ReadOptions {
        limit,
        ..Default::default()
    };
    let mut sets = resolve(&spec, &opts)?;
    if sets.len() != 1 {
        let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
        let what = match &spec.file {
            Some(f) => f.display().to_string(),
            None => spec.name.clone(),
        };
        bail!(
            "{what} holds rows labelled safe and unsafe (its `label` field), so it splits into \
             {} sets ({}); `{name}` takes a single set: give a file of one kind, without the labels",
            sets.len(),
            names.join(", ")
        );
    }
    Ok(sets.remove(0))
}

#[derive(ClapArgs, Debug)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Harmful prompts: a file (txt/jsonl/csv) or a built-in set name.
    #[arg(long, default_value = "harmful")]
    pub harmful: String,
    /// Harmless prompts: a file or a built-in set name.
    #[arg(long, default_value = "harmless")]
    pub harmless: String,
    /// Use the first N prompts of each (the method uses 128).
    #[arg(long, default_value_t = 128, value_parser = crate::common::positive)]
    pub limit: usize,
    /// Prompts per forward batch.
    #[arg(long, default_value_t = 32, value_parser = crate::common::positive)]
    pub batch_size: usize,
    #[command(flatten)]
    pub system: SystemArgs,
    /// Run folder for the means and candidate directions.
    #[arg(long)]
    pub out: PathBuf,
}

/// The two prompt sets of an extraction (they must differ).
pub(crate) fn extract_sets(a: &ExtractArgs) -> Result<(PromptSet, PromptSet)> {
    let harmful = one_set(&a.harmful, "harmful", Some(a.limit))?;
    let harmless = one_set(&a.harmless, "harmless", Some(a.limit))?;
    fn sorted_prompts(s: &PromptSet) -> Vec<&str> {
        let mut v: Vec<&str> = s.items.iter().map(|i| i.prompt.as_str()).collect();
        v.sort_unstable();
        v
    }
    if sorted_prompts(&harmful) == sorted_prompts(&harmless) {
        bail!(
            "--harmful and --harmless hold the same prompts ({} and {}): every candidate direction would be zero",
            harmful.source,
            harmless.source
        );
    }
    Ok((harmful, harmless))
}

pub fn extract(a: ExtractArgs) -> Result<()> {
    let (harmful, harmless) = extract_sets(&a)?;
    let m = a.model.load()?;
    let total = harmful.items.len() + harmless.items.len();
    let had_selection = a.out.join("selected.json").is_file();
    let pb = bar(total as u64, "extracting");
    let t0 = std::time::Instant::now();
    let (c, reused) = steerkit_directions::extract(
        &m,
        &harmful,
        &harmless,
        &a.system.choice(),
        a.batch_size,
        &a.out,
        &mut |n| pb.inc(n as u64),
    )?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if reused {
        println!(
            "reused the candidates in {} (same model, prompts and template)",
            a.out.display()
        );
    } else {
        println!(
            "{} harmful + {} harmless prompts, {} layers x {} post-instruction positions: {:.1} s ({:.1} prompts/s); written to {}",
            harmful.items.len(),
            harmless.items.len(),
            c.meta.num_layers,
            c.meta.positions,
            secs,
            total as f64 / secs,
            a.out.display()
        );
        if had_selection {
            println!(
                "the folder's earlier selection (selected.json, scores.csv, scores.svg) came from other candidates and was removed; run `steerkit select` again"
            );
        }
    }
    Ok(())
}

#[derive(ClapArgs, Debug)]
pub struct SelectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The run folder written by `steerkit extract`.
    #[arg(long)]
    pub run: PathBuf,
    /// Harmful validation prompts (a file or a built-in name).
    #[arg(long)]
    pub harmful_val: String,
    /// Harmless validation prompts (a file or a built-in name).
    #[arg(long)]
    pub harmless_val: String,
    /// Use the first N prompts of each (the method uses 32).
    #[arg(long, default_value_t = 32, value_parser = crate::common::positive)]
    pub limit: usize,
    /// Largest first-token KL on harmless prompts allowed under ablation.
    #[arg(long, default_value_t = 0.1, value_parser = crate::common::finite)]
    pub kl_max: f64,
    /// Only layers below this fraction of the depth are candidates.
    #[arg(long, default_value_t = 0.8, value_parser = crate::common::fraction)]
    pub max_layer_frac: f64,
    /// Score every candidate on every prompt: no screening, no early stop (slow: about 25x
    /// the default on Qwen 0.5B).
    #[arg(long)]
    pub exhaustive: bool,
    /// Harmful prompts in the screening pass that ranks every candidate.
    #[arg(long, default_value_t = 8, value_parser = crate::common::positive)]
    pub screen: usize,
    /// Candidates kept after screening and scored on all prompts.
    #[arg(long, default_value_t = 12, value_parser = crate::common::positive)]
    pub keep: usize,
    /// Coefficient of the direction in the induce test (METHODS.md uses 1).
    #[arg(long, default_value_t = 1.0, value_parser = crate::common::finite)]
    pub induce_coeff: f64,
    /// Choose this layer instead of selecting (with --pos).
    #[arg(long, requires = "pos")]
    pub layer: Option<usize>,
    /// Choose this post-instruction position (-1 is the last token).
    #[arg(long, requires = "layer", allow_hyphen_values = true)]
    pub pos: Option<isize>,
    /// Prompts per forward batch.
    #[arg(long, default_value_t = 32, value_parser = crate::common::positive)]
    pub batch_size: usize,
    #[command(flatten)]
    pub system: SystemArgs,
}

/// The validation sets of a selection.
pub(crate) fn select_sets(a: &SelectArgs) -> Result<(PromptSet, PromptSet)> {
    Ok((
        one_set(&a.harmful_val, "harmful_val", Some(a.limit))?,
        one_set(&a.harmless_val, "harmless_val", Some(a.limit))?,
    ))
}

pub fn run_select(a: SelectArgs) -> Result<()> {
    let c = Candidates::load(&a.run)?;
    if let Some((layer, pos)) = a.layer.zip(a.pos) {
        // Before the model is loaded and the baselines are scored.
        let (n, p) = (c.meta.num_layers, c.meta.positions as isize);
        if layer >= n || !(-p..=-1).contains(&pos) {
            bail!(
                "{}: no candidate at --layer {layer} --pos {pos} (the extraction has layers 0..={} and positions -{p}..=-1)",
                a.run.display(),
                n - 1
            );
        }
    }
    let (harmful, harmless) = select_sets(&a)?;
    let m = a.model.load()?;
    c.check_model(&m, &a.run)?;
    let opts = SelectOptions {
        system: a.system.choice(),
        batch: a.batch_size,
        max_layer_frac: a.max_layer_frac,
        kl_max: a.kl_max,
        exhaustive: a.exhaustive,
        screen: a.screen,
        keep: a.keep,
        induce_coeff: a.induce_coeff,
    };
    let manual = a.layer.zip(a.pos);
    let pb = bar(0, "scoring");
    let t0 = std::time::Instant::now();
    let (scores, sel) = select(
        &m,
        &c,
        &harmful,
        &harmless,
        &opts,
        manual,
        &mut |phase, k, n| {
            pb.set_length(n as u64);
            pb.set_position(k as u64);
            pb.set_message(phase.to_string());
        },
    )?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    write_atomic(&a.run.join("scores.csv"), scores_csv(&scores).as_bytes())?;
    let Some(sel) = sel else {
        // An earlier selection no longer matches the scores just written.
        let stale = a.run.join("selected.json");
        let removed = stale.is_file();
        if removed {
            std::fs::remove_file(&stale).with_context(|| stale.display().to_string())?;
        }
        write_atomic(
            &a.run.join("scores.svg"),
            scores_svg(&scores, None).as_bytes(),
        )?;
        bail!(
            "no candidate passes the filters (induce > 0 at coefficient {}, KL <= {}, layer < {} of the depth); scores in {}{}; try --induce-coeff, --kl-max or --keep, or choose with --layer/--pos",
            a.induce_coeff,
            a.kl_max,
            a.max_layer_frac,
            a.run.join("scores.csv").display(),
            if removed { " (the earlier selected.json, from other scores, was removed)" } else { "" }
        );
    };
    write_atomic(
        &a.run.join("scores.svg"),
        scores_svg(&scores, Some(&sel)).as_bytes(),
    )?;
    write_atomic(
        &a.run.join("selected.json"),
        &serde_json::to_vec_pretty(&sel)?,
    )?;
    let full = scores.iter().filter(|s| s.bypass.is_some()).count();
    let filtered = scores.iter().filter(|s| s.kl.is_some()).count();
    let screened = scores.iter().filter(|s| s.screen.is_some()).count();
    let (nh, nb) = (harmful.items.len(), harmless.items.len());
    let forwards = screened * a.screen.min(nh) + full * nh + filtered * 2 * nb + nh + nb;
    println!(
        "selected layer {} position {}: refusal score on harmful prompts {:+.2} -> {:+.2} under ablation; on harmless {:+.2} -> {:+.2} under addition; KL {:.3}",
        sel.layer, sel.pos, sel.baseline_harmful, sel.bypass, sel.baseline_harmless, sel.induce, sel.kl
    );
    println!(
        "{} candidates screened, {full} scored on all prompts, {filtered} for the filters, in {secs:.0} s ({:.1} prompt forwards/s); scores.csv, scores.svg and selected.json in {}",
        scores.len(),
        forwards as f64 / secs,
        a.run.display()
    );
    Ok(())
}

/// The selected direction of a run and its layer.
pub fn selected_direction(run: &std::path::Path) -> Result<(candle_core::Tensor, Selected)> {
    let c = Candidates::load(run)?;
    let p = run.join("selected.json");
    if !p.is_file() {
        bail!(
            "{}: missing selected.json (run `steerkit select` first)",
            run.display()
        );
    }
    let sel: Selected = serde_json::from_slice(&std::fs::read(&p)?)?;
    Ok((c.direction(sel.layer, sel.pos)?, sel))
}
