//! Guards before a big step: [`ensure_available`] for host memory,
//! [`ensure_device_available`] for a registered device, and [`BudgetScope`], a
//! scope with a host budget (enforced by the allocator) and a device budget
//! (checked before each device allocation made through it).

use alloc_core::{CachingAllocator, DeviceBackend, DeviceBuffer};
use alloc_host::{ScopeBuilder, ScopeGuard, ScopeHandle, ScopeStats};

use crate::device::{DeviceInfo, device};
use crate::error::{ToolkitError, check_factor, scaled};
use crate::info::{MemoryInfo, memory_info};

/// A margin of 20%: the step is expected to need up to 1.2 × its estimate.
pub const DEFAULT_SAFETY_FACTOR: f64 = 1.2;

/// Checks that `bytes × safety_factor` host bytes are available now (system
/// available memory, lowered to the container's headroom). Returns the bytes
/// available.
pub fn ensure_available(bytes: u64, safety_factor: f64) -> Result<u64, ToolkitError> {
    check_factor(safety_factor)?;
    ensure_available_in(&memory_info(), bytes, safety_factor)
}

/// [`ensure_available`] against a given snapshot (for tests and planners).
pub fn ensure_available_in(
    info: &MemoryInfo,
    bytes: u64,
    safety_factor: f64,
) -> Result<u64, ToolkitError> {
    let factor = check_factor(safety_factor)?;
    let needed = scaled(bytes, factor);
    let (available, source_name) = info.host_available();
    if needed <= available {
        Ok(available)
    } else {
        Err(ToolkitError::HostUnavailable {
            requested: bytes,
            needed,
            available,
            factor,
            source_name,
        })
    }
}

/// Checks that `bytes × safety_factor` bytes can be had on the device
/// registered as `name`: its free memory (no more than the engine's cap leaves)
/// plus what its cache holds unused. Returns the bytes available.
pub fn ensure_device_available(
    name: &str,
    bytes: u64,
    safety_factor: f64,
) -> Result<u64, ToolkitError> {
    check_factor(safety_factor)?;
    let info = DeviceInfo {
        name: name.to_owned(),
        ..device(name)?.device_info()
    };
    ensure_device_available_in(&info, bytes, safety_factor)
}

/// [`ensure_device_available`] against given figures. A device that reports
/// neither free nor total memory passes (nothing is known to be missing).
pub fn ensure_device_available_in(
    info: &DeviceInfo,
    bytes: u64,
    safety_factor: f64,
) -> Result<u64, ToolkitError> {
    let factor = check_factor(safety_factor)?;
    let needed = scaled(bytes, factor);
    let free = match (info.free, info.total) {
        (Some(f), _) => f,
        (None, Some(t)) => t.saturating_sub(info.reserved),
        (None, None) if info.limit.is_none() => return Ok(u64::MAX),
        (None, None) => u64::MAX,
    };
    let free = match info.limit {
        Some(l) => free.min(l.saturating_sub(info.reserved)),
        None => free,
    };
    let available = free.saturating_add(info.cached);
    if needed <= available {
        Ok(available)
    } else {
        Err(ToolkitError::DeviceUnavailable {
            device: info.name.clone(),
            requested: bytes,
            needed,
            available,
            free,
            cached: info.cached,
            factor,
        })
    }
}

/// A scope with budgets: host bytes (a hard limit the tracking allocator
/// enforces) and device bytes (checked against the scope's live device bytes
/// by [`BudgetScope::allocate`] and [`BudgetScope::check_device`]).
///
/// The device check and the allocation are two steps: threads allocating in
/// one scope at once can each pass the check, so treat the device budget as a
/// guard against runaway requests, not a hard cap.
#[derive(Debug, Clone)]
pub struct BudgetScope {
    handle: ScopeHandle,
    device_budget: Option<u64>,
}

impl BudgetScope {
    /// Opens a scope named `name` (child of the current scope) with the given
    /// budgets; `None` = no budget. A zero budget is an error.
    pub fn new(
        name: &str,
        host_budget: Option<u64>,
        device_budget: Option<u64>,
    ) -> Result<BudgetScope, ToolkitError> {
        if device_budget == Some(0) {
            return Err(ToolkitError::ZeroBudget {
                what: "device budget",
            });
        }
        if host_budget == Some(0) {
            return Err(ToolkitError::ZeroBudget {
                what: "host budget",
            });
        }
        let mut b = ScopeBuilder::new(name);
        if let Some(h) = host_budget {
            b = b.hard_limit(h);
        }
        Ok(BudgetScope {
            handle: b.build()?,
            device_budget,
        })
    }

