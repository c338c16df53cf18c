//! [`retry_on_oom`]: on out of memory, empty the device caches, wait, try
//! again; after the last attempt, an optional fallback (a CPU path, a smaller
//! batch). What happened is reported in [`Attempts`].

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::cleanup::empty_device_caches;
use crate::error::ToolkitError;

static RETRIES: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// Counts one retry after an out-of-memory error (for the metrics).
pub(crate) fn count_retry() {
    RETRIES.fetch_add(1, Relaxed);
}

/// Retries after out of memory and fallbacks taken in this process so far by
/// [`retry_on_oom`], [`retry_on_oom_or`] and `retry_on_oom_async` (exported
/// as `alloc_oom_retries_total` and `alloc_oom_fallbacks_total`).
pub fn retry_counts() -> (u64, u64) {
    (RETRIES.load(Relaxed), FALLBACKS.load(Relaxed))
}

/// Errors that can say whether they mean "out of memory" (only those are
/// retried; any other error is returned at once).
pub trait OomError {
    /// Whether this error is an out-of-memory condition.
    fn is_oom(&self) -> bool;
}

impl OomError for alloc_core::AllocError {
    fn is_oom(&self) -> bool {
        self.as_oom().is_some()
    }
}

impl OomError for ToolkitError {
    fn is_oom(&self) -> bool {
        match self {
            ToolkitError::Alloc(e) => e.is_oom(),
            ToolkitError::HostUnavailable { .. }
            | ToolkitError::DeviceUnavailable { .. }
            | ToolkitError::DeviceBudgetExceeded { .. } => true,
            _ => false,
        }
    }
}

impl OomError for std::collections::TryReserveError {
    fn is_oom(&self) -> bool {
        true
    }
}

/// How [`retry_on_oom`] retries.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Calls of `f` in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Each wait is the previous one times this (at least 1.0).
    pub backoff_multiplier: f64,
    /// The longest wait.
    pub max_backoff: Duration,
    /// Empty every registered device cache before each retry.
    pub empty_caches: bool,
    /// Add a random share of each wait to it, so that many tasks that ran
    /// out of memory together do not retry in lockstep
    /// (`retry_on_oom_async` only; the blocking version waits exactly).
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// Three attempts, waits of 10 ms then 20 ms, caches emptied.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            backoff_multiplier: 2.0,
            max_backoff: Duration::from_secs(1),
            empty_caches: true,
            jitter: true,
        }
    }
}

/// What [`retry_on_oom`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attempts {
    /// Calls of `f` made.
    pub attempts: u32,
    /// Whether the result came from the fallback.
    pub used_fallback: bool,
    /// Device bytes released by emptying caches between attempts.
    pub released_bytes: u64,
    /// Time spent waiting between attempts.
    pub waited: Duration,
    /// The out-of-memory errors seen, oldest first.
    pub errors: Vec<String>,
}

/// The last error, once every attempt (and the fallback, if any) failed or an
/// error that is not out of memory came back.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {} attempt(s){})", attempts.attempts, if attempts.used_fallback { " and the fallback" } else { "" })]
pub struct RetryError<E: Display> {
    /// The last error.
    pub error: E,
    /// What was tried.
    pub attempts: Attempts,
}

impl RetryPolicy {
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let m = self.backoff_multiplier.max(1.0).powi(retry as i32);
        self.initial_backoff
            .mul_f64(m.min(1e6))
            .min(self.max_backoff)
    }
}

/// Calls `f(attempt)` (attempt counts from 1) until it succeeds, returns an
/// error that is not out of memory, or `policy.max_attempts` calls are made;
/// between attempts empties the device caches (if asked) and waits.
pub fn retry_on_oom<T, E: OomError + Display>(
    f: impl FnMut(u32) -> Result<T, E>,
    policy: &RetryPolicy,
) -> Result<(T, Attempts), RetryError<E>> {
    retry_inner(f, None::<fn(&E) -> Result<T, E>>, policy)
}

