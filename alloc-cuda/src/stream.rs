//! [`StreamHandle`]: the engine's name for a CUDA stream, and
//! [`KnownStreams`]: the streams a backend has seen.
//!
//! The driver has two special handles besides real streams: the legacy
//! default stream (`NULL`, or `CU_STREAM_LEGACY` = `0x1`), one per context
//! and shared by every thread, and `CU_STREAM_PER_THREAD` (`0x2`), which
//! names a *different* stream on each thread. Keyed by its raw value, `0x2`
//! would make every thread's per-thread stream one engine stream, and a
//! block freed in one thread's stream order would be handed to another
//! thread at once. So [`StreamHandle::from_raw`] maps `0x1` to the legacy
//! stream and `0x2` to a key of the calling thread ([`StreamHandle::is_per_thread`]),
//! which only that thread can hand back to the driver.
//!
//! # Invariants
//! The handles keep [`CudaInvariant::H1`] (per-thread keys are tagged) and
//! [`CudaInvariant::H2`] (thread indices are never reused); [`KnownStreams`]
//! keeps [`CudaInvariant::K1`]. Their definitions are on the variants.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cudarc::driver::{CudaStream, sys};

#[cfg(doc)]
use crate::CudaInvariant;

/// `CU_STREAM_LEGACY`: the legacy default stream, as a handle.
pub const RAW_LEGACY: usize = 0x1;
/// `CU_STREAM_PER_THREAD`: the calling thread's default stream, as a handle.
pub const RAW_PER_THREAD: usize = 0x2;

/// The tag of per-thread keys ([`CudaInvariant::H1`]).
const PER_THREAD_TAG: usize = 1 << (usize::BITS - 1);

/// A CUDA stream as the engine keys it: the raw `CUstream` as an integer
/// (`0` is the legacy default stream), or a per-thread default stream of one
/// thread. It is only ever passed back to the driver, never dereferenced.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StreamHandle(pub usize);

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's index ([`CudaInvariant::H2`]), 0 until first asked for.
    static THREAD: Cell<usize> = const { Cell::new(0) };
}

/// The calling thread's index, assigned on first use ([`CudaInvariant::H2`]).
fn thread_index() -> usize {
    THREAD.with(|t| match t.get() {
        0 => {
            let i = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
            t.set(i);
            i
        }
        i => i,
    })
}

impl StreamHandle {
    /// The legacy default stream (`NULL`).
    pub const DEFAULT: StreamHandle = StreamHandle(0);

    /// The host, for the pinned pool: memory the CPU uses is in use until the
    /// events of every stream it was used on complete.
    pub const HOST: StreamHandle = StreamHandle(usize::MAX);

    /// The handle of a raw stream (for example a `cudaStream_t` from
    /// PyTorch): `CU_STREAM_LEGACY` is the legacy stream, and
    /// `CU_STREAM_PER_THREAD` the calling thread's own default stream.
    #[inline]
    pub fn from_raw(stream: sys::CUstream) -> StreamHandle {
        match stream as usize {
            RAW_LEGACY => StreamHandle::DEFAULT,
            RAW_PER_THREAD => StreamHandle::per_thread(),
            raw => StreamHandle(raw),
        }
    }

    /// The calling thread's per-thread default stream.
    pub fn per_thread() -> StreamHandle {
        StreamHandle(PER_THREAD_TAG | (thread_index() << 1))
    }

    /// The handle of a cudarc stream.
    #[inline]
    pub fn of(stream: &Arc<CudaStream>) -> StreamHandle {
        StreamHandle::from_raw(stream.cu_stream())
    }

    /// Whether this is some thread's per-thread default stream.
    #[inline]
    pub fn is_per_thread(self) -> bool {
        self != StreamHandle::HOST && self.0 & PER_THREAD_TAG != 0
    }

    /// Whether the driver can be handed this stream on the calling thread:
    /// every stream but another thread's per-thread default stream.
    pub fn usable_here(self) -> bool {
        !self.is_per_thread() || self == StreamHandle::per_thread()
    }

