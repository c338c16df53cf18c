//! [`DeviceBuffer`]: the RAII handle to a block handed out by the engine.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::backend::{DeviceBackend, DevicePtr};
use crate::block::BlockId;
use crate::cache::CachingAllocator;
use crate::scope::ScopeId;

/// A block of device memory handed out by [`CachingAllocator::allocate`].
/// Dropping it returns the block to the cache (after events on the streams
/// named by [`record_stream`](Self::record_stream) complete).
#[must_use = "dropping a DeviceBuffer frees it at once"]
pub struct DeviceBuffer<'a, B: DeviceBackend> {
    pub(crate) alloc: &'a CachingAllocator<B>,
    pub(crate) block: BlockId,
    pub(crate) ptr: DevicePtr,
    pub(crate) size: usize,
    pub(crate) requested: usize,
    pub(crate) stream: B::Stream,
    pub(crate) owner: ScopeId,
    /// The front cache's epoch when it was handed out (`front.rs`).
    pub(crate) epoch: u64,
    /// Whether `record_stream` was called: its free then goes through the
    /// engine's lock, which knows the uses.
    pub(crate) recorded: AtomicBool,
}

impl<B: DeviceBackend> DeviceBuffer<'_, B> {
    /// The start of the block.
    #[inline]
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// Bytes the caller asked for.
    #[inline]
    pub fn len(&self) -> usize {
        self.requested
    }

    /// Whether zero bytes were asked for.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.requested == 0
    }

    /// Bytes the block holds (the rounded size, at least [`len`](Self::len)).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.size
    }

    /// The stream the block was allocated on.
    #[inline]
    pub fn stream(&self) -> B::Stream {
        self.stream
    }

    /// The scope the block is charged to.
    #[inline]
    pub fn owner(&self) -> ScopeId {
        self.owner
    }

    /// Marks the block as used by work on `stream`: when the buffer is
    /// dropped, the block is reused only after an event recorded then on
    /// `stream` completes.
    pub fn record_stream(&self, stream: B::Stream) {
        if self.size == 0 {
            return;
        }
        self.recorded.store(true, Ordering::Relaxed);
        self.alloc.record_stream(self.block, self.stream, stream);
    }
}

impl<B: DeviceBackend> Drop for DeviceBuffer<'_, B> {
    fn drop(&mut self) {
        if self.size == 0 {
            return; // a zero-byte request holds no block
        }
        self.alloc.free_buffer(self);
        crate::scope::charge_device_free(self.owner, self.size as u64);
    }
}

impl<B: DeviceBackend> fmt::Debug for DeviceBuffer<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("ptr", &format_args!("{:#x}", self.ptr.0))
            .field("len", &self.requested)
            .field("capacity", &self.size)
            .field("stream", &self.stream)
            .finish()
    }
}
