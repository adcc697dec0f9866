//! `steerkit ablate`: intervention experiments with a selected direction.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use steerkit_data::judge::Judge;
use steerkit_directions::experiment::{
    heatmap_svg, rows_csv, rows_markdown, run_condition, Intervention, Row,
};
use steerkit_eval::run::{write_atomic, EvalOptions, Progress};

use crate::common::{bar, ModelArgs, SystemArgs};
use crate::directions::{one_set, selected_direction};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The direction run folder (from `steerkit select`).
    #[arg(long)]
    pub run: PathBuf,
    /// Prompts to answer: a file (txt/jsonl/csv), NAME=FILE, or a built-in set name.
    #[arg(long, default_value = "harmful")]
    pub prompts: String,
    /// Use the first N prompts.
    #[arg(long, default_value_t = 32, value_parser = crate::common::positive)]
    pub limit: usize,
    /// ablate: directional ablation everywhere; add: scale·r added at --layer;
    /// ablate-layers: ablation in --layers only; sweep: addition over --layers x --scales.
    #[arg(long, default_value = "ablate", value_parser = ["ablate", "add", "ablate-layers", "sweep"])]
    pub mode: String,
    /// Coefficient of the direction for --mode add [default: 1].
    #[arg(long, allow_hyphen_values = true, value_parser = crate::common::finite)]
    pub scale: Option<f64>,
    /// Layer for --mode add, or the one layer of a sweep without --layers (default: the
    /// selected layer).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Layers: A..B (A to B-1) for ablate-layers and sweep, or a list 4,8,12 for sweep.
    #[arg(long)]
    pub layers: Option<String>,
    /// Scales of the sweep, comma-separated [default: 0.5,1,2,4].
    #[arg(long, allow_hyphen_values = true)]
    pub scales: Option<String>,
    /// New tokens per answer (greedy).
    #[arg(long, default_value_t = 64, value_parser = crate::common::positive)]
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 16, value_parser = crate::common::positive)]
    pub batch_size: usize,
    #[command(flatten)]
    pub system: SystemArgs,
    /// Output folder: one evaluation run per condition (resumable), results.csv/md, and
    /// heatmap.svg for a sweep.
    #[arg(long)]
    pub out: PathBuf,
}

/// Parses `A..B` or `a,b,c`.
fn parse_layers(s: &str, n: usize) -> Result<Vec<usize>> {
    let v: Vec<usize> = if let Some((a, b)) = s.split_once("..") {
        let a: usize = a.trim().parse().with_context(|| format!("--layers {s}"))?;
        let b: usize = b.trim().parse().with_context(|| format!("--layers {s}"))?;
        (a..b).collect()
    } else {
        s.split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--layers {s}: expected A..B or a list like 4,8,12"))?
    };
    if v.is_empty() {
        bail!("--layers {s} is empty");
    }
    if let Some(twice) = v.iter().enumerate().find(|(i, l)| v[..*i].contains(l)) {
        bail!("--layers {s} lists layer {} twice", twice.1);
    }
    if let Some(bad) = v.iter().find(|l| **l >= n) {
        bail!(
            "--layers {s}: layer {bad} does not exist (the model has 0..{})",
            n - 1
        );
    }
    Ok(v)
}

/// Checks of the arguments alone, before any work (also run by `steerkit run --dry-run`).
pub fn validate(a: &Args) -> Result<()> {
    // A flag the mode does not use is an error, not silently ignored.
    let mode = a.mode.as_str();
    for (given, flag, modes) in [
        (a.scale.is_some(), "--scale", "add"),
        (a.layer.is_some(), "--layer", "add and sweep"),
        (a.layers.is_some(), "--layers", "ablate-layers and sweep"),
        (a.scales.is_some(), "--scales", "sweep"),
    ] {
        if given && !modes.split(" and ").any(|m| m == mode) {
            bail!("{flag} applies to --mode {modes}, not {mode}");
        }
    }
    if a.layer.is_some() && a.layers.is_some() {
        bail!("--layer and --layers together: a sweep takes one of them");
    }
    parse_scales(a)?;
    Ok(())
}

