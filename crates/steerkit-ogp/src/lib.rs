//! Orthogonal gradient projection (METHODS.md section 3): two capability-subspace estimators
//! and the projections trainers apply to their optimizer steps.
//!
//! **Activation-based (GPM).**
//! For a linear map `y = W x` with `W: [out, in]`, the capability subspace is spanned by the
//! top left singular vectors `U: [in, k]` of its inputs on capability data, `k` chosen to keep
//! a fraction of their energy ([`gpm_basis`]). Projecting an update `ΔW <- ΔW (I - U Uᵀ)`
//! ([`Projector`]) leaves `W x` unchanged to first order for every `x` in that subspace.
//!
//! With an adaptive optimizer (AdamW) the projection must be applied to the *update*, not to
//! the gradient: Adam rescales each coordinate, which would rotate a projected gradient back
//! out of the allowed subspace. Trainers here therefore project the optimizer's step.
//!
//! **Gradient-based (OGPSA).** The subspace of a matrix is spanned by `k` language-modelling
//! gradients of that matrix on capability data (one per capability batch), orthonormalised as
//! flattened vectors ([`GradBasis`]); an update loses its component in their span, so to first
//! order it does not change the capability loss on those batches. Trainers refresh the
//! gradients every few steps, since they move with the weights.
//!
//! Both implement [`Subspace`], which is what a trainer holds. [`capability`] holds the
//! capability data (prompts answered by the model itself), its loss and the gradient bases.

pub mod capability;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

/// Failures of the projection code.
#[derive(Debug, thiserror::Error)]
pub enum OgpError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] steerkit_model::ModelError),
    #[error(transparent)]
    Eval(#[from] steerkit_eval::EvalError),
    #[error("{0}")]
    Input(String),
}

/// Orthonormalises the columns of `v` (`n` rows, column-major `k` columns) in place by modified
/// Gram-Schmidt; a column that collapses (dependent) is replaced by zeros. Collapse is judged
/// against the largest column: a residual under `1e-10` of it is rounding noise (with fewer
/// inputs than dimensions, subspace iteration's extra columns are all noise), and normalising
/// it would make a column that is neither orthogonal to the others nor meaningful.
fn orthonormalise(v: &mut [Vec<f64>]) {
    let norm = |c: &[f64]| c.iter().map(|x| x * x).sum::<f64>().sqrt();
    let tol = 1e-10 * v.iter().map(|c| norm(c)).fold(0.0, f64::max);
    for j in 0..v.len() {
        let (done, rest) = v.split_at_mut(j);
        let col = &mut rest[0];
        for prev in done.iter() {
            let d: f64 = prev.iter().zip(col.iter()).map(|(a, b)| a * b).sum();
            for (c, p) in col.iter_mut().zip(prev) {
                *c -= d * p;
            }
        }
        let n = norm(col);
        let s = if n > tol && n > 0.0 { 1.0 / n } else { 0.0 };
        for c in col.iter_mut() {
            *c *= s;
        }
    }
}

/// A one-element tensor's value (any dtype, any device) as f64, widened on the host: not every
/// device converts to f64 (Metal does not).
pub fn scalar_f64(t: &Tensor) -> candle_core::Result<f64> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

/// The sum of the squares of a tensor's entries (any float dtype, any device): a squared
/// Frobenius norm. Squares are summed along the last dimension on the tensor's device (in f32,
/// or f64 for f64 tensors) and the row sums in f64 on the host, so the error does not grow
/// with the number of rows: on the CPU, one f32 sum over 8M entries is off by 2e-5.
pub fn sum_squares(t: &Tensor) -> candle_core::Result<f64> {
    if t.elem_count() == 0 {
        return Ok(0.0);
    }
    let t = steerkit_model::widened(t)?;
    // Squared first: its output is contiguous, so the reshape below copies nothing.
    let sq = t.sqr()?;
    let rows = match sq.rank() {
        0 => sq.reshape((1, 1))?,
        1 => sq.unsqueeze(0)?,
        r => sq.flatten_to(r - 2)?,
    };
    let per_row: Vec<f64> = rows
        .sum(1)?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .to_vec1()?;
    Ok(per_row.iter().sum())
}

