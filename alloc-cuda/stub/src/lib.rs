//! Test support for alloc-cuda: a stub driver (`libcuda_stub.c`, compiled by
//! this crate's build script, so tests need no C compiler at run time) and
//! the functions that control it.
//!
//! cudarc opens the driver as `dlopen("libcuda.so")`. The stub is built with
//! that soname and opened first by its full path (`RTLD_GLOBAL`), so the
//! dynamic loader answers cudarc's `dlopen` with the stub already loaded:
//! every driver call of the process goes to the stub. Each test binary is its
//! own process, so binaries that load the stub never mix with those that test
//! a real device or a missing one.
//!
//! What the stub models and rejects is described at the top of
//! `libcuda_stub.c`: stream handles (legacy, per-thread, destroyed), queued
//! work per stream, stream capture, allocation properties and access
//! descriptors.

use std::ffi::{CString, c_char, c_int, c_long, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The stub with the virtual-memory functions (empty off Linux).
pub const LIBCUDA_VM: &str = env!("STUB_LIBCUDA_VM");
/// The stub without them, a driver older than CUDA 10.2 (empty off Linux).
pub const LIBCUDA_NO_VM: &str = env!("STUB_LIBCUDA_NO_VM");

/// The stub's state is process-wide: tests that use it take this lock.
static SERIAL: Mutex<()> = Mutex::new(());

/// `CUDA_ERROR_INVALID_VALUE`.
pub const INVALID_VALUE: c_int = 1;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub const OOM: c_int = 2;

/// A raw stream handle as the driver takes it (`0`: legacy default stream,
/// `0x1`: `CU_STREAM_LEGACY`, `0x2`: `CU_STREAM_PER_THREAD`).
pub type RawStream = usize;

/// The loaded stub and its control functions.
pub struct Stub {
    handle: usize,
}

/// Loads the stub (`no_vm`: without the virtual-memory symbols) once per
/// process, resets it to one healthy device of 4 GiB with no work queued,
/// and returns it with the test lock held.
///
/// # Panics
/// If the library cannot be loaded, or a different variant was loaded
/// before in this process.
pub fn stub(no_vm: bool) -> (&'static Stub, MutexGuard<'static, ()>) {
    static STUB: OnceLock<(Stub, bool)> = OnceLock::new();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (stub, loaded_no_vm) = STUB.get_or_init(|| {
        let path = if no_vm { LIBCUDA_NO_VM } else { LIBCUDA_VM };
        assert!(
            !path.is_empty(),
            "the stub driver is built for Linux targets only"
        );
        let c = CString::new(path).expect("no NUL in the stub's path");
        // SAFETY: loading the stub runs no initialisers beyond libc's.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        assert!(!handle.is_null(), "dlopen {path} failed");
        (
            Stub {
                handle: handle as usize,
            },
            no_vm,
        )
    });
    assert_eq!(*loaded_no_vm, no_vm, "one stub variant per process");
    stub.reset();
    (stub, guard)
}

impl Stub {
    fn sym<F: Copy>(&self, name: &str) -> F {
        let c = CString::new(name).expect("no NUL");
        // SAFETY: `handle` is the stub's live handle (never closed).
        let p = unsafe { libc::dlsym(self.handle as *mut c_void, c.as_ptr()) };
        assert!(!p.is_null(), "stub lacks {name}");
        assert_eq!(
            core::mem::size_of::<F>(),
            core::mem::size_of::<*mut c_void>()
        );
        // SAFETY: `F` is the fn-pointer type of the stub's `name` (by the
        // signatures in libcuda_stub.c), the same size as a data pointer.
        unsafe { core::mem::transmute_copy::<*mut c_void, F>(&p) }
    }

    /// Back to one device of 4 GiB, peers capable, with no pending failures
    /// or work.
    pub fn reset(&self) {
        self.set_capacity(4 << 30);
        self.set_devices(1);
        self.complete_all();
    }

    /// The nth next call of `name` fails with `code`.
    pub fn fail(&self, name: &str, nth: i64, code: c_int) {
        let c = CString::new(name).expect("no NUL");
        let f: unsafe extern "C" fn(*const c_char, c_long, c_int) = self.sym("stub_fail");
        // SAFETY: a valid C string for the call.
        unsafe { f(c.as_ptr(), nth as c_long, code) }
    }

    /// Calls of `name` so far.
    pub fn calls(&self, name: &str) -> c_long {
        let c = CString::new(name).expect("no NUL");
        let f: unsafe extern "C" fn(*const c_char) -> c_long = self.sym("stub_calls");
        // SAFETY: a valid C string for the call.
        unsafe { f(c.as_ptr()) }
    }

    /// Sets the capacity the devices share.
    pub fn set_capacity(&self, bytes: usize) {
        let f: unsafe extern "C" fn(usize) = self.sym("stub_set_capacity");
        // SAFETY: plain value argument.
        unsafe { f(bytes) }
    }

    /// Sets the number of devices (1 to 4).
    pub fn set_devices(&self, n: i32) {
        let f: unsafe extern "C" fn(c_int) = self.sym("stub_set_devices");
        // SAFETY: plain value argument.
        unsafe { f(n) }
    }

    /// Whether device `dev` can access memory of device `peer`.
    pub fn set_peer(&self, dev: i32, peer: i32, can: bool) {
        let f: unsafe extern "C" fn(c_int, c_int, c_int) = self.sym("stub_set_peer");
        // SAFETY: plain value arguments.
        unsafe { f(dev, peer, c_int::from(can)) }
    }

    /// Device bytes allocated or backing pages.
    pub fn used(&self) -> usize {
        let f: unsafe extern "C" fn() -> usize = self.sym("stub_used");
        // SAFETY: no arguments.
        unsafe { f() }
    }

    /// Calls the driver would reject (bad handles, ranges, properties,
    /// descriptors, calls illegal during capture, uses after release).
    pub fn violations(&self) -> c_long {
        let f: unsafe extern "C" fn() -> c_long = self.sym("stub_violations");
        // SAFETY: no arguments.
        unsafe { f() }
    }

    /// Frees and unmaps of memory that queued work may still use.
    pub fn unsafe_releases(&self) -> c_long {
        let f: unsafe extern "C" fn() -> c_long = self.sym("stub_unsafe_releases");
        // SAFETY: no arguments.
        unsafe { f() }
    }

    /// Synchronising calls that had to wait for queued work.
    pub fn stalls(&self) -> c_long {
        let f: unsafe extern "C" fn() -> c_long = self.sym("stub_stalls");
        // SAFETY: no arguments.
        unsafe { f() }
    }

    /// The devices (bit d) that may read and write the page at `addr`.
    pub fn access(&self, addr: usize) -> u32 {
        let f: unsafe extern "C" fn(usize) -> u32 = self.sym("stub_access");
        // SAFETY: plain value argument; the stub only compares it.
        unsafe { f(addr) }
    }

    /// Queues work on `stream` that may use any memory.
    pub fn launch(&self, stream: RawStream) {
        let f: unsafe extern "C" fn(*mut c_void) = self.sym("stub_launch");
        // SAFETY: the stub only looks the handle up.
        unsafe { f(stream as *mut c_void) }
    }

    /// Queues work on `stream` that uses `[addr, addr + bytes)`.
    pub fn launch_on(&self, stream: RawStream, addr: usize, bytes: usize) {
        let f: unsafe extern "C" fn(*mut c_void, usize, usize) = self.sym("stub_launch_on");
        // SAFETY: the stub only looks the handle up and compares the range.
        unsafe { f(stream as *mut c_void, addr, bytes) }
    }

    /// Finishes a stream's work.
    pub fn complete(&self, stream: RawStream) {
        let f: unsafe extern "C" fn(*mut c_void) = self.sym("stub_complete");
        // SAFETY: the stub only looks the handle up.
        unsafe { f(stream as *mut c_void) }
    }

    /// Whether `stream` has unfinished work.
    pub fn busy(&self, stream: RawStream) -> bool {
        let f: unsafe extern "C" fn(*mut c_void) -> c_int = self.sym("stub_busy");
        // SAFETY: the stub only looks the handle up.
        unsafe { f(stream as *mut c_void) != 0 }
    }

    /// Finishes every stream's work.
    pub fn complete_all(&self) {
        let f: unsafe extern "C" fn() = self.sym("stub_complete_all");
        // SAFETY: no arguments.
        unsafe { f() }
    }
}
