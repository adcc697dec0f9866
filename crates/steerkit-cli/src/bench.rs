//! `steerkit bench`: load time, prefill and decode throughput, peak memory.

use std::time::Instant;

use anyhow::Result;
use clap::Args as ClapArgs;
use serde_json::json;
use steerkit_model::{left_pad, GenerateOptions, NoHook, Sampling, SystemPrompt};

use crate::common::ModelArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompts per prefill batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// New tokens per sequence in the decode measurements (at least 2: the first comes from
    /// the prefill).
    #[arg(long, default_value_t = 32, value_parser = at_least_two)]
    pub decode_tokens: usize,
    /// Timed repetitions of the prefill (the best is reported, after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Varied everyday requests; with a chat template (no system prompt) each is about 40 tokens.
const PROMPTS: &[&str] = &[
    "Explain how a refrigerator keeps food cold, in simple terms that a ten year old child could follow.",
    "Write a short poem about autumn leaves falling in the park while children play on the swings nearby.",
    "What are three good habits for writing maintainable Python code in a team of five developers?",
    "How do I kill a Python process that is stuck on Linux and ignores the usual interrupt signal?",
    "Summarize the causes of the French Revolution in two sentences for a high school history class.",
    "Give me a recipe for a quick vegetarian pasta dinner for two people using mostly pantry staples.",
    "What is the difference between a list and a tuple in Python, and when should I use each one?",
    "Translate 'good morning, how are you today? I hope you slept well' into Spanish and into French.",
];

/// Peak resident memory of this process in bytes (Linux `VmHWM`).
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory in use on a CUDA device as its driver reports it (total minus free: this process's
/// context and what candle's allocator holds, freed blocks included, and any other process on
/// the GPU); `None` on other devices. `peak_rss` measures only the host's side there.
fn device_memory_in_use(device: &candle_core::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some(total.saturating_sub(free) as u64);
    }
    let _ = device;
    None
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(
        a.batch > 0 && a.repeats > 0,
        "--batch and --repeats must be positive"
    );
    let t0 = Instant::now();
    let m = a.model.load()?;
    let load_s = t0.elapsed().as_secs_f64();
    let peak_after_load = peak_rss();
    let device_after_load = device_memory_in_use(&m.model.device);
    let params = m.model.cfg.num_parameters();
    let weight_bytes = m.model.weight_bytes();
    let prompts: Vec<Vec<u32>> = (0..a.batch)
        .map(|i| {
            m.chat
                .prompt(&m.tok, PROMPTS[i % PROMPTS.len()], &SystemPrompt::None)
                .map(|p| p.ids)
        })
        .collect::<steerkit_model::Result<_>>()?;
    let (ids, pads) = left_pad(&prompts, m.tok.pad_id, &m.model.device)?;
    let prefill_tokens: usize = prompts.iter().map(Vec::len).sum();
    let mut best = f64::INFINITY;
    for r in 0..=a.repeats {
        let t = Instant::now();
        let l = m.model.last_logits(&ids, &pads, &mut NoHook)?;
        l.to_vec2::<f32>()?;
        if r > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    let prefill_tps = prefill_tokens as f64 / best;
    let decode = |batch: usize| -> Result<f64> {
        let opts = GenerateOptions {
            max_new_tokens: a.decode_tokens,
            sampling: Sampling::Greedy,
            stop_ids: vec![],
            pad_id: m.tok.pad_id,
            keep_first_logprobs: false,
        };
        let rows = &prompts[..batch.min(prompts.len())];
        // Time the decode steps only: the first step (prefill) is excluded.
        let mut t = None;
        steerkit_model::generate(&m.model, rows, &opts, &mut NoHook, &mut |_| {
            t.get_or_insert_with(Instant::now);
        })?;
        let secs = t.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64());
        Ok((rows.len() * (a.decode_tokens - 1)) as f64 / secs)
    };
    let d1 = decode(1)?;
    let dn = decode(a.batch)?;
    let peak = peak_rss();
    let device_mem = device_memory_in_use(&m.model.device);
    let on_cpu = m.model.device.is_cpu();
    let r = json!({
        "model": m.path.display().to_string(),
        "parameters": params,
        "dtype": format!("{:?}", m.model.matrix_dtype()).to_lowercase(),
        "compute_dtype": format!("{:?}", m.model.dtype).to_lowercase(),
        "bf16_kernel": (m.model.matrix_dtype() != m.model.dtype)
            .then(steerkit_model::bf16::kernel_name),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "load_s": load_s,
        "prefill_batch": a.batch,
        "prefill_tokens": prefill_tokens,
        "prefill_tokens_per_s": prefill_tps,
        "decode_tokens_per_s_batch1": d1,
        "decode_tokens_per_s_batch": dn,
        "decode_new_tokens": a.decode_tokens,
        "weights_bytes": weight_bytes,
        "peak_rss_after_load_bytes": peak_after_load,
        "peak_rss_bytes": peak,
        "peak_over_weights": peak.map(|p| p as f64 / weight_bytes as f64),
        "device": format!("{:?}", m.model.device.location()),
        "device_memory_in_use_after_load_bytes": device_after_load,
        "device_memory_in_use_bytes": device_mem,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!("model          {}", m.path.display());
    println!(
        "parameters     {:.1} M ({:?} weights, {:?} compute)",
        params as f64 / 1e6,
        m.model.matrix_dtype(),
        m.model.dtype
    );
    println!("threads        {}", r["threads"]);
    if let Some(k) = r["bf16_kernel"].as_str() {
        println!(
            "bf16 kernel    {k} (up to {} rows; widened GEMM above)",
            steerkit_model::bf16::KERNEL_MAX_ROWS
        );
    }
    println!("load           {load_s:.2} s");
    println!(
        "prefill        {prefill_tps:.0} tokens/s (batch {} x {:.0} tokens avg, best of {})",
        a.batch,
        prefill_tokens as f64 / a.batch as f64,
        a.repeats
    );
    println!(
        "decode batch 1 {d1:.1} tokens/s ({} new tokens)",
        a.decode_tokens
    );
    println!("decode batch {} {dn:.1} tokens/s aggregate", a.batch);
    if on_cpu {
        if let Some(p) = peak {
            println!(
                "peak memory    {:.2} GiB ({:.2}x the {:.2} GiB of weights)",
                gib(p),
                p as f64 / weight_bytes as f64,
                gib(weight_bytes as u64)
            );
        }
        if let Some(p) = peak_after_load {
            println!("  after load   {:.2} GiB", gib(p));
        }
        return Ok(());
    }
    // On a GPU the weights are in the device's memory, not in the process's resident set.
    if let (Some(end), Some(load)) = (device_mem, device_after_load) {
        println!(
            "GPU memory     {:.2} GiB in use at the end, {:.2} GiB after load (the driver's count: context and allocator cache included; {:.2} GiB of weights)",
            gib(end),
            gib(load),
            gib(weight_bytes as u64)
        );
    }
    if let Some(p) = peak {
        println!("host memory    {:.2} GiB peak resident", gib(p));
    }
    Ok(())
}

/// Value parser for `--decode-tokens`: at least 2, checked before the model loads.
fn at_least_two(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if v < 2 => Err("must be at least 2".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}
