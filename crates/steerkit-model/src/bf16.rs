//! Linear maps with bf16 weights on the CPU: `y = x Wᵀ` for f32 activations `x: [m, k]` and a
//! bf16 matrix `W: [n, k]`, without keeping a widened copy of `W` in memory.
//!
//! Why: decoding is memory-bound (every new token reads every weight once), so weights kept in
//! bf16 halve the bytes read per token, and they halve the memory the weights need (an 8B
//! model's take 16 GB instead of 32). The product accumulates in f32. A bf16 number is the upper
//! half of an f32, so each weight widens exactly, and the result is the f32 product with the
//! bf16-rounded weights, up to the order of summation.
//!
//! How: up to [`KERNEL_MAX_ROWS`] rows of `x` (decoding, short batches), the kernel below
//! streams each block of weight rows from memory once and multiplies it with every row of `x`
//! (which stays in cache), in register tiles of 4 x rows by 4 (or 2) weight rows, 16 (or 8)
//! lanes wide. Blocks of weight rows are split across rayon's threads. The instruction set is
//! chosen at run time: AVX-512, AVX2 with FMA, or portable code. Above that many rows
//! (prefill), the matrix is widened for the call and multiplied by candle's f32 GEMM: the
//! widening is then a small share of the work, and the GEMM's compute-bound kernel is the
//! faster one.
//!
//! The gradient with respect to `x` is defined (`grad · W`, widened), so frozen bf16 layers can
//! sit on a differentiable path; `W` itself gets no gradient (train in f32).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// The most rows of `x` the kernel takes; above it, the widened matrix and candle's GEMM.
/// Chosen from `examples/bf16_kernel.rs` (README, Performance): on Qwen 0.5B's shapes the
/// kernel is the faster up to here.
pub const KERNEL_MAX_ROWS: usize = 128;

/// Weight rows per parallel task.
const BLOCK: usize = 32;

/// `x Wᵀ` for `x: [m, k]` (f32) and `w: [n, k]` (bf16), as `[m, n]` f32. Inference above
/// [`KERNEL_MAX_ROWS`] rows, and devices other than the CPU, widen the matrix for candle's
/// product. When `x` is on a gradient path, both sizes go through the op, so that the graph
/// holds the bf16 matrix and not a widened copy of it (the op's own widened path copies its
/// operands once more, which costs time in inference).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.dim(0)?;
    if !x.device().is_cpu() || (m > KERNEL_MAX_ROWS && !x.track_op()) {
        return x.matmul(&w.to_dtype(x.dtype())?.t()?);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, Bf16MatMulT)
}

/// A copy of `model` whose matrices are rounded to bf16 and kept in the model's dtype: the
/// f32 model that one loaded with bf16 matrices on the CPU computes, up to the order of
/// summation (for tests, and to measure what the rounding alone does).
pub fn rounded_matrices(model: &crate::Model) -> crate::Result<crate::Model> {
    let round = |t: &mut Tensor| -> crate::Result<()> {
        if t.rank() == 2 {
            *t = t.to_dtype(DType::BF16)?.to_dtype(model.dtype)?;
        }
        Ok(())
    };
    let mut r = model.clone();
    round(&mut r.embed)?;
    if let Some(h) = r.lm_head.as_mut() {
        round(h)?;
    }
    for blk in r.layers.iter_mut() {
        for (_, t) in blk.named_tensors_mut() {
            round(t)?;
        }
    }
    Ok(r)
}

/// The custom op behind [`matmul_t`] on the CPU.
struct Bf16MatMulT;

