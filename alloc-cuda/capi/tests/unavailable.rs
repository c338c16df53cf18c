//! Without a CUDA driver the C ABI returns `NULL` and the message, and
//! nothing panics. On a machine with a driver this is reported as SKIPPED.

use alloc_cuda_capi as c_abi;

#[test]
fn c_abi_returns_null_and_the_message() {
    if alloc_cuda::cuda_available() {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: a CUDA driver is installed here; the no-driver errors are not exercised"
        );
        return;
    }
    c_abi::alloc_cuda_set_abort_on_failure(0);
    assert!(c_abi::alloc_cuda_malloc(1024, 0, core::ptr::null_mut()).is_null());
    let mut buf = vec![0 as core::ffi::c_char; 512];
    // SAFETY: `buf` holds 512 bytes.
    let n = unsafe { c_abi::alloc_cuda_last_error(buf.as_mut_ptr(), buf.len()) };
    assert!(n > 0);
    // SAFETY: the call wrote a NUL-terminated message.
    let msg = unsafe { core::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    assert!(msg.starts_with("CUDA unavailable"), "{msg}");
    // SAFETY: `buf` holds 512 bytes.
    let n = unsafe { c_abi::alloc_cuda_stats_json(0, buf.as_mut_ptr(), buf.len()) };
    assert_eq!(n, 0, "no stats without a device");
    c_abi::alloc_cuda_empty_cache(0);
    c_abi::alloc_cuda_reset_peak(0);
    c_abi::alloc_cuda_free(core::ptr::null_mut(), 0, 0, core::ptr::null_mut());
}