    /// The raw stream. A per-thread key becomes `CU_STREAM_PER_THREAD`,
    /// which names the calling thread's stream: check
    /// [`usable_here`](Self::usable_here) first.
    #[inline]
    pub fn as_raw(self) -> sys::CUstream {
        if self.is_per_thread() {
            RAW_PER_THREAD as sys::CUstream
        } else {
            self.0 as sys::CUstream
        }
    }
}

impl core::fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            StreamHandle::DEFAULT => f.write_str("default"),
            StreamHandle::HOST => f.write_str("host"),
            s if s.is_per_thread() => write!(f, "per-thread({})", (s.0 & !PER_THREAD_TAG) >> 1),
            StreamHandle(s) => write!(f, "{s:#x}"),
        }
    }
}

/// Streams a backend tracks; more are noted only as "overflowed".
pub const MAX_KNOWN_STREAMS: usize = 64;

/// The streams a backend has seen (allocated on, recorded on), without a
/// lock: a fixed array filled once per stream. Looking a stream up scans
/// the filled prefix (a few entries in practice).
///
/// Keeps [`CudaInvariant::K1`] (the slots fill in order).
pub struct KnownStreams {
    slots: [AtomicUsize; MAX_KNOWN_STREAMS],
    overflowed: AtomicBool,
}

/// The stored value of the legacy stream ([`CudaInvariant::K1`]).
const LEGACY_SLOT: usize = usize::MAX - 1;

impl Default for KnownStreams {
    fn default() -> Self {
        KnownStreams {
            slots: [const { AtomicUsize::new(0) }; MAX_KNOWN_STREAMS],
            overflowed: AtomicBool::new(false),
        }
    }
}

impl KnownStreams {
    fn encode(s: StreamHandle) -> usize {
        if s == StreamHandle::DEFAULT {
            LEGACY_SLOT
        } else {
            s.0
        }
    }

    /// Notes `s`; returns `true` when it was not known before.
    #[inline]
    pub fn note(&self, s: StreamHandle) -> bool {
        let v = KnownStreams::encode(s);
        for slot in &self.slots {
            match slot.load(Ordering::Acquire) {
                0 => match slot.compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return true,
                    Err(now) if now == v => return false,
                    Err(_) => continue,
                },
                now if now == v => return false,
                _ => {}
            }
        }
        !self.overflowed.swap(true, Ordering::Relaxed)
    }

    /// The streams noted so far.
    pub fn list(&self) -> Vec<StreamHandle> {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .take_while(|&v| v != 0)
            .map(|v| {
                if v == LEGACY_SLOT {
                    StreamHandle::DEFAULT
                } else {
                    StreamHandle(v)
                }
            })
            .collect()
    }

    /// Whether more streams were seen than fit.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

impl core::fmt::Debug for KnownStreams {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.list()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_handles_map_to_the_legacy_stream_and_per_thread_keys() {
        let legacy = StreamHandle::from_raw(RAW_LEGACY as sys::CUstream);
        assert_eq!(legacy, StreamHandle::DEFAULT);
        let mine = StreamHandle::from_raw(RAW_PER_THREAD as sys::CUstream);
        assert!(mine.is_per_thread() && mine.usable_here());
        assert_eq!(mine.as_raw() as usize, RAW_PER_THREAD);
        let theirs = std::thread::spawn(StreamHandle::per_thread)
            .join()
            .expect("thread");
        assert_ne!(mine, theirs, "each thread's per-thread stream is its own");
        assert!(!theirs.usable_here());
        assert!(!StreamHandle::HOST.is_per_thread());
        assert!(!StreamHandle(0x7f00_1234_5670).is_per_thread());
    }

    #[test]
    fn known_streams_note_each_once() {
        let k = KnownStreams::default();
        assert!(k.note(StreamHandle::DEFAULT));
        assert!(k.note(StreamHandle(0x1000)));
        assert!(!k.note(StreamHandle::DEFAULT));
        assert!(!k.note(StreamHandle(0x1000)));
        assert_eq!(k.list(), vec![StreamHandle::DEFAULT, StreamHandle(0x1000)]);
        for i in 0..MAX_KNOWN_STREAMS {
            k.note(StreamHandle(0x2000 + 16 * i));
        }
        assert!(k.overflowed());
    }
}
