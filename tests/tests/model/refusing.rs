// The inner allocator of the header-placement model tests (`host_model`,
// `host_model_sampled`): System, refusing on demand. Included with
// `include!`, after `std::alloc::{GlobalAlloc, Layout, System}` and
// `std::sync::atomic::{AtomicBool, Ordering::SeqCst}` are in scope.

/// System, refusing the next allocation or reallocation when asked.
struct Refusing;

static REFUSE_NEXT: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards to System unchanged, or returns null (allowed by the
// GlobalAlloc contract for any request).
unsafe impl GlobalAlloc for Refusing {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if REFUSE_NEXT.swap(false, SeqCst) {
            return std::ptr::null_mut();
        }
        // SAFETY: caller's contract, forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if REFUSE_NEXT.swap(false, SeqCst) {
            return std::ptr::null_mut();
        }
        // SAFETY: caller's contract, forwarded.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: caller's contract, forwarded.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if REFUSE_NEXT.swap(false, SeqCst) {
            return std::ptr::null_mut();
        }
        // SAFETY: caller's contract, forwarded.
        unsafe { System.realloc(p, l, n) }
    }
}
