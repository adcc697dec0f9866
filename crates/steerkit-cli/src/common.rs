//! Options shared by the commands that load a model.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use steerkit_model::{load, LoadOptions, Loaded, SystemPrompt};

/// Where the model comes from and what it runs on.
#[derive(ClapArgs, Debug, Clone)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face model folder, or a repo id (owner/name) in the local HF cache.
    #[arg(long, short = 'm')]
    pub model: String,
    #[command(flatten)]
    pub on: DeviceArgs,
}

impl ModelArgs {
    /// Loads the model with a spinner on stderr.
    pub fn load(&self) -> Result<Loaded> {
        self.on.load(&self.model)
    }
}

/// What a model runs on: device and dtype.
#[derive(ClapArgs, Debug, Clone)]
pub struct DeviceArgs {
    /// Device to run on.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda", "metal"])]
    pub device: String,
    /// Weight and activation dtype. On the CPU: f32, or bf16 (weight matrices kept in bf16,
    /// computed in f32: half the memory, faster decoding, answers within bf16 rounding of
    /// f32's). On GPUs: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
    pub dtype: String,
}

impl DeviceArgs {
    /// Loads the model `spec` (a .gguf file, a folder or a cached repo id) on this device,
    /// with a spinner on stderr.
    pub fn load(&self, spec: &str) -> Result<Loaded> {
        let device = steerkit_model::device_named(&self.device)?;
        let dtype = steerkit_model::float_dtype(&self.dtype)?;
        if device.is_cpu() && dtype == DType::F16 {
            bail!("--dtype f16 is for GPUs; use f32 or bf16 on the CPU");
        }
        // A spinner while the files are opened and checked, then a bar over the weights' bytes.
        // The file or folder name alone: a long path wrapped the bar's line.
        let name = std::path::Path::new(spec)
            .file_name()
            .map_or(spec.into(), |n| n.to_string_lossy());
        let bar = spinner(&format!("loading {name}"));
        let shown = bar.clone();
        steerkit_model::weights::watch_loading(Some(std::sync::Arc::new(move |done, total| {
            if shown.length() != Some(total) {
                shown.set_length(total);
                shown.set_style(bar_style("{bytes}/{total_bytes}"));
            }
            // Threads report out of order; a step back would reset the bar's estimate.
            if done > shown.position() {
                shown.set_position(done);
            }
        })));
        let m = load(spec, &LoadOptions { device, dtype });
        steerkit_model::weights::watch_loading(None);
        bar.finish_and_clear();
        Ok(m?)
    }
}

/// System prompt choice shared by the commands that format prompts.
#[derive(ClapArgs, Debug, Clone)]
pub struct SystemArgs {
    /// Use this system prompt instead of the template's default.
    #[arg(long, conflicts_with = "no_system")]
    pub system: Option<String>,
    /// Send an empty system message (suppresses a template's built-in default prompt).
    #[arg(long)]
    pub no_system: bool,
}

impl SystemArgs {
    pub fn choice(&self) -> SystemPrompt {
        match (&self.system, self.no_system) {
            (Some(s), _) => SystemPrompt::Custom(s.clone()),
            (None, true) => SystemPrompt::None,
            (None, false) => SystemPrompt::Default,
        }
    }
}

