//! Capability data and its loss: chat-formatted prompts followed by answers (the model's own,
//! generated once and cached), the next-token cross-entropy over the answer tokens from a
//! block's cached inputs, and the gradient-based (OGPSA) bases built from that loss.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use steerkit_eval::run::write_atomic;
use steerkit_eval::utility::log_softmax;
use steerkit_model::{
    generate, left_pad, pad_rows, unpad_rows, GenerateOptions, Loaded, Mode, Model, NoHook,
    Sampling, SystemPrompt,
};

use crate::{sum_squares, GradBasis, GradProjector, OgpError};

/// One sequence (prompt then answer); the loss covers `ids[start..]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub ids: Vec<u32>,
    pub start: usize,
}

impl Example {
    /// Number of tokens with a loss.
    pub fn answer_len(&self) -> usize {
        self.ids.len() - self.start
    }
}

/// The token that ends an assistant turn (the tokenizer's EOS, else its first stop token).
pub fn end_of_turn(m: &Loaded) -> Result<u32, OgpError> {
    m.tok
        .eos_id
        .or_else(|| m.tok.stop_ids.first().copied())
        .ok_or_else(|| OgpError::Input("the tokenizer has no end-of-turn token".into()))
}

/// `prompt` formatted with the chat template, then `answer` (token ids, without the end of
/// turn) and the end of turn.
pub fn example(
    m: &Loaded,
    prompt: &str,
    answer: &[u32],
    system: &SystemPrompt,
) -> Result<Example, OgpError> {
    let mut ids = m.chat.prompt(&m.tok, prompt, system)?.ids;
    let start = ids.len();
    ids.extend_from_slice(answer);
    ids.push(end_of_turn(m)?);
    Ok(Example { ids, start })
}

#[derive(Serialize, Deserialize, Default)]
struct AnswerCache {
    key: String,
    answers: HashMap<String, Vec<u32>>,
}

/// The model's own greedy answers (at most `max_new` tokens, without the end of turn) to
/// `prompts`, cached in the JSON file `cache` after every batch: a rerun, or a run stopped
/// half-way, generates only what is missing. The cache is keyed by the model, the system
/// prompt and `max_new`; another key starts it afresh.
pub fn own_answers(
    m: &Loaded,
    prompts: &[&str],
    system: &SystemPrompt,
    max_new: usize,
    cache: &Path,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<u32>>, OgpError> {
    let key = format!("{}|{system:?}|{max_new}", m.fingerprint()?);
    let mut c: AnswerCache = std::fs::read(cache)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|c: &AnswerCache| c.key == key)
        .unwrap_or_else(|| AnswerCache {
            key: key.clone(),
            answers: HashMap::new(),
        });
    let mut missing: Vec<&str> = prompts
        .iter()
        .copied()
        .filter(|p| !c.answers.contains_key(*p))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    progress(prompts.len() - missing.len());
    let opts = GenerateOptions {
        max_new_tokens: max_new,
        sampling: Sampling::Greedy,
        stop_ids: m.tok.stop_ids.clone(),
        pad_id: m.tok.pad_id,
        keep_first_logprobs: false,
    };
    for chunk in missing.chunks(16) {
        let ids = m.prompt_ids(chunk, system)?;
        let out = generate(&m.model, &ids, &opts, &mut NoHook, &mut |_| {})?;
        for (p, g) in chunk.iter().zip(out) {
            c.answers.insert(p.to_string(), g.ids);
        }
        write_atomic(cache, &serde_json::to_vec(&c).expect("serializes"))?;
        progress(chunk.len());
    }
    Ok(prompts.iter().map(|p| c.answers[*p].clone()).collect())
}

/// Prompts each followed by the model's own answer ([`own_answers`]).
pub fn own_answer_examples(
    m: &Loaded,
    prompts: &[&str],
    system: &SystemPrompt,
    max_new: usize,
    cache: &Path,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Example>, OgpError> {
    let answers = own_answers(m, prompts, system, max_new, cache, progress)?;
    prompts
        .iter()
        .zip(&answers)
        .map(|(p, a)| example(m, p, a, system))
        .collect()
}

/// Block inputs at `layer` of every example, `[tokens, hidden]` each (f32, CPU): the blocks
/// below it run once.
pub fn block_inputs(
    model: &Model,
    examples: &[Example],
    layer: usize,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Tensor>, OgpError> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch.max(1)) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|e| e.ids.clone()).collect();
        let (ids, pads) = left_pad(&rows, 0, &model.device)?;
        let x = model.embed(&ids)?;
        let x = model.forward_layers(x, &pads, 0..layer, None, &mut NoHook, Mode::Inference)?;
        out.extend(unpad_rows(&x, &pads)?);
        progress(chunk.len());
    }
    Ok(out)
}

