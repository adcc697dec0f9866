//! Forward-pass properties on tiny random models of each architecture (Mistral's with a
//! sliding window): hooks, padding, the KV cache, the differentiable mode and its gradients,
//! and Hugging Face folder round trips.

mod common;

use candle_core::{DType, Device, Tensor, Var, D};
use steerkit_model::random::{
    central_differences, max_abs_diff, random_model, seeded_normal, tiny_config, tiny_rope_scaling,
};
use steerkit_model::{
    left_pad, Ablate, Arch, Chain, Hook, HookCtx, HookPoint, KvCache, Mode, Model, NoHook, Record,
    Site,
};

const ARCHS: [Arch; 16] = [
    Arch::Llama,
    Arch::Qwen2,
    Arch::Mistral,
    Arch::Qwen3,
    Arch::Gemma3,
    Arch::Gemma2,
    // Partial rotation and LongRoPE (tiny_config).
    Arch::Phi3,
    // Embedding, residual, attention and logit multipliers (tiny_config).
    Arch::Granite,
    // Granite's scalars, the MLP stored as Granite 4's shared MLP.
    Arch::GraniteHybrid,
    // Block 1 without RoPE (tiny_config).
    Arch::SmolLm3,
    // Output norms only; q/k normed over the whole projection.
    Arch::Olmo2,
    // OLMo 2's block; block 1 on a window with plain RoPE of its own base, block 0 with YaRN.
    Arch::Olmo3,
    // Block 1 a mixture of 4 experts, 2 per token (tiny_config).
    Arch::Qwen3Moe,
    // Block 1 a mixture of 4 experts, 2 per token, unnormalized, beside a shared expert.
    Arch::Qwen2Moe,
    // Every block a mixture of 4 experts, stored under Mixtral's names.
    Arch::Mixtral,
    // Sinks, biases on q/k/v/o, the router and the experts, a clamped SwiGLU, a window on
    // block 1.
    Arch::GptOss,
];

/// A tiny random model. The Mistral one attends over a sliding window of 3 positions, as
/// Mistral 7B v0.1 does over 4096, so that every property below is checked with a window too
/// (the rows are up to 11 tokens long).
fn tiny(arch: Arch, dtype: DType) -> Model {
    let mut cfg = tiny_config(arch, 64);
    if arch == Arch::Mistral {
        cfg.sliding_window = Some(3);
    }
    random_model(cfg, dtype, 7).unwrap()
}

fn rows() -> Vec<Vec<u32>> {
    vec![
        vec![3, 14, 15, 9, 26, 5, 35],
        vec![8, 9, 7],
        vec![1, 2, 3, 4, 5],
    ]
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs_diff(a, b).unwrap()
}

fn logits(m: &Model, rows: &[Vec<u32>], hook: &mut dyn Hook) -> Tensor {
    let (ids, pads) = left_pad(rows, 0, &Device::Cpu).unwrap();
    m.last_logits(&ids, &pads, hook).unwrap()
}

/// Returns its input unchanged at every site.
struct Identity(usize);
impl Hook for Identity {
    fn call(&mut self, _: HookCtx, x: &Tensor) -> steerkit_model::Result<Option<Tensor>> {
        self.0 += 1;
        Ok(Some(x.clone()))
    }
}

#[test]
fn identity_hook_leaves_logits_unchanged() {
    for arch in ARCHS {
        let m = tiny(arch, DType::F32);
        let base = logits(&m, &rows(), &mut NoHook);
        let mut id = Identity(0);
        let hooked = logits(&m, &rows(), &mut id);
        assert_eq!(id.0, 3 * m.cfg.num_layers, "every site is visited once");
        assert_eq!(max_diff(&base, &hooked), 0.0, "{arch:?}");
    }
}

