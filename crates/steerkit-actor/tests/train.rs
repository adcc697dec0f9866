//! The ACTOR trainer on tiny random models: exact gradients, a falling loss that moves the
//! right projections, exact resume, and a diverging run that keeps its last good checkpoint.

use candle_core::{DType, Device, Tensor};
use steerkit_actor::adamw::AdamWConfig;
use steerkit_actor::train::{
    block_last, cosine_loss, first_token_kl, first_token_log_probs, last_checkpoint,
    position_targets, targets, train, Group, Parts, Shift, TargetRule, TrainConfig,
};
use steerkit_actor::ActorError;
use steerkit_model::random::{gradient_mismatches, random_model, tiny_config};
use steerkit_model::{Arch, Mode, Model};

fn inputs(n: usize, offset: f64, seed: u64, dtype: DType) -> Vec<Tensor> {
    // Rows of 3-6 tokens, hidden 32, with a shared offset on the first coordinates.
    (0..n)
        .map(|i| {
            let t = 3 + (i + seed as usize) % 4;
            // Deterministic pseudo-random values (no global random state: no flaky test).
            let v: Vec<f32> = (0..t * 32)
                .map(|k| {
                    let h = ((k + 1000 * i + 100_000 * seed as usize) as u64)
                        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        >> 40;
                    (h % 2000) as f32 / 1000.0 - 1.0
                })
                .collect();
            let base = Tensor::from_vec(v, (t, 32), &Device::Cpu).unwrap();
            let shift: Vec<f32> = (0..32)
                .map(|k| if k < 8 { offset as f32 } else { 0.0 })
                .collect();
            let shift = Tensor::from_vec(shift, 32, &Device::Cpu).unwrap();
            base.broadcast_add(&shift).unwrap().to_dtype(dtype).unwrap()
        })
        .collect()
}

fn data(dtype: DType) -> Vec<(Group, Tensor)> {
    let mut d = Vec::new();
    d.extend(
        inputs(12, 1.5, 1, dtype)
            .into_iter()
            .map(|t| (Group::Harmful, t)),
    );
    d.extend(
        inputs(12, -1.5, 2, dtype)
            .into_iter()
            .map(|t| (Group::Harmless, t)),
    );
    d.extend(
        inputs(8, 0.8, 3, dtype)
            .into_iter()
            .map(|t| (Group::Pseudo, t)),
    );
    d
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        layer: 1,
        alpha: 1.0,
        alpha_harmful: 0.3,
        alpha_harmless: None,
        adamw: AdamWConfig {
            lr: 3e-3,
            ..Default::default()
        },
        epochs,
        batch: 8,
        clip: 1.0,
        seed: 7,
        parts: "attn,mlp,norms".parse().unwrap(),
        refresh: true,
        ogp: None,
        positions: 1,
        shift: Shift::Origin,
        kl_weight: 0.0,
    }
}

#[test]
fn gradients_match_finite_differences() {
    // qwen3 and gemma3: the per-head q/k norms are on the path and are trained too; gemma3's
    // post-norms, norm offsets and gelu too; gemma2's soft-capping.
    for arch in [
        Arch::Llama,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Gemma3,
        Arch::Gemma2,
    ] {
        let mut model = random_model(tiny_config(arch, 64), DType::F64, 3).unwrap();
        let vars = model.trainable_block(1).unwrap();
        let d = data(DType::F64);
        // Two of each group, of different lengths (so padding is on the path).
        let pick = [0, 1, 12, 13, 24, 25];
        let rows: Vec<&Tensor> = pick.iter().map(|&i| &d[i].1).collect();
        let groups: Vec<Group> = pick.iter().map(|&i| d[i].0).collect();
        let a = block_last(&model, 1, &rows, Mode::Inference).unwrap();
        // Targets from a different point so that the loss is not at its minimum.
        let (t, _, _) = targets(&(a * 1.3).unwrap(), &groups, [0.3, 1.0, 1.0].into()).unwrap();
        let checked = check_gradients(&arch, &model, &vars, &|m: &Model| {
            let h = block_last(m, 1, &rows, Mode::Differentiable).unwrap();
            cosine_loss(&h, &t).unwrap()
        });
        assert!(checked >= 27, "{checked}");
    }
}

