//! The safety-tuning trainer on tiny random models: exact gradients of the answer loss, a
//! falling loss, exact resume (with gradient bases), and both projections doing what they
//! promise to first order: `act` keeps the trained block's outputs on capability sequences,
//! `grad` keeps the capability loss.

use candle_core::{DType, Tensor};
use steerkit_actor::adamw::AdamWConfig;
use steerkit_model::random::{gradient_mismatches, random_model, tiny_config};
use steerkit_model::{Arch, Mode, Model, NoHook};
use steerkit_sft::train::{answer_loss, block_inputs, last_checkpoint};
use steerkit_sft::{train, Example, Ogp, SftConfig};

fn model(dtype: DType, seed: u64) -> Model {
    let mut cfg = tiny_config(Arch::Llama, 64);
    cfg.num_layers = 3;
    random_model(cfg, dtype, seed).unwrap()
}

/// Deterministic pseudo-random sequences of 6-10 tokens, the answer from token 3 or 4.
fn examples(n: usize, seed: u64) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let len = 6 + (i + seed as usize) % 5;
            let ids = (0..len)
                .map(|k| {
                    let h = ((k + 100 * i + 10_000 * seed as usize) as u64)
                        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        >> 40;
                    (h % 64) as u32
                })
                .collect();
            Example {
                ids,
                start: 3 + i % 2,
            }
        })
        .collect()
}

fn config(steps: usize, ogp: Ogp) -> SftConfig {
    SftConfig {
        layers: (1, 3),
        adamw: AdamWConfig {
            lr: 3e-3,
            ..Default::default()
        },
        steps,
        batch: 4,
        clip: 1.0,
        seed: 11,
        parts: "attn,mlp".parse().unwrap(),
        ogp,
        save_every: 2,
    }
}

