//! Proportions with 95% Wilson score intervals.

use serde::{Deserialize, Serialize};

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// A proportion `k / n` with its 95% Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub k: usize,
    pub n: usize,
    pub rate: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Rate {
    /// `k` successes out of `n` (an empty sample gives NaN rate and the interval [0, 1]).
    pub fn new(k: usize, n: usize) -> Rate {
        let (lo, hi) = wilson(k, n);
        Rate {
            k,
            n,
            rate: if n == 0 {
                f64::NAN
            } else {
                k as f64 / n as f64
            },
            lo,
            hi,
        }
    }

    /// `41.2% [36.1, 46.5] (103/250)`; `n/a (0/0)` for an empty sample.
    pub fn display(&self) -> String {
        if self.n == 0 {
            return "n/a (0/0)".into();
        }
        format!(
            "{:.1}% [{:.1}, {:.1}] ({}/{})",
            100.0 * self.rate,
            100.0 * self.lo,
            100.0 * self.hi,
            self.k,
            self.n
        )
    }
}

/// 95% Wilson score interval of `k / n`.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Difference of two paired proportions (the same prompts under two conditions), with a 95%
/// interval (Newcombe's method 10: the Wilson intervals of each margin, combined through the
/// table's continuity-corrected phi).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedDiff {
    pub n: usize,
    /// B's rate minus A's rate.
    pub diff: f64,
    pub lo: f64,
    pub hi: f64,
}

/// `pairs[i] = (a_i, b_i)` outcomes of the same prompt under A and under B.
pub fn paired_diff(pairs: &[(bool, bool)]) -> PairedDiff {
    let n = pairs.len();
    if n == 0 {
        return PairedDiff {
            n,
            diff: f64::NAN,
            lo: -1.0,
            hi: 1.0,
        };
    }
    let a = pairs.iter().filter(|p| p.0).count();
    let b = pairs.iter().filter(|p| p.1).count();
    let both = pairs.iter().filter(|p| p.0 && p.1).count();
    let neither = pairs.iter().filter(|p| !p.0 && !p.1).count();
    let only_a = a - both;
    let only_b = b - both;
    let nf = n as f64;
    let (p1, p2) = (a as f64 / nf, b as f64 / nf);
    let (l1, u1) = wilson(a, n);
    let (l2, u2) = wilson(b, n);
    let d = p2 - p1;
    let phi = newcombe_phi(both, only_a, only_b, neither);
    let dl = ((p2 - l2).powi(2) - 2.0 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1).powi(2))
        .max(0.0)
        .sqrt();
    let du = ((u2 - p2).powi(2) - 2.0 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1).powi(2))
        .max(0.0)
        .sqrt();
    PairedDiff {
        n,
        diff: d,
        lo: (d - dl).max(-1.0),
        hi: (d + du).min(1.0),
    }
}

/// The correlation of a paired 2x2 table as Newcombe's method 10 uses it: phi, with the
/// continuity correction of its numerator (`ad - bc` becomes `max(ad - bc - n/2, 0)` when
/// positive); 0 when a margin is empty. In f64 throughout, so large tables do not overflow.
fn newcombe_phi(both: usize, only_a: usize, only_b: usize, neither: usize) -> f64 {
    let [a, b, c, d] = [both, only_a, only_b, neither].map(|x| x as f64);
    let denom = (a + b) * (c + d) * (a + c) * (b + d);
    if denom <= 0.0 {
        return 0.0;
    }
    let mut num = a * d - b * c;
    if num > 0.0 {
        num = (num - (a + b + c + d) / 2.0).max(0.0);
    }
    num / denom.sqrt()
}