/// Compares the backpropagated gradient of `loss_of` for each of `vars` with central finite
/// differences at three entries; returns how many entries were checked.
fn check_gradients(
    what: &dyn std::fmt::Debug,
    model: &Model,
    vars: &[(String, candle_core::Var)],
    loss_of: &dyn Fn(&Model) -> Tensor,
) -> usize {
    let (checked, bad) = gradient_mismatches(vars, &mut || Ok(loss_of(model))).unwrap();
    assert!(bad.is_empty(), "{what:?}: {bad:#?}");
    checked
}

/// Three blocks, so that the KL term's path runs through a block above the trained one.
fn three_blocks() -> steerkit_model::Config {
    let mut c = tiny_config(Arch::Qwen2, 64);
    c.num_layers = 3;
    c
}

/// The KL term (`--kl-weight`): its gradient through the trained block, the block above, the
/// final norm and the head matches finite differences.
#[test]
fn kl_term_gradients_match_finite_differences() {
    let mut model = random_model(three_blocks(), DType::F64, 3).unwrap();
    let other = random_model(three_blocks(), DType::F64, 4).unwrap();
    let vars = model.trainable_block(1).unwrap();
    let d = data(DType::F64);
    let rows: Vec<&Tensor> = [12, 13, 14].iter().map(|&i| &d[i].1).collect();
    let reference = first_token_log_probs(&other, 1, &rows, Mode::Inference).unwrap();
    let checked = check_gradients(&"kl", &model, &vars, &|m: &Model| {
        let now = first_token_log_probs(m, 1, &rows, Mode::Differentiable).unwrap();
        first_token_kl(&reference, &now).unwrap()
    });
    assert!(checked >= 27, "{checked}");
    // KL(p ‖ p) = 0 and KL(p ‖ q) > 0.
    let same = first_token_log_probs(&other, 1, &rows, Mode::Inference).unwrap();
    let own = first_token_kl(&reference, &same)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(own.abs() < 1e-12, "{own}");
    let now = first_token_log_probs(&model, 1, &rows, Mode::Inference).unwrap();
    assert!(
        first_token_kl(&reference, &now)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            > 1e-3
    );
}

/// With a KL weight, the harmless prompts' first-token distributions stay closer to the
/// original model's than without, and the epoch log reports the term.
#[test]
fn a_kl_term_keeps_harmless_first_tokens_near_the_original() {
    let d = data(DType::F32);
    let original = random_model(three_blocks(), DType::F32, 9).unwrap();
    let harmless: Vec<&Tensor> = d
        .iter()
        .filter(|(g, _)| *g == Group::Harmless)
        .map(|(_, t)| t)
        .collect();
    let before = first_token_log_probs(&original, 1, &harmless, Mode::Inference).unwrap();
    let run = |kl_weight: f64| {
        let dir = tempfile::tempdir().unwrap();
        let mut m = original.clone();
        let cfg = TrainConfig {
            kl_weight,
            ..config(3)
        };
        let logs = train(&mut m, &d, &[], &[], &cfg, dir.path(), &mut |_| {}).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("log.csv")).unwrap();
        let after = first_token_log_probs(&m, 1, &harmless, Mode::Inference).unwrap();
        let kl = first_token_kl(&before, &after)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        (logs, csv, kl)
    };
    let (plain, csv, drift) = run(0.0);
    assert!(plain.iter().all(|l| l.kl.is_none()));
    assert!(!csv.contains("first_token_kl"), "{csv}");
    let (kept, csv, less) = run(10.0);
    assert!(kept.iter().all(|l| l.kl.is_some_and(|k| k >= 0.0)));
    assert!(
        csv.lines().next().unwrap().contains("first_token_kl"),
        "{csv}"
    );
    assert!(
        drift > 1e-4 && less < 0.5 * drift,
        "KL {drift} without the term, {less} with it"
    );
    // A negative or non-finite weight is refused before any work.
    let dir = tempfile::tempdir().unwrap();
    let mut m = original.clone();
    let cfg = TrainConfig {
        kl_weight: -1.0,
        ..config(1)
    };
    let err = train(&mut m, &d, &[], &[], &cfg, dir.path(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("KL weight -1"), "{err}");
}

