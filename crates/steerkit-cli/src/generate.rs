//! `steerkit generate`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use steerkit_model::NoHook;

use crate::common::{bar, ModelArgs, SamplingArgs, SystemArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One prompt (the user's message).
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    pub prompt: Option<String>,
    /// A file of prompts: one per line, or JSON lines with a `prompt` field (.jsonl).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Prompts per batch.
    #[arg(long, default_value_t = 16, value_parser = crate::common::positive)]
    pub batch_size: usize,
    #[command(flatten)]
    pub system: SystemArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Reads prompts: `.jsonl` files by their `prompt` field, anything else one per line.
fn read_prompts(path: &PathBuf) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if jsonl {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
            match v["prompt"].as_str() {
                Some(p) => out.push(p.to_string()),
                None => bail!("{}:{}: no string field `prompt`", path.display(), i + 1),
            }
        } else {
            out.push(line.to_string());
        }
    }
    if out.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(out)
}

pub fn run(a: Args) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let prompts = match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(f)) => read_prompts(f)?,
        (None, None) => bail!("give --prompt or --prompts"),
    };
    let m = a.model.load()?;
    let opts = a.sampling.options(&m)?;
    let system = a.system.choice();
    let formatted = prompts
        .iter()
        .map(|p| m.chat.prompt(&m.tok, p, &system))
        .collect::<steerkit_model::Result<Vec<_>>>()?;
    let pb = bar(prompts.len() as u64, "generating");
    let stdout = std::io::stdout();
    for (chunk_i, chunk) in formatted.chunks(a.batch_size).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        let outs = steerkit_model::generate(&m.model, &ids, &opts, &mut NoHook, &mut |_| {})?;
        let mut lock = stdout.lock();
        for (j, g) in outs.iter().enumerate() {
            let i = chunk_i * a.batch_size + j;
            let line = json!({
                "prompt": prompts[i],
                "response": m.tok.decode(&g.ids, true)?,
                "new_tokens": g.ids.len(),
                "stopped": g.stopped,
            });
            writeln!(lock, "{line}")?;
        }
        lock.flush()?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(())
}
