//! Utility measures: mean cross-entropy on plain text, and first-token KL divergence from a
//! reference model on harmless prompts.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use steerkit_model::{left_pad, Hook, Loaded, Mode, ModelError, SystemPrompt};

use crate::score::kl;

/// The built-in plain-text sample (written for this project, 341 words).
pub const PLAIN_TEXT: &str = include_str!("../../steerkit-data/sets/plain_text.txt");

/// Mean next-token cross-entropy (nats) of a text, and the number of predicted tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CrossEntropy {
    pub mean_nats: f64,
    pub tokens: usize,
    /// Each predicted token's cross-entropy, for paired comparisons (empty in old reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_token: Vec<f32>,
}

/// Mean cross-entropy of `text` (tokenized as plain text, BOS first when the model uses one).
pub fn cross_entropy(
    m: &Loaded,
    text: &str,
    hook: &mut dyn Hook,
) -> Result<CrossEntropy, ModelError> {
    let mut ids = m.tok.encode_text(text)?;
    if let Some(bos) = m.tok.bos_id.filter(|_| m.tok.add_bos) {
        ids.insert(0, bos);
    }
    if ids.len() < 2 {
        return Err(ModelError::Input(
            "the text has fewer than two tokens".into(),
        ));
    }
    let (x, pads) = left_pad(std::slice::from_ref(&ids), m.tok.pad_id, &m.model.device)?;
    let h = m
        .model
        .forward(&x, &pads, None, hook, Mode::Inference)?
        .squeeze(0)?; // [t, d]
    let t = ids.len() - 1;
    let mut per_token = Vec::with_capacity(t);
    // Logits a slice of positions at a time: a full [t, vocab] matrix can be hundreds of MB.
    for start in (0..t).step_by(64) {
        let len = 64.min(t - start);
        let lp = log_softmax(
            &m.model
                .logits(&h.narrow(0, start, len)?)?
                .to_dtype(DType::F32)?,
        )?;
        let next = Tensor::new(&ids[start + 1..start + 1 + len], &m.model.device)?.unsqueeze(1)?;
        per_token.extend(
            lp.gather(&next, 1)?
                .squeeze(1)?
                .to_vec1::<f32>()?
                .into_iter()
                .map(|x| -x),
        );
    }
    Ok(CrossEntropy {
        mean_nats: per_token.iter().map(|&x| x as f64).sum::<f64>() / t as f64,
        tokens: t,
        per_token,
    })
}

/// Log-softmax over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor, ModelError> {
    // The shift cancels out of the result: no gradient through it.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Mean first-token KL(reference ‖ model) over prompts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FirstTokenKl {
    pub mean: f64,
    pub n: usize,
    pub set: String,
    pub reference: String,
    /// Each prompt's KL, in the set's order, for paired comparisons (empty in old reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_prompt: Vec<f64>,
}

/// First-token log-probabilities `[n][vocab]` of formatted prompts, in batches (the template's
/// shared first tokens run once, with `hook` too).
pub fn first_token_logprobs(
    m: &Loaded,
    prompts: &[&str],
    system: &SystemPrompt,
    batch: usize,
    hook: &mut dyn Hook,
) -> Result<Vec<Vec<f32>>, ModelError> {
    let rows = m.prompt_ids(prompts, system)?;
    let logits = m.model.last_logits_of(rows, m.tok.pad_id, batch, hook)?;
    Ok(log_softmax(&logits)?.to_vec2()?)
}

/// The KL compares distributions over one vocabulary: an error when the two models differ.
pub fn same_vocabulary(reference: &Loaded, m: &Loaded) -> Result<(), ModelError> {
    if reference.model.cfg.vocab_size != m.model.cfg.vocab_size {
        return Err(ModelError::Input(format!(
            "the reference model has a vocabulary of {}, the model {}: the KL needs the same tokenizer",
            reference.model.cfg.vocab_size, m.model.cfg.vocab_size
        )));
    }
    Ok(())
}

/// KL of the model's first-token distribution from a reference model's, on the same prompts.
pub fn first_token_kl(
    reference: &Loaded,
    m: &Loaded,
    set_name: &str,
    prompts: &[&str],
    system: &SystemPrompt,
    batch: usize,
    hook: &mut dyn Hook,
) -> Result<FirstTokenKl, ModelError> {
    same_vocabulary(reference, m)?;
    let p = first_token_logprobs(
        reference,
        prompts,
        system,
        batch,
        &mut steerkit_model::NoHook,
    )?;
    let q = first_token_logprobs(m, prompts, system, batch, hook)?;
    let per_prompt: Vec<f64> = p.iter().zip(&q).map(|(a, b)| kl(a, b)).collect();
    Ok(FirstTokenKl {
        mean: per_prompt.iter().sum::<f64>() / p.len().max(1) as f64,
        n: p.len(),
        set: set_name.into(),
        reference: reference.path.display().to_string(),
        per_prompt,
    })
}
