//! The C ABI of alloc-cuda as a shared library (`liballoc_cuda_capi.so`),
//! for PyTorch's `CUDAPluggableAllocator` and any C caller:
//!
//! ```c
//! void*  alloc_cuda_malloc(ssize_t size, int device, cudaStream_t stream);
//! void   alloc_cuda_free(void* ptr, ssize_t size, int device, cudaStream_t stream);
//! size_t alloc_cuda_stats_json(int device, char* buf, size_t cap);
//! size_t alloc_cuda_snapshot_json(int device, char* buf, size_t cap);
//! void   alloc_cuda_record_stream(void* ptr, cudaStream_t stream);
//! void   alloc_cuda_empty_cache(int device);
//! void   alloc_cuda_reset_peak(int device);
//! size_t alloc_cuda_last_error(char* buf, size_t cap);
//! void   alloc_cuda_set_abort_on_failure(int abort);
//! ```
//!
//! Each device uses its process-wide [`CudaAllocator`]. Live buffers are
//! kept in a table keyed by address until `alloc_cuda_free`. A free on a
//! stream other than the allocation stream records that stream, so the block
//! is reused only after the work queued there completes. The special stream
//! handles are understood: `0x1` is the legacy default stream and `0x2` the
//! calling thread's own per-thread default stream. A stream handed to these
//! functions must stay alive while the allocator may use it: cached blocks
//! stay keyed by it, and the allocator records events on it later
//! (PyTorch's streams qualify: they come from pools that are never
//! destroyed).
//!
//! Nothing here unwinds into C. A failed allocation (a negative size, an
//! unknown device, out of memory) leaves its message for
//! `alloc_cuda_last_error` and then, by default, prints it and aborts the
//! process: PyTorch's `CUDAPluggableAllocator` does not check the pointer it
//! gets, and a `NULL` becomes a tensor at address 0 whose first kernel
//! faults the device. A C caller that checks for `NULL` calls
//! `alloc_cuda_set_abort_on_failure(0)` first.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use alloc_core::DeviceBuffer;
use alloc_cuda::{CudaAllocator, CudaBackend, CudaError, StreamHandle};

type Live = HashMap<usize, DeviceBuffer<'static, CudaBackend>>;

static LIVE: Mutex<Option<Live>> = Mutex::new(None);
static LAST_ERROR: Mutex<String> = Mutex::new(String::new());
static ABORT_ON_FAILURE: AtomicBool = AtomicBool::new(true);

fn live() -> MutexGuard<'static, Option<Live>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

#[cold]
fn set_error(msg: String) {
    *LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = msg;
}

fn allocator(device: c_int) -> Result<&'static CudaAllocator, CudaError> {
    let ordinal = usize::try_from(device).map_err(|_| CudaError::NoDevice {
        device: usize::MAX,
        count: 0,
    })?;
    CudaAllocator::global(ordinal)
}

/// Copies `text` and a NUL into `buf` when it fits; returns the bytes the
/// text needs, without the NUL.
///
/// # Safety
/// `buf` is null or valid for `cap` bytes of writes.
unsafe fn write_text(text: &str, buf: *mut c_char, cap: usize) -> usize {
    if !buf.is_null() && text.len() < cap {
        // SAFETY: `buf` holds `cap > text.len()` bytes (caller's contract).
        unsafe {
            core::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            *buf.add(text.len()) = 0;
        }
    }
    text.len()
}

/// Why an allocation was refused before reaching the allocator.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// A negative size (a caller's arithmetic error, never a request).
    #[error("alloc_cuda_malloc({size}, device {device}): negative size; nothing allocated")]
    NegativeSize { size: isize, device: c_int },
    /// The allocator failed.
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

/// Whether a failed [`alloc_cuda_malloc`] aborts the process (`abort != 0`,
/// the default) or returns `NULL` (see the crate docs for why aborting is
/// the default).
#[unsafe(no_mangle)]
pub extern "C" fn alloc_cuda_set_abort_on_failure(abort: c_int) {
    ABORT_ON_FAILURE.store(abort != 0, Ordering::Relaxed);
}

/// Allocates `size` bytes on `device` for `stream`. On failure the message
/// is kept for [`alloc_cuda_last_error`]; then the process aborts, or `NULL`
/// is returned after [`alloc_cuda_set_abort_on_failure(0)`](alloc_cuda_set_abort_on_failure).
/// A size of 0 gives a valid pointer to a 0-byte block.
#[unsafe(no_mangle)]
pub extern "C" fn alloc_cuda_malloc(
    size: isize,
    device: c_int,
    stream: *mut c_void,
) -> *mut c_void {
    let run = || -> Result<*mut c_void, Refused> {
        let bytes = usize::try_from(size).map_err(|_| Refused::NegativeSize { size, device })?;
        let a = allocator(device)?;
        let s = StreamHandle::from_raw(stream.cast());
        a.engine().backend().note_stream(s);
        let buf = a.engine().allocate(bytes, s).map_err(CudaError::from)?;
        let ptr = buf.ptr().0;
        live().get_or_insert_with(HashMap::new).insert(ptr, buf);
        Ok(ptr as *mut c_void)
    };
    let msg = match std::panic::catch_unwind(run) {
        Ok(Ok(p)) => return p,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("alloc_cuda_malloc({size}, {device}) panicked"),
    };
    failed(msg)
}

