//! The devices the toolkit knows: a small registry of caching engines behind
//! the [`DeviceMemory`] trait, so that `memory_info`, the guards, the
//! exporters and `cleanup_all` cover every device whatever its backend.

use std::sync::{Arc, Mutex, MutexGuard};

use alloc_core::{CachingAllocator, DeviceBackend, Stats};
use serde::Serialize;
use serde::ser::SerializeMap as _;

use crate::columns::DEVICE_COLUMNS;

use crate::error::ToolkitError;

/// One device's memory figures, bytes. It serializes as its `name` and
/// `backend` and one entry per row of [`DEVICE_COLUMNS`].
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    /// The name it was registered under.
    pub name: String,
    /// The backend's name (`host`, `sim`, `cuda`).
    pub backend: String,
    /// Bytes the device reports free, where it knows.
    pub free: Option<u64>,
    /// Bytes the device has in all, where it knows.
    pub total: Option<u64>,
    /// The engine's cap on reserved bytes from its configuration
    /// (`max_reserved_mb`, `per_process_memory_fraction` × total), if any.
    pub limit: Option<u64>,
    /// Bytes the engine holds from the device.
    pub reserved: u64,
    /// Bytes handed out to users.
    pub allocated: u64,
    /// Highest `reserved` seen.
    pub peak_reserved: u64,
    /// Highest `allocated` seen.
    pub peak_allocated: u64,
    /// `reserved − allocated`: held, reusable at once.
    pub cached: u64,
    /// Peak requested ÷ peak reserved (1.0 when nothing was reserved).
    pub efficiency: f64,
    /// Allocations that failed with out of memory.
    pub num_ooms: u64,
    /// Allocations that released cached memory and retried.
    pub num_alloc_retries: u64,
}

impl Serialize for DeviceInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2 + DEVICE_COLUMNS.len()))?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry("backend", &self.backend)?;
        for c in DEVICE_COLUMNS {
            m.serialize_entry(c.key, &(c.get)(self))?;
        }
        m.end()
    }
}

/// What the toolkit needs from a device cache. Implemented for every
/// [`CachingAllocator`]; implement it for anything else that holds device
/// memory.
pub trait DeviceMemory: Send + Sync {
    /// The current figures (`name` is filled in by the registry).
    fn device_info(&self) -> DeviceInfo;
    /// Releases every cached block; returns the bytes released.
    fn empty_cache(&self) -> u64;
    /// The engine's full statistics, where it has them.
    fn stats(&self) -> Option<Stats> {
        None
    }
    /// The engine's configuration, where it has one (so advice never
    /// repeats a setting already made).
    fn config(&self) -> Option<alloc_core::Config> {
        None
    }
}

/// A shared reference to a device (the process-wide allocators of
/// `alloc_cuda::CudaAllocator::global`, say) reports as the device itself.
impl<T: DeviceMemory + ?Sized> DeviceMemory for &T {
    fn device_info(&self) -> DeviceInfo {
        (**self).device_info()
    }

    fn empty_cache(&self) -> u64 {
        (**self).empty_cache()
    }

    fn stats(&self) -> Option<Stats> {
        (**self).stats()
    }

    fn config(&self) -> Option<alloc_core::Config> {
        (**self).config()
    }
}

