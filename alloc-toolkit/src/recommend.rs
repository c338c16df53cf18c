//! [`recommendations`]: rules over the engine statistics, host and cgroup
//! figures, each firing with the evidence (the numbers that fired it) and a
//! concrete remedy. A remedy already applied (an engine setting already
//! made) is never given; the rule then names the next step or stays quiet.
//!
//! Rules about events (OOMs, retries, scopes not created) read what happened
//! over the last [`EVIDENCE_WINDOW`] (a minute), compared with the reading of
//! an earlier call ([`EvidenceWindow`]), so they clear once the events stop;
//! the first call, with nothing to compare, reads the totals since start.
//!
//! | rule | fires when | remedy |
//! |---|---|---|
//! | `fragmentation` | inactive split blocks ≥ 20% of reserved (≥ 64 MiB reserved) | `expandable_segments:True`, else `max_split_size_mb` |
//! | `cache-near-cap` | cached ≥ 30% of reserved while reserved ≥ 85% of the cap | `trim()` between phases, `garbage_collection_threshold:0.8` |
//! | `oom-retries` | the engine retried or failed allocations (over the window) | a batch ceiling (`AdaptiveBatch`), `retry_on_oom` |
//! | `host-headroom` | host available < limit × (1 − 1 / safety factor) | lower the batch, raise the limit |
//! | `scopes-not-created` | the scope registry was full (over the window) | fewer distinct live scopes; name request scopes by kind |
//! | `tracking-off` | the tracking allocator is not installed | `#[global_allocator] TrackingAllocator` |

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloc_core::{Config, Stats};
use alloc_host::format_bytes as b;
use serde::Serialize;

use crate::device::{DeviceInfo, devices};
use crate::guards::DEFAULT_SAFETY_FACTOR;
use crate::info::{MemoryInfo, memory_info_untracked};

/// How urgent a recommendation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Costs memory or time now.
    Warning,
    /// Out of memory is near or happened.
    Critical,
}

/// One piece of advice.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    /// The rule's name (see the module table).
    pub rule: &'static str,
    /// How urgent.
    pub severity: Severity,
    /// What it is about: `host`, `container`, `device gpu0`, `scopes`.
    pub subject: String,
    /// The figures that fired it.
    pub evidence: String,
    /// What to do.
    pub remedy: String,
}

/// One device as the rules see it.
#[derive(Clone, Debug)]
pub struct DeviceFacts {
    /// Its figures.
    pub info: DeviceInfo,
    /// The engine's statistics, where known.
    pub stats: Option<Stats>,
    /// The engine's configuration, where known.
    pub config: Option<Config>,
    /// Out-of-memory errors over the evidence window (`None`: no earlier
    /// reading to compare with; the rules read the totals since start).
    pub recent_ooms: Option<Recent>,
    /// Allocations that released the cache and retried, over the window.
    pub recent_alloc_retries: Option<Recent>,
}

/// What a counter did over a window of time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Recent {
    /// How much it rose.
    pub count: u64,
    /// Over how long: from the earlier reading compared with to now.
    pub over: Duration,
}

impl Recent {
    /// Events per second over the window.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.over.as_secs_f64().max(1e-9)
    }
}

/// What the rules read.
#[derive(Clone, Debug)]
pub struct Facts {
    /// System, container, process and tracked heap.
    pub memory: MemoryInfo,
    /// The devices.
    pub devices: Vec<DeviceFacts>,
    /// Scopes not created because the registry was full (since start).
    pub scopes_not_created: u64,
    /// Scopes not created over the evidence window (`None`: no earlier
    /// reading; the rules read [`scopes_not_created`](Self::scopes_not_created)).
    pub recent_scopes_not_created: Option<Recent>,
    /// The margin to keep (see [`DEFAULT_SAFETY_FACTOR`]).
    pub safety_factor: f64,
}

