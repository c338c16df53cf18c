//! One scope's record in the registry: host and device counters, parent link,
//! budgets, times, and the life word that decides when the slot can be reused.
//!
//! # Invariants
//! The records keep [`ScopeInvariant::R1`] (the life word),
//! [`ScopeInvariant::R2`] (a parent outlives its children),
//! [`ScopeInvariant::R3`] (zero is a free record) and [`ScopeInvariant::R4`]
//! (recycling a closed slot); their definitions are on the variants.

use super::counters::Counters;
use super::sync::{
    AtomicI64, AtomicU8, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed},
};
#[cfg(doc)]
use crate::ScopeInvariant;

/// One reference in the life word ([`ScopeInvariant::R1`]).
pub(crate) const REF: i64 = 1 << 32;

/// Slot states.
pub(crate) const FREE: u8 = 0;
pub(crate) const OPEN: u8 = 1;
pub(crate) const CLOSED: u8 = 2;
/// Claimed by the registry to recycle a closed slot that still owns memory.
pub(crate) const EVICTING: u8 = 3;

/// Keeps a group of atomics on its own cache line.
#[repr(align(64))]
pub(crate) struct Line<T>(pub T);

/// Non-counter fields of a record.
pub(crate) struct Meta {
    pub generation: AtomicU32,
    /// Parent slot + 1; 0 means none.
    pub parent: AtomicU32,
    pub depth: AtomicU32,
    pub state: AtomicU8,
    /// 1 when this scope or an ancestor has a budget: its charges are unbatched.
    pub budget_in_chain: AtomicU8,
    /// The life word ([`ScopeInvariant::R1`]).
    pub life: AtomicI64,
    pub refs: AtomicU32,
    /// Next free slot + 1 while on the free list.
    pub next_free: AtomicU32,
    /// Charges in flight to this slot from threads that are not inside it
    /// (frees of blocks it owns): recycling waits until none is ([`ScopeInvariant::R4`]).
    pub pins: AtomicU32,
    /// Host live-byte budgets; 0 means none.
    pub hard_limit: AtomicU64,
    pub soft_limit: AtomicU64,
    /// Highest live bytes seen above the soft limit; 0 while never exceeded.
    pub soft_exceeded: AtomicU64,
    /// Allocations refused by the hard limit.
    pub refused: AtomicU64,
    /// Scope clock readings (`clock.rs`, ticks) at open and at close.
    pub opened_at: AtomicU64,
    pub closed_at: AtomicU64,
    /// Children that retired, and the highest host / device peak among them.
    pub closed_children: AtomicU64,
    pub closed_children_peak: AtomicI64,
    pub closed_children_device_peak: AtomicI64,
    /// 1 once the scope was marked failed ([`ScopeHandle::mark_failed`]): at
    /// close its figures go to the aggregate of `"{name} (failed)"`.
    ///
    /// [`ScopeHandle::mark_failed`]: crate::ScopeHandle::mark_failed
    pub failed: AtomicU8,
    /// The per-name aggregate entry of this record's name, plus 1 (0: not
    /// looked up yet), so that closing a scope whose slot was last used by a
    /// scope of the same name skips the lookup. Cleared whenever another
    /// name is stored (`handle.rs`, `create`); kept across slot reuse.
    pub aggregate: AtomicU32,
    /// 1 once a counter of this record was written since it was last
    /// cleared: every write goes through the registry (`registry.rs`,
    /// `written`), and a record's next scope clears its counters only then
    /// (a request scope whose charges stayed in its thread's batch leaves
    /// them at zero). Seen by the next opener through the retirement's
    /// release and the free list's acquire.
    pub written: AtomicU8,
    /// 1 while this free slot is kept by the thread that retired it, for
    /// its next scope, instead of being on the free list
    /// ([`ScopeInvariant::G1`]: whoever sets it back to 0 takes the slot;
    /// `registry.rs`, `claim_kept`, and any thread when no other slot is
    /// left).
    pub kept: AtomicU8,
}

/// A scope's name, stored inline so that opening a scope and reading a report
/// take no lock (a lock held by another thread at `fork` would deadlock the
/// child): byte 0 is the length, then up to [`NAME_MAX`] bytes of UTF-8.
pub(crate) struct Name(pub [AtomicU64; 8]);

/// Longest name kept; longer names are cut at a character boundary.
pub const NAME_MAX: usize = 63;

/// A name in its stored form: byte 0 the length, then the UTF-8 bytes (cut
/// at a character boundary to [`NAME_MAX`]), zero-padded, as 8 words.
pub(crate) type NameWords = [u64; 8];

