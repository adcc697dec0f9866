//! `steerkit run CONFIG.toml`: model -> refusal direction (when configured) -> ACTOR -> export
//! -> evaluation before and after (and under directional ablation, for comparison) ->
//! report.md, each phase skipped when its output in the run folder is already valid.
//!
//! The config's sections hold the flags of the commands it runs: `[extract]`, `[select]`,
//! `[actor]`, `[eval]` and `[export]` keys are the flags of `steerkit extract`, `select`,
//! `actor`, `eval` and `export` (`epochs = 3` is `--epochs 3`, `only_refused = true` is `--only-refused`, a
//! list repeats the flag). Top-level keys: `model`, `out`, `device`, `dtype`, `system`,
//! `no_system`. `--set section.key=value` overrides any key from the command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use clap::Parser;
use steerkit_eval::report::{compare as compare_reports, compare_markdown, Report};
use steerkit_eval::run::write_atomic;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The run configuration (TOML; see configs/).
    pub config: PathBuf,
    /// Override a key: `--set actor.epochs=1`, `--set out=runs/x` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Check the configuration and print every phase's command without running any.
    #[arg(long)]
    pub dry_run: bool,
}

/// Reads the config and applies the overrides (values parsed as TOML, else taken as strings).
fn read_config(a: &Args) -> Result<toml::Table> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("{}: cannot read", a.config.display()))?;
    let mut t: toml::Table = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            a.config.display(),
            steerkit_data::toml_error(&text, &e)
        )
    })?;
    for o in &a.overrides {
        let Some((key, value)) = o.split_once('=') else {
            bail!("--set {o}: expected KEY=VALUE");
        };
        let v: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut x| x.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let mut table = &mut t;
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            bail!("--set {o}: `{key}` is not a key (SECTION.KEY or a top-level KEY)");
        }
        for p in &parts[..parts.len() - 1] {
            table = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .with_context(|| format!("--set {o}: `{p}` is not a section"))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), v);
    }
    // Every key is known: a misspelt key, or a section whose header was lost (its keys then
    // sit at the top), would otherwise be ignored without a word.
    for (k, v) in &t {
        let (section, top) = (
            SECTIONS.contains(&k.as_str()),
            TOP_KEYS.contains(&k.as_str()),
        );
        let problem = match (section, top, v.is_table()) {
            (true, _, false) => format!("`{k}` must be a section ([{k}])"),
            (_, true, true) => format!("`{k}` must be a value, not a section"),
            (false, false, true) => format!("unknown section [{k}]"),
            (false, false, false) => format!("unknown top-level key `{k}`"),
            _ => continue,
        };
        bail!(
            "{}: {problem} (top-level keys: {}; sections: {})",
            a.config.display(),
            TOP_KEYS.join(", "),
            SECTIONS.map(|s| format!("[{s}]")).join(", ")
        );
    }
    Ok(t)
}

/// The config's top-level keys and its sections (one per command the pipeline runs).
const TOP_KEYS: [&str; 6] = ["model", "out", "device", "dtype", "system", "no_system"];
const SECTIONS: [&str; 5] = ["extract", "select", "actor", "eval", "export"];

/// A section's keys as command-line flags.
fn flags(t: &toml::Table, section: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let Some(v) = t.get(section) else {
        return Ok(out);
    };
    let sec = v
        .as_table()
        .with_context(|| format!("`{section}` must be a section ([{section}])"))?;
    for (k, v) in sec {
        let flag = format!("--{}", k.replace('_', "-"));
        let scalar = |v: &toml::Value| -> Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => bail!("[{section}] {k}: unsupported value {other}"),
            })
        };
        match v {
            toml::Value::Boolean(true) => out.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) if items.is_empty() => {
                bail!(
                    "[{section}] {k}: an empty list (leave the key out for the command's default)"
                )
            }
            toml::Value::Array(items) => {
                for it in items {
                    out.push(flag.clone());
                    out.push(scalar(it)?);
                }
            }
            v => {
                out.push(flag);
                out.push(scalar(v)?);
            }
        }
    }
    Ok(out)
}

fn top(t: &toml::Table, key: &str) -> Result<Option<String>> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => bail!("`{key}` must be a string, not {}", v.type_str()),
    }
}

/// How far a pass over the phases goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Check every phase's arguments, silently (before a real run, so that a bad key of a
    /// late phase is found before the early phases spend minutes).
    Check,
    /// `--dry-run`: show and check every phase's command line.
    DryRun,
    Run,
}