impl Facts {
    /// The process now: [`memory_info`](crate::memory_info), every
    /// registered device with its statistics and configuration, the scope
    /// registry; the event counts over the last [`EVIDENCE_WINDOW`] from
    /// the readings of earlier calls.
    pub fn now() -> Facts {
        let memory = memory_info_untracked();
        alloc_host::untracked(|| {
            let mut facts = Facts::read(memory);
            let mut w = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
            let (start, window) =
                w.get_or_insert_with(|| (Instant::now(), EvidenceWindow::new(EVIDENCE_WINDOW)));
            window.observe(start.elapsed(), &mut facts);
            facts
        })
    }

    fn read(memory: MemoryInfo) -> Facts {
        Facts {
            memory,
            devices: devices()
                .into_iter()
                .map(|(name, d)| DeviceFacts {
                    info: DeviceInfo {
                        name,
                        ..d.device_info()
                    },
                    stats: d.stats(),
                    config: d.config(),
                    recent_ooms: None,
                    recent_alloc_retries: None,
                })
                .collect(),
            scopes_not_created: alloc_host::scope_tree().scopes_not_created,
            recent_scopes_not_created: None,
            safety_factor: DEFAULT_SAFETY_FACTOR,
        }
    }
}

/// How far back the rules look for events (OOMs, retries, scopes not
/// created): a rule about events clears once none happened for this long.
pub const EVIDENCE_WINDOW: Duration = Duration::from_secs(60);

/// Readings of the event counters over time, to tell what happened recently
/// from what happened since start.
#[derive(Clone, Debug)]
pub struct EvidenceWindow {
    window: Duration,
    readings: VecDeque<(Duration, Reading)>,
}

#[derive(Clone, Debug)]
struct Reading {
    /// Per device: name, OOMs, retries.
    devices: Vec<(String, u64, u64)>,
    scopes_not_created: u64,
}

impl EvidenceWindow {
    /// A window `window` long (at least a millisecond).
    pub fn new(window: Duration) -> Self {
        EvidenceWindow {
            window: window.max(Duration::from_millis(1)),
            readings: VecDeque::new(),
        }
    }

    /// Records the counters in `facts` at time `t` (any clock that only goes
    /// forward) and fills its `recent_*` fields.
    pub fn observe(&mut self, t: Duration, facts: &mut Facts) {
        let now = Reading {
            devices: facts
                .devices
                .iter()
                .map(|d| {
                    (
                        d.info.name.clone(),
                        d.info.num_ooms,
                        d.info.num_alloc_retries,
                    )
                })
                .collect(),
            scopes_not_created: facts.scopes_not_created,
        };
        // Compare with the newest reading at least a window old, else with
        // the oldest one there is; drop what is older than that.
        let edge = t.saturating_sub(self.window);
        while self.readings.len() > 1 && self.readings[1].0 <= edge {
            self.readings.pop_front();
        }
        if let Some((then, before)) = self.readings.front().filter(|r| r.0 < t) {
            let over = t - *then;
            let rise = |now: u64, then: u64| {
                Some(Recent {
                    count: now.saturating_sub(then),
                    over,
                })
            };
            for d in &mut facts.devices {
                // A device not in the earlier reading is new: all its events
                // are recent.
                let (ooms, retries) = before
                    .devices
                    .iter()
                    .find(|b| b.0 == d.info.name)
                    .map_or((0, 0), |b| (b.1, b.2));
                d.recent_ooms = rise(d.info.num_ooms, ooms);
                d.recent_alloc_retries = rise(d.info.num_alloc_retries, retries);
            }
            facts.recent_scopes_not_created =
                rise(facts.scopes_not_created, before.scopes_not_created);
        }
        // Keep at most about 64 readings a window, however often this runs.
        let spacing = self.window / 64;
        if self.readings.back().is_none_or(|r| t >= r.0 + spacing) {
            self.readings.push_back((t, now));
        }
    }
}

/// The process-wide window [`Facts::now`] reads through.
static WINDOW: Mutex<Option<(Instant, EvidenceWindow)>> = Mutex::new(None);

