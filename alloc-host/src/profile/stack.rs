//! A frame-pointer walk that never allocates and never reads outside the
//! thread's stack.
//!
//! Every frame built with frame pointers starts with a record `[previous
//! frame pointer, return address]` at its frame pointer (`rbp` on x86-64,
//! `x29` on aarch64). The walk follows that chain and stops at the first
//! pointer that is not 8-aligned, not strictly above the last one, or not
//! inside the thread's stack (bounds from `pthread_getattr_np`, read once per
//! thread), or after [`MAX_FRAMES`]. Code built without frame pointers (the
//! standard library as shipped, or a crate built without
//! `-C force-frame-pointers=yes`) either leaves the register alone — its
//! frame is skipped — or uses it as a general register, and the checks stop
//! the walk there: a short stack, never a bad read.

use core::cell::Cell;

/// How a sample's stack is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwinder {
    /// `_Unwind_Backtrace`: DWARF call-frame information, correct in any
    /// build (the default).
    Dwarf,
    /// The frame-pointer chain: faster, complete only in code built with
    /// `-C force-frame-pointers=yes`.
    FramePointers,
}

/// Most return addresses kept per sample.
pub const MAX_FRAMES: usize = 48;

thread_local! {
    /// This thread's stack bounds `[lo, hi)`; `(0, 0)` until read, `(1, 1)`
    /// when they cannot be read (then nothing is walked).
    static BOUNDS: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Reads the calling thread's stack bounds without the global allocator.
#[cfg(target_os = "linux")]
fn read_bounds() -> (usize, usize) {
    // SAFETY: `attr` is initialised by pthread_getattr_np before use and
    // destroyed after; pthread_attr_getstack writes the two out-pointers.
    // glibc may call its own malloc here (C heap, not this allocator).
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (1, 1);
        }
        let mut addr: *mut libc::c_void = core::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 || addr.is_null() {
            return (1, 1);
        }
        (addr as usize, addr as usize + size)
    }
}

/// Reads the calling thread's stack bounds without the global allocator.
#[cfg(target_os = "macos")]
fn read_bounds() -> (usize, usize) {
    // SAFETY: both calls take the calling thread's handle and only read.
    unsafe {
        let t = libc::pthread_self();
        let hi = libc::pthread_get_stackaddr_np(t) as usize;
        let size = libc::pthread_get_stacksize_np(t);
        (hi - size, hi)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn read_bounds() -> (usize, usize) {
    (1, 1)
}

/// The caller's frame pointer register.
#[inline(always)]
fn frame_pointer() -> usize {
    let fp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads a register; no memory access.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads a register; no memory access.
    unsafe {
        core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        fp = 0;
    }
    fp
}

/// Walks this thread's frame-pointer chain into `out`; returns how many
/// return addresses were written (innermost first). Never allocates through
/// the global allocator, never reads outside `[current frame, stack top)`.
#[inline(never)]
pub fn walk(out: &mut [usize; MAX_FRAMES]) -> usize {
    let (lo, hi) = match BOUNDS.try_with(|b| {
        if b.get() == (0, 0) {
            b.set(read_bounds());
        }
        b.get()
    }) {
        Ok(b) => b,
        Err(_) => return 0,
    };
    // Nothing below the current frame is live: use the address of a local as
    // the lower bound (tighter than the mapping's start).
    let here = &lo as *const usize as usize;
    let lo = lo.max(here);
    let mut fp = frame_pointer();
    let mut n = 0;
    while n < MAX_FRAMES {
        if fp < lo || fp % 8 != 0 || fp.checked_add(16).is_none_or(|end| end > hi) {
            break;
        }
        // SAFETY: `fp .. fp + 16` lies inside this thread's live stack (checked
        // just above against its bounds and the current frame), is 8-aligned,
        // and the stack is mapped readable; the values read are plain words.
        let (next, ret) = unsafe {
            (
                core::ptr::read_volatile(fp as *const usize),
                core::ptr::read_volatile((fp + 8) as *const usize),
            )
        };
        if ret < 4096 {
            break;
        }
        out[n] = ret;
        n += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    n
}

unsafe extern "C" {
    fn _Unwind_Backtrace(
        trace: extern "C" fn(*mut core::ffi::c_void, *mut core::ffi::c_void) -> core::ffi::c_int,
        arg: *mut core::ffi::c_void,
    ) -> core::ffi::c_int;
    fn _Unwind_GetIP(ctx: *mut core::ffi::c_void) -> usize;
}

struct DwarfOut<'a> {
    out: &'a mut [usize; MAX_FRAMES],
    n: usize,
}

extern "C" fn dwarf_frame(
    ctx: *mut core::ffi::c_void,
    arg: *mut core::ffi::c_void,
) -> core::ffi::c_int {
    // SAFETY: `arg` is the `DwarfOut` passed to `_Unwind_Backtrace` by
    // `walk_dwarf`, alive and not otherwise borrowed during the call.
    let o = unsafe { &mut *arg.cast::<DwarfOut<'_>>() };
    // SAFETY: `ctx` is the unwinder's context for this frame.
    let ip = unsafe { _Unwind_GetIP(ctx) };
    if ip == 0 || o.n >= MAX_FRAMES {
        return 5; // _URC_END_OF_STACK: stop.
    }
    o.out[o.n] = ip;
    o.n += 1;
    0 // _URC_NO_REASON: go on.
}

/// Reads this thread's stack with the platform's DWARF unwinder into `out`;
/// returns how many return addresses were written (innermost first).
#[inline(never)]
pub fn walk_dwarf(out: &mut [usize; MAX_FRAMES]) -> usize {
    let mut o = DwarfOut { out, n: 0 };
    // SAFETY: the callback matches the unwinder's trace-function signature and
    // only writes into `o`, which outlives the call.
    unsafe { _Unwind_Backtrace(dwarf_frame, (&mut o as *mut DwarfOut<'_>).cast()) };
    o.n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both unwinders run on a test thread without faulting; the DWARF one
    /// reaches past this function (its caller chain up to the thread start).
    #[test]
    fn both_unwinders_walk_this_thread() {
        let mut f = [0usize; MAX_FRAMES];
        let n = walk(&mut f);
        assert!(n <= MAX_FRAMES);
        assert!(f[..n].iter().all(|&a| a >= 4096));
        let n = walk_dwarf(&mut f);
        assert!(n >= 4, "DWARF walk found {n} frames");
        let here = both_unwinders_walk_this_thread as *const () as usize;
        // One of the return addresses lies in this function (within 4 KiB).
        assert!(
            f[..n].iter().any(|&a| a > here && a < here + 4096),
            "{f:x?}"
        );
    }
}
