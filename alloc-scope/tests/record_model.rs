//! The oracle of scope records: long random programs of scope opens and
//! closes (guards dropped in any order, handles kept, entered again and
//! dropped later, scopes marked failed, hard budgets), host and device
//! charges and frees from any scope, run against an independent model of the
//! records (ids, generations, the life of a record, its figures). Slots are
//! reused thousands of times, so a field that a reused record does not start
//! from zero, or a figure recorded at the wrong moment, shows.
//!
//! Checked after every step: every figure of every open scope
//! (`ScopeHandle::stats`), the process root, and every per-name aggregate of
//! closed scopes (count, totals, both peak distributions in full). Checked for
//! every scope that retired: its id no longer names a scope
//! (`with_scope_name`), and once its slot holds a new scope, its compact id
//! does not name the new one (`owner_from_compact`).
//!
//! Alone in its binary: it owns the registry, the root and the aggregates.

#![cfg(not(loom))]

use std::collections::{BTreeMap, HashMap};

use alloc_scope::{
    PeakSummary, ScopeBuilder, ScopeGuard, ScopeHandle, ScopeId, ScopeStats, aggregates,
    charge_device_alloc, charge_device_free, charge_host_free_compact, owner_from_compact,
    process_stats, scope, track_host_alloc, with_scope_name,
};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Names: one word stored, two words, the longest kept, and one cut.
const NAMES: [&str; 4] = [
    "request",
    "model-stage",
    "a-name-of-sixty-three-bytes-that-fills-the-stored-form-exactly-",
    "a name longer than sixty-three bytes, stored cut to sixty-three of them",
];

/// The figures one scope reports for one kind of memory.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Counts {
    allocations: u64,
    frees: u64,
    bytes_allocated: u64,
    bytes_freed: u64,
    live: u64,
    peak: u64,
}

impl Counts {
    fn alloc(&mut self, b: u64) {
        self.allocations += 1;
        self.bytes_allocated += b;
        self.live += b;
        self.peak = self.peak.max(self.live);
    }
    fn free(&mut self, b: u64) {
        self.frees += 1;
        self.bytes_freed += b;
        self.live -= b;
    }
}

/// The model of one scope (index 0 is the process root).
struct Model {
    id: ScopeId,
    name: usize,
    parent: Option<usize>,
    depth: u32,
    host: Counts,
    device: Counts,
    /// Guards and handles of this scope the program holds.
    refs: u32,
    /// Children that have not retired.
    children: u32,
    closed: bool,
    retired: bool,
    failed: bool,
    hard: Option<u64>,
    soft: Option<u64>,
    /// The highest live bytes seen above `soft`; 0 while never above.
    soft_exceeded: u64,
    refused: u64,
    closed_children: u64,
    closed_children_peak: u64,
    closed_children_device_peak: u64,
}

/// One name's aggregate, as the model computes it.
#[derive(Default)]
struct Agg {
    closed: u64,
    host_peak: PeakSummary,
    device_peak: PeakSummary,
    bytes_allocated: u64,
    allocations: u64,
    device_bytes_allocated: u64,
}

struct Block {
    owner: usize,
    compact: u32,
    bytes: u64,
}

struct DeviceBlock {
    owner: usize,
    id: ScopeId,
    bytes: u64,
}

#[derive(Default)]
struct World {
    scopes: Vec<Model>,
    /// Guards in the order they were entered, with their scope.
    guards: Vec<(ScopeGuard, usize)>,
    handles: Vec<(ScopeHandle, usize)>,
    host: Vec<Block>,
    device: Vec<DeviceBlock>,
    aggs: BTreeMap<String, Agg>,
    /// Retired scopes: (id, compact id).
    stale: Vec<(ScopeId, u32)>,
    /// Slot → the model scope now in it.
    in_slot: HashMap<u32, usize>,
    retired_count: u64,
    reused_count: u64,
}

