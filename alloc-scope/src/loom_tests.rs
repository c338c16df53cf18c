//! Loom models of the registry's concurrent protocols. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p alloc-scope --release --lib loom`.

use loom::sync::Arc;
use loom::thread;

use super::counters::{Counters, Delta};
use super::record::{FREE, REF};
use super::registry::Registry;
use super::sync::Ordering::Relaxed;

/// `Registry::retire_alone` and the parent's retirement it may leave.
fn retire_alone<const N: usize>(
    reg: &Registry<N>,
    slot: u32,
    r: &super::record::Record,
    host_peak: i64,
    keep: bool,
) {
    if let Some(p) = reg.retire_alone(slot, r, host_peak, keep) {
        reg.retire(p);
    }
}

/// scope:C1–scope:C3 under any interleaving of two batches: totals add up exactly and the
/// peak lies between the final live bytes and the sum of both high-water marks.
#[test]
fn loom_concurrent_batches_sum_exactly_and_bound_the_peak() {
    loom::model(|| {
        let c = Arc::new(Counters::new());
        let c2 = c.clone();
        let a = thread::spawn(move || {
            let mut d = Delta::EMPTY;
            d.alloc(100);
            d.free(100);
            c2.apply(&d);
        });
        let mut d = Delta::EMPTY;
        d.alloc(50);
        c.apply(&d);
        a.join().unwrap();
        let v = c.read();
        assert_eq!(v.allocations, 2);
        assert_eq!(v.frees, 1);
        assert_eq!(v.live_bytes, 50);
        assert_eq!(v.live_bytes, (v.bytes_allocated - v.bytes_freed) as i64);
        assert!(
            v.peak_bytes >= 100 && v.peak_bytes <= 150,
            "peak {}",
            v.peak_bytes
        );
    });
}

/// scope:R1: the last handle dropping and the last owned allocation being freed race;
/// exactly one of them retires the slot, which goes back on the free list once.
#[test]
fn loom_a_record_retires_exactly_once() {
    loom::model(|| {
        let reg = Arc::new(Registry::<5>::new());
        let slot = reg.take_slot().unwrap();
        let r = reg.record(slot).unwrap();
        r.reset(Some(0), 1, 0);
        r.meta.0.life.fetch_add(1, Relaxed); // one live allocation
        let reg2 = reg.clone();
        let t = thread::spawn(move || reg2.release_ref(slot, 1));
        reg.adjust_life(slot, -1);
        t.join().unwrap();
        let r = reg.record(slot).unwrap();
        assert_eq!(r.meta.0.state.load(Relaxed), FREE);
        assert_eq!(r.meta.0.life.load(Relaxed), 0);
        assert_eq!(
            reg.record(0).unwrap().meta.0.closed_children.load(Relaxed),
            1
        );
        // On the free list exactly once: the next take returns it, the one after
        // bumps to the other slot, and then the registry is full.
        assert_eq!(reg.take_slot(), Some(slot));
        assert_ne!(reg.take_slot(), Some(slot));
        assert_eq!(reg.take_slot(), None);
    });
}

/// scope:G1: two threads taking slots while a third returns one never get the same
/// slot.
#[test]
fn loom_free_list_never_hands_one_slot_to_two_owners() {
    loom::model(|| {
        let reg = Arc::new(Registry::<5>::new());
        let s0 = reg.take_slot().unwrap();
        let s1 = reg.take_slot().unwrap();
        reg.put_slot(s0);
        let (ra, rb) = (reg.clone(), reg.clone());
        let a = thread::spawn(move || ra.take_slot());
        let b = thread::spawn(move || {
            rb.put_slot(s1);
            rb.take_slot()
        });
        let (x, y) = (a.join().unwrap(), b.join().unwrap());
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_ne!(x, y);
        assert!([s0, s1].contains(&x) && [s0, s1].contains(&y));
    });
}

/// A child holds a reference on its parent (scope:R2): the parent retires only after
/// both its own handle and the child are gone, whichever goes last.
#[test]
fn loom_a_parent_outlives_its_child() {
    loom::model(|| {
        let reg = Arc::new(Registry::<5>::new());
        let parent = reg.take_slot().unwrap();
        reg.record(parent).unwrap().reset(Some(0), 1, 0);
        let child = reg.take_slot().unwrap();
        reg.record(child).unwrap().reset(Some(parent), 2, 0);
        reg.record(parent)
            .unwrap()
            .meta
            .0
            .life
            .fetch_add(REF, Relaxed);
        let reg2 = reg.clone();
        let t = thread::spawn(move || reg2.release_ref(child, 1));
        reg.release_ref(parent, 1);
        t.join().unwrap();
        for s in [parent, child] {
            assert_eq!(reg.record(s).unwrap().meta.0.state.load(Relaxed), FREE);
        }
    });
}

/// Opens a scope under the root (one reference) that owns one live block
/// of 100 B; its slot and generation.
fn open_owning_100_bytes(reg: &Registry<5>) -> (u32, u32) {
    let s = reg.take_slot().unwrap();
    let r = reg.record(s).unwrap();
    r.reset(Some(0), 1, 0);
    let generation = r.meta.0.generation.fetch_add(1, Relaxed) + 1;
    let mut d = Delta::EMPTY;
    d.alloc(100);
    reg.apply_batch(s, &d, false);
    (s, generation)
}

