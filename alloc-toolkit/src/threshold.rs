//! Thresholds of a [`MemoryMonitor`](crate::MemoryMonitor): a process-wide
//! figure or one figure of one device, in bytes or as a fraction of the
//! device's capacity, with a callback when it is crossed upward and an
//! optional one when it recovers (falls below a lower level: hysteresis).
//!
//! # Invariants
//! A threshold keeps [`ToolkitInvariant::H1`] (it alternates) and
//! [`ToolkitInvariant::H2`] (recovery is at most the crossing); their
//! definitions are on the variants.

use std::sync::Arc;

use serde::Serialize;

#[cfg(doc)]
use crate::ToolkitInvariant;
use crate::error::ToolkitError;
use crate::monitor::{Metric, Sample};

/// A figure of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DeviceFigure {
    /// Bytes the engine handed out.
    Allocated,
    /// Bytes the engine holds from the device.
    Reserved,
    /// Bytes in use on the device by anyone (total − free), other libraries
    /// included; known only where the device reports free memory.
    Used,
}

/// One device's figures in a sample, bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceReading {
    /// The name it was registered under.
    pub name: String,
    /// Bytes the engine handed out.
    pub allocated: u64,
    /// Bytes the engine holds.
    pub reserved: u64,
    /// total − free, where the device reports them.
    pub used: Option<u64>,
    /// What fractions refer to: the engine's cap, else the device total.
    pub capacity: Option<u64>,
}

impl DeviceReading {
    /// The figure `f`.
    pub fn figure(&self, f: DeviceFigure) -> Option<u64> {
        match f {
            DeviceFigure::Allocated => Some(self.allocated),
            DeviceFigure::Reserved => Some(self.reserved),
            DeviceFigure::Used => self.used,
        }
    }
}

/// What a threshold watches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Watched {
    /// A process-wide figure (devices summed).
    Process(Metric),
    /// One figure of the device registered under the name.
    Device(String, DeviceFigure),
}

/// A level in bytes or as a fraction of the device's capacity (device
/// thresholds only).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Level {
    /// Bytes.
    Bytes(u64),
    /// A fraction in (0, 1] of [`DeviceReading::capacity`].
    Fraction(f64),
}

impl Level {
    fn bytes(self, capacity: Option<u64>) -> Option<u64> {
        match self {
            Level::Bytes(b) => Some(b),
            Level::Fraction(f) => capacity.map(|c| (c as f64 * f) as u64),
        }
    }

    fn check(self, what: &'static str) -> Result<(), ToolkitError> {
        match self {
            Level::Bytes(0) => Err(ToolkitError::ZeroBudget { what }),
            Level::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                Err(ToolkitError::BadFraction { what, value: f })
            }
            _ => Ok(()),
        }
    }
}

/// What a threshold callback is told.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdEvent {
    /// The figure watched.
    pub watched: Watched,
    /// The level crossed (the crossing level, or the recovery level), bytes.
    pub threshold: u64,
    /// The figure's value in this sample.
    pub value: u64,
    /// `false`: crossed upward; `true`: fell below the recovery level.
    pub recovered: bool,
    /// The process-wide sample.
    pub sample: Sample,
}

pub(crate) type Callback = Arc<dyn Fn(&ThresholdEvent) + Send + Sync>;

/// A threshold: build with [`Threshold::process`] or [`Threshold::device`],
/// add a recovery with [`recover_below`](Self::recover_below) and
/// [`on_recover`](Self::on_recover), and hand it to
/// [`MemoryMonitor::with_threshold`](crate::MemoryMonitor::with_threshold).
pub struct Threshold {
    pub(crate) watched: Watched,
    pub(crate) level: Level,
    pub(crate) recover: Option<Level>,
    pub(crate) on_cross: Callback,
    pub(crate) on_recover: Option<Callback>,
    pub(crate) above: bool,
}

impl std::fmt::Debug for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threshold")
            .field("watched", &self.watched)
            .field("level", &self.level)
            .field("recover", &self.recover)
            .field("above", &self.above)
            .finish()
    }
}

