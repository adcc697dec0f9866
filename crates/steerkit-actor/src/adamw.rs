//! AdamW (Loshchilov & Hutter) with its state exposed, so that a run can be resumed exactly.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Result, Tensor, Var};
use steerkit_ogp::Subspace;

/// AdamW settings.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// What a projected update removed, for every matrix the subspace covers.
#[derive(Debug, Default)]
pub struct Projected {
    /// `(name, norm of the step, norm removed)`.
    pub matrices: Vec<(String, f64, f64)>,
    /// Seconds spent projecting and measuring (not the update itself).
    pub seconds: f64,
}

impl Projected {
    /// Mean share of the step's norm removed, over the matrices with a non-zero step.
    pub fn mean_share(&self) -> Option<f64> {
        let shares: Vec<f64> = self
            .matrices
            .iter()
            .filter(|(_, norm, _)| *norm > 0.0)
            .map(|(_, norm, removed)| removed / norm)
            .collect();
        (!shares.is_empty()).then(|| shares.iter().sum::<f64>() / shares.len() as f64)
    }
}

/// The optimizer over named variables.
pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Steps taken.
    pub step: usize,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    /// A fresh optimizer (zero moments).
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(AdamW {
            cfg,
            step: 0,
            vars,
            m,
            v,
        })
    }

    /// The variables, in order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update with one gradient per variable (same order as [`AdamW::vars`]).
    pub fn apply(&mut self, grads: &[Tensor]) -> Result<()> {
        self.apply_projected(grads, &mut |_, u| Ok(u.clone()))
    }

    /// One update whose step (the Adam direction plus weight decay, before the learning
    /// rate) passes through `project(name, step)` first: gradient projection for an adaptive
    /// optimizer must act on the step, since Adam's per-coordinate scaling would rotate a
    /// projected gradient out of the allowed subspace.
    pub fn apply_projected(
        &mut self,
        grads: &[Tensor],
        project: &mut dyn FnMut(&str, &Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (i, ((name, var), g)) in self.vars.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let mhat = (&m / bc1)?;
            let denom = ((&v / bc2)?.sqrt()? + c.eps)?;
            let step = ((mhat / denom)? + (var.as_tensor() * c.weight_decay)?)?;
            let step = project(name, &step)?;
            var.set(&(var.as_tensor() - step.affine(c.lr, 0.0)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// One update whose step is projected off `subspace` when there is one (see
    /// [`AdamW::apply_projected`]), with what the projection removed per covered matrix.
    pub fn apply_subspace(
        &mut self,
        grads: &[Tensor],
        subspace: Option<&dyn Subspace>,
    ) -> Result<Projected> {
        let mut out = Projected::default();
        let Some(p) = subspace else {
            self.apply(grads)?;
            return Ok(out);
        };
        self.apply_projected(grads, &mut |name, u| {
            let t = Instant::now();
            let (pu, removed) = p
                .project(name, u)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            if p.covers(name) {
                let norm = steerkit_ogp::sum_squares(u)?.sqrt();
                out.matrices.push((name.to_string(), norm, removed));
            }
            out.seconds += t.elapsed().as_secs_f64();
            Ok(pu)
        })?;
        Ok(out)
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`), for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] and the step count; false when a moment
    /// is missing or has another shape (the state is then left unchanged).
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: usize) -> bool {
        let mut m = Vec::new();
        let mut v = Vec::new();
        for (name, var) in &self.vars {
            match (
                state.get(&format!("m.{name}")),
                state.get(&format!("v.{name}")),
            ) {
                (Some(a), Some(b)) if a.dims() == var.dims() && b.dims() == var.dims() => {
                    m.push(a.clone());
                    v.push(b.clone());
                }
                _ => return false,
            }
        }
        self.m = m;
        self.v = v;
        self.step = step;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        // With zero moments, the bias-corrected first step is lr * g / (|g| + eps).
        let w =
            Var::from_tensor(&Tensor::new(&[1.0f64, -2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone())],
            AdamWConfig {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let g = Tensor::new(&[0.5f64, -4.0, 0.0], &Device::Cpu).unwrap();
        opt.apply(&[g]).unwrap();
        let got: Vec<f64> = w.as_tensor().to_vec1().unwrap();
        let want = [0.9, -1.9, 3.0];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn minimises_a_quadratic() {
        let w = Var::from_tensor(&Tensor::new(&[5.0f64, -3.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone())],
            AdamWConfig {
                lr: 0.05,
                ..Default::default()
            },
        )
        .unwrap();
        for _ in 0..2000 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(w.as_tensor()).unwrap().clone();
            opt.apply(&[g]).unwrap();
        }
        let got: Vec<f64> = w.as_tensor().to_vec1().unwrap();
        assert!(got.iter().all(|x| x.abs() < 1e-2), "{got:?}");
    }
}
