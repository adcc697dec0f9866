//! `steerkit`: the command-line front end. Argument parsing and printing only; every
//! capability lives in a library crate.

mod ablate;
mod actor;
mod bench;
mod chat;
mod common;
mod directions;
mod eval;
mod export;
mod generate;
mod inspect;
mod judge;
mod pipeline;
mod safety;

use clap::{Parser, Subcommand};

/// Fix over-refusal in local chat models: inspect, run and measure them.
#[derive(Parser)]
#[command(name = "steerkit", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Show a model's architecture, size, chat template and special tokens.
    Inspect(inspect::Args),
    /// Generate answers to one prompt or a file of prompts (JSON lines out).
    Generate(generate::Args),
    /// Chat with a model in the terminal (multi-turn).
    Chat(chat::Args),
    /// Measure load time, prefill and decode throughput, and peak memory.
    Bench(bench::Args),
    /// Measure refusal rates on prompt sets (generation, judged), with 95% intervals.
    Eval(eval::Args),
    /// Judge the responses of a JSONL file (compliance, full or partial refusal); with human
    /// labels, measure agreement.
    Judge(judge::Args),
    /// Compare two evaluation runs on the same prompts (paired differences).
    Compare(eval::CompareArgs),
    /// Extract refusal-direction candidates (difference in means at every layer and position).
    Extract(directions::ExtractArgs),
    /// Score the candidates and select the refusal direction.
    Select(directions::SelectArgs),
    /// Intervention experiments: ablation, addition, ablation in some layers, or a sweep.
    Ablate(ablate::Args),
    /// ACTOR: fine-tune one block so safe prompts stop being refused and harmful ones are not.
    Actor(actor::Args),
    /// Safety tuning: fine-tune chosen blocks on refusals (harmful prompts) and the model's
    /// own answers (harmless ones), optionally with gradient projection.
    SafetyTune(safety::Args),
    /// Export weights (orthogonalized, or patched by an ACTOR run) or a llama.cpp control vector.
    Export(export::Args),
    /// The whole job from a config: ACTOR, export, evaluation before and after, report.md.
    Run(pipeline::Args),
}

/// Checks of a command's arguments alone, before any work; `steerkit run` runs them for every
/// phase before the first one starts.
pub(crate) fn validate(command: &Command) -> anyhow::Result<()> {
    // A run folder given as --out that is a file: said before any work.
    let out_folder = match command {
        Command::Eval(a) => Some(&a.out),
        Command::Compare(a) => a.out.as_ref(),
        Command::Extract(a) => Some(&a.out),
        Command::Ablate(a) => Some(&a.out),
        Command::Actor(a) => Some(&a.out),
        Command::SafetyTune(a) => Some(&a.out),
        _ => None,
    };
    if let Some(out) = out_folder.filter(|o| o.exists() && !o.is_dir()) {
        anyhow::bail!(
            "--out {}: a file is there; --out is a folder",
            out.display()
        );
    }
    // A run folder of another command: refused before anything is written into it.
    let kind = match command {
        Command::Eval(a) => Some((&a.out, common::RunKind::Eval)),
        Command::Extract(a) => Some((&a.out, common::RunKind::Direction)),
        Command::Ablate(a) => Some((&a.out, common::RunKind::Ablate)),
        Command::Actor(a) => Some((&a.out, common::RunKind::Actor)),
        Command::SafetyTune(a) => Some((&a.out, common::RunKind::SafetyTune)),
        _ => None,
    };
    if let Some((out, kind)) = kind {
        common::refuse_other_kind(out, kind)?;
    }
    match command {
        Command::Ablate(a) => ablate::validate(a),
        Command::Export(a) => export::validate(a),
        Command::Eval(a) => eval::validate(a),
        Command::Actor(a) => actor::validate(a),
        _ => Ok(()),
    }
}

/// Reads the prompt files a command would read first, without running it: `steerkit run`
/// checks every phase this way before its first phase starts (a command run alone reads
/// them itself before any work).
pub(crate) fn read_inputs(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Eval(a) => eval::read_inputs(a).map(drop),
        Command::Extract(a) => directions::extract_sets(a).map(drop),
        Command::Select(a) => directions::select_sets(a).map(drop),
        Command::Actor(a) => actor::read_inputs(a).map(drop),
        _ => Ok(()),
    }
}

/// Runs one command.
pub(crate) fn dispatch(command: Command) -> anyhow::Result<()> {
    validate(&command)?;
    match command {
        Command::Inspect(a) => inspect::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Compare(a) => eval::compare(a),
        Command::Judge(a) => judge::run(a),
        Command::Extract(a) => directions::extract(a),
        Command::Select(a) => directions::run_select(a),
        Command::Ablate(a) => ablate::run(a),
        Command::Actor(a) => actor::run(a),
        Command::SafetyTune(a) => safety::run(a),
        Command::Export(a) => export::run(a),
        Command::Run(a) => pipeline::run(a),
    }
}

fn main() {
    // Output piped into a reader that stops early (`| head`) ends the process quietly, as
    // with other Unix tools; Rust's default (SIGPIPE ignored) made `println!` panic there.
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Ctrl-C (SIGINT, or SIGTERM): the outputs being written are temporary files or folders
    // renamed when complete; remove them, so that an interrupted export does not leave
    // gigabytes behind, then end as the signal would (exit code 130). Everything complete
    // stays: runs resume from it.
    // The registry of temporary outputs stays held until the end, so that no writer makes a
    // new one meanwhile.
    let _ = ctrlc::set_handler(|| {
        let (removed, _held) = steerkit_model::scratch::remove_all();
        for p in removed {
            eprintln!("\ninterrupted: removed the unfinished {}", p.display());
        }
        std::process::exit(130);
    });
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli.command) {
        // One line: candle errors carry a backtrace after the message when RUST_BACKTRACE is set.
        let msg = format!("{e:#}");
        eprintln!("error: {}", msg.lines().next().unwrap_or("unknown error"));
        std::process::exit(1);
    }
}
