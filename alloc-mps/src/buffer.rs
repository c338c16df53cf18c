//! [`MetalBuffer`]: a block from [`MetalAllocator`](crate::MetalAllocator),
//! with the `MTLBuffer` and offset a command encoder binds
//! (`setBuffer:offset:atIndex:`), and on unified memory its CPU address.
//!
//! Dropping it returns the block to the cache, never to Metal. Commit the
//! command buffers that use the block before dropping it: the engine reuses
//! a block on its own queue at once (the queue runs in commit order), and on
//! other queues once the work committed before the drop has completed.

use core::ptr::NonNull;

use alloc_core::{DeviceBuffer, DevicePtr};

use crate::backend::{MetalBackend, Resolved};
use crate::stream::MetalStream;

/// A block of Metal memory handed out by the caching engine.
pub struct MetalBuffer<'a> {
    inner: DeviceBuffer<'a, MetalBackend>,
    /// `None` only for an empty buffer, which has no segment.
    at: Option<Resolved>,
    /// The CPU address of the block (0: not CPU-visible). An integer, so the
    /// buffer is `Send` and `Sync` exactly when the engine's buffer is.
    cpu: usize,
}

impl<'a> MetalBuffer<'a> {
    pub(crate) fn new(inner: DeviceBuffer<'a, MetalBackend>, backend: &MetalBackend) -> Self {
        let at = (!inner.is_empty())
            .then(|| backend.resolve(inner.ptr()))
            .flatten();
        debug_assert!(
            inner.is_empty() || at.is_some(),
            "block at {:#x} lies in no live segment",
            inner.ptr().0
        );
        let cpu = at
            .as_ref()
            .and_then(|r| backend.cpu_address(r))
            .map_or(0, |p| p.as_ptr() as usize);
        MetalBuffer { inner, at, cpu }
    }

    /// The block's address in the backend's address space.
    #[inline]
    pub fn ptr(&self) -> DevicePtr {
        self.inner.ptr()
    }

    /// Bytes asked for.
    #[inline]
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether zero bytes were asked for (such a buffer has no `MTLBuffer`).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Bytes the block holds (at least [`len`](Self::len)).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// The offset of the block in its segment's `MTLBuffer`.
    #[inline]
    pub fn offset(&self) -> usize {
        self.at.as_ref().map_or(0, Resolved::offset)
    }

    /// The segment's `MTLBuffer` (retained for the caller), to bind with
    /// [`offset`](Self::offset); `None` for an empty buffer.
    #[cfg(target_vendor = "apple")]
    pub fn metal_buffer(&self) -> Option<objc2::rc::Retained<crate::sys::RawBuffer>> {
        self.at.as_ref().map(Resolved::buffer)
    }

    /// The CPU address of the block: `Some` on unified memory (shared
    /// storage), `None` on a discrete GPU (private storage) or when empty.
    /// CPU accesses are not ordered with the queues: synchronize the streams
    /// that use the block first.
    #[inline]
    pub fn contents(&self) -> Option<NonNull<u8>> {
        NonNull::new(self.cpu as *mut u8)
    }

    /// The block's first [`len`](Self::len) bytes, as the CPU sees them.
    ///
    /// # Safety
    /// No GPU work that writes the block is pending (synchronize the streams
    /// that use it). Bytes not written since the block was allocated are
    /// unspecified (a reused block holds its previous user's bytes).
    pub unsafe fn as_slice(&self) -> Option<&[u8]> {
        let p = self.contents()?;
        // SAFETY: `p` points to `capacity() >= len()` bytes of a live buffer
        // that this handle owns; the caller rules out concurrent writers.
        Some(unsafe { core::slice::from_raw_parts(p.as_ptr(), self.len()) })
    }

    /// The block's first [`len`](Self::len) bytes, writable by the CPU.
    ///
    /// # Safety
    /// No GPU work that reads or writes the block is pending: synchronize
    /// its stream first (a block just reused on its own queue may still be
    /// in use by earlier work committed there).
    pub unsafe fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        let p = self.contents()?;
        // SAFETY: as for `as_slice`, and `&mut self` excludes other CPU
        // access through this handle; the caller rules out GPU access.
        Some(unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), self.len()) })
    }

    /// The stream the block was allocated on.
    #[inline]
    pub fn stream(&self) -> MetalStream {
        self.inner.stream()
    }

    /// Marks the block as used by work on `stream`: after the buffer is
    /// dropped, the block is reused only once that work completes.
    pub fn record_stream(&self, stream: MetalStream) {
        self.inner.record_stream(stream);
    }

    /// The engine's buffer.
    pub fn inner(&self) -> &DeviceBuffer<'a, MetalBackend> {
        &self.inner
    }
}

impl core::fmt::Debug for MetalBuffer<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MetalBuffer")
            .field("ptr", &format_args!("{:#x}", self.ptr().0))
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("offset", &self.offset())
            .field("stream", &self.stream())
            .finish()
    }
}
