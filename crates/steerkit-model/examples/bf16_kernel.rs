//! Times `y = x Wᵀ` with bf16 weights (steerkit's kernel, and the widened-GEMM path) against
//! candle's f32 product, for Qwen2.5-0.5B's matrix shapes and a range of row counts:
//! `cargo run --release -p steerkit-model --example bf16_kernel`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use steerkit_model::bf16::matmul_bf16;

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "   m      n      k | f32 GEMM ms | bf16 kernel ms | widen+GEMM ms | kernel GB/s of W"
    );
    for (n, k) in [(896, 896), (4864, 896), (896, 4864), (151_936, 896)] {
        let wf = Tensor::randn(0f32, 0.1, (n, k), &dev)?;
        let wb = wf.to_dtype(DType::BF16)?;
        let bits: Vec<u16> = wb
            .flatten_all()?
            .to_vec1::<half::bf16>()?
            .iter()
            .map(|b| b.to_bits())
            .collect();
        for m in [1, 4, 16, 32, 64, 128, 256] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let reps = if n > 100_000 { 3 } else { 10 };
            let f32_s = best_of(reps, || {
                x.matmul(&wf.t().unwrap()).unwrap();
            });
            let kern_s = best_of(reps, || {
                matmul_bf16(&xv, &bits, m, n, k);
            });
            let widen_s = best_of(reps, || {
                x.matmul(&wb.to_dtype(DType::F32).unwrap().t().unwrap())
                    .unwrap();
            });
            println!(
                "{m:>4} {n:>6} {k:>6} | {:>11.3} | {:>14.3} | {:>13.3} | {:>6.1}",
                f32_s * 1e3,
                kern_s * 1e3,
                widen_s * 1e3,
                (n * k * 2) as f64 / kern_s / 1e9
            );
        }
    }
    Ok(())
}