impl CustomOp2 for Bf16MatMulT {
    fn name(&self) -> &'static str {
        "bf16-weight-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::BF16(w)) = (s1, s2) else {
            candle_core::bail!(
                "bf16-weight-matmul takes f32 activations and bf16 weights, not {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            )
        };
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("bf16-weight-matmul: x is [{m}, {k}], W is [{n}, {k2}]")
        }
        let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("bf16-weight-matmul needs contiguous operands")
        };
        let (x, w) = (&x[a..b], &w[c..d]);
        let out = if m <= KERNEL_MAX_ROWS {
            matmul_bf16(x, w.reinterpret_cast(), m, n, k)
        } else {
            // Prefill-sized: widen (in parallel) and use candle's f32 GEMM.
            let mut wide = vec![0f32; w.len()];
            wide.par_chunks_mut(1 << 16)
                .zip(w.par_chunks(1 << 16))
                .for_each(|(d, s)| s.convert_to_f32_slice(d));
            let cpu = candle_core::Device::Cpu;
            let wide = Tensor::from_vec(wide, (n, k), &cpu)?;
            let x = Tensor::from_slice(x, (m, k), &cpu)?;
            x.matmul(&wide.t()?)?.flatten_all()?.to_vec1::<f32>()?
        };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&w.to_dtype(DType::F32)?)?), None))
    }
}

/// `x: [m, k]` f32 times the transpose of `w: [n, k]` (bf16 bit patterns), both row-major, as
/// `[m, n]` f32.
pub fn matmul_bf16(x: &[f32], w: &[u16], m: usize, n: usize, k: usize) -> Vec<f32> {
    assert_eq!(Some(x.len()), m.checked_mul(k), "x is not [m, k]");
    assert_eq!(Some(w.len()), n.checked_mul(k), "w is not [n, k]");
    let kernel = kernel();
    // Each task writes a contiguous slice of the transposed output, [n, m].
    let mut out_t = vec![0f32; n * m];
    if m == 0 || n == 0 || k == 0 {
        return out_t;
    }
    out_t
        .par_chunks_mut(BLOCK * m)
        .enumerate()
        .for_each(|(b, dst)| {
            let (j0, rows) = (b * BLOCK, dst.len() / m);
            kernel(x, &w[j0 * k..(j0 + rows) * k], m, k, dst);
        });
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; m * n];
    for (j, col) in out_t.chunks_exact(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    out
}

/// `dst[j * m + i] = x_i · w_j` for the weight rows of `w` (`[rows, k]`).
type Kernel = fn(&[f32], &[u16], usize, usize, &mut [f32]);

/// The kernels this CPU runs, fastest first, with their names.
fn kernels() -> Vec<(&'static str, Kernel)> {
    let mut out: Vec<(&'static str, Kernel)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            out.push(("avx512", x86::avx512));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            out.push(("avx2", x86::avx2));
        }
    }
    out.push(("portable", portable));
    out
}

/// The fastest kernel this CPU runs, with its name (detected once, not on every product).
fn fastest() -> (&'static str, Kernel) {
    static FASTEST: std::sync::OnceLock<(&'static str, Kernel)> = std::sync::OnceLock::new();
    *FASTEST.get_or_init(|| kernels()[0])
}

/// The fastest kernel this CPU runs.
fn kernel() -> Kernel {
    fastest().1
}

/// The name of the kernel in use on this CPU: `avx512`, `avx2` or `portable`.
pub fn kernel_name() -> &'static str {
    fastest().0
}

/// Plain code (the compiler's baseline vector width); fused multiply-add where the target
/// always has it.
fn portable(x: &[f32], w: &[u16], m: usize, k: usize, dst: &mut [f32]) {
    const FMA: bool = cfg!(target_arch = "aarch64");
    rows::<8, 2, 4, FMA>(x, w, m, k, dst)
}