/// Mean of paired differences `b_i - a_i` with a 95% normal-approximation interval
/// (`1.96 s / sqrt(n)`): for continuous per-item measures (cross-entropy per token, KL per
/// prompt) of the same items under two conditions.
pub fn paired_mean_diff(a: &[f64], b: &[f64]) -> PairedDiff {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let n = d.len();
    if n < 2 {
        return PairedDiff {
            n,
            diff: d.first().copied().unwrap_or(f64::NAN),
            lo: f64::NEG_INFINITY,
            hi: f64::INFINITY,
        };
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = 1.96 * (var / n as f64).sqrt();
    PairedDiff {
        n,
        diff: mean,
        lo: mean - half,
        hi: mean + half,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_mean_difference_and_interval() {
        // Differences 1, 2, 3, 4: mean 2.5, sd 1.291, half-width 1.96 * 1.291 / 2 = 1.265.
        let a = [0.0, 0.0, 0.0, 0.0];
        let b = [1.0, 2.0, 3.0, 4.0];
        let d = paired_mean_diff(&a, &b);
        assert_eq!(d.n, 4);
        assert!((d.diff - 2.5).abs() < 1e-12);
        assert!((d.hi - d.diff - 1.96 * (5.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-9);
        // Pairing matters: a shared shift cancels, so the interval is narrow.
        let a = [10.0, 20.0, 30.0];
        let b = [10.1, 20.1, 30.1];
        let d = paired_mean_diff(&a, &b);
        assert!((d.diff - 0.1).abs() < 1e-9 && d.hi - d.lo < 1e-6);
    }

    #[test]
    fn wilson_matches_published_values() {
        // Newcombe (1998), table I: 81/263 -> 0.2553 to 0.3662.
        let (lo, hi) = wilson(81, 263);
        assert!(
            (lo - 0.2553).abs() < 5e-4 && (hi - 0.3662).abs() < 5e-4,
            "{lo} {hi}"
        );
        // 0/10 -> 0 to 0.2775.
        let (lo, hi) = wilson(0, 10);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 5e-4, "{hi}");
        // 100 prompts at 50% give about ±9.6 points (METHODS.md: about ±9).
        let (lo, hi) = wilson(50, 100);
        assert!((hi - lo - 0.192).abs() < 0.005);
    }

    #[test]
    fn paired_difference_matches_newcombe() {
        // Newcombe (1998), table III, method 10: e, f, g, h = 20, 12, 2, 16 (both, only the
        // first, only the second, neither): 0.2, 95% interval 0.0562 to 0.3292. B - A here is
        // the negative of the paper's first minus second.
        let table = |both, only_a, only_b, neither| {
            let mut p = vec![(true, true); both];
            p.extend(vec![(true, false); only_a]);
            p.extend(vec![(false, true); only_b]);
            p.extend(vec![(false, false); neither]);
            paired_diff(&p)
        };
        let close = |d: PairedDiff, lo: f64, hi: f64| {
            assert!(
                (d.lo - lo).abs() < 5e-5 && (d.hi - hi).abs() < 5e-5,
                "{d:?} against [{lo}, {hi}]"
            );
        };
        close(table(20, 12, 2, 16), -0.3292, -0.0562);
        // Two more tables where the correction moves the limits (values computed from the
        // formula): 35, 14, 0, 1 and 18, 14, 0, 18.
        close(table(35, 14, 0, 1), -0.4175, -0.1461);
        close(table(18, 14, 0, 18), -0.3963, -0.1441);
        // R's contingencytables package, Cavo's example 59, 6, 16, 80: -0.0621, -0.1186 to
        // -0.0046 (a positive ad - bc, corrected).
        close(table(59, 6, 16, 80), 0.0046, 0.1186);
        // A negative ad - bc (36 * 0 - 12 * 2) is left as it is: 36, 12, 2, 0 gives 0.2,
        // 0.0569 to 0.3404 (from the formula).
        close(table(36, 12, 2, 0), -0.3404, -0.0569);
        // Every pair concordant, both outcomes present: no difference, but not certainty.
        let d = table(20, 0, 0, 20);
        assert!(d.diff == 0.0 && d.lo < -0.04 && d.hi > 0.04, "{d:?}");
        // A table whose margins' product passes 2^64 does not overflow phi (f64 products):
        // 0, -0.00343 to 0.00343.
        let big = table(40_000, 30_000, 30_000, 40_000);
        assert!(
            (big.lo + 0.003429).abs() < 1e-6 && (big.hi - 0.003429).abs() < 1e-6,
            "{big:?}"
        );
    }

    #[test]
    fn paired_difference_behaves() {
        // The same outcomes under both conditions: no difference, a tight interval around 0.
        let same: Vec<(bool, bool)> = (0..100).map(|i| (i % 3 == 0, i % 3 == 0)).collect();
        let d = paired_diff(&same);
        assert_eq!(d.diff, 0.0);
        assert!(d.lo < 0.0 && d.hi > 0.0 && d.hi - d.lo < 0.1, "{d:?}");
        // Every refusal removed: -1, and the interval excludes anything above -0.9.
        let all: Vec<(bool, bool)> = vec![(true, false); 100];
        let d = paired_diff(&all);
        assert_eq!(d.diff, -1.0);
        assert!(d.hi < -0.9 && d.lo >= -1.0, "{d:?}");
        // 30 of 100 refusals removed, 5 added: the interval holds the estimate and excludes 0.
        let mut mixed = vec![(true, false); 30];
        mixed.extend(vec![(false, true); 5]);
        mixed.extend(vec![(true, true); 20]);
        mixed.extend(vec![(false, false); 45]);
        let d = paired_diff(&mixed);
        assert!((d.diff + 0.25).abs() < 1e-12);
        assert!(d.lo < d.diff && d.diff < d.hi && d.hi < 0.0, "{d:?}");
    }
}
