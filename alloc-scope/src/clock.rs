//! The clock of scope wall times. Opening and closing a scope read it once
//! each, so its price is part of every scope's.
//!
//! A reading is in *ticks*, and only differences of readings are kept (a
//! scope's open and close, a name's summed wall time); they become
//! nanoseconds when read ([`Rate`]). The source is chosen once, before
//! `main`, and never changes, so every reading of a process is in one unit:
//! - Linux on x86-64 whose kernel keeps time with the CPU's time-stamp
//!   counter (clocksource `tsc`: the kernel found it invariant and in step
//!   across CPUs): one `rdtsc` (about 10 ns on the reference VM, against
//!   about 24 ns for `clock_gettime(CLOCK_MONOTONIC)` through the vDSO,
//!   which is what `Instant::now` reads). Ticks become nanoseconds at the
//!   counter's rate against `CLOCK_MONOTONIC` over the process's life so
//!   far (both read at start and at the conversion): a duration is within
//!   the clock's own slewing of `CLOCK_MONOTONIC` (NTP adjusts that by at
//!   most 500 ppm, usually a few ppm) plus a few tens of nanoseconds;
//! - elsewhere (another kernel clocksource, `/sys` unreadable, other
//!   systems): `CLOCK_MONOTONIC` itself, a tick being a nanosecond.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

/// Ticks are nanoseconds of `CLOCK_MONOTONIC` (the default).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const MONOTONIC: u8 = 0;
/// Ticks are the CPU's time-stamp counter.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const TSC: u8 = 1;

/// The source, set before `main` (by [`choose`]) and never after.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
static SOURCE: AtomicU8 = AtomicU8::new(MONOTONIC);
/// The time-stamp counter and `CLOCK_MONOTONIC` read together at start.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
static START_TICKS: AtomicU64 = AtomicU64::new(0);
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
static START_NS: AtomicU64 = AtomicU64::new(0);

/// `CLOCK_MONOTONIC` in nanoseconds (on Unix one `clock_gettime`, without
/// `Instant`'s epoch and `Duration` arithmetic).
#[cfg(unix)]
#[inline]
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-pointer; CLOCK_MONOTONIC exists on every
    // Unix this builds for. On failure `t` stays zero.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// Nanoseconds since the first reading in this process.
#[cfg(not(unix))]
fn monotonic_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A reading of the scope clock, in ticks (see the module docs).
#[inline(always)]
pub(crate) fn now() -> u64 {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    if SOURCE.load(Relaxed) == TSC {
        return tsc();
    }
    monotonic_ns()
}

/// A reading of the scope clock once [`is_counter`] said it is the
/// time-stamp counter (one instruction, no call; 0 where there is no
/// counter, [`is_counter`] being false there). The plain paths of scope
/// open and close take it, and leave other clocks, where [`now`] calls
/// the kernel, to the general ones.
#[inline(always)]
pub(crate) fn counter_now() -> u64 {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        tsc()
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        0
    }
}

/// Whether the scope clock is the time-stamp counter ([`counter_now`]
/// reads it then).
#[inline(always)]
pub(crate) fn is_counter() -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    if SOURCE.load(Relaxed) == TSC {
        return true;
    }
    false
}

/// The time-stamp counter.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[inline(always)]
fn tsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86-64 CPU and only reads the
    // counter (the kernel allows it in user mode when it keeps time with
    // it, which `choose` checked).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The counter and `CLOCK_MONOTONIC` read as close together as a few tries
/// get them: the counter's midpoint around the clock read, from the try
/// with the narrowest bracket (a thread preempted between the two reads
/// is tried again).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn pair() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..8 {
        let a = tsc();
        let ns = monotonic_ns();
        let b = tsc();
        let width = b.wrapping_sub(a);
        if width < best.0 {
            best = (width, a.wrapping_add(width / 2), ns);
        }
        if width < 2_000 {
            break;
        }
    }
    (best.1, best.2)
}

/// Chooses the source, once, before `main` (single-threaded: nothing reads
/// the clock yet, so every reading of the process is in the unit chosen).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
extern "C" fn choose() {
    if !kernel_uses_tsc() {
        return;
    }
    let (ticks, ns) = pair();
    START_TICKS.store(ticks, Relaxed);
    START_NS.store(ns, Relaxed);
    SOURCE.store(TSC, Relaxed);
}

/// Whether the kernel's current clocksource is `tsc`, read from `/sys`
/// into a stack buffer (no allocation: this runs before `main`, possibly
/// under a global allocator that charges scopes).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn kernel_uses_tsc() -> bool {
    const PATH: &[u8] = b"/sys/devices/system/clocksource/clocksource0/current_clocksource\0";
    let mut buf = [0u8; 16];
    // SAFETY: `PATH` is NUL-terminated; `buf` is a valid buffer of its
    // length; the descriptor is closed once, here.
    let n = unsafe {
        let fd = libc::open(PATH.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    n >= 4 && &buf[..4] == b"tsc\n"
}

/// Runs [`choose`] before `main` (or when the library is loaded), while
/// the process has one thread.
#[cfg(all(target_os = "linux", target_arch = "x86_64", not(loom)))]
#[used]
#[unsafe(link_section = ".init_array")]
static CHOOSE: extern "C" fn() = choose;

/// Turns differences of readings into nanoseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rate {
    ns: u64,
    ticks: u64,
}

impl Rate {
    /// The rate now: over the process's life so far for the time-stamp
    /// counter (two clock reads), one to one otherwise.
    pub(crate) fn now() -> Rate {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        if SOURCE.load(Relaxed) == TSC {
            let (ticks, ns) = pair();
            return Rate {
                ns: ns.saturating_sub(START_NS.load(Relaxed)),
                ticks: ticks.saturating_sub(START_TICKS.load(Relaxed)),
            };
        }
        Rate { ns: 1, ticks: 1 }
    }

    /// `ticks` (a difference of readings) in nanoseconds.
    pub(crate) fn ns(self, ticks: u64) -> u64 {
        if self.ticks == 0 {
            return 0;
        }
        (u128::from(ticks) * u128::from(self.ns) / u128::from(self.ticks)).min(u128::from(u64::MAX))
            as u64
    }
}

/// Which source the process reads (`"tsc"` or `"monotonic"`).
#[cfg(test)]
fn source() -> &'static str {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    if SOURCE.load(Relaxed) == TSC {
        return "tsc";
    }
    "monotonic"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The time-stamp counter is read wherever the kernel keeps time with
    /// it (the choice ran before `main`), and `CLOCK_MONOTONIC` elsewhere.
    #[test]
    fn the_source_is_the_counter_exactly_where_the_kernel_uses_it() {
        let kernel = std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .unwrap_or_default();
        let tsc = cfg!(all(target_os = "linux", target_arch = "x86_64")) && kernel == "tsc\n";
        assert_eq!(
            source(),
            if tsc { "tsc" } else { "monotonic" },
            "{kernel:?}"
        );
    }

    /// A difference of readings converts to the time `Instant` measured
    /// around it, within a few microseconds, whichever source this machine
    /// uses.
    #[test]
    fn ticks_convert_to_the_nanoseconds_instant_measures() {
        for ms in [0u64, 1, 20] {
            let i = Instant::now();
            let a = now();
            std::thread::sleep(Duration::from_millis(ms));
            let b = now();
            let outer = i.elapsed();
            let ns = Rate::now().ns(b - a);
            assert!(
                ns <= outer.as_nanos() as u64 + 2_000 && ns + 2_000 >= ms * 1_000_000,
                "{ms} ms ({}): {ns} ns, {outer:?} around it",
                source()
            );
        }
    }
}
