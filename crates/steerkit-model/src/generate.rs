//! Batched generation with a KV cache: greedy or sampled, stopping at end-of-turn tokens.
//!
//! Finished rows leave the batch (their cache rows are dropped), so a batch costs what its
//! longest answer costs. Sampling draws from a per-prompt generator seeded by `seed`, so a
//! prompt gets the same text whatever batch it is in.

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};
use crate::hooks::Hook;
use crate::model::{KvCache, Mode, Model};
use crate::prefix::SharedPrefix;
use crate::source::left_pad;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Temperature and nucleus (top-p) sampling with a seed.
    Sample {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Token ids that end a sequence (not included in the output).
    pub stop_ids: Vec<u32>,
    /// Id fed for padding.
    pub pad_id: u32,
    /// Keep each prompt's first-token log-probabilities (what one forward pass without
    /// generation would give), for refusal scores and KL without a second pass.
    pub keep_first_logprobs: bool,
}

/// A token produced in a step: `(prompt index, token id)`.
pub type Produced = (usize, u32);

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub ids: Vec<u32>,
    /// True when a stop token ended it (false: it hit `max_new_tokens`).
    pub stopped: bool,
    /// Log-probabilities of the first generated token over the vocabulary, when asked for.
    pub first_logprobs: Option<Vec<f32>>,
}

/// Generates continuations of `prompts` (token ids) in one batch.
/// `on_step(new)` is called after every decoding step with the `(prompt index, token)` pairs
/// it produced (stop tokens excluded), so callers can stream text.
pub fn generate(
    model: &Model,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    hook: &mut dyn Hook,
    on_step: &mut dyn FnMut(&[Produced]),
) -> Result<Vec<Generated>> {
    if let Sampling::Sample {
        temperature, top_p, ..
    } = opts.sampling
    {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(ModelError::Input(format!(
                "temperature must be > 0, got {temperature}"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ModelError::Input(format!(
                "top-p must be in (0, 1], got {top_p}"
            )));
        }
    }
    let n = prompts.len();
    let mut out: Vec<Generated> = vec![
        Generated {
            ids: vec![],
            stopped: false,
            first_logprobs: None,
        };
        n
    ];
    if n == 0 || opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut rngs: Vec<StdRng> = (0..n)
        .map(|_| match opts.sampling {
            Sampling::Sample { seed, .. } => StdRng::seed_from_u64(seed),
            Sampling::Greedy => StdRng::seed_from_u64(0),
        })
        .collect();
    // The prompts' shared first tokens (the template's header) run once, then every row's own.
    let shared = SharedPrefix::new(model, prompts.to_vec(), 1, model.cfg.num_layers, hook)?;
    let (ids, mut pads, mut cache) = shared
        .batches(model, opts.pad_id, n)
        .next()
        .expect("one batch of n > 0 rows")?;
    // `active[i]` is the prompt index of batch row i.
    let mut active: Vec<usize> = (0..n).collect();
    let mut input = ids;
    for step in 0..opts.max_new_tokens {
        let h = model.forward(&input, &pads, Some(&mut cache), hook, Mode::Inference)?;
        let t = h.dim(1)?;
        let logits = model
            .logits(&h.narrow(1, t - 1, 1)?.squeeze(1)?)?
            .to_dtype(DType::F32)?;
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        if step == 0 && opts.keep_first_logprobs {
            for (row, l) in rows.iter().enumerate() {
                out[active[row]].first_logprobs = Some(log_softmax(l));
            }
        }
        let mut next = Vec::with_capacity(active.len());
        let mut produced = Vec::with_capacity(active.len());
        let mut keep = Vec::with_capacity(active.len());
        for (row, logits) in rows.iter().enumerate() {
            let p = active[row];
            let tok = pick(logits, opts.sampling, &mut rngs[p]);
            if opts.stop_ids.contains(&tok) {
                out[p].stopped = true;
                continue;
            }
            out[p].ids.push(tok);
            produced.push((p, tok));
            keep.push(row);
            next.push(tok);
        }
        on_step(&produced);
        if keep.is_empty() || step + 1 == opts.max_new_tokens {
            break;
        }
        if keep.len() < active.len() {
            let idx = Tensor::new(
                keep.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                &model.device,
            )?;
            cache.select_rows(&idx)?;
            active = keep.iter().map(|&r| active[r]).collect();
            pads = keep.iter().map(|&r| pads[r]).collect();
        }
        input = Tensor::from_vec(next, (active.len(), 1), &model.device)?;
        // LongRoPE: a row about to go past the original context turns every position with the
        // long factors, its earlier ones too (transformers' Phi-3 drops its cache there): run
        // the rows whole again, into a new cache.
        if let Some(ctx) = model.cfg.longrope_context() {
            let len = |p: usize| prompts[p].len() + out[p].ids.len();
            if active.iter().any(|&p| len(p) == ctx.saturating_add(1)) {
                let rows: Vec<Vec<u32>> = active
                    .iter()
                    .map(|&p| [prompts[p].as_slice(), out[p].ids.as_slice()].concat())
                    .collect();
                (input, pads) = left_pad(&rows, opts.pad_id, &model.device)?;
                cache = KvCache::new();
            }
        }
    }
    Ok(out)
}

/// Chooses a token from one row of logits.
fn pick(logits: &[f32], sampling: Sampling, rng: &mut StdRng) -> u32 {
    match sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Sample {
            temperature, top_p, ..
        } => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut probs: Vec<(u32, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, (((l - max) as f64) / temperature).exp()))
                .collect();
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut kept = 0.0;
            let mut cut = probs.len();
            for (i, p) in probs.iter().enumerate() {
                kept += p.1 / total;
                if kept >= top_p {
                    cut = i + 1;
                    break;
                }
            }
            let probs = &probs[..cut];
            let mass: f64 = probs.iter().map(|p| p.1).sum();
            let mut u = rng.random::<f64>() * mass;
            for p in probs {
                u -= p.1;
                if u <= 0.0 {
                    return p.0;
                }
            }
            probs[probs.len() - 1].0
        }
    }
}

/// Log-softmax of one row of logits (computed in f64).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
