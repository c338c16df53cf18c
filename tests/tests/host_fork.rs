//! After `fork`, the child (a single thread, whatever locks other threads held)
//! allocates, opens scopes and prints a report; an infallible allocation over a
//! hard budget aborts the child as Rust defines it. Runs without the test
//! harness so that it controls which threads exist.

use std::hint::black_box;

use alloc_host::{ScopeBuilder, TrackingAllocator, scope};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

fn fork_and_wait(child: impl FnOnce() -> i32) -> libc::c_int {
    // SAFETY: fork has no preconditions; the child runs `child` then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child();
        // SAFETY: _exit ends the child without running the parent's atexit hooks.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    status
}

fn main() {
    // Busy threads allocating while we fork: none of our paths holds a lock, so
    // the child cannot inherit one.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _g = scope("busy");
                    black_box(vec![0u8; 100]);
                }
            })
        })
        .collect();
    let outer = scope("parent-work");
    let held = black_box(vec![0u8; 10_000]);
    let live_before = outer.stats().live_bytes;
    assert_eq!(live_before, 10_000);

    let status = fork_and_wait(|| {
        let g = scope("child-work");
        let v = black_box(vec![1u8; 5000]);
        let s = g.stats();
        let ok = s.allocations == 1 && s.live_bytes == 5000 && s.peak_bytes == 5000;
        drop(v);
        let report = alloc_host::report();
        let ok = ok && report.contains("child-work") && g.stats().live_bytes == 0;
        if ok { 0 } else { 1 }
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status}"
    );

    let status = fork_and_wait(|| {
        let _g = ScopeBuilder::new("capped")
            .hard_limit(1 << 20)
            .enter()
            .unwrap();
        // Infallible allocation over the budget: handle_alloc_error aborts.
        let v = black_box(vec![0u8; 2 << 20]);
        v.len() as i32
    });
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
        "expected SIGABRT, status {status}"
    );

    assert_eq!(
        outer.stats().live_bytes,
        live_before,
        "the forked children changed nothing here"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
    let with_held = outer.stats().live_bytes;
    drop(held);
    assert_eq!(with_held - outer.stats().live_bytes, 10_000);
    println!("test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
