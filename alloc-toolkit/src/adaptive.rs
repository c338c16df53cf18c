//! [`AdaptiveBatch`]: a batch size that grows while measured peaks leave room
//! under the budget, shrinks when they do not, and halves on out of memory.
//!
//! An out-of-memory error also sets a **ceiling**: the failing size less one.
//! No size at or above the failing one is tried for the next
//! [`CeilingDecay::hold`] recorded batches; after that, each recorded batch
//! raises the ceiling by [`CeilingDecay::rate`] (at least one item), so the
//! size can climb back slowly if the failure was transient, and the ceiling
//! is dropped once it reaches `max`.

use serde::Serialize;

use crate::error::ToolkitError;
use crate::estimator::Estimator;

/// What the last call did to the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Adjustment {
    /// Grew from the first value to the second.
    Grew(usize, usize),
    /// Shrank from the first value to the second.
    Shrank(usize, usize),
    /// Stayed.
    Kept(usize),
}

/// Budgets and limits of an [`AdaptiveBatch`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BatchLimits {
    /// Host bytes a batch may peak at (`None` = no host budget).
    pub host_budget: Option<u64>,
    /// Device bytes a batch may peak at (`None` = no device budget).
    pub device_budget: Option<u64>,
    /// Fraction of each budget to aim for, in (0, 1] (headroom for noise).
    pub target: f64,
    /// Smallest batch (≥ 1).
    pub min: usize,
    /// Largest batch.
    pub max: usize,
    /// Most a batch may grow by in one step (≥ 1.0; 2.0 = at most double).
    pub max_growth: f64,
}

/// How the ceiling left by an out-of-memory error decays.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CeilingDecay {
    /// Recorded batches during which the ceiling holds unchanged.
    pub hold: u32,
    /// After that, the ceiling rises by this fraction a recorded batch
    /// (at least one item).
    pub rate: f64,
}

impl Default for CeilingDecay {
    /// Holds for 16 batches, then rises by 5% a batch.
    fn default() -> Self {
        CeilingDecay {
            hold: 16,
            rate: 0.05,
        }
    }
}

/// The largest size allowed after an out-of-memory error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ceiling {
    /// The largest batch size allowed now.
    pub size: usize,
    /// Batches recorded since it was set.
    pub batches: u32,
}

/// A batch size steered by the peaks of the batches run so far.
#[derive(Clone, Debug)]
pub struct AdaptiveBatch {
    size: usize,
    limits: BatchLimits,
    estimator: Estimator,
    ooms: u64,
    ceiling: Option<Ceiling>,
    decay: CeilingDecay,
}

impl AdaptiveBatch {
    /// Starts at `initial` (clamped to `[min, max]`). Refuses zero budgets, a
    /// target outside (0, 1], `min` of 0, `min > max` and growth below 1.
    pub fn new(initial: usize, limits: BatchLimits) -> Result<Self, ToolkitError> {
        if limits.host_budget == Some(0) {
            return Err(ToolkitError::ZeroBudget {
                what: "AdaptiveBatch host_budget",
            });
        }
        if limits.device_budget == Some(0) {
            return Err(ToolkitError::ZeroBudget {
                what: "AdaptiveBatch device_budget",
            });
        }
        if !(limits.target > 0.0 && limits.target <= 1.0) {
            return Err(ToolkitError::BadFraction {
                what: "AdaptiveBatch target",
                value: limits.target,
            });
        }
        if limits.min == 0 || limits.max < limits.min {
            return Err(ToolkitError::Zero {
                what: "AdaptiveBatch min (and max must be >= min)",
            });
        }
        if limits.max_growth.is_nan() || limits.max_growth < 1.0 || limits.max_growth.is_infinite()
        {
            return Err(ToolkitError::BadSafetyFactor {
                factor: limits.max_growth,
            });
        }
        Ok(AdaptiveBatch {
            size: initial.clamp(limits.min, limits.max),
            limits,
            estimator: Estimator::new(),
            ooms: 0,
            ceiling: None,
            decay: CeilingDecay::default(),
        })
    }

    /// Sets how the ceiling left by an out-of-memory error decays; a
    /// negative or NaN rate is taken as 0 (the ceiling rises one item a batch).
    pub fn with_ceiling_decay(mut self, decay: CeilingDecay) -> Self {
        self.decay = CeilingDecay {
            rate: if decay.rate > 0.0 { decay.rate } else { 0.0 },
            ..decay
        };
        self
    }

    /// The ceiling an out-of-memory error left, if it still applies.
    pub fn ceiling(&self) -> Option<Ceiling> {
        self.ceiling
    }

