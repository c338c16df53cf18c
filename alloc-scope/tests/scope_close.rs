//! Closing a scope: what its record, its parent and its name's aggregate
//! hold once the last guard or handle is gone, for the ways a scope closes:
//! a request scope whose charges are still in the thread's batch when its
//! guard drops, one whose batch was applied part-way, one that leaves a block
//! behind, one whose handle outlives its guard, one opened with budgets and
//! marked failed and then recycled, and many threads closing scopes of one
//! name under one shared parent.
//!
//! Alone in its binary: it owns the registry, the root and the aggregates.

#![cfg(not(loom))]

use std::time::Duration;

use alloc_scope::{ScopeAggregate, ScopeBuilder, ScopeHandle, aggregate, flush, scope};

mod common;
use common::{alloc, free};

/// The tests of this binary one at a time: they read the registry's free
/// list (a slot's reuse) and the parent's counts.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn agg(name: &str) -> ScopeAggregate {
    aggregate(name).unwrap_or_default()
}

/// What one closed scope added to its name's aggregate: count, host
/// bytes, allocations, host peak (seen as the new max when it is the
/// largest so far, and through the sum), wall time.
fn added(before: &ScopeAggregate, after: &ScopeAggregate) -> (u64, u64, u64, u64) {
    (
        after.closed - before.closed,
        after.bytes_allocated - before.bytes_allocated,
        after.allocations - before.allocations,
        after.host_peak.sum - before.host_peak.sum,
    )
}

/// One request scope inside `parent` running `body`, with every figure its
/// close must report: (bytes allocated, allocations, host peak).
fn request_case(name: &str, body: impl FnOnce(), want: (u64, u64, u64)) {
    let before = agg(name);
    let g = scope(name);
    body();
    drop(g);
    let after = agg(name);
    assert_eq!(
        added(&before, &after),
        (1, want.0, want.1, want.2),
        "{name}: closed, bytes, allocations, peak sum added"
    );
    if want.2 > 0 {
        assert!(after.host_peak.max >= want.2, "{name}: {after:?}");
    }
}

/// The scopes both close tests open under their parent, one per state of
/// the batch at close (named `{tag}-…`): empty; one block; two at once (the
/// peak is their sum); more operations than a batch holds (part of the
/// figures in the record at close, the rest in the batch); the parent's
/// operations netting 0 in the batch at open (kept for both: "Deferred
/// batches"); with `after_peak`, a higher peak of the parent's in the batch
/// before the child (the parent keeps it, the child reports its own);
/// nested (the inner scope closes first, the outer one includes it).
fn batch_cases(tag: &str, after_peak: bool) {
    let name = |case: &str| format!("{tag}-{case}");
    request_case(&name("empty"), || {}, (0, 0, 0));
    request_case(
        &name("one"),
        || {
            let b = alloc(64);
            free(b);
        },
        (64, 1, 64),
    );
    request_case(
        &name("two"),
        || {
            let a = alloc(1000);
            let b = alloc(500);
            free(a);
            free(b);
        },
        (1500, 2, 1500),
    );
    request_case(
        &name("many"),
        || {
            for _ in 0..300 {
                let b = alloc(100);
                free(b);
            }
        },
        (30_000, 300, 100),
    );
    let p = alloc(4096);
    free(p);
    request_case(
        &name("deferred"),
        || {
            let b = alloc(7);
            free(b);
        },
        (7, 1, 7),
    );
    if after_peak {
        let p = alloc(9000);
        free(p);
        request_case(
            &name("after-peak"),
            || {
                let b = alloc(3);
                free(b);
            },
            (3, 1, 3),
        );
    }
    request_case(
        &name("outer"),
        || {
            let b = alloc(10);
            request_case(
                &name("inner"),
                || {
                    let c = alloc(20);
                    free(c);
                },
                (20, 1, 20),
            );
            free(b);
        },
        (30, 2, 30),
    );
}

