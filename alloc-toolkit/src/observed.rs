//! [`ObservedDevice`]: a device the toolkit watches but does not allocate
//! from. Memory that other libraries (a tensor framework's own allocator,
//! cuBLAS workspaces, another process) hold on a GPU is invisible to the
//! caching engine's counters; the driver's free/total figures see it. Once
//! registered with [`register_device`](crate::register_device), the guards
//! (`ensure_device_available` reads `free`), the monitor
//! ([`DeviceFigure::Used`](crate::DeviceFigure::Used) = total − free) and
//! the metrics (`alloc_device_free_bytes`, `alloc_device_total_bytes`) cover
//! it.
//!
//! An observed device reports no reserved or allocated bytes (it owns none)
//! and releases nothing on `empty_cache`.

use crate::device::{DeviceInfo, DeviceMemory};
#[cfg(feature = "cuda")]
use crate::error::ToolkitError;

type Reader = Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>;

/// A device known by its free and total bytes only.
pub struct ObservedDevice {
    backend: String,
    read: Reader,
}

impl std::fmt::Debug for ObservedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedDevice")
            .field("backend", &self.backend)
            .finish()
    }
}

impl ObservedDevice {
    /// A device whose `(free, total)` bytes `read` returns (`None` when it
    /// cannot tell now); `backend` names the source in reports.
    pub fn new(
        backend: &str,
        read: impl Fn() -> Option<(u64, u64)> + Send + Sync + 'static,
    ) -> Self {
        ObservedDevice {
            backend: backend.to_owned(),
            read: Box::new(read),
        }
    }

    /// CUDA device `ordinal` through the driver's `cuMemGetInfo` (loaded at
    /// run time by alloc-cuda): memory used on the device by anyone. An
    /// error, never a panic, where there is no driver or no such device.
    #[cfg(feature = "cuda")]
    pub fn cuda(ordinal: usize) -> Result<Self, ToolkitError> {
        use alloc_core::DeviceBackend;
        let backend =
            alloc_cuda::CudaBackend::new(ordinal).map_err(|e| ToolkitError::CannotObserve {
                device: format!("cuda:{ordinal}"),
                reason: e.to_string(),
            })?;
        Ok(Self::new("cuda-observed", move || {
            backend.mem_info().map(|m| (m.free as u64, m.total as u64))
        }))
    }
}

impl DeviceMemory for ObservedDevice {
    fn device_info(&self) -> DeviceInfo {
        let m = (self.read)();
        DeviceInfo {
            name: String::new(),
            backend: self.backend.clone(),
            free: m.map(|m| m.0),
            total: m.map(|m| m.1),
            limit: None,
            reserved: 0,
            allocated: 0,
            peak_reserved: 0,
            peak_allocated: 0,
            cached: 0,
            efficiency: 1.0,
            num_ooms: 0,
            num_alloc_retries: 0,
        }
    }

    fn empty_cache(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    #[test]
    fn guards_see_memory_held_by_others() {
        // A 16 GiB device of which another library took 15 GiB.
        let free = Arc::new(AtomicU64::new(16 << 30));
        let f = free.clone();
        let dev = Arc::new(ObservedDevice::new("test-observed", move || {
            Some((f.load(Relaxed), 16 << 30))
        }));
        crate::register_device("observed-test", dev);
        assert!(crate::ensure_device_available("observed-test", 4 << 30, 1.2).is_ok());
        free.store(1 << 30, Relaxed);
        let err = crate::ensure_device_available("observed-test", 4 << 30, 1.2).unwrap_err();
        assert!(err.to_string().contains("observed-test"), "{err}");
        let info = crate::device_infos()
            .into_iter()
            .find(|d| d.name == "observed-test")
            .unwrap();
        assert_eq!(
            (info.free, info.total, info.reserved),
            (Some(1 << 30), Some(16 << 30), 0)
        );
        assert!(crate::unregister_device("observed-test"));
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_without_a_driver_is_an_error_not_a_panic() {
        // On a machine with a GPU this opens device 0 and reads its figures;
        // without a driver (CI) it must say so.
        match ObservedDevice::cuda(0) {
            Ok(d) => {
                let i = d.device_info();
                assert!(
                    i.total.unwrap() > 0 && i.free.unwrap() <= i.total.unwrap(),
                    "{i:?}"
                );
            }
            Err(e) => {
                assert!(
                    !alloc_cuda::cuda_available() || e.to_string().contains("cuda:0"),
                    "{e}"
                );
                eprintln!("no GPU here: {e}");
            }
        }
    }
}
