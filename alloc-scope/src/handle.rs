//! Opening scopes: `scope(name)`, `ScopeBuilder` for budgets, `ScopeHandle` to
//! share a scope with other threads, and `ScopeGuard`, the RAII entry.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex, MutexGuard};

use super::clock;
use super::id::ScopeId;
use super::record::{LONG, OPEN, REF, Record, short_word};
use super::registry::{FIXED, MAX_DEPTH, REGISTRY};
use super::stats::ScopeStats;
use super::thread::{self, EnterToken, Part};

/// Why a scope could not be opened as asked. Nothing is charged or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A budget of zero bytes would refuse every allocation.
    #[error(
        "{which} budget of scope `{name}` is 0 bytes; give a positive number of bytes, or leave the budget unset for none"
    )]
    ZeroBudget {
        /// The scope's name.
        name: String,
        /// `hard` or `soft`.
        which: &'static str,
    },
    /// The soft limit is above the hard limit, so it could never be reached.
    #[error(
        "soft budget {soft} B of scope `{name}` is above its hard budget {hard} B; the soft limit must be at most the hard limit"
    )]
    SoftAboveHard {
        /// The scope's name.
        name: String,
        /// Soft limit in bytes.
        soft: u64,
        /// Hard limit in bytes.
        hard: u64,
    },
    /// Every registry slot is in use by open scopes or scopes owning memory.
    #[error(
        "cannot open scope `{name}`: all {capacity} scope slots hold open scopes; drop guards and handles of scopes you are done with (closed scopes that still own memory do not count)"
    )]
    RegistryFull {
        /// The scope's name.
        name: String,
        /// The registry capacity.
        capacity: usize,
    },
}

/// What a soft-budget callback is told.
#[derive(Debug, Clone)]
pub struct SoftLimitExceeded {
    /// The scope that went over.
    pub scope: ScopeId,
    /// Its name.
    pub name: String,
    /// The soft limit, bytes.
    pub limit: u64,
    /// The highest live bytes seen above the limit so far.
    pub live_bytes: u64,
}

type Callback = Arc<dyn Fn(&SoftLimitExceeded) + Send + Sync>;

struct CallbackEntry {
    scope: ScopeId,
    callback: Callback,
}

/// Soft-limit callbacks not yet fired, by slot: at most one per slot, removed
/// once fired or replaced when the slot is reused, so the table is bounded by
/// the registry's capacity.
static CALLBACKS: Mutex<Option<HashMap<u32, CallbackEntry>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The name a slot was opened with.
pub(crate) fn name_of(slot: u32) -> String {
    match slot {
        0 => "process".to_owned(),
        1 => "unattributed".to_owned(),
        2 => "retired".to_owned(),
        s => REGISTRY
            .record(s)
            .map_or_else(|| "?".to_owned(), |r| r.name.0.load()),
    }
}

/// Opens a scope named `name` inside the calling thread's current scope and
/// enters it; leaving happens when the guard drops.
///
/// Closed scopes that still own memory do not hold their slot when one is
/// needed (their remaining figures move to `retired`), so the registry is full
/// only when [`CAPACITY`](super::registry::CAPACITY) scopes are open at once.
/// Then the guard enters the current scope again, so charges still land in a
/// parent and nothing fails, and says so: [`ScopeGuard::is_fallback`] is true,
/// its [`stats`](ScopeGuard::stats) are the parent's, [`report`](super::report())
/// counts such scopes, and the test helpers refuse to measure with one. Use
/// [`ScopeBuilder::enter`] to get the error instead.
#[inline(always)]
pub fn scope(name: &str) -> ScopeGuard {
    // Inlined only to this: a name known at the call (a literal) makes its
    // stored form a constant there.
    open(name, short_word(name))
}

/// [`scope`], the name's [`short_word`] computed.
#[inline(never)]
fn open(name: &str, first: u64) -> ScopeGuard {
    match open_plain(name, first) {
        Some(g) => g,
        None => open_general(name, first),
    }
}

