//! [`BufferPool`]: reuse of host buffers (`Vec<T>`) by capacity class, with a
//! cap on the bytes it keeps, hit/miss statistics and `trim`.
//!
//! # Invariants
//! The pool keeps [`ToolkitInvariant::P1`] (classes serve their size) and
//! [`ToolkitInvariant::P2`] (pooled bytes are counted and capped); their
//! definitions are on the variants.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::Serialize;

#[cfg(doc)]
use crate::ToolkitInvariant;
use crate::error::ToolkitError;

/// Capacity classes: powers of two of elements, 2^0 … 2^63.
const CLASSES: usize = 64;

/// A pool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PoolStats {
    /// Requests served from the pool.
    pub hits: u64,
    /// Requests that allocated a new buffer.
    pub misses: u64,
    /// Buffers given back and kept.
    pub returned: u64,
    /// Buffers given back and freed (the cap was reached, or empty).
    pub discarded: u64,
    /// Bytes the pool keeps now.
    pub pooled_bytes: u64,
    /// Buffers the pool keeps now.
    pub pooled_buffers: u64,
    /// The cap on `pooled_bytes`.
    pub max_pooled_bytes: u64,
    /// hits ÷ (hits + misses); 0 before any request.
    pub efficiency: f64,
}

struct Inner<T> {
    name: String,
    classes: Mutex<Vec<Vec<Vec<T>>>>,
    max_bytes: u64,
    pooled_bytes: AtomicU64,
    pooled_buffers: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    returned: AtomicU64,
    discarded: AtomicU64,
}

/// What `cleanup_all` needs from a pool of any element type.
pub(crate) trait Releasable: Send + Sync {
    /// Frees every pooled buffer; returns the bytes freed.
    fn release_all(&self) -> u64;
}

static POOLS: Mutex<Vec<Weak<dyn Releasable>>> = Mutex::new(Vec::new());

fn pools_lock() -> MutexGuard<'static, Vec<Weak<dyn Releasable>>> {
    POOLS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Frees the buffers of every live pool; returns (pools, bytes).
pub(crate) fn release_all_pools() -> (usize, u64) {
    let pools: Vec<Arc<dyn Releasable>> = {
        let mut p = pools_lock();
        p.retain(|w| w.strong_count() > 0);
        p.iter().filter_map(Weak::upgrade).collect()
    };
    let bytes = pools.iter().map(|p| p.release_all()).sum();
    (pools.len(), bytes)
}

/// A pool of `Vec<T>` buffers. Cheap to clone (clones share the pool);
/// `Send + Sync` when `T: Send`.
pub struct BufferPool<T: Send + 'static> {
    inner: Arc<Inner<T>>,
}

impl<T: Send + 'static> Clone for BufferPool<T> {
    fn clone(&self) -> Self {
        BufferPool {
            inner: self.inner.clone(),
        }
    }
}

fn class_for_request(n: usize) -> usize {
    n.max(1).next_power_of_two().trailing_zeros() as usize
}

fn class_for_capacity(cap: usize) -> usize {
    (usize::BITS - 1 - cap.leading_zeros()) as usize
}

