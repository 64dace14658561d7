//! Noisy-neighbour statistics over raw latency samples: the tenant alone
//! and with a neighbour, the interference ratio (p99 with / p99 alone) with
//! a bootstrap confidence interval, requests/s and errors.
//!
//! Method after Japke et al. (UCC 2025, arXiv 2511.03533): the same tenant
//! load is measured alone and next to a noise generator in the same run, and
//! the change is judged by a percentile-bootstrap interval rather than by a
//! single number. Samples are resampled independently per condition (the two
//! runs are separate sample sets), 2000 resamples, fixed seed, so the same
//! samples always give the same report. A ratio whose interval contains 1
//! is "no measurable interference".
//!
//! Percentiles interpolate linearly between closest ranks, the definition
//! of the harness's `stats::percentile`, so figures agree across tables.

use serde::{Deserialize, Serialize};

/// Bootstrap resamples for the ratio intervals.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// Fixed seed: the same samples always give the same interval.
pub const BOOTSTRAP_SEED: u64 = 0x0015_01ab;

/// Failures of the statistics (bad input only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterferenceError {
    /// A run holds no finite latency sample.
    #[error("The {which} run has no latency samples")]
    NoSamples { which: &'static str },
    /// Alone and with-neighbour runs used different load patterns.
    #[error("The runs used different load patterns ({alone} alone, {with} with the neighbour)")]
    PatternMismatch { alone: String, with: String },
}

/// How the tenant load was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LoadPattern {
    /// One request at a time on one keep-alive connection.
    Sequential,
    /// `connections` connections, each sequential, in parallel.
    Concurrent { connections: u32 },
}

impl std::fmt::Display for LoadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sequential => write!(f, "sequential"),
            Self::Concurrent { connections } => write!(f, "concurrent x{connections}"),
        }
    }
}

/// One tenant load run, raw: what the HTTP probe measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadRun {
    pub pattern: LoadPattern,
    /// Latency of each answered request, microseconds, in send order.
    pub latencies_us: Vec<f64>,
    /// Requests that failed (connection error, timeout, non-2xx).
    pub errors: u64,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
}

/// A load run summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantSummary {
    pub n: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Answered requests per second of wall time.
    pub requests_per_s: f64,
    pub errors: u64,
}

/// A ratio and its 95% percentile-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatioCi {
    pub ratio: f64,
    pub ci95: [f64; 2],
}

impl RatioCi {
    /// True when the interval lies wholly above 1: the neighbour measurably
    /// slowed the tenant.
    pub fn slower(&self) -> bool {
        self.ci95[0] > 1.0
    }
}

/// The tenant alone vs with a neighbour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interference {
    pub pattern: LoadPattern,
    pub alone: TenantSummary,
    pub with_neighbour: TenantSummary,
    /// p99 with / p99 alone: the interference ratio.
    pub p99_ratio: RatioCi,
    /// p50 with / p50 alone.
    pub p50_ratio: RatioCi,
    /// Requests/s with / alone (below 1: the neighbour cost throughput).
    pub throughput_ratio: f64,
}

fn finite_sorted(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s
}

/// Percentile with linear interpolation between closest ranks (`q` in
/// 0..=1); `sorted` ascending and non-empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    debug_assert!(!sorted.is_empty());
    if sorted.len() == 1 {
        return sorted[0];
    }
    let rank = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

impl LoadRun {
    /// Summary of this run; `None` without samples.
    pub fn summary(&self) -> Option<TenantSummary> {
        let s = finite_sorted(&self.latencies_us);
        if s.is_empty() {
            return None;
        }
        Some(TenantSummary {
            n: s.len(),
            p50_us: percentile(&s, 0.5),
            p99_us: percentile(&s, 0.99),
            requests_per_s: if self.wall_s > 0.0 {
                s.len() as f64 / self.wall_s
            } else {
                f64::NAN
            },
            errors: self.errors,
        })
    }

    /// Several runs of the same pattern as one (duet-style interleaved
    /// rounds are pooled before comparing); `None` if patterns differ or
    /// there is nothing to pool.
    pub fn pool(runs: &[LoadRun]) -> Option<LoadRun> {
        let first = runs.first()?;
        if runs.iter().any(|r| r.pattern != first.pattern) {
            return None;
        }
        Some(LoadRun {
            pattern: first.pattern,
            latencies_us: runs
                .iter()
                .flat_map(|r| r.latencies_us.iter().copied())
                .collect(),
            errors: runs.iter().map(|r| r.errors).sum(),
            wall_s: runs.iter().map(|r| r.wall_s).sum(),
        })
    }
}

/// Percentile-bootstrap 95% interval of `q(with) / q(alone)`, resampling
/// each sorted sample set independently.
pub fn bootstrap_ratio_ci(
    alone: &[f64],
    with: &[f64],
    q: f64,
    resamples: usize,
    seed: u64,
) -> [f64; 2] {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut buf_a = vec![0.0; alone.len()];
    let mut buf_w = vec![0.0; with.len()];
    let mut ratios = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for slot in buf_a.iter_mut() {
            *slot = alone[rng.usize(..alone.len())];
        }
        for slot in buf_w.iter_mut() {
            *slot = with[rng.usize(..with.len())];
        }
        buf_a.sort_by(f64::total_cmp);
        buf_w.sort_by(f64::total_cmp);
        let r = percentile(&buf_w, q) / percentile(&buf_a, q);
        if r.is_finite() {
            ratios.push(r);
        }
    }
    if ratios.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    ratios.sort_by(f64::total_cmp);
    [percentile(&ratios, 0.025), percentile(&ratios, 0.975)]
}