/// `n` with thousands separators: `9,339`.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` events "in the last 30 s (2.5/s), 9,339 since start", or "9,339
/// since start" where there is no earlier reading.
fn events(recent: Option<Recent>, total: u64) -> String {
    match recent {
        Some(r) => format!(
            "{} in the last {:.0} s ({:.2}/s), {} since start",
            count(r.count),
            r.over.as_secs_f64(),
            r.rate(),
            count(total)
        ),
        None => format!("{} since start", count(total)),
    }
}

const MIB: u64 = 1 << 20;

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn fragmentation(d: &DeviceFacts, s: &Stats, out: &mut Vec<Recommendation>) {
    let reserved = d.info.reserved;
    let split = s.inactive_split_bytes.all.current.max(0) as u64;
    if reserved < 64 * MIB || pct(split, reserved) < 20.0 {
        return;
    }
    let c = d.config.clone().unwrap_or_default();
    let remedy = if c.expandable_segments != Some(true) {
        "set expandable_segments:True in the engine's configuration string (ALLOC_CONF): \
         segments grow by mapping pages, so freed ranges merge instead of splitting"
            .to_owned()
    } else if c.max_split_size == usize::MAX {
        let mb = (s.allocated_bytes.all.peak.max(0) as u64 / MIB / 8).clamp(20, 1024);
        format!(
            "set max_split_size_mb:{mb}: blocks above it are never split, so large requests stop fragmenting the cache"
        )
    } else {
        return; // both settings made: nothing new to offer
    };
    out.push(Recommendation {
        rule: "fragmentation",
        severity: Severity::Warning,
        subject: format!("device {}", d.info.name),
        evidence: format!(
            "inactive split blocks hold {} of {} reserved ({:.0}%)",
            b(split),
            b(reserved),
            pct(split, reserved)
        ),
        remedy,
    });
}

fn cache_near_cap(d: &DeviceFacts, out: &mut Vec<Recommendation>) {
    let i = &d.info;
    let Some(cap) = i.limit.or(i.total) else {
        return;
    };
    if pct(i.reserved, cap) < 85.0 || pct(i.cached, i.reserved) < 30.0 {
        return;
    }
    let gc_set = d
        .config
        .as_ref()
        .is_some_and(|c| c.garbage_collection_threshold.is_some());
    let mut remedy =
        "call trim() (or cleanup_all) between phases to give cached blocks back".to_owned();
    if !gc_set {
        remedy.push_str(
            "; or set garbage_collection_threshold:0.8 so the engine releases cached blocks before growing past 80% of the cap",
        );
    }
    out.push(Recommendation {
        rule: "cache-near-cap",
        severity: Severity::Warning,
        subject: format!("device {}", i.name),
        evidence: format!(
            "{} reserved of a {} cap ({:.0}%), {} of it cached ({:.0}%)",
            b(i.reserved),
            b(cap),
            pct(i.reserved, cap),
            b(i.cached),
            pct(i.cached, i.reserved)
        ),
        remedy,
    });
}

fn oom_retries(d: &DeviceFacts, out: &mut Vec<Recommendation>) {
    let i = &d.info;
    // Recent events where an earlier reading tells them apart, else all.
    let ooms = d.recent_ooms.map_or(i.num_ooms, |r| r.count);
    let retries = d
        .recent_alloc_retries
        .map_or(i.num_alloc_retries, |r| r.count);
    if ooms == 0 && retries == 0 {
        return;
    }
    out.push(Recommendation {
        rule: "oom-retries",
        severity: if ooms > 0 { Severity::Critical } else { Severity::Warning },
        subject: format!("device {}", i.name),
        evidence: format!(
            "allocations that released the cache and retried: {}; out of memory: {}",
            events(d.recent_alloc_retries, i.num_alloc_retries),
            events(d.recent_ooms, i.num_ooms)
        ),
        remedy: "size batches with AdaptiveBatch (after an OOM it keeps a ceiling below the failing size) \
                 and wrap device steps in retry_on_oom / retry_on_oom_async with a fallback"
            .to_owned(),
    });
}

