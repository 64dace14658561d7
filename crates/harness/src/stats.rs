//! Summary statistics for raw samples: percentiles, a bootstrap confidence
//! interval for the median, and Tukey outlier flags.
//!
//! Samples are never dropped: outliers are flagged by index so a reader can
//! see them next to the raw values.

use serde::{Deserialize, Serialize};

/// Summary of one sample set (units are whatever the samples are in).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// 95% bootstrap confidence interval of the median (percentile method).
    pub p50_ci95: [f64; 2],
    /// Indices (into the raw samples) outside the Tukey fences (1.5 IQR).
    pub outliers: Vec<usize>,
}

/// Bootstrap resamples used for the confidence interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Percentile with linear interpolation between closest ranks (`q` in 0..=1).
/// `sorted` must be sorted ascending and non-empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    debug_assert!(!sorted.is_empty());
    if sorted.len() == 1 {
        return sorted[0];
    }
    let rank = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    s
}

/// Summarise `samples`; `None` when there are none.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let s = sorted(samples);
    if s.is_empty() {
        return None;
    }
    let n = s.len();
    let mean = s.iter().sum::<f64>() / n as f64;
    let q1 = percentile(&s, 0.25);
    let q3 = percentile(&s, 0.75);
    let iqr = q3 - q1;
    let (lo_fence, hi_fence) = (q1 - 1.5 * iqr, q3 + 1.5 * iqr);
    let outliers = samples
        .iter()
        .enumerate()
        .filter(|(_, v)| **v < lo_fence || **v > hi_fence)
        .map(|(i, _)| i)
        .collect();
    Some(Summary {
        n,
        min: s[0],
        max: s[n - 1],
        mean,
        p50: percentile(&s, 0.5),
        p90: percentile(&s, 0.9),
        p99: percentile(&s, 0.99),
        p50_ci95: bootstrap_median_ci(&s, BOOTSTRAP_RESAMPLES, 0x0015_01ab),
        outliers,
    })
}

/// Percentile-bootstrap 95% interval of the median. Deterministic for a seed
/// so that the same samples always give the same report.
pub fn bootstrap_median_ci(sorted_samples: &[f64], resamples: usize, seed: u64) -> [f64; 2] {
    let n = sorted_samples.len();
    if n < 2 {
        let v = sorted_samples.first().copied().unwrap_or(f64::NAN);
        return [v, v];
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut medians = Vec::with_capacity(resamples);
    let mut buf = vec![0.0; n];
    for _ in 0..resamples {
        for slot in buf.iter_mut() {
            *slot = sorted_samples[rng.usize(..n)];
        }
        buf.sort_by(|a, b| a.total_cmp(b));
        medians.push(percentile(&buf, 0.5));
    }
    medians.sort_by(|a, b| a.total_cmp(b));
    [percentile(&medians, 0.025), percentile(&medians, 0.975)]
}

/// Ordinary least squares fit `y = intercept + slope * x`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LinearFit {
    pub slope: f64,
    pub intercept: f64,
    /// Coefficient of determination.
    pub r2: f64,
}

/// Fit a line through the points; `None` with fewer than two distinct x.
pub fn linear_fit(points: &[(f64, f64)]) -> Option<LinearFit> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss_tot: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    let ss_res: f64 = points
        .iter()
        .map(|p| (p.1 - (intercept + slope * p.0)).powi(2))
        .sum();
    let r2 = if ss_tot == 0.0 {
        1.0
    } else {
        1.0 - ss_res / ss_tot
    };
    Some(LinearFit {
        slope,
        intercept,
        r2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&s, 0.5), 3.0);
        assert_eq!(percentile(&s, 0.0), 1.0);
        assert_eq!(percentile(&s, 1.0), 5.0);
        assert!((percentile(&s, 0.9) - 4.6).abs() < 1e-9);
    }

    #[test]
    fn summary_flags_outlier_without_dropping_it() {
        let samples = [10.0, 11.0, 10.5, 10.2, 10.8, 95.0, 10.1, 10.4];
        let s = summarize(&samples).unwrap();
        assert_eq!(s.n, 8);
        assert_eq!(s.max, 95.0);
        assert_eq!(s.outliers, vec![5]);
        assert!(s.p50_ci95[0] <= s.p50 && s.p50 <= s.p50_ci95[1]);
    }

    #[test]
    fn bootstrap_is_deterministic() {
        let s = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(
            bootstrap_median_ci(&s, 500, 7),
            bootstrap_median_ci(&s, 500, 7)
        );
    }

    #[test]
    fn empty_has_no_summary() {
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn linear_fit_recovers_line() {
        let pts: Vec<(f64, f64)> = (1..=10).map(|i| (i as f64, 3.0 + 2.0 * i as f64)).collect();
        let f = linear_fit(&pts).unwrap();
        assert!((f.slope - 2.0).abs() < 1e-9);
        assert!((f.intercept - 3.0).abs() < 1e-9);
        assert!((f.r2 - 1.0).abs() < 1e-9);
    }
}
