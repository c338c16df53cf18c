//! Pooled CUDA events: created in batches off the hot path, recorded when a
//! block used on another stream is freed, returned to the pool on drop. The
//! engine records, queries and drops the events of frees with its lock
//! released (`core:P1`); only the reclaim ladder's idle check of a stream
//! records and queries one under it. The pool's own lock is a leaf lock.
//!
//! # Invariants
//! The pool keeps [`CudaInvariant::E1`] (free events are the pool's) and
//! [`CudaInvariant::E2`] (a [`PooledEvent`] keeps its pool alive); their
//! definitions are on the variants.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, sys};

use alloc_core::BackendError;

#[cfg(doc)]
use crate::CudaInvariant;
use crate::driver::{CurrentContext, RelaxedCapture, backend_error, capturing, check};
use crate::stream::StreamHandle;

/// Events created when the pool runs dry (one driver call each, off the hot
/// path: the pool is filled when the backend is created).
pub const EVENT_BATCH: usize = 32;

/// A free list of events of one context.
pub(crate) struct EventPool {
    ctx: Arc<CudaContext>,
    /// Raw `CUevent` handles ([`CudaInvariant::E1`]).
    free: Mutex<Vec<usize>>,
}

impl EventPool {
    /// A pool of `EVENT_BATCH` events of `ctx`.
    pub(crate) fn new(ctx: Arc<CudaContext>) -> Result<Arc<EventPool>, BackendError> {
        let pool = Arc::new(EventPool {
            ctx,
            free: Mutex::new(Vec::with_capacity(EVENT_BATCH)),
        });
        let batch = pool.create_batch()?;
        pool.lock().extend(batch);
        Ok(pool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cold]
    #[inline(never)]
    fn create_batch(&self) -> Result<Vec<usize>, BackendError> {
        let _cur = CurrentContext::enter(self.ctx.cu_ctx())?;
        let mut out = Vec::with_capacity(EVENT_BATCH);
        for _ in 0..EVENT_BATCH {
            let mut ev: sys::CUevent = core::ptr::null_mut();
            let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
            // SAFETY: `ev` is a valid out-pointer; the context is current.
            match check(unsafe { sys::cuEventCreate(&mut ev, flags) }) {
                Ok(()) => out.push(ev as usize),
                Err(e) if out.is_empty() => return Err(backend_error("cuEventCreate", e)),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// An event from the free list (a new batch when it is empty), recorded
    /// on `stream`.
    fn record(self: &Arc<Self>, stream: sys::CUstream) -> Result<PooledEvent, BackendError> {
        let popped = self.lock().pop();
        let raw = match popped {
            Some(raw) => raw,
            None => {
                let mut batch = self.create_batch()?;
                let raw = batch.pop().unwrap_or_default();
                self.lock().extend(batch);
                raw
            }
        };
        let ev = PooledEvent {
            raw,
            pool: Arc::clone(self),
        };
        // SAFETY: `raw` is a live event of this context owned by `ev` (cuda:E1);
        // `stream` is a stream handle the caller got from this context.
        check(unsafe { sys::cuEventRecord(raw as sys::CUevent, stream) })
            .map_err(|e| backend_error("cuEventRecord", e))?;
        Ok(ev)
    }

    /// An event recorded on `stream`, where its work can be observed: not
    /// another thread's per-thread default stream, and not a stream that
    /// is capturing a CUDA graph (an event recorded there belongs to the
    /// graph, and querying it would break the capture). Otherwise an error,
    /// which the engine treats as "busy" until it synchronises.
    pub(crate) fn record_observable(
        self: &Arc<Self>,
        stream: StreamHandle,
    ) -> Result<PooledEvent, BackendError> {
        if !stream.usable_here() {
            return Err(BackendError::Other(format!(
                "{stream:?} is another thread's per-thread default stream; its work cannot be observed from this thread"
            )));
        }
        let _cur = CurrentContext::enter(self.ctx.cu_ctx())?;
        let _relaxed = RelaxedCapture::enter();
        match capturing(stream.as_raw()) {
            Ok(false) => self.record(stream.as_raw()),
            Ok(true) => Err(BackendError::Other(format!(
                "stream {stream:?} is capturing a CUDA graph; its work cannot be observed until the capture ends"
            ))),
            Err(e) => Err(backend_error("cuStreamIsCapturing", e)),
        }
    }

    /// Events in the free list.
    pub(crate) fn free_len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for EventPool {
    fn drop(&mut self) {
        let _cur = CurrentContext::enter(self.ctx.cu_ctx());
        for raw in self.lock().drain(..) {
            // SAFETY: no `PooledEvent` is alive (each holds the pool), so the
            // pool owns every event in its list (cuda:E1).
            let _ = unsafe { sys::cuEventDestroy_v2(raw as sys::CUevent) };
        }
    }
}

/// An event recorded on a stream; returns to its pool on drop.
pub struct PooledEvent {
    raw: usize,
    pool: Arc<EventPool>,
}

impl PooledEvent {
    /// Whether the work before the event has completed. A driver error other
    /// than "not ready" also answers `false`: memory is never reused on a
    /// guess.
    pub fn is_done(&self) -> bool {
        // The driver needs the event's context current (the calling thread,
        // say one of PyTorch's autograd threads, may have none).
        let Ok(_cur) = CurrentContext::enter(self.pool.ctx.cu_ctx()) else {
            return false;
        };
        // Querying an event is a call a global-mode capture forbids.
        let _relaxed = RelaxedCapture::enter();
        // SAFETY: `raw` is a live event owned by `self`.
        let r = unsafe { sys::cuEventQuery(self.raw as sys::CUevent) };
        r == sys::CUresult::CUDA_SUCCESS
    }

    /// Waits until the work before the event has completed. Returns `false`
    /// if the driver reported an error.
    pub fn wait(&self) -> bool {
        let Ok(_cur) = CurrentContext::enter(self.pool.ctx.cu_ctx()) else {
            return false;
        };
        let _relaxed = RelaxedCapture::enter();
        // SAFETY: `raw` is a live event owned by `self`.
        check(unsafe { sys::cuEventSynchronize(self.raw as sys::CUevent) }).is_ok()
    }
}

impl Drop for PooledEvent {
    fn drop(&mut self) {
        self.pool.lock().push(self.raw);
    }
}

impl core::fmt::Debug for PooledEvent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PooledEvent({:#x})", self.raw)
    }
}
