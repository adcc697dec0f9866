//! Residual states the trainer needs: block inputs at the target layer (cached, because the
//! layers below it are frozen), last-token states for choosing the layer, and the silhouette
//! score that measures how well they separate harmful from harmless prompts.

use candle_core::{DType, Device, Tensor};
use steerkit_eval::score::refusal_score;
pub use steerkit_eval::utility::log_softmax;
pub use steerkit_model::{pad_rows, unpad_rows};
use steerkit_model::{
    Chain, Hook, HookCtx, HookPoint, Loaded, Mode, ModelError, Record, SharedPrefix, Site,
    SystemPrompt,
};

/// Keeps the residual at the input of one block (all positions).
struct Capture {
    layer: usize,
    got: Option<Tensor>,
}

impl Hook for Capture {
    fn call(&mut self, ctx: HookCtx, x: &Tensor) -> Result<Option<Tensor>, ModelError> {
        if ctx.site.layer == self.layer && ctx.site.point == HookPoint::Input {
            self.got = Some(x.clone());
        }
        Ok(None)
    }
}

/// The input of block `layer` for every prompt, each `[tokens, hidden]` (f32, CPU, no
/// padding). With `refusal_ids`, the whole model also runs and each prompt's first-token
/// refusal score is returned (one pass for both); without, only the blocks below `layer` run.
pub fn block_inputs(
    m: &Loaded,
    prompts: &[&str],
    system: &SystemPrompt,
    layer: usize,
    batch: usize,
    refusal_ids: Option<&[u32]>,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<Tensor>, Option<Vec<f64>>), ModelError> {
    let top = match refusal_ids {
        Some(_) => m.model.cfg.num_layers,
        None => layer,
    };
    let mut pre = Capture { layer, got: None };
    let shared = SharedPrefix::new(&m.model, m.prompt_ids(prompts, system)?, 1, top, &mut pre)?;
    let mut inputs = Vec::with_capacity(prompts.len());
    let mut scores = refusal_ids.map(|_| Vec::with_capacity(prompts.len()));
    for b in shared.batches(&m.model, m.tok.pad_id, batch) {
        let (ids, pads, mut cache) = b?;
        let mut cap = Capture { layer, got: None };
        let x = m.model.embed(&ids)?;
        let h = m.model.forward_layers(
            x,
            &pads,
            0..top,
            Some(&mut cache),
            &mut cap,
            Mode::Inference,
        )?;
        let x = match (refusal_ids, scores.as_mut()) {
            (Some(rid), Some(sc)) => {
                let t = h.dim(1)?;
                let last = m
                    .model
                    .final_norm(&h.narrow(1, t - 1, 1)?.squeeze(1)?, Mode::Inference)?;
                let logits = m.model.logits(&last)?.to_dtype(DType::F32)?;
                let lp = log_softmax(&logits)?.to_vec2::<f32>()?;
                sc.extend(lp.iter().map(|l| refusal_score(l, rid)));
                cap.got.expect("every block input is visited")
            }
            _ => h,
        };
        // The shared tokens' input of `layer`: captured on the way, or the prefix run's output.
        let prefix = match pre.got.as_ref().or(shared.out.as_ref()) {
            Some(p) => Some(p.squeeze(0)?),
            None => None,
        };
        inputs.extend(SharedPrefix::join(prefix.as_ref(), unpad_rows(&x, &pads)?)?);
        progress(pads.len());
    }
    Ok((inputs, scores))
}

/// Keeps the unpadded block inputs of every row at a range of layers.
struct CaptureInputs {
    layers: std::ops::Range<usize>,
    pads: Vec<usize>,
    /// `[layer - start][row]`.
    got: Vec<Vec<Tensor>>,
}

impl Hook for CaptureInputs {
    fn call(&mut self, ctx: HookCtx, x: &Tensor) -> Result<Option<Tensor>, ModelError> {
        let l = ctx.site.layer;
        if ctx.site.point == HookPoint::Input && self.layers.contains(&l) {
            self.got[l - self.layers.start].extend(unpad_rows(x, &self.pads)?);
        }
        Ok(None)
    }
}

