//! The capability subspace and the projector: eigenvectors, energy, orthogonality, and the
//! property that matters: a projected step leaves a block's outputs on capability inputs
//! unchanged to first order.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use steerkit_model::random::{random_model, tiny_config};
use steerkit_model::{Arch, Mode, NoHook};
use steerkit_ogp::{gpm_basis, top_eigen, Projector};

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// A deterministic dense matrix (no global random state: the test must not be flaky).
fn dense(rows: usize, cols: usize) -> Tensor {
    let v: Vec<f64> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1013) as f64 / 1013.0 - 0.5) + 0.3 * ((i as f64) * 0.37).sin())
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

#[test]
fn top_eigenvectors_satisfy_the_eigen_equation() {
    // A known spectrum: C = diag(λ) in a shuffled order, so the answer is exact.
    let lambda = [3.0, 100.0, 0.5, 25.0, 50.0, 1.0, 12.0, 6.0, 0.1, 0.2];
    let c = Tensor::from_vec(
        (0..100)
            .map(|i| {
                if i / 10 == i % 10 {
                    lambda[i / 10]
                } else {
                    0.0
                }
            })
            .collect::<Vec<f64>>(),
        (10, 10),
        &Device::Cpu,
    )
    .unwrap();
    let (u, vals) = top_eigen(&c, 4, 200).unwrap();
    for (got, want) in vals.iter().zip([100.0, 50.0, 25.0, 12.0]) {
        assert!((got - want).abs() < 1e-6 * want, "{vals:?}");
    }
    // Column j is ±e_i for the i holding the j-th largest eigenvalue.
    for (j, i) in [1usize, 4, 3, 6].iter().enumerate() {
        let x: f64 = u.get(*i).unwrap().get(j).unwrap().to_scalar().unwrap();
        assert!((x.abs() - 1.0).abs() < 1e-6, "column {j}: {x}");
    }
    // A dense case: orthonormal columns and small residuals for the leading pairs.
    let a = dense(60, 20);
    let c = a.t().unwrap().matmul(&a).unwrap();
    let (u, vals) = top_eigen(&c, 6, 100).unwrap();
    assert_eq!(u.dims(), &[20, 6]);
    let eye = u.t().unwrap().matmul(&u).unwrap();
    assert!(max_abs(&(eye - Tensor::eye(6, DType::F64, &Device::Cpu).unwrap()).unwrap()) < 1e-9);
    assert!(vals.windows(2).all(|w| w[0] >= w[1]), "{vals:?}");
    for j in 0..3 {
        let v = u.narrow(1, j, 1).unwrap();
        let r = (c.matmul(&v).unwrap() - (&v * vals[j]).unwrap()).unwrap();
        assert!(
            max_abs(&r) < 1e-4 * vals[0],
            "column {j}: residual {}",
            max_abs(&r)
        );
    }
}

#[test]
fn basis_of_a_low_rank_input_and_orthogonal_projection() {
    // Inputs in a 3-dimensional subspace of R^16, plus a little noise.
    let basis = Tensor::randn(0f64, 1.0, (3, 16), &Device::Cpu).unwrap();
    let coef = Tensor::randn(0f64, 1.0, (200, 3), &Device::Cpu).unwrap();
    let noise = (Tensor::randn(0f64, 1.0, (200, 16), &Device::Cpu).unwrap() * 1e-3).unwrap();
    let x = (coef.matmul(&basis).unwrap() + noise).unwrap();
    let b = gpm_basis(&x, 0.999, 16).unwrap();
    assert_eq!(b.u.dim(1).unwrap(), 3, "energy {}", b.energy);
    assert!(b.energy >= 0.999);
    let p = Projector::new(HashMap::from([("w".to_string(), b.u.clone())]));
    let g = Tensor::randn(0f64, 1.0, (5, 16), &Device::Cpu).unwrap();
    let (pg, removed) = p.project("w", &g).unwrap();
    // Orthogonal to the basis, and the removed part is what was taken away.
    assert!(max_abs(&pg.matmul(&b.u).unwrap()) < 1e-5);
    let diff = (g.clone() - &pg)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt();
    assert!((diff - removed).abs() < 1e-9);
    // A projected update barely moves the outputs on the capability inputs.
    let moved = max_abs(&x.matmul(&pg.t().unwrap()).unwrap());
    let unprojected = max_abs(&x.matmul(&g.t().unwrap()).unwrap());
    assert!(moved < 1e-2 * unprojected, "{moved} vs {unprojected}");
    // Other tensors pass unchanged.
    let (same, none) = p.project("other", &g).unwrap();
    assert_eq!(max_abs(&(same - &g).unwrap()), 0.0);
    assert_eq!(none, 0.0);
    assert!(gpm_basis(&x, 1.5, 4).is_err());
}

