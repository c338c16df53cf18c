//! CUDA devices in the toolkit (feature `cuda`): [`DeviceMemory`] for
//! alloc-cuda's [`CudaAllocator`] (owned, or the process-wide one of
//! [`CudaAllocator::global`]) and its [`PinnedPool`], and
//! [`register_pinned_pool`], which makes [`cleanup_all`](crate::cleanup_all)
//! release a pinned host pool too.

use std::sync::Arc;

use alloc_core::Stats;
use alloc_cuda::{CudaAllocator, PinnedPool};

use crate::cleanup::register_cleanup;
use crate::device::{DeviceInfo, DeviceMemory};

/// The engine's figures; the backend name is `cuda`.
impl DeviceMemory for CudaAllocator {
    fn device_info(&self) -> DeviceInfo {
        DeviceMemory::device_info(self.engine())
    }

    fn empty_cache(&self) -> u64 {
        DeviceMemory::empty_cache(self.engine())
    }

    fn stats(&self) -> Option<Stats> {
        DeviceMemory::stats(self.engine())
    }

    fn config(&self) -> Option<alloc_core::Config> {
        DeviceMemory::config(self.engine())
    }
}

/// A pinned host pool's engine: reserved is page-locked host memory.
impl DeviceMemory for PinnedPool {
    fn device_info(&self) -> DeviceInfo {
        DeviceMemory::device_info(self.engine())
    }

    fn empty_cache(&self) -> u64 {
        DeviceMemory::empty_cache(self.engine())
    }

    fn stats(&self) -> Option<Stats> {
        DeviceMemory::stats(self.engine())
    }

    fn config(&self) -> Option<alloc_core::Config> {
        DeviceMemory::config(self.engine())
    }
}

/// The [`register_cleanup`] name of the pinned pool registered as `name`.
pub fn pinned_hook_name(name: &str) -> String {
    format!("pinned pool {name}")
}

/// Makes [`cleanup_all`](crate::cleanup_all) release the cached blocks of
/// `pool` (`cuMemFreeHost`), reported among its hooks as
/// `pinned pool {name}` with the bytes released. Replaces a pool registered
/// under the same name; [`unregister_cleanup`](crate::unregister_cleanup)
/// with [`pinned_hook_name`] removes it.
pub fn register_pinned_pool(name: &str, pool: Arc<PinnedPool>) {
    register_cleanup(&pinned_hook_name(name), move || {
        DeviceMemory::empty_cache(pool.as_ref())
    });
}