/// Each group's target moves along R by its own shift: harmful rows gain alphas[0] of their
/// projection, harmless and pseudo-harmful rows lose alphas[1] and alphas[2] of it (0: kept).
#[test]
fn targets_shift_each_group_by_its_alpha() {
    let groups = [
        Group::Harmful,
        Group::Harmless,
        Group::Pseudo,
        Group::Harmless,
    ];
    let a = Tensor::new(
        &[[3.0f64, 1.0], [1.0, 2.0], [2.0, -1.0], [-1.0, 0.0]],
        &Device::Cpu,
    )
    .unwrap();
    // R = harmful mean - harmless mean = (3, 1) - (0, 1) = (3, 0): P(a) = (a_x, 0).
    let (t, r, _) = targets(&a, &groups, [0.5, 0.0, 2.0].into()).unwrap();
    assert_eq!(r.to_vec1::<f64>().unwrap(), [3.0, 0.0]);
    let t = t.to_vec2::<f64>().unwrap();
    assert_eq!(t[0], [4.5, 1.0]); // 3 + 0.5 * 3
    assert_eq!(t[1], [1.0, 2.0]); // harmless, alpha 0: unchanged
    assert_eq!(t[2], [-2.0, -1.0]); // 2 - 2 * 2
    assert_eq!(t[3], [-1.0, 0.0]);
    let cfg = TrainConfig {
        alpha_harmless: Some(0.0),
        ..config(1)
    };
    assert_eq!(cfg.rule().alphas, [0.3, 0.0, 1.0]);
    assert_eq!(config(1).rule().alphas, [0.3, 1.0, 1.0]);
    assert_eq!(config(1).rule().shift, Shift::Origin);
}

