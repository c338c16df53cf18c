//! Streams on the stub driver: unmapping and reuse while kernels run on
//! other streams (expandable segments on, the default), the legacy and
//! per-thread default stream handles, destroyed streams, graph capture, and
//! access for peer devices.

use std::sync::Arc;

use alloc_core::Config;
use alloc_cuda::cudarc::driver::{CudaStream, sys};
use alloc_cuda::{CudaAllocator, StreamHandle};
use alloc_cuda_stub::{RawStream, stub};

const MIB: usize = 1 << 20;

fn raw(s: &Arc<CudaStream>) -> RawStream {
    s.cu_stream() as RawStream
}

fn alloc(cfg: &str) -> CudaAllocator {
    CudaAllocator::with_config(0, Config::parse(cfg).expect("valid config"))
        .expect("the stub device opens")
}

#[test]
fn pages_are_unmapped_without_waiting_for_unrelated_streams() {
    let (stub, _g) = stub(false);
    let (violations, unsafe_releases) = (stub.violations(), stub.unsafe_releases());
    stub.set_capacity(96 * MIB);
    let a = alloc("");
    assert!(a.uses_expandable_segments());
    let (s1, s2, s3) = (
        a.new_stream().expect("s1"),
        a.new_stream().expect("s2"),
        a.new_stream().expect("s3"),
    );
    // A long kernel on s3 using its own buffer.
    let c = a.allocate(8 * MIB, &s3).expect("c");
    stub.launch_on(raw(&s3), c.device_address() as usize, 8 * MIB);
    // 40 MiB cached on s1 (idle), then 60 MiB on s2: only fits once the
    // cached pages of s1 are unmapped.
    drop(a.allocate(40 * MIB, &s1).expect("a"));
    let stalls = stub.stalls();
    let b = a
        .allocate(60 * MIB, &s2)
        .expect("fits after unmapping s1's cache");
    assert!(stub.busy(raw(&s3)), "s3's kernel was waited for");
    assert_eq!(
        stub.stalls(),
        stalls,
        "a synchronise waited for queued work"
    );
    assert!(a.stats().num_device_unmap >= 1, "{:?}", a.stats());
    assert_eq!(stub.unsafe_releases(), unsafe_releases);
    assert_eq!(stub.violations(), violations);
    drop((b, c));
    stub.complete_all();
    a.empty_cache();
    assert_eq!(stub.used(), 0);
}

#[test]
fn memory_a_kernel_still_uses_is_neither_unmapped_nor_reused() {
    let (stub, _g) = stub(false);
    let (violations, unsafe_releases) = (stub.violations(), stub.unsafe_releases());
    stub.set_capacity(64 * MIB);
    let a = alloc("");
    let (s1, s2) = (a.new_stream().expect("s1"), a.new_stream().expect("s2"));
    let x = a.allocate(30 * MIB, &s1).expect("x");
    let px = x.device_address();
    // A kernel on s2 reads x; x is freed on s1 while it runs.
    stub.launch_on(raw(&s2), px as usize, 30 * MIB);
    x.record_stream(&s2);
    drop(x);
    // Pressure on s1: the reclaim ladder runs, but x's pages stay.
    for _ in 0..3 {
        match a.allocate(30 * MIB, &s1) {
            Ok(y) => assert_ne!(y.device_address(), px, "reused while s2 reads it"),
            Err(e) => assert!(e.to_string().starts_with("out of memory"), "{e}"),
        }
    }
    assert_eq!(
        stub.unsafe_releases(),
        unsafe_releases,
        "unmapped under a kernel"
    );
    stub.complete(raw(&s2));
    let z = a.allocate(30 * MIB, &s1).expect("fits once s2 finished");
    drop(z);
    a.empty_cache();
    assert_eq!(stub.unsafe_releases(), unsafe_releases);
    assert_eq!(stub.violations(), violations);
    assert_eq!(a.backend().driver_errors(), 0);
}

