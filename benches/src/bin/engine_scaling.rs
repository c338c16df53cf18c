//! `engine_scaling BACKEND SIZE THREADS PAIRS [ROUNDS]`: cache-hit
//! alloc+free pairs of the caching engine on `THREADS` threads at once, each
//! thread on its own stream (the sim backend) or all on the one stream the
//! host backend has, `PAIRS` pairs per thread, `ROUNDS` rounds (default 1).
//! Prints one line per round: wall time, ns per pair of the aggregate (wall ÷
//! all pairs), ns per pair per thread (wall ÷ one thread's pairs) and the
//! aggregate throughput in million pairs per second, then the load average.
//!
//! BACKEND: `sim` (the simulated device, one stream per thread) | `host`
//! (real host memory, one stream for every thread). SIZE: bytes per request
//! (4096 and 8388608 are the figures of RESULTS.md). Each thread warms its
//! stream's cache with one pair before the clock starts, so every timed pair
//! is a cache hit.
//!
//! With the front cache (`front_cache_mb`, on by default) every timed pair
//! is a hit in the thread's own shard, on either backend (its shards are
//! per thread, not per stream, so threads on the host's one stream do not
//! share one).
//!
//! The engine's settings come from `ALLOC_CONF` (the defaults when unset):
//! `ALLOC_CONF=front_cache_mb:0` runs every pair through the engine lock,
//! the figures before the front cache; the line printed first says which.
//!
//! With `LATENCY=1` in the environment every thread also times each of its
//! pairs (two clock reads per pair, included in the figures) and each round
//! prints the latency of one pair over all threads: median, p99, p99.9, the
//! maximum, and how many pairs took longer than 100 µs (a stall). The pinned
//! host pool is this engine over page-locked memory on one stream, so `host`
//! with `LATENCY=1` is its pattern without the driver.
//!
//! `LATENCY=2` also says why each stall was long: the thread's context
//! switches are read (`getrusage(RUSAGE_THREAD)`, one call per pair, included
//! in the figures) before and after every pair, and a stall counts as
//! *blocked* when the thread gave up the CPU during it (a voluntary switch:
//! it waited on a futex, a lock or a sleep), *preempted* when only the
//! scheduler took the CPU away (involuntary switches: more runnable threads
//! than cores), and *running* when it never left the CPU. A lock that makes
//! other threads wait shows as blocked (or running, while they spin).
//!
//! With `RECORD=1` (sim only) every pair's buffer is also used on a second
//! stream of its thread (`record_stream`) before it is dropped, so every
//! free records an event and waits for it, and the next allocation queries
//! it: the pattern of the pinned host pool's blocks used by transfers,
//! which never take the front cache. `EVENT_NS=N` makes each simulated
//! event call (`record_event`, `event_done`) spin for N ns, to stand for
//! the driver's `cuEventRecord` / `cuEventQuery`; `EVENT_SLEEP_NS=N` makes
//! each sleep instead (giving up the CPU: a driver call that blocks, such as
//! a batch of `cuEventCreate`), which shows what the engine lock
//! serialises even on a machine with fewer free cores than threads. The
//! sim's events complete at once, so every free is pending for one
//! allocation.
//!
//! Under `valgrind --tool=callgrind` with `THREADS` 1, the difference of the
//! instruction counts of two runs with different `PAIRS` divided by the
//! difference of `PAIRS` is the instructions per pair (start-up cancels).

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use alloc_core::{CachingAllocator, Config, DeviceBackend, HostBackend, SimBackend, SimStream};

/// What the command line asked for.
struct Args {
    backend: String,
    size: usize,
    threads: usize,
    pairs: u64,
    rounds: usize,
}

fn usage(why: &str) -> ! {
    eprintln!(
        "engine_scaling: {why}\nusage: engine_scaling sim|host SIZE THREADS PAIRS [ROUNDS]\n\
         e.g. engine_scaling sim 4096 2 2000000 5"
    );
    std::process::exit(2)
}

