//! [`MetalAllocator`]: the caching engine on one Metal device, and the
//! process-wide allocator of the default device for servers.

use std::ops::Deref;
use std::sync::OnceLock;

use alloc_core::{AllocError, CachingAllocator, Config};

use crate::backend::MetalBackend;
use crate::buffer::MetalBuffer;
use crate::error::MetalError;
use crate::stream::MetalStream;

static GLOBAL: OnceLock<Result<MetalAllocator, MetalError>> = OnceLock::new();

/// The caching engine on one Metal device.
///
/// It dereferences to [`CachingAllocator<MetalBackend>`], so the engine's
/// whole API is at hand: `stats()`, `snapshot()`, `memory_summary()`,
/// `empty_cache()`, `trim()`, `reset_peak()`, `set_memory_fraction()`,
/// `trace()`, `validate()`. PyTorch's `torch.mps` calls map as follows:
/// `empty_cache` → `empty_cache()`, `current_allocated_memory` →
/// [`current_allocated_memory`](Self::current_allocated_memory),
/// `driver_allocated_memory` → [`driver_allocated_memory`](Self::driver_allocated_memory),
/// `recommended_max_memory` → [`recommended_max_memory`](Self::recommended_max_memory),
/// `set_per_process_memory_fraction` → `set_memory_fraction()` (a fraction
/// of `recommendedMaxWorkingSetSize`).
pub struct MetalAllocator {
    engine: CachingAllocator<MetalBackend>,
}

impl MetalAllocator {
    /// The allocator of the system's default Metal device, configured from
    /// `ALLOC_CONF` (PyTorch's `key:value,...` syntax). On targets without
    /// Metal: [`MetalError::Unsupported`].
    pub fn new() -> Result<MetalAllocator, MetalError> {
        MetalAllocator::with_config(Config::from_env()?)
    }

    /// The allocator of the system's default Metal device with `config`.
    pub fn with_config(config: Config) -> Result<MetalAllocator, MetalError> {
        Ok(MetalAllocator::from_backend(
            MetalBackend::system_default()?,
            config,
        ))
    }

    /// The allocator over `backend` (a device chosen with
    /// [`MetalBackend::new`], or `MetalBackend::from_device` on Apple targets).
    pub fn from_backend(backend: MetalBackend, config: Config) -> MetalAllocator {
        MetalAllocator {
            engine: CachingAllocator::new(backend, config),
        }
    }

    /// The process-wide allocator of the default device, created on first
    /// use from `ALLOC_CONF`. A failure is remembered: later calls return it.
    pub fn global() -> Result<&'static MetalAllocator, MetalError> {
        GLOBAL
            .get_or_init(MetalAllocator::new)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The engine.
    pub fn engine(&self) -> &CachingAllocator<MetalBackend> {
        &self.engine
    }

    /// A new stream (command queue) of this device.
    pub fn new_stream(&self) -> Result<MetalStream, MetalError> {
        self.engine.backend().new_stream()
    }

    /// Allocates `bytes` bytes for use on `stream`. The buffer is returned to
    /// the cache on drop and reused on `stream` at once (commit order), on
    /// other streams once the work committed to the streams it was used on
    /// has completed.
    pub fn allocate(
        &self,
        bytes: usize,
        stream: MetalStream,
    ) -> Result<MetalBuffer<'_>, AllocError> {
        let inner = self.engine.allocate(bytes, stream)?;
        Ok(MetalBuffer::new(inner, self.engine.backend()))
    }

    /// Bytes handed out to users now (PyTorch's `current_allocated_memory`).
    pub fn current_allocated_memory(&self) -> u64 {
        self.engine.stats().allocated_bytes.all.current.max(0) as u64
    }

    /// Bytes this process holds on the device, cached blocks and other
    /// Metal users included (`currentAllocatedSize`; PyTorch's
    /// `driver_allocated_memory`).
    pub fn driver_allocated_memory(&self) -> u64 {
        self.engine.backend().driver_allocated_memory()
    }

    /// The device's `recommendedMaxWorkingSetSize` (PyTorch's
    /// `recommended_max_memory`).
    pub fn recommended_max_memory(&self) -> u64 {
        self.engine.backend().recommended_max_memory()
    }

    /// Waits until the work committed to `stream` so far has completed.
    pub fn synchronize_stream(&self, stream: MetalStream) -> Result<(), MetalError> {
        self.engine.backend().synchronize_stream(stream)
    }
}

/// Releases the cached segments (no buffer can be live: buffers borrow the
/// allocator), so dropping an allocator returns its memory to Metal.
impl Drop for MetalAllocator {
    fn drop(&mut self) {
        self.engine.empty_cache();
    }
}

impl Deref for MetalAllocator {
    type Target = CachingAllocator<MetalBackend>;

    fn deref(&self) -> &CachingAllocator<MetalBackend> {
        &self.engine
    }
}

impl core::fmt::Debug for MetalAllocator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MetalAllocator")
            .field("backend", self.engine.backend())
            .field("expandable", &self.engine.uses_expandable_segments())
            .finish()
    }
}
