//! Writes what a Hugging Face model folder computes on one device and dtype, so that devices,
//! dtypes and other implementations can be compared (`scripts/gpu_check.py` runs it on a GPU
//! machine, beside transformers):
//!
//! `device_check FOLDER OUT.safetensors [cpu|cuda|metal] [f32|bf16|f16]`
//!
//! OUT holds `ids` (four fixed token rows of 9 to 64 tokens, left-padded with id 0, as i64),
//! `pads`, `logits` (the last position of each row, f32) and, for f32, `grad.NAME` for every
//! tensor of the middle block: the gradient of `sum(block_last(x) * probe)`, with `x` the
//! block's input for the rows and `probe` a fixed pattern (the path ACTOR trains through).
//! It prints the time of the logits pass (best of 3, after one warm-up).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use steerkit_model::{device_named, float_dtype, hf::HfFolder, left_pad, Mode, NoHook};

/// Four token rows of different lengths, the same on every run: a linear congruential sequence
/// over the vocabulary (ids 1.., so no row starts with the pad id 0).
fn rows(vocab: usize) -> Vec<Vec<u32>> {
    let mut s: u64 = 0x5eed;
    [9usize, 17, 33, 64]
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    1 + ((s >> 33) as usize % (vocab - 1)) as u32
                })
                .collect()
        })
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (folder, out) = match args.as_slice() {
        [f, o, ..] => (f, o),
        _ => bail!("usage: device_check FOLDER OUT.safetensors [cpu|cuda|metal] [f32|bf16|f16]"),
    };
    let device = device_named(args.get(2).map(String::as_str).unwrap_or("cpu"))?;
    let dtype = float_dtype(args.get(3).map(String::as_str).unwrap_or("f32"))?;
    let t = Instant::now();
    let mut m = HfFolder::open(std::path::Path::new(folder))?.model(&device, dtype)?;
    let load_s = t.elapsed().as_secs_f64();
    let rows = rows(m.cfg.vocab_size);
    let (ids, pads) = left_pad(&rows, 0, &device)?;
    let run = |m: &steerkit_model::Model| -> Result<Tensor> {
        let l = m.last_logits(&ids, &pads, &mut NoHook)?;
        // Waits for the device: the copy to the host needs the result.
        Ok(l.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    };
    let mut logits = run(&m)?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        logits = run(&m)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mut tensors: Vec<(String, Tensor)> = vec![
        (
            "ids".into(),
            ids.to_dtype(DType::I64)?.to_device(&Device::Cpu)?,
        ),
        (
            "pads".into(),
            Tensor::new(
                pads.iter().map(|&p| p as i64).collect::<Vec<_>>(),
                &Device::Cpu,
            )?,
        ),
        ("logits".into(), logits),
    ];
    let mut grads = 0;
    if dtype == DType::F32 {
        let layer = m.cfg.num_layers / 2;
        let x0 = m.forward_layers(
            m.embed(&ids)?,
            &pads,
            0..layer,
            None,
            &mut NoHook,
            Mode::Inference,
        )?;
        let vars = m.trainable_block(layer)?;
        let y = m.block_last(layer, &x0, &pads, Mode::Differentiable)?;
        let (b, h) = y.dims2()?;
        let probe: Vec<f32> = (0..b * h)
            .map(|i| ((i * 7919) % 23) as f32 / 23.0 - 0.5)
            .collect();
        let probe = Tensor::from_vec(probe, (b, h), &device)?;
        let g = (y * probe)?.sum_all()?.backward()?;
        for (name, v) in &vars {
            let gv = g
                .get(v)
                .with_context(|| format!("{name} received no gradient"))?;
            tensors.push((
                format!("grad.{name}"),
                gv.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            ));
            grads += 1;
        }
    }
    candle_core::safetensors::save(&tensors.into_iter().collect(), out)?;
    println!(
        "{folder} on {device:?} {dtype:?}: load {load_s:.2} s, logits of {} rows x {} tokens in {:.1} ms (best of 3), {grads} gradients",
        rows.len(),
        rows.iter().map(Vec::len).max().unwrap_or(0),
        best * 1e3
    );
    Ok(())
}
