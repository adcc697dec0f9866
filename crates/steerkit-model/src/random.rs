//! Tiny random models built in memory, for tests and for checks that need no download.

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{Activation, Arch, Config, RopeScaling};
use crate::error::Result;
use crate::model::Model;

/// A small configuration of the given architecture (2 layers, hidden 32, 4/2 heads of 8;
/// qwen3's and gemma3's heads are 16 wide, so that `heads * head_dim` is not the hidden size,
/// as in real models of theirs; gemma2's too). gemma3's first block attends over a sliding
/// window of 3 positions with a RoPE base of its own, its second over the whole context, as
/// Gemma 3's blocks do; gemma2's alike with one RoPE, and with attention scores soft-capped at
/// 2 and logits at 3; their attention is scaled by `8^-1/2`, not `16^-1/2`. phi3's turns 6
/// of each head's 8 dimensions and scales RoPE with LongRoPE, as Phi-4-mini does (short
/// factors 1, 1.5 and 4 below an original context of 64 positions, an attention factor of
/// 1.25, exact in the f32 a GGUF file stores it in). gpt_oss's second block attends over a
/// window of 3 (its first over everything) and its experts clamp their SwiGLU at 0.5, so
/// that random weights reach the clamp. olmo3's second block attends over a window of 3 with
/// plain RoPE of base 100, its first over everything with YaRN (factor 4 over 64 positions).
pub fn tiny_config(arch: Arch, vocab_size: usize) -> Config {
    let gemma = arch.gemma();
    let oss = arch == Arch::GptOss;
    let gemma2 = arch == Arch::Gemma2;
    let phi3 = arch == Arch::Phi3;
    let olmo3 = arch == Arch::Olmo3;
    Config {
        arch,
        vocab_size,
        hidden_size: 32,
        intermediate_size: 48,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: if arch.qk_norm() || gemma { 16 } else { 8 },
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 256,
        tie_word_embeddings: arch != Arch::Qwen2,
        attention_bias: matches!(arch, Arch::Qwen2 | Arch::Qwen2Moe | Arch::GptOss),
        rope_scaling: match arch {
            Arch::Phi3 => Some(RopeScaling::LongRope {
                short_factor: vec![1.0, 1.5, 4.0],
                long_factor: vec![2.0, 6.0, 16.0],
                original_max_position_embeddings: 64.0,
                attention_factor: 1.25,
            }),
            Arch::Olmo3 => Some(RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 64.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: crate::config::yarn_attention_factor(4.0, None, None),
                truncate: true,
            }),
            _ => None,
        },
        sliding_window: (gemma || oss || olmo3).then_some(3),
        // Block 1, which the gradient checks train, is the window's.
        full_attention_layers: if gemma || oss || olmo3 {
            vec![0]
        } else {
            vec![]
        },
        rope_local_theta: (arch == Arch::Gemma3 || olmo3).then_some(100.0),
        query_pre_attn_scalar: gemma.then_some(8.0),
        hidden_act: match arch {
            _ if gemma => Activation::GeluTanh,
            Arch::GptOss => Activation::SwigluOai {
                alpha: 1.702,
                limit: 0.5,
            },
            _ => Activation::Silu,
        },
        attn_logit_softcapping: gemma2.then_some(2.0),
        final_logit_softcapping: gemma2.then_some(3.0),
        rotary_dim: phi3.then_some(6),
        // Block 1 (the one the gradient checks train) turns nothing.
        nope_layers: if arch == Arch::SmolLm3 {
            vec![1]
        } else {
            vec![]
        },
        // Block 1 (the one the gradient checks train) routes among 4 experts, block 0 is dense.
        moe: match arch {
            // Qwen2-MoE's alike, its top weights left unnormalized, with a shared expert.
            Arch::Qwen3Moe | Arch::Qwen2Moe => Some(crate::config::MoeConfig {
                num_experts: 4,
                top_k: 2,
                intermediate_size: 24,
                norm_topk_prob: arch == Arch::Qwen3Moe,
                dense_layers: vec![0],
                shared_intermediate_size: (arch == Arch::Qwen2Moe).then_some(20),
            }),
            // Every block routes; the experts have the MLP's width, as Mixtral's and gpt-oss's
            // do (gpt-oss's router, with its bias, sends no token of the tests' rows to one
            // of 4 experts when it picks 2: it picks 3).
            Arch::Mixtral | Arch::GptOss => Some(crate::config::MoeConfig {
                num_experts: 4,
                top_k: if arch == Arch::GptOss { 3 } else { 2 },
                intermediate_size: 48,
                norm_topk_prob: true,
                dense_layers: vec![],
                shared_intermediate_size: None,
            }),
            _ => None,
        },
        multipliers: arch.granite().then_some(crate::config::Multipliers {
            embedding: 3.0,
            residual: 0.5,
            attention: 0.2,
            logits_scaling: 4.0,
        }),
    }
}

