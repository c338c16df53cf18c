//! The C ABI for PyTorch's `CUDAPluggableAllocator` (the cdylib):
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
//! ```
//!
//! Each device uses its process-wide [`CudaAllocator`]. Live buffers are
//! kept in a table keyed by address until `alloc_cuda_free`. A free on a
//! stream other than the allocation stream records that stream, so the block
//! is reused only after the work queued there completes. Nothing here
//! unwinds into C: a failed allocation returns `NULL` and leaves its message
//! for `alloc_cuda_last_error`.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, MutexGuard};

use alloc_core::DeviceBuffer;

use crate::allocator::CudaAllocator;
use crate::backend::CudaBackend;
use crate::error::CudaError;
use crate::stream::StreamHandle;

type Live = HashMap<usize, DeviceBuffer<'static, CudaBackend>>;

static LIVE: Mutex<Option<Live>> = Mutex::new(None);
static LAST_ERROR: Mutex<String> = Mutex::new(String::new());

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

/// Allocates `size` bytes on `device` for `stream`; `NULL` on failure (see
/// [`alloc_cuda_last_error`]).
#[unsafe(no_mangle)]
pub extern "C" fn alloc_cuda_malloc(
    size: isize,
    device: c_int,
    stream: *mut c_void,
) -> *mut c_void {
    let run = || -> Result<*mut c_void, CudaError> {
        let a = allocator(device)?;
        let bytes = usize::try_from(size).unwrap_or(0);
        let buf = a.engine().allocate(bytes, StreamHandle(stream as usize))?;
        let ptr = buf.ptr().0;
        live().get_or_insert_with(HashMap::new).insert(ptr, buf);
        Ok(ptr as *mut c_void)
    };
    match std::panic::catch_unwind(run) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            set_error(e.to_string());
            core::ptr::null_mut()
        }
        Err(_) => {
            set_error(format!("alloc_cuda_malloc({size}, {device}) panicked"));
            core::ptr::null_mut()
        }
    }
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
                let s = StreamHandle(stream as usize);
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
            Some(buf) => buf.record_stream(StreamHandle(stream as usize)),
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
