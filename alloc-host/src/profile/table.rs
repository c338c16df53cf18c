//! The sample table: fixed arrays in `.bss` behind one spin lock that is held
//! only to insert or remove one entry (or to copy the table out into memory
//! reserved before the lock is taken). Nothing here allocates.
//!
//! Memory bound (all of it zero-initialised static memory, so only the pages
//! touched become resident): [`TABLE_BYTES`] = 6.25 MiB on 64-bit targets:
//! - stacks: [`STACKS`] distinct stacks of up to [`MAX_FRAMES`] return
//!   addresses (3.125 MiB) and their hash index (64 KiB);
//! - live samples: [`LIVE`] slots (2.5 MiB), at most 3/4 of them used, so at
//!   most 49,152 sampled blocks in use at once (at the default 512 KiB mean,
//!   about 24 GiB of live heap);
//! - allocated totals by (stack, scope name): [`TOTALS`] slots (512 KiB);
//! - scope names: [`NAMES`] names of up to 63 bytes (64 KiB).
//!
//! When one fills up, samples that need a new entry are counted in
//! [`Counts::dropped`] (a stack that does not fit is kept as the empty stack).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};

use super::stack::MAX_FRAMES;

/// Distinct stacks kept.
pub const STACKS: usize = 8192;
/// Slots of the live-sample table (a power of two; filled to 3/4 at most).
pub const LIVE: usize = 1 << 16;
/// Slots of the allocated-totals table (a power of two; filled to 3/4 at most).
pub const TOTALS: usize = 1 << 14;
/// Scope names kept (index 0: no scope; 1: names that did not fit).
pub const NAMES: usize = 1024;
/// The table's size in bytes (static, zero-initialised).
pub const TABLE_BYTES: usize = core::mem::size_of::<Tables>();

// The bound the docs state (64-bit targets).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(TABLE_BYTES == 6_553_600);

#[derive(Clone, Copy)]
pub(crate) struct Stack {
    pub hash: u64,
    pub depth: u32,
    pub frames: [usize; MAX_FRAMES],
}

/// A sampled block in use.
#[derive(Clone, Copy)]
pub(crate) struct Live {
    /// The block's address; 0: empty slot.
    pub addr: usize,
    pub stack: u32,
    pub name: u32,
    /// The owner scope's `ScopeId::to_bits`.
    pub scope: u64,
    pub count: f64,
    pub bytes: f64,
}

/// Allocated totals of one (stack, name).
#[derive(Clone, Copy)]
pub(crate) struct Total {
    /// `stack << 32 | name`, plus one; 0: empty slot.
    pub key: u64,
    pub samples: u64,
    pub count: f64,
    pub bytes: f64,
}

#[derive(Clone, Copy)]
pub(crate) struct Name {
    pub len: u8,
    pub bytes: [u8; 63],
}

pub(crate) struct Tables {
    pub stacks: [Stack; STACKS],
    stack_index: [u32; STACKS * 2],
    pub live: [Live; LIVE],
    pub totals: [Total; TOTALS],
    pub names: [Name; NAMES],
}

/// How full the table is, and what did not fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Distinct stacks stored.
    pub stacks: usize,
    /// Sampled blocks in use.
    pub live: usize,
    /// (stack, scope name) pairs with allocated totals.
    pub totals: usize,
    /// Scope names stored.
    pub names: usize,
    /// Samples lost to a full table (live or totals), since start.
    pub dropped: u64,
    /// Samples taken, since start.
    pub samples: u64,
}

struct Locked {
    lock: AtomicBool,
    t: UnsafeCell<Tables>,
}

// SAFETY: `t` is only reached through `with`, which holds `lock` (acquire on
// taking, release on leaving), so accesses never overlap; stacks are also
// read without the lock below index `N_STACKS` (acquire), and entries below it
// are never written again.
unsafe impl Sync for Locked {}

const ZERO_STACK: Stack = Stack {
    hash: 0,
    depth: 0,
    frames: [0; MAX_FRAMES],
};
const ZERO_LIVE: Live = Live {
    addr: 0,
    stack: 0,
    name: 0,
    scope: 0,
    count: 0.0,
    bytes: 0.0,
};
const ZERO_TOTAL: Total = Total {
    key: 0,
    samples: 0,
    count: 0.0,
    bytes: 0.0,
};
const ZERO_NAME: Name = Name {
    len: 0,
    bytes: [0; 63],
};

static TABLE: Locked = Locked {
    lock: AtomicBool::new(false),
    t: UnsafeCell::new(Tables {
        stacks: [ZERO_STACK; STACKS],
        stack_index: [0; STACKS * 2],
        live: [ZERO_LIVE; LIVE],
        totals: [ZERO_TOTAL; TOTALS],
        names: [ZERO_NAME; NAMES],
    }),
};

