//! The C ABI on the stub driver (alloc-cuda-stub): allocation, frees on other
//! streams, statistics, errors, and the special stream handles.

use std::ffi::{CStr, c_char, c_void};

use alloc_cuda::{CudaAllocator, StreamHandle};
use alloc_cuda_capi::*;
use alloc_cuda_stub::stub;

fn last_error() -> String {
    let mut buf = vec![0 as c_char; 4096];
    // SAFETY: `buf` holds `buf.len()` bytes.
    let n = unsafe { alloc_cuda_last_error(buf.as_mut_ptr(), buf.len()) };
    assert!(n < buf.len());
    // SAFETY: the call wrote a NUL-terminated message.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn stats() -> std::collections::BTreeMap<String, i64> {
    let mut buf = vec![0 as c_char; 1 << 16];
    // SAFETY: `buf` holds `buf.len()` bytes.
    let n = unsafe { alloc_cuda_stats_json(0, buf.as_mut_ptr(), buf.len()) };
    assert!(n > 0 && n < buf.len());
    // SAFETY: the call wrote `n` bytes and a NUL.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .expect("utf-8");
    serde_json::from_str(text).expect("JSON")
}

#[test]
fn allocates_frees_and_reports() {
    let (stub, _g) = stub(false);
    alloc_cuda_set_abort_on_failure(0);
    let p = alloc_cuda_malloc(3 << 20, 0, core::ptr::null_mut());
    assert!(!p.is_null());
    let q = alloc_cuda_malloc(1000, 0, core::ptr::null_mut());
    assert!(!q.is_null() && q != p);
    assert_eq!(stats()["allocation.all.current"], 2);
    alloc_cuda_free(p, 3 << 20, 0, core::ptr::null_mut());
    alloc_cuda_free(q, 1000, 0, core::ptr::null_mut());
    alloc_cuda_reset_peak(0);
    alloc_cuda_empty_cache(0);
    let g = CudaAllocator::global(0).expect("global allocator");
    assert_eq!(g.stats().allocation.all.current, 0);
    assert_eq!(g.stats().reserved_bytes.all.current, 0);
    assert_eq!(g.stats().allocated_bytes.all.peak, 0);
    // too small a buffer: nothing written, the length still returned
    let mut small = [0 as c_char; 4];
    // SAFETY: `small` holds 4 bytes.
    assert!(unsafe { alloc_cuda_stats_json(0, small.as_mut_ptr(), 4) } > 4);
    assert_eq!(small[0], 0);
    // a bad device: NULL and a message
    assert!(alloc_cuda_malloc(64, 7, core::ptr::null_mut()).is_null());
    let msg = last_error();
    assert!(msg.contains("CUDA device 7 does not exist"), "{msg}");
    // a free on another stream is deferred until that stream completes
    let s2 = g.new_stream().expect("stream");
    let raw2 = s2.cu_stream() as *mut c_void;
    let p = alloc_cuda_malloc(1 << 20, 0, core::ptr::null_mut());
    stub.launch(raw2 as usize);
    alloc_cuda_free(p, 1 << 20, 0, raw2);
    let p2 = alloc_cuda_malloc(1 << 20, 0, core::ptr::null_mut());
    assert_ne!(p2, p);
    // and so is one recorded on another stream before its free
    alloc_cuda_record_stream(p2, raw2);
    alloc_cuda_free(p2, 1 << 20, 0, core::ptr::null_mut());
    let p3 = alloc_cuda_malloc(1 << 20, 0, core::ptr::null_mut());
    assert!(p3 != p && p3 != p2);
    alloc_cuda_free(p3, 1 << 20, 0, core::ptr::null_mut());
    stub.complete_all();
    alloc_cuda_empty_cache(0);
    assert_eq!(g.stats().reserved_bytes.all.current, 0);
    // A stream handed to the C ABI must outlive the allocator's use of it
    // (PyTorch's streams are never destroyed): keep it.
    std::mem::forget(s2);
}

#[test]
fn negative_sizes_are_refused() {
    let (_stub, _g) = stub(false);
    alloc_cuda_set_abort_on_failure(0);
    let before = stats()["allocation.all.allocated"];
    assert!(alloc_cuda_malloc(-5, 0, core::ptr::null_mut()).is_null());
    let msg = last_error();
    assert!(msg.contains("negative size"), "{msg}");
    assert_eq!(
        stats()["allocation.all.allocated"],
        before,
        "allocated anyway"
    );
}