/// Compares the tenant alone with the tenant next to a neighbour.
pub fn interference(alone: &LoadRun, with: &LoadRun) -> Result<Interference, InterferenceError> {
    if alone.pattern != with.pattern {
        return Err(InterferenceError::PatternMismatch {
            alone: alone.pattern.to_string(),
            with: with.pattern.to_string(),
        });
    }
    let a = finite_sorted(&alone.latencies_us);
    let w = finite_sorted(&with.latencies_us);
    let sa = alone
        .summary()
        .ok_or(InterferenceError::NoSamples { which: "alone" })?;
    let sw = with.summary().ok_or(InterferenceError::NoSamples {
        which: "with-neighbour",
    })?;
    let ratio = |q: f64, num: f64, den: f64| RatioCi {
        ratio: num / den,
        ci95: bootstrap_ratio_ci(&a, &w, q, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
    };
    Ok(Interference {
        pattern: alone.pattern,
        p99_ratio: ratio(0.99, sw.p99_us, sa.p99_us),
        p50_ratio: ratio(0.5, sw.p50_us, sa.p50_us),
        throughput_ratio: sw.requests_per_s / sa.requests_per_s,
        alone: sa,
        with_neighbour: sw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lat: Vec<f64>, errors: u64, wall_s: f64) -> LoadRun {
        LoadRun {
            pattern: LoadPattern::Sequential,
            latencies_us: lat,
            errors,
            wall_s,
        }
    }

    /// Deterministic "latencies": base plus a spread, no randomness.
    fn spread(base: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| base + (i % 17) as f64 * base * 0.01)
            .collect()
    }

    #[test]
    fn percentiles_interpolate_like_the_harness() {
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&s, 0.5), 2.5);
        assert_eq!(percentile(&s, 0.0), 1.0);
        assert_eq!(percentile(&s, 1.0), 4.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn a_neighbour_that_doubles_latency_gives_a_ratio_of_two_with_an_interval_above_one() {
        let alone = run(spread(100.0, 200), 0, 0.02);
        let with = run(spread(200.0, 200), 3, 0.04);
        let i = interference(&alone, &with).unwrap();
        assert!((i.p99_ratio.ratio - 2.0).abs() < 1e-9, "{:?}", i.p99_ratio);
        assert!((i.p50_ratio.ratio - 2.0).abs() < 1e-9);
        assert!(i.p99_ratio.ci95[0] <= 2.0 && i.p99_ratio.ci95[1] >= 1.9);
        assert!(i.p99_ratio.slower());
        assert!((i.throughput_ratio - 0.5).abs() < 1e-9);
        assert_eq!(i.with_neighbour.errors, 3);
        assert_eq!(i.alone.n, 200);
        assert!((i.alone.requests_per_s - 10_000.0).abs() < 1e-6);
    }

    #[test]
    fn the_same_distribution_gives_an_interval_around_one() {
        let alone = run(spread(100.0, 150), 0, 1.0);
        let with = run(spread(100.0, 150).into_iter().rev().collect(), 0, 1.0);
        let i = interference(&alone, &with).unwrap();
        assert_eq!(i.p99_ratio.ratio, 1.0);
        assert!(i.p99_ratio.ci95[0] <= 1.0 && i.p99_ratio.ci95[1] >= 1.0);
        assert!(!i.p99_ratio.slower());
        // Deterministic: same samples, same interval.
        assert_eq!(interference(&alone, &with).unwrap(), i);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let empty = run(vec![f64::NAN], 5, 1.0);
        let ok = run(vec![1.0], 0, 1.0);
        assert_eq!(
            interference(&empty, &ok).unwrap_err(),
            InterferenceError::NoSamples { which: "alone" }
        );
        let mut conc = ok.clone();
        conc.pattern = LoadPattern::Concurrent { connections: 4 };
        let e = interference(&ok, &conc).unwrap_err();
        assert_eq!(
            e.to_string(),
            "The runs used different load patterns (sequential alone, concurrent x4 with the neighbour)"
        );
    }

    #[test]
    fn interleaved_rounds_pool_into_one_run() {
        let p = LoadRun::pool(&[run(vec![1.0, 2.0], 1, 0.5), run(vec![3.0], 2, 0.5)]).unwrap();
        assert_eq!(p.latencies_us, [1.0, 2.0, 3.0]);
        assert_eq!((p.errors, p.wall_s), (3, 1.0));
        let mut c = run(vec![1.0], 0, 1.0);
        c.pattern = LoadPattern::Concurrent { connections: 2 };
        assert!(LoadRun::pool(&[run(vec![1.0], 0, 1.0), c]).is_none());
        assert!(LoadRun::pool(&[]).is_none());
    }
}
