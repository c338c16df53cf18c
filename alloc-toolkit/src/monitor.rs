//! [`MemoryMonitor`]: a background sampler of host and device memory with
//! thresholds, the maximum seen, and a bounded time series. Started by
//! [`MemoryMonitor::start`], stopped when the [`MonitorGuard`] drops.
//!
//! The sampling step ([`MemoryMonitor::tick_at`]) is a plain function of a
//! [`SampleSource`] and a time, so tests drive it by hand with made-up
//! figures and times; the background thread only calls it on a timer.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::device::device_infos;
use crate::error::ToolkitError;
use crate::info::{resident_bytes, resident_bytes_from};
use crate::threshold::{Callback, DeviceReading, Threshold, ThresholdEvent};

/// One reading, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Time since the monitor started.
    pub t: Duration,
    /// Tracked host live bytes.
    pub host_live: u64,
    /// Resident set size.
    pub rss: u64,
    /// Bytes in use on all registered devices.
    pub device_allocated: u64,
    /// Bytes reserved on all registered devices.
    pub device_reserved: u64,
}

/// A figure of a [`Sample`] a threshold watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Metric {
    /// [`Sample::host_live`].
    HostLive,
    /// [`Sample::rss`].
    Rss,
    /// [`Sample::device_allocated`].
    DeviceAllocated,
    /// [`Sample::device_reserved`].
    DeviceReserved,
}

impl Metric {
    /// The figure in `s`.
    pub fn of(self, s: &Sample) -> u64 {
        match self {
            Metric::HostLive => s.host_live,
            Metric::Rss => s.rss,
            Metric::DeviceAllocated => s.device_allocated,
            Metric::DeviceReserved => s.device_reserved,
        }
    }
}

/// Where samples come from. Any `FnMut() -> Sample + Send` is a source (its
/// `t` is overwritten by the monitor).
pub trait SampleSource: Send + 'static {
    /// Reads the figures now.
    fn sample(&mut self) -> Sample;

    /// Each device's figures, read right after [`sample`](Self::sample)
    /// (for per-device thresholds; none by default).
    fn devices(&mut self) -> Vec<DeviceReading> {
        Vec::new()
    }
}

impl<F: FnMut() -> Sample + Send + 'static> SampleSource for F {
    fn sample(&mut self) -> Sample {
        self()
    }
}

/// The process: tracked host bytes, RSS, and the sums over registered devices.
/// Keeps `/proc/self/statm` open between samples.
#[derive(Debug, Default)]
pub struct ProcessSource {
    statm: Option<std::fs::File>,
    devices: Vec<DeviceReading>,
}

impl ProcessSource {
    /// A source of this process's figures.
    pub fn new() -> Self {
        ProcessSource {
            statm: std::fs::File::open("/proc/self/statm").ok(),
            devices: Vec::new(),
        }
    }
}

impl SampleSource for ProcessSource {
    fn sample(&mut self) -> Sample {
        let statm = &self.statm;
        let readings = &mut self.devices;
        alloc_host::untracked(|| {
            let devices = device_infos();
            readings.clear();
            readings.extend(devices.iter().map(|d| DeviceReading {
                name: d.name.clone(),
                allocated: d.allocated,
                reserved: d.reserved,
                used: d.free.zip(d.total).map(|(f, t)| t.saturating_sub(f)),
                capacity: d.limit.or(d.total),
            }));
            Sample {
                t: Duration::ZERO,
                // Not `tracked_host()`: its installation probe opens a scope.
                host_live: alloc_host::process_stats().live_bytes,
                rss: statm
                    .as_ref()
                    .map_or_else(resident_bytes, resident_bytes_from),
                device_allocated: devices.iter().map(|d| d.allocated).sum(),
                device_reserved: devices.iter().map(|d| d.reserved).sum(),
            }
        })
    }

    fn devices(&mut self) -> Vec<DeviceReading> {
        std::mem::take(&mut self.devices)
    }
}

/// Settings of a [`MemoryMonitor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Time between samples (> 0).
    pub interval: Duration,
    /// Samples kept; the oldest are dropped (> 0).
    pub capacity: usize,
}

impl Default for MonitorConfig {
    /// Every 10 ms, the last 6,000 samples (one minute).
    fn default() -> Self {
        MonitorConfig {
            interval: Duration::from_millis(10),
            capacity: 6000,
        }
    }
}

