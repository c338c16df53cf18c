//! The stub driver for tests: compiles `tests/stub/libcuda_stub.c` into a
//! `libcuda.so` and loads it before cudarc looks for the driver.
//!
//! cudarc opens the driver as `dlopen("libcuda.so")`. The stub is built with
//! that soname and opened first by its full path (`RTLD_GLOBAL`), so the
//! dynamic loader answers cudarc's `dlopen` with the stub already loaded:
//! every driver call of this process goes to the stub. Each test binary is
//! its own process, so binaries that load the stub never mix with those
//! that test a real device or a missing one.

#![allow(dead_code)]

use std::ffi::{CString, c_char, c_int, c_long, c_void};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The stub's state is process-wide: tests that use it take this lock.
static SERIAL: Mutex<()> = Mutex::new(());

/// CUDA_ERROR_OUT_OF_MEMORY.
pub const OOM: c_int = 2;
/// CUDA_ERROR_INVALID_VALUE.
pub const INVALID_VALUE: c_int = 1;

/// Handles to the stub's control functions.
pub struct Stub {
    handle: usize,
}

fn build(variant: &str, defines: &[&str]) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/stub/libcuda_stub.c");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("stub-{variant}"));
    std::fs::create_dir_all(&dir).expect("create the stub's directory");
    let out = dir.join("libcuda.so");
    let tmp = dir.join(format!("libcuda.so.{}", std::process::id()));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so", "-o"])
        .arg(&tmp)
        .args(defines)
        .arg(&src)
        .arg("-lpthread")
        .status()
        .expect("run the C compiler (set CC to one) to build the stub driver");
    assert!(
        status.success(),
        "compiling {} failed: {status}",
        src.display()
    );
    std::fs::rename(&tmp, &out).expect("move the stub into place");
    out
}

/// Builds and loads the stub (`no_vm`: without the virtual-memory symbols)
/// once per process; returns it with the test lock held.
pub fn stub(no_vm: bool) -> (&'static Stub, MutexGuard<'static, ()>) {
    static STUB: OnceLock<Stub> = OnceLock::new();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stub = STUB.get_or_init(|| {
        let path = if no_vm {
            build("no-vm", &["-DSTUB_NO_VM"])
        } else {
            build("vm", &[])
        };
        let c = CString::new(path.to_str().expect("utf-8 path")).expect("no NUL");
        // SAFETY: loading the stub runs no initialisers beyond libc's.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        assert!(!handle.is_null(), "dlopen {} failed", path.display());
        Stub {
            handle: handle as usize,
        }
    });
    assert!(
        alloc_cuda::cuda_available(),
        "cudarc does not see the stub driver"
    );
    stub.reset();
    (stub, guard)
}

impl Stub {
    fn sym<F: Copy>(&self, name: &str) -> F {
        let c = CString::new(name).expect("no NUL");
        // SAFETY: `handle` is the stub's live handle.
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

    /// Back to a fresh device of 4 GiB with no pending failures or work.
    pub fn reset(&self) {
        self.set_capacity(4 << 30);
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

    /// Sets the device's capacity.
    pub fn set_capacity(&self, bytes: usize) {
        let f: unsafe extern "C" fn(usize) = self.sym("stub_set_capacity");
        // SAFETY: plain value argument.
        unsafe { f(bytes) }
    }

    /// Device bytes allocated or backing mapped pages.
    pub fn used(&self) -> usize {
        let f: unsafe extern "C" fn() -> usize = self.sym("stub_used");
        // SAFETY: no arguments.
        unsafe { f() }
    }

    /// `cuMemUnmap` calls made while a stream had unfinished work.
    pub fn unsynced_unmaps(&self) -> c_long {
        let f: unsafe extern "C" fn() -> c_long = self.sym("stub_unsynced_unmaps");
        // SAFETY: no arguments.
        unsafe { f() }
    }

    /// Calls naming ranges, handles or pointers the driver would reject.
    pub fn violations(&self) -> c_long {
        let f: unsafe extern "C" fn() -> c_long = self.sym("stub_violations");
        // SAFETY: no arguments.
        unsafe { f() }
    }

    /// Queues unfinished work on a stream.
    pub fn launch(&self, stream: alloc_cuda::StreamHandle) {
        let f: unsafe extern "C" fn(*mut c_void) = self.sym("stub_launch");
        // SAFETY: the stub only uses the handle as a key.
        unsafe { f(stream.0 as *mut c_void) }
    }

    /// Finishes a stream's work.
    pub fn complete(&self, stream: alloc_cuda::StreamHandle) {
        let f: unsafe extern "C" fn(*mut c_void) = self.sym("stub_complete");
        // SAFETY: the stub only uses the handle as a key.
        unsafe { f(stream.0 as *mut c_void) }
    }

    /// Finishes every stream's work.
    pub fn complete_all(&self) {
        let f: unsafe extern "C" fn() = self.sym("stub_complete_all");
        // SAFETY: no arguments.
        unsafe { f() }
    }
}