/// The open of a plain request scope in one straight path without a
/// call: a short name (`first` not [`LONG`]), no budget callback due, the
/// scope clock the counter, the thread able to enter it plainly
/// ([`thread::plain_entry`]: batched, room on its stack, no application
/// of its batch needed, a slot kept from its last scope), no budget in
/// the parent's chain, and the kept slot still there to claim. Does what
/// [`create`] and [`ScopeHandle::enter_with`] do for that case; `None`,
/// with nothing changed but a kept slot found taken (the general path
/// then finds none), for every other case.
#[inline(always)]
fn open_plain(name: &str, first: u64) -> Option<ScopeGuard> {
    if first == LONG || REGISTRY.soft_pending.load(Acquire) != 0 || !clock::is_counter() {
        return None;
    }
    let entry = thread::plain_entry()?;
    let parent = entry.parent;
    let p = REGISTRY.record(parent.slot())?;
    let pm = &p.meta.0;
    if pm.budget_in_chain.load(Relaxed) != 0 {
        return None;
    }
    let depth = (pm.depth.load(Relaxed) + 1).min(MAX_DEPTH);
    thread::take_kept_slot();
    let slot = entry.kept - 1;
    let r = REGISTRY.claim_kept(slot)?;
    if r.name.0.set_with(name, first) {
        r.meta.0.aggregate.store(0, Relaxed);
    }
    r.open(
        Some(parent.slot()),
        depth,
        clock::counter_now(),
        0,
        0,
        false,
    );
    if parent.slot() >= FIXED {
        pm.life.fetch_add(REF, Relaxed);
    }
    // As in `create`: the slot is this thread's until the state says open.
    let m = &r.meta.0;
    let generation = m.generation.load(Relaxed).wrapping_add(1);
    m.generation.store(generation, Relaxed);
    m.state.store(OPEN, Release);
    let id = ScopeId::new(slot, generation);
    let token = thread::plain_enter(&entry, id);
    Some(ScopeGuard {
        handle: ManuallyDrop::new(ScopeHandle { id }),
        token,
        fallback: false,
        _not_send: PhantomData,
    })
}

/// [`open`] for every case [`open_plain`] leaves.
#[inline(never)]
fn open_general(name: &str, first: u64) -> ScopeGuard {
    // No `untracked` around it: opening a scope without a callback allocates
    // nothing (the name is copied into the record), and a full registry is
    // told without allocating (`Full`).
    match create(name, first, thread::current(), 0, 0) {
        Ok((h, direct)) => h.enter_with(direct),
        Err(Full) => {
            let mut g = ScopeHandle::current().enter_owned();
            g.fallback = true;
            g
        }
    }
}

/// Opens a scope with options: budgets, a soft-limit callback, an explicit parent.
#[must_use]
pub struct ScopeBuilder {
    name: String,
    hard: Option<u64>,
    soft: Option<u64>,
    on_soft: Option<Callback>,
    parent: Option<ScopeHandle>,
}

impl ScopeBuilder {
    /// A scope named `name`, child of the calling thread's current scope.
    pub fn new(name: &str) -> Self {
        ScopeBuilder {
            name: name.to_owned(),
            hard: None,
            soft: None,
            on_soft: None,
            parent: None,
        }
    }

    /// Host live bytes this scope (with its children) may hold: an allocation
    /// that would exceed it returns null (`try_reserve` gets `Err`; an infallible
    /// allocation aborts as Rust defines it).
    pub fn hard_limit(mut self, bytes: u64) -> Self {
        self.hard = Some(bytes);
        self
    }

    /// Host live bytes above which the scope records that it went over and
    /// `callback` (if any, see [`ScopeBuilder::on_soft_limit`]) runs later,
    /// outside the allocator path.
    pub fn soft_limit(mut self, bytes: u64) -> Self {
        self.soft = Some(bytes);
        self
    }

    /// Called once per scope, the first time it is seen over its soft limit, from
    /// the next scope entry or exit or [`run_budget_callbacks`] on any thread.
    pub fn on_soft_limit(mut self, f: impl Fn(&SoftLimitExceeded) + Send + Sync + 'static) -> Self {
        self.on_soft = Some(Arc::new(f));
        self
    }