/// Hand-written x86 kernels: the compiler does not keep the generic tile's accumulators in
/// registers (measured: 10 times slower at 4 rows and more), these do.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    pub(super) fn avx512(x: &[f32], w: &[u16], m: usize, k: usize, dst: &mut [f32]) {
        check(x, w, m, k, dst);
        assert!(
            is_x86_feature_detected!("avx512f"),
            "AVX-512F kernel without AVX-512F"
        );
        // SAFETY: AVX-512F is present (checked above); `check` bounds every access the tiles
        // make.
        unsafe { avx512_rows(x.as_ptr(), w.as_ptr(), m, w.len() / k, k, dst) }
    }

    pub(super) fn avx2(x: &[f32], w: &[u16], m: usize, k: usize, dst: &mut [f32]) {
        check(x, w, m, k, dst);
        assert!(
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            "AVX2 kernel without AVX2 and FMA"
        );
        // SAFETY: as for `avx512`.
        unsafe { avx2_rows(x.as_ptr(), w.as_ptr(), m, w.len() / k, k, dst) }
    }

    /// The sizes the unchecked loads below rely on.
    fn check(x: &[f32], w: &[u16], m: usize, k: usize, dst: &[f32]) {
        assert!(k > 0, "bf16 kernel with an empty inner dimension");
        assert!(
            m.checked_mul(k).is_some_and(|mk| x.len() >= mk) && w.len().is_multiple_of(k),
            "bf16 kernel: x holds {} values for [{m}, {k}], w {} values",
            x.len(),
            w.len()
        );
        assert_eq!(dst.len(), w.len() / k * m, "bf16 kernel: output size");
    }

    /// Drives `tile` over the weight rows in groups of `TN` and x rows in groups of `TM`
    /// (remainders one at a time).
    macro_rules! rows_fn {
        ($name:ident, $tile:ident, $feat:literal, $tm:literal, $tn:literal) => {
            #[target_feature(enable = $feat)]
            unsafe fn $name(
                x: *const f32,
                w: *const u16,
                m: usize,
                n: usize,
                k: usize,
                dst: &mut [f32],
            ) {
                let mut j = 0;
                while j < n {
                    let tn = if j + $tn <= n { $tn } else { 1 };
                    let mut i = 0;
                    while i < m {
                        let tm = if i + $tm <= m { $tm } else { 1 };
                        match (tm, tn) {
                            ($tm, $tn) => $tile::<$tm, $tn>(x, w, m, k, i, j, dst),
                            ($tm, _) => $tile::<$tm, 1>(x, w, m, k, i, j, dst),
                            (_, $tn) => $tile::<1, $tn>(x, w, m, k, i, j, dst),
                            _ => $tile::<1, 1>(x, w, m, k, i, j, dst),
                        }
                        i += tm;
                    }
                    j += tn;
                }
            }
        };
    }
    rows_fn!(avx512_rows, avx512_tile, "avx512f", 4, 4);
    rows_fn!(avx2_rows, avx2_tile, "avx2,fma", 4, 2);

    /// Defines `$name::<TM, TN>`: the `TM x TN` dot products of x rows `i0..` with weight rows
    /// `j0..`, `$lanes` lanes at a time, each bf16 lane widened by a zero-extend and a 16-bit
    /// shift, in the vector type `$v` with the named intrinsics of one instruction set.
    macro_rules! tile_fn {
        ($name:ident, $feat:literal, $lanes:literal, $v:ty, $raw:ty,
         $zero:ident, $loadx:ident, $store:ident, $fmadd:ident,
         $loadw:ident, $zext:ident, $shift:ident, $cast:ident) => {
            #[target_feature(enable = $feat)]
            unsafe fn $name<const TM: usize, const TN: usize>(
                x: *const f32,
                w: *const u16,
                m: usize,
                k: usize,
                i0: usize,
                j0: usize,
                dst: &mut [f32],
            ) {
                let mut acc: [[$v; TN]; TM] = [[$zero(); TN]; TM];
                let full = k / $lanes * $lanes;
                let mut o = 0;
                while o < full {
                    let mut wv: [$v; TN] = [$zero(); TN];
                    for (b, v) in wv.iter_mut().enumerate() {
                        let raw = $loadw(w.add((j0 + b) * k + o) as *const $raw);
                        *v = $cast($shift::<16>($zext(raw)));
                    }
                    for (a, row) in acc.iter_mut().enumerate() {
                        let xv = $loadx(x.add((i0 + a) * k + o));
                        for (acc, wv) in row.iter_mut().zip(&wv) {
                            *acc = $fmadd(xv, *wv, *acc);
                        }
                    }
                    o += $lanes;
                }
                for (a, row) in acc.iter().enumerate() {
                    for (b, v) in row.iter().enumerate() {
                        let mut lanes = [0f32; $lanes];
                        $store(lanes.as_mut_ptr(), *v);
                        let s = lanes.iter().sum();
                        dst[(j0 + b) * m + i0 + a] = tail(x, w, k, i0 + a, j0 + b, full, s);
                    }
                }
            }
        };
    }
    tile_fn!(
        avx512_tile,
        "avx512f",
        16,
        __m512,
        __m256i,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm256_loadu_si256,
        _mm512_cvtepu16_epi32,
        _mm512_slli_epi32,
        _mm512_castsi512_ps
    );
    tile_fn!(
        avx2_tile,
        "avx2,fma",
        8,
        __m256,
        __m128i,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm_loadu_si128,
        _mm256_cvtepu16_epi32,
        _mm256_slli_epi32,
        _mm256_castsi256_ps
    );

    /// `s` plus the products of columns `from..k` of x row `i` and weight row `j`.
    #[inline(always)]
    unsafe fn tail(
        x: *const f32,
        w: *const u16,
        k: usize,
        i: usize,
        j: usize,
        from: usize,
        mut s: f32,
    ) -> f32 {
        for c in from..k {
            s += *x.add(i * k + c) * super::widen(*w.add(j * k + c));
        }
        s
    }
}