    /// The batch size to use next.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The limits.
    pub fn limits(&self) -> &BatchLimits {
        &self.limits
    }

    /// The estimator fed by [`record`](Self::record).
    pub fn estimator(&self) -> &Estimator {
        &self.estimator
    }

    /// Out-of-memory events seen.
    pub fn ooms(&self) -> u64 {
        self.ooms
    }

    /// Records that a batch of `items` items peaked at `host_peak` and
    /// `device_peak` bytes, and moves the size toward the most items whose
    /// predicted peaks fit `target × budget`.
    pub fn record(&mut self, items: usize, host_peak: u64, device_peak: u64) -> Adjustment {
        self.estimator.observe(items as u64, host_peak, device_peak);
        self.decay_ceiling();
        let l = self.limits;
        let scale = |b: Option<u64>| b.map(|b| ((b as f64) * l.target) as u64);
        let Some(fit) = self
            .estimator
            .max_items(scale(l.host_budget), scale(l.device_budget))
        else {
            return Adjustment::Kept(self.size);
        };
        let grow_cap = ((self.size as f64) * l.max_growth).floor() as usize;
        let want = usize::try_from(fit)
            .unwrap_or(usize::MAX)
            .min(grow_cap.max(self.size))
            .min(self.ceiling.map_or(usize::MAX, |c| c.size))
            .clamp(l.min, l.max);
        self.set(want)
    }

    /// Halves the size (not below `min`) after an out-of-memory error, and
    /// sets the ceiling below the size that failed.
    pub fn on_oom(&mut self) -> Adjustment {
        self.ooms += 1;
        let below = self.size.saturating_sub(1).max(self.limits.min);
        let size = self.ceiling.map_or(below, |c| c.size.min(below));
        self.ceiling = Some(Ceiling { size, batches: 0 });
        self.set((self.size / 2).max(self.limits.min))
    }

    /// One recorded batch: past the hold, the ceiling rises.
    fn decay_ceiling(&mut self) {
        let Some(c) = &mut self.ceiling else { return };
        c.batches = c.batches.saturating_add(1);
        if c.batches > self.decay.hold {
            let step = ((c.size as f64) * self.decay.rate) as usize;
            c.size = c.size.saturating_add(step.max(1));
            if c.size >= self.limits.max {
                self.ceiling = None;
            }
        }
    }