    /// Makes the scope a child of `parent` instead of the current scope.
    pub fn child_of(mut self, parent: &ScopeHandle) -> Self {
        self.parent = Some(parent.clone());
        self
    }

    /// Creates the scope without entering it.
    pub fn build(self) -> Result<ScopeHandle, ScopeError> {
        thread::untracked(|| self.build_untracked())
    }

    fn build_untracked(self) -> Result<ScopeHandle, ScopeError> {
        self.validate()?;
        let parent = match &self.parent {
            Some(p) => p.id,
            None => thread::current(),
        };
        let (h, _) = create(
            &self.name,
            short_word(&self.name),
            parent,
            self.hard.unwrap_or(0),
            self.soft.unwrap_or(0),
        )
        .map_err(|Full| ScopeError::RegistryFull {
            name: self.name.clone(),
            capacity: super::registry::CAPACITY,
        })?;
        // Only scopes with a callback take this lock (never an allocator
        // path; a stale entry of a reused slot fails the generation check
        // when due).
        if let Some(cb) = self.on_soft {
            lock(&CALLBACKS).get_or_insert_with(HashMap::new).insert(
                h.id.slot(),
                CallbackEntry {
                    scope: h.id,
                    callback: cb,
                },
            );
        }
        Ok(h)
    }

    /// Creates the scope and enters it on the calling thread.
    pub fn enter(self) -> Result<ScopeGuard, ScopeError> {
        Ok(self.build()?.enter_owned())
    }

    fn validate(&self) -> Result<(), ScopeError> {
        let name = || self.name.clone();
        for (which, v) in [("hard", self.hard), ("soft", self.soft)] {
            if v == Some(0) {
                return Err(ScopeError::ZeroBudget {
                    name: name(),
                    which,
                });
            }
        }
        if let (Some(soft), Some(hard)) = (self.soft, self.hard) {
            if soft > hard {
                return Err(ScopeError::SoftAboveHard {
                    name: name(),
                    soft,
                    hard,
                });
            }
        }
        Ok(())
    }
}

/// Every registry slot holds an open scope (see [`ScopeError::RegistryFull`]).
struct Full;

/// Takes a slot and opens a scope in it, a child of `parent` with host
/// budgets `hard` and `soft` (0: none): the one path of [`scope`] and
/// [`ScopeBuilder::build`] (the name is copied into the record; nothing is
/// allocated; `first` is [`short_word`]`(name)`). Returns the handle and
/// whether the new scope's chain has a budget (its charges are then
/// unbatched).
#[inline(always)]
fn create(
    name: &str,
    first: u64,
    parent: ScopeId,
    hard: u64,
    soft: u64,
) -> Result<(ScopeHandle, bool), Full> {
    // The slot of this thread's last scope closed alone, if still kept;
    // else the free list.
    // else the free list. The record is looked up once (a note of 0, no
    // slot, is `u32::MAX` here: no record).
    let kept = thread::take_kept_slot().wrapping_sub(1);
    let (slot, r) = match REGISTRY.claim_kept(kept) {
        Some(r) => (kept, r),
        None => {
            let Some((slot, r)) = REGISTRY
                .take_slot()
                .and_then(|slot| Some((slot, REGISTRY.record(slot)?)))
            else {
                return Err(Full);
            };
            (slot, r)
        }
    };
    // A slot is usually reused by a scope of the same name (a request scope
    // opened and closed in a loop): then the name and its aggregate entry
    // stay as they are.
    if r.name.0.set_with(name, first) {
        r.meta.0.aggregate.store(0, Relaxed);
    }
    let parent_rec = REGISTRY.record(parent.slot());
    let (depth, inherited) = parent_rec.map_or((0, false), |p| {
        let m = &p.meta.0;
        (
            m.depth.load(Relaxed) + 1,
            m.budget_in_chain.load(Relaxed) != 0,
        )
    });
    let direct = inherited || hard != 0 || soft != 0;
    r.open(
        Some(parent.slot()),
        depth.min(MAX_DEPTH),
        clock::now(),
        hard,
        soft,
        direct,
    );
    let m = &r.meta.0;
    if parent.slot() >= FIXED {
        if let Some(p) = parent_rec {
            p.meta.0.life.fetch_add(REF, Relaxed);
        }
    }
    // The slot is this thread's alone until the state says open: the only
    // other writer of the generation is the recycler, on closed slots, and
    // a charge's `pin` adds 0 (it cannot lose this store).
    let generation = m.generation.load(Relaxed).wrapping_add(1);
    m.generation.store(generation, Relaxed);
    m.state.store(OPEN, Release);
    Ok((
        ScopeHandle {
            id: ScopeId::new(slot, generation),
        },
        direct,
    ))
}

