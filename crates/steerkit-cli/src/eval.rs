//! `steerkit eval` and `steerkit compare`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use steerkit_data::sets::{resolve, ReadOptions, SetSpec};
use steerkit_eval::report::{compare as compare_reports, compare_markdown, svg_bars, Bar, Report};
use steerkit_eval::{evaluate, EvalOptions, Progress};
use steerkit_model::NoHook;

use crate::common::{bar, ModelArgs, SystemArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A prompt set: a built-in name (harmful, harmless, pseudo_harmful, pairs_safe,
    /// pairs_unsafe; each also as NAME.train and NAME.val), NAME=FILE, or
    /// NAME:safe=FILE / NAME:harmful=FILE for a file the registry does not know. Repeatable.
    /// A file whose rows carry `label: safe|unsafe` (XSTest) splits into NAME:safe and
    /// NAME:unsafe. Default: the three built-in sets.
    #[arg(long = "set", value_name = "SPEC")]
    pub sets: Vec<String>,
    /// The jsonl field or csv column holding the prompt.
    #[arg(long)]
    pub field: Option<String>,
    /// Use at most N prompts of each set.
    #[arg(long, value_parser = crate::common::positive)]
    pub limit: Option<usize>,
    /// Shuffle each set with this seed before --limit.
    #[arg(long)]
    pub shuffle_seed: Option<u64>,
    /// New tokens per answer (greedy).
    #[arg(long, default_value_t = 64, value_parser = crate::common::positive)]
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 32, value_parser = crate::common::positive)]
    pub batch_size: usize,
    /// A reference model (usually the unpatched one): the report then includes the first-token
    /// KL divergence from it on harmless prompts.
    #[arg(long)]
    pub reference: Option<String>,
    /// The harmless set for the KL (a --set spec; default: the built-in `harmless`).
    #[arg(long, default_value = "harmless")]
    pub kl_set: String,
    /// Use at most N prompts of the KL set (default: --limit, or 64). The KL is one forward
    /// pass per prompt and per model, so more prompts are cheap; on 40 prompts it is noisy
    /// (0.14 against 0.10 on all 256 of harmless_val for one patch).
    #[arg(long, value_parser = crate::common::positive)]
    pub kl_limit: Option<usize>,
    /// A direction run folder (from `steerkit select`) for --intervention.
    #[arg(long, requires = "intervention")]
    pub run: Option<PathBuf>,
    /// Apply the run's selected direction while generating: `ablate` (every layer) or `add`
    /// (at the selected layer, scaled by --coeff).
    #[arg(long, requires = "run", value_parser = ["ablate", "add"])]
    pub intervention: Option<String>,
    /// Scale of the direction for `--intervention add` [default: 1].
    #[arg(long, allow_hyphen_values = true, value_parser = crate::common::finite)]
    pub coeff: Option<f64>,
    /// Judge rules (TOML) extending the built-in ones.
    #[arg(long)]
    pub judge_rules: Option<PathBuf>,
    #[command(flatten)]
    pub system: SystemArgs,
    /// Run folder: responses, meta.json and the report. A rerun resumes.
    #[arg(long)]
    pub out: PathBuf,
}

/// The evaluated sets, the KL set and the judge, read from their files.
pub(crate) struct Inputs {
    sets: Vec<steerkit_data::PromptSet>,
    kl_set: steerkit_data::PromptSet,
    judge: steerkit_data::Judge,
    judge_name: String,
}

/// Reads them, the first thing `run` does; `steerkit run` calls it for every evaluation phase
/// before its first phase starts.
pub(crate) fn read_inputs(a: &Args) -> Result<Inputs> {
    let specs: Vec<String> = if a.sets.is_empty() {
        vec!["harmful".into(), "harmless".into(), "pseudo_harmful".into()]
    } else {
        a.sets.clone()
    };
    let ropts = ReadOptions {
        field: a.field.clone(),
        limit: a.limit,
        shuffle_seed: a.shuffle_seed,
    };
    let mut sets = Vec::new();
    for s in &specs {
        let spec: SetSpec = s.parse()?;
        for set in resolve(&spec, &ropts)? {
            if set.items.is_empty() {
                bail!("set `{}` has no prompts", set.name);
            }
            if sets
                .iter()
                .any(|x: &steerkit_data::PromptSet| x.name == set.name)
            {
                bail!("set `{}` is given twice", set.name);
            }
            sets.push(set);
        }
    }
    // The KL set is read even without --reference (then unused), so that a bad spec is an
    // error here and not only in the run that has a reference.
    let kl_set = {
        let spec: SetSpec = a.kl_set.parse()?;
        let kl_opts = ReadOptions {
            limit: Some(a.kl_limit.or(a.limit).unwrap_or(64)),
            ..ropts.clone()
        };
        resolve(&spec, &kl_opts)?.remove(0)
    };
    let (judge, judge_name) = crate::judge::load_judge(a.judge_rules.as_deref())?;
    Ok(Inputs {
        sets,
        kl_set,
        judge,
        judge_name,
    })
}