impl<T: Send + 'static> BufferPool<T> {
    /// A pool keeping at most `max_pooled_bytes` of buffers.
    pub fn new(name: &str, max_pooled_bytes: u64) -> Result<Self, ToolkitError> {
        if max_pooled_bytes == 0 {
            return Err(ToolkitError::ZeroBudget {
                what: "BufferPool max_pooled_bytes",
            });
        }
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            classes: Mutex::new((0..CLASSES).map(|_| Vec::new()).collect()),
            max_bytes: max_pooled_bytes,
            pooled_bytes: AtomicU64::new(0),
            pooled_buffers: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        });
        let weak: Weak<dyn Releasable> = Arc::downgrade(&inner) as Weak<dyn Releasable>;
        pools_lock().push(weak);
        Ok(BufferPool { inner })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// An empty vector with capacity for at least `capacity` elements, reused
    /// when the pool has one of that class. It returns to the pool on drop.
    pub fn take(&self, capacity: usize) -> Pooled<T> {
        Pooled {
            vec: Some(self.get(capacity)),
            pool: self.clone(),
        }
    }

    /// Like [`take`](Self::take) without the guard: give it back with
    /// [`put`](Self::put).
    pub fn get(&self, capacity: usize) -> Vec<T> {
        let c = class_for_request(capacity);
        let found = self.inner.lock().get_mut(c).and_then(Vec::pop);
        match found {
            Some(v) => {
                self.inner.hits.fetch_add(1, Relaxed);
                self.inner.pooled_buffers.fetch_sub(1, Relaxed);
                self.inner.pooled_bytes.fetch_sub(bytes_of(&v), Relaxed);
                v
            }
            None => {
                self.inner.misses.fetch_add(1, Relaxed);
                Vec::with_capacity(
                    1usize
                        .checked_shl(c as u32)
                        .unwrap_or(capacity)
                        .max(capacity),
                )
            }
        }
    }

    /// Gives a vector back: cleared and kept if the cap allows, else freed.
    pub fn put(&self, mut v: Vec<T>) {
        v.clear();
        let bytes = bytes_of(&v);
        let i = &self.inner;
        if v.capacity() == 0 || bytes == 0 {
            i.discarded.fetch_add(1, Relaxed);
            return;
        }
        let mut classes = i.lock();
        if i.pooled_bytes.load(Relaxed) + bytes > i.max_bytes {
            drop(classes);
            i.discarded.fetch_add(1, Relaxed);
            return;
        }
        i.pooled_bytes.fetch_add(bytes, Relaxed);
        i.pooled_buffers.fetch_add(1, Relaxed);
        i.returned.fetch_add(1, Relaxed);
        classes[class_for_capacity(v.capacity())].push(v);
    }

    /// Frees pooled buffers, largest classes first, until at most
    /// `keep_bytes` are pooled; returns the bytes freed.
    pub fn trim(&self, keep_bytes: u64) -> u64 {
        let i = &self.inner;
        let mut freed = 0;
        let victims: Vec<Vec<T>> = {
            let mut classes = i.lock();
            let mut out = Vec::new();
            for class in classes.iter_mut().rev() {
                while i.pooled_bytes.load(Relaxed) > keep_bytes {
                    let Some(v) = class.pop() else { break };
                    let b = bytes_of(&v);
                    i.pooled_bytes.fetch_sub(b, Relaxed);
                    i.pooled_buffers.fetch_sub(1, Relaxed);
                    freed += b;
                    out.push(v);
                }
            }
            out
        };
        drop(victims);
        freed
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        let i = &self.inner;
        let hits = i.hits.load(Relaxed);
        let misses = i.misses.load(Relaxed);
        PoolStats {
            hits,
            misses,
            returned: i.returned.load(Relaxed),
            discarded: i.discarded.load(Relaxed),
            pooled_bytes: i.pooled_bytes.load(Relaxed),
            pooled_buffers: i.pooled_buffers.load(Relaxed),
            max_pooled_bytes: i.max_bytes,
            efficiency: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
        }
    }
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, Vec<Vec<Vec<T>>>> {
        self.classes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Send> Releasable for Inner<T> {
    fn release_all(&self) -> u64 {
        let all: Vec<Vec<Vec<T>>> = {
            let mut classes = self.lock();
            classes.iter_mut().map(std::mem::take).collect()
        };
        let bytes: u64 = all.iter().flatten().map(bytes_of).sum();
        let n: u64 = all.iter().map(|c| c.len() as u64).sum();
        self.pooled_bytes.fetch_sub(bytes, Relaxed);
        self.pooled_buffers.fetch_sub(n, Relaxed);
        bytes
    }
}

fn bytes_of<T>(v: &Vec<T>) -> u64 {
    (v.capacity() * size_of::<T>()) as u64
}

/// A vector borrowed from a [`BufferPool`]; returns to it on drop.
pub struct Pooled<T: Send + 'static> {
    vec: Option<Vec<T>>,
    pool: BufferPool<T>,
}

impl<T: Send + 'static> Pooled<T> {
    /// Keeps the vector; it will not return to the pool.
    pub fn into_inner(mut self) -> Vec<T> {
        self.vec.take().unwrap_or_default()
    }
}