/// Mean next-token cross-entropy over the answer tokens of `examples`, whose block inputs at
/// `layer` are `inputs`, running blocks `layer..` and the head (differentiable).
pub fn answer_loss(
    model: &Model,
    layer: usize,
    inputs: &[&Tensor],
    examples: &[&Example],
) -> Result<Tensor, OgpError> {
    let (x, pads) = pad_rows(inputs)?;
    let x = x.to_device(&model.device)?.to_dtype(model.dtype)?;
    let n = model.layers.len();
    let y = model.forward_layers(x, &pads, layer..n, None, &mut NoHook, Mode::Differentiable)?;
    let h = model.final_norm(&y, Mode::Differentiable)?;
    let (b, t, d) = h.dims3()?;
    let mut pos = Vec::new();
    let mut tgt = Vec::new();
    for (r, e) in examples.iter().enumerate() {
        if e.ids.len() + pads[r] != t || e.start == 0 || e.start >= e.ids.len() {
            return Err(OgpError::Input(
                "an example does not match its cached inputs, or has no prompt or answer".into(),
            ));
        }
        for k in e.start..e.ids.len() {
            pos.push((r * t + pads[r] + k - 1) as u32);
            tgt.push(e.ids[k]);
        }
    }
    let pos = Tensor::new(pos, &model.device)?;
    let tgt = Tensor::new(tgt, &model.device)?.unsqueeze(1)?;
    let hs = h.reshape((b * t, d))?.index_select(&pos, 0)?;
    // Half-precision logits are lifted to f32 for the softmax; f64 (gradient checks) stays.
    let lp = log_softmax(&steerkit_model::widened(&model.logits(&hs)?)?)?;
    Ok(lp.gather(&tgt, 1)?.neg()?.mean_all()?)
}

/// The gradients of `loss` for `vars` (zeros where a variable is not on its path) and their
/// global norm.
pub fn gradients(loss: &Tensor, vars: &[(String, Var)]) -> Result<(Vec<Tensor>, f64), OgpError> {
    let grads = loss.backward()?;
    let mut gs = Vec::with_capacity(vars.len());
    let mut sq = 0.0;
    for (_, v) in vars {
        let g = match grads.get(v.as_tensor()) {
            Some(g) => g.clone(),
            None => v.as_tensor().zeros_like()?,
        };
        sq += sum_squares(&g)?;
        gs.push(g);
    }
    Ok((gs, sq.sqrt()))
}

/// Gradients scaled so that their global norm `norm` (from [`gradients`]) is at most `max`
/// (`max <= 0`: unchanged).
pub fn clip_to_norm(grads: Vec<Tensor>, norm: f64, max: f64) -> Result<Vec<Tensor>, OgpError> {
    if max <= 0.0 || norm <= max {
        return Ok(grads);
    }
    let s = max / norm;
    Ok(grads
        .iter()
        .map(|g| g * s)
        .collect::<candle_core::Result<_>>()?)
}

/// Example indices of batch number `k` when `n` examples are drawn in reshuffled epochs
/// (deterministic in `seed`, so that a resumed run draws the same batches).
pub fn batch_indices(n: usize, batch: usize, k: usize, seed: u64) -> Vec<usize> {
    let b = batch.min(n);
    let mut cached: Option<(usize, Vec<usize>)> = None;
    (0..b)
        .map(|j| {
            let i = k * b + j;
            let (epoch, at) = (i / n, i % n);
            if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let mut perm: Vec<usize> = (0..n).collect();
                perm.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
                    seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64),
                ));
                cached = Some((epoch, perm));
            }
            cached.as_ref().expect("set above").1[at]
        })
        .collect()
}

/// The gradient-based subspaces of `vars` (trained tensors of blocks `layer..`): the span of
/// their cross-entropy gradients on `k` capability batches of `batch` sequences (batches
/// `round * k ..`, so each refresh sees new ones), one basis per variable.
#[allow(clippy::too_many_arguments)]
pub fn grad_projector(
    model: &Model,
    layer: usize,
    vars: &[(String, Var)],
    inputs: &[Tensor],
    examples: &[Example],
    k: usize,
    batch: usize,
    round: usize,
) -> Result<GradProjector, OgpError> {
    if examples.is_empty() || inputs.len() != examples.len() {
        return Err(OgpError::Input(
            "no capability sequences for the gradient basis".into(),
        ));
    }
    let mut per_var: Vec<Vec<Tensor>> = vec![Vec::new(); vars.len()];
    for j in 0..k {
        let idx = batch_indices(examples.len(), batch, round * k + j, 0x9e37_79b9);
        let rows: Vec<&Tensor> = idx.iter().map(|&i| &inputs[i]).collect();
        let ex: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let (gs, _) = gradients(&answer_loss(model, layer, &rows, &ex)?, vars)?;
        for (slot, g) in per_var.iter_mut().zip(gs) {
            slot.push(g);
        }
    }
    let mut p = GradProjector::default();
    for ((name, _), gs) in vars.iter().zip(&per_var) {
        p.bases.insert(name.clone(), GradBasis::new(gs)?);
    }
    Ok(p)
}