/// Checks of the arguments alone, before any work (also run by `steerkit run --dry-run`).
pub fn validate(a: &Args) -> Result<()> {
    if a.coeff.is_some() && a.intervention.as_deref() != Some("add") {
        bail!("--coeff applies to --intervention add");
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let coeff = a.coeff.unwrap_or(1.0);
    let Inputs {
        sets,
        kl_set,
        judge,
        judge_name,
    } = read_inputs(&a)?;
    let m = a.model.load()?;
    let reference = match &a.reference {
        Some(r) => {
            let reference = a.model.on.load(r)?;
            // Checked before any answer is generated, not after.
            steerkit_eval::utility::same_vocabulary(&reference, &m)
                .with_context(|| format!("--reference {r}"))?;
            Some((reference, kl_set))
        }
        None => None,
    };
    // The condition names the direction by its values; versions before 2026-11-26 named it
    // by its folder, and folders they saved resume under that earlier label.
    let (mut hook, condition, earlier_labels): (
        Box<dyn steerkit_model::Hook>,
        String,
        Vec<String>,
    ) = match (&a.run, a.intervention.as_deref()) {
        (Some(run), Some(kind)) => {
            let (dir, sel) = crate::directions::selected_direction(run)?;
            anyhow::ensure!(
                dir.dim(0)? == m.model.cfg.hidden_size,
                "{}: the direction has width {}, the model {} (a direction from another model?)",
                run.display(),
                dir.dim(0)?,
                m.model.cfg.hidden_size
            );
            let id = steerkit_directions::intervene::direction_id(&dir)?;
            let dir = dir.to_device(&m.model.device)?;
            let (hook, what): (Box<dyn steerkit_model::Hook>, String) = match kind {
                "ablate" => (
                    Box::new(steerkit_directions::intervene::ablation(&dir)?),
                    format!("ablate L{} pos {}", sel.layer, sel.pos),
                ),
                _ => (
                    Box::new(steerkit_directions::intervene::addition(
                        &dir, sel.layer, coeff,
                    )?),
                    format!("add {coeff}·r at L{} pos {}", sel.layer, sel.pos),
                ),
            };
            (
                hook,
                format!("{what} (direction {id})"),
                vec![format!("{what} ({})", run.display())],
            )
        }
        _ => (Box::new(NoHook), "none".to_string(), Vec::new()),
    };
    let opts = EvalOptions {
        max_new_tokens: a.max_new_tokens,
        batch_size: a.batch_size,
        system: a.system.choice(),
        judge,
        judge_name,
        condition,
        earlier_labels,
    };
    let total: usize = sets.iter().map(|s| s.items.len()).sum();
    let pb = bar(total as u64, "answering");
    let t0 = std::time::Instant::now();
    let mut generated = 0usize;
    let reference_ref = reference.as_ref().map(|(l, s)| (l, s));
    let report = evaluate(
        &m,
        &sets,
        &opts,
        reference_ref,
        hook.as_mut(),
        &a.out,
        &mut |p| match p {
            Progress::Set { name, done, .. } => {
                pb.set_message(name.to_string());
                pb.inc(done as u64);
            }
            Progress::Answered(n) => {
                generated += n;
                pb.inc(n as u64);
            }
        },
    )?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    print!("{}", report.markdown());
    if generated > 0 {
        println!(
            "\n{generated} prompts answered in {secs:.0} s ({:.2} prompts/s); report in {}",
            generated as f64 / secs,
            a.out.display()
        );
    } else {
        println!(
            "\nall answers were already saved; report in {}",
            a.out.display()
        );
    }
    Ok(())
}

#[derive(ClapArgs, Debug)]
pub struct CompareArgs {
    /// The first run folder (A).
    pub a: PathBuf,
    /// The second run folder (B).
    pub b: PathBuf,
    /// Also write comparison.md and comparison.svg into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn compare(a: CompareArgs) -> Result<()> {
    let ra = Report::read(&a.a)?;
    let rb = Report::read(&a.b)?;
    let rows = compare_reports(&ra, &rb)?;
    let md = compare_markdown(&ra, &rb, &rows);
    print!("{md}");
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
        let bars: Vec<Bar> = rows
            .iter()
            .map(|r| Bar {
                label: format!("{} (n={})", r.name, r.diff.n),
                value: r.diff.diff,
                lo: r.diff.lo,
                hi: r.diff.hi,
            })
            .collect();
        steerkit_eval::run::write_atomic(&out.join("comparison.md"), md.as_bytes())?;
        steerkit_eval::run::write_atomic(
            &out.join("comparison.svg"),
            svg_bars("Refusal rate, B minus A (paired)", &bars, -1.0, 1.0).as_bytes(),
        )?;
    }
    Ok(())
}