    fn set(&mut self, new: usize) -> Adjustment {
        let old = self.size;
        self.size = new;
        match new.cmp(&old) {
            std::cmp::Ordering::Greater => Adjustment::Grew(old, new),
            std::cmp::Ordering::Less => Adjustment::Shrank(old, new),
            std::cmp::Ordering::Equal => Adjustment::Kept(old),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BatchLimits {
        BatchLimits {
            host_budget: None,
            device_budget: Some(100 << 20),
            target: 0.9,
            min: 1,
            max: 256,
            max_growth: 2.0,
        }
    }

    /// A simulated workload: 1 MiB fixed + 1 MiB per item on the device.
    fn peak(items: usize) -> u64 {
        (1 << 20) + (items as u64) * (1 << 20)
    }

    #[test]
    fn grows_to_the_budget_then_holds() {
        let mut b = AdaptiveBatch::new(4, limits()).unwrap();
        let mut sizes = vec![];
        for _ in 0..10 {
            let n = b.size();
            b.record(n, 0, peak(n));
            sizes.push(b.size());
        }
        // doubling while far from the budget, then the most that fits 90 MiB
        assert_eq!(&sizes[..3], &[8, 16, 32]);
        let last = *sizes.last().unwrap();
        assert_eq!(last, 89, "{sizes:?}");
        assert!(peak(last) <= (100 << 20) * 9 / 10);
    }

    #[test]
    fn shrinks_when_items_get_heavier_and_halves_on_oom() {
        let mut b = AdaptiveBatch::new(64, limits()).unwrap();
        assert_eq!(b.record(64, 0, 64 * (2 << 20)), Adjustment::Shrank(64, 45));
        assert_eq!(b.on_oom(), Adjustment::Shrank(45, 22));
        for _ in 0..10 {
            b.on_oom();
        }
        assert_eq!(b.size(), 1);
        assert_eq!(b.ooms(), 11);
    }

    proptest::proptest! {
        /// Whatever the peaks, the size stays in [min, max], grows at most by
        /// `max_growth` a step, and on a linear workload settles where the
        /// predicted peak fits the target.
        #[test]
        fn size_stays_in_bounds(per_item in 1u64..(4 << 20), base in 0u64..(8 << 20), noise in proptest::collection::vec(0u64..(1 << 20), 1..40), ooms in proptest::collection::vec(proptest::bool::weighted(0.1), 40)) {
            let l = limits();
            let mut b = AdaptiveBatch::new(4, l).unwrap();
            for (i, extra) in noise.iter().enumerate() {
                let n = b.size();
                if ooms[i] {
                    b.on_oom();
                    proptest::prop_assert_eq!(b.size(), (n / 2).max(l.min));
                } else {
                    b.record(n, 0, base + per_item * n as u64 + extra);
                    proptest::prop_assert!(b.size() as f64 <= (n as f64 * l.max_growth).max(n as f64));
                }
                proptest::prop_assert!((l.min..=l.max).contains(&b.size()));
            }
            let target = (l.device_budget.unwrap() as f64 * l.target) as u64;
            // Before any observation (every step an OOM) there is no fit.
            if let (Some(fit), true) = (b.estimator().device(), b.size() > l.min) {
                proptest::prop_assert!(fit.predict(b.size() as u64) <= target, "{:?} at {}", fit, b.size());
            }
        }
    }

    #[test]
    fn the_failing_size_is_not_tried_again_until_the_ceiling_decays() {
        // 1 MiB per item measured, budget 90 MiB: the estimate says 89
        // fit, but 64 ran out of memory (fragmentation, another tenant).
        let mut b = AdaptiveBatch::new(64, limits())
            .unwrap()
            .with_ceiling_decay(CeilingDecay { hold: 4, rate: 0.1 });
        assert_eq!(b.on_oom(), Adjustment::Shrank(64, 32));
        let mut sizes = vec![];
        for _ in 0..12 {
            let n = b.size();
            b.record(n, 0, peak(n));
            sizes.push(b.size());
        }
        // grows to 63 (not back to 64 at once), holds 4 batches, then rises
        assert_eq!(&sizes[..4], &[63, 63, 63, 63], "{sizes:?}");
        assert_eq!(sizes[4], 69, "63 + 10%: {sizes:?}");
        assert_eq!(*sizes.last().unwrap(), 89, "{sizes:?}");
        assert!(
            b.ceiling().is_some_and(|c| c.size > 89),
            "{:?}",
            b.ceiling()
        );
    }

    proptest::proptest! {
        /// After an out-of-memory error at size n, no size >= n is used for
        /// `hold` recorded batches, whatever the peaks; the ceiling never
        /// falls without another OOM; and with no OOM it is lifted in the end.
        #[test]
        fn the_ceiling_holds_then_decays(hold in 0u32..20, rate in 0.0f64..0.5, start in 2usize..256, steps in proptest::collection::vec((0u64..(2 << 20), proptest::bool::weighted(0.05)), 1..120)) {
            let l = limits();
            let mut b = AdaptiveBatch::new(start, l).unwrap().with_ceiling_decay(CeilingDecay { hold, rate });
            let mut failed: Option<(usize, u32)> = None; // (size, batches since)
            for (per_item, oom) in steps {
                let n = b.size();
                let before = b.ceiling();
                if oom {
                    b.on_oom();
                    let c = b.ceiling().unwrap();
                    proptest::prop_assert!(c.size < n || n == l.min);
                    failed = Some((n, 0));
                } else {
                    b.record(n, 0, per_item * n as u64);
                    if let (Some(old), Some(new)) = (before, b.ceiling()) {
                        proptest::prop_assert!(new.size >= old.size);
                    }
                    if let Some((f, since)) = &mut failed {
                        *since += 1;
                        if *since <= hold && *f > l.min {
                            proptest::prop_assert!(b.size() < *f, "size {} after OOM at {} ({} batches, hold {})", b.size(), f, since, hold);
                        }
                    }
                }
            }
            // Without further OOMs, the ceiling is lifted in the end.
            for _ in 0..(hold as usize + 400) {
                let n = b.size();
                b.record(n, 0, n as u64);
            }
            proptest::prop_assert_eq!(b.ceiling(), None);
        }
    }

    #[test]
    fn bad_limits_are_refused() {
        let bad = [
            BatchLimits {
                device_budget: Some(0),
                ..limits()
            },
            BatchLimits {
                target: 0.0,
                ..limits()
            },
            BatchLimits {
                target: f64::NAN,
                ..limits()
            },
            BatchLimits { min: 0, ..limits() },
            BatchLimits {
                max_growth: 0.5,
                ..limits()
            },
        ];
        for l in bad {
            assert!(AdaptiveBatch::new(4, l).is_err(), "{l:?}");
        }
    }
}