/// The inputs `linear_inputs` returns rebuild block 1's output: `x + o(mix) + down(act)` on the
/// real rows, and for Gemma (whose block 1 in the tiny config has the sliding window and the
/// local RoPE) the same with each sublayer's output normed by its post-norm, `1 + w`; for
/// OLMo 2 and 3 (no input norms: the maps read the residual itself) by its output norm, `w`.
#[test]
fn linear_inputs_reproduce_the_block() {
    for arch in [
        Arch::Qwen2,
        Arch::Gemma3,
        Arch::Gemma2,
        Arch::Olmo2,
        Arch::Olmo3,
    ] {
        let m = random_model(tiny_config(arch, 64), DType::F64, 2).unwrap();
        let x = Tensor::randn(0f64, 1.0, (2, 5, 32), &Device::Cpu).unwrap();
        let pads = [0usize, 2];
        let y = m
            .forward_layers(x.clone(), &pads, 1..2, None, &mut NoHook, Mode::Inference)
            .unwrap();
        let ins: HashMap<String, Tensor> =
            m.linear_inputs(1, &x, &pads).unwrap().into_iter().collect();
        assert_eq!(ins["mlp.down_proj.weight"].dims(), &[8, 48]);
        let blk = &m.layers[1];
        let real = |t: &Tensor| {
            Tensor::cat(
                &[
                    t.get(0).unwrap(),
                    t.get(1).unwrap().narrow(0, 2, 3).unwrap(),
                ],
                0,
            )
            .unwrap()
        };
        // The post-norm: v / sqrt(mean(v^2) + eps) * (offset + w).
        let post = |v: Tensor, w: &Option<Tensor>| match w {
            Some(w) => {
                let ms = v.sqr().unwrap().mean_keepdim(1).unwrap();
                let r = (ms + m.cfg.rms_norm_eps).unwrap().sqrt().unwrap();
                v.broadcast_div(&r)
                    .unwrap()
                    .broadcast_mul(&(w + m.cfg.arch.norm_offset()).unwrap())
                    .unwrap()
            }
            None => v,
        };
        let o = post(
            blk.o.forward(&ins["self_attn.o_proj.weight"]).unwrap(),
            &blk.post_attn_norm,
        );
        let d = post(
            blk.dense()
                .unwrap()
                .down
                .forward(&ins["mlp.down_proj.weight"])
                .unwrap(),
            &blk.post_mlp_norm,
        );
        let rebuilt = ((real(&x) + o).unwrap() + d).unwrap();
        let gap = max_abs(&(rebuilt - real(&y)).unwrap());
        assert!(gap < 1e-10, "{arch:?}: {gap}");
    }
}

#[test]
fn a_projected_step_leaves_block_outputs_on_capability_inputs_unchanged_to_first_order() {
    let mut m = random_model(tiny_config(Arch::Llama, 64), DType::F64, 3).unwrap();
    let vars = m.trainable_block(1).unwrap();
    // Capability inputs: 6 rows of 4 tokens (24 rows per linear map, below every input width).
    let cap = Tensor::randn(0f64, 1.0, (6, 4, 32), &Device::Cpu).unwrap();
    let pads = [0usize; 6];
    let bases: HashMap<String, Tensor> = m
        .linear_inputs(1, &cap, &pads)
        .unwrap()
        .into_iter()
        .map(|(n, a)| {
            (
                format!("model.layers.1.{n}"),
                gpm_basis(&a, 1.0 - 1e-12, 64).unwrap().u,
            )
        })
        .collect();
    let p = Projector::new(bases);
    let out = |m: &steerkit_model::Model| {
        m.forward_layers(cap.clone(), &pads, 1..2, None, &mut NoHook, Mode::Inference)
            .unwrap()
    };
    let y0 = out(&m);
    // An arbitrary update direction for every matrix, scaled by lr.
    let originals: Vec<Tensor> = vars
        .iter()
        .map(|(_, v)| v.as_tensor().copy().unwrap())
        .collect();
    let change = |project: bool, lr: f64| -> f64 {
        for ((name, v), w0) in vars.iter().zip(&originals) {
            let g = Tensor::randn(0f64, 1.0, v.dims(), &Device::Cpu).unwrap();
            let g = if project && v.dims().len() == 2 {
                p.project(name, &g).unwrap().0
            } else if v.dims().len() == 2 {
                g
            } else {
                g.zeros_like().unwrap()
            };
            v.set(&(w0 - (g * lr).unwrap()).unwrap()).unwrap();
        }
        let d = max_abs(&(out(&m) - &y0).unwrap());
        for ((_, v), w0) in vars.iter().zip(&originals) {
            v.set(w0).unwrap();
        }
        d
    };
    for lr in [1e-3, 1e-4] {
        let plain = change(false, lr);
        let projected = change(true, lr);
        // First order in lr without projection, second order (lr²) with it.
        assert!(
            projected < 1e-3 * plain,
            "lr {lr}: projected {projected} vs plain {plain}"
        );
    }
}

