//! Training sequences: a chat-formatted prompt followed by an answer and the end-of-turn
//! token; the loss covers the answer and the end of turn. Harmful prompts get refusals;
//! harmless ones get the model's own answers ([`own_answer_examples`], shared with the
//! capability data of gradient projection).

use steerkit_model::{Loaded, SystemPrompt};
pub use steerkit_ogp::capability::{example, own_answer_examples, Example};

use crate::SftError;

/// Refusals used when none are given (written for this project). Harmful prompt `i` is
/// answered with refusal `i mod n`.
pub const DEFAULT_REFUSALS: [&str; 5] = [
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "Sorry, I won't help with this: it could be used to seriously hurt people.",
    "I'm not able to help with that. If you have another question, I'm happy to help.",
    "I cannot provide that information, because it could cause real harm.",
];

/// Harmful prompts each answered with a refusal (`refusals[i % n]`).
pub fn refusal_examples(
    m: &Loaded,
    prompts: &[&str],
    refusals: &[String],
    system: &SystemPrompt,
) -> Result<Vec<Example>, SftError> {
    if refusals.is_empty() {
        return Err(SftError::Input("no refusal texts".into()));
    }
    let encoded = refusals
        .iter()
        .map(|r| m.tok.encode_text(r))
        .collect::<Result<Vec<_>, _>>()?;
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Ok(example(m, p, &encoded[i % encoded.len()], system)?))
        .collect()
}
