//! Utility measures on a real model.

use steerkit_eval::utility::{cross_entropy, first_token_kl, PLAIN_TEXT};
use steerkit_model::{load, Ablate, HookPoint, LoadOptions, NoHook, SystemPrompt};

fn smol() -> steerkit_model::Loaded {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../checkpoints/models/smollm2-135m-instruct.gguf");
    assert!(p.is_file(), "run scripts/fetch-models.sh");
    load(p.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

#[test]
fn cross_entropy_is_plausible_and_rises_under_damage() {
    let m = smol();
    let ce = cross_entropy(&m, PLAIN_TEXT, &mut NoHook).unwrap();
    // A 135M model on ordinary English prose: well below uniform (ln 49152 = 10.8 nats).
    assert!(
        ce.tokens > 300 && ce.mean_nats > 1.0 && ce.mean_nats < 4.5,
        "{ce:?}"
    );
    // Ablating a random direction everywhere hurts a little; the measure must see it.
    let dir = steerkit_model::random::seeded_normal(576, 1).unwrap();
    let mut ablate = Ablate::new(&dir, &HookPoint::ALL).unwrap();
    let worse = cross_entropy(&m, PLAIN_TEXT, &mut ablate).unwrap();
    assert!(worse.mean_nats > ce.mean_nats, "{worse:?} vs {ce:?}");
}

#[test]
fn first_token_kl_is_zero_against_itself() {
    let m = smol();
    let prompts = ["Name a fruit.", "What is two plus two?"];
    let k = first_token_kl(
        &m,
        &m,
        "t",
        &prompts,
        &SystemPrompt::Default,
        2,
        &mut NoHook,
    )
    .unwrap();
    assert!(k.mean.abs() < 1e-6, "{k:?}");
    let dir = steerkit_model::random::seeded_normal(576, 1).unwrap();
    let mut ablate = Ablate::new(&dir, &HookPoint::ALL).unwrap();
    let k = first_token_kl(
        &m,
        &m,
        "t",
        &prompts,
        &SystemPrompt::Default,
        2,
        &mut ablate,
    )
    .unwrap();
    assert!(k.mean > 1e-4, "{k:?}");
}