/// A shared reference to a scope: `Clone + Send + Sync`. Entering it on another
/// thread charges that thread's allocations to this scope (work a request hands
/// to a thread pool is charged to the request). The scope closes when the last
/// handle and guard are gone; its record stays while it owns live memory.
pub struct ScopeHandle {
    id: ScopeId,
}

impl ScopeHandle {
    /// A handle on the calling thread's current scope.
    pub fn current() -> ScopeHandle {
        let id = thread::current();
        if id.slot() >= FIXED {
            if let Some(r) = REGISTRY.record(id.slot()) {
                r.meta.0.refs.fetch_add(1, Relaxed);
                r.meta.0.life.fetch_add(REF, Relaxed);
            }
        }
        ScopeHandle { id }
    }

    /// The process root scope.
    pub fn root() -> ScopeHandle {
        ScopeHandle { id: ScopeId::ROOT }
    }

    /// This scope's id.
    pub fn id(&self) -> ScopeId {
        self.id
    }

    /// The name it was opened with.
    pub fn name(&self) -> String {
        name_of(self.id.slot())
    }

    /// Enters the scope on the calling thread until the guard drops.
    pub fn enter(&self) -> ScopeGuard {
        self.clone().enter_owned()
    }

    fn enter_owned(self) -> ScopeGuard {
        let direct = REGISTRY.budget_in_chain(self.id.slot());
        self.enter_with(direct)
    }

    /// Enters the scope; `direct`: its chain has a budget.
    #[inline(always)]
    fn enter_with(self, direct: bool) -> ScopeGuard {
        run_budget_callbacks();
        let token = thread::enter(self.id, direct);
        ScopeGuard {
            handle: ManuallyDrop::new(self),
            token,
            fallback: false,
            _not_send: PhantomData,
        }
    }

    /// Wraps `f` so that it runs inside this scope on whatever thread calls it:
    /// for `tokio::task::spawn_blocking`, rayon and thread pools. The closure
    /// owns a handle, so it is `'static` and `Send` when `f` is.
    ///
    /// ```
    /// let request = alloc_scope::ScopeBuilder::new("request").build().unwrap();
    /// let work = request.bind(|| vec![0u8; 1024].len());
    /// assert_eq!(std::thread::spawn(work).join().unwrap(), 1024);
    /// ```
    pub fn bind<R, F: FnOnce() -> R>(&self, f: F) -> impl FnOnce() -> R + use<R, F> {
        let h = self.clone();
        move || {
            let _in = h.enter();
            f()
        }
    }

    /// Figures so far, this scope's children included. Applies the calling
    /// thread's pending charges first, so single-threaded figures are exact.
    pub fn stats(&self) -> ScopeStats {
        thread::flush();
        thread::untracked(|| ScopeStats::read(self.id.slot()))
    }

    /// Marks the scope's work as failed (a request answered with an error, a
    /// job abandoned): when it closes, its figures go to the per-name
    /// aggregate `"{name} (failed)"` ([`aggregates`](crate::aggregates))
    /// instead of `name`, so a distribution such as "p99 request peak" holds
    /// only the scopes that did their work, and failures are still counted,
    /// under a bounded label (one per name). The scope's live figures, its
    /// place in the tree and what it owns are unchanged. Idempotent; no effect
    /// on the root.
    pub fn mark_failed(&self) {
        if self.id.slot() >= FIXED {
            if let Some(r) = REGISTRY.record(self.id.slot()) {
                r.meta.0.failed.store(1, Relaxed);
            }
        }
    }