impl Threshold {
    /// `metric` (process-wide) reaching `bytes` calls `on_cross`.
    pub fn process(
        metric: Metric,
        bytes: u64,
        on_cross: impl Fn(&ThresholdEvent) + Send + Sync + 'static,
    ) -> Self {
        Self::new(Watched::Process(metric), Level::Bytes(bytes), on_cross)
    }

    /// `figure` of device `name` reaching `level` calls `on_cross`.
    pub fn device(
        name: &str,
        figure: DeviceFigure,
        level: Level,
        on_cross: impl Fn(&ThresholdEvent) + Send + Sync + 'static,
    ) -> Self {
        Self::new(Watched::Device(name.to_owned(), figure), level, on_cross)
    }

    fn new(
        watched: Watched,
        level: Level,
        on_cross: impl Fn(&ThresholdEvent) + Send + Sync + 'static,
    ) -> Self {
        Threshold {
            watched,
            level,
            recover: None,
            on_cross: Arc::new(on_cross),
            on_recover: None,
            above: false,
        }
    }

    /// Counts as recovered only below `level` (default: the crossing level).
    pub fn recover_below(mut self, level: Level) -> Self {
        self.recover = Some(level);
        self
    }

    /// Calls `f` when the figure, after crossing, falls below the recovery
    /// level.
    pub fn on_recover(mut self, f: impl Fn(&ThresholdEvent) + Send + Sync + 'static) -> Self {
        self.on_recover = Some(Arc::new(f));
        self
    }

    /// Refuses zero levels, fractions outside (0, 1], fractions of a
    /// process-wide figure, and a recovery level above the crossing level.
    pub(crate) fn validate(&self) -> Result<(), ToolkitError> {
        self.level.check("monitor threshold")?;
        if let Some(r) = self.recover {
            r.check("monitor recovery level")?;
            let above = match (self.level, r) {
                (Level::Bytes(c), Level::Bytes(r)) => r > c,
                (Level::Fraction(c), Level::Fraction(r)) => r > c,
                _ => false,
            };
            if above {
                return Err(ToolkitError::BadFraction {
                    what: "monitor recovery level (must not exceed the crossing level)",
                    value: match r {
                        Level::Bytes(b) => b as f64,
                        Level::Fraction(f) => f,
                    },
                });
            }
        }
        let fraction = matches!(self.level, Level::Fraction(_))
            || matches!(self.recover, Some(Level::Fraction(_)));
        if fraction && matches!(self.watched, Watched::Process(_)) {
            return Err(ToolkitError::Zero {
                what: "a capacity for a fraction threshold of a process-wide figure (use bytes)",
            });
        }
        Ok(())
    }

    /// The callback due for this sample, if any ([`ToolkitInvariant::H1`]: state alternates).
    pub(crate) fn step(
        &mut self,
        s: &Sample,
        devices: &[DeviceReading],
    ) -> Option<(Callback, ThresholdEvent)> {
        let (value, capacity) = match &self.watched {
            Watched::Process(m) => (m.of(s), None),
            Watched::Device(name, f) => {
                let d = devices.iter().find(|d| &d.name == name)?;
                (d.figure(*f)?, d.capacity)
            }
        };
        let cross = self.level.bytes(capacity)?;
        // toolkit:H2: a recovery level is never above the crossing level.
        let recover = self
            .recover
            .and_then(|r| r.bytes(capacity))
            .unwrap_or(cross)
            .min(cross);
        let event = |threshold, recovered| ThresholdEvent {
            watched: self.watched.clone(),
            threshold,
            value,
            recovered,
            sample: *s,
        };
        if !self.above && value >= cross {
            self.above = true;
            return Some((self.on_cross.clone(), event(cross, false)));
        }
        if self.above && value < recover {
            self.above = false;
            return self.on_recover.clone().map(|cb| (cb, event(recover, true)));
        }
        None
    }
}
