//! AdamW (Loshchilov & Hutter) with its state exposed, so that a run can be resumed exactly.
//!
//! Variables in half precision (bf16 or f16, a model computing in that dtype on a GPU) are
//! updated through f32 master copies with f32 moments, as mixed-precision training does: a
//! step of `lr` on a bf16 weight is often below half its spacing and would round away, and
//! f16 cannot hold the default `eps` or a small gradient's square. The variable holds the
//! master rounded to its dtype after every step. Gradients are used as they come (no loss
//! scaling).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Result, Tensor, Var};
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
    /// f32 master copies of the half-precision variables (`None` for f32 and f64 ones).
    master: Vec<Option<Tensor>>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

/// Whether a variable of this dtype is updated through an f32 master copy.
fn half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

impl AdamW {
    /// A fresh optimizer (zero moments).
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let master = vars
            .iter()
            .map(|(_, v)| {
                let t = v.as_tensor();
                half(t.dtype()).then(|| t.to_dtype(DType::F32)).transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let m = vars
            .iter()
            .zip(&master)
            .map(|((_, v), w)| w.as_ref().unwrap_or(v.as_tensor()).zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(AdamW {
            cfg,
            step: 0,
            vars,
            master,
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
            let w = self.master[i].as_ref().unwrap_or(var.as_tensor()).clone();
            let g = g.to_dtype(w.dtype())?;
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let mhat = (&m / bc1)?;
            let denom = ((&v / bc2)?.sqrt()? + c.eps)?;
            let step = ((mhat / denom)? + (&w * c.weight_decay)?)?;
            let step = project(name, &step)?;
            let next = (w - step.affine(c.lr, 0.0)?)?;
            if self.master[i].is_some() {
                var.set(&next.to_dtype(var.dtype())?)?;
                self.master[i] = Some(next);
            } else {
                var.set(&next)?;
            }
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

    /// The moments as named tensors (`m.NAME`, `v.NAME`), and the f32 master copies of
    /// half-precision variables (`w.NAME`), for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
            if let Some(w) = &self.master[i] {
                out.insert(format!("w.{name}"), w.clone());
            }
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] and the step count; false when a moment
    /// is missing or has another shape (the state is then left unchanged).
    /// A half-precision variable's master copy comes back from `w.NAME` when the state has it
    /// (else from the variable itself); every tensor is moved to its variable's device.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: usize) -> bool {
        let Ok(Some(saved)) = self.read_state(state) else {
            return false;
        };
        for ((_, var), w) in self.vars.iter().zip(&saved.master) {
            if let Some(w) = w {
                if w.to_dtype(var.dtype()).and_then(|t| var.set(&t)).is_err() {
                    return false;
                }
            }
        }
        self.m = saved.m;
        self.v = saved.v;
        self.master = saved.master;
        self.step = step;
        true
    }

    /// The state's tensors for every variable, in its dtype and on its device; `None` when a
    /// moment is missing or has another shape.
    fn read_state(&self, state: &HashMap<String, Tensor>) -> Result<Option<Saved>> {
        let mut out = Saved::default();
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let like = self.master[i].as_ref().unwrap_or(var.as_tensor());
            let get = |k: &str| -> Result<Option<Tensor>> {
                match state.get(&format!("{k}.{name}")) {
                    Some(t) if t.dims() == var.dims() => {
                        Ok(Some(t.to_device(like.device())?.to_dtype(like.dtype())?))
                    }
                    _ => Ok(None),
                }
            };
            let (Some(m), Some(v)) = (get("m")?, get("v")?) else {
                return Ok(None);
            };
            out.m.push(m);
            out.v.push(v);
            out.master.push(match &self.master[i] {
                Some(w) => Some(get("w")?.unwrap_or_else(|| w.clone())),
                None => None,
            });
        }
        Ok(Some(out))
    }
}

/// An optimizer state read back for [`AdamW::restore`].
#[derive(Default)]
struct Saved {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    master: Vec<Option<Tensor>>,
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

    /// A step far below half a bf16 weight's spacing still moves it, through the f32 master
    /// copy: 100 steps of 1e-3 take a weight of 1.0 (spacing 2^-7) to 0.9, where a plain
    /// bf16 update would leave it at 1.0. A checkpoint's state resumes the same path.
    #[test]
    fn half_precision_weights_take_small_steps_through_an_f32_master() {
        let cfg = AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        };
        let bf16 = |x: f32| {
            Tensor::new(&[x], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
        };
        let w = Var::from_tensor(&bf16(1.0).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg).unwrap();
        let g = bf16(1.0).unwrap();
        for _ in 0..50 {
            opt.apply(std::slice::from_ref(&g)).unwrap();
        }
        // Resume from the state into a fresh optimizer over a fresh variable.
        let (state, step) = (opt.state(), opt.step);
        assert_eq!(state["w.w"].dtype(), DType::F32);
        assert_eq!(state["m.w"].dtype(), DType::F32);
        let w2 = Var::from_tensor(&bf16(1.0).unwrap()).unwrap();
        let mut resumed = AdamW::new(vec![("w".into(), w2.clone())], cfg).unwrap();
        assert!(resumed.restore(&state, step));
        for _ in 0..50 {
            opt.apply(std::slice::from_ref(&g)).unwrap();
            resumed.apply(std::slice::from_ref(&g)).unwrap();
        }
        let read = |v: &Var| -> f32 {
            v.as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        let (a, b) = (read(&w), read(&w2));
        assert_eq!(w.dtype(), DType::BF16);
        assert!((a - 0.9).abs() <= 2f32.powi(-8), "{a}");
        assert_eq!(a, b);
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
