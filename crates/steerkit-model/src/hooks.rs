//! Hook points on the residual stream.
//!
//! Every decoder block exposes three sites: its input, the residual after attention, and its
//! output. A [`Hook`] sees the residual `[batch, seq, hidden]` at each site and may return a
//! replacement (ablation, addition) or just record it. Hooks are explicit arguments of the
//! forward pass, never global state.

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};

/// Where in a block the residual stream is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// Block input (the residual before the attention norm).
    Input,
    /// The residual after attention has been added, before the MLP.
    AfterAttention,
    /// Block output (the residual after the MLP has been added).
    Output,
}

impl HookPoint {
    /// All three points in forward order.
    pub const ALL: [HookPoint; 3] = [
        HookPoint::Input,
        HookPoint::AfterAttention,
        HookPoint::Output,
    ];
}

/// A hook site: a layer and a point inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    pub layer: usize,
    pub point: HookPoint,
}

impl Site {
    /// The output site of every block `0..layers`.
    pub fn block_outputs(layers: usize) -> Vec<Site> {
        (0..layers)
            .map(|layer| Site {
                layer,
                point: HookPoint::Output,
            })
            .collect()
    }
}

/// What a hook is told besides the tensor.
#[derive(Debug, Clone, Copy)]
pub struct HookCtx {
    pub site: Site,
    /// Column of the first position of `x` in the (left-padded) sequence; non-zero while
    /// decoding with a KV cache.
    pub offset: usize,
}

/// Observes and optionally replaces the residual stream.
pub trait Hook {
    /// Called at every site in forward order with `x: [batch, seq, hidden]`.
    /// Return `Some(t)` to replace the residual with `t` (same shape).
    fn call(&mut self, ctx: HookCtx, x: &Tensor) -> Result<Option<Tensor>>;
}

/// The hook that does nothing.
pub struct NoHook;

impl Hook for NoHook {
    fn call(&mut self, _: HookCtx, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

impl<H: Hook + ?Sized> Hook for &mut H {
    fn call(&mut self, ctx: HookCtx, x: &Tensor) -> Result<Option<Tensor>> {
        (**self).call(ctx, x)
    }
}

/// Several hooks applied in order; each sees the previous one's output.
#[derive(Default)]
pub struct Chain<'a>(pub Vec<Box<dyn Hook + 'a>>);

impl Hook for Chain<'_> {
    fn call(&mut self, ctx: HookCtx, x: &Tensor) -> Result<Option<Tensor>> {
        let mut cur: Option<Tensor> = None;
        for h in self.0.iter_mut() {
            let input = cur.as_ref().unwrap_or(x);
            if let Some(t) = h.call(ctx, input)? {
                cur = Some(t);
            }
        }
        Ok(cur)
    }
}

/// Records the residual at chosen sites and at chosen positions counted from the end of the
/// sequence (`-1` is the last token). With left padding the post-instruction positions of
/// every row sit at the same negative offsets, so one index serves the whole batch.
pub struct Record {
    sites: Vec<Site>,
    positions: Vec<isize>,
    /// One `[batch, positions, hidden]` f32 tensor per recorded site, in the order of `sites`.
    pub values: Vec<Option<Tensor>>,
}

impl Record {
    /// Records `sites` at `positions` (negative: from the end; non-negative: absolute column).
    pub fn new(sites: Vec<Site>, positions: Vec<isize>) -> Self {
        let n = sites.len();
        Record {
            sites,
            positions,
            values: vec![None; n],
        }
    }

    /// The recorded tensor of a site, if it was seen.
    pub fn get(&self, site: Site) -> Option<&Tensor> {
        let i = self.sites.iter().position(|s| *s == site)?;
        self.values[i].as_ref()
    }
}

impl Hook for Record {
    fn call(&mut self, ctx: HookCtx, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(i) = self.sites.iter().position(|s| *s == ctx.site) else {
            return Ok(None);
        };
        let seq = x.dim(1)?;
        let mut idx = Vec::with_capacity(self.positions.len());
        for &p in &self.positions {
            let col = if p < 0 {
                seq as isize + p
            } else {
                p - ctx.offset as isize
            };
            if col < 0 || col >= seq as isize {
                return Err(ModelError::Input(format!(
                    "position {p} is outside a sequence of {seq} tokens"
                )));
            }
            idx.push(col as u32);
        }
        let idx = Tensor::new(idx, x.device())?;
        let v = x.index_select(&idx, 1)?.to_dtype(DType::F32)?;
        self.values[i] = Some(v.detach());
        Ok(None)
    }
}

/// Directional ablation `x <- x - (x·r̂) r̂` at every site of every layer (or the chosen ones).
pub struct Ablate {
    unit: Tensor,
    points: Vec<HookPoint>,
    layers: Option<std::ops::Range<usize>>,
}

impl Ablate {
    /// Ablates `direction` (any norm; it is normalised here) at the given points of every layer.
    pub fn new(direction: &Tensor, points: &[HookPoint]) -> Result<Self> {
        let norm = direction
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        if !norm.is_finite() || norm == 0.0 {
            return Err(ModelError::Input(
                "ablation direction has zero or non-finite norm".into(),
            ));
        }
        Ok(Ablate {
            unit: (direction / norm as f64)?.flatten_all()?,
            points: points.to_vec(),
            layers: None,
        })
    }

    /// Restricts the ablation to the blocks in `layers`.
    pub fn only_layers(mut self, layers: std::ops::Range<usize>) -> Self {
        self.layers = Some(layers);
        self
    }
}

/// `t` on `x`'s device, moved there once: a hook's vector may come from a file (on the CPU)
/// while the model runs on a GPU, and later calls find it already there.
fn onto(t: &mut Tensor, x: &Tensor) -> Result<()> {
    if !t.device().same_device(x.device()) {
        *t = t.to_device(x.device())?;
    }
    Ok(())
}

/// `x - (x·u) u` for a unit vector `u` (on any device), broadcast over batch and positions.
pub fn project_out(x: &Tensor, unit: &Tensor) -> Result<Tensor> {
    let u = unit.to_device(x.device())?.to_dtype(x.dtype())?;
    let d = u.dim(0)?;
    let coef = x.broadcast_matmul(&u.reshape((d, 1))?)?; // [b, t, 1]
    Ok(x.broadcast_sub(&coef.broadcast_mul(&u.reshape((1, 1, d))?)?)?)
}

impl Hook for Ablate {
    fn call(&mut self, ctx: HookCtx, x: &Tensor) -> Result<Option<Tensor>> {
        let in_layers = self
            .layers
            .as_ref()
            .is_none_or(|r| r.contains(&ctx.site.layer));
        if !in_layers || !self.points.contains(&ctx.site.point) {
            return Ok(None);
        }
        onto(&mut self.unit, x)?;
        Ok(Some(project_out(x, &self.unit)?))
    }
}

/// Activation addition `x <- x + c·r` at one site, at every position.
pub struct Add {
    site: Site,
    vector: Tensor,
}

impl Add {
    /// Adds `coeff * vector` at `site`.
    pub fn new(site: Site, vector: &Tensor, coeff: f64) -> Result<Self> {
        Ok(Add {
            site,
            vector: (vector.flatten_all()? * coeff)?,
        })
    }
}

impl Hook for Add {
    fn call(&mut self, ctx: HookCtx, x: &Tensor) -> Result<Option<Tensor>> {
        if ctx.site != self.site {
            return Ok(None);
        }
        onto(&mut self.vector, x)?;
        let v = self.vector.to_dtype(x.dtype())?;
        Ok(Some(x.broadcast_add(&v)?))
    }
}
