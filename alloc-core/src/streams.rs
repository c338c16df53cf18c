//! The stream registry: which slot names which stream.
//!
//! The registry gives each stream a slot on first use: a hash lookup (after
//! a one-entry cache of the last stream), no size limit, no aliasing: a slot
//! names one live stream at a time.
//! [`CachingAllocator::forget_stream`] waits for the stream's work, moves
//! its blocks and reservations to the *orphan* slot (one slot for all
//! forgotten streams, idle forever, so its cached blocks serve any stream)
//! and retires its slot; the stream's handle may come back as a new stream.
//! The next new stream reuses the retired slot, empty, so a server that
//! creates and forgets a stream per request keeps as many slots as it has
//! streams alive at once, plus the orphan. Blocks still in use from the
//! forgotten stream stay valid; freed later, they wait for the uses recorded
//! on other streams, then join the orphan's cache (never the new stream's:
//! it did not allocate them).
//!
//! "Slot" means a stream slot only: the slab and table storage of blocks
//! and segments are *entries*, the free index's per (stream, pool) parts are
//! *sets*.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::backend::DeviceBackend;
use crate::block::{BlockId, BlockState, NIL};
use crate::cache::{CachingAllocator, State};
use crate::free_index::Key;

/// A stream's slot: its index in the engine's stream registry. A slot names
/// one live stream at a time: a forgotten stream's slot goes to a later new
/// stream only after the forgotten stream's blocks moved to the orphan slot.
pub(crate) type Slot = u32;