/// Every weight row of `w` against every row of `x`, in tiles of `TM` x rows by `TN` weight
/// rows, `L` lanes wide. Inlined into each instruction-set variant, so that the compiler
/// vectorizes it for that set.
#[inline(always)]
fn rows<const L: usize, const TM: usize, const TN: usize, const FMA: bool>(
    x: &[f32],
    w: &[u16],
    m: usize,
    k: usize,
    dst: &mut [f32],
) {
    let n = w.len() / k;
    let mut j = 0;
    while j + TN <= n {
        let mut i = 0;
        while i + TM <= m {
            tile::<L, TM, TN, FMA>(x, w, m, k, i, j, dst);
            i += TM;
        }
        while i < m {
            tile::<L, 1, TN, FMA>(x, w, m, k, i, j, dst);
            i += 1;
        }
        j += TN;
    }
    while j < n {
        let mut i = 0;
        while i + TM <= m {
            tile::<L, TM, 1, FMA>(x, w, m, k, i, j, dst);
            i += TM;
        }
        while i < m {
            tile::<L, 1, 1, FMA>(x, w, m, k, i, j, dst);
            i += 1;
        }
        j += 1;
    }
}

/// The `TM x TN` dot products of x rows `i0..` with weight rows `j0..`.
#[inline(always)]
fn tile<const L: usize, const TM: usize, const TN: usize, const FMA: bool>(
    x: &[f32],
    w: &[u16],
    m: usize,
    k: usize,
    i0: usize,
    j0: usize,
    dst: &mut [f32],
) {
    let xr: [&[f32]; TM] = std::array::from_fn(|a| &x[(i0 + a) * k..(i0 + a + 1) * k]);
    let wr: [&[u16]; TN] = std::array::from_fn(|b| &w[(j0 + b) * k..(j0 + b + 1) * k]);
    let mut acc = [[[0f32; L]; TN]; TM];
    let full = k / L * L;
    for o in (0..full).step_by(L) {
        let mut wv = [[0f32; L]; TN];
        for b in 0..TN {
            let s: &[u16; L] = wr[b][o..o + L].try_into().expect("L lanes");
            for l in 0..L {
                wv[b][l] = widen(s[l]);
            }
        }
        for a in 0..TM {
            let xs: &[f32; L] = xr[a][o..o + L].try_into().expect("L lanes");
            for b in 0..TN {
                for l in 0..L {
                    acc[a][b][l] = fma::<FMA>(xs[l], wv[b][l], acc[a][b][l]);
                }
            }
        }
    }
    for a in 0..TM {
        for b in 0..TN {
            let mut s: f32 = acc[a][b].iter().sum();
            for c in full..k {
                s = fma::<FMA>(xr[a][c], widen(wr[b][c]), s);
            }
            dst[(j0 + b) * m + i0 + a] = s;
        }
    }
}