/// `name` in its stored form (see [`NameWords`]).
pub(crate) fn name_words(name: &str) -> NameWords {
    let mut end = name.len().min(NAME_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut bytes = [0u8; 64];
    bytes[0] = end as u8;
    bytes[1..=end].copy_from_slice(&name.as_bytes()[..end]);
    let mut words = [0u64; 8];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        *w = u64::from_le_bytes(word);
    }
    words
}

/// The bytes of `b` (at most 8) as a little-endian word, without a copy
/// through memory: two overlapping loads cover 4 to 8 bytes, three 1 to 3.
#[inline(always)]
fn load_le(b: &[u8]) -> u64 {
    let n = b.len();
    if n >= 4 {
        let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
        u64::from(lo) | (u64::from(hi) << (8 * (n - 4)))
    } else if n > 0 {
        u64::from(b[0])
            | (u64::from(b[n / 2]) << (8 * (n / 2)))
            | (u64::from(b[n - 1]) << (8 * (n - 1)))
    } else {
        0
    }
}

/// [`short_word`] of a name of 8 bytes or more (no stored first word has
/// all bits set: its low byte is a length below 64).
pub(crate) const LONG: u64 = u64::MAX;

/// The stored form of `name` when it is one word (up to 7 bytes: the usual
/// name of a request or a stage), else [`LONG`]. Always inlined, so that a
/// name known where the scope is opened (a literal) is a constant there.
#[inline(always)]
pub(crate) fn short_word(name: &str) -> u64 {
    let end = name.len();
    if end < 8 {
        end as u64 | (load_le(name.as_bytes()) << 8)
    } else {
        LONG
    }
}

impl Name {
    /// [`Name::set_with`] computing the short word itself (tests).
    #[cfg(test)]
    pub(crate) fn set(&self, name: &str) -> bool {
        self.set_with(name, short_word(name))
    }

    /// Stores `name` ([`name_words`]'s form) unless it is stored already;
    /// true when it was not; `first` is [`short_word`]`(name)`. Only the
    /// words that hold its length byte and its bytes are built and
    /// compared: when the first word matches, so does the length, and a
    /// stored name is zero beyond its bytes.
    #[inline(always)]
    pub(crate) fn set_with(&self, name: &str, first: u64) -> bool {
        if first != LONG {
            if self.0[0].load(Relaxed) == first {
                return false;
            }
            self.store_words(&[first, 0, 0, 0, 0, 0, 0, 0]);
            return true;
        }
        self.set_long(name)
    }

    /// [`Name::set_with`] of a name of 8 bytes or more.
    #[inline(never)]
    fn set_long(&self, name: &str) -> bool {
        let mut end = name.len().min(NAME_MAX);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let b = &name.as_bytes()[..end];
        let first = end as u64 | (load_le(&b[..7]) << 8);
        let mut words = [0u64; 8];
        words[0] = first;
        // Word k holds bytes 8k - 1 .. 8k + 7 of the name.
        let used = (end + 8) / 8;
        let mut k = 1;
        while k < used {
            let start = 8 * k - 1;
            words[k] = load_le(&b[start..(start + 8).min(end)]);
            k += 1;
        }
        let mut same = true;
        for (v, w) in words[..used].iter().zip(&self.0) {
            same &= w.load(Relaxed) == *v;
        }
        if same {
            return false;
        }
        self.store_words(&words);
        true
    }

    pub(crate) fn store_words(&self, words: &NameWords) {
        for (w, v) in self.0.iter().zip(words) {
            w.store(*v, Relaxed);
        }
    }

    /// The stored form, word by word (no UTF-8 check, no copy of bytes).
    pub(crate) fn words(&self) -> NameWords {
        let mut words = [0u64; 8];
        for (v, w) in words.iter_mut().zip(&self.0) {
            *v = w.load(Relaxed);
        }
        words
    }

    /// Runs `f` on the name, read into a stack buffer (no allocation; names
    /// are stored cut at a character boundary, so they are valid UTF-8).
    pub(crate) fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let mut bytes = [0u8; 64];
        for (w, chunk) in self.0.iter().zip(bytes.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Relaxed).to_le_bytes());
        }
        let len = (bytes[0] as usize).min(NAME_MAX);
        f(core::str::from_utf8(&bytes[1..=len]).unwrap_or(""))
    }

    pub(crate) fn load(&self) -> String {
        let mut bytes = [0u8; 64];
        for (w, chunk) in self.0.iter().zip(bytes.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Relaxed).to_le_bytes());
        }
        let len = (bytes[0] as usize).min(NAME_MAX);
        String::from_utf8_lossy(&bytes[1..=len]).into_owned()
    }
}

/// A registry slot.
pub(crate) struct Record {
    pub host: Line<Counters>,
    pub device: Line<Counters>,
    pub meta: Line<Meta>,
    pub name: Line<Name>,
}