fn host_headroom(f: &Facts, out: &mut Vec<Recommendation>) {
    let m = &f.memory;
    let limit = m.host_limit();
    let (available, from) = m.host_available();
    if limit == 0 {
        return;
    }
    let floor = (limit as f64 * (1.0 - 1.0 / f.safety_factor.max(1.0))) as u64;
    if available >= floor {
        return;
    }
    let in_container = from.starts_with("cgroup");
    out.push(Recommendation {
        rule: "host-headroom",
        severity: Severity::Critical,
        subject: if in_container { "container" } else { "host" }.to_owned(),
        evidence: format!(
            "{} available ({from}) of a {} limit: below the {:.0}% margin of safety factor {}",
            b(available),
            b(limit),
            pct(floor, limit),
            f.safety_factor
        ),
        remedy: format!(
            "lower the batch size or the number of concurrent requests{}; check big steps with ensure_available first",
            if in_container { ", or raise the container's memory limit" } else { "" }
        ),
    });
}

/// The rules over `facts`, most urgent first.
pub fn recommend(facts: &Facts) -> Vec<Recommendation> {
    let mut out = Vec::new();
    host_headroom(facts, &mut out);
    for d in &facts.devices {
        if let Some(s) = &d.stats {
            fragmentation(d, s, &mut out);
        }
        cache_near_cap(d, &mut out);
        oom_retries(d, &mut out);
    }
    let not_created = facts
        .recent_scopes_not_created
        .map_or(facts.scopes_not_created, |r| r.count);
    if not_created > 0 {
        out.push(Recommendation {
            rule: "scopes-not-created",
            severity: Severity::Warning,
            subject: "scopes".to_owned(),
            evidence: format!(
                "scopes not created: {}; the registry was full, so their memory went to the enclosing scope",
                events(facts.recent_scopes_not_created, facts.scopes_not_created)
            ),
            remedy: "close scopes sooner (a scope stays while it owns memory), and keep the number of live scopes \
                     below the registry capacity"
                .to_owned(),
        });
    }
    if !facts.memory.tracked.installed {
        out.push(Recommendation {
            rule: "tracking-off",
            severity: Severity::Info,
            subject: "host".to_owned(),
            evidence: "the tracking allocator is not the global allocator: no per-scope host figures".to_owned(),
            remedy: "#[global_allocator] static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();"
                .to_owned(),
        });
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.severity));
    out
}