/// Runs one phase as the command line `argv` would, naming the phase in an error (other
/// passes than `Run` only check the arguments, with the command's own checks).
fn phase(name: &str, argv: &[String], log: &mut Vec<String>, pass: Pass) -> Result<()> {
    let line = shell_line(argv);
    if pass != Pass::Check {
        println!("\n== {name}: {line}");
    }
    log.push(line);
    let cli = crate::Cli::try_parse_from(
        std::iter::once("steerkit".to_string()).chain(argv.iter().cloned()),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "phase {name}: bad configuration: {}",
            e.to_string()
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ")
        )
    })?;
    if pass != Pass::Run {
        return crate::validate(&cli.command)
            .and_then(|()| crate::read_inputs(&cli.command))
            .map_err(|e| anyhow::anyhow!("phase {name}: bad configuration: {e:#}"));
    }
    crate::dispatch(cli.command).with_context(|| format!("phase {name} failed (fix the config or the inputs and rerun: finished phases are kept)"))
}

/// `steerkit ARGV` as a POSIX shell would need it typed: an argument with anything but
/// letters, digits and `_-./=:,+@%` in it is single-quoted (a quote inside as `'\''`).
fn shell_line(argv: &[String]) -> String {
    let quoted = argv.iter().map(|a| {
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
        match plain {
            true => a.clone(),
            false => format!("'{}'", a.replace('\'', r"'\''")),
        }
    });
    format!("steerkit {}", quoted.collect::<Vec<_>>().join(" "))
}

/// A phase whose output is kept while its inputs are unchanged: `marker_path` holds `marker()`
/// (the inputs, e.g. the arguments and what they read) of the run that wrote `output`.
struct Fresh<'a> {
    output: &'a Path,
    /// A file that exists once the output is complete.
    complete: &'a Path,
    /// A folder removed before the phase runs again (one the command will not overwrite).
    clear: Option<&'a Path>,
    /// What a kept output holds, for the message.
    holds: &'a str,
    marker_path: &'a Path,
    marker: &'a dyn Fn() -> Result<String>,
    /// The run folder: paths inside it are written into the marker relative to it, so that a
    /// run folder copied or moved elsewhere keeps its outputs.
    root: &'a Path,
    /// Outputs derived from an earlier `output` (answers of an earlier model, say), removed
    /// before the phase runs again, so that an interruption cannot leave them beside a new
    /// marker.
    stale: &'a [&'a Path],
}

impl Fresh<'_> {
    /// Runs the phase unless its output is complete with the same marker. A run removes the old
    /// marker first and writes the marker last, so an interrupted run is redone.
    fn run_unless_fresh(
        &self,
        name: &str,
        argv: &[String],
        log: &mut Vec<String>,
        pass: Pass,
    ) -> Result<()> {
        if pass != Pass::Run {
            return phase(name, argv, log, pass);
        }
        let raw = (self.marker)()?;
        let marker = relocatable(&raw, self.root);
        // Markers written before 2026-11-28 hold the paths as given.
        let saved = std::fs::read_to_string(self.marker_path).ok();
        if self.complete.is_file() && (saved.as_ref() == Some(&marker) || saved == Some(raw)) {
            println!(
                "\n== {name}: {} holds {}; skipped",
                self.output.display(),
                self.holds
            );
            log.push(shell_line(argv));
            return Ok(());
        }
        let _ = std::fs::remove_file(self.marker_path);
        for p in self.clear.iter().chain(self.stale) {
            remove_path(p).with_context(|| format!("phase {name}"))?;
        }
        phase(name, argv, log, pass)?;
        write_atomic(self.marker_path, marker.as_bytes())?;
        Ok(())
    }
}