/// Last-token block outputs at every layer, `[layers, prompts, hidden]` (f32, CPU), and, in
/// the same pass, the unpadded block inputs of every prompt at the layers in `capture`
/// (`[layer - capture.start][prompt]`), so that the chosen layer's inputs need no second pass.
pub fn last_token_states(
    m: &Loaded,
    prompts: &[&str],
    system: &SystemPrompt,
    batch: usize,
    capture: std::ops::Range<usize>,
    progress: &mut dyn FnMut(usize),
) -> Result<(Tensor, Vec<Vec<Tensor>>), ModelError> {
    let layers = m.model.cfg.num_layers;
    let sites = Site::block_outputs(layers);
    let mut pre = CaptureInputs {
        layers: capture.clone(),
        got: vec![Vec::new(); capture.len()],
        pads: vec![0],
    };
    let shared = SharedPrefix::new(
        &m.model,
        m.prompt_ids(prompts, system)?,
        1,
        layers,
        &mut pre,
    )?;
    let mut parts = Vec::new();
    let mut inputs: Vec<Vec<Tensor>> = vec![Vec::with_capacity(prompts.len()); capture.len()];
    for b in shared.batches(&m.model, m.tok.pad_id, batch) {
        let (ids, pads, mut cache) = b?;
        let mut rec = Record::new(sites.clone(), vec![-1]);
        let mut cap = CaptureInputs {
            layers: capture.clone(),
            got: vec![Vec::new(); capture.len()],
            pads: pads.clone(),
        };
        let x = m.model.embed(&ids)?;
        {
            let mut chain = Chain(vec![Box::new(&mut rec), Box::new(&mut cap)]);
            m.model.forward_layers(
                x,
                &pads,
                0..layers,
                Some(&mut cache),
                &mut chain,
                Mode::Inference,
            )?;
        }
        for (k, (all, got)) in inputs.iter_mut().zip(cap.got).enumerate() {
            all.extend(SharedPrefix::join(pre.got[k].first(), got)?);
        }
        let per_layer = sites
            .iter()
            .map(|s| {
                rec.get(*s)
                    .expect("recorded")
                    .squeeze(1)?
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        parts.push(Tensor::stack(&per_layer, 0)?);
        progress(pads.len());
    }
    Ok((Tensor::cat(&parts, 1)?, inputs))
}

/// Mean silhouette score (Euclidean) of two clusters: `x: [n, hidden]`, `in_a[i]` tells the
/// cluster of row `i`. 1 means tight, well separated clusters, 0 overlapping ones. `None`
/// when a cluster has fewer than two points.
pub fn silhouette(x: &Tensor, in_a: &[bool]) -> candle_core::Result<Option<f64>> {
    let n = in_a.len();
    let na = in_a.iter().filter(|a| **a).count();
    if na < 2 || n - na < 2 {
        return Ok(None);
    }
    let x = x.to_dtype(DType::F64)?;
    let sq = x.sqr()?.sum_keepdim(1)?; // [n, 1]
    let gram = x.matmul(&x.t()?)?;
    let d2 = (sq.broadcast_add(&sq.t()?)? - (gram * 2.0)?)?;
    let d: Vec<Vec<f64>> = d2.relu()?.sqrt()?.to_vec2()?;
    let mut total = 0.0;
    for i in 0..n {
        let (mut same, mut other) = (0.0, 0.0);
        for j in 0..n {
            if j == i {
                continue;
            }
            if in_a[j] == in_a[i] {
                same += d[i][j];
            } else {
                other += d[i][j];
            }
        }
        let n_same = if in_a[i] { na } else { n - na } - 1;
        let a = same / n_same as f64;
        let b = other / (n - n_same - 1) as f64;
        let m = a.max(b);
        total += if m > 0.0 { (b - a) / m } else { 0.0 };
    }
    Ok(Some(total / n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silhouette_of_separated_and_mixed_clusters() {
        let dev = Device::Cpu;
        // Two tight clusters far apart: close to 1.
        let x = Tensor::new(
            &[
                [0.0f32, 0.0],
                [0.1, 0.0],
                [0.0, 0.1],
                [10.0, 10.0],
                [10.1, 10.0],
                [10.0, 10.1],
            ],
            &dev,
        )
        .unwrap();
        let lab = [true, true, true, false, false, false];
        let s = silhouette(&x, &lab).unwrap().unwrap();
        assert!(s > 0.95, "{s}");
        // The same points with labels alternating: negative.
        let mixed = [true, false, true, false, true, false];
        let s = silhouette(&x, &mixed).unwrap().unwrap();
        assert!(s < 0.0, "{s}");
        // Hand-computed: points 0, 1 (a) and 3 (b) on a line.
        let x = Tensor::new(&[[0.0f32], [1.0], [3.0], [4.0]], &dev).unwrap();
        let s = silhouette(&x, &[true, true, false, false])
            .unwrap()
            .unwrap();
        // a(0)=1, b(0)=3.5 -> 0.714..; a(1)=1, b(1)=2.5 -> 0.6; symmetric for the others.
        let want = ((1.0 - 1.0 / 3.5) + (1.0 - 1.0 / 2.5)) / 2.0;
        assert!((s - want).abs() < 1e-9, "{s} vs {want}");
        assert!(silhouette(&x, &[true, false, false, false])
            .unwrap()
            .is_none());
    }
}
