//! `steerkit export`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;

use crate::common::{spinner, ModelArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A direction run folder (from `steerkit select`).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Output format.
    #[arg(long, default_value = "safetensors", value_parser = ["safetensors", "control-vector"])]
    pub format: String,
    /// Project the run's selected direction out of every matrix that writes to the residual
    /// stream (safetensors only).
    #[arg(long, requires = "run")]
    pub orthogonalize: bool,
    /// Control vector scale: the file carries `-scale * r` at the selected layer.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub scale: f64,
    /// Output folder (safetensors) or file (control vector). Must not exist.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    if a.out.exists() {
        bail!("{} already exists", a.out.display());
    }
    match a.format.as_str() {
        "safetensors" => {
            let m = a.model.load()?;
            let model = match (&a.run, a.orthogonalize) {
                (Some(run), true) => {
                    let (dir, sel) = crate::directions::selected_direction(run)?;
                    println!(
                        "orthogonalizing against the direction of layer {} position {}",
                        sel.layer, sel.pos
                    );
                    steerkit_export::orthogonalize(&m.model, &dir)?
                }
                (Some(_), false) => bail!(
                    "--run without --orthogonalize exports nothing of the run; add --orthogonalize"
                ),
                _ => m.model.clone(),
            };
            let sp = spinner(&format!("writing {}", a.out.display()));
            steerkit_model::hf::save_folder(&model, Some(&m.tok), Some(&m.chat), &a.out)?;
            sp.finish_and_clear();
            println!(
                "wrote {} (config.json, safetensors, tokenizer.json, tokenizer_config.json)",
                a.out.display()
            );
        }
        _ => {
            let Some(run) = &a.run else {
                bail!("--format control-vector needs --run");
            };
            let (dir, sel) = crate::directions::selected_direction(run)?;
            let c = steerkit_directions::extract::Candidates::load(run)?;
            let m = a.model.load()?;
            c.check_model(&m, run)?;
            let hint = m.model.cfg.arch.name();
            steerkit_export::control_vector::write(
                &dir,
                sel.layer,
                c.meta.num_layers,
                -a.scale,
                hint,
                &a.out,
            )?;
            println!(
                "wrote {}: direction.{} = {}·r (llama.cpp --control-vector)",
                a.out.display(),
                sel.layer,
                -a.scale
            );
        }
    }
    Ok(())
}