    /// Enters the scope on this thread until the guard drops.
    pub fn enter(&self) -> ScopeGuard {
        self.handle.enter()
    }

    /// The scope, to enter it on other threads.
    pub fn handle(&self) -> &ScopeHandle {
        &self.handle
    }

    /// The scope's figures.
    pub fn stats(&self) -> ScopeStats {
        self.handle.stats()
    }

    /// The device budget, bytes.
    pub fn device_budget(&self) -> Option<u64> {
        self.device_budget
    }

    /// Checks that `bytes` more device bytes stay within the device budget.
    pub fn check_device(&self, bytes: u64) -> Result<(), ToolkitError> {
        let Some(budget) = self.device_budget else {
            return Ok(());
        };
        let s = self.handle.stats();
        let live = s.device.live_bytes;
        if live.saturating_add(bytes) > budget {
            return Err(ToolkitError::DeviceBudgetExceeded {
                scope: s.name,
                live,
                requested: bytes,
                budget,
            });
        }
        Ok(())
    }

    /// Checks the device budget, then allocates `bytes` from `engine` with
    /// this scope entered, so the buffer is charged to it.
    pub fn allocate<'a, B: DeviceBackend>(
        &self,
        engine: &'a CachingAllocator<B>,
        bytes: usize,
        stream: B::Stream,
    ) -> Result<DeviceBuffer<'a, B>, ToolkitError> {
        self.check_device(bytes as u64)?;
        let _in = self.handle.enter();
        Ok(engine.allocate(bytes, stream)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::{ProcessMemory, SystemMemory, TrackedHost};

    fn info(available: u64) -> MemoryInfo {
        MemoryInfo {
            system: SystemMemory {
                total: 16 << 30,
                available,
                free: available,
            },
            cgroup: None,
            process: ProcessMemory::default(),
            tracked: TrackedHost::default(),
            devices: Vec::new(),
        }
    }

    #[test]
    fn host_guard_applies_the_factor_and_says_what_is_missing() {
        let i = info(1 << 30);
        assert_eq!(ensure_available_in(&i, 800 << 20, 1.2), Ok(1 << 30));
        let err = ensure_available_in(&i, 900 << 20, 1.2).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("need 1.05 GiB"), "{text}");
        assert!(text.contains("56.00 MiB missing"), "{text}");
    }

    #[test]
    fn bad_factors_are_named() {
        for f in [-1.0, 0.5, f64::NAN, f64::INFINITY] {
            let err = ensure_available_in(&info(1 << 30), 1, f).unwrap_err();
            assert!(matches!(err, ToolkitError::BadSafetyFactor { .. }), "{err}");
            assert!(err.to_string().contains(&format!("{f}")), "{err}");
        }
    }

    #[test]
    fn device_guard_counts_cached_memory() {
        let d = DeviceInfo {
            name: "gpu0".into(),
            backend: "sim".into(),
            free: Some(100 << 20),
            total: Some(1 << 30),
            limit: None,
            reserved: 300 << 20,
            allocated: 200 << 20,
            peak_reserved: 0,
            peak_allocated: 0,
            cached: 100 << 20,
            efficiency: 1.0,
            num_ooms: 0,
            num_alloc_retries: 0,
        };
        assert_eq!(
            ensure_device_available_in(&d, 200 << 20, 1.0),
            Ok(200 << 20)
        );
        let err = ensure_device_available_in(&d, 200 << 20, 1.5).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("gpu0") && text.contains("100.00 MiB missing"),
            "{text}"
        );
        // An engine cap 50 MiB above what it reserves leaves 50 of the 100 MiB
        // free: 50 + 100 cached.
        let capped = DeviceInfo {
            limit: Some(350 << 20),
            ..d
        };
        assert_eq!(
            ensure_device_available_in(&capped, 150 << 20, 1.0),
            Ok(150 << 20)
        );
        assert!(ensure_device_available_in(&capped, 151 << 20, 1.0).is_err());
    }

    #[test]
    fn zero_budgets_are_refused() {
        let err = BudgetScope::new("b", None, Some(0)).unwrap_err();
        assert_eq!(
            err,
            ToolkitError::ZeroBudget {
                what: "device budget"
            }
        );
        assert!(BudgetScope::new("b", Some(0), None).is_err());
    }
}