/// The top `k` eigenvectors (columns of `[n, k]`) and eigenvalues of a symmetric positive
/// semi-definite matrix `c: [n, n]`, by subspace iteration from a fixed start.
pub fn top_eigen(c: &Tensor, k: usize, iters: usize) -> Result<(Tensor, Vec<f64>), OgpError> {
    let n = c.dim(0)?;
    let k = k.min(n).max(1);
    let c = c.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    // A deterministic, well-spread start: a hashed pseudo-random matrix.
    let mut cols: Vec<Vec<f64>> = (0..k)
        .map(|j| {
            (0..n)
                .map(|i| {
                    let h = ((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ^ (j as u64 + 7).wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
                    .rotate_left(29);
                    (h % 2001) as f64 / 1000.0 - 1.0
                })
                .collect()
        })
        .collect();
    orthonormalise(&mut cols);
    let to_tensor = |cols: &[Vec<f64>]| -> Result<Tensor, OgpError> {
        let flat: Vec<f64> = cols.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (k, n), &Device::Cpu)?
            .t()?
            .contiguous()?)
    };
    for _ in 0..iters {
        let q = to_tensor(&cols)?;
        let z = c.matmul(&q)?.t()?.contiguous()?; // [k, n]
        cols = z.to_vec2::<f64>()?;
        orthonormalise(&mut cols);
    }
    // Rayleigh-Ritz: rotate within the subspace so the columns are eigenvectors.
    let q = to_tensor(&cols)?;
    let small = q.t()?.matmul(&c.matmul(&q)?)?; // [k, k]
    let (vecs, vals) = jacobi_eigen(&small.to_vec2::<f64>()?);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
    let rot: Vec<f64> = (0..k)
        .flat_map(|i| order.iter().map(move |&j| (i, j)))
        .map(|(i, j)| vecs[i][j])
        .collect();
    let rot = Tensor::from_vec(rot, (k, k), &Device::Cpu)?;
    let u = q.matmul(&rot)?;
    Ok((u, order.iter().map(|&j| vals[j].max(0.0)).collect()))
}

/// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations:
/// (eigenvectors as columns `v[i][j]`, eigenvalues).
fn jacobi_eigen(a: &[Vec<f64>]) -> (Vec<Vec<f64>>, Vec<f64>) {
    let n = a.len();
    let mut a = a.to_vec();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    // Converged when the off-diagonal mass is at rounding level relative to the matrix (an
    // absolute threshold never triggers for large entries and runs every sweep).
    let scale: f64 = a.iter().flatten().map(|x| x * x).sum();
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off <= 1e-24 * scale || off < 1e-300 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (rp, rq) = (a[p].clone(), a[q].clone());
                for (k, (apk, aqk)) in rp.into_iter().zip(rq).enumerate() {
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for row in v.iter_mut() {
                    let (vp, vq) = (row[p], row[q]);
                    row[p] = c * vp - s * vq;
                    row[q] = s * vp + c * vq;
                }
            }
        }
    }
    let vals = (0..n).map(|i| a[i][i]).collect();
    (v, vals)
}

/// A capability basis for one matrix.
#[derive(Debug, Clone)]
pub struct Basis {
    /// `[in, k]`, orthonormal columns.
    pub u: Tensor,
    /// Fraction of the inputs' energy inside the subspace.
    pub energy: f64,
}

/// GPM basis of a linear map from its inputs `acts: [rows, in]`: the fewest top singular
/// directions keeping `energy` (e.g. 0.95) of `Σ |x|²`, at most `max_k`.
pub fn gpm_basis(acts: &Tensor, energy: f64, max_k: usize) -> Result<Basis, OgpError> {
    if !(0.0..=1.0).contains(&energy) {
        return Err(OgpError::Input(format!("energy {energy} is not in [0, 1]")));
    }
    let a = acts.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let c = a.t()?.matmul(&a)?; // [in, in]
    let total: f64 = a.sqr()?.sum_all()?.to_scalar()?;
    if !total.is_finite() {
        return Err(OgpError::Input(
            "the capability inputs hold NaN or infinite values".into(),
        ));
    }
    if total <= 0.0 {
        return Err(OgpError::Input("the capability inputs are all zero".into()));
    }
    let (u, vals) = top_eigen(&c, max_k, 12)?;
    // Columns past the inputs' rank come back as zeros with eigenvalue 0: never kept.
    let rank = vals.iter().take_while(|&&v| v > 0.0).count().max(1);
    let vals = &vals[..rank];
    let mut acc = 0.0;
    let mut k = vals.len();
    for (i, v) in vals.iter().enumerate() {
        acc += v;
        if acc >= energy * total {
            k = i + 1;
            break;
        }
    }
    let kept: f64 = vals[..k].iter().sum();
    Ok(Basis {
        u: u.narrow(1, 0, k)?.contiguous()?,
        energy: kept / total,
    })
}