/// The f32 whose upper half is the bf16 bit pattern `b` (exact).
#[inline(always)]
fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `a * b + c`, fused where the instruction set has it.
#[inline(always)]
fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The product in f64 of x and the widened weights: the reference every path must match.
    fn reference(x: &[f32], w: &[u16], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|c| x[i * k + c] as f64 * half::bf16::from_bits(w[j * k + c]).to_f64())
                    .sum();
            }
        }
        out
    }

    fn data(m: usize, n: usize, k: usize, seed: u64) -> (Vec<f32>, Vec<u16>) {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        };
        let x = (0..m * k).map(|_| next()).collect();
        let w = (0..n * k)
            .map(|_| half::bf16::from_f32(next()).to_bits())
            .collect();
        (x, w)
    }

    fn assert_close(got: &[f32], want: &[f64], k: usize) {
        // Values are sums of k products of magnitude <= 0.25; f32 accumulation error is far
        // below 1e-6 * k for these sizes.
        let tol = 1e-6 * k as f64 + 1e-6;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tol,
                "element {i}: {g} against {w} (tolerance {tol})"
            );
        }
    }

    /// Every shape class: rows and columns below, at and past the tile sizes and the block,
    /// inner sizes with and without a lane remainder, through the parallel driver and for
    /// every kernel this CPU runs (here: AVX-512, AVX2 and portable).
    #[test]
    fn kernels_match_the_f64_reference() {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 7, 5),
            (1, 33, 16),
            (2, 65, 17),
            (3, 4, 31),
            (4, 4, 32),
            (5, 70, 100),
            (9, 3, 896),
            (32, 97, 257),
        ] {
            let (x, w) = data(m, n, k, (m * 1000 + n * 10 + k) as u64);
            let want = reference(&x, &w, m, n, k);
            assert_close(&matmul_bf16(&x, &w, m, n, k), &want, k);
            // An empty inner dimension is a product of zeros, not a panic.
            assert_eq!(matmul_bf16(&[], &[], m, n, 0), vec![0f32; m * n]);
            for (name, kern) in kernels() {
                let mut dst = vec![0f32; n * m];
                kern(&x, &w, m, k, &mut dst);
                let got: Vec<f32> = (0..m * n).map(|e| dst[(e % n) * m + e / n]).collect();
                eprintln!("{name}: [{m}, {k}] x [{n}, {k}]");
                assert_close(&got, &want, k);
            }
        }
    }

    /// Every path of `matmul_t` (the kernel up to KERNEL_MAX_ROWS rows; above, the widened GEMM
    /// inside the op on a gradient path and outside it in inference) agrees with candle's f32
    /// product of the widened matrix, and the gradient with respect to x is `grad · W`.
    #[test]
    fn matmul_t_paths_and_gradient() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (n, k) = (40, 72);
        for m in [1, KERNEL_MAX_ROWS, KERNEL_MAX_ROWS + 1] {
            let (x, wb) = data(m, n, k, m as u64);
            let wf: Vec<f32> = wb.iter().map(|b| widen(*b)).collect();
            let wf = Tensor::from_vec(wf, (n, k), &dev)?;
            let wbf = wf.to_dtype(DType::BF16)?;
            let xv = candle_core::Var::from_vec(x, (m, k), &dev)?;
            let want = xv.matmul(&wf.t()?)?;
            let got = matmul_t(xv.as_tensor(), &wbf)?;
            let diff = (got.clone() - &want)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-4, "m = {m}: max difference {diff}");
            // Without a gradient path (inference), above KERNEL_MAX_ROWS the widened product.
            let plain = matmul_t(&xv.as_tensor().detach(), &wbf)?;
            let diff = (plain - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "m = {m}, inference: max difference {diff}");
            let g = got.sqr()?.sum_all()?.backward()?;
            let gx = g.get(xv.as_tensor()).expect("x has a gradient");
            let g2 = want.sqr()?.sum_all()?.backward()?;
            let wx = g2.get(xv.as_tensor()).expect("x has a gradient");
            let diff = (gx - wx)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-3, "m = {m}: gradient difference {diff}");
        }
        Ok(())
    }
}
