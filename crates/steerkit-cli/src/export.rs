//! `steerkit export`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;

use crate::common::ModelArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A direction run folder (from `steerkit select`, with --orthogonalize) or an ACTOR run
    /// folder (from `steerkit actor`) or a safety-tuning run folder (`steerkit safety-tune`):
    /// the run's last checkpoint is exported.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Export this epoch's checkpoint of an ACTOR run instead of the last (when validation
    /// favoured an earlier epoch).
    #[arg(long, requires = "run")]
    pub epoch: Option<usize>,
    /// Output format.
    #[arg(long, default_value = "safetensors", value_parser = ["safetensors", "gguf", "control-vector"])]
    pub format: String,
    /// Matrix storage for --format gguf [default: f16]; mxfp4 (mixtures of experts only):
    /// the experts in MXFP4 as llama.cpp's gpt-oss files hold them, the other matrices q8_0.
    /// A GGUF source's metadata is carried over; for a Hugging Face folder it is built from
    /// config.json and tokenizer.json (byte-level BPE tokenizers: Qwen2, Llama 3, SmolLM2,
    /// GPT-2 style; SentencePiece-style: Llama 2, Mistral 7B).
    #[arg(long, value_parser = ["f16", "q8_0", "mxfp4"])]
    pub gguf_type: Option<String>,
    /// Tensor storage for --format safetensors [default: f32]. bf16 halves the folder (as
    /// most models are published) at the cost of rounding every weight to bf16, which moves
    /// logits slightly; f32 keeps the computed weights exactly.
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub safetensors_dtype: Option<String>,
    /// For a multimodal model (Gemma 3 4B and up, Mistral Small 3.1 and 3.2; --format
    /// safetensors): write its text model alone, as Gemma3ForCausalLM or MistralForCausalLM.
    /// Without it the folder is the whole model in its source's layout, the vision tower and
    /// projector carried unchanged beside the patched text model. GGUF files always hold the
    /// text model alone.
    #[arg(long)]
    pub text_only: bool,
    /// Project the run's selected direction out of every matrix that writes to the residual
    /// stream (safetensors and gguf).
    #[arg(long, requires = "run")]
    pub orthogonalize: bool,
    /// Control vector scale [default: 1]: the file carries `-scale * r` at the selected layer.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::common::finite)]
    pub scale: Option<f64>,
    /// Output folder (safetensors) or file (control vector). Must not exist.
    #[arg(long)]
    pub out: PathBuf,
}