/// Gradient projection settings shared by `actor` and `safety-tune`.
#[derive(ClapArgs, Debug, Clone)]
pub struct OgpArgs {
    /// Gradient projection of every optimizer step off a capability subspace: `act` (GPM:
    /// the span of each trained matrix's inputs on capability prompts, so its outputs there
    /// stay unchanged to first order), `grad` (OGPSA: the span of the trained matrices'
    /// cross-entropy gradients on capability prompts answered by the model itself, refreshed
    /// every --ogp-every steps, so the capability loss stays unchanged to first order), or
    /// `none`.
    #[arg(long, default_value = "none", value_parser = ["none", "act", "grad"])]
    pub ogp: String,
    /// Capability prompts: a file or a built-in set name.
    #[arg(long, default_value = "harmless")]
    pub ogp_data: String,
    /// Use the first N capability prompts.
    #[arg(long, default_value_t = 64, value_parser = crate::common::positive)]
    pub ogp_limit: usize,
    /// act: fraction of the capability inputs' energy each basis keeps.
    #[arg(long, default_value_t = 0.95, value_parser = crate::common::fraction)]
    pub ogp_energy: f64,
    /// act: largest basis size per matrix.
    #[arg(long, default_value_t = 256, value_parser = crate::common::positive)]
    pub ogp_max_k: usize,
    /// grad: gradients (capability batches) per basis.
    #[arg(long, default_value_t = 4, value_parser = crate::common::positive)]
    pub ogp_k: usize,
}

impl OgpArgs {
    /// The capability prompts (`--ogp-data`, first `--ogp-limit`), when projection is on.
    pub fn capability_set(&self) -> Result<Option<steerkit_data::PromptSet>> {
        if self.ogp == "none" {
            return Ok(None);
        }
        crate::directions::one_set(&self.ogp_data, "capability", Some(self.ogp_limit)).map(Some)
    }
}

/// Sampling settings shared by generate and chat.
#[derive(ClapArgs, Debug, Clone)]
pub struct SamplingArgs {
    /// Maximum number of new tokens per answer.
    #[arg(long, default_value_t = 128, value_parser = crate::common::positive)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0, value_parser = crate::common::non_negative)]
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability.
    #[arg(long, default_value_t = 1.0, value_parser = crate::common::fraction)]
    pub top_p: f64,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn options(&self, loaded: &Loaded) -> Result<steerkit_model::GenerateOptions> {
        let sampling = if self.temperature == 0.0 {
            steerkit_model::Sampling::Greedy
        } else {
            steerkit_model::Sampling::Sample {
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
            }
        };
        Ok(steerkit_model::GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampling,
            stop_ids: loaded.tok.stop_ids.clone(),
            pad_id: loaded.tok.pad_id,
            keep_first_logprobs: false,
        })
    }
}

/// The model a training run was made from: the `model` and `fingerprint` fields of its meta
/// file (`actor.json`, `safety.json`).
#[derive(serde::Deserialize)]
pub struct RunOrigin {
    pub model: String,
    pub fingerprint: String,
}

impl RunOrigin {
    /// Parses the meta file `path`, whose contents are `bytes`.
    pub fn parse(path: &std::path::Path, bytes: &[u8]) -> Result<RunOrigin> {
        serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("{}: unreadable: {e}", path.display()))
    }
}

/// The kinds of run folder the commands write, each known by the files it writes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Direction,
    Ablate,
    Eval,
    Actor,
    SafetyTune,
}

impl RunKind {
    const ALL: [RunKind; 5] = [
        RunKind::Direction,
        RunKind::Ablate,
        RunKind::Eval,
        RunKind::Actor,
        RunKind::SafetyTune,
    ];

    /// Files only this kind of folder holds.
    fn markers(self) -> &'static [&'static str] {
        match self {
            RunKind::Direction => &["extract.json"],
            RunKind::Ablate => &["results.csv"],
            RunKind::Eval => &["meta.json"],
            RunKind::Actor => &["actor.json", "inputs.json"],
            RunKind::SafetyTune => &["safety.json"],
        }
    }

    /// What the folder holds, and the command that writes it.
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            RunKind::Direction => ("a refusal-direction run", "extract"),
            RunKind::Ablate => ("intervention experiments", "ablate"),
            RunKind::Eval => ("an evaluation", "eval"),
            RunKind::Actor => ("an ACTOR run", "actor"),
            RunKind::SafetyTune => ("a safety-tuning run", "safety-tune"),
        }
    }
}