/// FxHash: the stream registry hashes small `Copy` handles, where SipHash's
/// resistance to chosen keys buys nothing and costs a cache hit's budget.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u64(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_u32(&mut self, w: u32) {
        self.write_u64(u64::from(w));
    }
    #[inline]
    fn write_usize(&mut self, w: usize) {
        self.write_u64(w as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// One registration of a stream: its slot and how many times that slot had
/// been reused when the stream got it. A slot alone does not tell a stream
/// from a later one that reused its slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Registration {
    slot: Slot,
    generation: u32,
}

/// The slots of the streams the engine has seen (handles of type `S`).
pub(crate) struct StreamRegistry<S> {
    /// Stream of each slot (slots in order of first use; a forgotten
    /// stream's handle stays for its name).
    handles: Vec<S>,
    /// Whether each slot's stream was forgotten (idle until the slot is
    /// reused).
    retired: Vec<bool>,
    /// Retired slots, reused by the next new streams.
    reusable: Vec<Slot>,
    /// Per slot: how many times it was reused.
    generation: Vec<u32>,
    /// The slot that holds the blocks and reservations of every forgotten
    /// stream: idle forever, never reused, in no stream's name.
    orphan: Option<Slot>,
    /// The slot of each registered stream.
    slot_of: FxMap<S, Slot>,
    /// The last stream looked up and its slot.
    last: Option<(S, Slot)>,
}

impl<S> Default for StreamRegistry<S> {
    fn default() -> Self {
        StreamRegistry {
            handles: Vec::new(),
            retired: Vec::new(),
            reusable: Vec::new(),
            generation: Vec::new(),
            orphan: None,
            slot_of: FxMap::default(),
            last: None,
        }
    }
}

impl<S: Copy + Eq + Hash> StreamRegistry<S> {
    /// Slots held: streams alive, retired slots and the orphan slot.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// The stream of `slot` (for a retired slot, the forgotten stream's
    /// handle).
    #[inline]
    pub(crate) fn handle(&self, slot: Slot) -> Option<S> {
        self.handles.get(slot as usize).copied()
    }

    /// The slot of `stream`, if it is known (not forgotten).
    pub(crate) fn slot(&self, stream: S) -> Option<Slot> {
        self.slot_of.get(&stream).copied()
    }

    /// Whether the stream of `slot` was forgotten (its work waited for then).
    #[inline]
    pub(crate) fn is_retired(&self, slot: Slot) -> bool {
        self.retired.get(slot as usize).copied().unwrap_or(false)
    }

    /// The slot of forgotten streams' blocks, once a stream was forgotten.
    #[inline]
    pub(crate) fn orphan(&self) -> Option<Slot> {
        self.orphan
    }

    /// Streams registered and not forgotten.
    fn live(&self) -> usize {
        self.slot_of.len()
    }

    /// The current registration of `stream`, if it is registered.
    fn registration(&self, stream: S) -> Option<Registration> {
        self.slot_of.get(&stream).map(|&slot| Registration {
            slot,
            generation: self.generation.get(slot as usize).copied().unwrap_or(0),
        })
    }
}

impl<B: DeviceBackend> State<B> {
    /// The slot of `stream`, registering it on first use.
    #[inline]
    pub(crate) fn stream_slot(&mut self, stream: B::Stream) -> Slot {
        if let Some((s, slot)) = self.streams.last
            && s == stream
        {
            return slot;
        }
        let slot = match self.streams.slot_of.get(&stream) {
            Some(&slot) => slot,
            None => self.register(stream),
        };
        self.streams.last = Some((stream, slot));
        slot
    }

    #[cold]
    #[inline(never)]
    fn register(&mut self, stream: B::Stream) -> Slot {
        let reg = &mut self.streams;
        if let Some(slot) = reg.reusable.pop() {
            let i = slot as usize;
            reg.handles[i] = stream;
            reg.retired[i] = false;
            if let Some(g) = reg.generation.get_mut(i) {
                *g = g.wrapping_add(1);
            }
            reg.slot_of.insert(stream, slot);
            return slot;
        }
        let slot = self.new_slot(stream);
        self.streams.slot_of.insert(stream, slot);
        slot
    }

    /// A slot never used before, for `stream`.
    fn new_slot(&mut self, stream: B::Stream) -> Slot {
        // 2^32 streams would need far more memory than the registry holds
        // first; saturating keeps the arithmetic total.
        let reg = &mut self.streams;
        let slot = Slot::try_from(reg.handles.len()).unwrap_or(Slot::MAX);
        reg.handles.push(stream);
        reg.retired.push(false);
        reg.generation.push(0);
        self.index.ensure_stream(slot);
        self.reservations.ensure_stream(slot);
        slot
    }

    /// Moves every block and reservation of forgotten slot `slot` to the
    /// orphan slot (made on first use, named by `stream`), so that the slot
    /// can name a new stream: blocks still in use from the forgotten stream
    /// are then nobody's own when freed (they wait for the uses recorded on
    /// other streams, then serve any stream), never the new stream's.
    fn rehome_to_orphan(&mut self, slot: Slot, stream: B::Stream) {
        let orphan = match self.streams.orphan {
            Some(o) => o,
            None => {
                let o = self.new_slot(stream);
                self.streams.retired[o as usize] = true;
                self.streams.orphan = Some(o);
                o
            }
        };
        let mut moved = Vec::new();
        let mut free = Vec::new();
        let sids: Vec<_> = self.segs.iter().map(|(sid, _)| sid).collect();
        for sid in sids {
            let Some(seg) = self.segs.get_mut(sid) else {
                continue;
            };
            if seg.stream == slot {
                seg.stream = orphan;
            }
            let mut id = seg.head;
            while id != NIL {
                let b = self.blocks.at(id);
                let next = b.next;
                if b.stream == slot {
                    if b.state == BlockState::Free {
                        self.index_remove(id);
                        free.push(id);
                    }
                    moved.push(id);
                }
                id = next;
            }
        }
        for &id in &moved {
            self.blocks.at_mut(id).stream = orphan;
        }
        for id in free {
            // an earlier merge may have absorbed it
            if self
                .blocks
                .get(id)
                .is_some_and(|b| b.state == BlockState::Free && b.stream == orphan)
                && !self.index_holds(id)
            {
                self.merge_and_index(id);
            }
        }
        self.reservations.move_all(slot, orphan);
    }

    /// Whether free block `id` is in the index.
    fn index_holds(&self, id: BlockId) -> bool {
        let b = self.blocks.at(id);
        let key = Key {
            size: b.size,
            ptr: b.ptr,
            id,
        };
        self.index.contains(b.stream, b.pool, &key)
    }
}

impl<B: DeviceBackend> CachingAllocator<B> {
    /// Forgets `stream` (say, before the program destroys it): waits for the
    /// work issued on it so far, then retires its slot. Its cached blocks
    /// stay, idle, for any stream to reuse; a stream with the same handle
    /// used later is a new stream. Buffers still allocated on it stay valid;
    /// work launched on the handle after this call that uses such a buffer
    /// must be declared with the buffer's `record_stream(handle)`, as for
    /// any other stream (the handle now names a new stream). Call it once no
    /// other thread issues work on `stream`.
    pub fn forget_stream(&self, stream: B::Stream) {
        let registration = {
            let st = self.lock();
            match st.streams.registration(stream) {
                Some(r) => r,
                None => return,
            }
        };
        // outside the lock: waiting may block for as long as the work runs
        let waited = match self.backend.record_event(stream) {
            Ok(e) => {
                self.backend.wait_event(&e);
                true
            }
            // a sync that may have skipped this stream proves nothing
            // (core:P2): the stream stays known, its blocks judged by events
            Err(_) => self.backend.synchronize().is_all(),
        };
        if !waited {
            return;
        }
        // no free may still be recording an event on it once this returns
        let mut st = self.lock_no_recording_on(stream);
        // only the registration waited for: another thread may have
        // forgotten it meanwhile, and the handle come back as a new stream
        if st.streams.registration(stream) != Some(registration) {
            return;
        }
        if let Some(slot) = st.streams.slot_of.remove(&stream) {
            // buffers handed out before now are freed through the lock; the
            // stream's blocks leave the shards before its slot is retired
            self.front.start_epoch(&mut *st);
            st.streams.last = None;
            if let Some(r) = st.streams.retired.get_mut(slot as usize) {
                *r = true;
            }
            st.forget_uses_on(slot);
            st.rehome_to_orphan(slot, stream);
            st.streams.reusable.push(slot);
        }
    }

    /// Stream slots the registry holds: streams alive, retired slots waiting
    /// for reuse, and (once a stream was forgotten) the one slot that keeps
    /// forgotten streams' blocks: at most the most streams ever alive at
    /// once, plus one.
    pub fn stream_slots(&self) -> usize {
        self.lock().streams.len()
    }

    /// Streams registered and not forgotten.
    pub fn stream_count(&self) -> usize {
        self.lock().streams.live()
    }

    /// Whether every event recorded now on the stream of `slot` has completed.
    /// (The probe event is dropped once the lock is released.)
    pub(crate) fn stream_idle(&self, st: &mut State<B>, slot: Slot) -> bool {
        if st.streams.is_retired(slot) {
            return true; // forgotten: its work was waited for then
        }
        let Some(s) = st.streams.handle(slot) else {
            return false;
        };
        let Ok(e) = self.backend.record_event(s) else {
            return false;
        };
        let idle = self.backend.event_done(&e);
        st.pending.spent.push(crate::pending::shared(e));
        idle
    }
}
