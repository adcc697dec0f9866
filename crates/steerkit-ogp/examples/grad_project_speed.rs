//! Times gradient-basis construction and projection for one SmolLM2-sized MLP matrix
//! (`[1536, 576]`, k = 4): `cargo run --release -p steerkit-ogp --example grad_project_speed`.

use candle_core::{Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gs: Vec<Tensor> = (0..4)
        .map(|_| Tensor::randn(0f32, 1.0, (1536, 576), &Device::Cpu))
        .collect::<Result<_, _>>()?;
    let t = std::time::Instant::now();
    let b = steerkit_ogp::GradBasis::new(&gs)?;
    println!(
        "basis of 4 gradients: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let u = Tensor::randn(0f32, 1.0, (1536, 576), &Device::Cpu)?;
    let t = std::time::Instant::now();
    for _ in 0..20 {
        b.project(&u)?;
    }
    println!(
        "projection: {:.2} ms each",
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    );
    Ok(())
}