/// Fails when folder `out` holds a run of another kind than `own` (a command writing there
/// would mix its files with that run's, or read them as its own).
pub fn refuse_other_kind(out: &std::path::Path, own: RunKind) -> Result<()> {
    for kind in RunKind::ALL.into_iter().filter(|&k| k != own) {
        if let Some(f) = kind.markers().iter().find(|f| out.join(f).is_file()) {
            let (what, command) = kind.describe();
            bail!(
                "--out {} holds {what} (its {f} is written by `steerkit {command}`); use another --out",
                out.display()
            );
        }
    }
    Ok(())
}

/// Checks that the training run in `run` (meta file `meta`) was trained on `m`'s weights, so
/// that its checkpoint may be put into `m` (in whatever dtype either was loaded).
pub fn check_trained_on(m: &Loaded, run: &std::path::Path, meta: &str) -> Result<()> {
    let p = run.join(meta);
    let o = RunOrigin::parse(&p, &std::fs::read(&p)?)?;
    if steerkit_model::split_fingerprint(&o.fingerprint).0 != m.source_fingerprint()? {
        bail!(
            "{} was trained on {}, not on this model",
            run.display(),
            o.model
        );
    }
    Ok(())
}

/// A spinner on stderr (hidden when stderr is not a terminal).
pub fn spinner(msg: &str) -> ProgressBar {
    let sp = ProgressBar::new_spinner();
    sp.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
    );
    sp.set_message(msg.to_string());
    sp.enable_steady_tick(std::time::Duration::from_millis(120));
    sp
}

/// A progress bar on stderr.
pub fn bar(len: u64, msg: &str) -> ProgressBar {
    styled_bar(len, msg, "{pos}/{len}")
}

/// A progress bar of bytes written on stderr; its length is set by the first update.
pub fn bytes_bar(msg: &str) -> ProgressBar {
    let pb = styled_bar(0, msg, "{bytes}/{total_bytes}");
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// A bar of `len` on stderr counting with `count` (an indicatif template fragment).
fn styled_bar(len: u64, msg: &str, count: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(bar_style(count));
    pb.set_message(msg.to_string());
    pb
}

/// The style of every bar: message, bar, `count` (an indicatif template fragment), times.
fn bar_style(count: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{msg}} [{{bar:30}}] {count} ({{elapsed}}, eta {{eta}})"
    ))
    .expect("valid template")
    .progress_chars("=> ")
}

/// Value parser for a number flag: NaN and infinities are refused at the flag, before any work.
pub fn finite(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("`{s}`: {e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("`{s}` is not a finite number"))
    }
}

/// Value parser for a weight that must be a finite number >= 0.
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    let v = finite(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("`{s}` must be >= 0"))
    }
}

/// Value parser for a share in (0, 1].
pub fn fraction(s: &str) -> std::result::Result<f64, String> {
    let v = finite(s)?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("`{s}` must be in (0, 1]"))
    }
}

/// Value parser for a count that must be at least 1 (prompts, tokens, batch sizes, steps).
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}

/// Makes the folder that will hold the output file `path`, before the work that writes it.
pub fn create_parent(path: &std::path::Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    Ok(())
}

/// A note for stderr when generating from a prompt of `prompt_tokens` with `new_tokens` new
/// ones reaches past the model's declared context (`max_position_embeddings`; the last new
/// token is not fed back, so `prompt + new - 1` positions are used). Not an error: RoPE
/// scaling (YaRN, say) can make a model usable past what its config declares, but answers
/// from positions it was never trained on are unreliable, and a long prompt costs time.
pub fn context_note(
    cfg: &steerkit_model::Config,
    prompt_tokens: usize,
    new_tokens: usize,
) -> Option<String> {
    let ctx = cfg.max_position_embeddings;
    let used = (prompt_tokens + new_tokens).saturating_sub(1);
    (ctx > 0 && used > ctx).then(|| {
        format!(
            "note: a prompt of {prompt_tokens} tokens and {new_tokens} new tokens reach past the model's context of {ctx} tokens{}; answers from there are unreliable",
            match cfg.rope_scaling.is_some() {
                true => " (before its RoPE scaling)",
                false => "",
            }
        )
    })
}
