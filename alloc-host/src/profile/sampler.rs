//! Byte-interval sampling, the way tcmalloc and jemalloc do it.
//!
//! Each thread counts down the bytes it allocates; the interval between two
//! samples is drawn from an exponential distribution of mean `mean` bytes, so
//! sampling is a Poisson process over allocated bytes: an allocation of `s`
//! bytes is sampled with probability `p(s) = 1 − exp(−s / mean)`, whatever came
//! before it (the exponential has no memory). Weighting a sample by `1 / p(s)`
//! makes the estimates unbiased: `E[Σ sampled 1/p(s)] = number of allocations`
//! and `E[Σ sampled s/p(s)] = bytes allocated` (the formula of tcmalloc's
//! `sampler.h` and jemalloc's `prof` output, "unsampling").
//!
//! These are pure functions over a caller-held state so that the statistics
//! can be tested with a seeded generator ([`Sampler`]); the allocator keeps
//! the same two words per thread (see `profile/mod.rs`).

/// The default mean interval between samples: 512 KiB, as jemalloc and
/// tcmalloc.
pub const DEFAULT_MEAN: u64 = 512 * 1024;

/// One step of splitmix64: a non-allocating 64-bit generator with a one-word
/// state (Steele, Lea, Flood 2014).
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An exponential interval of mean `mean` bytes from one uniform 64-bit draw
/// `r`: `⌊−ln(u) · mean⌋` with `u` uniform in (0, 1]. Counting down from it,
/// an allocation of `s` bytes is sampled when the count goes below zero, that
/// is with probability `P(⌊x⌋ < s) = P(x < s) = 1 − exp(−s / mean)`.
#[inline]
pub fn interval(r: u64, mean: u64) -> i64 {
    // 53 random bits, shifted into (0, 1].
    let u = ((r >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64);
    let x = -u.ln() * mean as f64;
    // At most ~36.7 · mean; clamp for absurd means.
    if x >= (i64::MAX / 2) as f64 {
        i64::MAX / 2
    } else {
        x as i64
    }
}

/// The weights of a sampled allocation of `size` bytes at mean `mean`: the
/// number of allocations it stands for, `1 / (1 − exp(−size / mean))`, and the
/// bytes, `size` times that.
#[inline]
pub fn weight(size: u64, mean: u64) -> (f64, f64) {
    let p = -(-(size as f64) / mean as f64).exp_m1();
    if p <= 0.0 {
        return (0.0, 0.0);
    }
    let count = 1.0 / p;
    (count, size as f64 * count)
}

/// The counting-down rule shared by the allocator and [`Sampler`]: subtracts
/// `size` from the countdown and says whether this allocation is sampled (the
/// count went below zero). After a sample the caller draws a fresh interval
/// with [`interval`] (the overshoot is dropped: the next interval must be a
/// fresh exponential for the sampling probability to stay `p(s)`).
#[inline(always)]
pub fn step(countdown: i64, size: usize) -> (i64, bool) {
    let left = countdown.wrapping_sub(size as i64);
    (left, left < 0)
}

/// A sampler over a seeded generator, for tests and simulations: the same
/// rule and formulas the allocator runs per thread.
#[derive(Clone, Debug)]
pub struct Sampler {
    rng: u64,
    countdown: i64,
    mean: u64,
}

impl Sampler {
    /// A sampler of mean interval `mean` bytes (≥ 1) seeded with `seed`.
    pub fn new(seed: u64, mean: u64) -> Self {
        let mut rng = seed;
        let mean = mean.max(1);
        let countdown = interval(splitmix64(&mut rng), mean);
        Sampler {
            rng,
            countdown,
            mean,
        }
    }

    /// One allocation of `size` bytes: `Some((count weight, bytes weight))`
    /// when it is sampled.
    pub fn observe(&mut self, size: usize) -> Option<(f64, f64)> {
        let (left, sampled) = step(self.countdown, size);
        if !sampled {
            self.countdown = left;
            return None;
        }
        self.countdown = interval(splitmix64(&mut self.rng), self.mean);
        Some(weight(size as u64, self.mean))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean and standard error of the estimates of `runs` independent runs.
    fn estimates(runs: u64, mean: u64, sizes: &[(usize, u64)]) -> ((f64, f64), (f64, f64)) {
        let (mut sc, mut sc2, mut sb, mut sb2) = (0.0, 0.0, 0.0, 0.0);
        for run in 0..runs {
            let mut s = Sampler::new(0xDEAD_BEEF ^ run.wrapping_mul(0x1000_0001), mean);
            let (mut c, mut b) = (0.0, 0.0);
            for &(size, n) in sizes {
                for _ in 0..n {
                    if let Some((wc, wb)) = s.observe(size) {
                        c += wc;
                        b += wb;
                    }
                }
            }
            sc += c;
            sc2 += c * c;
            sb += b;
            sb2 += b * b;
        }
        let r = runs as f64;
        let stat = |s: f64, s2: f64| {
            let m = s / r;
            let var = (s2 / r - m * m).max(0.0);
            (m, (var / r).sqrt())
        };
        (stat(sc, sc2), stat(sb, sb2))
    }

    /// The estimator is unbiased: over many seeded runs the mean estimate of
    /// allocated bytes and allocations lies within 4 standard errors of the
    /// truth, for sizes far below, near and above the mean. A wrong weight
    /// (for example `mean` per sample, or `size / p` with `p = size / mean`)
    /// is biased for small or large sizes by far more than 4 SE.
    #[test]
    fn estimates_are_unbiased() {
        let mean = DEFAULT_MEAN;
        // Mixed workload: many small, some near the mean, a few large.
        let sizes = [
            (48usize, 40_000u64),
            (4_096, 2_000),
            (600_000, 40),
            (3 << 20, 8),
        ];
        let truth_bytes: f64 = sizes.iter().map(|&(s, n)| (s as u64 * n) as f64).sum();
        let truth_count: f64 = sizes.iter().map(|&(_, n)| n as f64).sum();
        let ((mc, sec), (mb, seb)) = estimates(2_000, mean, &sizes);
        assert!(
            (mb - truth_bytes).abs() <= 4.0 * seb,
            "bytes: mean estimate {mb} vs truth {truth_bytes}, SE {seb}"
        );
        assert!(
            (mc - truth_count).abs() <= 4.0 * sec,
            "count: mean estimate {mc} vs truth {truth_count}, SE {sec}"
        );
        // The test has power: the SE is small against the truth.
        assert!(
            seb < truth_bytes * 0.02,
            "SE {seb} too large to detect bias"
        );
        // Each size class alone, where a wrong formula shows most.
        for &(s, n) in &sizes {
            let ((_, _), (mb, seb)) = estimates(1_000, mean, &[(s, n * 4)]);
            let truth = (s as u64 * n * 4) as f64;
            assert!(
                (mb - truth).abs() <= 4.0 * seb + truth * 1e-9,
                "size {s}: mean estimate {mb} vs truth {truth}, SE {seb}"
            );
        }
    }

    /// Intervals have the requested mean (an exponential's mean = its SE·√n).
    #[test]
    fn intervals_have_the_mean() {
        let mut r = 7u64;
        let n = 200_000u64;
        let mean = 1_000_000u64;
        let sum: f64 = (0..n)
            .map(|_| interval(splitmix64(&mut r), mean) as f64)
            .sum();
        let m = sum / n as f64;
        let se = mean as f64 / (n as f64).sqrt();
        assert!((m - mean as f64).abs() < 4.0 * se, "mean {m}, SE {se}");
    }

    #[test]
    fn weights_of_huge_and_tiny_blocks() {
        let (c, b) = weight(100 << 20, DEFAULT_MEAN);
        assert!((c - 1.0).abs() < 1e-9 && (b - (100 << 20) as f64).abs() < 1.0);
        let (c, _) = weight(1, DEFAULT_MEAN);
        assert!((c - DEFAULT_MEAN as f64).abs() / (DEFAULT_MEAN as f64) < 1e-5);
    }
}