#[test]
fn gradient_basis_projection_is_orthogonal_to_every_gradient() {
    // Three gradients of a [12, 20] matrix, one a combination of the others (dropped).
    let g1 = dense(12, 20);
    let g2 = dense(20, 12)
        .t()
        .unwrap()
        .contiguous()
        .unwrap()
        .affine(0.5, 0.1)
        .unwrap();
    let g3 = ((&g1 * 2.0).unwrap() - &g2).unwrap();
    let b = steerkit_ogp::GradBasis::new(&[g1.clone(), g2.clone(), g3]).unwrap();
    assert_eq!(b.k(), 2, "the dependent gradient adds nothing");
    let u = dense(240, 1).reshape((12, 20)).unwrap().sin().unwrap();
    let (p, removed) = b.project(&u).unwrap();
    for g in [&g1, &g2] {
        let dot: f64 = (&p * g).unwrap().sum_all().unwrap().to_scalar().unwrap();
        let scale = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .sqrt();
        assert!(dot.abs() < 1e-5 * scale, "<p, g> = {dot}");
    }
    // The removed part and the kept part add up to the step.
    let back = (&u - &p).unwrap();
    let n: f64 = back
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt();
    // The basis is orthonormal to f32 rounding.
    assert!((n - removed).abs() < 1e-6 * n.max(1.0), "{n} vs {removed}");
    assert!(removed > 0.0);
    // Saved and loaded, it projects exactly the same way (a resumed run equals an
    // uninterrupted one).
    let again = steerkit_ogp::GradBasis::from_tensor(&b.to_tensor().unwrap()).unwrap();
    let (p2, _) = again.project(&u).unwrap();
    assert_eq!(max_abs(&(p2 - &p).unwrap()), 0.0);
    // A tensor that is not an orthonormal basis is refused.
    let not_a_basis = Tensor::stack(&[&g1, &g2], 0).unwrap();
    assert!(steerkit_ogp::GradBasis::from_tensor(&not_a_basis).is_err());
    // A step of another shape is an error, not a panic.
    assert!(b.project(&dense(3, 3)).is_err());
}