fn weights(m: &Model) -> Vec<f32> {
    m.named_tensors()
        .into_iter()
        .flat_map(|(_, t)| {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn loss_on(m: &Model, ex: &[Example]) -> f64 {
    let x = block_inputs(m, ex, 1, 16, &mut |_| {}).unwrap();
    let rows: Vec<&Tensor> = x.iter().collect();
    let refs: Vec<&Example> = ex.iter().collect();
    answer_loss(m, 1, &rows, &refs)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn answer_loss_gradients_match_finite_differences() {
    let mut m = model(DType::F64, 3);
    let ex = examples(4, 1);
    let x = block_inputs(&m, &ex, 1, 16, &mut |_| {}).unwrap();
    let rows: Vec<&Tensor> = x.iter().collect();
    let refs: Vec<&Example> = ex.iter().collect();
    let mut vars = m.trainable_block(1).unwrap();
    vars.extend(m.trainable_block(2).unwrap());
    let (checked, bad) =
        gradient_mismatches(&vars, &mut || Ok(answer_loss(&m, 1, &rows, &refs).unwrap())).unwrap();
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(checked >= 2 * 9 * 3, "{checked}");
}

#[test]
fn training_lowers_the_loss_and_resumes_exactly() {
    let data = examples(12, 2);
    let cap = examples(8, 3);
    for ogp in [
        Ogp::None,
        Ogp::Grad { k: 2, every: 3 },
        Ogp::Act {
            energy: 0.9,
            max_k: 16,
        },
    ] {
        let before = loss_on(&model(DType::F32, 5), &data);
        // Uninterrupted: 6 steps.
        let full = tempfile::tempdir().unwrap();
        let mut a = model(DType::F32, 5);
        let s = train(
            &mut a,
            &data,
            &cap,
            &config(6, ogp.clone()),
            full.path(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(s.steps_run, 6);
        let after = loss_on(&a, &data);
        assert!(after < before - 0.05, "{ogp:?}: loss {before} -> {after}");
        // Interrupted after 3 or 4 steps (a checkpoint; 3 is where `grad` refreshes its bases),
        // then resumed to 6 in a fresh process.
        for stop in [3, 4] {
            let part = tempfile::tempdir().unwrap();
            let mut b = model(DType::F32, 5);
            train(
                &mut b,
                &data,
                &cap,
                &config(stop, ogp.clone()),
                part.path(),
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(last_checkpoint(part.path()).unwrap().unwrap().0, stop);
            let mut c = model(DType::F32, 5);
            let s = train(
                &mut c,
                &data,
                &cap,
                &config(6, ogp.clone()),
                part.path(),
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(s.steps_run, 6 - stop, "resumed after step {stop}");
            if matches!(ogp, Ogp::Act { .. }) {
                assert!(part.path().join("ogp_act.key").is_file(), "act bases saved");
            }
            let (wa, wc) = (weights(&a), weights(&c));
            let worst = wa
                .iter()
                .zip(&wc)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-6,
                "{ogp:?}: resumed after {stop}, differs by {worst}"
            );
            // Other settings in the same folder are refused.
            let mut other = config(6, ogp.clone());
            other.adamw.lr = 1e-3;
            let err = train(
                &mut model(DType::F32, 5),
                &data,
                &cap,
                &other,
                part.path(),
                &mut |_| {},
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("other settings"), "{err}");
            // Fewer steps than trained: refused, not reported as step 5 with step 6's loss.
            let err = train(
                &mut model(DType::F32, 5),
                &data,
                &cap,
                &config(5, ogp.clone()),
                part.path(),
                &mut |_| {},
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("trained to step 6, past --steps 5"), "{err}");
        }
    }
}

/// Each checkpoint has its own files. A kill after step 6's files were written but before
/// `state.json` committed them resumes from step 4 exactly (the files of one checkpoint were
/// overwritten in place, and such a resume trained step 4's weights with step 6's optimizer
/// state); a run folder of the old layout (unnumbered files) resumes too.
#[test]
fn a_torn_checkpoint_resumes_from_the_committed_step() {
    let data = examples(12, 2);
    let cap = examples(8, 3);
    let ogp = Ogp::Grad { k: 2, every: 3 };
    let run = |steps: usize, dir: &std::path::Path| {
        let mut m = model(DType::F32, 5);
        train(
            &mut m,
            &data,
            &cap,
            &config(steps, ogp.clone()),
            dir,
            &mut |_| {},
        )
        .unwrap();
        weights(&m)
    };
    let straight = tempfile::tempdir().unwrap();
    let want = run(8, straight.path());
    let names = |dir: &std::path::Path| {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("-step"))
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(straight.path()),
        [
            "ogp_grad-step8.safetensors",
            "optimizer-step8.safetensors",
            "trained-step8.safetensors"
        ]
    );
    // Step 6's files, never committed, beside a run committed at step 4.
    let mid = tempfile::tempdir().unwrap();
    run(6, mid.path());
    let torn = tempfile::tempdir().unwrap();
    run(4, torn.path());
    let copy_step6 = || {
        for f in ["trained", "optimizer", "ogp_grad"] {
            let name = format!("{f}-step6.safetensors");
            std::fs::copy(mid.path().join(&name), torn.path().join(&name)).unwrap();
        }
    };
    copy_step6();
    // A rerun that trains no further clears them, and a temporary file of a torn write;
    // other files stay.
    std::fs::write(torn.path().join("trained-step8.safetensors.tmp"), b"torn").unwrap();
    std::fs::write(torn.path().join("trained-step6-notes.txt"), b"mine").unwrap();
    run(4, torn.path());
    assert_eq!(
        names(torn.path()),
        [
            "ogp_grad-step4.safetensors",
            "optimizer-step4.safetensors",
            "trained-step4.safetensors",
            "trained-step6-notes.txt"
        ]
    );
    copy_step6();
    let got = run(8, torn.path());
    let worst = max_change(&want, &got);
    assert!(
        worst < 1e-6,
        "resumed past a torn checkpoint: differs by {worst}"
    );
    let mut want_names = names(straight.path());
    want_names.push("trained-step6-notes.txt".into());
    want_names.sort();
    assert_eq!(names(torn.path()), want_names, "stray files removed");
    // The old layout: step 4's files under their unnumbered names.
    let legacy = tempfile::tempdir().unwrap();
    run(4, legacy.path());
    for f in ["trained", "optimizer", "ogp_grad"] {
        std::fs::rename(
            legacy.path().join(format!("{f}-step4.safetensors")),
            legacy.path().join(format!("{f}.safetensors")),
        )
        .unwrap();
    }
    assert_eq!(
        last_checkpoint(legacy.path()).unwrap().unwrap().1,
        legacy.path().join("trained.safetensors")
    );
    let got = run(8, legacy.path());
    let worst = max_change(&want, &got);
    assert!(
        worst < 1e-6,
        "resumed from the old layout: differs by {worst}"
    );
    assert!(!legacy.path().join("trained.safetensors").exists());
    // Killed after the first numbered commit, before the old files went: a rerun that trains
    // no further removes them (and an old temporary file).
    for f in ["trained.safetensors", "optimizer.safetensors.tmp"] {
        std::fs::write(legacy.path().join(f), b"old").unwrap();
    }
    run(8, legacy.path());
    assert!(!legacy.path().join("trained.safetensors").exists());
    assert!(!legacy.path().join("optimizer.safetensors.tmp").exists());
}

/// The output of block 1 on the capability sequences (all positions).
fn block_out(m: &Model, cap_inputs: &[Tensor]) -> Vec<f32> {
    cap_inputs
        .iter()
        .flat_map(|x| {
            m.forward_layers(
                x.unsqueeze(0).unwrap(),
                &[0],
                1..2,
                None,
                &mut NoHook,
                Mode::Inference,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        })
        .collect()
}

fn max_change(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn projected_steps_keep_capability_outputs_and_loss_to_first_order() {
    let data = examples(12, 2);
    let cap = examples(6, 4);
    let base = model(DType::F32, 8);
    let cap_in = block_inputs(&base, &cap, 1, 16, &mut |_| {}).unwrap();
    let out0 = block_out(&base, &cap_in);
    let loss0 = loss_on(&base, &cap);
    let one_step = |ogp: Ogp| {
        let dir = tempfile::tempdir().unwrap();
        let mut m = base.clone();
        let mut cfg = config(1, ogp);
        cfg.adamw.lr = 1e-3;
        // The whole capability set in one batch, so `grad`'s basis holds its full gradient.
        cfg.batch = 6;
        train(&mut m, &data, &cap, &cfg, dir.path(), &mut |_| {}).unwrap();
        m
    };
    let free = one_step(Ogp::None);
    // act: the block's outputs on capability sequences barely move (energy 0.999).
    let act = one_step(Ogp::Act {
        energy: 0.999,
        max_k: 64,
    });
    let (d_free, d_act) = (
        max_change(&block_out(&free, &cap_in), &out0),
        max_change(&block_out(&act, &cap_in), &out0),
    );
    assert!(d_free > 1e-3, "the free step moves the outputs: {d_free}");
    assert!(d_act < 0.1 * d_free, "act: {d_act} vs free {d_free}");
    // grad: the capability loss is unchanged to first order.
    let grad = one_step(Ogp::Grad { k: 1, every: 1 });
    let (l_free, l_grad) = (
        (loss_on(&free, &cap) - loss0).abs(),
        (loss_on(&grad, &cap) - loss0).abs(),
    );
    assert!(
        l_free > 1e-4,
        "the free step changes the capability loss: {l_free}"
    );
    assert!(l_grad < 0.2 * l_free, "grad: {l_grad} vs free {l_free}");
}

#[test]
fn bad_settings_are_errors() {
    let data = examples(4, 2);
    let dir = tempfile::tempdir().unwrap();
    let mut m = model(DType::F32, 5);
    let mut cfg = config(2, Ogp::None);
    cfg.layers = (2, 4);
    assert!(train(&mut m, &data, &[], &cfg, dir.path(), &mut |_| {}).is_err());
    let cfg = config(2, Ogp::Grad { k: 2, every: 1 });
    let err = train(&mut m, &data, &[], &cfg, dir.path(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("capability"), "{err}");
    let bad = vec![Example {
        ids: vec![1, 2, 3],
        start: 3,
    }];
    assert!(train(
        &mut m,
        &bad,
        &[],
        &config(2, Ogp::None),
        dir.path(),
        &mut |_| {}
    )
    .is_err());
}