/// The figures a monitor gathered.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MonitorSummary {
    /// The kept samples, oldest first.
    pub series: Vec<Sample>,
    /// The largest value of each figure over every sample (`t` = when the
    /// host live maximum was seen).
    pub max: Sample,
    /// Samples taken in all (kept or not).
    pub samples: u64,
    /// Threshold crossings (upward; callbacks run).
    pub crossings: u64,
    /// Recoveries (recovery callbacks run).
    pub recoveries: u64,
    /// Callbacks that panicked (caught; the monitor went on).
    pub callback_panics: u64,
    /// Samples whose source panicked on the monitor thread (caught; the
    /// sample was skipped and the monitor went on).
    pub source_panics: u64,
}

struct Core {
    source: Box<dyn SampleSource>,
    config: MonitorConfig,
    thresholds: Vec<Threshold>,
    series: VecDeque<Sample>,
    max: Sample,
    samples: u64,
    crossings: u64,
    recoveries: u64,
    callback_panics: u64,
    source_panics: u64,
}

/// A sampler of memory figures. Drive it with [`tick_at`](Self::tick_at), or
/// [`start`](Self::start) a thread that samples every interval.
pub struct MemoryMonitor {
    core: Arc<Mutex<Core>>,
}

impl MemoryMonitor {
    /// A monitor of this process ([`ProcessSource`]).
    pub fn new(config: MonitorConfig) -> Result<Self, ToolkitError> {
        Self::with_source(config, ProcessSource::new())
    }

    /// A monitor reading `source`. Refuses a zero interval or capacity.
    pub fn with_source(
        config: MonitorConfig,
        source: impl SampleSource,
    ) -> Result<Self, ToolkitError> {
        if config.interval.is_zero() {
            return Err(ToolkitError::ZeroInterval);
        }
        if config.capacity == 0 {
            return Err(ToolkitError::Zero {
                what: "monitor capacity",
            });
        }
        Ok(MemoryMonitor {
            core: Arc::new(Mutex::new(Core {
                source: Box::new(source),
                config,
                thresholds: Vec::new(),
                series: VecDeque::with_capacity(config.capacity.min(1 << 16)),
                max: Sample::default(),
                samples: 0,
                crossings: 0,
                recoveries: 0,
                callback_panics: 0,
                source_panics: 0,
            })),
        })
    }

    /// Calls `callback` each time the process-wide `metric` rises to `bytes`
    /// or above (again after it fell below). Refuses a zero threshold.
    pub fn on_threshold(
        self,
        metric: Metric,
        bytes: u64,
        callback: impl Fn(&ThresholdEvent) + Send + Sync + 'static,
    ) -> Result<Self, ToolkitError> {
        self.with_threshold(Threshold::process(metric, bytes, callback))
    }

    /// Adds a threshold: process-wide or of one device, in bytes or a
    /// fraction of the device's capacity, with an optional recovery callback
    /// (see [`Threshold`]). Refuses bad levels.
    pub fn with_threshold(self, threshold: Threshold) -> Result<Self, ToolkitError> {
        threshold.validate()?;
        lock(&self.core).thresholds.push(threshold);
        Ok(self)
    }

    /// Takes one sample stamped `t` and runs the thresholds it crosses.
    pub fn tick_at(&self, t: Duration) -> Sample {
        let (sample, due) = {
            let mut c = lock(&self.core);
            c.record(t)
        };
        let mut panics = 0;
        for (cb, event) in &due {
            if catch_unwind(AssertUnwindSafe(|| cb(event))).is_err() {
                panics += 1;
            }
        }
        let recoveries = due.iter().filter(|d| d.1.recovered).count() as u64;
        let mut c = lock(&self.core);
        c.crossings += due.len() as u64 - recoveries;
        c.recoveries += recoveries;
        c.callback_panics += panics;
        sample
    }

    /// The figures so far.
    pub fn summary(&self) -> MonitorSummary {
        let c = lock(&self.core);
        MonitorSummary {
            series: c.series.iter().copied().collect(),
            max: c.max,
            samples: c.samples,
            crossings: c.crossings,
            recoveries: c.recoveries,
            callback_panics: c.callback_panics,
            source_panics: c.source_panics,
        }
    }

