//! [`CudaAllocator`]: the caching engine on one CUDA device, and the
//! process-wide allocator of each device for servers.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaContext, CudaStream};

use alloc_core::{CachingAllocator, Config};

use crate::backend::CudaBackend;
use crate::buffer::CudaBuffer;
use crate::error::CudaError;
use crate::stream::StreamHandle;

/// Devices the process-wide allocators cover ([`CudaAllocator::global`]).
pub const MAX_GLOBAL_DEVICES: usize = 64;

static GLOBAL: [OnceLock<Result<CudaAllocator, CudaError>>; MAX_GLOBAL_DEVICES] =
    [const { OnceLock::new() }; MAX_GLOBAL_DEVICES];

/// The caching engine on CUDA device N.
///
/// It dereferences to [`CachingAllocator<CudaBackend>`], so the engine's
/// whole API is at hand: `stats()`, `snapshot()`, `memory_summary()`,
/// `empty_cache()`, `trim()`, `reset_peak()`, `set_memory_fraction()`,
/// `trace()`, `validate()`.
pub struct CudaAllocator {
    engine: CachingAllocator<CudaBackend>,
}

impl CudaAllocator {
    /// The allocator of device `ordinal`, configured from `ALLOC_CONF`
    /// (PyTorch's `key:value,...` syntax).
    pub fn new(ordinal: usize) -> Result<CudaAllocator, CudaError> {
        let config = Config::from_env()?;
        CudaAllocator::with_config(ordinal, config)
    }

    /// The allocator of device `ordinal` with `config`.
    pub fn with_config(ordinal: usize, config: Config) -> Result<CudaAllocator, CudaError> {
        let backend = CudaBackend::new(ordinal)?;
        Ok(CudaAllocator {
            engine: CachingAllocator::new(backend, config),
        })
    }

    /// The process-wide allocator of device `ordinal`, created on first use
    /// from `ALLOC_CONF`. A failure is remembered: later calls return it too.
    pub fn global(ordinal: usize) -> Result<&'static CudaAllocator, CudaError> {
        let slot = GLOBAL.get(ordinal).ok_or(CudaError::DeviceOutOfRange {
            device: ordinal,
            max: MAX_GLOBAL_DEVICES,
        })?;
        slot.get_or_init(|| CudaAllocator::new(ordinal))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The engine.
    pub fn engine(&self) -> &CachingAllocator<CudaBackend> {
        &self.engine
    }

    /// The device's context.
    pub fn context(&self) -> &Arc<CudaContext> {
        self.engine.backend().context()
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.engine.backend().ordinal()
    }

    /// A new non-blocking stream of this device.
    pub fn new_stream(&self) -> Result<Arc<CudaStream>, CudaError> {
        self.context().new_stream().map_err(|e| {
            CudaError::driver("cuStreamCreate", e, "the device may be out of resources")
        })
    }

    /// Allocates `bytes` bytes for use on `stream`. The buffer is returned to
    /// the cache on drop and reused on `stream` at once (stream order), on
    /// other streams once the events of the streams it was used on complete.
    pub fn allocate(
        &self,
        bytes: usize,
        stream: &Arc<CudaStream>,
    ) -> Result<CudaBuffer<'_>, CudaError> {
        if stream.context().cu_ctx() != self.context().cu_ctx() {
            return Err(CudaError::ForeignStream {
                device: self.ordinal(),
                stream_device: stream.context().ordinal(),
            });
        }
        self.engine.backend().retain_stream(stream);
        let inner = self.engine.allocate(bytes, StreamHandle::of(stream))?;
        Ok(CudaBuffer::new(inner, Arc::clone(stream)))
    }
}

/// Releases the cached segments (no buffer can be live: buffers borrow the
/// allocator), so dropping an allocator returns its device memory.
impl Drop for CudaAllocator {
    fn drop(&mut self) {
        self.engine.empty_cache();
    }
}

impl Deref for CudaAllocator {
    type Target = CachingAllocator<CudaBackend>;

    fn deref(&self) -> &CachingAllocator<CudaBackend> {
        &self.engine
    }
}

impl core::fmt::Debug for CudaAllocator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CudaAllocator")
            .field("backend", self.engine.backend())
            .field("expandable", &self.engine.uses_expandable_segments())
            .finish()
    }
}