impl<T: Send + 'static> Deref for Pooled<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        self.vec.as_ref().expect("present until drop or into_inner")
    }
}

impl<T: Send + 'static> DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        self.vec.as_mut().expect("present until drop or into_inner")
    }
}

impl<T: Send + 'static> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(v) = self.vec.take() {
            self.pool.put(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_by_class_and_counts() {
        let pool = BufferPool::<f32>::new("t", 1 << 20).unwrap();
        let mut a = pool.take(1000);
        assert!(a.capacity() >= 1000);
        a.extend(std::iter::repeat_n(1.0, 1000));
        let ptr = a.as_ptr();
        drop(a);
        let b = pool.take(600); // same class (1024)
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.is_empty());
        let s = pool.stats();
        assert_eq!((s.hits, s.misses, s.returned), (1, 1, 1));
        assert_eq!(s.efficiency, 0.5);
        let c = pool.take(2000); // a larger class: a miss
        assert_ne!(c.as_ptr(), ptr);
        assert_eq!(pool.stats().misses, 2);
    }

    #[test]
    fn cap_discards_and_trim_frees() {
        let pool = BufferPool::<u8>::new("t", 3000).unwrap();
        pool.put(Vec::with_capacity(1024));
        pool.put(Vec::with_capacity(1024));
        pool.put(Vec::with_capacity(2048)); // over the cap
        let s = pool.stats();
        assert_eq!(
            (s.pooled_bytes, s.pooled_buffers, s.discarded),
            (2048, 2, 1)
        );
        assert_eq!(pool.trim(1024), 1024);
        assert_eq!(pool.stats().pooled_bytes, 1024);
        assert_eq!(pool.inner.release_all(), 1024);
        assert_eq!(pool.stats().pooled_buffers, 0);
    }

    proptest::proptest! {
        /// toolkit:P1 and toolkit:P2 over random programs of take / put / trim.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec((0u8..3, 1usize..5000), 1..60), cap in 1u64..40_000) {
            let pool = BufferPool::<u32>::new("prop", cap).unwrap();
            let mut held: Vec<Vec<u32>> = Vec::new();
            for (op, n) in ops {
                match op {
                    0 => {
                        let v = pool.get(n);
                        proptest::prop_assert!(v.capacity() >= n && v.is_empty());
                        held.push(v);
                    }
                    1 => {
                        if let Some(v) = held.pop() {
                            pool.put(v);
                        }
                    }
                    _ => {
                        let before = pool.stats().pooled_bytes;
                        let freed = pool.trim(n as u64);
                        let after = pool.stats().pooled_bytes;
                        proptest::prop_assert_eq!(before - freed, after);
                        proptest::prop_assert!(after <= n as u64, "trim({}) left {}", n, after);
                    }
                }
                let s = pool.stats();
                proptest::prop_assert!(s.pooled_bytes <= cap, "{}: {} > {}", crate::ToolkitInvariant::P2, s.pooled_bytes, cap);
                let classes = pool.inner.lock();
                let mut sum = 0u64;
                let mut count = 0u64;
                for (c, vs) in classes.iter().enumerate() {
                    for v in vs {
                        proptest::prop_assert!(v.capacity() >= 1 << c, "{}: class {} holds capacity {}", crate::ToolkitInvariant::P1, c, v.capacity());
                        sum += bytes_of(v);
                        count += 1;
                    }
                }
                proptest::prop_assert_eq!(sum, s.pooled_bytes);
                proptest::prop_assert_eq!(count, s.pooled_buffers);
            }
        }
    }

    #[test]
    fn zero_cap_is_refused() {
        assert!(BufferPool::<u8>::new("t", 0).is_err());
    }

    #[test]
    fn classes_satisfy_p1() {
        for n in [1usize, 2, 3, 7, 8, 9, 1000, 1 << 20] {
            let c = class_for_request(n);
            assert!(1usize << c >= n);
            assert_eq!(class_for_capacity(1 << c), c);
            assert!(class_for_capacity((1 << c) + 1) >= c);
        }
    }
}