    /// Sets this scope's host and device peaks to their current live bytes.
    pub fn reset_peak(&self) {
        thread::flush();
        // Not a counter write for `Meta::written`: the peak becomes the
        // live bytes, so counters at zero stay at zero.
        if let Some(r) = REGISTRY.record(self.id.slot()) {
            r.host.0.reset_peak();
            r.device.0.reset_peak();
        }
    }
}

impl Clone for ScopeHandle {
    fn clone(&self) -> Self {
        if self.id.slot() >= FIXED {
            if let Some(r) = REGISTRY.record(self.id.slot()) {
                r.meta.0.refs.fetch_add(1, Relaxed);
                r.meta.0.life.fetch_add(REF, Relaxed);
            }
        }
        ScopeHandle { id: self.id }
    }
}

impl Drop for ScopeHandle {
    fn drop(&mut self) {
        let slot = self.id.slot();
        if let Some(r) = REGISTRY.alone(slot) {
            close_alone(slot, r, &Part::default());
            return;
        }
        release(slot);
    }
}

/// Closes and retires the scope in `slot` whose only reference the caller
/// holds and which owns nothing ([`Registry::alone`]), `part` being its
/// operations not applied to its record (its guard's, `thread::exit`): its
/// figures go to its name's aggregate and its peaks to its parent, with
/// one clock read and no read-modify-write on its own record.
///
/// [`Registry::alone`]: super::registry::Registry::alone
#[inline(always)]
fn close_alone(slot: u32, r: &Record, part: &Part) {
    let host_peak = super::aggregate::add_closed(r, part, clock::now());
    // The slot is kept for this thread's next scope (no free-list
    // operation at either end) unless it keeps one already.
    let keep = thread::may_keep_slot();
    let parent = REGISTRY.retire_alone(slot, r, host_peak, keep);
    if keep {
        thread::note_kept_slot(slot);
    }
    if let Some(p) = parent {
        REGISTRY.retire(p);
    }
}

/// Drops one reference of a scope that others may still hold or that
/// owns memory.
#[inline(never)]
fn release(slot: u32) {
    if REGISTRY.close_ref(slot, clock::now()) {
        // Still holding this handle's life reference: the slot cannot be
        // retired or reused while the aggregate reads it.
        super::aggregate::record_close(slot);
    }
    REGISTRY.adjust_life(slot, -REF);
}

impl std::fmt::Debug for ScopeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeHandle")
            .field("id", &self.id)
            .field("name", &self.name())
            .finish()
    }
}

/// The calling thread is inside a scope while this lives. Not `Send` (it
/// changes the scope of the thread that made it). Guards may drop in any order:
/// the thread is in the most recently entered scope whose guard still lives
/// (see the `thread` module docs of this crate).
pub struct ScopeGuard {
    /// Dropped by the guard's `drop` (or consumed by a close, see there).
    handle: ManuallyDrop<ScopeHandle>,
    token: EnterToken,
    fallback: bool,
    _not_send: PhantomData<*const ()>,
}

impl ScopeGuard {
    /// Figures so far (see [`ScopeHandle::stats`]).
    pub fn stats(&self) -> ScopeStats {
        self.handle.stats()
    }

    /// A handle to enter this scope on other threads.
    pub fn handle(&self) -> ScopeHandle {
        ScopeHandle::clone(&self.handle)
    }

    /// This scope's id.
    pub fn id(&self) -> ScopeId {
        self.handle.id
    }

    /// Marks the scope's work as failed (see [`ScopeHandle::mark_failed`]).
    pub fn mark_failed(&self) {
        self.handle.mark_failed();
    }

    /// Sets this scope's peaks to their current live bytes.
    pub fn reset_peak(&self) {
        self.handle.reset_peak();
    }

    /// True when the scope could not be created (every registry slot held by
    /// an open scope) and this guard entered the current scope instead: its
    /// figures are the parent's.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }
}

