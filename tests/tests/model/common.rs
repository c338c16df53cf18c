// The model-based oracle shared by host_model.rs (an inner allocator that
// refuses on demand, owners in headers) and host_model_mimalloc.rs (mimalloc,
// owners by size class: slack and side table). Included with `include!`.

#[derive(Clone, Debug)]
enum Op {
    /// Open a scope in the current one (with a hard limit, and keeping a handle
    /// so it stays open after its guard drops, when asked).
    Open {
        limit: Option<u64>,
        keep_handle: bool,
    },
    /// Drop the `i % n`-th live guard, wherever it is in the stack.
    Drop {
        i: usize,
    },
    Alloc {
        size: usize,
        align_log2: u8,
        zeroed: bool,
        refuse: bool,
    },
    /// A request no allocator grants.
    AllocHuge,
    /// A live block grown to a size no allocator grants: refused, the block
    /// keeps its contents and its owner.
    ReallocHuge {
        i: usize,
    },
    Free {
        i: usize,
    },
    Realloc {
        i: usize,
        size: usize,
        refuse: bool,
    },
    Tracking {
        on: bool,
    },
    /// On a new thread, enter the `i % n`-th scope that can be entered, make
    /// `allocs` allocations, free `frees` of them, and exit: dropping the
    /// guard, or still holding it (forgotten) when the thread ends.
    Thread {
        i: usize,
        allocs: Vec<usize>,
        frees: usize,
        forget_guard: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (proptest::option::weighted(0.3, 1u64..200_000), any::<bool>())
            .prop_map(|(limit, keep_handle)| Op::Open { limit, keep_handle }),
        2 => any::<usize>().prop_map(|i| Op::Drop { i }),
        8 => (1usize..70_000, 0u8..13, any::<bool>(), proptest::bool::weighted(0.1))
            .prop_map(|(size, align_log2, zeroed, refuse)| Op::Alloc { size, align_log2, zeroed, refuse }),
        1 => Just(Op::AllocHuge),
        1 => any::<usize>().prop_map(|i| Op::ReallocHuge { i }),
        5 => any::<usize>().prop_map(|i| Op::Free { i }),
        3 => (any::<usize>(), 1usize..140_000, proptest::bool::weighted(0.1))
            .prop_map(|(i, size, refuse)| Op::Realloc { i, size, refuse }),
        1 => any::<bool>().prop_map(|on| Op::Tracking { on }),
        1 => (any::<usize>(), proptest::collection::vec(1usize..5000, 0..20), 0usize..20, any::<bool>())
            .prop_map(|(i, allocs, frees, forget_guard)| Op::Thread { i, allocs, frees, forget_guard }),
    ]
}

/// The model's figures of one scope (its subtree), as ScopeStats names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Fig {
    allocations: u64,
    frees: u64,
    reallocs: u64,
    bytes_allocated: u64,
    bytes_freed: u64,
    live_bytes: u64,
    peak_bytes: u64,
    refused: u64,
}

struct MScope {
    parent: Option<usize>,
    limit: Option<u64>,
    fig: Fig,
    id: u64,
    handle: Option<ScopeHandle>,
    /// Guard dropped and no handle kept.
    closed: bool,
    /// A forgotten guard keeps it open.
    pinned: bool,
}

struct Block {
    ptr: usize,
    layout: Layout,
    owner: Option<usize>,
}

#[derive(Default)]
struct Model {
    scopes: Vec<MScope>,
    /// (guard, model scope), oldest first: the real thread's guard stack.
    guards: Vec<(ScopeGuard, usize)>,
    blocks: Vec<Block>,
    tracking: bool,
}

impl Model {
    fn current(&self) -> Option<usize> {
        self.guards.last().map(|g| g.1)
    }

    fn chain(&self, s: Option<usize>) -> Vec<usize> {
        let mut v = Vec::new();
        let mut cur = s;
        while let Some(i) = cur {
            v.push(i);
            cur = self.scopes[i].parent;
        }
        v
    }

    /// The first scope up `owner`'s chain whose limit `grow` more bytes exceed.
    fn refuser(&self, owner: Option<usize>, grow: u64) -> Option<usize> {
        self.chain(owner).into_iter().find(|&i| {
            let s = &self.scopes[i];
            s.limit.is_some_and(|l| s.fig.live_bytes + grow > l)
        })
    }