#[test]
fn ablation_leaves_the_residual_orthogonal_to_the_direction() {
    let m = tiny(Arch::Qwen2, DType::F32);
    let dir = Tensor::randn(0f32, 1.0, 32, &Device::Cpu).unwrap();
    let sites: Vec<Site> = (0..m.cfg.num_layers)
        .flat_map(|layer| HookPoint::ALL.map(|point| Site { layer, point }))
        .collect();
    let mut rec = Record::new(sites.clone(), vec![-3, -2, -1]);
    let mut before = Record::new(sites.clone(), vec![-3, -2, -1]);
    {
        let mut chain = Chain(vec![
            Box::new(&mut before),
            Box::new(Ablate::new(&dir, &HookPoint::ALL).unwrap()),
            Box::new(&mut rec),
        ]);
        let base = logits(&m, &rows(), &mut NoHook);
        let ablated = logits(&m, &rows(), &mut chain);
        assert!(
            max_diff(&base, &ablated) > 1e-3,
            "ablation must change something"
        );
    }
    let unit = (&dir
        / dir
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64)
        .unwrap();
    for s in &sites {
        let x = rec.get(*s).expect("recorded");
        let proj = x
            .broadcast_matmul(&unit.reshape((32, 1)).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let norm = x
            .sqr()
            .unwrap()
            .sum(D::Minus1)
            .unwrap()
            .sqrt()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(proj < 1e-5 * norm.max(1.0), "{s:?}: |x·r| = {proj}");
        // Before ablation the component was there (except where the previous site's ablation
        // carries over: a block's input is the previous block's ablated output).
        if s.point == HookPoint::Input && s.layer > 0 {
            continue;
        }
        let b = before
            .get(*s)
            .unwrap()
            .broadcast_matmul(&unit.reshape((32, 1)).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            b > 1e-2,
            "{s:?}: the residual already had no component ({b})"
        );
    }
}

#[test]
fn left_padding_does_not_change_a_row() {
    for arch in ARCHS {
        let m = tiny(arch, DType::F32);
        let batch = logits(&m, &rows(), &mut NoHook);
        for (i, r) in rows().iter().enumerate() {
            let alone = logits(&m, std::slice::from_ref(r), &mut NoHook);
            let d = max_diff(&batch.narrow(0, i, 1).unwrap(), &alone);
            assert!(d < 1e-5, "{arch:?} row {i}: {d}");
        }
    }
}

#[test]
fn kv_cache_decoding_equals_a_full_forward() {
    for arch in ARCHS {
        let m = tiny(arch, DType::F32);
        let rows = rows();
        let full = logits(&m, &rows, &mut NoHook);
        // Prefill all but the last token of each row, then feed the last tokens.
        let heads: Vec<Vec<u32>> = rows.iter().map(|r| r[..r.len() - 1].to_vec()).collect();
        let (ids, pads) = left_pad(&heads, 0, &Device::Cpu).unwrap();
        let mut cache = KvCache::new();
        m.forward(&ids, &pads, Some(&mut cache), &mut NoHook, Mode::Inference)
            .unwrap();
        let last: Vec<u32> = rows.iter().map(|r| *r.last().unwrap()).collect();
        let ids = Tensor::from_vec(last, (3, 1), &Device::Cpu).unwrap();
        let h = m
            .forward(&ids, &pads, Some(&mut cache), &mut NoHook, Mode::Inference)
            .unwrap();
        let inc = m.logits(&h.squeeze(1).unwrap()).unwrap();
        let d = max_diff(&full, &inc);
        assert!(d < 1e-5, "{arch:?}: {d}");
    }
}

#[test]
fn differentiable_mode_computes_the_same_function() {
    for arch in ARCHS {
        let m = tiny(arch, DType::F32);
        let (ids, pads) = left_pad(&rows(), 0, &Device::Cpu).unwrap();
        let a = m
            .forward(&ids, &pads, None, &mut NoHook, Mode::Inference)
            .unwrap();
        let b = m
            .forward(&ids, &pads, None, &mut NoHook, Mode::Differentiable)
            .unwrap();
        let d = max_diff(&a, &b);
        assert!(d < 1e-5, "{arch:?}: {d}");
    }
}

/// A tiny f64 model with block 1 trainable, and that block's input for `rows()` (fixed: it is
/// computed once, as trainers do) with the rows' pad counts.
fn trainable_block_1(arch: Arch) -> (Model, Vec<(String, Var)>, Tensor, Vec<usize>) {
    let mut m = tiny(arch, DType::F64);
    let vars = m.trainable_block(1).unwrap();
    let (ids, pads) = left_pad(&rows(), 0, &Device::Cpu).unwrap();
    let x0 = m
        .forward_layers(
            m.embed(&ids).unwrap(),
            &pads,
            0..1,
            None,
            &mut NoHook,
            Mode::Inference,
        )
        .unwrap();
    (m, vars, x0, pads)
}

/// A standard normal f64 tensor of `shape`, the same on every run for the same `seed`.
fn seeded_probe(shape: &[usize], seed: u64) -> Tensor {
    seeded_normal(shape.iter().product(), seed)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

/// `block_last` (queries, output projection and MLP at the last column only) equals the last
/// column of the whole block, in both modes, with left padding, and gives every variable the
/// same gradient; `block_tail` likewise for the last three columns, and refuses more columns
/// than a row has real tokens.
#[test]
fn block_last_equals_the_last_column_of_the_block() {
    for arch in ARCHS {
        let (m, vars, x0, pads) = trainable_block_1(arch);
        let t = x0.dim(1).unwrap();
        let probe = seeded_probe(&[x0.dim(0).unwrap(), x0.dim(2).unwrap()], 12);
        let full = |mode| {
            m.forward_layers(x0.clone(), &pads, 1..2, None, &mut NoHook, mode)
                .unwrap()
                .narrow(1, t - 1, 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
        };
        for mode in [Mode::Inference, Mode::Differentiable] {
            let last = m.block_last(1, &x0, &pads, mode).unwrap();
            let d = max_diff(&last, &full(mode));
            assert!(d < 1e-10, "{arch:?} {mode:?}: {d}");
            // The last three columns at once (ACTOR's `--positions 3`).
            let tail = m.block_tail(1, &x0, &pads, 3, mode).unwrap();
            let want = m
                .forward_layers(x0.clone(), &pads, 1..2, None, &mut NoHook, mode)
                .unwrap()
                .narrow(1, t - 3, 3)
                .unwrap();
            let d = max_diff(&tail, &want);
            assert!(d < 1e-10, "{arch:?} {mode:?}, last 3: {d}");
        }
        // More columns than a padded row has real tokens.
        assert!(m.block_tail(1, &x0, &pads, t, Mode::Inference).is_err());
        let g_full = (full(Mode::Differentiable) * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_last = (m.block_last(1, &x0, &pads, Mode::Differentiable).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in &vars {
            let (a, b) = (g_full.get(v).unwrap(), g_last.get(v));
            let b = match b {
                Some(b) => b,
                // An expert that no row's last token is routed to: none in the full pass
                // either.
                None if name.contains(".mlp.experts.") => {
                    let top = a.abs().unwrap().max_all().unwrap();
                    assert_eq!(top.to_scalar::<f64>().unwrap(), 0.0, "{arch:?}: {name}");
                    continue;
                }
                None => panic!("{arch:?}: {name} received no gradient"),
            };
            let scale = a
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(scale > 0.0, "{arch:?}: {name}");
            let d = max_diff(a, b) / scale;
            assert!(d < 1e-10, "{arch:?} {name}: {d}");
        }
    }
    // f32 and the fused kernels (rms_norm, rope, softmax) of the inference mode.
    for arch in ARCHS {
        let m = tiny(arch, DType::F32);
        let (ids, pads) = left_pad(&rows(), 0, &Device::Cpu).unwrap();
        let x = m.embed(&ids).unwrap();
        let t = x.dim(1).unwrap();
        let full = m
            .forward_layers(x.clone(), &pads, 0..1, None, &mut NoHook, Mode::Inference)
            .unwrap()
            .narrow(1, t - 1, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let last = m.block_last(0, &x, &pads, Mode::Inference).unwrap();
        let d = max_diff(&last, &full);
        assert!(d < 1e-5, "{arch:?} f32: {d}");
    }
    let m = tiny(Arch::Llama, DType::F32);
    let x = Tensor::zeros((2, 3, m.cfg.hidden_size), DType::F32, &Device::Cpu).unwrap();
    assert!(m.block_last(1, &x, &[0], Mode::Inference).is_err());
    let empty = Tensor::zeros((1, 0, m.cfg.hidden_size), DType::F32, &Device::Cpu).unwrap();
    assert!(m.block_last(1, &empty, &[0], Mode::Inference).is_err());
    assert!(m.block_last(99, &x, &[0, 0], Mode::Inference).is_err());
}

/// Backprop through one block in differentiable mode equals central finite differences (f64),
/// and every variable of the block receives a non-zero gradient.
#[test]
fn block_gradients_match_finite_differences() {
    for arch in ARCHS {
        let (m, vars, x0, pads) = trainable_block_1(arch);
        // Seeded, so that a failure reproduces (`Tensor::randn` is unseeded on the CPU). With
        // candle's own gelu backward (six-digit constants) this probe fails for Gemma 2.
        let probe = seeded_probe(x0.dims(), 11);
        let loss = |m: &Model| -> Tensor {
            let y = m
                .forward_layers(
                    x0.clone(),
                    &pads,
                    1..2,
                    None,
                    &mut NoHook,
                    Mode::Differentiable,
                )
                .unwrap();
            (y * &probe).unwrap().sum_all().unwrap()
        };
        let grads = loss(&m).backward().unwrap();
        for (name, v) in &vars {
            let g = grads
                .get(v)
                .unwrap_or_else(|| panic!("{arch:?}: {name} received no gradient"));
            let gv: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                gv.iter().any(|x| *x != 0.0),
                "{arch:?}: {name} has an all-zero gradient"
            );
            // Check three entries by central differences.
            let at = [0, gv.len() / 2, gv.len() - 1];
            let fds =
                central_differences(v, &at, 1e-5, &mut || loss(&m).to_scalar::<f64>().unwrap())
                    .unwrap();
            for (&i, fd) in at.iter().zip(fds) {
                let err = (fd - gv[i]).abs() / fd.abs().max(gv[i].abs()).max(1e-3);
                assert!(
                    err < 1e-4,
                    "{arch:?} {name}[{i}]: backprop {} vs finite difference {fd}",
                    gv[i]
                );
            }
        }
    }
}

#[test]
fn unpermute_inverts_the_llama_cpp_permutation() {
    let (heads, hd, inner) = (4, 8, 5);
    let w = Tensor::arange(0f32, (heads * hd * inner) as f32, &Device::Cpu)
        .unwrap()
        .reshape((heads * hd, inner))
        .unwrap();
    // llama.cpp's converter: reshape(n_head, 2, hd/2, in).swapaxes(1, 2).
    let permuted = w
        .reshape((heads, 2, hd / 2, inner))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((heads * hd, inner))
        .unwrap();
    assert!(max_diff(&w, &permuted) > 0.0);
    let back = steerkit_model::gguf::unpermute(&permuted, heads).unwrap();
    assert_eq!(max_diff(&w, &back), 0.0);
}

#[test]
fn hugging_face_folder_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ARCHS {
        let m = tiny(arch, DType::F32);
        let out = dir.path().join(format!("{arch:?}"));
        steerkit_model::hf::save_folder(&m, None, None, &out).unwrap();
        let f = steerkit_model::hf::HfFolder::open(&out).unwrap();
        let back = f.model(&Device::Cpu, DType::F32).unwrap();
        assert_eq!(back.cfg.tie_word_embeddings, m.cfg.tie_word_embeddings);
        assert_eq!(
            max_diff(
                &logits(&m, &rows(), &mut NoHook),
                &logits(&back, &rows(), &mut NoHook)
            ),
            0.0
        );
        assert!(
            steerkit_model::hf::save_folder(&m, None, None, &out).is_err(),
            "no overwrite"
        );
    }
    // What the block does not compute is refused, not loaded into wrong logits.
    let out = dir.path().join("Llama");
    let cfg_path = out.join("config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let mut plain: serde_json::Value = serde_json::from_str(&original).unwrap();
    plain["rope_scaling"] = serde_json::json!({"rope_type": "default"});
    for (key, value, needle) in [
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0}),
            "no number `low_freq_factor`",
        ),
        (
            "rope_scaling",
            serde_json::json!({"type": "dynamic", "factor": 2.0}),
            "RoPE scaling `dynamic`",
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "original_max_position_embeddings": 64}),
            "yarn rope_scaling has no number `factor`",
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "beta_fast": 1.0, "beta_slow": 2.0}),
            "beta_fast > beta_slow",
        ),
        ("hidden_act", serde_json::json!("gelu"), "activation `gelu`"),
    ] {
        let mut c = plain.clone();
        c[key] = value;
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        let err = steerkit_model::hf::HfFolder::open(&out)
            .and_then(|f| f.config())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    std::fs::write(&cfg_path, plain.to_string()).unwrap();
    steerkit_model::hf::HfFolder::open(&out)
        .unwrap()
        .config()
        .unwrap();
}

