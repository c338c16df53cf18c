//! One conformance suite over every backend and adaptor stack, in both
//! segment modes: the same Op programs, checked step by step by the
//! interpreter in `alloc_core::ops` (invariants, non-overlap, alignment,
//! stats against a model, nothing reserved at the end).

use alloc_core::adaptors::{FaultInjectingBackend, LimitBackend, LoggingBackend};
use alloc_core::ops::{self, Harness, NoStreams};
use alloc_core::{CachingAllocator, Config, DeviceBackend, HostBackend, SimBackend};

fn check<B: DeviceBackend + CloneBackend>(backend: B, harness: &dyn Harness<B>, label: &str) {
    for cfg in [
        "",
        "expandable_segments:false",
        "expandable_segments:false,max_split_size_mb:20",
        "roundup_power2_divisions:4",
    ] {
        for seed in 1..=4u64 {
            let a = CachingAllocator::new(
                FaultInjectingBackend::new(backend.clone_backend()),
                Config::parse(cfg).unwrap(),
            );
            let program = ops::program(seed * 7919, 600);
            let r = ops::run(&a, harness, &program);
            assert!(r.is_ok(), "{label} `{cfg}` seed {seed}: {}", r.unwrap_err());
            assert!(
                r.unwrap().allocs > 0,
                "{label} `{cfg}` seed {seed}: nothing allocated"
            );
        }
    }
}

/// Backends here are cheap handles (Sim shares its device, Host is a unit).
trait CloneBackend {
    fn clone_backend(&self) -> Self;
}
impl CloneBackend for SimBackend {
    fn clone_backend(&self) -> Self {
        self.clone()
    }
}
impl CloneBackend for HostBackend {
    fn clone_backend(&self) -> Self {
        *self
    }
}

#[test]
fn sim() {
    let sim = SimBackend::new(2 << 30);
    sim.set_auto_complete(false);
    check(sim.clone(), &sim, "sim");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    assert_eq!(sim.used(), 0);
}

#[test]
fn sim_without_vm() {
    let sim = SimBackend::without_vm(2 << 30);
    check(sim.clone(), &sim, "sim without vm");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

#[test]
fn host() {
    check(HostBackend::new(), &NoStreams, "host");
}

/// Adaptor stacks wrap a fresh backend per run.
fn check_stack<B: DeviceBackend>(make: impl Fn() -> B, label: &str) {
    for cfg in ["", "expandable_segments:false"] {
        let a = CachingAllocator::new(
            FaultInjectingBackend::new(make()),
            Config::parse(cfg).unwrap(),
        );
        let r = ops::run(&a, &NoStreams, &ops::program(42, 800));
        assert!(r.is_ok(), "{label} `{cfg}`: {}", r.unwrap_err());
    }
}

#[test]
fn limit_over_sim() {
    // a tight cap so the reclaim ladder and OOM paths run
    check_stack(
        || LimitBackend::new(SimBackend::new(2 << 30), 160 << 20),
        "limit<sim>",
    );
}

#[test]
fn logging_over_limit_over_sim() {
    check_stack(
        || LoggingBackend::new(LimitBackend::new(SimBackend::new(2 << 30), 1 << 30), 64),
        "logging<limit<sim>>",
    );
}

#[test]
fn logging_over_host() {
    check_stack(
        || LoggingBackend::new(HostBackend::new(), 16),
        "logging<host>",
    );
}

#[test]
fn limit_over_host() {
    check_stack(
        || LimitBackend::new(HostBackend::new(), 256 << 20),
        "limit<host>",
    );
}