impl Drop for ScopeGuard {
    /// Leaves the scope and drops the guard's reference, in one pass when
    /// it was the scope's last (a request scope): the scope's operations
    /// still in the thread's batch then go into its figures as it closes,
    /// without being applied to its record first.
    #[inline]
    fn drop(&mut self) {
        match close_plain(self.handle.id, &self.token) {
            Some(None) => {}
            // The calls come last, after every value of the plain path
            // is dead: no register is saved for them there.
            Some(Some(parent)) => REGISTRY.retire(parent),
            None => self.drop_general(),
        }
    }
}

impl ScopeGuard {
    /// [`Drop::drop`] for every case [`close_plain`] leaves.
    #[inline(never)]
    fn drop_general(&mut self) {
        let slot = self.handle.id.slot();
        let kept = thread::exit(self.token, slot);
        run_budget_callbacks();
        match kept.and_then(|part| Some((REGISTRY.record(slot)?, part))) {
            Some((r, part)) => close_alone(slot, r, &part),
            // SAFETY: `handle` is dropped once, here, and never used after.
            None => unsafe { ManuallyDrop::drop(&mut self.handle) },
        }
    }
}

/// The close of a plain request scope by its guard (`id`, entered with
/// `token`), in one straight path without a call: the scope is not in a
/// fixed slot, no budget callback is due, its name's aggregate entry is
/// cached and it is not marked failed, the scope clock is the counter,
/// and [`thread::exit_alone`] holds (the guard's entry the newest, the
/// scope alone, its part netting no allocation). Then it does what the
/// general path does for that case ([`close_alone`]) and returns the
/// parent to retire, if any (`Some`); `None`, having changed nothing,
/// for every other case. The guard's handle is consumed (its reference
/// is the one retired).
#[inline(always)]
fn close_plain(id: ScopeId, token: &EnterToken) -> Option<Option<u32>> {
    let slot = id.slot();
    if slot < FIXED || REGISTRY.soft_pending.load(Acquire) != 0 || !clock::is_counter() {
        return None;
    }
    let r = REGISTRY.record(slot)?;
    let e = super::aggregate::cached_entry(r)?;
    let part = thread::exit_alone(token, id, r)?;
    let end = clock::counter_now();
    let host_peak = super::aggregate::add_closed_to(e, r, &part, end);
    let keep = thread::may_keep_slot_entered();
    let parent = REGISTRY.retire_alone(slot, r, host_peak, keep);
    if keep {
        thread::note_kept_slot(slot);
    }
    Some(parent)
}

impl std::fmt::Debug for ScopeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeGuard")
            .field("handle", &self.handle)
            .finish()
    }
}

/// Runs the soft-limit callbacks of scopes that went over since the last call.
/// Called on every scope entry and exit; call it yourself to be told sooner.
#[inline]
pub fn run_budget_callbacks() {
    if REGISTRY.soft_pending.load(Acquire) != 0 {
        run_due_callbacks();
    }
}

/// The callbacks [`run_budget_callbacks`] found due (out of line: scope entry
/// and exit pay one load when none is).
#[cold]
#[inline(never)]
fn run_due_callbacks() {
    let due = thread::untracked(due_callbacks);
    for (cb, event) in due {
        cb(&event);
    }
}

fn due_callbacks() -> Vec<(Callback, SoftLimitExceeded)> {
    REGISTRY.soft_pending.store(0, Relaxed);
    let mut due = Vec::new();
    let mut cbs = lock(&CALLBACKS);
    let Some(map) = cbs.as_mut() else {
        return due;
    };
    map.retain(|&slot, e| {
        if !REGISTRY.is_live(slot, e.scope.generation()) {
            return false;
        }
        let Some(r) = REGISTRY.record(slot) else {
            return false;
        };
        let over = r.meta.0.soft_exceeded.load(Relaxed);
        if over == 0 {
            return true;
        }
        due.push((
            e.callback.clone(),
            SoftLimitExceeded {
                scope: e.scope,
                name: name_of(slot),
                limit: r.meta.0.soft_limit.load(Relaxed),
                live_bytes: over,
            },
        ));
        false
    });
    due
}