#[test]
fn per_thread_default_streams_of_two_threads_are_two_streams() {
    let (stub, _g) = stub(false);
    let violations = stub.violations();
    let a = Arc::new(alloc("expandable_segments:false"));
    // Thread 1 frees a block in its per-thread stream's order while a
    // kernel there still uses it.
    let a1 = Arc::clone(&a);
    let p1 = std::thread::spawn(move || {
        let s = a1.context().per_thread_stream();
        let b = a1.allocate(4 * MIB, &s).expect("alloc");
        let p = b.device_address();
        stub.launch_on(raw(&s), p as usize, 4 * MIB); // 0x2: this thread's
        drop(b);
        p
    })
    .join()
    .expect("thread 1");
    // Thread 2's per-thread stream is another stream: not that block.
    let a2 = Arc::clone(&a);
    let p2 = std::thread::spawn(move || {
        let s = a2.context().per_thread_stream();
        let b = a2.allocate(4 * MIB, &s).expect("alloc");
        b.device_address()
    })
    .join()
    .expect("thread 2");
    assert_ne!(p1, p2, "another thread's per-thread stream got the block");
    // On thread 1 itself, stream order: the block comes back at once.
    assert_eq!(stub.violations(), violations);
}

#[test]
fn the_legacy_handle_is_the_default_stream() {
    let (stub, _g) = stub(false);
    let violations = stub.violations();
    let a = alloc("expandable_segments:false");
    let legacy = StreamHandle::from_raw(0x1 as sys::CUstream);
    assert_eq!(legacy, StreamHandle::DEFAULT);
    let b = a.engine().allocate(MIB, StreamHandle::DEFAULT).expect("b");
    let p = b.ptr();
    stub.launch(0); // the legacy stream is busy
    drop(b);
    // the same stream, named 0x1: stream order, reused at once
    let c = a.engine().allocate(MIB, legacy).expect("c");
    assert_eq!(c.ptr(), p);
    drop(c);
    stub.complete_all();
    assert_eq!(stub.violations(), violations);
}

#[test]
fn streams_of_cached_blocks_outlive_their_last_buffer() {
    let (stub, _g) = stub(false);
    let violations = stub.violations();
    let a = alloc("expandable_segments:false");
    let s1 = a.new_stream().expect("s1");
    drop(a.allocate(4 * MIB, &s1).expect("on s1"));
    drop(s1); // the user's last handle: the engine still keys a block by it
    // s2 finds s1's cached block and asks whether s1 is idle (an event on s1).
    let s2 = a.new_stream().expect("s2");
    let b = a.allocate(4 * MIB, &s2).expect("on s2");
    assert_eq!(a.stats().num_cross_stream_reuse, 1);
    drop(b);
    a.empty_cache();
    assert_eq!(stub.violations(), violations, "a destroyed stream was used");
}

/// Begins a global-mode capture on `s` (the default of CUDA graphs).
fn begin_capture(s: &Arc<CudaStream>) {
    let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL;
    // SAFETY: a live stream of the current context.
    unsafe { sys::cuStreamBeginCapture_v2(s.cu_stream(), mode) }
        .result()
        .expect("begin capture");
}

fn end_capture(s: &Arc<CudaStream>) -> Result<(), sys::CUresult> {
    let mut graph: sys::CUgraph = core::ptr::null_mut();
    // SAFETY: `s` is capturing; `graph` is an out-pointer.
    match unsafe { sys::cuStreamEndCapture(s.cu_stream(), &mut graph) } {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        e => Err(e),
    }
}

#[test]
fn allocating_and_freeing_during_graph_capture_keeps_the_capture_legal() {
    for cfg in ["", "expandable_segments:false"] {
        let (stub, _g) = stub(false);
        let violations = stub.violations();
        let a = alloc(cfg);
        let (s, other) = (a.new_stream().expect("s"), a.new_stream().expect("other"));
        a.context().bind_to_thread().expect("bind");
        let warm = a.allocate(MIB, &other).expect("before the capture");
        // a block used on a third stream, pending on an event recorded
        // before the capture: the capture's allocations query it
        let third = a.new_stream().expect("third");
        let early = a.allocate(2 * MIB, &other).expect("early");
        stub.launch(raw(&third));
        early.record_stream(&third);
        drop(early);
        begin_capture(&s);
        // grows (new segment or pages) while s captures
        let x = a.allocate(30 * MIB, &s).expect("allocate during capture");
        // a block of another stream used by the capture, then freed
        warm.record_stream(&s);
        drop(warm);
        drop(x);
        let queries = stub.calls("cuEventQuery");
        drop(a.allocate(MIB, &other).expect("queries the pending event"));
        assert!(
            stub.calls("cuEventQuery") > queries,
            "`{cfg}`: no event queried"
        );
        stub.complete(raw(&third));
        // releasing cached memory during the capture
        a.empty_cache();
        assert!(a.backend().capture_syncs() >= 1, "`{cfg}`");
        let ended = end_capture(&s);
        assert_eq!(ended, Ok(()), "`{cfg}`: the capture was invalidated");
        assert_eq!(stub.violations(), violations, "`{cfg}`: illegal calls");
        a.empty_cache();
        assert_eq!(a.backend().deferred_releases(), 0, "`{cfg}`");
        assert_eq!(a.stats().reserved_bytes.all.current, 0, "`{cfg}`");
        assert_eq!(stub.used(), 0, "`{cfg}`: memory left after the capture");
        assert_eq!(a.backend().driver_errors(), 0, "`{cfg}`");
    }
}