/// Records a failed allocation, then aborts or returns `NULL`.
#[cold]
fn failed(msg: String) -> *mut c_void {
    set_error(msg.clone());
    if ABORT_ON_FAILURE.load(Ordering::Relaxed) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "alloc_cuda: allocation failed: {msg}\nalloc_cuda: aborting: the caller cannot take a NULL (alloc_cuda_set_abort_on_failure(0) makes it NULL)"
        );
        std::process::abort();
    }
    core::ptr::null_mut()
}

/// Returns `ptr` (from [`alloc_cuda_malloc`]) to the cache. Unknown pointers
/// are ignored (and noted for [`alloc_cuda_last_error`]).
#[unsafe(no_mangle)]
pub extern "C" fn alloc_cuda_free(
    ptr: *mut c_void,
    size: isize,
    device: c_int,
    stream: *mut c_void,
) {
    let run = || {
        let buf = live().as_mut().and_then(|m| m.remove(&(ptr as usize)));
        match buf {
            Some(buf) => {
                let s = StreamHandle::from_raw(stream.cast());
                if s != buf.stream() {
                    buf.record_stream(s);
                }
                drop(buf);
            }
            None => set_error(format!(
                "alloc_cuda_free({ptr:p}, {size}, {device}): not a live allocation of this allocator"
            )),
        }
    };
    if std::panic::catch_unwind(run).is_err() {
        set_error(format!("alloc_cuda_free({ptr:p}) panicked"));
    }
}

/// Marks `ptr` (live, from [`alloc_cuda_malloc`]) as used on `stream`: after
/// its free, it is reused only once the work queued there completes.
#[unsafe(no_mangle)]
pub extern "C" fn alloc_cuda_record_stream(ptr: *mut c_void, stream: *mut c_void) {
    let run = || {
        let map = live();
        match map.as_ref().and_then(|m| m.get(&(ptr as usize))) {
            Some(buf) => buf.record_stream(StreamHandle::from_raw(stream.cast())),
            None => set_error(format!(
                "alloc_cuda_record_stream({ptr:p}): not a live allocation of this allocator"
            )),
        }
    };
    if std::panic::catch_unwind(run).is_err() {
        set_error(format!("alloc_cuda_record_stream({ptr:p}) panicked"));
    }
}

fn with_allocator(device: c_int, f: impl FnOnce(&CudaAllocator) -> String) -> Option<String> {
    // The engine recovers its state after a panic (poisoned locks are taken
    // over), so observing it after one is sound.
    match std::panic::catch_unwind(AssertUnwindSafe(|| allocator(device).map(f))) {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            set_error(e.to_string());
            None
        }
        Err(_) => None,
    }
}

/// Writes the statistics of `device` as JSON (`torch.cuda.memory_stats()`
/// keys) into `buf` when they fit in `cap` bytes with the NUL; returns their
/// length (`0` when the device's allocator could not be created).
///
/// # Safety
/// `buf` is null or valid for `cap` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alloc_cuda_stats_json(
    device: c_int,
    buf: *mut c_char,
    cap: usize,
) -> usize {
    let text = with_allocator(device, |a| {
        serde_json::to_string(&a.stats().to_map()).unwrap_or_default()
    });
    // SAFETY: forwarded from the caller.
    text.map_or(0, |t| unsafe { write_text(&t, buf, cap) })
}

/// Writes the snapshot of `device` (segments and blocks) as JSON, as
/// [`alloc_cuda_stats_json`].
///
/// # Safety
/// `buf` is null or valid for `cap` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alloc_cuda_snapshot_json(
    device: c_int,
    buf: *mut c_char,
    cap: usize,
) -> usize {
    let text = with_allocator(device, |a| a.snapshot().to_json());
    // SAFETY: forwarded from the caller.
    text.map_or(0, |t| unsafe { write_text(&t, buf, cap) })
}

/// Releases every fully free cached segment of `device`.
#[unsafe(no_mangle)]
pub extern "C" fn alloc_cuda_empty_cache(device: c_int) {
    with_allocator(device, |a| {
        a.empty_cache();
        String::new()
    });
}

/// Sets every peak statistic of `device` to its current value.
#[unsafe(no_mangle)]
pub extern "C" fn alloc_cuda_reset_peak(device: c_int) {
    with_allocator(device, |a| {
        a.reset_peak();
        String::new()
    });
}

/// Writes the message of the last failure into `buf` as
/// [`alloc_cuda_stats_json`]; returns its length (`0`: none).
///
/// # Safety
/// `buf` is null or valid for `cap` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alloc_cuda_last_error(buf: *mut c_char, cap: usize) -> usize {
    let text = LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // SAFETY: forwarded from the caller.
    unsafe { write_text(&text, buf, cap) }
}
