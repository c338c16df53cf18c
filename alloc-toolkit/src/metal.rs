//! Metal (MPS) devices in the toolkit (feature `metal`): [`DeviceMemory`] for
//! alloc-mps's [`MetalAllocator`] (owned, or the process-wide one of
//! [`MetalAllocator::global`]), so that [`memory_info`](crate::memory_info),
//! the device registry, the guards, the monitor and
//! [`cleanup_all`](crate::cleanup_all) treat a Metal device like a CUDA one;
//! and the three knobs a server sets on it: cache clear
//! ([`DeviceMemory::empty_cache`]), usage fraction and garbage-collection
//! threshold ([`MetalSettings`], [`set_metal_memory_fraction`]).
//!
//! The crate builds on every target; off Apple platforms
//! [`open_metal_device`] returns alloc-mps's `Unsupported` error.

use std::sync::Arc;

use alloc_core::{Config, Stats};
use alloc_mps::{MetalAllocator, MetalBackend, MetalError};

use crate::device::{DeviceInfo, DeviceMemory, register_device};

/// The engine's figures; the backend name is `mps`, free and total are
/// `recommendedMaxWorkingSetSize` − `currentAllocatedSize` and
/// `recommendedMaxWorkingSetSize`.
impl DeviceMemory for MetalAllocator {
    fn device_info(&self) -> DeviceInfo {
        DeviceMemory::device_info(self.engine())
    }

    fn empty_cache(&self) -> u64 {
        DeviceMemory::empty_cache(self.engine())
    }

    fn stats(&self) -> Option<Stats> {
        DeviceMemory::stats(self.engine())
    }

    fn config(&self) -> Option<Config> {
        DeviceMemory::config(self.engine())
    }
}

/// What [`open_metal_device`] sets on top of `ALLOC_CONF`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetalSettings {
    /// Cap on reserved bytes as a fraction of the device's
    /// `recommendedMaxWorkingSetSize` (`per_process_memory_fraction`;
    /// PyTorch's `torch.mps.set_per_process_memory_fraction`).
    pub memory_fraction: Option<f64>,
    /// Release cached blocks once reserved memory passes this fraction of
    /// the cap (`garbage_collection_threshold`; it needs a cap, so set
    /// `memory_fraction` too).
    pub gc_threshold: Option<f64>,
    /// The backend's high watermark as a multiple of
    /// `recommendedMaxWorkingSetSize` (0 removes it); `None` keeps alloc-mps's
    /// default, 1.7.
    pub high_watermark_ratio: Option<f64>,
}

impl MetalSettings {
    /// `ALLOC_CONF` (or the default) with these settings applied; a bad value
    /// is the configuration's own error, naming the key and the rule.
    pub fn config(&self) -> Result<Config, MetalError> {
        let mut c = Config::from_env()?;
        if let Some(f) = self.memory_fraction {
            c.set("per_process_memory_fraction", &f.to_string())?;
        }
        if let Some(t) = self.gc_threshold {
            c.set("garbage_collection_threshold", &t.to_string())?;
        }
        Ok(c)
    }
}

/// Opens the system's default Metal device with `settings` and registers it
/// as `name` (replacing a device of that name).
pub fn open_metal_device(
    name: &str,
    settings: &MetalSettings,
) -> Result<Arc<MetalAllocator>, MetalError> {
    let config = settings.config()?;
    let backend = MetalBackend::system_default()?;
    if let Some(r) = settings.high_watermark_ratio {
        backend.set_high_watermark_ratio(r)?;
    }
    let allocator = Arc::new(MetalAllocator::from_backend(backend, config));
    register_device(name, allocator.clone());
    Ok(allocator)
}

/// Registers the process-wide allocator of the default device
/// ([`MetalAllocator::global`]) as `name`, and returns it.
pub fn register_global_metal_device(name: &str) -> Result<&'static MetalAllocator, MetalError> {
    let allocator = MetalAllocator::global()?;
    register_device(name, Arc::new(allocator));
    Ok(allocator)
}

/// Caps `allocator`'s reserved memory at `fraction` of
/// `recommendedMaxWorkingSetSize` from now on; returns the cap in bytes.
pub fn set_metal_memory_fraction(allocator: &MetalAllocator, fraction: f64) -> Option<u64> {
    allocator
        .set_memory_fraction(fraction)
        .map(|bytes| bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_by_the_config() {
        let ok = MetalSettings {
            memory_fraction: Some(0.5),
            gc_threshold: Some(0.8),
            high_watermark_ratio: None,
        };
        if std::env::var_os(alloc_core::config::ENV_VAR).is_none() {
            let c = ok.config().expect("valid");
            assert_eq!(c.memory_fraction, Some(0.5));
            assert_eq!(c.garbage_collection_threshold, Some(0.8));
            let bad = MetalSettings {
                gc_threshold: Some(1.5),
                ..ok
            };
            let err = bad.config().expect_err("threshold above 1");
            assert!(
                err.to_string().contains("garbage_collection_threshold"),
                "{err}"
            );
        }
    }

    #[cfg(not(target_vendor = "apple"))]
    #[test]
    fn off_apple_the_device_is_unsupported() {
        let err =
            open_metal_device("metal-test", &MetalSettings::default()).expect_err("no Metal here");
        assert!(matches!(err, MetalError::Unsupported { .. }), "{err}");
        assert!(
            crate::device::device("metal-test").is_err(),
            "nothing registered"
        );
    }

    #[cfg(target_os = "macos")]
    #[test]
    fn a_metal_device_reports_like_any_device() {
        let settings = MetalSettings {
            memory_fraction: Some(0.5),
            ..MetalSettings::default()
        };
        let a = match open_metal_device("metal-test", &settings) {
            Ok(a) => a,
            Err(MetalError::NoDevice) => return eprintln!("skipped: no Metal device"),
            Err(e) => panic!("{e}"),
        };
        let buf = a
            .allocate(4 << 20, alloc_mps::MetalStream::DEFAULT)
            .expect("fits");
        let info = crate::device::device_infos()
            .into_iter()
            .find(|d| d.name == "metal-test")
            .expect("registered");
        assert_eq!(info.backend, "mps");
        assert_eq!(info.allocated, buf.capacity() as u64);
        assert!(info.limit.is_some() && info.total.is_some());
        drop(buf);
        assert!(DeviceMemory::empty_cache(a.as_ref()) >= 4 << 20);
        assert!(set_metal_memory_fraction(&a, 0.25).is_some());
        assert!(crate::device::unregister_device("metal-test"));
    }
}