/// Checks of the arguments alone, before any work (also run by `steerkit run --dry-run`).
pub fn validate(a: &Args) -> Result<()> {
    // A flag the format does not use is an error, not silently ignored.
    if a.gguf_type.is_some() && a.format != "gguf" {
        bail!("--gguf-type applies to --format gguf, not {}", a.format);
    }
    if a.safetensors_dtype.is_some() && a.format != "safetensors" {
        bail!(
            "--safetensors-dtype applies to --format safetensors, not {}",
            a.format
        );
    }
    if a.text_only && a.format != "safetensors" {
        bail!(
            "--text-only applies to --format safetensors, not {}",
            a.format
        );
    }
    if a.orthogonalize && a.format == "control-vector" {
        bail!(
            "--orthogonalize applies to --format safetensors or gguf; a control vector carries \
             the direction itself"
        );
    }
    if a.scale.is_some() && a.format != "control-vector" {
        bail!(
            "--scale applies to --format control-vector, not {}",
            a.format
        );
    }
    // A training run where a direction run is needed: say so, not "missing extract.json".
    if let Some(run) = &a.run {
        let needs_direction = a.orthogonalize || a.format == "control-vector";
        let training = if crate::actor::is_actor_run(run) {
            Some("an ACTOR run")
        } else if crate::safety::is_safety_run(run) {
            Some("a safety-tune run")
        } else {
            None
        };
        if let (true, Some(kind)) = (needs_direction, training) {
            bail!(
                "{} is {kind}; {} needs a direction run (`steerkit extract` then `steerkit select`)",
                run.display(),
                if a.orthogonalize { "--orthogonalize" } else { "a control vector" }
            );
        }
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    if a.out.exists() {
        bail!("{} already exists", a.out.display());
    }
    // Neither a training run nor a direction run (an evaluation's folder, a typo). Checked
    // here, not in `validate`: `steerkit run` validates every phase before the first runs,
    // when its export phase's run folder is not made yet.
    if let Some(run) = &a.run {
        let known = ["actor.json", "safety.json", "extract.json"];
        if !known.iter().any(|f| run.join(f).is_file()) {
            bail!(
                "--run {}: not an ACTOR, safety-tuning or refusal-direction run folder (it has no actor.json, safety.json or extract.json)",
                run.display()
            );
        }
    }
    // The output's folder is made up front, not found missing after the work.
    crate::common::create_parent(&a.out)?;
    match a.format.as_str() {
        "safetensors" | "gguf" => {
            let m = a.model.load()?;
            let source = match m.kind {
                steerkit_model::SourceKind::Gguf => None,
                _ => Some(steerkit_model::hf::HfFolder::open(&m.path)?),
            };
            let multimodal = source.as_ref().and_then(|s| s.multimodal());
            // GGUF metadata first: an unsupported tokenizer is found before any work.
            let meta = if a.format != "gguf" {
                None
            } else if m.kind == steerkit_model::SourceKind::Gguf {
                let src = steerkit_model::gguf::Gguf::open(&m.path)?;
                Some(steerkit_export::gguf::source_metadata(&src))
            } else {
                // The name the user gave: a folder's or a repo id's last part (not the HF
                // cache's snapshot hash).
                let spec = std::path::Path::new(&a.model.model);
                let name = spec
                    .file_name()
                    .or(m
                        .path
                        .canonicalize()
                        .ok()
                        .as_deref()
                        .and_then(|p| p.file_name()))
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into());
                Some(steerkit_export::gguf::metadata(
                    &m.model.cfg,
                    &m.tok,
                    &m.chat,
                    &name,
                )?)
            };
            if a.epoch.is_some() && !a.run.as_deref().is_some_and(crate::actor::is_actor_run) {
                bail!("--epoch applies to ACTOR run folders only");
            }
            // The direction orthogonalized against, when it is, and the orthogonalization,
            // applied to each tensor as it is written.
            let mut against = None;
            let mut ortho = None;
            let model = match (&a.run, a.orthogonalize) {
                (Some(run), false) if crate::actor::is_actor_run(run) => {
                    crate::actor::patched(&m, run, a.epoch)?
                }
                (Some(run), false) if crate::safety::is_safety_run(run) => {
                    crate::safety::patched(&m, run)?
                }
                (Some(run), true) => {
                    let (dir, sel) = crate::directions::selected_direction(run)?;
                    println!(
                        "orthogonalizing against the direction of layer {} position {}",
                        sel.layer, sel.pos
                    );
                    let (untied, o) = steerkit_export::Orthogonalizer::new(&m.model, &dir)?;
                    against = Some(dir);
                    ortho = Some(o);
                    untied
                }
                (Some(_), false) => bail!(
                    "--run without --orthogonalize exports nothing of the run; add --orthogonalize"
                ),
                _ => m.model.clone(),
            };
            let apply;
            let map: Option<steerkit_model::weights::TensorMap> = match &ortho {
                Some(o) => {
                    apply = |name: &str, t| o.apply(name, t);
                    Some(&apply)
                }
                None => None,
            };
            let sp = crate::common::bytes_bar(&format!("writing {}", a.out.display()));
            let progress = |done: u64, total: u64| {
                sp.set_length(total);
                sp.set_position(done);
            };
            if let Some(meta) = meta {
                let gguf_type = a.gguf_type.as_deref().unwrap_or("f16");
                let ty = match gguf_type {
                    "q8_0" => steerkit_export::gguf::GgufType::Q8_0,
                    "mxfp4" => steerkit_export::gguf::GgufType::Mxfp4Moe,
                    _ => steerkit_export::gguf::GgufType::F16,
                };
                let opts = steerkit_export::gguf::WriteOptions {
                    map,
                    progress: Some(&progress),
                };
                steerkit_export::gguf::write_with(&model, &meta, ty, &a.out, &opts)?;
                sp.finish_and_clear();
                let source = if m.kind == steerkit_model::SourceKind::Gguf {
                    "the source's metadata"
                } else {
                    "metadata from config.json and tokenizer.json"
                };
                let matrices = match gguf_type {
                    "mxfp4" => "mxfp4 experts, q8_0 other".to_string(),
                    t => t.to_string(),
                };
                println!(
                    "wrote {} ({matrices} matrices, f32 vectors, {source})",
                    a.out.display(),
                );
                // Gemma's, gpt-oss's and OLMo 3's window is in the file; the others' is not.
                let arch = model.cfg.arch;
                let kept = arch.gemma() || arch.gpt_oss() || arch == steerkit_model::Arch::Olmo3;
                if let Some(w) = model.cfg.sliding_window.filter(|_| !kept) {
                    // llama.cpp runs these architectures without a window (phi3: it ignores the key).
                    println!(
                        "note: the model attends over a sliding window of {w} positions; the GGUF file carries none, as llama.cpp runs this architecture over the whole context, so answers to prompts of more than {w} tokens will differ"
                    );
                }
                if let Some(kind) = multimodal {
                    vision_note(&m.path, kind, "llama.cpp reads a vision tower from a separate mmproj file, which steerkit does not write");
                }
                if let Some(steerkit_model::RopeScaling::Yarn {
                    truncate: false, ..
                }) = model.cfg.rope_scaling
                {
                    println!(
                        "note: the model's YaRN does not round the ends of its ramp (truncate: false); llama.cpp rounds them, as in the gpt-oss files its own converter writes, so its logits differ slightly (see the README)"
                    );
                }
                if let Some(steerkit_model::RopeScaling::LongRope {
                    original_max_position_embeddings: ctx,
                    ..
                }) = &model.cfg.rope_scaling
                {
                    println!(
                        "note: LongRoPE: llama.cpp uses the long factors at every position when its context (-c) is over {ctx}, where transformers and steerkit use the short ones for sequences up to {ctx} tokens; run it with -c {ctx} or less to get their answers"
                    );
                }
            } else {
                let name = a.safetensors_dtype.as_deref().unwrap_or("f32");
                // A whole multimodal model's image projector writes into the residual stream too.
                let carried = match (multimodal, &against) {
                    (Some(kind), Some(dir)) if !a.text_only => Some(
                        steerkit_export::orthogonalize_carried(kind, dir, model.cfg.hidden_size)?,
                    ),
                    _ => None,
                };
                let opts = steerkit_model::hf::FolderSave {
                    dtype: steerkit_model::float_dtype(name)?,
                    tok: Some(&m.tok),
                    chat: Some(&m.chat),
                    source: source.as_ref(),
                    text_only: a.text_only,
                    carried: carried
                        .as_ref()
                        .map(|f| f as steerkit_model::weights::TensorMap),
                    map,
                    progress: Some(&progress),
                };
                steerkit_model::hf::save(&model, &a.out, &opts)?;
                sp.finish_and_clear();
                match multimodal {
                    Some(kind) if !a.text_only => println!(
                        "wrote {} ({name} safetensors; the whole {kind} model in its source's layout: the text model as patched, the vision tower and projector, the processor's and tokenizer's files as they were)",
                        a.out.display()
                    ),
                    _ => {
                        println!(
                            "wrote {} (config.json, {name} safetensors, tokenizer.json, tokenizer_config.json)",
                            a.out.display()
                        );
                        if let Some(kind) = multimodal {
                            let json = model.cfg.to_hf_json();
                            let class = json["architectures"][0].as_str().unwrap_or("a text model");
                            vision_note(&m.path, kind, &format!("--text-only: transformers and vLLM load it as {class}"));
                        }
                    }
                }
            }
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
                -a.scale.unwrap_or(1.0),
                hint,
                &a.out,
            )?;
            println!(
                "wrote {}: direction.{} = {}·r (llama.cpp --control-vector)",
                a.out.display(),
                sel.layer,
                -a.scale.unwrap_or(1.0)
            );
        }
    }
    Ok(())
}

/// Tells a user exporting a multimodal model that the output is its text model only.
fn vision_note(path: &std::path::Path, kind: &str, consequence: &str) {
    println!(
        "note: {} is a multimodal model ({kind}); the export holds its text model only, without the vision tower and projector ({consequence})",
        path.display()
    );
}
