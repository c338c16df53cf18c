//! The other owner mechanism of issue 16, built only to be measured beside
//! alloc-host: **the owner of a block is the mimalloc heap of its page**.
//!
//! mimalloc 3 (the version the `mimalloc` crate builds) has first-class heaps
//! and a public `mi_heap_of(p)`, the heap whose page holds `p`. So a scope can
//! own a heap: its blocks are allocated from it, and a free learns the owner
//! from the page, with no owner stored per block. That is what makes it cheap;
//! its price is that a page then holds the blocks of one scope only, so a
//! closed scope that still owns a block keeps its heap, and every page in
//! which it still has a block, to itself (nothing else may allocate there, or
//! that block would be charged to the closed scope).
//!
//! What it does, and only this (a lower bound of the design, not a product):
//! - [`HeapOwner::alloc`]: the thread's current scope heap (`mi_theap_t`,
//!   cached per thread), its live bytes and peak in thread-locals;
//! - [`HeapOwner::dealloc`]: `mi_heap_of`, compared with the current heap;
//!   a block of another scope is charged back through a table keyed by heap
//!   (out of line);
//! - [`HeapScopes`]: a heap per request (recycled through a per-thread free
//!   list when the request leaves nothing live; kept, pinned, otherwise), one
//!   `workload` heap shared by the threads.
//!
//! It leaves out what alloc-host also does (budgets, the scope registry and
//! its reports, sampling, flushed aggregates, counts, time), so its
//! instruction counts are a floor for the design rather than a product's.
//! Blocks allocated outside a scope heap (before a scope is entered) go to
//! mimalloc's default heap and are charged to no one.

use core::cell::{Cell, RefCell};
use core::ffi::c_void;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering::*};

use libmimalloc_sys::{self as mi, mi_heap_t, mi_theap_t};

use crate::workload::Scoper;

unsafe extern "C" {
    // mimalloc 3's public API (mimalloc.h), not all bound by libmimalloc-sys.
    fn mi_heap_of(p: *const c_void) -> *mut mi_heap_t;
    fn mi_heap_theap(heap: *mut mi_heap_t) -> *mut mi_theap_t;
    fn mi_theap_malloc(theap: *mut mi_theap_t, size: usize) -> *mut c_void;
    fn mi_theap_malloc_small(theap: *mut mi_theap_t, size: usize) -> *mut c_void;
    fn mi_theap_malloc_aligned(theap: *mut mi_theap_t, size: usize, align: usize) -> *mut c_void;
    fn mi_theap_realloc(theap: *mut mi_theap_t, p: *mut c_void, newsize: usize) -> *mut c_void;
}

thread_local! {
    /// The current scope's heap (null: no scope, mimalloc's default heap).
    static HEAP: Cell<*mut mi_heap_t> = const { Cell::new(core::ptr::null_mut()) };
    /// This thread's part of [`HEAP`] (`mi_heap_theap`).
    static THEAP: Cell<*mut mi_theap_t> = const { Cell::new(core::ptr::null_mut()) };
    /// Live bytes charged to the current scope by this thread since it
    /// entered it (frees of its blocks by this thread subtracted).
    static LIVE: Cell<i64> = const { Cell::new(0) };
    /// The high-water mark of [`LIVE`].
    static PEAK: Cell<i64> = const { Cell::new(0) };
    /// Request heaps that own nothing, ready for the next request.
    static FREE: RefCell<Vec<*mut mi_heap_t>> = const { RefCell::new(Vec::new()) };
}

/// Heaps made (the table below holds one entry per heap).
const SLOTS: usize = 1 << 21;

/// A heap's entry: its address and the bytes charged to it by frees from
/// other scopes (or other threads).
struct Slot {
    heap: AtomicPtr<mi_heap_t>,
    remote: AtomicI64,
}

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        heap: AtomicPtr::new(core::ptr::null_mut()),
        remote: AtomicI64::new(0),
    }
}; SLOTS];

/// Heaps made, and request heaps kept because their scope still owned
/// memory when it closed.
static MADE: AtomicU64 = AtomicU64::new(0);
static PINNED: AtomicU64 = AtomicU64::new(0);