#[test]
fn special_stream_handles_are_understood() {
    let (stub, _g) = stub(false);
    alloc_cuda_set_abort_on_failure(0);
    let violations = stub.violations();
    let legacy = core::ptr::without_provenance_mut::<c_void>(0x1); // CU_STREAM_LEGACY
    let per_thread = 0x2 as *mut c_void;
    // 0 and 0x1 are one stream: a block freed on one is reused on the other
    // at once, even while that stream is busy (stream order).
    let p = alloc_cuda_malloc(1 << 20, 0, core::ptr::null_mut());
    stub.launch(0);
    alloc_cuda_free(p, 1 << 20, 0, legacy);
    let q = alloc_cuda_malloc(1 << 20, 0, legacy);
    assert_eq!(q, p);
    alloc_cuda_free(q, 1 << 20, 0, core::ptr::null_mut());
    // per-thread streams: another thread's is another stream
    let r = alloc_cuda_malloc(1 << 20, 0, per_thread);
    stub.launch(0x2);
    alloc_cuda_free(r, 1 << 20, 0, per_thread);
    let r = r as usize;
    let other = std::thread::spawn(move || {
        let per_thread = 0x2 as *mut c_void;
        let t = alloc_cuda_malloc(1 << 20, 0, per_thread);
        alloc_cuda_free(t, 1 << 20, 0, per_thread);
        t as usize
    })
    .join()
    .expect("thread");
    assert_ne!(other, r, "another thread's per-thread stream got the block");
    stub.complete_all();
    alloc_cuda_empty_cache(0);
    assert_eq!(stub.violations(), violations);
    let _ = StreamHandle::DEFAULT;
}

/// The default: a failed allocation aborts with the message (the child
/// process runs this test body with `ALLOC_CUDA_CAPI_CHILD` set).
#[test]
fn a_failed_allocation_aborts_by_default() {
    if std::env::var_os("ALLOC_CUDA_CAPI_CHILD").is_some() {
        let (_stub, _g) = stub(false);
        let _ = alloc_cuda_malloc(-1, 0, core::ptr::null_mut());
        unreachable!("alloc_cuda_malloc returned");
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "a_failed_allocation_aborts_by_default",
            "--nocapture",
        ])
        .env("ALLOC_CUDA_CAPI_CHILD", "1")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(out.status.signal(), Some(6), "not SIGABRT: {stderr}");
    assert!(
        stderr.contains(
            "alloc_cuda: allocation failed: alloc_cuda_malloc(-1, device 0): negative size"
        ),
        "{stderr}"
    );
}

/// PyTorch's autograd and DataLoader threads call the allocator with no
/// current context. Allocating, a free deferred to another stream's event,
/// and that event's query once the stream completes must all work there:
/// the driver refuses event calls without a context (the stub too), and an
/// unbound query would keep the block pending for ever.
#[test]
fn a_thread_without_a_current_context_allocates_frees_and_reuses() {
    let (stub, _g) = stub(false);
    alloc_cuda_set_abort_on_failure(0);
    let g = CudaAllocator::global(0).expect("global allocator");
    let s2 = g.new_stream().expect("stream");
    let raw2 = s2.cu_stream() as usize;
    let violations = stub.violations();
    std::thread::spawn(move || {
        let null = core::ptr::null_mut();
        let p = alloc_cuda_malloc(1 << 20, 0, null);
        assert!(!p.is_null(), "{}", last_error());
        alloc_cuda_record_stream(p, raw2 as *mut c_void);
        stub.launch(raw2);
        alloc_cuda_free(p, 1 << 20, 0, null); // pending on stream 2's event
        let q = alloc_cuda_malloc(1 << 20, 0, null);
        assert!(!q.is_null() && q != p, "{}", last_error());
        alloc_cuda_free(q, 1 << 20, 0, null);
        stub.complete(raw2);
        // the next allocation queries stream 2's event from this thread
        let r = alloc_cuda_malloc(4096, 0, null);
        assert!(!r.is_null(), "{}", last_error());
        let st = stats();
        assert_eq!(
            st["active_bytes.all.current"], st["allocated_bytes.all.current"],
            "a free stayed pending: its event was queried without a context"
        );
        alloc_cuda_free(r, 4096, 0, null);
        alloc_cuda_empty_cache(0);
    })
    .join()
    .expect("the thread without a context");
    assert_eq!(
        stub.violations(),
        violations,
        "driver calls without a context"
    );
    assert_eq!(g.stats().reserved_bytes.all.current, 0);
    std::mem::forget(s2);
}