/// Stacks in use: index 0 is the empty stack, always present.
static N_STACKS: AtomicUsize = AtomicUsize::new(1);
static N_LIVE: AtomicUsize = AtomicUsize::new(0);
static N_TOTALS: AtomicUsize = AtomicUsize::new(0);
/// Names in use: 0 (no scope) and 1 (other) always.
static N_NAMES: AtomicUsize = AtomicUsize::new(2);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static SAMPLES: AtomicU64 = AtomicU64::new(0);

/// Runs `f` with the table locked. `f` must not allocate nor free through the
/// global allocator (a sampled allocation or free would wait on this lock).
#[inline]
pub(crate) fn with<R>(f: impl FnOnce(&mut Tables) -> R) -> R {
    while TABLE
        .lock
        .compare_exchange_weak(false, true, Acquire, Relaxed)
        .is_err()
    {
        while TABLE.lock.load(Relaxed) {
            core::hint::spin_loop();
        }
    }
    // SAFETY: the lock is held (taken just above) until the store below, so
    // this is the only reference to the tables (see `Locked`'s Sync).
    let r = f(unsafe { &mut *TABLE.t.get() });
    TABLE.lock.store(false, Release);
    r
}

/// The stack at `i` (< `stacks_len()`): entries below the published count are
/// never written again, so they are read without the lock.
pub(crate) fn stack(i: u32) -> &'static [usize] {
    let n = N_STACKS.load(Acquire);
    if i as usize >= n {
        return &[];
    }
    // SAFETY: entry `i` was written before `N_STACKS` was raised past it
    // (release, under the lock) and is never written again (append-only).
    let s = unsafe { &(*TABLE.t.get()).stacks[i as usize] };
    &s.frames[..(s.depth as usize).min(MAX_FRAMES)]
}

/// The name at `i` (< the names count), copied out.
pub(crate) fn name(i: u32, out: &mut [u8; 63]) -> usize {
    let n = N_NAMES.load(Acquire);
    if i as usize >= n {
        return 0;
    }
    // SAFETY: as `stack`: names are append-only, published by `N_NAMES`.
    let s = unsafe { &(*TABLE.t.get()).names[i as usize] };
    out.copy_from_slice(&s.bytes);
    s.len as usize
}