    /// Starts a thread that samples every interval until the guard drops.
    pub fn start(self) -> Result<MonitorGuard, ToolkitError> {
        let interval = lock(&self.core).config.interval;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let core = self.core.clone();
        let thread = std::thread::Builder::new()
            .name("memory-monitor".into())
            .spawn(move || {
                let monitor = MemoryMonitor { core };
                let start = Instant::now();
                let mut next = Duration::ZERO;
                loop {
                    // Sleep until the next sample is due; parking (a futex
                    // wait) costs nothing while asleep, and `stop` unparks.
                    loop {
                        if stopping.load(Acquire) {
                            return;
                        }
                        let now = start.elapsed();
                        if now >= next {
                            break;
                        }
                        std::thread::park_timeout(next - now);
                    }
                    let t = start.elapsed();
                    if catch_unwind(AssertUnwindSafe(|| monitor.tick_at(t))).is_err() {
                        lock(&monitor.core).source_panics += 1;
                    }
                    next += interval;
                }
            })
            .map_err(|e| ToolkitError::Io {
                path: "thread spawn".into(),
                message: e.to_string(),
            })?;
        Ok(MonitorGuard {
            monitor: self,
            stop,
            thread: Some(thread),
        })
    }
}

fn lock(m: &Mutex<Core>) -> MutexGuard<'_, Core> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    fn record(&mut self, t: Duration) -> (Sample, Vec<(Callback, ThresholdEvent)>) {
        let mut s = self.source.sample();
        s.t = t;
        let devices = self.source.devices();
        self.samples += 1;
        if self.series.len() == self.config.capacity {
            self.series.pop_front();
        }
        self.series.push_back(s);
        let m = &mut self.max;
        if s.host_live > m.host_live || self.samples == 1 {
            m.t = s.t;
        }
        m.host_live = m.host_live.max(s.host_live);
        m.rss = m.rss.max(s.rss);
        m.device_allocated = m.device_allocated.max(s.device_allocated);
        m.device_reserved = m.device_reserved.max(s.device_reserved);
        let due = self
            .thresholds
            .iter_mut()
            .filter_map(|th| th.step(&s, &devices))
            .collect();
        (s, due)
    }
}