    fn charge(&mut self, owner: Option<usize>, f: impl Fn(&mut Fig)) {
        for i in self.chain(owner) {
            let fig = &mut self.scopes[i].fig;
            f(fig);
            fig.peak_bytes = fig.peak_bytes.max(fig.live_bytes);
        }
    }

    fn alloc_done(&mut self, ptr: usize, layout: Layout, owner: Option<usize>) {
        let size = layout.size() as u64;
        self.charge(owner, |f| {
            f.allocations += 1;
            f.bytes_allocated += size;
            f.live_bytes += size;
        });
        self.blocks.push(Block { ptr, layout, owner });
    }

    fn free_done(&mut self, b: &Block) {
        let size = b.layout.size() as u64;
        self.charge(b.owner, |f| {
            f.frees += 1;
            f.bytes_freed += size;
            f.live_bytes -= size;
        });
    }

    /// Compares every scope the registry still knows with the model.
    fn check(&self, step: usize, op: &Op) -> Result<(), TestCaseError> {
        let tree = alloc_host::scope_tree();
        let real: HashMap<u64, &alloc_host::ScopeStats> =
            tree.scopes.iter().map(|n| (n.stats.id, &n.stats)).collect();
        for (i, s) in self.scopes.iter().enumerate() {
            let live_blocks = self
                .blocks
                .iter()
                .any(|b| b.owner.is_some_and(|o| self.chain(Some(o)).contains(&i)));
            let must_exist = !s.closed || live_blocks;
            let Some(r) = real.get(&s.id) else {
                prop_assert!(
                    !must_exist,
                    "step {step} ({op:?}): scope {i} (open or owning memory) missing from the registry"
                );
                continue;
            };
            let got = Fig {
                allocations: r.allocations,
                frees: r.frees,
                reallocs: r.reallocs,
                bytes_allocated: r.bytes_allocated,
                bytes_freed: r.bytes_freed,
                live_bytes: r.live_bytes,
                peak_bytes: r.peak_bytes,
                refused: r.refused_allocations,
            };
            prop_assert_eq!(
                got,
                s.fig,
                "step {} ({:?}): scope {} figures differ (real, model)",
                step,
                op,
                i
            );
            prop_assert_eq!(
                r.live_allocations,
                s.fig.allocations - s.fig.frees,
                "step {}: live allocations of scope {}",
                step,
                i
            );
        }
        Ok(())
    }
}

/// Checks a real answer against the model's: refused by a budget (counted on
/// the scope that refused; the budget is checked before the inner allocator
/// is asked) or by the inner allocator, else granted. True when refused.
fn refused(m: &mut Model, refuser: Option<usize>, refuse: bool, p: *mut u8, op: &Op) -> bool {
    if let Some(r) = refuser {
        m.scopes[r].fig.refused += 1;
    }
    if refuse || refuser.is_some() {
        assert!(p.is_null(), "{op:?}: expected a refusal");
        return true;
    }
    assert!(!p.is_null(), "{op:?}: refused although it fits");
    false
}

fn layout(size: usize, align_log2: u8) -> Layout {
    Layout::from_size_align(size, 1usize << align_log2).unwrap()
}

