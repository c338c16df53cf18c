//! [`Estimator`]: learns how many bytes an item costs (host and device) from
//! measured scope peaks, instead of hand-written formulas.
//!
//! Each observation is (items, peak bytes). The model is `peak = base +
//! per_item × items`, fitted by least squares over the last
//! [`Estimator::WINDOW`] observations; predictions add the largest amount by
//! which an observation exceeded the fit, so a prediction is never below a peak
//! that was already seen for that many items.

use std::collections::VecDeque;

use alloc_host::{ScopeBuilder, ScopeStats};
use serde::Serialize;

use crate::error::ToolkitError;

/// A fitted line `peak = base + per_item × items`, plus its worst excess.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Fit {
    /// Bytes independent of the item count.
    pub base: f64,
    /// Bytes per item.
    pub per_item: f64,
    /// The largest `observed − fitted` seen (≥ 0), added to predictions.
    pub margin: f64,
}

impl Fit {
    /// Predicted peak for `items`, bytes.
    pub fn predict(&self, items: u64) -> u64 {
        (self.base + self.per_item * items as f64 + self.margin)
            .max(0.0)
            .ceil() as u64
    }

    /// The most items whose predicted peak fits in `budget` (0 if none).
    pub fn max_items(&self, budget: u64) -> u64 {
        let room = budget as f64 - self.base - self.margin;
        if room <= 0.0 {
            0
        } else if self.per_item <= 0.0 {
            u64::MAX
        } else {
            (room / self.per_item).floor() as u64
        }
    }

    fn from(points: &VecDeque<(u64, u64)>) -> Option<Fit> {
        if points.is_empty() {
            return None;
        }
        let n = points.len() as f64;
        let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
        let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
        let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
        let sxy: f64 = points
            .iter()
            .map(|p| (p.0 as f64 - mx) * (p.1 as f64 - my))
            .sum();
        let (base, per_item) = if sxx > 0.0 && sxy >= 0.0 {
            let slope = sxy / sxx;
            (my - slope * mx, slope)
        } else {
            // One item count only (or a falling trend): bytes per item from
            // the worst ratio, no base.
            let worst = points
                .iter()
                .map(|p| p.1 as f64 / p.0.max(1) as f64)
                .fold(0.0, f64::max);
            (0.0, worst)
        };
        let margin = points
            .iter()
            .map(|p| p.1 as f64 - (base + per_item * p.0 as f64))
            .fold(0.0, f64::max);
        Some(Fit {
            base,
            per_item,
            margin,
        })
    }
}

/// Learns bytes per item for host and device memory from scope peaks.
#[derive(Clone, Debug, Default)]
pub struct Estimator {
    host: VecDeque<(u64, u64)>,
    device: VecDeque<(u64, u64)>,
}

impl Estimator {
    /// Observations kept (the oldest are dropped first).
    pub const WINDOW: usize = 32;

    /// An estimator with no observations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `items` items peaked at `host_peak` host bytes and
    /// `device_peak` device bytes. Zero items are ignored.
    pub fn observe(&mut self, items: u64, host_peak: u64, device_peak: u64) {
        if items == 0 {
            return;
        }
        for (q, v) in [(&mut self.host, host_peak), (&mut self.device, device_peak)] {
            if q.len() == Self::WINDOW {
                q.pop_front();
            }
            q.push_back((items, v));
        }
    }

    /// Records a scope's host and device peaks for `items` items.
    pub fn observe_scope(&mut self, items: u64, stats: &ScopeStats) {
        self.observe(items, stats.peak_bytes, stats.device.peak_bytes);
    }

    /// Runs `f` in a fresh scope named `name` and records its peaks for
    /// `items` items.
    pub fn measure<R>(
        &mut self,
        name: &str,
        items: u64,
        f: impl FnOnce() -> R,
    ) -> Result<R, ToolkitError> {
        let guard = ScopeBuilder::new(name).enter()?;
        let r = f();
        let stats = guard.stats();
        drop(guard);
        self.observe_scope(items, &stats);
        Ok(r)
    }

    /// The host fit, once anything was observed.
    pub fn host(&self) -> Option<Fit> {
        Fit::from(&self.host)
    }

    /// The device fit, once anything was observed.
    pub fn device(&self) -> Option<Fit> {
        Fit::from(&self.device)
    }

    /// Observations held.
    pub fn len(&self) -> usize {
        self.host.len()
    }

    /// Whether nothing was observed.
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// The most items that fit both budgets (`None` = no budget on that side),
    /// or `None` before any observation.
    pub fn max_items(&self, host_budget: Option<u64>, device_budget: Option<u64>) -> Option<u64> {
        let h = host_budget.map(|b| self.host().map(|f| f.max_items(b)));
        let d = device_budget.map(|b| self.device().map(|f| f.max_items(b)));
        match (h, d) {
            (Some(None), _) | (_, Some(None)) => None,
            (Some(Some(a)), Some(Some(b))) => Some(a.min(b)),
            (Some(Some(a)), None) | (None, Some(Some(a))) => Some(a),
            (None, None) => Some(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_line_exactly() {
        let mut e = Estimator::new();
        for items in [4u64, 8, 16, 32] {
            e.observe(items, 1000 + 100 * items, 5000 * items);
        }
        let h = e.host().unwrap();
        assert!(
            (h.per_item - 100.0).abs() < 1e-6 && (h.base - 1000.0).abs() < 1e-6,
            "{h:?}"
        );
        assert_eq!(h.predict(10), 2000);
        assert_eq!(e.device().unwrap().predict(10), 50_000);
        assert_eq!(e.max_items(Some(3000), Some(100_000)), Some(20));
        assert_eq!(e.max_items(Some(3000), None), Some(20));
    }

    #[test]
    fn predictions_cover_every_observed_peak() {
        let mut e = Estimator::new();
        let obs = [(3u64, 900u64), (5, 1200), (7, 2600), (9, 2000), (11, 3100)];
        for (i, p) in obs {
            e.observe(i, p, 0);
        }
        let f = e.host().unwrap();
        for (i, p) in obs {
            assert!(f.predict(i) >= p, "predict({i}) = {} < {p}", f.predict(i));
        }
    }

    #[test]
    fn one_item_count_uses_the_worst_ratio() {
        let mut e = Estimator::new();
        e.observe(10, 1000, 0);
        e.observe(10, 1500, 0);
        assert_eq!(e.host().unwrap().max_items(3000), 20);
        assert!(Estimator::new().max_items(Some(1), None).is_none());
    }
}