/// The cap on reserved bytes a configuration sets (the smaller of the byte cap
/// and the fraction of the device total).
fn config_limit(c: &alloc_core::Config, total: Option<u64>) -> Option<u64> {
    let by_fraction = match (c.memory_fraction, total) {
        (Some(f), Some(t)) => Some((t as f64 * f.clamp(0.0, 1.0)) as u64),
        _ => None,
    };
    let by_bytes = c.max_reserved_bytes.map(|b| b as u64);
    match (by_fraction, by_bytes) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn nonneg(v: i64) -> u64 {
    v.max(0) as u64
}

impl<B: DeviceBackend> DeviceMemory for CachingAllocator<B> {
    fn device_info(&self) -> DeviceInfo {
        let s = CachingAllocator::stats(self);
        let mem = self.backend().mem_info();
        let reserved = nonneg(s.reserved_bytes.all.current);
        let allocated = nonneg(s.allocated_bytes.all.current);
        DeviceInfo {
            name: String::new(),
            backend: self.backend().name().to_owned(),
            free: mem.map(|m| m.free as u64),
            total: mem.map(|m| m.total as u64),
            limit: config_limit(self.config(), mem.map(|m| m.total as u64)),
            reserved,
            allocated,
            peak_reserved: nonneg(s.reserved_bytes.all.peak),
            peak_allocated: nonneg(s.allocated_bytes.all.peak),
            cached: reserved.saturating_sub(allocated),
            efficiency: s.efficiency(),
            num_ooms: nonneg(s.num_ooms),
            num_alloc_retries: nonneg(s.num_alloc_retries),
        }
    }

    fn empty_cache(&self) -> u64 {
        let before = nonneg(CachingAllocator::stats(self).reserved_bytes.all.current);
        CachingAllocator::empty_cache(self);
        let after = nonneg(CachingAllocator::stats(self).reserved_bytes.all.current);
        before.saturating_sub(after)
    }

    fn stats(&self) -> Option<Stats> {
        Some(CachingAllocator::stats(self))
    }

    fn config(&self) -> Option<alloc_core::Config> {
        Some(CachingAllocator::config(self).clone())
    }
}

type Entry = (String, Arc<dyn DeviceMemory>);

static DEVICES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn devices_lock() -> MutexGuard<'static, Vec<Entry>> {
    DEVICES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers `device` under `name` (replacing a device of that name), so that
/// [`memory_info`](crate::memory_info), the guards, the exporters and
/// [`cleanup_all`](crate::cleanup_all) cover it.
pub fn register_device(name: &str, device: Arc<dyn DeviceMemory>) {
    let mut d = devices_lock();
    d.retain(|(n, _)| n != name);
    d.push((name.to_owned(), device));
}

/// Removes the device registered under `name`; returns whether there was one.
pub fn unregister_device(name: &str) -> bool {
    let mut d = devices_lock();
    let before = d.len();
    d.retain(|(n, _)| n != name);
    d.len() != before
}

/// The registered devices, in order of registration.
pub fn devices() -> Vec<(String, Arc<dyn DeviceMemory>)> {
    devices_lock().clone()
}

/// The device registered under `name`.
pub fn device(name: &str) -> Result<Arc<dyn DeviceMemory>, ToolkitError> {
    let d = devices_lock();
    match d.iter().find(|(n, _)| n == name) {
        Some((_, dev)) => Ok(dev.clone()),
        None => Err(ToolkitError::UnknownDevice {
            name: name.to_owned(),
            registered: d
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The figures of every registered device.
pub fn device_infos() -> Vec<DeviceInfo> {
    devices()
        .into_iter()
        .map(|(name, dev)| DeviceInfo {
            name,
            ..dev.device_info()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc_core::{Config, SimBackend, SimStream};

    #[test]
    fn caching_allocator_reports_and_empties() {
        let engine = CachingAllocator::new(SimBackend::new(64 << 20), Config::default());
        let buf = engine.allocate(3 << 20, SimStream(0)).expect("fits");
        let info = DeviceMemory::device_info(&engine);
        assert_eq!(info.allocated, buf.capacity() as u64);
        assert!(info.reserved >= info.allocated);
        assert_eq!(info.total, Some(64 << 20));
        drop(buf);
        let released = DeviceMemory::empty_cache(&engine);
        assert!(released >= 3 << 20, "released {released}");
        assert_eq!(DeviceMemory::device_info(&engine).reserved, 0);
    }

    #[test]
    fn unknown_device_names_the_registered_ones() {
        let engine = Arc::new(CachingAllocator::new(
            SimBackend::new(1 << 20),
            Config::default(),
        ));
        register_device("device-test-a", engine);
        let err = device("device-test-missing").err().expect("not registered");
        let text = err.to_string();
        assert!(
            text.contains("device-test-missing") && text.contains("device-test-a"),
            "{text}"
        );
        assert!(unregister_device("device-test-a"));
        assert!(!unregister_device("device-test-a"));
    }
}