/// [`recommend`] over the process now ([`Facts::now`]).
pub fn recommendations() -> Vec<Recommendation> {
    recommend(&Facts::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::{ProcessMemory, SystemMemory, TrackedHost};

    fn memory(total: u64, available: u64) -> MemoryInfo {
        MemoryInfo {
            system: SystemMemory {
                total,
                available,
                free: available,
            },
            cgroup: None,
            process: ProcessMemory::default(),
            tracked: TrackedHost {
                installed: true,
                ..TrackedHost::default()
            },
            devices: Vec::new(),
        }
    }

    fn device(reserved: u64, allocated: u64, split: u64, config: Config) -> DeviceFacts {
        let mut stats = Stats::default();
        stats.inactive_split_bytes.all.current = split as i64;
        stats.allocated_bytes.all.peak = allocated as i64;
        DeviceFacts {
            info: DeviceInfo {
                name: "gpu0".into(),
                backend: "sim".into(),
                free: None,
                total: Some(8 << 30),
                limit: None,
                reserved,
                allocated,
                peak_reserved: reserved,
                peak_allocated: allocated,
                cached: reserved - allocated,
                efficiency: 0.9,
                num_ooms: 0,
                num_alloc_retries: 0,
            },
            stats: Some(stats),
            config: Some(config),
            recent_ooms: None,
            recent_alloc_retries: None,
        }
    }

    fn facts(devices: Vec<DeviceFacts>) -> Facts {
        Facts {
            memory: memory(16 << 30, 12 << 30),
            devices,
            scopes_not_created: 0,
            recent_scopes_not_created: None,
            safety_factor: 1.2,
        }
    }

    fn rules(f: &Facts) -> Vec<&'static str> {
        recommend(f).iter().map(|r| r.rule).collect()
    }

    #[test]
    fn a_healthy_process_gets_no_advice() {
        let f = facts(vec![device(
            1 << 30,
            900 << 20,
            10 << 20,
            Config::default(),
        )]);
        assert!(recommend(&f).is_empty(), "{:?}", recommend(&f));
    }

    #[test]
    fn fragmentation_advises_expandable_segments_then_max_split_then_nothing() {
        let frag = |c| facts(vec![device(1 << 30, 500 << 20, 400 << 20, c)]);
        let r = recommend(&frag(Config::default()));
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].remedy.contains("expandable_segments:True"), "{r:?}");
        assert!(
            r[0].evidence.contains("400.00 MiB") && r[0].evidence.contains("39%"),
            "{r:?}"
        );
        let expandable = Config {
            expandable_segments: Some(true),
            ..Config::default()
        };
        let r = recommend(&frag(expandable.clone()));
        assert!(r[0].remedy.contains("max_split_size_mb:62"), "{r:?}");
        assert!(
            !r[0].remedy.contains("expandable"),
            "never a remedy already applied"
        );
        let both = Config {
            max_split_size: 64 << 20,
            ..expandable
        };
        assert!(rules(&frag(both)).is_empty());
    }

    #[test]
    fn a_full_cache_near_the_cap_advises_trim_and_gc_unless_set() {
        let near = |c| facts(vec![device(7 << 30, 3 << 30, 0, c)]);
        let r = recommend(&near(Config::default()));
        assert_eq!(rules(&near(Config::default())), ["cache-near-cap"]);
        assert!(
            r[0].remedy.contains("trim()") && r[0].remedy.contains("garbage_collection_threshold")
        );
        let gc = Config {
            garbage_collection_threshold: Some(0.7),
            ..Config::default()
        };
        let r = recommend(&near(gc));
        assert!(
            !r[0].remedy.contains("garbage_collection_threshold"),
            "{r:?}"
        );
    }

    #[test]
    fn ooms_low_headroom_and_a_full_registry_fire() {
        let mut d = device(1 << 30, 900 << 20, 0, Config::default());
        d.info.num_ooms = 2;
        let mut f = facts(vec![d]);
        f.memory = memory(16 << 30, 1 << 30); // 1 GiB of 16 left: under 16.7%
        f.scopes_not_created = 5;
        f.memory.tracked.installed = false;
        let r = recommend(&f);
        let got: Vec<_> = r.iter().map(|r| (r.rule, r.severity)).collect();
        assert_eq!(
            got,
            [
                ("host-headroom", Severity::Critical),
                ("oom-retries", Severity::Critical),
                ("scopes-not-created", Severity::Warning),
                ("tracking-off", Severity::Info)
            ]
        );
        assert!(r[0].evidence.contains("1.00 GiB available"), "{r:?}");
    }

    #[test]
    fn event_rules_clear_once_the_window_holds_no_event() {
        // A minute of retries, OOMs and a full registry, then a quiet soak.
        let mut w = EvidenceWindow::new(EVIDENCE_WINDOW);
        let mut fired_at = Vec::new();
        for s in (0..=600u64).step_by(5) {
            let busy = s.min(60);
            let mut d = device(1 << 30, 900 << 20, 0, Config::default());
            d.info.num_alloc_retries = 150 * busy; // 9,000 by the end of the minute
            d.info.num_ooms = busy / 10;
            let mut f = facts(vec![d]);
            f.scopes_not_created = busy;
            w.observe(Duration::from_secs(s), &mut f);
            let r = rules(&f);
            if s == 30 {
                assert_eq!(r, ["oom-retries", "scopes-not-created"], "at {s} s");
                let rec = &recommend(&f)[0];
                assert!(
                    rec.evidence.contains("4,500") && rec.evidence.contains("last 30 s"),
                    "the evidence gives the recent count and its window: {rec:?}"
                );
            }
            if !r.is_empty() {
                fired_at.push(s);
            }
        }
        // The last event is at 60 s: the rules hold until the window has
        // passed over it, then clear.
        assert_eq!(fired_at.first(), Some(&5), "{fired_at:?}");
        assert_eq!(fired_at.last(), Some(&115), "{fired_at:?}");
    }
}