pub(crate) fn counts() -> Counts {
    Counts {
        stacks: N_STACKS.load(Relaxed),
        live: N_LIVE.load(Relaxed),
        totals: N_TOTALS.load(Relaxed),
        names: N_NAMES.load(Relaxed),
        dropped: DROPPED.load(Relaxed),
        samples: SAMPLES.load(Relaxed),
    }
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

impl Tables {
    /// The index of `frames` in the stack table, inserting it; 0 (the empty
    /// stack) when the table is full.
    pub(crate) fn intern_stack(&mut self, frames: &[usize]) -> u32 {
        let mut h = 0x1234_5678u64 ^ frames.len() as u64;
        for &f in frames {
            h = mix(h ^ f as u64);
        }
        let mask = self.stack_index.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let e = self.stack_index[i];
            if e == 0 {
                break;
            }
            let s = &self.stacks[e as usize];
            if s.hash == h && &s.frames[..s.depth as usize] == frames {
                return e;
            }
            i = (i + 1) & mask;
        }
        let n = N_STACKS.load(Relaxed);
        if n >= STACKS || frames.is_empty() {
            return 0;
        }
        let s = &mut self.stacks[n];
        s.hash = h;
        s.depth = frames.len() as u32;
        s.frames[..frames.len()].copy_from_slice(frames);
        self.stack_index[i] = n as u32;
        N_STACKS.store(n + 1, Release);
        n as u32
    }

    /// The index of scope name `name` (0 for none, 1 when the table is full).
    pub(crate) fn intern_name(&mut self, name: Option<&str>) -> u32 {
        let Some(name) = name else { return 0 };
        let b = name.as_bytes();
        let len = b.len().min(63);
        let n = N_NAMES.load(Relaxed);
        for i in 2..n {
            let e = &self.names[i];
            if e.len as usize == len && e.bytes[..len] == b[..len] {
                return i as u32;
            }
        }
        if n >= NAMES {
            return 1;
        }
        let e = &mut self.names[n];
        e.len = len as u8;
        e.bytes[..len].copy_from_slice(&b[..len]);
        N_NAMES.store(n + 1, Release);
        n as u32
    }

    /// Adds one sample to the allocated totals of (stack, name).
    pub(crate) fn add_total(&mut self, stack: u32, name: u32, count: f64, bytes: f64) {
        SAMPLES.fetch_add(1, Relaxed);
        let key = ((stack as u64) << 32 | name as u64) + 1;
        let mask = TOTALS - 1;
        let mut i = mix(key) as usize & mask;
        loop {
            let e = &mut self.totals[i];
            if e.key == key {
                e.samples += 1;
                e.count += count;
                e.bytes += bytes;
                return;
            }
            if e.key == 0 {
                let n = N_TOTALS.load(Relaxed);
                if n >= TOTALS / 4 * 3 {
                    DROPPED.fetch_add(1, Relaxed);
                    return;
                }
                *e = Total {
                    key,
                    samples: 1,
                    count,
                    bytes,
                };
                N_TOTALS.store(n + 1, Relaxed);
                return;
            }
            i = (i + 1) & mask;
        }
    }

    fn live_slot(addr: usize) -> usize {
        mix(addr as u64) as usize & (LIVE - 1)
    }

    /// Records a sampled block in use; false when the table is full.
    pub(crate) fn insert_live(&mut self, e: Live) -> bool {
        let n = N_LIVE.load(Relaxed);
        if n >= LIVE / 4 * 3 || e.addr == 0 {
            DROPPED.fetch_add(1, Relaxed);
            return false;
        }
        let mut i = Self::live_slot(e.addr);
        loop {
            let s = &mut self.live[i];
            if s.addr == 0 || s.addr == e.addr {
                if s.addr == 0 {
                    N_LIVE.store(n + 1, Relaxed);
                }
                *s = e;
                return true;
            }
            i = (i + 1) & (LIVE - 1);
        }
    }

    /// Removes the sampled block at `addr` (linear probing with backward-shift
    /// deletion: no tombstones, so the table never degrades).
    pub(crate) fn remove_live(&mut self, addr: usize) -> Option<Live> {
        let mask = LIVE - 1;
        let mut i = Self::live_slot(addr);
        loop {
            let s = self.live[i];
            if s.addr == 0 {
                return None;
            }
            if s.addr == addr {
                break;
            }
            i = (i + 1) & mask;
        }
        let found = self.live[i];
        // Shift later entries of the run back over the hole.
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let s = self.live[j];
            if s.addr == 0 {
                break;
            }
            let home = Self::live_slot(s.addr);
            // Move `s` into the hole unless its home lies in (hole, j].
            let in_between = if hole <= j {
                home > hole && home <= j
            } else {
                home > hole || home <= j
            };
            if !in_between {
                self.live[hole] = s;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.live[hole] = ZERO_LIVE;
        N_LIVE.fetch_sub(1, Relaxed);
        Some(found)
    }

    /// Copies the live samples into `out` (never beyond its capacity).
    pub(crate) fn copy_live(&self, out: &mut Vec<Live>) {
        for e in self.live.iter() {
            if e.addr != 0 && out.len() < out.capacity() {
                out.push(*e);
            }
        }
    }

    /// Copies the allocated totals into `out` (never beyond its capacity).
    pub(crate) fn copy_totals(&self, out: &mut Vec<Total>) {
        for e in self.totals.iter() {
            if e.key != 0 && out.len() < out.capacity() {
                out.push(*e);
            }
        }
    }
}

pub(crate) fn live_len() -> usize {
    N_LIVE.load(Relaxed)
}

pub(crate) fn totals_len() -> usize {
    N_TOTALS.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The live table against a model: inserts and removals in an order that
    /// makes long probe runs (addresses that collide), removal by backward
    /// shift keeps every remaining entry findable.
    #[test]
    fn live_table_matches_a_model() {
        let mut model = std::collections::HashMap::new();
        let mut rng = 1u64;
        let base = 0x7000_0000_0000usize;
        for step in 0..20_000usize {
            let r = super::super::sampler::splitmix64(&mut rng);
            let addr = base + ((r % 3000) as usize) * 16;
            if r & (1 << 40) == 0 {
                let e = Live {
                    addr,
                    stack: step as u32,
                    ..ZERO_LIVE
                };
                assert!(with(|t| t.insert_live(e)));
                model.insert(addr, step);
            } else {
                let got = with(|t| t.remove_live(addr)).map(|e| e.stack as usize);
                assert_eq!(got, model.remove(&addr), "step {step} addr {addr:#x}");
            }
        }
        for (addr, size) in model.clone() {
            assert_eq!(
                with(|t| t.remove_live(addr)).map(|e| e.stack as usize),
                Some(size)
            );
        }
        assert_eq!(live_len(), 0);
    }
}