/// Projects updates of named matrices off their capability subspaces.
#[derive(Debug, Default)]
pub struct Projector {
    bases: HashMap<String, Tensor>,
}

impl Projector {
    /// A projector over `bases` (`name -> U: [in, k]`).
    pub fn new(bases: HashMap<String, Tensor>) -> Self {
        Projector { bases }
    }

    /// The same projector with its bases moved to `device` once, rather than at every step.
    pub fn to_device(self, device: &Device) -> Result<Self, OgpError> {
        let bases = self
            .bases
            .into_iter()
            .map(|(name, u)| Ok((name, u.to_device(device)?)))
            .collect::<Result<_, OgpError>>()?;
        Ok(Projector { bases })
    }

    /// The bases, for saving.
    pub fn bases(&self) -> &HashMap<String, Tensor> {
        &self.bases
    }

    /// `g (I - U Uᵀ)` for a matrix with a basis (`g: [out, in]`), and the norm removed; other
    /// tensors pass unchanged (norm removed 0).
    pub fn project(&self, name: &str, g: &Tensor) -> Result<(Tensor, f64), OgpError> {
        let Some(u) = self.bases.get(name) else {
            return Ok((g.clone(), 0.0));
        };
        let u = u.to_dtype(g.dtype())?.to_device(g.device())?;
        let removed = g.matmul(&u)?.matmul(&u.t()?)?;
        let norm = sum_squares(&removed)?.sqrt();
        Ok(((g - removed)?, norm))
    }
}

/// What a trainer applies to each optimizer step: `(projected step, norm removed)`; tensors
/// without a basis pass unchanged.
pub trait Subspace {
    fn project(&self, name: &str, step: &Tensor) -> Result<(Tensor, f64), OgpError>;
    /// True when `name` has a basis (its statistics are worth logging).
    fn covers(&self, name: &str) -> bool;
}

impl Subspace for Projector {
    fn project(&self, name: &str, step: &Tensor) -> Result<(Tensor, f64), OgpError> {
        Projector::project(self, name, step)
    }
    fn covers(&self, name: &str) -> bool {
        self.bases.contains_key(name)
    }
}

/// An orthonormal basis (in the Frobenius inner product) of the span of some gradients of one
/// matrix: the gradient-based capability subspace.
#[derive(Debug, Clone)]
pub struct GradBasis {
    /// Orthonormal directions as rows `[k, numel]`, f32, on the device of the gradients they
    /// came from (a projection reads them once per step, and memory traffic is its cost);
    /// `None` when `k = 0`.
    q: Option<Tensor>,
    dims: Vec<usize>,
}

impl GradBasis {
    /// The basis of `grads` (all of one shape), by Gram-Schmidt run twice (numerically
    /// orthogonal in f32), on the gradients' device; directions that add less than 1e-4 of their
    /// norm to the span (f32 rounding of a dependent one) are dropped.
    pub fn new(grads: &[Tensor]) -> Result<Self, OgpError> {
        let Some(first) = grads.first() else {
            return Err(OgpError::Input("no gradients for the basis".into()));
        };
        let dims = first.dims().to_vec();
        // Norms over the matrix's rows (see `sum_squares`), not over one long row.
        let norm =
            |v: &Tensor| Ok::<_, OgpError>(sum_squares(&v.reshape(dims.as_slice())?)?.sqrt());
        let mut q: Option<Tensor> = None; // [j, numel]
        for g in grads {
            if g.dims() != dims.as_slice() {
                return Err(OgpError::Input(format!(
                    "gradients of shapes {dims:?} and {:?}",
                    g.dims()
                )));
            }
            let mut v = g.flatten_all()?.to_dtype(DType::F32)?.unsqueeze(0)?; // [1, numel]
            let n0 = norm(&v)?;
            if let Some(q) = &q {
                for _ in 0..2 {
                    let c = v.matmul(&q.t()?)?; // [1, j]
                    v = (v - c.matmul(q)?)?;
                }
            }
            let n = norm(&v)?;
            if n0 > 0.0 && n > 1e-4 * n0 {
                let v = (v / n)?;
                q = Some(match q {
                    Some(q) => Tensor::cat(&[&q, &v], 0)?,
                    None => v,
                });
            }
        }
        Ok(GradBasis { q, dims })
    }