/// Runs one op for real (outside `untracked`) and updates the model (inside).
fn step(m: &mut Model, op: &Op) {
    match *op {
        Op::Open { limit, keep_handle } => {
            let parent = m.current();
            let g = untracked(|| {
                let mut b = ScopeBuilder::new("model");
                if let Some(l) = limit {
                    b = b.hard_limit(l);
                }
                b.enter().expect("open")
            });
            untracked(|| {
                let handle = keep_handle.then(|| g.handle());
                m.scopes.push(MScope {
                    parent,
                    limit,
                    fig: Fig::default(),
                    id: g.id().to_bits(),
                    handle,
                    closed: false,
                    pinned: false,
                });
                let idx = m.scopes.len() - 1;
                m.guards.push((g, idx));
            });
        }
        Op::Drop { i } => {
            if m.guards.is_empty() {
                return;
            }
            let (g, idx) = untracked(|| m.guards.remove(i % m.guards.len()));
            drop(g);
            let still_entered = m.guards.iter().any(|g| g.1 == idx);
            if m.scopes[idx].handle.is_none() && !still_entered && !m.scopes[idx].pinned {
                m.scopes[idx].closed = true;
            }
        }
        Op::Alloc {
            size,
            align_log2,
            zeroed,
            refuse,
        } => {
            let refuse = refuse && CAN_REFUSE;
            let l = layout(size, align_log2);
            REFUSE_NEXT.store(refuse, SeqCst);
            // SAFETY: non-zero size.
            let p = unsafe {
                if zeroed {
                    std::alloc::alloc_zeroed(l)
                } else {
                    std::alloc::alloc(l)
                }
            };
            REFUSE_NEXT.store(false, SeqCst);
            untracked(|| {
                let owner = m.current();
                let grow = size as u64;
                let refuser = if m.tracking {
                    m.refuser(owner, grow)
                } else {
                    None
                };
                if refused(m, refuser, refuse, p, op) {
                    return;
                }
                assert_eq!(p as usize % l.align(), 0);
                m.alloc_done(p as usize, l, if m.tracking { owner } else { None });
            });
        }
        Op::AllocHuge => {
            let l = Layout::from_size_align(1 << 50, 8).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { std::alloc::alloc(l) };
            // `black_box`: with optimisations the compiler may drop an
            // allocation only compared with null and take it as granted
            // (the test then failed at opt-level 1 without calling the
            // allocator at all).
            let p = std::hint::black_box(p);
            assert!(p.is_null(), "1 PiB granted");
            // A limited scope in the chain refuses first and counts it.
            untracked(|| {
                let owner = m.current();
                if let (true, Some(r)) = (m.tracking, m.refuser(owner, 1 << 50)) {
                    m.scopes[r].fig.refused += 1;
                }
            });
        }
        Op::ReallocHuge { i } => {
            if m.blocks.is_empty() {
                return;
            }
            let k = i % m.blocks.len();
            let (ptr, l, owner) = (m.blocks[k].ptr, m.blocks[k].layout, m.blocks[k].owner);
            // SAFETY: a live block of layout `l`; 1 PiB rounded to any
            // alignment used here does not overflow `isize`.
            let p = std::hint::black_box(unsafe { std::alloc::realloc(ptr as *mut u8, l, 1 << 50) });
            assert!(p.is_null(), "1 PiB granted");
            // A limited scope in the owner's chain refuses first and counts
            // it; otherwise the inner allocator refuses, and nothing changes.
            untracked(|| {
                if owner.is_some()
                    && let Some(r) = m.refuser(owner, (1u64 << 50) - l.size() as u64)
                {
                    m.scopes[r].fig.refused += 1;
                }
            });
        }
        Op::Free { i } => {
            if m.blocks.is_empty() {
                return;
            }
            let b = untracked(|| m.blocks.swap_remove(i % m.blocks.len()));
            // SAFETY: a live block of this layout.
            unsafe { std::alloc::dealloc(b.ptr as *mut u8, b.layout) };
            untracked(|| m.free_done(&b));
        }
        Op::Realloc { i, size, refuse } => {
            let refuse = refuse && CAN_REFUSE;
            if m.blocks.is_empty() {
                return;
            }
            let k = i % m.blocks.len();
            let (ptr, l, owner) = (m.blocks[k].ptr, m.blocks[k].layout, m.blocks[k].owner);
            REFUSE_NEXT.store(refuse, SeqCst);
            // SAFETY: a live block of layout `l`; non-zero new size.
            let p = unsafe { std::alloc::realloc(ptr as *mut u8, l, size) };
            REFUSE_NEXT.store(false, SeqCst);
            untracked(|| {
                let old = l.size() as u64;
                let new = size as u64;
                let refuser = if new > old && owner.is_some() {
                    m.refuser(owner, new - old)
                } else {
                    None
                };
                if refused(m, refuser, refuse, p, op) {
                    return;
                }
                m.charge(owner, |f| {
                    f.reallocs += 1;
                    if new >= old {
                        f.bytes_allocated += new - old;
                        f.live_bytes += new - old;
                    } else {
                        f.bytes_freed += old - new;
                        f.live_bytes -= old - new;
                    }
                });
                m.blocks[k].ptr = p as usize;
                m.blocks[k].layout = Layout::from_size_align(size, l.align()).unwrap();
            });
        }
        Op::Tracking { on } => {
            alloc_host::set_tracking(on);
            m.tracking = on;
        }
        Op::Thread {
            i,
            ref allocs,
            frees,
            forget_guard,
        } => thread_op(m, i, allocs, frees, forget_guard),
    }
}