fn hash(h: *mut mi_heap_t) -> usize {
    ((h as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 21)) as usize
}

/// The table entry of `h`, or `None` (mimalloc's own heaps: no scope).
fn slot(h: *mut mi_heap_t) -> Option<&'static Slot> {
    let mut i = hash(h);
    for _ in 0..SLOTS {
        let s = &TABLE[i];
        let k = s.heap.load(Acquire);
        if k == h {
            return Some(s);
        }
        if k.is_null() {
            return None;
        }
        i = (i + 1) & (SLOTS - 1);
    }
    None
}

/// A fresh heap, entered in the table.
fn new_heap() -> *mut mi_heap_t {
    // SAFETY: `mi_heap_new` takes no argument; null only when out of memory.
    let h = unsafe { mi::mi_heap_new() };
    assert!(!h.is_null(), "mi_heap_new failed");
    let mut i = hash(h);
    loop {
        if TABLE[i]
            .heap
            .compare_exchange(core::ptr::null_mut(), h, AcqRel, Acquire)
            .is_ok()
        {
            break;
        }
        i = (i + 1) & (SLOTS - 1);
    }
    MADE.fetch_add(1, Relaxed);
    h
}

/// Charges `delta` bytes to the heap of a block that is not the current
/// scope's.
#[cold]
#[inline(never)]
fn charge_other(h: *mut mi_heap_t, delta: i64) {
    if let Some(s) = slot(h) {
        s.remote.fetch_add(delta, Relaxed);
    }
}

/// Adds `delta` to the current scope's live bytes and its peak.
#[inline(always)]
fn charge_here(delta: i64) {
    let live = LIVE.get() + delta;
    LIVE.set(live);
    if live > PEAK.get() {
        PEAK.set(live);
    }
}

/// The global allocator of the design.
pub struct HeapOwner;

/// Alignments every mimalloc block of the size has anyway (as
/// `alloc_host::Mimalloc`).
#[inline(always)]
fn plain(l: Layout) -> bool {
    l.align() <= 8 || (l.align() <= 16 && l.size() >= 16)
}