macro_rules! meta_new {
    () => {
        Meta {
            generation: AtomicU32::new(0),
            parent: AtomicU32::new(0),
            depth: AtomicU32::new(0),
            state: AtomicU8::new(FREE),
            budget_in_chain: AtomicU8::new(0),
            life: AtomicI64::new(0),
            refs: AtomicU32::new(0),
            next_free: AtomicU32::new(0),
            pins: AtomicU32::new(0),
            hard_limit: AtomicU64::new(0),
            soft_limit: AtomicU64::new(0),
            soft_exceeded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            opened_at: AtomicU64::new(0),
            closed_at: AtomicU64::new(0),
            closed_children: AtomicU64::new(0),
            closed_children_peak: AtomicI64::new(0),
            closed_children_device_peak: AtomicI64::new(0),
            failed: AtomicU8::new(0),
            aggregate: AtomicU32::new(0),
            written: AtomicU8::new(0),
            kept: AtomicU8::new(0),
        }
    };
}

impl Record {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Record {
            host: Line(Counters::new()),
            device: Line(Counters::new()),
            meta: Line(meta_new!()),
            name: Line(Name([const { AtomicU64::new(0) }; 8])),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Record {
            host: Line(Counters::new()),
            device: Line(Counters::new()),
            meta: Line(meta_new!()),
            name: Line(Name(core::array::from_fn(|_| AtomicU64::new(0)))),
        }
    }

    /// Opens a slot just taken from the free list (exclusively owned): every
    /// figure and mark a scope can write starts again (the name, its
    /// aggregate entry, the generation and the state are the caller's); the
    /// counters are cleared only when written since they last were
    /// (`Meta::written`), being zero otherwise.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn open(
        &self,
        parent: Option<u32>,
        depth: u32,
        opened_at: u64,
        hard_limit: u64,
        soft_limit: u64,
        budget_in_chain: bool,
    ) {
        let m = &self.meta.0;
        if m.written.load(Relaxed) != 0 {
            self.host.0.clear();
            self.device.0.clear();
            m.written.store(0, Relaxed);
        }
        m.parent.store(parent.map_or(0, |p| p + 1), Relaxed);
        m.depth.store(depth, Relaxed);
        m.budget_in_chain.store(u8::from(budget_in_chain), Relaxed);
        m.life.store(REF, Relaxed);
        m.refs.store(1, Relaxed);
        m.hard_limit.store(hard_limit, Relaxed);
        m.soft_limit.store(soft_limit, Relaxed);
        m.soft_exceeded.store(0, Relaxed);
        m.refused.store(0, Relaxed);
        m.opened_at.store(opened_at, Relaxed);
        // `closed_at` is written before the state says closed, and read
        // only then.
        m.closed_children.store(0, Relaxed);
        m.closed_children_peak.store(0, Relaxed);
        m.closed_children_device_peak.store(0, Relaxed);
        m.failed.store(0, Relaxed);
    }

    /// [`Record::open`] without budgets.
    #[cfg(loom)]
    pub(crate) fn reset(&self, parent: Option<u32>, depth: u32, opened_at: u64) {
        self.open(parent, depth, opened_at, 0, 0, false);
    }

    /// [`Registry::alone`] of a record not in a fixed slot: its life word
    /// is exactly one reference (the acquire sees a charge applied before
    /// it whole).
    ///
    /// [`Registry::alone`]: super::registry::Registry::alone
    #[inline(always)]
    pub(crate) fn alone(&self) -> bool {
        self.meta.0.life.load(Acquire) == REF
    }

    /// The parent slot, if any.
    #[inline]
    pub(crate) fn parent(&self) -> Option<u32> {
        match self.meta.0.parent.load(Relaxed) {
            0 => None,
            p => Some(p - 1),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// `Name::set` stores exactly `name_words`' form, and tells a stored name
    /// from every other, for every length and a character cut at the limit.
    #[test]
    fn set_stores_the_stored_form_and_compares_only_what_it_needs() {
        let mut names: Vec<String> = (0..=80)
            .map(|n| "abcdefghij".repeat(9)[..n].to_owned())
            .collect();
        names.extend((0..=40).map(|n| "é".repeat(n)));
        names.extend((0..=8).map(|n| format!("{}\u{1F600}", "x".repeat(60 - n))));
        let slot = Name([const { AtomicU64::new(0) }; 8]);
        for a in &names {
            for b in &names {
                assert!(slot.set(a) || slot.words() == name_words(a), "{a:?}");
                assert_eq!(slot.words(), name_words(a), "{a:?}");
                assert!(!slot.set(a), "{a:?} again");
                let same = name_words(a) == name_words(b);
                assert_eq!(slot.set(b), !same, "{a:?} then {b:?}");
                assert_eq!(slot.words(), name_words(b), "{a:?} then {b:?}");
            }
        }
    }
}