fn thread_op(m: &mut Model, i: usize, allocs: &[usize], frees: usize, forget_guard: bool) {
    // Scopes that can be entered: open ones (a guard or a kept handle).
    let picked = untracked(|| {
        let open: Vec<usize> = (0..m.scopes.len())
            .filter(|&k| !m.scopes[k].closed)
            .collect();
        if open.is_empty() {
            return None;
        }
        let target = open[i % open.len()];
        let handle = m.scopes[target].handle.clone().or_else(|| {
            m.guards
                .iter()
                .find(|g| g.1 == target)
                .map(|g| g.0.handle())
        })?;
        Some((target, handle, allocs.to_vec()))
    });
    let Some((target, handle, sizes)) = picked else {
        return;
    };
    let tracking = m.tracking;
    let t = untracked(|| {
        std::thread::spawn(move || {
            let mut out: Vec<(usize, usize)> = Vec::with_capacity(sizes.len());
            let g = handle.enter();
            for &s in &sizes {
                let l = Layout::from_size_align(s, 8).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe { std::alloc::alloc(l) };
                out.push((p as usize, s));
            }
            for _ in 0..frees.min(out.len()) {
                let (p, s) = out.pop().unwrap();
                if p != 0 {
                    // SAFETY: allocated above with this layout.
                    unsafe {
                        std::alloc::dealloc(p as *mut u8, Layout::from_size_align(s, 8).unwrap())
                    };
                }
            }
            if forget_guard {
                // The thread ends inside the scope, its batch never flushed by
                // a scope exit: the exit hook must apply it.
                std::mem::forget(g);
                std::mem::forget(handle);
            } else {
                drop(g);
            }
            (out, sizes)
        })
    });
    let (out, sizes) = t.join().unwrap();
    untracked(|| {
        let owner = if tracking { Some(target) } else { None };
        // The thread's program in order: every allocation (checked against the
        // limits as it was made), then frees of the last ones, last first.
        let mut made: Vec<(bool, u64)> = Vec::new();
        for &s in &sizes {
            let size = s as u64;
            if let Some(r) = m.refuser(owner, size) {
                m.scopes[r].fig.refused += 1;
                made.push((false, size));
                continue;
            }
            m.charge(owner, |f| {
                f.allocations += 1;
                f.bytes_allocated += size;
                f.live_bytes += size;
            });
            made.push((true, size));
        }
        for _ in 0..frees.min(made.len()) {
            let (granted, size) = made.pop().unwrap();
            if granted {
                m.charge(owner, |f| {
                    f.frees += 1;
                    f.bytes_freed += size;
                    f.live_bytes -= size;
                });
            }
        }
        assert_eq!(made.len(), out.len());
        for (&(granted, size), &(p, s)) in made.iter().zip(&out) {
            assert_eq!(size, s as u64);
            assert_eq!(
                granted,
                p != 0,
                "thread allocation of {s} B: granted {}, model says {granted}",
                p != 0
            );
            if granted {
                m.blocks.push(Block {
                    ptr: p,
                    layout: Layout::from_size_align(s, 8).unwrap(),
                    owner,
                });
            }
        }
        if forget_guard {
            // The forgotten guard and handle keep the scope open for good.
            m.scopes[target].pinned = true;
            m.scopes[target].closed = false;
        }
        drop(sizes);
        drop(out);
    });
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = untracked(|| Model {
        tracking: true,
        ..Model::default()
    });
    alloc_host::set_tracking(true);
    alloc_host::set_sample_rate(SAMPLE_RATE);
    let result = (|| {
        for (n, op) in ops.iter().enumerate() {
            step(&mut m, op);
            untracked(|| m.check(n, op))?;
        }
        Ok(())
    })();
    alloc_host::set_tracking(true);
    // Clean up: free every block, drop guards newest first.
    for b in untracked(|| std::mem::take(&mut m.blocks)) {
        // SAFETY: live blocks of these layouts.
        unsafe { std::alloc::dealloc(b.ptr as *mut u8, b.layout) };
    }
    while let Some((g, _)) = untracked(|| m.guards.pop()) {
        drop(g);
    }
    untracked(|| drop(m));
    result
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        max_shrink_iters: 2000,
        .. ProptestConfig::default()
    })]

    #[test]
    fn every_scope_matches_the_model_after_every_step(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}