// SAFETY: every block comes from mimalloc, which returns blocks of at least
// the size and alignment asked for (aligned entry points where its blocks are
// not aligned enough anyway: `plain`), and each is freed by `mi_free` once.
unsafe impl GlobalAlloc for HeapOwner {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let t = THEAP.get();
        // SAFETY: mimalloc's allocation functions take any size and a
        // power-of-two alignment (`Layout`'s); `t`, when not null, is this
        // thread's part of a live heap (`enter`).
        unsafe {
            if t.is_null() {
                return if plain(l) {
                    mi::mi_malloc(l.size())
                } else {
                    mi::mi_malloc_aligned(l.size(), l.align())
                }
                .cast();
            }
            let p = if plain(l) {
                if l.size() <= mi::MI_SMALL_SIZE_MAX {
                    mi_theap_malloc_small(t, l.size())
                } else {
                    mi_theap_malloc(t, l.size())
                }
            } else {
                mi_theap_malloc_aligned(t, l.size(), l.align())
            };
            if !p.is_null() {
                charge_here(l.size() as i64);
            }
            p.cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` is a live block of this allocator (GlobalAlloc's
        // contract), so of a mimalloc heap.
        let h = unsafe { mi_heap_of(p.cast()) };
        if h == HEAP.get() {
            LIVE.set(LIVE.get() - l.size() as i64);
        } else {
            charge_other(h, -(l.size() as i64));
        }
        // SAFETY: as above; freed once.
        unsafe { mi::mi_free(p.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let t = THEAP.get();
        // SAFETY: `new_size` with `l.align()` is a valid layout (GlobalAlloc's
        // contract).
        let n = unsafe { Layout::from_size_align_unchecked(new_size, l.align()) };
        if t.is_null() || !plain(l) || !plain(n) {
            // SAFETY: GlobalAlloc's contract, passed on.
            return unsafe { realloc_slow(self, p, l, n) };
        }
        // SAFETY: `p` is a live block of this allocator.
        let h = unsafe { mi_heap_of(p.cast()) };
        // SAFETY: `p` live, `t` this thread's part of the current heap; a
        // block that fits stays where it is (in `h`'s page), one that moves
        // lands in the current heap.
        let q = unsafe { mi_theap_realloc(t, p.cast(), new_size) }.cast::<u8>();
        if q.is_null() {
            return q;
        }
        let here = h == HEAP.get();
        let (old, new) = (l.size() as i64, new_size as i64);
        if q == p {
            if here {
                charge_here(new - old);
            } else {
                charge_other(h, new - old);
            }
        } else {
            if here {
                LIVE.set(LIVE.get() - old);
            } else {
                charge_other(h, -old);
            }
            charge_here(new);
        }
        q
    }
}

/// A realloc outside the fast case: allocate, copy, free.
///
/// # Safety
/// As `GlobalAlloc::realloc`, `n` the new layout.
#[cold]
unsafe fn realloc_slow(a: &HeapOwner, p: *mut u8, l: Layout, n: Layout) -> *mut u8 {
    // SAFETY: the caller's contract; both blocks live while copying.
    unsafe {
        let q = a.alloc(n);
        if !q.is_null() {
            core::ptr::copy_nonoverlapping(p, q, l.size().min(n.size()));
            a.dealloc(p, l);
        }
        q
    }
}

/// The scope entered before [`enter`], to go back to.
struct Saved {
    heap: *mut mi_heap_t,
    theap: *mut mi_theap_t,
}

/// Makes `h` the current scope of this thread; the current one's live bytes
/// go to its table entry first.
fn enter(h: *mut mi_heap_t) -> Saved {
    let saved = Saved {
        heap: HEAP.get(),
        theap: THEAP.get(),
    };
    flush();
    HEAP.set(h);
    // SAFETY: `h` is a live heap made by `new_heap`.
    THEAP.set(unsafe { mi_heap_theap(h) });
    saved
}

/// Moves this thread's live bytes of the current scope to its table entry.
fn flush() {
    let live = LIVE.replace(0);
    PEAK.set(0);
    if live != 0 {
        charge_other(HEAP.get(), live);
    }
}

/// Goes back to the scope before [`enter`].
fn leave(s: Saved) {
    flush();
    HEAP.set(s.heap);
    THEAP.set(s.theap);
}

/// Makes a fresh heap this thread's current scope for the rest of the
/// thread (the `pairs` binary's `heap-owner` variant).
pub fn enter_fresh() {
    // Never left: the scope before it is not needed again.
    let _ = enter(new_heap());
}

/// Heaps made so far, and request heaps kept by closed scopes that still own
/// memory.
pub fn heaps() -> (u64, u64) {
    (MADE.load(Relaxed), PINNED.load(Relaxed))
}

/// The design's scopes: a `workload` heap entered on every thread, and a
/// heap per request.
pub struct HeapScopes {
    workload: AtomicPtr<mi_heap_t>,
}

impl HeapScopes {
    /// Makes the `workload` heap.
    pub fn new() -> Self {
        HeapScopes {
            workload: AtomicPtr::new(new_heap()),
        }
    }
}

impl Default for HeapScopes {
    fn default() -> Self {
        Self::new()
    }
}

impl Scoper for HeapScopes {
    fn thread<R>(&self, _t: usize, f: impl FnOnce() -> R) -> R {
        let s = enter(self.workload.load(Relaxed));
        let r = f();
        leave(s);
        r
    }

    fn request<R>(&self, f: impl FnOnce() -> R) -> R {
        let h = FREE.with_borrow_mut(|v| v.pop()).unwrap_or_else(new_heap);
        let s = enter(h);
        let r = f();
        leave(s);
        // Everything charged to the request: this thread's part was flushed
        // to the entry by `leave`, other threads' frees are there too.
        let owned = slot(h).map_or(0, |e| e.remote.load(Acquire));
        if owned == 0 {
            FREE.with_borrow_mut(|v| v.push(h));
        } else {
            PINNED.fetch_add(1, Relaxed);
        }
        r
    }
}
