//! Access to the driver library: the probe that keeps cudarc from panicking
//! when libcuda is missing, the optional-symbol check for virtual memory, and
//! conversions of driver results.
//!
//! cudarc (with `dynamic-loading`) resolves each driver symbol on first use
//! and panics when the library or the symbol is missing. Every entry point of
//! this crate calls [`cuda_available`] first, and the virtual-memory calls are
//! made only after `has_symbols` found all of them.

use cudarc::driver::{DriverError, sys};

use alloc_core::BackendError;

/// The virtual-memory functions expandable segments need; drivers before
/// CUDA 10.2 lack them.
pub(crate) const VM_SYMBOLS: [&str; 8] = [
    "cuMemGetAllocationGranularity",
    "cuMemAddressReserve",
    "cuMemAddressFree",
    "cuMemCreate",
    "cuMemRelease",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemSetAccess",
];

/// Whether a CUDA driver library can be loaded (never panics).
pub fn cuda_available() -> bool {
    // SAFETY: `is_culib_present` only tries to dlopen the candidate names;
    // loading the driver library runs no code of ours.
    unsafe { sys::is_culib_present() }
}

/// The capture functions ([`RelaxedCapture`], [`capturing`]); drivers
/// before CUDA 10.1 lack them, and then nothing can be capturing.
const CAPTURE_SYMBOLS: [&str; 2] = ["cuThreadExchangeStreamCaptureMode", "cuStreamIsCapturing"];

/// Whether the driver has the capture functions (looked up once).
fn has_capture() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| cuda_available() && has_symbols(&CAPTURE_SYMBOLS))
}

/// Whether `stream` is capturing a CUDA graph. A stream that cannot be
/// asked because a capture is under way (the legacy stream while a blocking
/// stream captures: `CUDA_ERROR_STREAM_CAPTURE_IMPLICIT`), or whose capture
/// was invalidated, counts as capturing; other errors are returned.
pub(crate) fn capturing(stream: sys::CUstream) -> Result<bool, DriverError> {
    if !has_capture() {
        return Ok(false);
    }
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: the symbol exists (has_capture); `status` is a valid
    // out-pointer; `stream` is a handle the caller may use on this thread.
    match unsafe { sys::cuStreamIsCapturing(stream, &mut status) } {
        sys::CUresult::CUDA_SUCCESS => {
            Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
        }
        sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_IMPLICIT => Ok(true),
        r => check(r).map(|()| false),
    }
}

/// Relaxed stream-capture mode on this thread for the guard's life: while
/// another stream captures a graph in global mode, allocating and mapping
/// memory (which does not enter any stream's order) stays legal, as
/// PyTorch's allocator does around `cudaMalloc`.
pub(crate) struct RelaxedCapture {
    prev: Option<sys::CUstreamCaptureMode>,
}

impl RelaxedCapture {
    /// Sets the thread's capture mode to relaxed (a no-op without the
    /// capture functions).
    pub(crate) fn enter() -> RelaxedCapture {
        if !has_capture() {
            return RelaxedCapture { prev: None };
        }
        let mut mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: the symbol exists (has_capture); `mode` is a valid in-out
        // pointer.
        let r = unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) };
        RelaxedCapture {
            prev: check(r).ok().map(|()| mode),
        }
    }
}

impl Drop for RelaxedCapture {
    fn drop(&mut self) {
        if let Some(mut mode) = self.prev {
            // SAFETY: as in `enter`; restores the mode `enter` replaced.
            let _ = unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) };
        }
    }
}

/// Whether the loaded driver exports every one of `names`.
///
/// Call only after [`cuda_available`] returned `true`.
pub(crate) fn has_symbols(names: &[&str]) -> bool {
    names.iter().all(|name| {
        // SAFETY: the caller checked `cuda_available`, so `culib` finds the
        // library instead of panicking; the symbol is looked up, not called,
        // so its type is irrelevant.
        unsafe {
            sys::culib()
                .get::<unsafe extern "C" fn()>(name.as_bytes())
                .is_ok()
        }
    })
}

/// The driver's description of `err`.
pub(crate) fn error_text(err: DriverError) -> String {
    match err.error_string() {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => "no description".to_string(),
    }
}

/// `Ok` for `CUDA_SUCCESS`, the error otherwise.
#[inline]
pub(crate) fn check(r: sys::CUresult) -> Result<(), DriverError> {
    r.result()
}

/// A backend error for a failed driver call: out of memory enters the
/// engine's reclaim ladder, every other code is reported with its name.
#[cold]
pub(crate) fn backend_error(call: &str, err: DriverError) -> BackendError {
    match err.0 {
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => BackendError::OutOfMemory,
        code => BackendError::Other(format!("{call} failed with {code:?} ({})", error_text(err))),
    }
}

/// Makes a context current on this thread for the guard's life and restores
/// the thread's previous context on drop, so calls from code that manages
/// its own current device (PyTorch through the C ABI) find it unchanged.
pub(crate) struct CurrentContext {
    prev: Option<sys::CUcontext>,
}

impl CurrentContext {
    /// Makes `ctx` current (a no-op when it already is).
    pub(crate) fn enter(ctx: sys::CUcontext) -> Result<CurrentContext, BackendError> {
        let mut cur: sys::CUcontext = core::ptr::null_mut();
        // SAFETY: `cur` is a valid out-pointer.
        check(unsafe { sys::cuCtxGetCurrent(&mut cur) })
            .map_err(|e| backend_error("cuCtxGetCurrent", e))?;
        if cur == ctx {
            return Ok(CurrentContext { prev: None });
        }
        // SAFETY: `ctx` is a live context (the caller holds its owner).
        check(unsafe { sys::cuCtxSetCurrent(ctx) })
            .map_err(|e| backend_error("cuCtxSetCurrent", e))?;
        Ok(CurrentContext { prev: Some(cur) })
    }

    /// A guard that restores the thread's current context (possibly none) on
    /// drop, around calls that change it without restoring (cudarc's).
    pub(crate) fn save() -> CurrentContext {
        let mut cur: sys::CUcontext = core::ptr::null_mut();
        // SAFETY: `cur` is a valid out-pointer.
        match check(unsafe { sys::cuCtxGetCurrent(&mut cur) }) {
            Ok(()) => CurrentContext { prev: Some(cur) },
            Err(_) => CurrentContext { prev: None },
        }
    }

    /// Waits until every stream of the current context is idle.
    pub(crate) fn synchronize(&self) -> bool {
        // SAFETY: a context is current (this guard).
        check(unsafe { sys::cuCtxSynchronize() }).is_ok()
    }
}

impl Drop for CurrentContext {
    fn drop(&mut self) {
        if let Some(prev) = self.prev {
            // SAFETY: `prev` was current on this thread when the guard was
            // made (possibly null: no context), so it is still valid to
            // restore.
            let _ = unsafe { sys::cuCtxSetCurrent(prev) };
        }
    }
}