/// `Ablate::only_layers` ablates in the chosen blocks and nowhere else.
#[test]
fn ablation_restricted_to_layers() {
    let m = tiny(Arch::Llama, DType::F32);
    let dir = Tensor::randn(0f32, 1.0, 32, &Device::Cpu).unwrap();
    let unit = dir
        .broadcast_div(&dir.sqr().unwrap().sum_all().unwrap().sqrt().unwrap())
        .unwrap();
    let site = |layer| Site {
        layer,
        point: HookPoint::Output,
    };
    let mut rec = Record::new(vec![site(0), site(1)], vec![-1]);
    {
        let mut chain = Chain(vec![
            Box::new(
                Ablate::new(&dir, &HookPoint::ALL)
                    .unwrap()
                    .only_layers(1..2),
            ),
            Box::new(&mut rec),
        ]);
        logits(&m, &rows(), &mut chain);
    }
    let proj = |layer| {
        rec.get(site(layer))
            .unwrap()
            .broadcast_matmul(&unit.reshape((32, 1)).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(
        proj(0) > 1e-2,
        "layer 0 must keep its component: {}",
        proj(0)
    );
    assert!(proj(1) < 1e-5, "layer 1 must be ablated: {}", proj(1));
}

#[test]
fn shared_prefix_length_leaves_every_row_a_token() {
    use steerkit_model::shared_prefix_len;
    assert_eq!(shared_prefix_len(&[vec![1, 2, 3], vec![1, 2, 4, 5]]), 2);
    assert_eq!(shared_prefix_len(&[vec![1, 2], vec![1, 2, 3]]), 1);
    assert_eq!(shared_prefix_len(&[vec![1, 2, 3]]), 2);
    assert_eq!(shared_prefix_len(&[vec![7, 2], vec![1, 2]]), 0);
    assert_eq!(shared_prefix_len(&[]), 0);
}

/// Rows that share their first tokens: the shared tokens run once ([`Model::prefix_cache`]),
/// then the left-padded rest of every row runs after them. Every position's hidden state and a
/// decoding step after it equal each row run alone from its first token.
#[test]
fn a_shared_prefix_equals_a_full_forward() {
    for arch in ARCHS {
        let m = tiny(arch, DType::F32);
        let prefix = [11u32, 12, 13, 14];
        let rest = rows();
        let rows: Vec<Vec<u32>> = rest
            .iter()
            .map(|r| prefix.iter().chain(r).copied().collect())
            .collect();
        let (pre, out) = m
            .prefix_cache(&prefix, m.cfg.num_layers, &mut NoHook)
            .unwrap();
        assert_eq!(out.unwrap().dims(), &[1, 4, 32]);
        let (ids, pads) = left_pad(&rest, 0, &Device::Cpu).unwrap();
        let mut cache = pre.shared(rows.len()).unwrap();
        let h = m
            .forward(&ids, &pads, Some(&mut cache), &mut NoHook, Mode::Inference)
            .unwrap();
        let next = Tensor::new(&[[5u32], [6], [7]], &Device::Cpu).unwrap();
        let step = m
            .forward(&next, &pads, Some(&mut cache), &mut NoHook, Mode::Inference)
            .unwrap();
        let t = h.dim(1).unwrap();
        for (i, r) in rows.iter().enumerate() {
            let alone = Tensor::new(r.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let full = m
                .forward(&alone, &[0], None, &mut NoHook, Mode::Inference)
                .unwrap();
            // The row's own positions: the last `r.len() - 4` columns of the shared run.
            let own = r.len() - prefix.len();
            let got = h.narrow(0, i, 1).unwrap().narrow(1, t - own, own).unwrap();
            let want = full.narrow(1, prefix.len(), own).unwrap();
            let d = max_diff(&got, &want);
            assert!(d < 1e-5, "{arch:?} row {i}: {d}");
            // One decoding step continues the same sequence.
            let mut longer = r.clone();
            longer.push(5 + i as u32);
            let ids = Tensor::new(longer.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let full = m
                .forward(&ids, &[0], None, &mut NoHook, Mode::Inference)
                .unwrap();
            let d = max_diff(
                &step.narrow(0, i, 1).unwrap(),
                &full.narrow(1, longer.len() - 1, 1).unwrap(),
            );
            assert!(d < 1e-5, "{arch:?} row {i}, decoding: {d}");
        }
    }
    // A cache of two rows cannot be shared.
    let m = tiny(Arch::Llama, DType::F32);
    let (ids, pads) = left_pad(&rows()[1..], 0, &Device::Cpu).unwrap();
    let mut two = KvCache::new();
    m.forward(&ids, &pads, Some(&mut two), &mut NoHook, Mode::Inference)
        .unwrap();
    assert!(two.shared(3).is_err());
}

/// Llama 3.1's RoPE scaling. Llama-3.1-8B's divisors (θ 500000, head 128, factor 8, low 1,
/// high 4, original context 8192) equal the rule's values computed separately in Python; the
/// rule is read back from its divisors alone (what a GGUF file holds); a model with the rule
/// computes other logits than without it, the same after a folder round trip, and the same
/// as with its divisors; divisors that follow no rule survive a folder round trip too. Linear
/// scaling divides every frequency by its factor and survives a folder round trip; equal
/// divisors (from a GGUF file) are written back to config.json as linear scaling.
#[test]
fn llama3_rope_scaling() {
    use steerkit_model::{Config, RopeScaling};
    let mut big = tiny_config(Arch::Llama, 64);
    big.rope_theta = 500_000.0;
    big.head_dim = 128;
    big.rope_scaling = Some(RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    });
    let d = big.rope_divisors().unwrap();
    assert_eq!(d.len(), 64);
    assert!(d[..29].iter().all(|x| *x == 1.0), "{d:?}");
    assert!(d[35..].iter().all(|x| *x == 8.0), "{d:?}");
    let python = [1.207484, 1.553415, 2.026313, 2.69453, 3.684253, 5.257327];
    for (i, want) in (29..35).zip(python) {
        assert!(
            (d[i] - want).abs() < 1e-5,
            "divisor {i}: {} vs {want}",
            d[i]
        );
    }
    let from_file = RopeScaling::Divisors(d.clone());
    assert_eq!(
        from_file.to_hf_json(&big),
        big.rope_scaling.as_ref().unwrap().to_hf_json(&big)
    );

    // A tiny llama whose frequencies fall between the boundaries and beyond them.
    let mut cfg = tiny_config(Arch::Llama, 64);
    let rule = tiny_rope_scaling();
    cfg.rope_scaling = Some(rule.clone());
    let scaled = random_model(cfg.clone(), DType::F32, 7).unwrap();
    let plain = tiny(Arch::Llama, DType::F32);
    let want = logits(&scaled, &rows(), &mut NoHook);
    assert!(max_diff(&want, &logits(&plain, &rows(), &mut NoHook)) > 1e-3);
    let with = |scaling: RopeScaling| {
        let mut m = scaled.clone();
        m.cfg = Config {
            rope_scaling: Some(scaling),
            ..cfg.clone()
        };
        m
    };
    let divided = with(RopeScaling::Divisors(cfg.rope_divisors().unwrap()));
    assert_eq!(
        max_diff(&want, &logits(&divided, &rows(), &mut NoHook)),
        0.0
    );
    // Linear scaling divides every frequency by its factor, and changes the logits.
    let linear = with(RopeScaling::Linear { factor: 2.0 });
    let halved: Vec<f32> = (0..cfg.head_dim / 2)
        .map(|i| 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / cfg.head_dim as f32) / 2.0)
        .collect();
    assert_eq!(linear.cfg.rope_frequencies(), halved);
    let mut unscaled = scaled.clone();
    unscaled.cfg.rope_scaling = None;
    assert!(
        max_diff(
            &logits(&linear, &rows(), &mut NoHook),
            &logits(&unscaled, &rows(), &mut NoHook)
        ) > 1e-3
    );
    let dir = tempfile::tempdir().unwrap();
    for (name, m, expect) in [
        ("rule", scaled.clone(), rule.clone()),
        ("divisors", divided, rule.clone()),
        (
            "other",
            with(RopeScaling::Divisors(vec![1.0, 2.0, 3.0, 5.0])),
            RopeScaling::Divisors(vec![1.0, 2.0, 3.0, 5.0]),
        ),
        ("linear", linear, RopeScaling::Linear { factor: 2.0 }),
        (
            "equal divisors",
            with(RopeScaling::Divisors(vec![2.0; 4])),
            RopeScaling::Linear { factor: 2.0 },
        ),
    ] {
        let out = dir.path().join(name);
        steerkit_model::hf::save_folder(&m, None, None, &out).unwrap();
        let back = steerkit_model::hf::HfFolder::open(&out)
            .unwrap()
            .model(&Device::Cpu, DType::F32)
            .unwrap();
        assert_eq!(back.cfg.rope_scaling.as_ref(), Some(&expect), "{name}");
        let got = logits(&back, &rows(), &mut NoHook);
        assert!(
            max_diff(&logits(&m, &rows(), &mut NoHook), &got) < 1e-6,
            "{name}"
        );
    }
}

/// A model's fingerprint hashes its serialized configuration. Without RoPE scaling the
/// configuration serializes as it did before scaling existed (the field is left out), so run
/// folders made then still match their model.
#[test]
fn configuration_without_rope_scaling_serializes_as_before() {
    let s = serde_json::to_string(&tiny_config(Arch::Qwen2, 64)).unwrap();
    assert_eq!(
        s,
        r#"{"arch":"qwen2","vocab_size":64,"hidden_size":32,"intermediate_size":48,"num_layers":2,"num_heads":4,"num_kv_heads":2,"head_dim":8,"rms_norm_eps":0.00001,"rope_theta":10000.0,"max_position_embeddings":256,"tie_word_embeddings":false,"attention_bias":true}"#
    );
}

/// bf16 on the CPU: the matrices are stored in bf16, everything else and the computation in
/// f32. Logits (decode-sized batches through the bf16 kernel, prefill-sized ones through the
/// widened GEMM, the KV cache) equal those of the f32 model with bf16-rounded matrices, and a
/// trained block gets the same gradients with bf16 blocks above it.
#[test]
fn bf16_matrices_on_the_cpu() {
    use steerkit_model::bf16::KERNEL_MAX_ROWS;
    for arch in ARCHS {
        let f32m = tiny(arch, DType::F32);
        let m = tiny(arch, DType::BF16);
        assert_eq!((m.dtype, m.matrix_dtype()), (DType::F32, DType::BF16));
        let norm = m.layers[0]
            .attn_norm
            .as_ref()
            .or(m.layers[0].post_attn_norm.as_ref());
        assert_eq!(norm.unwrap().dtype(), DType::F32);
        let (half, full) = (m.weight_bytes(), f32m.weight_bytes());
        assert!(
            half < full && half * 2 > full,
            "{half} bytes against {full} in f32"
        );
        let r = steerkit_model::bf16::rounded_matrices(&f32m).unwrap();
        // 21 rows (the kernel) and 3 x 100 = 300 rows (above KERNEL_MAX_ROWS: widened GEMM).
        let long: Vec<Vec<u32>> = (0..3)
            .map(|i| (0..100).map(|c| (c * 7 + i * 3) % 64).collect())
            .collect();
        assert!(rows().len() * 7 <= KERNEL_MAX_ROWS && long.len() * 100 > KERNEL_MAX_ROWS);
        for batch in [rows(), long] {
            let got = logits(&m, &batch, &mut NoHook);
            let d = max_diff(&got, &logits(&r, &batch, &mut NoHook));
            assert!(d < 1e-4, "{arch:?}: {d} against the rounded f32 model");
            let d = max_diff(&got, &logits(&f32m, &batch, &mut NoHook));
            assert!(d > 1e-4, "{arch:?}: the matrices were not rounded ({d})");
        }
        // Decoding one token per row with the cache (one kernel call per matrix per step).
        let heads: Vec<Vec<u32>> = rows().iter().map(|r| r[..r.len() - 1].to_vec()).collect();
        let (ids, pads) = left_pad(&heads, 0, &Device::Cpu).unwrap();
        let mut cache = KvCache::new();
        m.forward(&ids, &pads, Some(&mut cache), &mut NoHook, Mode::Inference)
            .unwrap();
        let last: Vec<u32> = rows().iter().map(|r| *r.last().unwrap()).collect();
        let ids = Tensor::from_vec(last, (3, 1), &Device::Cpu).unwrap();
        let h = m
            .forward(&ids, &pads, Some(&mut cache), &mut NoHook, Mode::Inference)
            .unwrap();
        let inc = m.logits(&h.squeeze(1).unwrap()).unwrap();
        let d = max_diff(&logits(&r, &rows(), &mut NoHook), &inc);
        assert!(d < 1e-4, "{arch:?}: cached decoding {d}");
        // Block 0 trained in f32 under bf16 block 1 and head: the same gradients as the
        // rounded f32 model's.
        let grads = |mut model: Model| -> Vec<(String, Tensor)> {
            let vars = model.trainable_block(0).unwrap();
            let (ids, pads) = left_pad(&rows(), 0, &Device::Cpu).unwrap();
            let h = model
                .forward(&ids, &pads, None, &mut NoHook, Mode::Differentiable)
                .unwrap();
            let loss = model.logits(&h).unwrap().sqr().unwrap().mean_all().unwrap();
            let g = loss.backward().unwrap();
            vars.into_iter()
                .map(|(n, v)| {
                    assert_eq!(v.dtype(), DType::F32, "{n} is trained in f32");
                    (n, g.get(v.as_tensor()).expect("a gradient").clone())
                })
                .collect()
        };
        for ((n, a), (_, b)) in grads(m.clone()).iter().zip(grads(r.clone()).iter()) {
            let scale = max_diff(b, &b.zeros_like().unwrap()).max(1e-6);
            let d = max_diff(a, b) / scale;
            assert!(d < 1e-3, "{arch:?} {n}: relative gradient difference {d}");
        }
    }
}

/// YaRN from config.json: the defaults as transformers 5 reads them (betas 32 and 1, the
/// original context from `max_position_embeddings`, attention factor `0.1 ln(factor) + 1`,
/// or DeepSeek's `mscale` ratio), divisors between 1 and the factor ramped over the
/// dimensions the betas give (or not rounded, with `truncate: false`), logits changed, and a
/// folder round trip that keeps the rule and the logits; transformers 5's `rope_parameters`
/// (the base inside) read, and what the block does not compute (RoPE per layer type, partial
/// rotation, an o_proj bias, YaRN factors under 1) refused.
#[test]
fn yarn_rope_scaling_from_config_json() {
    use steerkit_model::RopeScaling;
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(Arch::Qwen3, DType::F32);
    let out = dir.path().join("q3");
    steerkit_model::hf::save_folder(&m, None, None, &out).unwrap();
    let cfg_path = out.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    // The folder's configuration with config.json replaced by `json`.
    let config_of = |json: &serde_json::Value| {
        std::fs::write(&cfg_path, json.to_string()).unwrap();
        steerkit_model::hf::HfFolder::open(&out).unwrap().config()
    };
    c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    let cfg = config_of(&c).unwrap();
    let folder = steerkit_model::hf::HfFolder::open(&out).unwrap();
    let want = RopeScaling::Yarn {
        factor: 4.0,
        original_max_position_embeddings: m.cfg.max_position_embeddings as f64,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attention_factor: 0.1 * 4f64.ln() + 1.0,
        truncate: true,
    };
    assert_eq!(cfg.rope_scaling, Some(want.clone()));
    // head_dim 16, theta 1e4, context 256: the betas fall at dimensions 0.21 and 3.22,
    // rounded outwards to 0 and 4, so frequency 0 is kept, 1..=3 are ramped and 4..=7 are
    // divided by the factor.
    let d = cfg.rope_divisors().unwrap();
    for (i, di) in d.iter().enumerate() {
        let ramp = (i as f64 / 4.0).min(1.0);
        let want = 1.0 / (ramp / 4.0 + 1.0 - ramp);
        assert!(
            (*di as f64 - want).abs() < 1e-6,
            "divisor {i}: {di} vs {want}"
        );
    }
    assert_eq!((d[0], d[7]), (1.0, 4.0));
    let scaled = folder.model(&Device::Cpu, DType::F32).unwrap();
    let ids = Tensor::new(&[[3u32, 9, 27, 61, 4, 12]], &Device::Cpu).unwrap();
    let logits = |m: &steerkit_model::Model| {
        let h = m
            .forward(&ids, &[0], None, &mut NoHook, Mode::Inference)
            .unwrap();
        m.logits(&h).unwrap()
    };
    assert!(max_abs_diff(&logits(&scaled), &logits(&m)).unwrap() > 1e-2);
    // Round trip: the same rule (written with every key) and the same logits.
    let again = dir.path().join("again");
    steerkit_model::hf::save_folder(&scaled, None, None, &again).unwrap();
    let back = steerkit_model::hf::HfFolder::open(&again).unwrap();
    assert_eq!(back.config().unwrap().rope_scaling, Some(want));
    let back = back.model(&Device::Cpu, DType::F32).unwrap();
    assert_eq!(max_abs_diff(&logits(&back), &logits(&scaled)).unwrap(), 0.0);
    // `truncate: false` keeps the beta dimensions unrounded (0.21 and 3.22 here).
    c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0, "truncate": false});
    let cfg = config_of(&c).unwrap();
    let d = cfg.rope_divisors().unwrap();
    let dim_of =
        |turns: f64| 16.0 * (256.0 / (turns * std::f64::consts::TAU)).ln() / (2.0 * 1e4f64.ln());
    let (lo, hi) = (dim_of(32.0), dim_of(1.0));
    assert!(
        (lo - 0.21).abs() < 0.01 && (hi - 3.22).abs() < 0.01,
        "{lo} {hi}"
    );
    let ramp = |i: f64| ((i - lo) / (hi - lo)).clamp(0.0, 1.0);
    for (i, di) in d.iter().enumerate() {
        let want = 1.0 / (ramp(i as f64) / 4.0 + 1.0 - ramp(i as f64));
        assert!(
            (*di as f64 - want).abs() < 1e-3,
            "unrounded divisor {i}: {di} vs {want}"
        );
    }
    // Frequency 3 is near the unrounded high end (2.29 with the ends rounded to 0 and 4).
    assert!(d[3] > 3.0, "{}", d[3]);
    // Factors under 1 are refused, as transformers refuses them.
    c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 0.5});
    let err = config_of(&c).unwrap_err().to_string();
    assert!(err.contains("factor >= 1"), "{err}");
    // transformers 5 writes the base and the scaling as `rope_parameters`, with no top-level
    // `rope_theta`: read from there, not left at the default 10,000.
    let mut v5 = c.clone();
    v5.as_object_mut().unwrap().remove("rope_theta");
    v5.as_object_mut().unwrap().remove("rope_scaling");
    v5["rope_parameters"] =
        serde_json::json!({"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0});
    let cfg = config_of(&v5).unwrap();
    assert_eq!(cfg.rope_theta, 1e6);
    assert!(matches!(cfg.rope_scaling, Some(RopeScaling::Yarn { factor, .. }) if factor == 4.0));
    v5["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 5e5});
    let cfg = config_of(&v5).unwrap();
    assert_eq!((cfg.rope_theta, cfg.rope_scaling), (5e5, None));
    // Partial rotation is Phi-3's: transformers' Qwen3 turns whole heads whatever the key
    // says, so steerkit refuses it there rather than compute something else.
    v5["partial_rotary_factor"] = serde_json::json!(0.5);
    let err = config_of(&v5).unwrap_err().to_string();
    assert!(err.contains("phi3 only"), "{err}");
    v5.as_object_mut().unwrap().remove("partial_rotary_factor");
    for (params, needle) in [
        (
            serde_json::json!({"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}),
            "per layer type",
        ),
        (
            serde_json::json!({"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}),
            "linear, llama3, yarn and longrope scaling only",
        ),
    ] {
        v5["rope_parameters"] = params;
        let err = config_of(&v5).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    // An o_proj bias (attention_bias outside qwen2) is refused, not dropped.
    v5["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 5e5});
    v5["attention_bias"] = serde_json::json!(true);
    let err = config_of(&v5).unwrap_err().to_string();
    assert!(err.contains("o_proj bias"), "{err}");
    v5["attention_bias"] = serde_json::json!(false);
    v5["mlp_bias"] = serde_json::json!(true);
    let err = config_of(&v5).unwrap_err().to_string();
    assert!(err.contains("mlp_bias"), "{err}");
    v5.as_object_mut().unwrap().remove("mlp_bias");
    // DeepSeek's form: the attention factor is a ratio of two mscale formulas.
    c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.707, "original_max_position_embeddings": 64});
    let cfg = config_of(&c).unwrap();
    let get = |m: f64| 0.1 * m * 40f64.ln() + 1.0;
    assert!((cfg.rope_attention_factor() - get(1.0) / get(0.707)).abs() < 1e-12);
}

/// Fingerprints tell the numerics apart (so that caches made one way are not reused
/// another): f32 has the source's fingerprint as before marks existed, bf16 matrices on the
/// CPU add `+bf16`, arithmetic in a half dtype (GPUs; loadable on the CPU through the
/// library) adds `+f16-compute`; the source part is the same for all.
#[test]
fn fingerprints_mark_the_numerics() {
    use steerkit_model::{describe_numerics, load, split_fingerprint, LoadOptions};
    let path = common::model_path("smollm2-135m-instruct");
    let at = |dtype: DType| {
        let m = load(
            &path,
            &LoadOptions {
                device: Device::Cpu,
                dtype,
            },
        )
        .unwrap();
        (m.fingerprint().unwrap(), m.source_fingerprint().unwrap())
    };
    let (f32f, source) = at(DType::F32);
    assert_eq!(f32f, source);
    let (bf16f, _) = at(DType::BF16);
    let (f16f, _) = at(DType::F16);
    assert_eq!(split_fingerprint(&bf16f), (source.as_str(), "+bf16"));
    assert_eq!(split_fingerprint(&f16f), (source.as_str(), "+f16-compute"));
    assert_eq!(split_fingerprint(&f32f), (source.as_str(), ""));
    assert_eq!(describe_numerics(""), "f32 weights and arithmetic");
    assert_eq!(describe_numerics("+bf16"), "bf16 matrices on the CPU");
    assert_eq!(describe_numerics("+f16-compute"), "f16 arithmetic");
}

/// The sampled fingerprint reads more than the file's ends: a change throughout 2 MiB in the
/// middle of the weights (where a re-exported model with another trained block differs: same
/// size, same header) gives another one, while the fingerprint run folders record stays (it
/// reads the ends only, as it always has); an unchanged copy elsewhere gives the same of both.
#[test]
fn sampled_fingerprints_see_the_middle_of_the_weights() {
    use steerkit_model::{load, LoadOptions};
    let path = common::model_path("smollm2-135m-instruct");
    let dir = tempfile::tempdir().unwrap();
    let fp = |p: &std::path::Path| {
        let m = load(p.to_str().unwrap(), &LoadOptions::default()).unwrap();
        (
            m.source_fingerprint().unwrap(),
            m.sampled_fingerprint().unwrap(),
        )
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let copy = dir.path().join("copy.gguf");
    std::fs::write(&copy, &bytes).unwrap();
    let (ends, sampled) = fp(std::path::Path::new(&path));
    assert_ne!(ends, sampled);
    assert_eq!(fp(&copy), (ends.clone(), sampled.clone()));
    // The low bit of 2 MiB of quantized weights from 50 MB in (of 98 MB; an offset off the
    // sampling grid): finite values still.
    let (mid, n) = (50_000_000, 2 << 20);
    assert!(mid > (1 << 20) && bytes.len() - mid - n > (1 << 20));
    for b in &mut bytes[mid..mid + n] {
        *b ^= 1;
    }
    std::fs::write(&copy, &bytes).unwrap();
    let (ends2, sampled2) = fp(&copy);
    assert_eq!(ends2, ends);
    assert_ne!(sampled2, sampled);
}

/// Folders in f16 say so in config.json and load back as the rounded weights; a weight beyond
/// f16's range is an error naming it, and nothing is left at the output path.
#[test]
fn f16_folders_and_weights_beyond_range() {
    use steerkit_model::hf::{save_folder_as, HfFolder};
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny(Arch::Llama, DType::F32);
    let out = dir.path().join("f16");
    save_folder_as(&m, None, None, &out, DType::F16).unwrap();
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["torch_dtype"], "float16");
    let back = HfFolder::open(&out)
        .unwrap()
        .model(&Device::Cpu, DType::F32)
        .unwrap();
    let rounded = m.layers[0]
        .dense()
        .unwrap()
        .up
        .weight
        .to_dtype(DType::F16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(
        max_abs_diff(&back.layers[0].dense().unwrap().up.weight, &rounded).unwrap(),
        0.0
    );
    let down = &mut m.layers[1].dense_mut().unwrap().down;
    down.weight = (down.weight.clone() * 1e6).unwrap();
    let big = dir.path().join("big");
    let err = save_folder_as(&m, None, None, &big, DType::F16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.1.mlp.down_proj.weight") && err.contains("f16's range"),
        "{err}"
    );
    assert!(!big.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "a temporary folder was left"
    );
}

/// config.json's sliding windows, read as transformers reads them: `sliding_window` absent is
/// 4096 and null is none; Llama has no window (`layer_types` ignored); Mistral's is on every
/// block (`layer_types` ignored); Qwen's only with `use_sliding_window`, on the blocks
/// `layer_types` names or else from `max_window_layers`; Gemma 3's on all blocks but every
/// `sliding_window_pattern`-th, Gemma 2's on every other block, both keeping their kinds of
/// block without a window. An unknown layer type, a `layer_types` of the wrong length, a window
/// of 0 and an embedding model's bidirectional attention are refused.
#[test]
fn sliding_windows_from_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let window_of = |arch: Arch, edit: &dyn Fn(&mut serde_json::Value)| {
        let out = dir.path().join(arch.name());
        if !out.exists() {
            steerkit_model::hf::save_folder(&tiny(arch, DType::F32), None, None, &out).unwrap();
        }
        let path = out.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for k in [
            "sliding_window",
            "use_sliding_window",
            "max_window_layers",
            "layer_types",
            "sliding_window_pattern",
        ] {
            c.as_object_mut().unwrap().remove(k);
        }
        edit(&mut c);
        std::fs::write(&path, c.to_string()).unwrap();
        steerkit_model::hf::HfFolder::open(&out)
            .unwrap()
            .config()
            .map(|c| (c.sliding_window, c.full_attention_layers))
            .map_err(|e| e.to_string())
    };
    use serde_json::json;
    let none = Ok((None, vec![]));
    let set =
        |k: &'static str, v: serde_json::Value| move |c: &mut serde_json::Value| c[k] = v.clone();
    let mixed = json!(["sliding_attention", "full_attention"]);
    // Llama: never a window.
    assert_eq!(
        window_of(Arch::Llama, &set("sliding_window", json!(8))),
        none
    );
    assert_eq!(
        window_of(Arch::Llama, &set("layer_types", mixed.clone())),
        none
    );
    // Mistral: transformers' 4096 when absent (v0.1), none when null (v0.2 and later).
    assert_eq!(window_of(Arch::Mistral, &|_| {}), Ok((Some(4096), vec![])));
    assert_eq!(
        window_of(Arch::Mistral, &set("sliding_window", json!(null))),
        none
    );
    assert_eq!(
        window_of(Arch::Mistral, &set("layer_types", mixed.clone())),
        Ok((Some(4096), vec![]))
    );
    // Qwen2.5's configs carry a window that is off.
    let qwen = |on: bool, from: u64| {
        move |c: &mut serde_json::Value| {
            c["sliding_window"] = json!(32768);
            c["use_sliding_window"] = json!(on);
            c["max_window_layers"] = json!(from);
        }
    };
    assert_eq!(window_of(Arch::Qwen2, &qwen(false, 0)), none);
    assert_eq!(window_of(Arch::Qwen2, &qwen(true, 2)), none);
    assert_eq!(
        window_of(Arch::Qwen3, &qwen(true, 0)),
        Ok((Some(32768), vec![]))
    );
    assert_eq!(
        window_of(Arch::Qwen2, &qwen(true, 1)),
        Ok((Some(32768), vec![0]))
    );
    assert_eq!(
        window_of(Arch::Qwen3, &set("layer_types", mixed.clone())),
        none
    );
    let typed = |c: &mut serde_json::Value| {
        c["use_sliding_window"] = json!(true);
        c["layer_types"] = json!(["sliding_attention", "full_attention"]);
    };
    assert_eq!(window_of(Arch::Qwen3, &typed), Ok((Some(4096), vec![1])));
    // Gemma: every sixth block (neither of the two here) or as the pattern says; kinds kept
    // without a window.
    let gemma = |pattern: Option<u64>| {
        move |c: &mut serde_json::Value| {
            c["sliding_window"] = json!(512);
            if let Some(p) = pattern {
                c["sliding_window_pattern"] = json!(p);
            }
        }
    };
    assert_eq!(
        window_of(Arch::Gemma3, &gemma(None)),
        Ok((Some(512), vec![]))
    );
    assert_eq!(
        window_of(Arch::Gemma3, &gemma(Some(2))),
        Ok((Some(512), vec![1]))
    );
    assert_eq!(window_of(Arch::Gemma2, &|_| {}), Ok((Some(4096), vec![1])));
    assert_eq!(
        window_of(Arch::Gemma2, &set("sliding_window", json!(null))),
        Ok((None, vec![1]))
    );
    assert_eq!(
        window_of(
            Arch::Gemma3,
            &set(
                "layer_types",
                json!(["full_attention", "sliding_attention"])
            )
        ),
        Ok((Some(4096), vec![0]))
    );
    for (arch, edit, needle) in [
        (
            Arch::Gemma3,
            set("layer_types", json!(["sliding_attention"])),
            "names 1 blocks of 2",
        ),
        (
            Arch::Gemma2,
            set(
                "layer_types",
                json!(["chunked_attention", "full_attention"]),
            ),
            "chunked_attention",
        ),
        (
            Arch::Mistral,
            set("sliding_window", json!(0)),
            "window of 0",
        ),
        (
            Arch::Gemma3,
            set("use_bidirectional_attention", json!(true)),
            "bidirectional",
        ),
    ] {
        let err = window_of(arch, &edit).unwrap_err();
        assert!(err.contains(needle), "{err}");
    }
}

/// Gemma in f16 is refused at loading: its activations overflow f16.
#[test]
fn gemma_is_not_run_in_f16() {
    for arch in [Arch::Gemma3, Arch::Gemma2] {
        let err = random_model(tiny_config(arch, 64), DType::F16, 7)
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflow f16"), "{err}");
    }
}

/// LongRoPE past the original context (the tiny phi3's is 64 positions), as transformers'
/// Phi-3 computes it, the long factors at every position of a sequence once it is longer:
/// greedy decoding that crosses 64 positions picks at every step the top token of a full
/// forward of everything before it (the cache is rebuilt at the crossing), and in a batch
/// with a shared prefix a row longer than 64 gets the last logits it gets alone (no shared
/// keys from the short factors), beside a short row that gets its own.
#[test]
fn longrope_past_the_original_context_equals_a_full_forward() {
    use steerkit_model::{generate, GenerateOptions, Sampling};
    let m = tiny(Arch::Phi3, DType::F32);
    assert_eq!(m.cfg.longrope_context(), Some(64));
    let long: Vec<u32> = (0..60u32).map(|i| (7 * i + 3) % 64).collect();
    let short: Vec<u32> = long[..12].to_vec();
    let opts = GenerateOptions {
        max_new_tokens: 10,
        sampling: Sampling::Greedy,
        stop_ids: vec![],
        pad_id: 0,
        keep_first_logprobs: false,
    };
    let g = generate(
        &m,
        &[long.clone(), short.clone()],
        &opts,
        &mut NoHook,
        &mut |_| {},
    )
    .unwrap();
    for (prompt, out) in [(&long, &g[0]), (&short, &g[1])] {
        let mut seq = prompt.clone();
        assert_eq!(out.ids.len(), 10);
        for &tok in &out.ids {
            let l: Vec<f32> = logits(&m, std::slice::from_ref(&seq), &mut NoHook)
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(
                tok,
                steerkit_model::generate::argmax(&l),
                "{} tokens",
                seq.len()
            );
            seq.push(tok);
        }
    }
    // Rows sharing their first 12 tokens: one of 70 tokens, one of 14.
    let longer: Vec<u32> = (0..70u32).map(|i| (7 * i + 3) % 64).collect();
    let rows = vec![longer.clone(), [&short[..], &[5, 9]].concat()];
    let batch = m.last_logits_of(rows.clone(), 0, 2, &mut NoHook).unwrap();
    for (i, r) in rows.iter().enumerate() {
        let alone = logits(&m, std::slice::from_ref(r), &mut NoHook);
        let d = max_diff(&batch.narrow(0, i, 1).unwrap(), &alone);
        assert!(d < 1e-5, "row {i} ({} tokens): {d}", r.len());
    }
}

/// A multimodal Mistral 3 folder (Mistral3ForConditionalGeneration: Mistral Small 3.1 and
/// 3.2; the text model's config in `text_config`, its tensors under `language_model.`, a
/// vision tower beside) is read as its text model, tied or with a head of its own as the
/// files say (transformers 5.24 writes `tie_word_embeddings: true` at the top of either), and
/// computes what the text model's own folder computes.
#[test]
fn multimodal_mistral3_folder_reads_its_text_model() {
    for tied in [true, false] {
        let mut cfg = tiny_config(Arch::Mistral, 64);
        cfg.tie_word_embeddings = tied;
        let m = random_model(cfg, DType::F32, 3).unwrap();
        let d = tempfile::tempdir().unwrap();
        let text = d.path().join("text");
        steerkit_model::hf::save_folder(&m, None, None, &text).unwrap();
        let mm = d.path().join("multimodal");
        std::fs::create_dir_all(&mm).unwrap();
        let mut text_config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(text.join("config.json")).unwrap())
                .unwrap();
        // The Hub's shape: the text config says nothing about tying, the top level says true.
        text_config
            .as_object_mut()
            .unwrap()
            .remove("tie_word_embeddings");
        let config = serde_json::json!({
            "architectures": ["Mistral3ForConditionalGeneration"],
            "model_type": "mistral3",
            "text_config": text_config,
            "vision_config": {"model_type": "pixtral", "torch_dtype": "float32"},
            "tie_word_embeddings": true,
        });
        std::fs::write(mm.join("config.json"), config.to_string()).unwrap();
        let mut stored: std::collections::HashMap<String, Tensor> = m
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (format!("language_model.{n}"), t))
            .collect();
        stored.insert(
            "multi_modal_projector.linear_1.weight".into(),
            Tensor::ones((4, 4), DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&stored, mm.join("model.safetensors")).unwrap();
        let f = steerkit_model::hf::HfFolder::open(&mm).unwrap();
        assert_eq!(f.multimodal(), Some("mistral3"));
        let back = f.model(&Device::Cpu, DType::F32).unwrap();
        assert_eq!(back.cfg.tie_word_embeddings, tied);
        assert_eq!(back.cfg.arch, Arch::Mistral);
        let gap = max_diff(
            &logits(&m, &rows(), &mut NoHook),
            &logits(&back, &rows(), &mut NoHook),
        );
        assert_eq!(gap, 0.0, "tied {tied}");
        mistral3_writes_back_whole(&f, &m, d.path());
    }
}

/// A model read from a multimodal Mistral 3 folder, written back whole in the folder's layout
/// (in f32 and bf16): the projector is carried, config.json stays the multimodal one with the dtype set,
/// and the folder reads back as the model. A head untied from the embeddings (as weight
/// orthogonalization unties it) is stored under the source's names, untied at both levels of
/// config.json. A model configured otherwise than the folder's text model is refused, with
/// nothing written.
fn mistral3_writes_back_whole(
    src: &steerkit_model::hf::HfFolder,
    m: &Model,
    dir: &std::path::Path,
) {
    use steerkit_model::hf::{save, FolderSave};
    let mut patched = m.clone();
    patched.lm_head = Some((&m.embed * 2.0).unwrap());
    patched.cfg.tie_word_embeddings = false;
    let written = |name: &str, dtype: DType| {
        let out = dir.join(name);
        let opts = FolderSave {
            dtype,
            source: Some(src),
            ..Default::default()
        };
        save(&patched, &out, &opts).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let tensors =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        (out, config, tensors)
    };
    let (_, config, stored) = written("whole-bf16", DType::BF16);
    assert_eq!(config["model_type"], "mistral3");
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["vision_config"]["torch_dtype"], "bfloat16");
    assert_eq!(config["tie_word_embeddings"], false);
    assert_eq!(config["text_config"]["tie_word_embeddings"], false);
    let projector = &stored["multi_modal_projector.linear_1.weight"];
    assert_eq!(projector.dtype(), DType::BF16);
    let total = projector.to_dtype(DType::F32).unwrap().sum_all().unwrap();
    assert_eq!(total.to_scalar::<f32>().unwrap(), 16.0);
    assert!(stored.contains_key("language_model.lm_head.weight"));
    assert!(
        !stored.keys().any(|n| n.starts_with("model.")),
        "{:?}",
        stored.keys()
    );

    let (out, _, _) = written("whole", DType::F32);
    let f = steerkit_model::hf::HfFolder::open(&out).unwrap();
    assert_eq!(f.multimodal(), Some("mistral3"));
    let back = f.model(&Device::Cpu, DType::F32).unwrap();
    assert!(!back.cfg.tie_word_embeddings);
    let d = max_diff(
        &logits(&patched, &rows(), &mut NoHook),
        &logits(&back, &rows(), &mut NoHook),
    );
    assert_eq!(d, 0.0);

    let mut other = tiny_config(Arch::Mistral, 64);
    other.num_layers += 1;
    let wrong = random_model(other, DType::F32, 4).unwrap();
    let refused = dir.join("refused");
    let opts = FolderSave {
        source: Some(src),
        ..Default::default()
    };
    let err = save(&wrong, &refused, &opts).unwrap_err().to_string();
    assert!(err.contains("not configured as"), "{err}");
    assert!(!refused.exists());
}
