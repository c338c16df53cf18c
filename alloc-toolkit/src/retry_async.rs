//! [`retry_on_oom_async`] (feature `async`): [`retry_on_oom`](crate::retry_on_oom)
//! for async code. The wait between attempts is awaited, never a blocking
//! sleep, so a runtime's worker thread serves other requests meanwhile; the
//! waits grow exponentially with jitter (through `backon`), so requests that
//! ran out of memory together spread their retries.
//!
//! The runtime's timer is passed in (`tokio::time::sleep`, or any
//! `Fn(Duration) -> impl Future`): the toolkit depends on no runtime.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::cleanup::empty_device_caches;
use crate::retry::{Attempts, OomError, RetryError, RetryPolicy, count_retry};

fn lock(m: &Mutex<Attempts>) -> MutexGuard<'_, Attempts> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The back-off of `policy` as a `backon` builder.
fn backoff(policy: &RetryPolicy) -> ExponentialBuilder {
    let b = ExponentialBuilder::new()
        .with_min_delay(policy.initial_backoff)
        .with_max_delay(policy.max_backoff)
        .with_factor(policy.backoff_multiplier.max(1.0) as f32)
        .with_max_times(policy.max_attempts.max(1) as usize - 1);
    if policy.jitter { b.with_jitter() } else { b }
}

/// Calls `f(attempt)` (attempt counts from 1) until it succeeds, returns an
/// error that is not out of memory, or `policy.max_attempts` calls are made;
/// between attempts empties the device caches (if asked) and awaits
/// `sleep(wait)`. `Attempts::waited` sums the waits asked for.
///
/// ```
/// # use alloc_toolkit::{RetryPolicy, ToolkitError, retry_on_oom_async};
/// # let rt = async {
/// let (v, attempts) = retry_on_oom_async(
///     |attempt| async move { if attempt < 2 { Err(ToolkitError::HostUnavailable { requested: 1, needed: 1, available: 0, factor: 1.0, source_name: "test" }) } else { Ok(7) } },
///     &RetryPolicy { initial_backoff: std::time::Duration::ZERO, ..RetryPolicy::default() },
///     |_d| async {}, // tokio::time::sleep in a tokio program
/// ).await.unwrap();
/// assert_eq!((v, attempts.attempts), (7, 2));
/// # };
/// ```
pub async fn retry_on_oom_async<T, E, F, Fut, S, SFut>(
    mut f: F,
    policy: &RetryPolicy,
    sleep: S,
) -> Result<(T, Attempts), RetryError<E>>
where
    E: OomError + Display,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    S: Fn(Duration) -> SFut + 'static,
    SFut: Future,
{
    // A mutex, not a RefCell: the future holds references to it across
    // awaits, and must stay `Send` for `tokio::spawn`.
    let report = Mutex::new(Attempts::default());
    let empty = policy.empty_caches;
    let call = || {
        let attempt = {
            let mut r = lock(&report);
            r.attempts += 1;
            r.attempts
        };
        f(attempt)
    };
    let result = call
        .retry(backoff(policy))
        .sleep(sleep)
        .when(|e: &E| e.is_oom())
        .notify(|e: &E, wait: Duration| {
            count_retry();
            let mut r = lock(&report);
            r.errors.push(e.to_string());
            r.waited += wait;
            if empty {
                r.released_bytes += empty_device_caches().iter().map(|d| d.1).sum::<u64>();
            }
        })
        .await;
    let mut attempts = report.into_inner().unwrap_or_else(|e| e.into_inner());
    match result {
        Ok(v) => Ok((v, attempts)),
        Err(error) => {
            if error.is_oom() && attempts.errors.len() < attempts.attempts as usize {
                attempts.errors.push(error.to_string());
            }
            Err(RetryError { error, attempts })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ToolkitError;
    use std::sync::{Arc, Mutex};

    fn oom() -> ToolkitError {
        ToolkitError::HostUnavailable {
            requested: 1,
            needed: 1,
            available: 0,
            factor: 1.0,
            source_name: "test",
        }
    }

    /// Polls a future that never waits on anything but the recording
    /// sleeper below (which is ready at once) to completion.
    fn block_on<F: Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    fn policy(jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(10),
            backoff_multiplier: 2.0,
            max_backoff: Duration::from_millis(1000),
            empty_caches: false,
            jitter,
        }
    }

    /// Runs a call that is out of memory `fails` times; returns the result
    /// and the waits the sleeper was asked for.
    fn run(fails: u32, p: &RetryPolicy) -> (Result<(u32, Attempts), String>, Vec<Duration>) {
        let waits = Arc::new(Mutex::new(Vec::new()));
        let w = waits.clone();
        let r = block_on(retry_on_oom_async(
            |attempt| async move {
                if attempt <= fails {
                    Err(oom())
                } else {
                    Ok(attempt)
                }
            },
            p,
            move |d| {
                w.lock().unwrap().push(d);
                async {}
            },
        ));
        let waits = waits.lock().unwrap().clone();
        (r.map_err(|e| e.to_string()), waits)
    }

    #[test]
    fn the_future_is_send() {
        fn send<T: Send>(_: &T) {}
        let p = policy(false);
        let fut = retry_on_oom_async(|_| async { Ok::<_, ToolkitError>(1) }, &p, |_| async {});
        send(&fut);
    }

    #[test]
    fn retries_with_exponential_waits_then_succeeds() {
        let (r, waits) = run(2, &policy(false));
        let (v, a) = r.unwrap();
        assert_eq!((v, a.attempts, a.errors.len()), (3, 3, 2));
        assert_eq!(
            waits,
            vec![Duration::from_millis(10), Duration::from_millis(20)]
        );
        assert_eq!(a.waited, Duration::from_millis(30));
    }

    #[test]
    fn gives_up_after_max_attempts_and_skips_other_errors() {
        let (r, waits) = run(10, &policy(false));
        let e = r.unwrap_err();
        assert!(e.contains("after 4 attempt(s)"), "{e}");
        assert_eq!(waits.len(), 3);
        let other = block_on(retry_on_oom_async(
            |_| async { Err::<(), _>(ToolkitError::ZeroInterval) },
            &policy(false),
            |_| async {},
        ))
        .unwrap_err();
        assert_eq!(other.attempts.attempts, 1);
    }

    #[test]
    fn jitter_spreads_the_waits() {
        // With jitter each wait is base + a random share (up to 100%) of the
        // base: within [base, 2 x base], and not all equal to the base.
        let mut jittered = false;
        for _ in 0..20 {
            let (_, waits) = run(2, &policy(true));
            let base = [10u64, 20];
            for (w, b) in waits.iter().zip(base) {
                assert!(
                    *w >= Duration::from_millis(b) && *w <= Duration::from_millis(2 * b),
                    "{waits:?}"
                );
                jittered |= *w != Duration::from_millis(b);
            }
        }
        assert!(jittered, "20 runs without any jitter");
    }
}