    /// Number of directions.
    pub fn k(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.dim(0).unwrap_or(0))
    }

    /// `u - Σ_j <u, q_j> q_j` and the norm removed.
    pub fn project(&self, u: &Tensor) -> Result<(Tensor, f64), OgpError> {
        if u.dims() != self.dims.as_slice() {
            return Err(OgpError::Input(format!(
                "a step of shape {:?} for a basis of {:?}",
                u.dims(),
                self.dims
            )));
        }
        let Some(q) = &self.q else {
            return Ok((u.clone(), 0.0));
        };
        let flat = u
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_device(q.device())?
            .unsqueeze(0)?; // [1, numel]
        let coeffs = flat.matmul(&q.t()?)?; // [1, k]
                                            // [1, k] x [k, numel]: q is used as stored (no transposed copy of it per step).
        let removed = coeffs.matmul(q)?; // [1, numel]
                                         // q is orthonormal: |removed| = |coeffs|.
        let norm = coeffs
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?
            .sqrt();
        let out = (flat - removed)?
            .reshape(self.dims.as_slice())?
            .to_dtype(u.dtype())?
            .to_device(u.device())?;
        Ok((out, norm))
    }

    /// The directions as one `[k, ...dims]` tensor (f32), for saving.
    pub fn to_tensor(&self) -> Result<Tensor, OgpError> {
        let mut shape = vec![self.k()];
        shape.extend(&self.dims);
        Ok(match &self.q {
            Some(q) => q.to_dtype(DType::F32)?.reshape(shape)?,
            None => Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
        })
    }

    /// A basis saved by [`GradBasis::to_tensor`], as saved (so that a resumed run projects with
    /// the very directions an uninterrupted one does), on `t`'s device; an error when its rows
    /// are not orthonormal (a file that is not such a basis).
    pub fn from_tensor(t: &Tensor) -> Result<Self, OgpError> {
        if t.rank() < 2 {
            return Err(OgpError::Input(format!(
                "a gradient basis of shape {:?}",
                t.dims()
            )));
        }
        let (k, dims) = (t.dim(0)?, t.dims()[1..].to_vec());
        if k == 0 {
            return Ok(GradBasis { q: None, dims });
        }
        let q = t.to_dtype(DType::F32)?.reshape((k, t.elem_count() / k))?;
        let gram: Vec<Vec<f32>> = q.matmul(&q.t()?)?.to_device(&Device::Cpu)?.to_vec2()?;
        for (i, row) in gram.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                if !x.is_finite() || (x - want).abs() > 1e-2 {
                    return Err(OgpError::Input(format!(
                        "a gradient basis whose rows {i} and {j} have inner product {x}, not {want}"
                    )));
                }
            }
        }
        Ok(GradBasis { q: Some(q), dims })
    }
}

/// Gradient-based subspaces of named matrices.
#[derive(Debug, Default, Clone)]
pub struct GradProjector {
    pub bases: HashMap<String, GradBasis>,
}

impl Subspace for GradProjector {
    fn project(&self, name: &str, step: &Tensor) -> Result<(Tensor, f64), OgpError> {
        match self.bases.get(name) {
            Some(b) => b.project(step),
            None => Ok((step.clone(), 0.0)),
        }
    }
    fn covers(&self, name: &str) -> bool {
        self.bases.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises() {
        let a = vec![
            vec![4.0, 1.0, 0.5],
            vec![1.0, 3.0, 0.2],
            vec![0.5, 0.2, 1.0],
        ];
        let (v, vals) = jacobi_eigen(&a);
        for j in 0..3 {
            for i in 0..3 {
                let av: f64 = (0..3).map(|k| a[i][k] * v[k][j]).sum();
                assert!((av - vals[j] * v[i][j]).abs() < 1e-9);
            }
        }
    }
}