/// `--shift harmless-mean`: a benign row loses only the part of its coordinate along R above
/// the harmless mean's, times its alpha, and a row at or below that mean keeps its state;
/// harmful rows are shifted as before.
#[test]
fn harmless_mean_shift_moves_benign_rows_just_to_the_harmless_mean() {
    let groups = [
        Group::Harmful,
        Group::Harmless,
        Group::Harmless,
        Group::Pseudo,
        Group::Pseudo,
    ];
    let a = Tensor::new(
        &[
            [5.0f64, 1.0],
            [2.0, 2.0],
            [0.0, 0.0],
            [4.0, -1.0],
            [0.5, 3.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    // R = (5, 1) - (1, 1) = (4, 0): c(a) = a_x / 4, harmless mean c_b = 0.25.
    let rule = |a_pseudo: f64| TargetRule {
        alphas: [0.5, 0.0, a_pseudo],
        shift: Shift::HarmlessMean,
    };
    let (t, r, _) = targets(&a, &groups, rule(1.0)).unwrap();
    assert_eq!(r.to_vec1::<f64>().unwrap(), [4.0, 0.0]);
    let t = t.to_vec2::<f64>().unwrap();
    assert_eq!(t[0], [7.5, 1.0]); // harmful: 5 + 0.5 * 5, as with the origin
    assert_eq!(t[1], [2.0, 2.0]); // harmless, alpha 0: unchanged
    assert_eq!(t[3], [1.0, -1.0]); // c 1 -> the harmless mean's 0.25, i.e. x = 1
    assert_eq!(t[4], [0.5, 3.0]); // c 0.125, under the mean: kept

    // Alpha 1.5 goes half the gap beyond the mean; the origin rule would give 4 - 1.5 * 4.
    let t = targets(&a, &groups, rule(1.5))
        .unwrap()
        .0
        .to_vec2::<f64>()
        .unwrap();
    assert_eq!(t[3], [-0.5, -1.0]);
    let t = targets(&a, &groups, [0.5, 0.0, 1.5].into())
        .unwrap()
        .0
        .to_vec2::<f64>()
        .unwrap();
    assert_eq!(t[3], [-2.0, -1.0]);
    assert_eq!(t[4], [-0.25, 3.0]);
    // The setting parses from the command line's words and round-trips through actor.json,
    // and a run folder written before it existed reads as the origin rule.
    assert_eq!("harmless-mean".parse::<Shift>(), Ok(Shift::HarmlessMean));
    assert!("mean"
        .parse::<Shift>()
        .unwrap_err()
        .contains("origin, harmless-mean"));
    let cfg = TrainConfig {
        shift: Shift::HarmlessMean,
        ..config(1)
    };
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(json.contains("\"shift\":\"harmless-mean\""), "{json}");
    assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), cfg);
    // Reports name the options that differ from their defaults.
    assert_eq!(config(1).extras(), "");
    let more = TrainConfig {
        kl_weight: 0.1,
        positions: 5,
        ..cfg.clone()
    };
    assert_eq!(
        more.extras(),
        ", shift = harmless-mean, KL weight = 0.1, positions = 5"
    );
    let old = serde_json::to_string(&config(1)).unwrap();
    assert!(!old.contains("shift"), "{old}");
    assert_eq!(
        serde_json::from_str::<TrainConfig>(&old).unwrap().shift,
        Shift::Origin
    );
}

/// With several positions (`--positions`), each position's targets move along that
/// position's own refusal vector: here R is (3, 0) at the first position and (0, 2) at the
/// second, so each target moves along another axis.
#[test]
fn position_targets_use_each_positions_own_refusal_vector() {
    let groups = [Group::Harmful, Group::Harmless, Group::Pseudo];
    // [examples, positions, hidden]
    let a = Tensor::new(
        &[
            [[3.0f64, 1.0], [1.0, 2.0]],
            [[0.0, 1.0], [1.0, 0.0]],
            [[2.0, 5.0], [4.0, 1.0]],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let (t, r, _) = position_targets(&a, &groups, [0.5, 0.0, 1.0].into()).unwrap();
    assert_eq!(t.dims(), [3, 2, 2]);
    // The last position's R is returned for the log.
    assert_eq!(r.to_vec1::<f64>().unwrap(), [0.0, 2.0]);
    let t = t.to_vec3::<f64>().unwrap();
    assert_eq!(t[0], [[4.5, 1.0], [1.0, 3.0]]); // harmful: + 0.5 of the projection
    assert_eq!(t[1], [[0.0, 1.0], [1.0, 0.0]]); // harmless, alpha 0: unchanged
    assert_eq!(t[2], [[0.0, 5.0], [4.0, 0.0]]); // pseudo: its projection removed
                                                // One position is the last-token targets of before.
    let (one, _, _) =
        position_targets(&a.narrow(1, 1, 1).unwrap(), &groups, [0.5, 0.0, 1.0].into()).unwrap();
    let (last, _, _) = targets(
        &a.narrow(1, 1, 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .contiguous()
            .unwrap(),
        &groups,
        [0.5, 0.0, 1.0].into(),
    )
    .unwrap();
    assert_eq!(
        one.squeeze(1).unwrap().to_vec2::<f64>().unwrap(),
        last.to_vec2::<f64>().unwrap()
    );
}

/// Training the last three positions runs and lowers the loss over them; its block differs from
/// the last-token run's.
#[test]
fn training_several_positions_lowers_their_loss() {
    let d = data(DType::F32);
    let run = |positions: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut m = random_model(tiny_config(Arch::Qwen2, 64), DType::F32, 9).unwrap();
        let cfg = TrainConfig {
            positions,
            refresh: false,
            ..config(3)
        };
        let logs = train(&mut m, &d, &[], &[], &cfg, dir.path(), &mut |_| {}).unwrap();
        (logs, block_values(&m))
    };
    let (logs, three) = run(3);
    assert!(
        logs[2].loss < logs[0].loss,
        "{:?}",
        logs.iter().map(|l| l.loss).collect::<Vec<_>>()
    );
    let (_, one) = run(1);
    // More positions than the shortest prompt has tokens (3 here): a clear error, up front.
    let dir = tempfile::tempdir().unwrap();
    let mut m = random_model(tiny_config(Arch::Qwen2, 64), DType::F32, 9).unwrap();
    let cfg = TrainConfig {
        positions: 4,
        ..config(1)
    };
    let err = train(&mut m, &d, &[], &[], &cfg, dir.path(), &mut |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("--positions 4: the shortest training prompt has 3 tokens"),
        "{err}"
    );
    let diff = three
        .iter()
        .zip(&one)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    assert!(diff > 1e-4, "{diff}");
}

/// `train` on `data(F32)` with no OGP or KL data and no progress reports.
fn train_plain(
    model: &mut Model,
    cfg: &TrainConfig,
    dir: &std::path::Path,
) -> Result<Vec<steerkit_actor::train::EpochLog>, steerkit_actor::ActorError> {
    train(model, &data(DType::F32), &[], &[], cfg, dir, &mut |_| {})
}

fn projections(model: &Model, d: &[(Group, Tensor)]) -> [f64; 3] {
    let rows: Vec<&Tensor> = d.iter().map(|(_, t)| t).collect();
    let groups: Vec<Group> = d.iter().map(|(g, _)| *g).collect();
    let a = block_last(model, 1, &rows, Mode::Inference)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    targets(&a, &groups, [0.3, 1.0, 1.0].into()).unwrap().2
}

#[test]
fn training_lowers_the_loss_and_moves_pseudo_harmful_states_off_the_refusal_vector() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = random_model(tiny_config(Arch::Llama, 64), DType::F32, 5).unwrap();
    let d = data(DType::F32);
    let before = projections(&model, &d);
    let logs = train(
        &mut model,
        &d,
        &[],
        &[],
        &config(8),
        dir.path(),
        &mut |_| {},
    )
    .unwrap();
    let after = projections(&model, &d);
    assert_eq!(logs.len(), 8);
    assert!(
        logs[7].loss < logs[0].loss,
        "{:?}",
        logs.iter().map(|l| l.loss).collect::<Vec<_>>()
    );
    // Pseudo-harmful states move toward the harmless side, relative to the harmful ones.
    let gap = |p: [f64; 3]| (p[0] - p[2]) / (p[0] - p[1]);
    assert!(
        gap(after) > gap(before) + 0.05,
        "before {before:?} after {after:?}"
    );
    for e in 1..=8 {
        assert!(dir
            .path()
            .join(format!("block-epoch{e}.safetensors"))
            .is_file());
    }
    let csv = std::fs::read_to_string(dir.path().join("log.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9);
    assert!(std::fs::read_to_string(dir.path().join("loss.svg"))
        .unwrap()
        .contains("<polyline"));
}

/// The tiny Llama model of seed 5 with every weight in `dtype` and its arithmetic in `dtype`, as
/// a GPU runs `--dtype bf16` (on the CPU, `random_model` keeps bf16 for storage and computes in
/// f32).
fn computing_in(dtype: DType) -> Model {
    let mut m = random_model(tiny_config(Arch::Llama, 64), DType::F32, 5).unwrap();
    m.dtype = dtype;
    let cast = |t: &mut Tensor| *t = t.to_dtype(dtype).unwrap();
    cast(&mut m.embed);
    cast(&mut m.norm);
    m.lm_head.iter_mut().for_each(cast);
    for blk in m.layers.iter_mut() {
        for (_, t) in blk.named_tensors_mut() {
            cast(t);
        }
    }
    m
}

/// A model that computes in bf16 or f16 (as on a GPU with `--dtype bf16`) trains through the
/// optimizer's f32 master weights: its loss falls as the f32 model's does, and its trained
/// block ends within half-precision rounding of the f32 run's, where bf16 weights updated in
/// place would keep only the steps larger than half their spacing.
#[test]
fn half_precision_models_train_like_f32() {
    let run = |dtype: DType| {
        let dir = tempfile::tempdir().unwrap();
        let mut model = computing_in(dtype);
        let mut cfg = config(6);
        cfg.adamw.lr = 1e-3;
        let logs = train_plain(&mut model, &cfg, dir.path()).unwrap();
        assert_eq!(model.layers[1].o.weight.dtype(), dtype);
        (
            logs.iter().map(|l| l.loss).collect::<Vec<_>>(),
            block_values(&model),
        )
    };
    let (loss32, w32) = run(DType::F32);
    let w0 = block_values(&computing_in(DType::F32));
    let moved: f32 = w32.iter().zip(&w0).map(|(a, b)| (a - b).abs()).sum();
    for dtype in [DType::BF16, DType::F16] {
        let (loss, w) = run(dtype);
        assert!(loss[5] < loss[0], "{dtype:?}: {loss:?}");
        let rel = (loss[5] - loss32[5]).abs() / loss32[5];
        let off: f32 = w.iter().zip(&w32).map(|(a, b)| (a - b).abs()).sum();
        eprintln!("{dtype:?}: loss {loss:?} (f32 {loss32:?}), weights off the f32 run by {off:.4}, moved {moved:.4}");
        assert!(
            rel < 0.1,
            "{dtype:?}: final loss {} vs f32 {}",
            loss[5],
            loss32[5]
        );
        assert!(
            off < 0.25 * moved,
            "{dtype:?}: {off} off, the f32 run moved {moved}"
        );
    }
}

fn block_values(model: &Model) -> Vec<f32> {
    let mut m = model.clone();
    m.layers[1]
        .named_tensors_mut()
        .into_iter()
        .flat_map(|(_, t)| {
            let t = t.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
            t.to_vec1::<f32>().unwrap()
        })
        .collect()
}

/// Both target modes: refreshed every epoch, and fixed after the first (the default), where a
/// resume must train towards the first epoch's targets, not ones from the resumed weights.
#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    // The KL term's reference must be the original model's on a resume too.
    for (refresh, kl_weight) in [(true, 0.0), (false, 0.0), (false, 1.0)] {
        let cfg = |epochs| TrainConfig {
            refresh,
            kl_weight,
            ..config(epochs)
        };
        let d = data(DType::F32);
        let straight = tempfile::tempdir().unwrap();
        let mut a = random_model(tiny_config(Arch::Qwen2, 64), DType::F32, 9).unwrap();
        train(&mut a, &d, &[], &[], &cfg(3), straight.path(), &mut |_| {}).unwrap();

        let resumed = tempfile::tempdir().unwrap();
        let mut b = random_model(tiny_config(Arch::Qwen2, 64), DType::F32, 9).unwrap();
        train(&mut b, &d, &[], &[], &cfg(1), resumed.path(), &mut |_| {}).unwrap();
        // A fresh process: the original weights again, then resume to 3 epochs.
        let mut c = random_model(tiny_config(Arch::Qwen2, 64), DType::F32, 9).unwrap();
        let logs = train(&mut c, &d, &[], &[], &cfg(3), resumed.path(), &mut |_| {}).unwrap();
        assert_eq!(logs.len(), 3);
        assert_eq!(last_checkpoint(resumed.path()).unwrap().unwrap().0, 3);
        let (x, y) = (block_values(&a), block_values(&c));
        let diff = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff < 1e-6,
            "refresh {refresh}, KL {kl_weight}: max difference {diff}"
        );
        // A kill after epoch 4's files were written but before it was committed: a rerun
        // resumes from epoch 3's optimizer state, not epoch 4's written beside it.
        let mut e = random_model(tiny_config(Arch::Qwen2, 64), DType::F32, 9).unwrap();
        train(&mut e, &d, &[], &[], &cfg(4), straight.path(), &mut |_| {}).unwrap();
        let want = block_values(&e);
        for f in ["block-epoch4.safetensors", "optimizer-epoch4.safetensors"] {
            std::fs::copy(straight.path().join(f), resumed.path().join(f)).unwrap();
        }
        let mut g = random_model(tiny_config(Arch::Qwen2, 64), DType::F32, 9).unwrap();
        train(&mut g, &d, &[], &[], &cfg(4), resumed.path(), &mut |_| {}).unwrap();
        let got = block_values(&g);
        let diff = want
            .iter()
            .zip(&got)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "after a torn commit: max difference {diff}");
        assert!(!resumed.path().join("optimizer-epoch3.safetensors").exists());
        // Other settings in the same folder are refused.
        let mut other = cfg(4);
        other.alpha = 0.5;
        other.adamw.lr *= 2.0;
        let err = train(&mut c, &d, &[], &[], &other, resumed.path(), &mut |_| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("other settings (adamw.lr, alpha); use another --out"),
            "{err}"
        );
    }
}

/// An epoch's log row is written before the epoch is committed: a kill between the commit and
/// the log write lost the row. Here the commit itself fails (`state.json` is a folder), and
/// the row is on disk; a rerun then drops rows past the committed epoch.
#[test]
fn the_log_row_is_written_before_the_commit() {
    let d = data(DType::F32);
    // Each run a fresh process: the original weights, then `epochs` in `dir`.
    let run = |epochs: usize, dir: &std::path::Path| {
        let mut m = random_model(tiny_config(Arch::Qwen2, 64), DType::F32, 9).unwrap();
        train(&mut m, &d, &[], &[], &config(epochs), dir, &mut |_| {})
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("state.json")).unwrap();
    assert!(run(1, dir.path()).is_err());
    let log: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("log.json")).unwrap()).unwrap();
    assert_eq!(log.len(), 1, "the row of the epoch being committed");
    assert_eq!(log[0]["epoch"], 1);
    // Two committed epochs, then a third whose log row was written but never committed.
    let straight = tempfile::tempdir().unwrap();
    let want = run(3, straight.path()).unwrap();
    let part = tempfile::tempdir().unwrap();
    run(2, part.path()).unwrap();
    let mut torn = want.clone();
    torn[2].loss = 123.0;
    std::fs::write(
        part.path().join("log.json"),
        serde_json::to_vec(&torn).unwrap(),
    )
    .unwrap();
    let got = run(3, part.path()).unwrap();
    assert_eq!(
        got.iter().map(|l| l.epoch).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!((got[2].loss - want[2].loss).abs() < 1e-6, "{got:?}");
    let csv = std::fs::read_to_string(part.path().join("log.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(!csv.contains("123"), "{csv}");
}

/// A learning rate far too high blows the block up in its first epoch: the weights stay
/// finite, but the states grow by orders of magnitude (the next epoch's loss was NaN, and the
/// epoch's checkpoint was saved). Now the epoch is not saved. A reasonable rate passes.
#[test]
fn a_blown_up_epoch_is_not_saved() {
    let d = data(DType::F32);
    let mut cfg = config(2);
    cfg.batch = d.len();
    for (lr, ok) in [(1e-2, true), (1e4, false)] {
        cfg.adamw.lr = lr;
        let dir = tempfile::tempdir().unwrap();
        let mut model = random_model(tiny_config(Arch::Llama, 64), DType::F32, 5).unwrap();
        let r = train(&mut model, &d, &[], &[], &cfg, dir.path(), &mut |_| {});
        if ok {
            assert_eq!(r.unwrap().len(), 2);
            continue;
        }
        let err = r.unwrap_err();
        assert!(matches!(err, ActorError::Diverged(_)), "{err}");
        assert!(
            err.to_string()
                .contains("epoch 1: after training, its states grew"),
            "{err}"
        );
        assert!(last_checkpoint(dir.path()).unwrap().is_none());
        assert!(!dir.path().join("block-epoch1.safetensors").exists());
    }
    // The step check: a NaN, and a zero gradient at a loss that is not ~0 (saturation).
    use steerkit_actor::train::{step_fault, StepFault};
    assert!(step_fault(1e-7, 0.0).is_none());
    assert!(step_fault(0.5, 1e-9).is_none());
    assert!(matches!(
        step_fault(0.5, 0.0),
        Some(StepFault::Saturated(_))
    ));
    assert!(matches!(
        step_fault(f64::NAN, 1.0),
        Some(StepFault::NonFinite(_))
    ));
    assert!(matches!(
        step_fault(0.5, f64::INFINITY),
        Some(StepFault::NonFinite(_))
    ));
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = random_model(tiny_config(Arch::Llama, 64), DType::F32, 5).unwrap();
    let d = data(DType::F32);
    train(
        &mut model,
        &d,
        &[],
        &[],
        &config(1),
        dir.path(),
        &mut |_| {},
    )
    .unwrap();
    // A pseudo-harmful row of NaNs (it does not enter R): its loss is NaN in epoch 2.
    let mut bad = d.clone();
    let last = bad.len() - 1;
    bad[last].1 = Tensor::full(f32::NAN, bad[last].1.dims(), &Device::Cpu).unwrap();
    let mut poisoned = random_model(tiny_config(Arch::Llama, 64), DType::F32, 5).unwrap();
    let err = train(
        &mut poisoned,
        &bad,
        &[],
        &[],
        &config(2),
        dir.path(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, ActorError::Diverged(_)), "{err}");
    assert!(err.to_string().contains("block-epoch1"), "{err}");
    assert_eq!(last_checkpoint(dir.path()).unwrap().unwrap().0, 1);
    assert!(!dir.path().join("block-epoch2.safetensors").exists());
}

/// A single step with a huge learning rate has a finite loss but leaves infinite weights: the
/// epoch is not saved (before, the only checkpoint held them).
#[test]
fn non_finite_weights_are_never_saved() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = random_model(tiny_config(Arch::Llama, 64), DType::F32, 5).unwrap();
    let d = data(DType::F32);
    let mut cfg = config(1);
    cfg.batch = d.len();
    cfg.adamw.lr = 1e300;
    let err = train(&mut model, &d, &[], &[], &cfg, dir.path(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, ActorError::Diverged(_)), "{err}");
    assert!(err.to_string().contains("NaN or infinite"), "{err}");
    assert!(last_checkpoint(dir.path()).unwrap().is_none());
    assert!(!dir.path().join("block-epoch1.safetensors").exists());
}

#[test]
fn bad_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = random_model(tiny_config(Arch::Llama, 64), DType::F32, 5).unwrap();
    let only_harmful: Vec<(Group, Tensor)> = data(DType::F32)
        .into_iter()
        .filter(|(g, _)| *g == Group::Harmful)
        .collect();
    let err = train(
        &mut model,
        &only_harmful,
        &[],
        &[],
        &config(1),
        dir.path(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("harmful and harmless"), "{err}");
    let err = train(
        &mut model,
        &[],
        &[],
        &[],
        &config(1),
        dir.path(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("nothing to train"), "{err}");
    let mut cfg = config(1);
    cfg.layer = 9;
    let err = train_plain(&mut model, &cfg, dir.path()).unwrap_err();
    assert!(err.to_string().contains("layer 9 does not exist"), "{err}");
    assert!("attn,ffn".parse::<Parts>().is_err());
    assert!("".parse::<Parts>().is_err());
}

/// States of a half-precision model whose squares overflow f16 (entries of 300: 300² > 65504)
/// still give the loss of the same states in f32.
#[test]
fn the_loss_of_large_f16_states_is_finite_and_exact() {
    let h: Vec<f32> = (0..64).map(|k| 300.0 - 10.0 * (k % 7) as f32).collect();
    let t: Vec<f32> = (0..64).map(|k| 280.0 + 20.0 * (k % 3) as f32).collect();
    let h = Tensor::from_vec(h, (2, 32), &Device::Cpu).unwrap();
    let t = Tensor::from_vec(t, (2, 32), &Device::Cpu).unwrap();
    let f32_loss = cosine_loss(&h, &t).unwrap().to_scalar::<f32>().unwrap();
    let (h16, t16) = (
        h.to_dtype(DType::F16).unwrap(),
        t.to_dtype(DType::F16).unwrap(),
    );
    let loss = cosine_loss(&h16, &t16).unwrap().to_scalar::<f32>().unwrap();
    assert!(f32_loss > 1e-4, "{f32_loss}");
    assert!((loss - f32_loss).abs() < 1e-6, "f16 {loss}, f32 {f32_loss}");
}

/// A model that computes in bf16 gives first-token log-probabilities in f32 (the KL term's
/// reference and current distributions): they sum to one to f32 rounding, where bf16
/// log-probabilities are off by their own spacing.
#[test]
fn half_precision_first_token_log_probs_are_f32() {
    let d = data(DType::F32);
    let rows: Vec<&Tensor> = [12, 13, 14].iter().map(|&i| &d[i].1).collect();
    let lp = first_token_log_probs(&computing_in(DType::BF16), 1, &rows, Mode::Inference).unwrap();
    assert_eq!(lp.dtype(), DType::F32);
    for row in lp.exp().unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap() {
        assert!((row - 1.0).abs() < 1e-5, "probabilities sum to {row}");
    }
}