fn agg_name(name: &str, failed: bool) -> String {
    let stored = cut(name, 63);
    if failed {
        let base = cut(stored, 63 - " (failed)".len());
        format!("{base} (failed)")
    } else {
        stored.to_owned()
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Model {
    /// A scope just opened: no charges, one reference (its guard).
    fn opened(
        id: ScopeId,
        name: usize,
        parent: Option<usize>,
        depth: u32,
        hard: Option<u64>,
        soft: Option<u64>,
    ) -> Model {
        Model {
            id,
            name,
            parent,
            depth,
            host: Counts::default(),
            device: Counts::default(),
            refs: 1,
            children: 0,
            closed: false,
            retired: false,
            failed: false,
            hard,
            soft,
            soft_exceeded: 0,
            refused: 0,
            closed_children: 0,
            closed_children_peak: 0,
            closed_children_device_peak: 0,
        }
    }
}

impl World {
    fn new() -> World {
        let mut w = World::default();
        w.scopes
            .push(Model::opened(ScopeId::ROOT, 0, None, 0, None, None));
        w
    }

    fn current(&self) -> usize {
        self.guards.last().map_or(0, |g| g.1)
    }

    fn chain(&self, from: usize) -> Vec<usize> {
        let mut v = vec![from];
        let mut cur = from;
        while let Some(p) = self.scopes[cur].parent {
            v.push(p);
            cur = p;
        }
        v
    }

    fn open(&mut self, r: &mut Rng) {
        self.open_with(r, None, None);
    }

    /// A scope with a hard budget, sometimes a soft one below it, used and
    /// left at once (its chain charges unbatched while the thread is in it):
    /// allocations, some refused, some past the soft budget.
    fn budget_request(&mut self, r: &mut Rng) {
        let open = self.guards.len();
        let hard = 1 + r.below(20_000);
        let soft = (r.below(2) == 0).then(|| 1 + r.below(hard));
        self.open_with(r, Some(hard), soft);
        if self.guards.len() <= open {
            return;
        }
        for _ in 0..r.below(6) {
            self.host_alloc(r);
        }
        self.churn(r);
        let (g, s) = self.guards.pop().expect("just opened");
        drop(g);
        self.release(s);
    }

    fn open_with(&mut self, r: &mut Rng, hard: Option<u64>, soft: Option<u64>) {
        if self.guards.len() >= 12 {
            return self.drop_guard(r);
        }
        let name = r.below(NAMES.len() as u64) as usize;
        let parent = self.current();
        let guard = match (hard, soft) {
            (None, None) => scope(NAMES[name]),
            _ => {
                let mut b = ScopeBuilder::new(NAMES[name]);
                if let Some(h) = hard {
                    b = b.hard_limit(h);
                }
                if let Some(s) = soft {
                    b = b.soft_limit(s);
                }
                b.enter().expect("positive budgets, soft below hard")
            }
        };
        assert!(!guard.is_fallback(), "the registry is far from full");
        let id = guard.id();
        let i = self.scopes.len();
        if let Some(&old) = self.in_slot.get(&id.slot()) {
            assert!(
                self.scopes[old].retired,
                "slot {} reused while in use",
                id.slot()
            );
            assert_ne!(
                self.scopes[old].id, id,
                "a reused slot has a new generation"
            );
            self.reused_count += 1;
        }
        self.in_slot.insert(id.slot(), i);
        let depth = self.scopes[parent].depth + 1;
        self.scopes[parent].children += 1;
        self.scopes
            .push(Model::opened(id, name, Some(parent), depth, hard, soft));
        if r.below(3) == 0 {
            self.handles.push((guard.handle(), i));
            self.scopes[i].refs += 1;
        }
        self.guards.push((guard, i));
    }

    fn host_alloc(&mut self, r: &mut Rng) {
        self.host_alloc_bytes(1 + r.below(5000));
    }

    fn host_alloc_bytes(&mut self, bytes: u64) {
        let owner = self.current();
        let chain = self.chain(owner);
        let refuser = chain.iter().copied().find(|&s| {
            self.scopes[s]
                .hard
                .is_some_and(|h| self.scopes[s].host.live + bytes > h)
        });
        let mut compact = None;
        // SAFETY: a stand-in for a global allocator: the block is a marker,
        // never dereferenced; its free below passes the id and size kept.
        let p = unsafe {
            track_host_alloc(bytes as usize, |id| {
                compact = Some(id);
                (core::ptr::NonNull::<u8>::dangling().as_ptr(), true)
            })
        };
        match refuser {
            Some(s) => {
                assert!(p.is_null(), "allocation of {bytes} B past a hard budget");
                assert!(
                    compact.is_none(),
                    "a refused allocation never reaches the allocator"
                );
                self.scopes[s].refused += 1;
            }
            None => {
                assert!(
                    !p.is_null(),
                    "allocation of {bytes} B within budgets refused"
                );
                for &s in &chain {
                    let m = &mut self.scopes[s];
                    m.host.alloc(bytes);
                    if m.soft.is_some_and(|soft| m.host.live > soft) {
                        m.soft_exceeded = m.soft_exceeded.max(m.host.live);
                    }
                }
                self.host.push(Block {
                    owner,
                    compact: compact.expect("the allocator ran"),
                    bytes,
                });
            }
        }
    }

    /// A request's pattern: blocks allocated and freed again in the current
    /// scope, so that the thread's pending charges net to zero bytes.
    fn churn(&mut self, r: &mut Rng) {
        let n = 1 + r.below(3) as usize;
        let before = self.host.len();
        for _ in 0..n {
            self.host_alloc(r);
        }
        while self.host.len() > before {
            let i = self.host.len() - 1;
            self.free_at(i);
        }
    }

    /// A request inside the current scope, with no check (which flushes)
    /// between its steps: charges that net to zero, a scope opened, work in
    /// it (sometimes leaving a block, sometimes reading figures, which
    /// applies the pending charges), and its guard dropped.
    fn request(&mut self, r: &mut Rng, step: usize) {
        // One or two children in a row, nothing applied in between.
        for _ in 0..1 + r.below(2) {
            self.child(r, step);
        }
    }

    fn child(&mut self, r: &mut Rng, step: usize) {
        self.churn(r);
        // Sometimes the pending charges do not net to zero.
        match r.below(6) {
            0 => self.host_alloc(r),
            1 => {
                let cur = self.current();
                if let Some(i) = self.host.iter().rposition(|b| b.owner == cur) {
                    self.free_at(i);
                }
            }
            _ => {}
        }
        let open = self.guards.len();
        // Mostly a new child; sometimes a scope entered again through a
        // handle (the current one, an ancestor, or one on another branch).
        if r.below(4) == 0 {
            self.enter_handle(r);
        } else {
            self.open(r);
        }
        if self.guards.len() <= open {
            return;
        }
        match r.below(6) {
            0 => {}
            1 => self.host_alloc(r),
            2 => {
                self.churn(r);
                self.check(step);
            }
            3 => self.device_alloc(r),
            _ => self.churn(r),
        }
        let (g, s) = self.guards.pop().expect("just opened");
        drop(g);
        self.release(s);
    }

    fn host_free(&mut self, r: &mut Rng) {
        if self.host.is_empty() {
            return;
        }
        self.free_at(r.below(self.host.len() as u64) as usize);
    }

    fn free_at(&mut self, i: usize) {
        let b = self.host.swap_remove(i);
        // SAFETY: the id and size this block was charged with, freed once.
        unsafe { charge_host_free_compact(b.compact, b.bytes as usize) };
        for s in self.chain(b.owner) {
            self.scopes[s].host.free(b.bytes);
        }
        self.maybe_retire(b.owner);
    }

    fn device_alloc(&mut self, r: &mut Rng) {
        let bytes = 1 + r.below(1 << 20);
        let owner = self.current();
        let id = charge_device_alloc(bytes);
        assert_eq!(
            id, self.scopes[owner].id,
            "the device owner is the current scope"
        );
        for s in self.chain(owner) {
            self.scopes[s].device.alloc(bytes);
        }
        self.device.push(DeviceBlock { owner, id, bytes });
    }

    fn device_free(&mut self, r: &mut Rng) {
        if self.device.is_empty() {
            return;
        }
        let b = self
            .device
            .swap_remove(r.below(self.device.len() as u64) as usize);
        charge_device_free(b.id, b.bytes);
        for s in self.chain(b.owner) {
            self.scopes[s].device.free(b.bytes);
        }
        self.maybe_retire(b.owner);
    }

    fn drop_guard(&mut self, r: &mut Rng) {
        if self.guards.is_empty() {
            return;
        }
        // Mostly the newest, sometimes any.
        let i = if r.below(3) == 0 {
            r.below(self.guards.len() as u64) as usize
        } else {
            self.guards.len() - 1
        };
        let (g, s) = self.guards.remove(i);
        drop(g);
        self.release(s);
    }

    fn drop_handle(&mut self, r: &mut Rng) {
        if self.handles.is_empty() {
            return;
        }
        let (h, s) = self
            .handles
            .swap_remove(r.below(self.handles.len() as u64) as usize);
        drop(h);
        self.release(s);
    }

    fn enter_handle(&mut self, r: &mut Rng) {
        if self.handles.is_empty() || self.guards.len() >= 12 {
            return;
        }
        let (h, s) = &self.handles[r.below(self.handles.len() as u64) as usize];
        let s = *s;
        let g = h.enter();
        self.scopes[s].refs += 1;
        self.guards.push((g, s));
    }

    fn mark_failed(&mut self, r: &mut Rng) {
        if self.guards.is_empty() {
            return;
        }
        let (g, s) = &self.guards[r.below(self.guards.len() as u64) as usize];
        g.mark_failed();
        self.scopes[*s].failed = true;
    }

    fn release(&mut self, s: usize) {
        let m = &mut self.scopes[s];
        m.refs -= 1;
        if m.refs > 0 {
            return;
        }
        m.closed = true;
        let a = self
            .aggs
            .entry(agg_name(NAMES[m.name], m.failed))
            .or_default();
        a.closed += 1;
        a.host_peak.add(m.host.peak);
        a.device_peak.add(m.device.peak);
        a.bytes_allocated += m.host.bytes_allocated;
        a.allocations += m.host.allocations;
        a.device_bytes_allocated += m.device.bytes_allocated;
        self.maybe_retire(s);
    }

    /// A record retires when its scope is closed, owns nothing and has no
    /// child left; then its parent counts it and may retire in turn.
    fn maybe_retire(&mut self, mut s: usize) {
        loop {
            let m = &self.scopes[s];
            let owns = m.host.allocations != m.host.frees || m.device.allocations != m.device.frees;
            if s == 0 || !m.closed || m.retired || owns || m.children > 0 {
                return;
            }
            let (peak, dpeak, id) = (m.host.peak, m.device.peak, m.id);
            self.scopes[s].retired = true;
            self.retired_count += 1;
            self.stale.push((id, id.to_compact()));
            let p = self.scopes[s].parent.expect("not the root");
            let pm = &mut self.scopes[p];
            pm.children -= 1;
            pm.closed_children += 1;
            pm.closed_children_peak = pm.closed_children_peak.max(peak);
            pm.closed_children_device_peak = pm.closed_children_device_peak.max(dpeak);
            s = p;
        }
    }

    fn check_stats(&self, what: &str, got: &ScopeStats, m: &Model) {
        let want = (
            m.host.allocations,
            m.host.frees,
            m.host.bytes_allocated,
            m.host.bytes_freed,
            m.host.live,
            m.host.peak,
            m.host.allocations - m.host.frees,
        );
        let have = (
            got.allocations,
            got.frees,
            got.bytes_allocated,
            got.bytes_freed,
            got.live_bytes,
            got.peak_bytes,
            got.live_allocations,
        );
        assert_eq!(
            have, want,
            "{what}: host (allocations, frees, bytes allocated, bytes freed, live, peak, live allocations)"
        );
        let d = &got.device;
        let want = (
            m.device.allocations,
            m.device.frees,
            m.device.bytes_allocated,
            m.device.bytes_freed,
            m.device.live,
            m.device.peak,
        );
        let have = (
            d.allocations,
            d.frees,
            d.bytes_allocated,
            d.bytes_freed,
            d.live_bytes,
            d.peak_bytes,
        );
        assert_eq!(
            have, want,
            "{what}: device (allocations, frees, bytes allocated, bytes freed, live, peak)"
        );
        assert_eq!(got.reallocs, 0, "{what}: reallocs");
        assert_eq!(
            (
                got.closed_children,
                got.closed_children_peak_bytes,
                got.closed_children_device_peak_bytes
            ),
            (
                m.closed_children,
                m.closed_children_peak,
                m.closed_children_device_peak
            ),
            "{what}: closed children (count, host peak, device peak)"
        );
    }

    fn check(&self, step: usize) {
        for (h, s) in &self.handles {
            let m = &self.scopes[*s];
            let what = format!("step {step}: scope {s} ({:?})", m.id);
            let got = h.stats();
            assert_eq!(got.id, m.id.to_bits(), "{what}: id");
            assert_eq!(got.name, cut(NAMES[m.name], 63), "{what}: name");
            assert!(got.open, "{what}: open");
            assert_eq!(got.depth, m.depth, "{what}: depth");
            assert_eq!(got.hard_limit, m.hard, "{what}: hard limit");
            assert_eq!(got.soft_limit, m.soft, "{what}: soft limit");
            assert_eq!(
                got.soft_limit_exceeded_at,
                (m.soft_exceeded != 0).then_some(m.soft_exceeded),
                "{what}: soft limit exceeded"
            );
            assert_eq!(got.refused_allocations, m.refused, "{what}: refused");
            self.check_stats(&what, &got, m);
        }
        for (g, s) in &self.guards {
            let m = &self.scopes[*s];
            let what = format!("step {step}: guard of scope {s} ({:?})", m.id);
            assert_eq!(g.id(), m.id, "{what}: id");
            self.check_stats(&what, &g.stats(), m);
            assert_eq!(g.stats().refused_allocations, m.refused, "{what}: refused");
        }
        let root = &self.scopes[0];
        self.check_stats(&format!("step {step}: root"), &process_stats(), root);
        let got: BTreeMap<String, _> = aggregates()
            .into_iter()
            .map(|a| (a.name.clone(), a))
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            self.aggs.keys().collect::<Vec<_>>(),
            "step {step}: aggregate names"
        );
        for (name, want) in &self.aggs {
            let a = &got[name];
            let what = format!("step {step}: aggregate `{name}`");
            assert_eq!(a.closed, want.closed, "{what}: closed");
            assert_eq!(a.host_peak, want.host_peak, "{what}: host peaks");
            assert_eq!(a.device_peak, want.device_peak, "{what}: device peaks");
            assert_eq!(
                (a.bytes_allocated, a.allocations, a.device_bytes_allocated),
                (
                    want.bytes_allocated,
                    want.allocations,
                    want.device_bytes_allocated
                ),
                "{what}: totals (bytes allocated, allocations, device bytes allocated)"
            );
        }
        for &(id, compact) in self.stale.iter().rev().take(64) {
            assert_eq!(
                with_scope_name(id, |n| n.to_owned()),
                None,
                "step {step}: retired scope {id:?} still has a name"
            );
            if let Some(&now) = self.in_slot.get(&id.slot()) {
                let now = &self.scopes[now];
                if now.id != id && !now.retired {
                    assert_ne!(
                        owner_from_compact(compact),
                        now.id,
                        "step {step}: the compact id of retired {id:?} names {:?}, the slot's new scope",
                        now.id
                    );
                }
            }
        }
    }
}

#[test]
fn records_report_what_an_independent_model_of_scopes_computes() {
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let mut w = World::new();
    // First, one sequence that random programs reach too rarely: a child
    // keeps a block while its parent frees one of the same size, so that the
    // thread's pending charges net to zero bytes but not to zero blocks of
    // the parent, and then another child is entered and left.
    let sized = |w: &mut World, bytes| w.host_alloc_bytes(bytes);
    w.open_with(&mut r, None, None); // the parent
    let parent = w.guards.len() - 1;
    sized(&mut w, 100); // the parent's block
    w.check(0);
    sized(&mut w, 7);
    let last = w.host.len() - 1;
    w.free_at(last); // pending: net zero
    w.open_with(&mut r, None, None); // a child
    sized(&mut w, 100); // kept by the child
    let (g, s) = w.guards.pop().expect("the child");
    drop(g);
    w.release(s);
    let first = w.host.iter().position(|b| b.owner == w.guards[parent].1);
    w.free_at(first.expect("the parent's block"));
    w.open_with(&mut r, None, None); // another child
    w.check(0); // the pending charges applied while in it
    let (g, s) = w.guards.pop().expect("the second child");
    drop(g);
    w.release(s);
    w.check(0);
    while let Some(i) = w.host.len().checked_sub(1) {
        w.free_at(i);
    }
    let (g, s) = w.guards.pop().expect("the parent");
    drop(g);
    w.release(s);
    w.check(0);
    // Fewer steps unoptimized (a test run), every step checks everything.
    const STEPS: usize = if cfg!(debug_assertions) {
        5_000
    } else {
        30_000
    };
    for step in 0..STEPS {
        match r.below(100) {
            0..=17 => w.open(&mut r),
            18..=31 => w.drop_guard(&mut r),
            32..=35 => w.drop_handle(&mut r),
            36..=39 => w.enter_handle(&mut r),
            40..=45 => w.host_alloc(&mut r),
            46..=49 => w.budget_request(&mut r),
            50..=54 => w.churn(&mut r),
            55..=72 => w.request(&mut r, step),
            73..=82 => w.host_free(&mut r),
            83..=87 => w.device_alloc(&mut r),
            88..=95 => w.device_free(&mut r),
            _ => w.mark_failed(&mut r),
        }
        w.check(step);
    }
    // Close everything: every scope retires once it owns nothing.
    while let Some((g, s)) = w.guards.pop() {
        drop(g);
        w.release(s);
    }
    while let Some((h, s)) = w.handles.pop() {
        drop(h);
        w.release(s);
    }
    while !w.host.is_empty() {
        w.host_free(&mut r);
    }
    while !w.device.is_empty() {
        w.device_free(&mut r);
    }
    w.check(STEPS);
    assert!(
        w.scopes[1..].iter().all(|m| m.retired),
        "every scope retired"
    );
    assert!(w.retired_count > 1000, "{} scopes retired", w.retired_count);
    assert!(w.reused_count > 1000, "{} slots reused", w.reused_count);
}