#[test]
fn pages_are_granted_to_peer_devices() {
    let (stub, _g) = stub(false);
    let violations = stub.violations();
    stub.set_devices(2);
    let a = alloc("expandable_segments:true");
    let s = a.new_stream().expect("s");
    let b = a.allocate(4 * MIB, &s).expect("b");
    assert_eq!(
        stub.access(b.device_address() as usize),
        0b11,
        "device 1 (a peer) was not granted access"
    );
    drop(b);
    drop(a);
    // Where device 1 cannot reach device 0, only the owner is granted.
    stub.set_peer(1, 0, false);
    let a = alloc("expandable_segments:true");
    let b = a.allocate(4 * MIB, &s).expect("b");
    assert_eq!(stub.access(b.device_address() as usize), 0b01);
    drop(b);
    drop(a);
    assert_eq!(stub.violations(), violations);
    assert_eq!(stub.used(), 0);
}

#[test]
fn pinned_memory_used_by_a_capture_is_not_queried_during_it() {
    let (stub, _g) = stub(false);
    let violations = stub.violations();
    let pool = alloc_cuda::PinnedPool::new(0).expect("pinned pool");
    let a = alloc("");
    let s = a.new_stream().expect("s");
    a.context().bind_to_thread().expect("bind");
    let staging = pool.allocate(4096).expect("pinned");
    begin_capture(&s);
    staging.record_stream(&s); // a captured copy reads it
    drop(staging);
    let again = pool.allocate(4096).expect("pinned, during the capture");
    drop(again);
    assert_eq!(end_capture(&s), Ok(()), "the capture was invalidated");
    assert_eq!(
        stub.violations(),
        violations,
        "illegal calls during the capture"
    );
}

/// core:P2 on the driver: a sync while a graph is captured cannot wait for
/// the capturing stream nor for another thread's per-thread stream, so the
/// backend reports it partial and the engine releases nothing by it. Before
/// the coverage was reported, `empty_cache` during the capture unmapped (or,
/// once the capture ended, freed) a block another thread's kernel still
/// used.
#[test]
fn a_sync_during_a_capture_proves_nothing_idle() {
    use alloc_core::{DeviceBackend, SyncCoverage};
    for cfg in ["", "expandable_segments:false"] {
        let (stub, _g) = stub(false);
        let unsafe_before = stub.unsafe_releases();
        let a = Arc::new(alloc(cfg));
        let a1 = Arc::clone(&a);
        std::thread::spawn(move || {
            let s = a1.context().per_thread_stream();
            let b = a1.allocate(8 * MIB, &s).expect("alloc");
            stub.launch_on(raw(&s), b.device_address() as usize, 8 * MIB); // 0x2: this thread's
            drop(b); // free in that stream's order; its kernel still runs
        })
        .join()
        .expect("the other thread");
        let s = a.new_stream().expect("s");
        a.context().bind_to_thread().expect("bind");
        // the capture's stream is known to the backend (allocated on, as a
        // capture's first allocation makes it): a sync skips it, never
        // synchronises it (that would invalidate the capture)
        drop(a.allocate(MIB, &s).expect("on s"));
        assert_eq!(a.backend().synchronize(), SyncCoverage::All, "`{cfg}`");
        begin_capture(&s);
        assert_eq!(a.backend().synchronize(), SyncCoverage::Partial, "`{cfg}`");
        a.empty_cache();
        assert_eq!(
            end_capture(&s),
            Ok(()),
            "`{cfg}`: the capture was invalidated"
        );
        // an allocation after the capture does the releases it deferred
        drop(a.allocate(MIB, &s).expect("after the capture"));
        assert_eq!(
            stub.unsafe_releases(),
            unsafe_before,
            "`{cfg}`: memory released while another thread's kernel used it"
        );
        assert!(
            a.stats().reserved_bytes.all.current as usize >= 8 * MIB,
            "`{cfg}`"
        );
        stub.complete_all();
        a.empty_cache();
        assert_eq!(a.stats().reserved_bytes.all.current, 0, "`{cfg}`");
        assert_eq!(a.backend().driver_errors(), 0, "`{cfg}`");
    }
}