/// `marker` (arguments joined by U+001F, then what they read) with every argument inside
/// `root` written as `<out>/...`.
fn relocatable(marker: &str, root: &Path) -> String {
    // `runs/x/` and `runs/x` are one folder (the phases' paths are `runs/x/direction`).
    let inside = format!("{}/", root.to_string_lossy().trim_end_matches('/'));
    marker
        .split('\u{1f}')
        .map(|arg| match arg.strip_prefix(&inside) {
            Some(rest) => format!("<out>/{rest}"),
            None => arg.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// Removes a folder or a file, if there.
fn remove_path(p: &Path) -> Result<()> {
    let gone = match p.is_dir() {
        true => std::fs::remove_dir_all(p),
        false if p.exists() => std::fs::remove_file(p),
        false => Ok(()),
    };
    gone.with_context(|| format!("{}: cannot remove", p.display()))
}

/// The export marker: the export's command line, less `--device` (an export on another
/// device writes the same weights, and answers of f32 models on either are kept alike), and
/// the sha256 of the checkpoint it takes, so that a retrained block (other prompts, other
/// settings, after `actor/` was deleted) is exported again even where the epoch counts agree.
fn export_marker(argv: &[String], checkpoint: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(checkpoint)
        .with_context(|| format!("{}: cannot read", checkpoint.display()))?;
    std::io::copy(&mut f, &mut h).with_context(|| format!("{}", checkpoint.display()))?;
    let mut shown: Vec<&str> = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => drop(it.next()),
            a => shown.push(a),
        }
    }
    Ok(format!(
        "{}\ncheckpoint {:x}",
        shown.join("\u{1f}"),
        h.finalize()
    ))
}

/// The value of flag `name` in `argv` (`--name VALUE`), if given.
fn flag_value<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

/// The epoch the export takes: `[export] epoch` when set; else the config's `[actor] epochs`
/// when an earlier run trained further (its later checkpoints stay in the folder, and
/// training never goes back), added to `export_flags`; else the last.
fn export_epoch(actor_run: &Path, export_flags: &mut Vec<String>) -> Result<usize> {
    let Some((last, _)) = steerkit_actor::train::last_checkpoint(actor_run)? else {
        bail!("{}: no completed epoch to export", actor_run.display());
    };
    if let Some(e) = flag_value(export_flags, "--epoch") {
        let e: usize = e
            .parse()
            .with_context(|| format!("[export] epoch = {e}: not a number"))?;
        if !(1..=last).contains(&e) {
            bail!("[export] epoch = {e}: not a completed epoch of the ACTOR run (epochs 1..={last} are)");
        }
        return Ok(e);
    }
    let meta: crate::actor::ActorMeta = serde_json::from_slice(
        &std::fs::read(actor_run.join("actor.json")).context("actor.json")?,
    )?;
    let want = meta.config.epochs;
    if want < last {
        export_flags.extend(["--epoch".into(), want.to_string()]);
        return Ok(want);
    }
    Ok(last)
}

/// Runs an evaluation phase, whose answers in `folder` resume an interrupted run. When
/// `folder` holds answers made with other settings (another model, token budget, system
/// prompt, condition, or other prompts: `steerkit eval`'s own check), they are removed, with a
/// line saying so, and the phase runs again, rather than stopping with advice (another
/// `--out`) that a config cannot follow.
fn eval_phase(
    name: &str,
    argv: &[String],
    folder: &Path,
    log: &mut Vec<String>,
    pass: Pass,
) -> Result<()> {
    let logged = log.len();
    let Err(e) = phase(name, argv, log, pass) else {
        return Ok(());
    };
    let other = e.chain().find_map(|c| match c.downcast_ref() {
        Some(steerkit_eval::run::EvalError::SavedForOtherSettings(why)) => Some(why.clone()),
        _ => None,
    });
    let Some(why) = other.filter(|_| pass == Pass::Run) else {
        return Err(e);
    };
    println!(
        "\n== {name}: {}; removing them and answering again",
        why.trim_end_matches("; choose another --out")
    );
    remove_path(folder).with_context(|| format!("phase {name}"))?;
    log.truncate(logged);
    phase(name, argv, log, pass)
}

pub fn run(a: Args) -> Result<()> {
    if !a.dry_run {
        execute(&a, Pass::Check)?;
    }
    execute(&a, if a.dry_run { Pass::DryRun } else { Pass::Run })
}

fn execute(a: &Args, pass: Pass) -> Result<()> {
    let t = read_config(a)?;
    let Some(model) = top(&t, "model")? else {
        bail!("{}: missing `model`", a.config.display());
    };
    let out = PathBuf::from(top(&t, "out")?.unwrap_or_else(|| "runs/steerkit".into()));
    if out.exists() && !out.is_dir() {
        bail!(
            "`out` {}: a file is there; `out` is a folder",
            out.display()
        );
    }
    if pass == Pass::Run {
        std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    }
    let mut common: Vec<String> = Vec::new();
    for k in ["device", "dtype"] {
        if let Some(v) = top(&t, k)? {
            common.extend([format!("--{k}"), v]);
        }
    }
    let mut system: Vec<String> = Vec::new();
    if let Some(s) = top(&t, "system")? {
        system.extend(["--system".into(), s]);
    }
    match t.get("no_system") {
        None | Some(toml::Value::Boolean(false)) => {}
        Some(toml::Value::Boolean(true)) => system.push("--no-system".into()),
        Some(v) => bail!("`no_system` must be true or false, not {}", v.type_str()),
    }
    // The model is there: a real run stops before its first phase when it is not; a dry run
    // (of a template for a model fetched later, say) says so and goes on.
    if let Err(e) = steerkit_model::locate(&model) {
        match pass {
            Pass::DryRun => println!("note: `model` {model}: {e}; a real run needs it"),
            _ => bail!("`model` {model}: {e}"),
        }
    }
    let t0 = std::time::Instant::now();
    let dry = pass;
    let mut log = Vec::new();
    let actor_run = out.join("actor");
    let mut export_flags = flags(&t, "export")?;
    // A GGUF export is one file, a safetensors export a folder (a control vector is not a
    // patched model: `steerkit export --run DIRECTION --format control-vector` writes one).
    let gguf = match flag_value(&export_flags, "--format") {
        None | Some("safetensors") => false,
        Some("gguf") => true,
        Some(f) => bail!(
            "[export] format = \"{f}\": `run` exports the patched model as safetensors or gguf"
        ),
    };
    let (patched, other_format) = match gguf {
        true => (out.join("patched.gguf"), out.join("patched")),
        false => (out.join("patched"), out.join("patched.gguf")),
    };
    let path = |p: &Path| p.to_string_lossy().into_owned();

    // A command line: the command, the model, the device flags, the system prompt flags when
    // the command takes them, then `rest`.
    // `steerkit CMD -m M`, the device and dtype, the system prompt (when the command takes
    // one), the flags of the config's section, then the run's own arguments.
    let command = |cmd: &str,
                   m: &str,
                   with_system: bool,
                   section: &[String],
                   own: &[String]|
     -> Vec<String> {
        let mut argv: Vec<String> = vec![cmd.into(), "-m".into(), m.into()];
        argv.extend(common.iter().cloned());
        if with_system {
            argv.extend(system.iter().cloned());
        }
        argv.extend(section.iter().cloned());
        argv.extend(own.iter().cloned());
        argv
    };

    // 1. The refusal direction, when the config has a [select] section: extraction (reused
    // by `extract` itself when its inputs are the same) and selection (skipped when its
    // arguments and the extraction are those of the last selection).
    let direction = out.join("direction");
    let with_direction = t.contains_key("select");
    if with_direction {
        phase(
            "extract",
            &command(
                "extract",
                &model,
                true,
                &flags(&t, "extract")?,
                &["--out".into(), path(&direction)],
            ),
            &mut log,
            dry,
        )?;
        let argv = command(
            "select",
            &model,
            true,
            &flags(&t, "select")?,
            &["--run".into(), path(&direction)],
        );
        // The selection's arguments and the extraction it scored.
        let marker = || -> Result<String> {
            let extracted = std::fs::read_to_string(direction.join("extract.json"))
                .with_context(|| format!("{}: no extract.json", direction.display()))?;
            Ok(format!("{}\n{extracted}", argv.join("\u{1f}")))
        };
        let selected = direction.join("selected.json");
        let fresh = Fresh {
            output: &selected,
            complete: &selected,
            clear: None,
            holds: "this selection",
            marker_path: &direction.join("select.args"),
            marker: &marker,
            root: &out,
            // Answers under an earlier direction are stale.
            stale: &[&out.join("eval-ablated")],
        };
        fresh.run_unless_fresh("select", &argv, &mut log, dry)?;
    }

    // 2. ACTOR (resumes; the cache and finished epochs are reused).
    phase(
        "actor",
        &command(
            "actor",
            &model,
            true,
            &flags(&t, "actor")?,
            &["--out".into(), path(&actor_run)],
        ),
        &mut log,
        dry,
    )?;

    // 3. Export, unless the output already holds this checkpoint, written this way.
    let epoch = match pass {
        Pass::Run => Some(export_epoch(&actor_run, &mut export_flags)?),
        _ => None,
    };
    let argv = command(
        "export",
        &model,
        false,
        &export_flags,
        &[
            "--run".into(),
            path(&actor_run),
            "--out".into(),
            path(&patched),
        ],
    );
    let checkpoint = steerkit_actor::train::block_file(&actor_run, epoch.unwrap_or(0));
    let holds = format!("the checkpoint of epoch {}", epoch.unwrap_or(0));
    let fresh = Fresh {
        output: &patched,
        complete: &match gguf {
            true => patched.clone(),
            false => patched.join("config.json"),
        },
        clear: Some(&patched),
        holds: &holds,
        marker_path: &out.join("patched.state.json"),
        marker: &|| export_marker(&argv, &checkpoint),
        root: &out,
        // Answers of an earlier patched model are stale, and so is an export in the other
        // format.
        stale: &[&out.join("eval-after"), &other_format],
    };
    fresh.run_unless_fresh("export", &argv, &mut log, dry)?;

    // 4. Evaluations (resumable: saved answers are kept).
    let eval_flags = flags(&t, "eval")?;
    let before = out.join("eval-before");
    let after = out.join("eval-after");
    eval_phase(
        "evaluate before",
        &command(
            "eval",
            &model,
            true,
            &eval_flags,
            &["--out".into(), path(&before)],
        ),
        &before,
        &mut log,
        dry,
    )?;
    eval_phase(
        "evaluate after",
        &command(
            "eval",
            &path(&patched),
            true,
            &eval_flags,
            &[
                "--reference".into(),
                model.clone(),
                "--out".into(),
                path(&after),
            ],
        ),
        &after,
        &mut log,
        dry,
    )?;
    let ablated = out.join("eval-ablated");
    if with_direction {
        eval_phase(
            "evaluate ablated",
            &command(
                "eval",
                &model,
                true,
                &eval_flags,
                // No --reference: the report shows the patched model's KL only.
                &[
                    "--run".into(),
                    path(&direction),
                    "--intervention".into(),
                    "ablate".into(),
                    "--out".into(),
                    path(&ablated),
                ],
            ),
            &ablated,
            &mut log,
            dry,
        )?;
    }

    if dry != Pass::Run {
        if dry == Pass::DryRun {
            println!("\ndry run: the configuration is valid; nothing was run");
        }
        return Ok(());
    }

    // 5. The report.
    let argv: Vec<String> = vec![
        "compare".into(),
        path(&before),
        path(&after),
        "--out".into(),
        path(&out),
    ];
    phase("compare", &argv, &mut log, dry)?;
    let rb = Report::read(&before)?;
    let ra = Report::read(&after)?;
    let rows = compare_reports(&rb, &ra)?;
    let abl = if with_direction {
        let rab = Report::read(&ablated)?;
        let rows = compare_reports(&rb, &rab)?;
        let sel = std::fs::read_to_string(direction.join("selected.json"))
            .context("direction/selected.json")?;
        let sel: serde_json::Value = serde_json::from_str(&sel)?;
        Some(ablation_md(
            &rb,
            &ra,
            &rab,
            &compare_markdown(&rb, &rab, &rows),
            &sel,
        ))
    } else {
        None
    };
    let md = report_md(
        &a.config,
        &model,
        &actor_run,
        epoch.expect("a real run knows the exported epoch"),
        &rb,
        &ra,
        &compare_markdown(&rb, &ra, &rows),
        abl.as_deref(),
        &log,
    )?;
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    println!(
        "\nreport: {} ({:.0} s)",
        out.join("report.md").display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn rate_table(r: &Report) -> String {
    let mut s = String::from("| set | kind | refused | rate [95% CI] |\n|---|---|---|---|\n");
    for x in &r.sets {
        s.push_str(&format!(
            "| {} | {} | {}/{} | {:.1}% [{:.1}, {:.1}] |\n",
            x.name,
            steerkit_eval::report::kind_str(x.kind),
            x.refusal.k,
            x.refusal.n,
            100.0 * x.refusal.rate,
            100.0 * x.refusal.lo,
            100.0 * x.refusal.hi
        ));
    }
    s
}

/// The report's section on directional ablation: the three models side by side, then the
/// paired differences of ablation from the original model.
fn ablation_md(
    before: &Report,
    after: &Report,
    ablated: &Report,
    comparison: &str,
    selected: &serde_json::Value,
) -> String {
    let rate = |r: &Report, name: &str| {
        r.sets
            .iter()
            .find(|x| x.name == name)
            .map(|x| x.refusal.display())
            .unwrap_or_else(|| "-".into())
    };
    let mut s = format!(
        "## Directional ablation, for comparison\n\nThe refusal direction of layer {} (position {}; `direction/selected.json`) projected out of the residual stream at every layer, on the same prompts (refusal rates, 95% Wilson intervals, counts). Ablation removes refusals wholesale, harmful ones included; ACTOR is meant to remove only the over-refusal.\n\n| set | kind | original | ACTOR | ablation |\n|---|---|---|---|---|\n",
        selected["layer"], selected["pos"]
    );
    for x in &before.sets {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            x.name,
            steerkit_eval::report::kind_str(x.kind),
            rate(before, &x.name),
            rate(after, &x.name),
            rate(ablated, &x.name)
        ));
    }
    s.push('\n');
    s.push_str(&comparison.replacen(
        "# Comparison",
        "### Ablation against the original model, paired",
        1,
    ));
    s.push('\n');
    s
}

#[allow(clippy::too_many_arguments)]
fn report_md(
    config: &Path,
    model: &str,
    actor_run: &Path,
    exported_epoch: usize,
    before: &Report,
    after: &Report,
    comparison: &str,
    ablation: Option<&str>,
    log: &[String],
) -> Result<String> {
    let meta: crate::actor::ActorMeta = serde_json::from_slice(
        &std::fs::read(actor_run.join("actor.json")).context("actor.json")?,
    )?;
    let logs: Vec<steerkit_actor::train::EpochLog> =
        serde_json::from_slice(&std::fs::read(actor_run.join("log.json")).context("log.json")?)?;
    let secs: f64 = logs.iter().map(|l| l.seconds).sum();
    let mut s = format!(
        "# steerkit report\n\nModel `{model}`, configuration `{}`.\n\n## What was done\n\nACTOR trained block {} (silhouette-chosen unless set) on {} harmful, {} harmless and {} pseudo-harmful prompts{} for {} epochs ({secs:.0} s of training; α = {}, α_harmful = {}{}{}, lr = {}, refresh = {}){}. Loss and validation curves: `actor/loss.svg`.\n\n",
        config.display(),
        meta.layer,
        meta.harmful,
        meta.harmless,
        meta.pseudo_kept,
        if meta.pseudo_kept < meta.pseudo_total {
            format!(
                " ({} of {} kept: those the model refuses)",
                meta.pseudo_kept, meta.pseudo_total
            )
        } else {
            String::new()
        },
        logs.len(),
        meta.config.alpha,
        meta.config.alpha_harmful,
        meta.config
            .alpha_harmless
            .map(|x| format!(", α_harmless = {x}"))
            .unwrap_or_default(),
        meta.config.extras(),
        meta.config.adamw.lr,
        meta.config.refresh,
        match exported_epoch < logs.len() {
            true => format!(
                "; the model exported and evaluated is epoch {exported_epoch}'s checkpoint"
            ),
            false => String::new(),
        },
    );
    s.push_str("## Refusal rates, before and after\n\nSafe sets: lower is better (over-refusal). Harmful sets: higher is better.\n\n");
    s.push_str(&format!(
        "Before (`{}`):\n\n{}\n",
        before.model,
        rate_table(before)
    ));
    s.push_str(&format!(
        "After (`{}`):\n\n{}\n",
        after.model,
        rate_table(after)
    ));
    s.push_str(comparison);
    s.push_str("\n![before and after](comparison.svg)\n\n## Utility\n\n");
    s.push_str(&format!(
        "- plain-text cross-entropy: {:.3} nats/token before, {:.3} after\n",
        before.utility.plain_text_cross_entropy.mean_nats,
        after.utility.plain_text_cross_entropy.mean_nats
    ));
    if let Some(k) = &after.utility.first_token_kl {
        s.push_str(&format!(
            "- first-token KL from the original model on `{}` ({} prompts): {:.4}\n",
            k.set, k.n, k.mean
        ));
    }
    if let Some(a) = ablation {
        s.push('\n');
        s.push_str(a);
    }
    s.push_str(&format!(
        "\nJudge: {}. Its error is part of every rate above.\n\n## Reproduce\n\n```\n",
        after.judge
    ));
    for l in log {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("```\n");
    Ok(s)
}