/// A running monitor; stops and joins its thread on drop.
pub struct MonitorGuard {
    monitor: MemoryMonitor,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MonitorGuard {
    /// The figures so far (the thread keeps sampling).
    pub fn summary(&self) -> MonitorSummary {
        self.monitor.summary()
    }

    /// Stops sampling and returns the figures.
    pub fn stop(mut self) -> MonitorSummary {
        self.halt();
        self.monitor.summary()
    }

    fn halt(&mut self) {
        self.stop.store(true, Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for MonitorGuard {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    /// A source replaying host figures from a list, repeating the last.
    fn replay(values: Vec<u64>) -> impl SampleSource {
        let mut i = 0;
        move || {
            let v = values[i.min(values.len() - 1)];
            i += 1;
            Sample {
                host_live: v,
                device_allocated: v / 2,
                ..Sample::default()
            }
        }
    }

    fn cfg(capacity: usize) -> MonitorConfig {
        MonitorConfig {
            interval: Duration::from_millis(10),
            capacity,
        }
    }

    #[test]
    fn keeps_a_bounded_series_and_the_max() {
        let m = MemoryMonitor::with_source(cfg(3), replay(vec![5, 9, 2, 7, 1])).unwrap();
        for i in 0..5 {
            m.tick_at(Duration::from_millis(10 * i));
        }
        let s = m.summary();
        assert_eq!(s.samples, 5);
        let kept: Vec<u64> = s.series.iter().map(|x| x.host_live).collect();
        assert_eq!(kept, vec![2, 7, 1]);
        assert_eq!(s.max.host_live, 9);
        assert_eq!(s.max.t, Duration::from_millis(10));
        assert_eq!(s.max.device_allocated, 4);
    }

    #[test]
    fn thresholds_fire_on_each_upward_crossing() {
        let fired = Arc::new(AtomicU64::new(0));
        let f = fired.clone();
        let m = MemoryMonitor::with_source(cfg(10), replay(vec![1, 10, 12, 3, 11, 2]))
            .unwrap()
            .on_threshold(Metric::HostLive, 10, move |e| {
                assert!(e.sample.host_live >= e.threshold);
                f.fetch_add(1, Relaxed);
            })
            .unwrap()
            .on_threshold(Metric::DeviceAllocated, 6, |_| panic!("a buggy callback"))
            .unwrap();
        for i in 0..6 {
            m.tick_at(Duration::from_millis(i));
        }
        assert_eq!(fired.load(Relaxed), 2);
        let s = m.summary();
        assert_eq!((s.crossings, s.callback_panics), (3, 1));
    }

    /// A source with one device whose `reserved` follows a list.
    struct Dev(Vec<u64>, usize);

    impl SampleSource for Dev {
        fn sample(&mut self) -> Sample {
            self.1 += 1;
            Sample::default()
        }
        fn devices(&mut self) -> Vec<DeviceReading> {
            let v = self.0[(self.1 - 1).min(self.0.len() - 1)];
            vec![
                DeviceReading {
                    name: "gpu1".into(),
                    reserved: v,
                    capacity: Some(100),
                    ..DeviceReading::default()
                },
                DeviceReading {
                    name: "gpu0".into(),
                    reserved: 99,
                    capacity: Some(100),
                    ..DeviceReading::default()
                },
            ]
        }
    }

    #[test]
    fn device_thresholds_cross_and_recover_with_hysteresis() {
        use crate::threshold::{DeviceFigure, Level};
        let log = Arc::new(Mutex::new(Vec::new()));
        let (up, down) = (log.clone(), log.clone());
        let th = Threshold::device(
            "gpu1",
            DeviceFigure::Reserved,
            Level::Fraction(0.9),
            move |e| {
                up.lock().unwrap().push((e.value, e.recovered));
            },
        )
        .recover_below(Level::Fraction(0.7))
        .on_recover(move |e| down.lock().unwrap().push((e.value, e.recovered)));
        // 85: below; 95: cross; 80: still above the recovery level; 60:
        // recovered; 91: cross again. gpu0 sits at 99 throughout: per device,
        // not summed.
        let m = MemoryMonitor::with_source(cfg(10), Dev(vec![85, 95, 80, 60, 91], 0))
            .unwrap()
            .with_threshold(th)
            .unwrap();
        for i in 0..5 {
            m.tick_at(Duration::from_millis(i));
        }
        let got = log.lock().unwrap().clone();
        assert_eq!(got, vec![(95, false), (60, true), (91, false)]);
        let s = m.summary();
        assert_eq!((s.crossings, s.recoveries), (2, 1));
    }

    #[test]
    fn bad_levels_are_refused() {
        use crate::threshold::{DeviceFigure, Level};
        let m = || MemoryMonitor::with_source(cfg(1), replay(vec![1])).unwrap();
        let dev = |l| Threshold::device("d", DeviceFigure::Used, l, |_| {});
        assert!(m().with_threshold(dev(Level::Fraction(1.5))).is_err());
        assert!(m().with_threshold(dev(Level::Fraction(0.0))).is_err());
        let inverted = dev(Level::Fraction(0.5)).recover_below(Level::Fraction(0.8));
        assert!(m().with_threshold(inverted).is_err());
        let host = Threshold::process(Metric::Rss, 10, |_| {}).recover_below(Level::Fraction(0.5));
        assert!(m().with_threshold(host).is_err());
        assert!(
            m().with_threshold(dev(Level::Bytes(5)).recover_below(Level::Bytes(4)))
                .is_ok()
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let zero = MonitorConfig {
            interval: Duration::ZERO,
            capacity: 1,
        };
        let e = MemoryMonitor::with_source(zero, replay(vec![1]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("interval is 0"), "{e}");
        assert!(MemoryMonitor::with_source(cfg(0), replay(vec![1])).is_err());
        let m = MemoryMonitor::with_source(cfg(1), replay(vec![1])).unwrap();
        assert!(m.on_threshold(Metric::Rss, 0, |_| {}).is_err());
    }

    #[test]
    fn a_panicking_source_does_not_stop_the_thread() {
        let mut n = 0u64;
        let source = move || {
            n += 1;
            assert!(n % 2 == 0, "odd sample {n}");
            Sample {
                host_live: n,
                ..Sample::default()
            }
        };
        let cfg = MonitorConfig {
            interval: Duration::from_millis(1),
            capacity: 100,
        };
        let g = MemoryMonitor::with_source(cfg, source)
            .unwrap()
            .start()
            .unwrap();
        while g.summary().samples < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let s = g.stop();
        assert!(s.source_panics >= 2, "{s:?}");
        assert!(s.series.iter().all(|x| x.host_live % 2 == 0));
    }

    #[test]
    fn the_thread_samples_and_stops() {
        let m = MemoryMonitor::with_source(
            MonitorConfig {
                interval: Duration::from_millis(1),
                capacity: 100,
            },
            replay(vec![4]),
        )
        .unwrap();
        let g = m.start().unwrap();
        while g.summary().samples < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let s = g.stop();
        assert!(s.samples >= 3);
        assert!(s.series.windows(2).all(|w| w[0].t <= w[1].t));
    }
}