fn parse<T: std::str::FromStr>(what: &str, s: Option<String>) -> T {
    let Some(s) = s else {
        usage(&format!("missing {what}"))
    };
    s.parse()
        .unwrap_or_else(|_| usage(&format!("{what} {s:?} is not a number")))
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let backend = it.next().unwrap_or_else(|| usage("missing BACKEND"));
    if backend != "sim" && backend != "host" {
        usage(&format!("BACKEND {backend:?} is neither sim nor host"));
    }
    let size: usize = parse("SIZE", it.next());
    let threads: usize = parse("THREADS", it.next());
    let pairs: u64 = parse("PAIRS", it.next());
    let rounds: usize = it.next().map_or(1, |s| parse("ROUNDS", Some(s)));
    if size == 0 || threads == 0 || pairs == 0 || rounds == 0 {
        usage("SIZE, THREADS, PAIRS and ROUNDS must be at least 1");
    }
    Args {
        backend,
        size,
        threads,
        pairs,
        rounds,
    }
}

/// One round: every thread warms its stream, waits for the others, then runs
/// `pairs` pairs; the wall time runs from the common start to the last
/// thread's end. With `latency`, each pair is timed too (nanoseconds, all
/// threads' together).
#[allow(clippy::too_many_arguments)]
fn round<B: DeviceBackend + Sync>(
    a: &CachingAllocator<B>,
    stream_of: impl Fn(usize) -> B::Stream + Sync,
    used_on: Option<&(dyn Fn(usize) -> B::Stream + Sync)>,
    size: usize,
    threads: usize,
    pairs: u64,
    latency: u8,
) -> (Duration, Vec<(u64, Why)>)
where
    B::Stream: Send,
{
    let start = Barrier::new(threads + 1);
    let done = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (a, start, done, stream_of) = (a, &start, &done, &stream_of);
                s.spawn(move || {
                    let stream = stream_of(t);
                    let other = used_on.map(|f| f(t));
                    let pair = || {
                        let b = black_box(a.allocate(black_box(size), stream).unwrap());
                        if let Some(o) = other {
                            b.record_stream(o);
                        }
                        drop(b);
                    };
                    let mut times =
                        Vec::with_capacity(if latency > 0 { pairs as usize } else { 0 });
                    pair();
                    start.wait();
                    if latency == 2 {
                        let mut before = switches();
                        for _ in 0..pairs {
                            let t0 = Instant::now();
                            pair();
                            let ns = t0.elapsed().as_nanos() as u64;
                            let after = switches();
                            let why = if after.0 > before.0 {
                                Why::Blocked
                            } else if after.1 > before.1 {
                                Why::Preempted
                            } else {
                                Why::Running
                            };
                            times.push((ns, why));
                            before = after;
                        }
                    } else if latency == 1 {
                        for _ in 0..pairs {
                            let t0 = Instant::now();
                            pair();
                            times.push((t0.elapsed().as_nanos() as u64, Why::Running));
                        }
                    } else {
                        for _ in 0..pairs {
                            pair();
                        }
                    }
                    done.wait();
                    times
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        done.wait();
        let wall = t0.elapsed();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.join().expect("a worker panicked"));
        }
        (wall, all)
    })
}

/// What the thread did during a timed pair, by its context switches
/// (`LATENCY=2`; `Running` when not classified).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// It gave up the CPU (a voluntary switch: a futex, lock or sleep).
    Blocked,
    /// Only the scheduler took the CPU away (involuntary switches).
    Preempted,
    /// It never left the CPU.
    Running,
}

/// The calling thread's (voluntary, involuntary) context switches so far
/// (Linux: `RUSAGE_THREAD`; `LATENCY=2` is refused elsewhere).
#[cfg(not(target_os = "linux"))]
fn switches() -> (i64, i64) {
    (0, 0)
}

/// The calling thread's (voluntary, involuntary) context switches so far.
#[cfg(target_os = "linux")]
fn switches() -> (i64, i64) {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value it is
    // given; `RUSAGE_THREAD` reads the calling thread's counters.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `ru` is a valid, writable `rusage`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if rc != 0 {
        return (0, 0);
    }
    (ru.ru_nvcsw, ru.ru_nivcsw)
}