/// scope:R4: a free racing with the recycling of its closed owner lands exactly once,
/// on the owner or on `retired`, never on the slot's next scope.
#[test]
fn loom_a_recycled_slot_never_takes_a_stale_charge() {
    use super::ScopeId;
    use super::registry::RETIRED;
    loom::model(|| {
        let reg = Arc::new(Registry::<5>::new());
        let (s, generation) = open_owning_100_bytes(&reg);
        reg.release_ref(s, 1); // closed, still owning it
        let other = reg.take_slot().unwrap(); // the registry is now full
        reg.record(other).unwrap().reset(Some(0), 1, 0);
        let reg2 = reg.clone();
        let t = thread::spawn(move || {
            let mut f = Delta::EMPTY;
            f.free(100);
            reg2.charge_owner(ScopeId::new(s, generation), &f, false);
        });
        let again = reg.take_slot();
        t.join().unwrap();
        // None only while the free's retirement of `s` was in flight; then
        // the slot is on the free list, once.
        let again = again.or_else(|| reg.take_slot());
        assert_eq!(again, Some(s));
        assert_eq!(reg.take_slot(), None, "a slot handed out twice");
        let root = reg.record(0).unwrap().host.0.read();
        let retired = reg.record(RETIRED).unwrap().host.0.read();
        assert_eq!(root.live_bytes, 0, "root {root:?}");
        assert_eq!(retired.live_bytes, 0, "retired {retired:?}");
        assert_eq!(root.allocations - root.frees, 0);
    });
}

/// scope:R1 with the close of a scope's only reference (`alone`, then
/// `retire_alone`, else the ordinary release) racing the free of its last
/// block from another thread: the slot retires exactly once, whichever
/// comes last, and goes back on the free list once.
#[test]
fn loom_a_scope_closes_alone_only_when_nothing_else_reaches_it() {
    use super::ScopeId;
    loom::model(|| {
        let reg = Arc::new(Registry::<5>::new());
        let (s, generation) = open_owning_100_bytes(&reg);
        let reg2 = reg.clone();
        let t = thread::spawn(move || {
            let mut f = Delta::EMPTY;
            f.free(100);
            reg2.charge_owner(ScopeId::new(s, generation), &f, false);
        });
        match reg.alone(s) {
            Some(r) => retire_alone(&reg, s, r, 100, false),
            None => reg.release_ref(s, 1),
        }
        t.join().unwrap();
        let r = reg.record(s).unwrap();
        assert_eq!(r.meta.0.state.load(Relaxed), FREE);
        assert_eq!(r.meta.0.life.load(Relaxed), 0);
        let root = &reg.record(0).unwrap().meta.0;
        assert_eq!(root.closed_children.load(Relaxed), 1);
        assert_eq!(root.closed_children_peak.load(Relaxed), 100);
        assert_eq!(reg.take_slot(), Some(s));
        assert_ne!(reg.take_slot(), Some(s), "a slot handed out twice");
        assert_eq!(reg.take_slot(), None);
    });
}

/// Two references of one scope dropped at once on two threads, each
/// closing alone when it finds itself the last: one closes, exactly once.
#[test]
fn loom_two_last_references_close_a_scope_once() {
    loom::model(|| {
        let reg = Arc::new(Registry::<5>::new());
        let parent = reg.take_slot().unwrap();
        reg.record(parent).unwrap().reset(Some(0), 1, 0);
        let s = reg.take_slot().unwrap();
        let r = reg.record(s).unwrap();
        r.reset(Some(parent), 2, 0);
        r.meta.0.refs.fetch_add(1, Relaxed);
        r.meta.0.life.fetch_add(REF, Relaxed); // a second handle
        reg.record(parent)
            .unwrap()
            .meta
            .0
            .life
            .fetch_add(REF, Relaxed); // the child's reference
        let close = move |reg: &Registry<5>| match reg.alone(s) {
            Some(r) => retire_alone(reg, s, r, 0, false),
            None => reg.release_ref(s, 1),
        };
        let reg2 = reg.clone();
        let t = thread::spawn(move || close(&reg2));
        close(&reg);
        t.join().unwrap();
        assert_eq!(reg.record(s).unwrap().meta.0.state.load(Relaxed), FREE);
        let p = &reg.record(parent).unwrap().meta.0;
        assert_eq!(p.closed_children.load(Relaxed), 1);
        assert_eq!(p.life.load(Relaxed), REF, "the parent keeps its own");
        assert_eq!(reg.take_slot(), Some(s));
        assert_eq!(reg.take_slot(), None, "a slot handed out twice");
    });
}

/// scope:G1 with a slot kept by the thread that closed its scope alone:
/// that thread claiming it and another thread, with no other slot left,
/// taking it, never both get it, and one of them does.
#[test]
fn loom_a_kept_slot_goes_to_one_claimant() {
    loom::model(|| {
        let reg = Arc::new(Registry::<5>::new());
        let s = reg.take_slot().unwrap();
        let other = reg.take_slot().unwrap(); // the registry is now full
        reg.record(other).unwrap().reset(Some(0), 1, 0);
        let r = reg.record(s).unwrap();
        r.reset(Some(0), 1, 0);
        retire_alone(&reg, s, reg.alone(s).unwrap(), 0, true);
        let reg2 = reg.clone();
        let t = thread::spawn(move || reg2.take_slot());
        let mine = reg.claim_kept(s).is_some();
        let theirs = t.join().unwrap();
        assert!(mine != (theirs == Some(s)), "kept {mine}, taken {theirs:?}");
        assert!(theirs.is_none() || theirs == Some(s));
        assert!(reg.claim_kept(s).is_none(), "claimed twice");
        assert_eq!(reg.take_slot(), None, "a slot handed out twice");
    });
}