#[test]
fn the_last_guard_reports_the_charges_still_in_the_batch_and_recycling_starts_from_zero() {
    let _one = one_at_a_time();
    let parent = ScopeBuilder::new("close-parent").build().unwrap();
    let _in = parent.enter();
    batch_cases("close", false);
    // The parent saw every child close and its highest peak, and holds
    // their charges once applied.
    flush();
    let s = parent.stats();
    assert_eq!(s.closed_children, 6, "{s:?}");
    assert_eq!(s.closed_children_peak_bytes, 1500, "{s:?}");
    assert_eq!(s.allocations, 1 + 2 + 300 + 1 + 1 + 2, "{s:?}");
    assert_eq!(
        s.bytes_allocated,
        64 + 1500 + 30_000 + 4096 + 7 + 30,
        "{s:?}"
    );
    assert_eq!(s.live_bytes, 0, "{s:?}");
    assert_eq!(s.peak_bytes, 4096, "{s:?}");

    // A scope with budgets, marked failed, that owned memory: the slot's
    // next scope starts from zero.
    let g = ScopeBuilder::new("close-budget")
        .hard_limit(1 << 20)
        .soft_limit(100)
        .enter()
        .unwrap();
    let slot = g.id().slot();
    let b = alloc(5000);
    free(b);
    g.mark_failed();
    drop(g);
    let g = scope("close-after");
    assert_eq!(g.id().slot(), slot, "the slot is reused");
    let s = g.stats();
    assert_eq!(
        (s.allocations, s.bytes_allocated, s.peak_bytes, s.frees),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(
        (
            s.hard_limit,
            s.soft_limit,
            s.soft_limit_exceeded_at,
            s.refused_allocations
        ),
        (None, None, None, 0),
        "{s:?}"
    );
    assert_eq!(s.closed_children, 0);
    drop(g);
    assert_eq!(agg("close-after").closed, 1);
    assert_eq!(agg("close-budget (failed)").closed, 1);
    assert_eq!(agg("close-budget").closed, 0);
}

#[test]
fn a_scope_that_keeps_a_block_or_a_handle_closes_when_the_last_reference_goes() {
    let _one = one_at_a_time();
    let parent = ScopeBuilder::new("keep-parent").build().unwrap();
    let _in = parent.enter();
    // A block left behind: the scope closes at its guard and retires at the
    // block's free; its figures at close include the block.
    let before = agg("keep-block");
    let g = scope("keep-block");
    let id = g.id();
    let kept = alloc(64);
    drop(g);
    assert_eq!(added(&before, &agg("keep-block")), (1, 64, 1, 64));
    assert!(alloc_scope::with_scope_name(id, |_| ()).is_some());
    free(kept);
    flush();
    assert!(alloc_scope::with_scope_name(id, |_| ()).is_none());
    // A handle that outlives the guard: closing waits for it, and the
    // figures made under the guard are the scope's.
    let before = agg("keep-handle");
    let g = scope("keep-handle");
    let h: ScopeHandle = g.handle();
    let b = alloc(300);
    free(b);
    drop(g);
    assert_eq!(agg("keep-handle").closed, before.closed, "still open");
    assert_eq!(h.stats().bytes_allocated, 300);
    let slot = h.id().slot();
    drop(h);
    assert_eq!(added(&before, &agg("keep-handle")), (1, 300, 1, 300));
    // Its figures were applied to its record (not closed alone): the
    // slot's next scope starts from zero all the same.
    let g = scope("keep-next");
    assert_eq!(g.id().slot(), slot, "the slot is reused");
    let s = g.stats();
    assert_eq!(
        (
            s.allocations,
            s.frees,
            s.bytes_allocated,
            s.bytes_freed,
            s.peak_bytes
        ),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
    drop(g);
    let s = parent.stats();
    assert_eq!(s.closed_children, 3, "{s:?}");
}

#[test]
fn the_wall_time_of_a_scope_is_the_time_it_was_open() {
    let _one = one_at_a_time();
    for (name, by_guard) in [("wall-guard", true), ("wall-handle", false)] {
        let before = agg(name);
        let t = std::time::Instant::now();
        if by_guard {
            let _g = scope(name);
            std::thread::sleep(Duration::from_millis(30));
        } else {
            let h = ScopeBuilder::new(name).build().unwrap();
            std::thread::sleep(Duration::from_millis(30));
            drop(h);
        }
        let outer = t.elapsed();
        let wall = agg(name).wall_time - before.wall_time;
        assert!(
            wall >= Duration::from_millis(30) && wall <= outer,
            "{name}: {wall:?} (slept 30 ms, {outer:?} around it)"
        );
    }
}

#[test]
fn threads_closing_scopes_under_one_parent_are_all_counted() {
    let _one = one_at_a_time();
    const THREADS: u64 = 4;
    const N: u64 = 5_000;
    let parent = ScopeBuilder::new("threads-parent").build().unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = parent.clone();
            std::thread::spawn(move || {
                let _in = p.enter();
                for i in 0..N {
                    let g = scope("threads-request");
                    let b = alloc((1 + t * N + i) as usize);
                    free(b);
                    drop(g);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let a = agg("threads-request");
    let n = THREADS * N;
    let sum: u64 = (1..=n).sum();
    assert_eq!(a.closed, n);
    assert_eq!(a.allocations, n);
    assert_eq!(a.bytes_allocated, sum);
    assert_eq!(a.host_peak.sum, sum);
    assert_eq!((a.host_peak.min, a.host_peak.max), (1, n));
    let s = parent.stats();
    assert_eq!(s.closed_children, n, "{s:?}");
    assert_eq!(s.closed_children_peak_bytes, n, "{s:?}");
    assert_eq!((s.allocations, s.bytes_allocated), (n, sum), "{s:?}");
}

#[test]
fn a_scope_opened_inside_untracked_charges_nothing_it_allocates() {
    let _one = one_at_a_time();
    let before = agg("untracked-inside");
    // Tracked first (this thread's first scope also sets up its batch).
    let g = scope("untracked-inside");
    let b = alloc(8);
    free(b);
    drop(g);
    assert_eq!(added(&before, &agg("untracked-inside")), (1, 8, 1, 8));
    alloc_scope::untracked(|| {
        let g = scope("untracked-inside");
        let b = alloc(4096);
        free(b);
        drop(g);
    });
    assert_eq!(added(&before, &agg("untracked-inside")), (2, 8, 1, 8));
}

/// Request scopes of one name opened and closed again and again, as a
/// server does: from the second on, a scope opens in the slot its
/// predecessor kept and closes with its name's aggregate entry cached,
/// the case the straight open and close paths serve. Each close reports
/// exactly what the first (general) one did, in every batch state the
/// first test covers, and the parent gets every child once.
#[test]
fn request_scopes_of_one_name_report_the_same_every_time() {
    let _one = one_at_a_time();
    let parent = ScopeBuilder::new("again-parent").build().unwrap();
    let _in = parent.enter();
    for _ in 0..4 {
        batch_cases("again", true);
    }
    flush();
    let s = parent.stats();
    assert_eq!(s.closed_children, 4 * 7, "{s:?}");
    assert_eq!(s.closed_children_peak_bytes, 1500, "{s:?}");
    assert_eq!(
        s.allocations,
        4 * (1 + 2 + 300 + 1 + 1 + 1 + 1 + 2),
        "{s:?}"
    );
    assert_eq!(
        s.bytes_allocated,
        4 * (64 + 1500 + 30_000 + 4096 + 7 + 9000 + 3 + 30),
        "{s:?}"
    );
    assert_eq!(s.live_bytes, 0, "{s:?}");
    assert_eq!(s.peak_bytes, 9000, "{s:?}");
    // Every slot those scopes used is free again: a scope opened now
    // takes the one the thread kept, and its figures start from zero.
    let g = scope("again-after");
    let st = g.stats();
    assert_eq!(
        (st.allocations, st.peak_bytes, st.closed_children),
        (0, 0, 0)
    );
    drop(g);
}

/// A request scope opened while its parent holds a block of its own in
/// the thread's batch (net live bytes not 0: the batch is applied at the
/// open, not kept for both), again and again: the parent's live bytes and
/// peak count the block and each child's, and each child reports only its
/// own.
#[test]
fn a_request_scope_opened_over_a_live_block_of_its_parent_reports_its_own() {
    let _one = one_at_a_time();
    let parent = ScopeBuilder::new("over-parent").build().unwrap();
    let _in = parent.enter();
    let mut kept = Vec::new();
    for i in 1..=4u64 {
        kept.push(alloc(300));
        request_case(
            "over-child",
            || {
                let b = alloc(5);
                free(b);
            },
            (5, 1, 5),
        );
        flush();
        let s = parent.stats();
        assert_eq!(s.live_bytes, 300 * i, "{s:?}");
        assert_eq!(s.peak_bytes, 300 * i + 5, "{s:?}");
        assert_eq!(s.allocations, 2 * i, "{s:?}");
    }
    kept.into_iter().for_each(free);
    flush();
    assert_eq!(parent.stats().live_bytes, 0);
}

/// A scope made a child of a scope other than the one its thread is in
/// (`child_of`), entered and closed again and again: its operations go to
/// its own parent's chain, never to the chain of the scope under its
/// guard on the thread's stack.
#[test]
fn a_scope_adopted_by_another_parent_is_charged_to_that_parent() {
    let _one = one_at_a_time();
    let home = ScopeBuilder::new("adopt-home").build().unwrap();
    let other = ScopeBuilder::new("adopt-other").build().unwrap();
    let _in = home.enter();
    for _ in 0..4 {
        let before = agg("adopted");
        let g = ScopeBuilder::new("adopted")
            .child_of(&other)
            .enter()
            .unwrap();
        let b = alloc(40);
        free(b);
        drop(g);
        assert_eq!(added(&before, &agg("adopted")), (1, 40, 1, 40));
    }
    flush();
    let (h, o) = (home.stats(), other.stats());
    assert_eq!((h.allocations, h.closed_children), (0, 0), "{h:?}");
    assert_eq!((o.allocations, o.bytes_allocated), (4, 160), "{o:?}");
    assert_eq!((o.closed_children, o.peak_bytes), (4, 40), "{o:?}");
}