/// The latency line of a round: quantiles of every timed pair, and (with
/// `classified`) why the stalls were long.
fn report_latency(mut ns: Vec<(u64, Why)>, classified: bool) {
    if ns.is_empty() {
        return;
    }
    ns.sort_unstable_by_key(|&(t, _)| t);
    let q = |p: f64| ns[((ns.len() - 1) as f64 * p).round() as usize].0;
    let stalls = |why: Option<Why>| {
        ns.iter()
            .filter(|&&(t, w)| t > 100_000 && why.is_none_or(|y| y == w))
            .count()
    };
    print!(
        "latency pairs={} p50_ns={} p99_ns={} p99.9_ns={} max_ns={} over_100us={}",
        ns.len(),
        q(0.5),
        q(0.99),
        q(0.999),
        ns[ns.len() - 1].0,
        stalls(None)
    );
    if classified {
        print!(
            " over_100us_blocked={} over_100us_preempted={} over_100us_running={}",
            stalls(Some(Why::Blocked)),
            stalls(Some(Why::Preempted)),
            stalls(Some(Why::Running))
        );
    }
    println!();
}

fn report(args: &Args, r: usize, wall: Duration) {
    let ns = wall.as_nanos() as f64;
    let all = args.pairs as f64 * args.threads as f64;
    println!(
        "{} size={} threads={} pairs/thread={} round={} wall_ms={:.1} ns/pair_aggregate={:.2} \
         ns/pair_per_thread={:.2} Mpairs/s={:.3}",
        args.backend,
        args.size,
        args.threads,
        args.pairs,
        r,
        ns / 1e6,
        ns / all,
        ns / args.pairs as f64,
        all / ns * 1e3
    );
}

fn main() {
    let args = args();
    let config = Config::from_env().unwrap_or_else(|e| usage(&e.to_string()));
    println!(
        "config {:?} (front_cache_mb {})",
        config.to_conf_string(),
        config.front_cache_bytes >> 20
    );
    let latency: u8 = match std::env::var("LATENCY").as_deref() {
        Err(_) | Ok("0") => 0,
        Ok("1") => 1,
        Ok("2") if cfg!(target_os = "linux") => 2,
        Ok("2") => {
            usage("LATENCY=2 reads each thread's context switches: Linux only; use LATENCY=1")
        }
        Ok(v) => usage(&format!(
            "LATENCY {v:?}: 1 times every pair, 2 also classifies the stalls, 0 or unset neither"
        )),
    };
    let record = std::env::var("RECORD").is_ok_and(|v| v == "1");
    let event_ns: u64 = std::env::var("EVENT_NS").map_or(0, |v| {
        v.parse()
            .unwrap_or_else(|_| usage(&format!("EVENT_NS {v:?} is not a number of nanoseconds")))
    });
    let event_sleep_ns: u64 = std::env::var("EVENT_SLEEP_NS").map_or(0, |v| {
        v.parse().unwrap_or_else(|_| {
            usage(&format!(
                "EVENT_SLEEP_NS {v:?} is not a number of nanoseconds"
            ))
        })
    });
    if record && args.backend != "sim" {
        usage("RECORD=1 needs a second stream: BACKEND sim");
    }
    if record || event_ns != 0 || event_sleep_ns != 0 {
        println!(
            "record_stream on a second stream: {record}; event call cost {event_ns} ns spun, {event_sleep_ns} ns slept"
        );
    }
    let second = |t: usize| SimStream(1_000 + t as u32);
    for r in 0..args.rounds {
        let (wall, times) = if args.backend == "sim" {
            let sim = SimBackend::new(64 << 30);
            sim.set_event_cost_ns(event_ns);
            sim.set_event_sleep_ns(event_sleep_ns);
            let a = CachingAllocator::new(sim, config.clone());
            round(
                &a,
                |t| SimStream(t as u32),
                if record { Some(&second) } else { None },
                args.size,
                args.threads,
                args.pairs,
                latency,
            )
        } else {
            let a = CachingAllocator::new(HostBackend::new(), config.clone());
            round(
                &a,
                |_| (),
                None,
                args.size,
                args.threads,
                args.pairs,
                latency,
            )
        };
        report(&args, r, wall);
        report_latency(times, latency == 2);
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("loadavg {}", l.trim());
    }
}
