//! Orthogonal gradient projection (METHODS.md section 3), the activation-based (GPM) variant.
//!
//! For a linear map `y = W x` with `W: [out, in]`, the capability subspace is spanned by the
//! top left singular vectors `U: [in, k]` of its inputs on capability data, `k` chosen to keep
//! a fraction of their energy ([`gpm_basis`]). Projecting an update `ΔW <- ΔW (I - U Uᵀ)`
//! ([`Projector`]) leaves `W x` unchanged to first order for every `x` in that subspace.
//!
//! With an adaptive optimizer (AdamW) the projection must be applied to the *update*, not to
//! the gradient: Adam rescales each coordinate, which would rotate a projected gradient back
//! out of the allowed subspace. Trainers here therefore project the optimizer's step.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

/// Failures of the projection code.
#[derive(Debug, thiserror::Error)]
pub enum OgpError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Input(String),
}

/// Orthonormalises the columns of `v` (`n` rows, column-major `k` columns) in place by modified
/// Gram-Schmidt; a column that collapses (dependent) is replaced by zeros.
fn orthonormalise(v: &mut [Vec<f64>]) {
    for j in 0..v.len() {
        let (done, rest) = v.split_at_mut(j);
        let col = &mut rest[0];
        for prev in done.iter() {
            let d: f64 = prev.iter().zip(col.iter()).map(|(a, b)| a * b).sum();
            for (c, p) in col.iter_mut().zip(prev) {
                *c -= d * p;
            }
        }
        let norm = col.iter().map(|c| c * c).sum::<f64>().sqrt();
        let s = if norm > 1e-12 { 1.0 / norm } else { 0.0 };
        for c in col.iter_mut() {
            *c *= s;
        }
    }
}

/// The top `k` eigenvectors (columns of `[n, k]`) and eigenvalues of a symmetric positive
/// semi-definite matrix `c: [n, n]`, by subspace iteration from a fixed start.
pub fn top_eigen(c: &Tensor, k: usize, iters: usize) -> Result<(Tensor, Vec<f64>), OgpError> {
    let n = c.dim(0)?;
    let k = k.min(n).max(1);
    let c = c.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
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
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off < 1e-22 {
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
    let a = acts.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let c = a.t()?.matmul(&a)?; // [in, in]
    let total: f64 = a.sqr()?.sum_all()?.to_scalar()?;
    if total <= 0.0 {
        return Err(OgpError::Input("the capability inputs are all zero".into()));
    }
    let (u, vals) = top_eigen(&c, max_k, 12)?;
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
        let norm = removed
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .sqrt();
        Ok(((g - removed)?, norm))
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