/// Llama 3 RoPE scaling for [`tiny_config`]'s head (frequencies 1, 0.1, 0.01, 0.001):
/// boundaries at wavelengths 2 and 256, so two frequencies are interpolated and two divided by
/// the factor 4, and the rule can be read back from its divisors.
pub fn tiny_rope_scaling() -> RopeScaling {
    RopeScaling::Llama3 {
        factor: 4.0,
        low_freq_factor: 1.0,
        high_freq_factor: 128.0,
        original_max_position_embeddings: 256.0,
    }
}

/// A model with normally distributed weights (std 0.2; norms near 1, gemma's offsets near 0). Each tensor is drawn
/// from a generator seeded by `seed` and its name, so the result does not depend on the
/// order in which tensors are built.
pub fn random_model(cfg: Config, dtype: DType, seed: u64) -> Result<Model> {
    let cfg_offset = cfg.arch.norm_offset();
    crate::weights::build(cfg, &Device::Cpu, dtype, |need| {
        let h = need
            .name
            .bytes()
            .fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        let mut rng = StdRng::seed_from_u64(h);
        let n: usize = need.shape.iter().product();
        let (mean, std) = if need.name.ends_with("norm.weight") {
            (1.0 - cfg_offset, 0.1)
        } else {
            (0.0, 0.2)
        };
        Ok(Some(Tensor::from_vec(
            normal(&mut rng, n, mean, std),
            need.shape.as_slice(),
            &Device::Cpu,
        )?))
    })
}

/// `n` normal draws (Box-Muller) with the given mean and standard deviation.
fn normal(rng: &mut StdRng, n: usize, mean: f64, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            (mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// A standard normal f32 vector of length `len` on the CPU, the same for the same `seed` on
/// every run (candle's `Tensor::randn` is not seeded on the CPU).
pub fn seeded_normal(len: usize, seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    Ok(Tensor::from_vec(
        normal(&mut rng, len, 0.0, 1.0),
        len,
        &Device::Cpu,
    )?)
}

/// The largest absolute entry of `a - b` (same shape, any dtype), as f64: how far apart two
/// tensors are, for tests that compare computations.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?)
}

/// Central finite differences `(f(w + eps e_i) - f(w - eps e_i)) / 2 eps` of `loss` for the
/// entries `indices` of the f64 variable `var` (which `loss` reads, e.g. a weight of a model
/// whose block was made trainable); `var` is restored afterwards. For gradient checks.
pub fn central_differences(
    var: &Var,
    indices: &[usize],
    eps: f64,
    loss: &mut dyn FnMut() -> f64,
) -> Result<Vec<f64>> {
    let w0: Vec<f64> = var.as_tensor().flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(indices.len());
    for &i in indices {
        let mut at = |delta: f64| -> Result<f64> {
            let mut w = w0.clone();
            w[i] += delta;
            var.set(&Tensor::from_vec(w, var.shape(), var.device())?)?;
            Ok(loss())
        };
        let (plus, minus) = (at(eps)?, at(-eps)?);
        out.push((plus - minus) / (2.0 * eps));
    }
    var.set(&Tensor::from_vec(w0, var.shape(), var.device())?)?;
    Ok(out)
}

/// Checks backpropagation against [`central_differences`] (step 1e-6) for each of `vars`, at
/// its first, middle and last entry: `loss` computes the scalar f64 loss from the variables'
/// current values. Returns how many entries were checked and a line for each one whose
/// gradient differs from its finite difference by more than `1e-6 + 1e-4 |fd|`.
pub fn gradient_mismatches(
    vars: &[(String, Var)],
    loss: &mut dyn FnMut() -> Result<Tensor>,
) -> Result<(usize, Vec<String>)> {
    let grads = loss()?.backward()?;
    let (mut checked, mut bad) = (0, Vec::new());
    for (name, var) in vars {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .ok_or_else(|| crate::ModelError::Input(format!("{name} received no gradient")))?
            .flatten_all()?
            .to_vec1()?;
        let at = [0, g.len() / 2, g.len() - 1];
        let fds = central_differences(var, &at, 1e-6, &mut || {
            loss()
                .and_then(|l| Ok(l.to_scalar::<f64>()?))
                .unwrap_or(f64::NAN)
        })?;
        for (&k, fd) in at.iter().zip(fds) {
            // False for a NaN on either side too.
            let close = (fd - g[k]).abs() <= 1e-6 + 1e-4 * fd.abs();
            if !close {
                bad.push(format!(
                    "{name}[{k}]: backprop {} vs finite difference {fd}",
                    g[k]
                ));
            }
            checked += 1;
        }
    }
    Ok((checked, bad))
}