/// The sweep's scales: `--scales`, or 0.5, 1, 2 and 4.
fn parse_scales(a: &Args) -> Result<Vec<f64>> {
    let scales_spec = a.scales.as_deref().unwrap_or("0.5,1,2,4");
    let scales: Vec<f64> = scales_spec
        .split(',')
        .map(crate::common::finite)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--scales {scales_spec}: {e}"))?;
    if let Some(twice) = scales
        .iter()
        .enumerate()
        .find(|(i, x)| scales[..*i].contains(x))
    {
        bail!("--scales {scales_spec} lists {} twice", twice.1);
    }
    Ok(scales)
}

pub fn run(a: Args) -> Result<()> {
    let (dir, sel) = selected_direction(&a.run)?;
    let set = one_set(&a.prompts, "prompts", Some(a.limit))?;
    let m = a.model.load()?;
    let n = m.model.cfg.num_layers;
    anyhow::ensure!(
        dir.dim(0)? == m.model.cfg.hidden_size,
        "{}: the direction has width {}, the model {} (a direction from another model?)",
        a.run.display(),
        dir.dim(0)?,
        m.model.cfg.hidden_size
    );
    let dir = dir.to_device(&m.model.device)?;
    let layer = a.layer.unwrap_or(sel.layer);
    if layer >= n {
        bail!(
            "--layer {layer} does not exist (the model has 0..{})",
            n - 1
        );
    }
    let scales = parse_scales(&a)?;
    let mut conditions = vec![Intervention::None];
    let mut grid = None;
    match a.mode.as_str() {
        "ablate" => conditions.push(Intervention::Ablate),
        "add" => conditions.push(Intervention::Add {
            layer,
            scale: a.scale.unwrap_or(1.0),
        }),
        "ablate-layers" => {
            let Some(spec) = &a.layers else {
                bail!("--mode ablate-layers needs --layers A..B");
            };
            if !spec.contains("..") {
                bail!("--mode ablate-layers takes a range of layers A..B, not the list {spec}");
            }
            let ls = parse_layers(spec, n)?;
            conditions.push(Intervention::AblateLayers {
                start: ls[0],
                end: ls[ls.len() - 1] + 1,
            });
        }
        _ => {
            let ls = match &a.layers {
                Some(spec) => parse_layers(spec, n)?,
                None => vec![layer],
            };
            for &l in &ls {
                for &s in &scales {
                    conditions.push(Intervention::Add { layer: l, scale: s });
                }
            }
            grid = Some((ls, scales.clone()));
        }
    }
    let opts = EvalOptions {
        max_new_tokens: a.max_new_tokens,
        batch_size: a.batch_size,
        system: a.system.choice(),
        judge: Judge::default(),
        judge_name: steerkit_data::judge::DEFAULT_JUDGE.into(),
        condition: String::new(),
        earlier_labels: Vec::new(),
    };
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let total = (conditions.len() * set.items.len()) as u64;
    let pb = bar(total, "answering");
    let t0 = std::time::Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    for iv in &conditions {
        pb.set_message(iv.label());
        let row = run_condition(&m, &set, &dir, iv, &opts, &a.out, &mut |p| match p {
            Progress::Set { done, .. } => pb.inc(done as u64),
            Progress::Answered(k) => pb.inc(k as u64),
        })?;
        rows.push(row);
    }
    pb.finish_and_clear();
    let md = rows_markdown(&rows);
    write_atomic(&a.out.join("results.csv"), rows_csv(&rows).as_bytes())?;
    write_atomic(&a.out.join("results.md"), md.as_bytes())?;
    if let Some((ls, sc)) = &grid {
        write_atomic(
            &a.out.join("heatmap.svg"),
            heatmap_svg(&rows, ls, sc).as_bytes(),
        )?;
    }
    println!(
        "{} prompts of `{}`, direction of layer {} position {} ({}):\n",
        set.items.len(),
        set.name,
        sel.layer,
        sel.pos,
        a.run.display()
    );
    print!("{md}");
    println!(
        "\n{} conditions in {:.0} s; results.csv, results.md{} in {}",
        rows.len(),
        t0.elapsed().as_secs_f64(),
        if grid.is_some() { ", heatmap.svg" } else { "" },
        a.out.display()
    );
    Ok(())
}