/// In a mixture of experts (tiny Qwen3-MoE, block 1: 2 of 4 experts per token) the router's
/// inputs are every real row and each expert's are the rows routed to it, two per row in all;
/// an expert's down projection reads its gate and up maps' output on those rows.
#[test]
fn linear_inputs_of_a_mixture_of_experts() {
    let (m, ins) = block1_inputs(Arch::Qwen3Moe);
    assert_eq!(ins["mlp.gate.weight"].dims(), &[8, 32]);
    assert_eq!(ins["self_attn.o_proj.weight"].dims(), &[8, 64]);
    let mut routed = 0;
    let Some(steerkit_model::Mlp::Moe(e)) = m.layers.get(1).map(|b| &b.mlp) else {
        panic!("block 1 is a mixture of experts")
    };
    // Each row's two largest router logits, recomputed here: the rows each expert must get.
    let h2 = &ins["mlp.gate.weight"];
    let logits: Vec<Vec<f64>> = h2
        .matmul(&e.router.t().unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    for (ex, mlp) in e.experts.iter().enumerate() {
        let want: Vec<u32> = (0..logits.len())
            .filter(|&r| logits[r].iter().filter(|&&v| v > logits[r][ex]).count() < 2)
            .map(|r| r as u32)
            .collect();
        let Some(h) = ins.get(&format!("mlp.experts.{ex}.gate_proj.weight")) else {
            assert!(want.is_empty(), "expert {ex} gets no rows");
            continue;
        };
        let expected = h2
            .index_select(&Tensor::new(want, &Device::Cpu).unwrap(), 0)
            .unwrap();
        assert_eq!(max_abs(&(h - expected).unwrap()), 0.0, "expert {ex}'s rows");
        routed += h.dim(0).unwrap();
        let g = mlp.gate.forward(h).unwrap();
        let act = (g.silu().unwrap() * mlp.up.forward(h).unwrap()).unwrap();
        let down = &ins[&format!("mlp.experts.{ex}.down_proj.weight")];
        assert_eq!(max_abs(&(act - down).unwrap()), 0.0, "expert {ex}");
    }
    assert_eq!(routed, 16);
}

/// Qwen2-MoE's shared expert (tiny config, block 1) reads every real row, as its gate does;
/// its down projection reads its gate and up maps' output on them.
#[test]
fn linear_inputs_of_a_shared_expert() {
    let (m, ins) = block1_inputs(Arch::Qwen2Moe);
    let h2 = &ins["mlp.gate.weight"];
    for name in [
        "mlp.shared_expert_gate.weight",
        "mlp.shared_expert.gate_proj.weight",
        "mlp.shared_expert.up_proj.weight",
    ] {
        assert_eq!(max_abs(&(&ins[name] - h2).unwrap()), 0.0, "{name}");
    }
    let Some(steerkit_model::Mlp::Moe(e)) = m.layers.get(1).map(|b| &b.mlp) else {
        panic!("block 1 is a mixture of experts")
    };
    let s = &e.shared.as_ref().expect("a shared expert").mlp;
    let act = (s.gate.forward(h2).unwrap().silu().unwrap() * s.up.forward(h2).unwrap()).unwrap();
    let down = &ins["mlp.shared_expert.down_proj.weight"];
    assert_eq!(max_abs(&(act - down).unwrap()), 0.0);
}

/// A tiny random `arch` model (f64) and the inputs of its block 1's maps on two random rows,
/// the second with two padding positions.
fn block1_inputs(arch: Arch) -> (steerkit_model::Model, HashMap<String, Tensor>) {
    let m = random_model(tiny_config(arch, 64), DType::F64, 2).unwrap();
    let x = Tensor::randn(0f64, 1.0, (2, 5, 32), &Device::Cpu).unwrap();
    let ins = m
        .linear_inputs(1, &x, &[0, 2])
        .unwrap()
        .into_iter()
        .collect();
    (m, ins)
}

/// On a large matrix (8M entries, an f32 gradient) the basis rows have unit length to 1e-6:
/// norms summed in one f32 pass over all entries are off by 2e-5 at this size.
#[test]
fn gradient_basis_rows_of_a_large_matrix_have_unit_length() {
    let (r, c) = (2048, 4096);
    let g = |seed: usize| {
        let v: Vec<f32> = (0..r * c)
            .map(|i| {
                let h = ((i + seed * 1_000_003) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
                (h % 20_000) as f32 / 10_000.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, (r, c), &Device::Cpu).unwrap()
    };
    let b = steerkit_ogp::GradBasis::new(&[g(1), g(2)]).unwrap();
    let q = b.to_tensor().unwrap().to_dtype(DType::F64).unwrap();
    for j in 0..2 {
        let n: f64 = q
            .get(j)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((n.sqrt() - 1.0).abs() < 1e-6, "row {j}: |q| = {}", n.sqrt());
    }
}

/// Fewer capability rows than dimensions: the basis must stay orthonormal and keep at most
/// all of the energy, however many columns `max_k` allows.
#[test]
fn basis_of_fewer_rows_than_dimensions() {
    for (rows, cols, scale) in [
        (8, 64, 1.0),
        (8, 896, 30.0),
        (3, 64, 1e-3),
        (40, 896, 100.0),
    ] {
        let x = (dense(rows, cols) * scale).unwrap();
        for energy in [0.5, 0.95, 0.999, 1.0] {
            let b = gpm_basis(&x, energy, 256).unwrap();
            let k = b.u.dim(1).unwrap();
            assert!(k >= 1 && k <= rows, "{rows}x{cols}: basis of {k}");
            assert!(
                b.energy <= 1.0 + 1e-9 && b.energy >= energy.min(1.0 - 1e-9) - 1e-9,
                "{rows}x{cols} at {energy}: energy {}",
                b.energy
            );
            let eye = b.u.t().unwrap().matmul(&b.u).unwrap();
            let err = max_abs(&(eye - Tensor::eye(k, DType::F64, &Device::Cpu).unwrap()).unwrap());
            assert!(err < 1e-6, "{rows}x{cols}: not orthonormal ({err})");
        }
    }
}
