//! `steerkit generate`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use steerkit_model::NoHook;

use crate::common::{bar, ModelArgs, SamplingArgs, SystemArgs};

#[derive(ClapArgs, Debug)]
#[group(id = "input", required = true, multiple = false)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One prompt (the user's message); or --prompts FILE.
    #[arg(long, group = "input")]
    pub prompt: Option<String>,
    /// A file of prompts: JSON lines (.jsonl, .json) or CSV (.csv) with a `prompt` field,
    /// anything else one prompt per line; or --prompt TEXT.
    #[arg(long, group = "input")]
    pub prompts: Option<PathBuf>,
    /// Prompts per batch.
    #[arg(long, default_value_t = 16, value_parser = crate::common::positive)]
    pub batch_size: usize,
    #[command(flatten)]
    pub system: SystemArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: Args) -> Result<()> {
    let prompts = match (&a.prompt, &a.prompts) {
        (Some(p), _) if p.trim().is_empty() => bail!("--prompt is empty"),
        (Some(p), _) => vec![p.clone()],
        (None, Some(f)) => steerkit_data::sets::read_file(f, &Default::default())?
            .into_iter()
            .map(|i| i.prompt)
            .collect(),
        (None, None) => bail!("give --prompt or --prompts"),
    };
    let m = a.model.load()?;
    let opts = a.sampling.options(&m)?;
    let system = a.system.choice();
    let formatted = prompts
        .iter()
        .map(|p| m.chat.prompt(&m.tok, p, &system))
        .collect::<steerkit_model::Result<Vec<_>>>()?;
    let longest = formatted.iter().map(|p| p.ids.len()).max().unwrap_or(0);
    if let Some(note) = crate::common::context_note(&m.model.cfg, longest, opts.max_new_tokens) {
        eprintln!("{note}");
    }
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
                "response": m.tok.answer(&g.ids)?,
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