/// [`retry_on_oom`], then `fallback(last_error)` once if every attempt ran
/// out of memory.
pub fn retry_on_oom_or<T, E: OomError + Display>(
    f: impl FnMut(u32) -> Result<T, E>,
    fallback: impl FnOnce(&E) -> Result<T, E>,
    policy: &RetryPolicy,
) -> Result<(T, Attempts), RetryError<E>> {
    retry_inner(f, Some(fallback), policy)
}

fn retry_inner<T, E: OomError + Display>(
    mut f: impl FnMut(u32) -> Result<T, E>,
    fallback: Option<impl FnOnce(&E) -> Result<T, E>>,
    policy: &RetryPolicy,
) -> Result<(T, Attempts), RetryError<E>> {
    let mut report = Attempts::default();
    let max = policy.max_attempts.max(1);
    let last = loop {
        report.attempts += 1;
        match f(report.attempts) {
            Ok(v) => return Ok((v, report)),
            Err(e) if !e.is_oom() => {
                return Err(RetryError {
                    error: e,
                    attempts: report,
                });
            }
            Err(e) => {
                report.errors.push(e.to_string());
                if report.attempts >= max {
                    break e;
                }
            }
        }
        count_retry();
        if policy.empty_caches {
            report.released_bytes += empty_device_caches().iter().map(|d| d.1).sum::<u64>();
        }
        let wait = policy.backoff(report.attempts - 1);
        if !wait.is_zero() {
            std::thread::sleep(wait);
            report.waited += wait;
        }
    };
    let Some(fallback) = fallback else {
        return Err(RetryError {
            error: last,
            attempts: report,
        });
    };
    report.used_fallback = true;
    FALLBACKS.fetch_add(1, Relaxed);
    match fallback(&last) {
        Ok(v) => Ok((v, report)),
        Err(error) => Err(RetryError {
            error,
            attempts: report,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};

    fn quick() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::ZERO,
            empty_caches: false,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn retries_an_injected_oom_then_succeeds() {
        let sim = SimBackend::without_vm(64 << 20);
        let engine = CachingAllocator::new(sim.clone(), Config::default());
        sim.fail_nth_allocation(1);
        sim.fail_nth_allocation(2);
        let (buf, a) = retry_on_oom(|_| engine.allocate(4 << 20, SimStream(0)), &quick())
            .expect("third attempt fits");
        assert_eq!(buf.len(), 4 << 20);
        assert!(a.attempts >= 2, "{a:?}");
        assert_eq!(a.errors.len() as u32, a.attempts - 1);
        assert!(a.errors[0].contains("out of memory"), "{a:?}");
    }

    #[test]
    fn gives_up_then_falls_back() {
        let sim = SimBackend::without_vm(1 << 20);
        let engine = CachingAllocator::new(sim, Config::default());
        let err = retry_on_oom(
            |_| engine.allocate(8 << 20, SimStream(0)).map(|_| ()),
            &quick(),
        )
        .unwrap_err();
        assert_eq!(err.attempts.attempts, 3);
        assert!(err.to_string().contains("after 3 attempt(s)"), "{err}");
        let (v, a) = retry_on_oom_or(
            |_| engine.allocate(8 << 20, SimStream(0)).map(|_| "device"),
            |_| Ok("cpu"),
            &quick(),
        )
        .expect("fallback");
        assert_eq!((v, a.used_fallback, a.attempts), ("cpu", true, 3));
    }

    #[test]
    fn other_errors_are_not_retried() {
        let err = retry_on_oom(|_| Err::<(), _>(ToolkitError::ZeroInterval), &quick()).unwrap_err();
        assert_eq!(err.attempts.attempts, 1);
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(25),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(0), Duration::from_millis(10));
        assert_eq!(p.backoff(1), Duration::from_millis(20));
        assert_eq!(p.backoff(2), Duration::from_millis(25));
    }
}
