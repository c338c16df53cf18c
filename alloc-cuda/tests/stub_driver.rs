//! The CUDA backend's control flow and error paths on the stub driver
//! (alloc-cuda-stub's libcuda_stub.c): no GPU needed.

use std::sync::Arc;

use alloc_core::adaptors::FaultInjectingBackend;
use alloc_core::ops::{self, Harness};
use alloc_core::{AllocError, BackendError, CachingAllocator, Config, DeviceBackend, DevicePtr};
use alloc_cuda::cudarc::driver::CudaStream;
use alloc_cuda::{CudaAllocator, CudaBackend, CudaError, PinnedPool, StreamHandle};
use alloc_cuda_stub::{INVALID_VALUE, OOM, RawStream, Stub, stub};

const MIB: usize = 1 << 20;

/// The raw handle of a cudarc stream, as the stub takes it.
fn raw(s: &Arc<CudaStream>) -> RawStream {
    s.cu_stream() as RawStream
}

fn alloc(cfg: &str) -> CudaAllocator {
    CudaAllocator::with_config(0, Config::parse(cfg).expect("valid config"))
        .expect("the stub device opens")
}

#[test]
fn buffers_carry_data_through_cudarc_copies() {
    let (_stub, _g) = stub(false);
    let a = alloc("");
    let stream = a.new_stream().expect("stream");
    let mut buf = a.allocate(1000 * 4, &stream).expect("allocate");
    let data: Vec<u32> = (0..1000).collect();
    stream.memcpy_htod(&data, &mut buf).expect("htod");
    let mut back = vec![0u32; 1000];
    stream.memcpy_dtoh(&buf, &mut back).expect("dtoh");
    assert_eq!(back, data);
    assert_eq!(a.stats().allocation.all.current, 1);
    drop(buf);
    assert_eq!(a.stats().allocation.all.current, 0);
    a.validate().expect("invariants");
}

#[test]
fn missing_device_is_a_clear_error() {
    let (_stub, _g) = stub(false);
    let e = CudaAllocator::new(3).expect_err("the stub has one device");
    assert_eq!(
        e,
        CudaError::NoDevice {
            device: 3,
            count: 1
        }
    );
    assert!(e.to_string().contains("use an ordinal below 1"), "{e}");
}

#[test]
fn stream_of_another_allocator_is_accepted_only_on_its_context() {
    let (_stub, _g) = stub(false);
    let a = alloc("");
    let b = alloc("");
    // Both use the primary context of device 0: the same context.
    let s = b.new_stream().expect("stream");
    assert!(a.allocate(512, &s).is_ok());
}

#[test]
fn driver_oom_enters_the_reclaim_ladder() {
    let (stub, _g) = stub(false);
    stub.set_capacity(64 * MIB);
    let a = alloc("expandable_segments:false");
    let s = a.context().default_stream();
    let x = a.allocate(30 * MIB, &s).expect("first");
    let y = a.allocate(30 * MIB, &s).expect("second");
    drop(y); // cached, not released
    assert_eq!(stub.used(), 60 * MIB);
    // 32 MiB does not fit beside the cache (4 MiB free): cuMemAlloc fails
    // with OOM, the engine releases the cached 30 MiB and grows again.
    let z = a
        .allocate(32 * MIB, &s)
        .expect("fits after releasing the cache");
    let st = a.stats();
    assert!(st.num_alloc_retries >= 1, "{st:?}");
    assert_eq!(st.num_ooms, 0);
    assert_eq!(stub.used(), 62 * MIB);
    drop((x, z));
    a.empty_cache();
    assert_eq!(stub.used(), 0);
}

#[test]
fn oom_after_the_ladder_states_the_numbers() {
    let (stub, _g) = stub(false);
    stub.set_capacity(64 * MIB);
    let a = alloc("expandable_segments:false");
    let s = a.context().default_stream();
    let _x = a.allocate(40 * MIB, &s).expect("first");
    let e = a.allocate(40 * MIB, &s).expect_err("64 MiB device");
    let oom = match &e {
        CudaError::Alloc(e) => e.as_oom().expect("an OOM").clone(),
        other => panic!("expected OOM, got {other}"),
    };
    assert_eq!(oom.requested, 40 * MIB);
    assert_eq!(oom.device_total, Some(64 * MIB));
    assert_eq!(oom.device_free, Some(24 * MIB));
    assert!(
        e.to_string()
            .starts_with("out of memory: requested 40.00 MiB"),
        "{e}"
    );
    assert_eq!(a.stats().num_ooms, 1);
}

#[test]
fn injected_oom_is_retried_and_other_errors_are_returned() {
    let (stub, _g) = stub(false);
    let a = alloc("expandable_segments:false");
    let s = a.context().default_stream();
    stub.fail("cuMemAlloc_v2", 1, OOM);
    let b = a.allocate(3 * MIB, &s).expect("a transient OOM is retried");
    assert!(a.stats().num_alloc_retries >= 1);
    drop(b);
    a.empty_cache();

    stub.fail("cuMemAlloc_v2", 1, INVALID_VALUE);
    let e = a.allocate(3 * MIB, &s).expect_err("not an OOM: returned");
    let text = e.to_string();
    assert!(
        matches!(&e, CudaError::Alloc(AllocError::Backend { .. })),
        "{text}"
    );
    assert!(
        text.contains("cuMemAlloc_v2 failed with CUDA_ERROR_INVALID_VALUE"),
        "{text}"
    );
    assert_eq!(a.stats().num_ooms, 0);
}

#[test]
fn block_used_on_another_stream_waits_for_its_event() {
    let (stub, _g) = stub(false);
    let a = alloc("expandable_segments:false");
    let s1 = a.new_stream().expect("s1");
    let s2 = a.new_stream().expect("s2");
    let b1 = a.allocate(4 * MIB, &s1).expect("b1");
    let p1 = b1.device_address();
    stub.launch(raw(&s2)); // a kernel still running on s2
    b1.record_stream(&s2);
    drop(b1);
    let b2 = a.allocate(4 * MIB, &s1).expect("b2");
    assert_ne!(b2.device_address(), p1, "handed out while s2 still uses it");
    stub.complete(raw(&s2));
    let b3 = a.allocate(4 * MIB, &s1).expect("b3");
    assert_eq!(b3.device_address(), p1, "reused once s2's event completed");
    drop((b2, b3));
    a.validate().expect("invariants");
}

#[test]
fn device_ptr_on_another_stream_records_it() {
    use alloc_cuda::cudarc::driver::DevicePtr;
    let (stub, _g) = stub(false);
    let a = alloc("expandable_segments:false");
    let s1 = a.new_stream().expect("s1");
    let s2 = a.new_stream().expect("s2");
    let b1 = a.allocate(MIB, &s1).expect("b1");
    let p1 = b1.device_address();
    stub.launch(raw(&s2));
    let (p, _sync) = DevicePtr::<u8>::device_ptr(&b1, &s2);
    assert_eq!(p, p1);
    drop(_sync);
    drop(b1);
    let b2 = a.allocate(MIB, &s1).expect("b2");
    assert_ne!(b2.device_address(), p1);
}

#[test]
fn events_come_from_the_pool() {
    let (stub, _g) = stub(false);
    let a = alloc("expandable_segments:false");
    let s1 = a.new_stream().expect("s1");
    let s2 = a.new_stream().expect("s2");
    let created = stub.calls("cuEventCreate");
    let pooled = a.backend().pooled_events();
    assert!(pooled > 0);
    for _ in 0..100 {
        let b = a.allocate(MIB, &s1).expect("alloc");
        b.record_stream(&s2);
        drop(b);
        stub.complete_all();
    }
    assert_eq!(
        stub.calls("cuEventCreate"),
        created,
        "no event created on the hot path"
    );
    assert!(stub.calls("cuEventRecord") >= 100);
}

#[test]
fn expandable_segments_map_pages_and_sync_before_unmapping() {
    let (stub, _g) = stub(false);
    let (violations, unsafe_releases) = (stub.violations(), stub.unsafe_releases());
    let a = alloc("expandable_segments:true");
    assert!(a.uses_expandable_segments(), "{:?}", a.backend());
    let s = a.new_stream().expect("stream");
    let maps = stub.calls("cuMemMap");
    let b = a.allocate(30 * MIB, &s).expect("alloc");
    assert!(stub.calls("cuMemMap") > maps, "pages mapped");
    assert!(a.backend().mapped_pages() >= 15);
    // A kernel still running on `s` when the buffer is freed (stream order
    // lets the next user of `s` have it); then a larger request on another
    // stream does not fit beside the cache, so the reclaim ladder unmaps the
    // cached pages: the backend must synchronise before unmapping.
    stub.launch(raw(&s));
    drop(b);
    stub.set_capacity(64 * MIB);
    let s2 = a.new_stream().expect("stream");
    let c = a
        .allocate(50 * MIB, &s2)
        .expect("fits after the cache is unmapped");
    drop(c);
    stub.complete_all();
    a.empty_cache();
    assert_eq!(a.backend().mapped_pages(), 0);
    assert_eq!(stub.used(), 0);
    assert_eq!(
        stub.unsafe_releases(),
        unsafe_releases,
        "unmapped with work pending"
    );
    assert_eq!(stub.violations(), violations, "calls the driver rejects");
    assert_eq!(a.backend().driver_errors(), 0);
}

#[test]
fn failed_map_rolls_back_its_pages() {
    let (stub, _g) = stub(false);
    let violations = stub.violations();
    let a = alloc("expandable_segments:true");
    let s = a.context().default_stream();
    stub.fail("cuMemMap", 3, OOM);
    let b = a
        .allocate(30 * MIB, &s)
        .expect("retried after the failed map");
    assert!(a.stats().num_alloc_retries >= 1);
    drop(b);
    a.empty_cache();
    assert_eq!(stub.used(), 0, "pages of the failed map released");
    assert_eq!(stub.violations(), violations);
}

#[test]
fn memory_fraction_caps_reserved_memory() {
    let (stub, _g) = stub(false);
    stub.set_capacity(1 << 30);
    let a = alloc("expandable_segments:false");
    let cap = a
        .set_memory_fraction(0.25)
        .expect("the stub knows its total");
    assert_eq!(cap, 256 * MIB);
    let s = a.context().default_stream();
    let x = a.allocate(200 * MIB, &s).expect("under the cap");
    let e = a.allocate(100 * MIB, &s).expect_err("over the cap");
    assert!(e.to_string().contains("cap 256.00 MiB"), "{e}");
    drop(x);
    let _y = a
        .allocate(100 * MIB, &s)
        .expect("fits after the cache is released");
}

#[test]
fn stats_snapshot_summary_and_trim() {
    let (stub, _g) = stub(false);
    let a = alloc("expandable_segments:false");
    let s = a.context().default_stream();
    let b = a.allocate(5 * MIB, &s).expect("alloc");
    let map = a.stats().to_map();
    assert_eq!(map["allocation.all.current"], 1);
    assert!(map["reserved_bytes.all.current"] >= 5 * MIB as i64);
    assert_eq!(a.snapshot().segments.len(), 1);
    assert!(a.memory_summary().starts_with("cuda:0 allocator"));
    drop(b);
    a.trim();
    assert_eq!(stub.used(), 0);
    assert_eq!(a.stats().reserved_bytes.all.current, 0);
}

#[test]
fn pinned_pool_reuses_after_events_complete() {
    let (stub, _g) = stub(false);
    let (allocs, frees) = (stub.calls("cuMemHostAlloc"), stub.calls("cuMemFreeHost"));
    let pool = PinnedPool::new(0).expect("pinned pool");
    let a = alloc("");
    let s = a.new_stream().expect("stream");
    let mut b1 = pool.allocate(4096).expect("pinned");
    assert!(b1.as_slice().iter().all(|&x| x == 0));
    b1.as_mut_slice().fill(7);
    let p1 = b1.as_ptr();
    stub.launch(raw(&s)); // a copy from b1 still queued on s
    b1.record_stream(&s);
    drop(b1);
    let b2 = pool.allocate(4096).expect("pinned");
    assert_ne!(b2.as_ptr(), p1, "reused while a transfer may read it");
    stub.complete(raw(&s));
    let b3 = pool.allocate(4096).expect("pinned");
    assert_eq!(b3.as_ptr(), p1, "reused after the event completed");
    assert_eq!(b3.as_slice()[0], 7);
    drop((b2, b3));
    pool.engine().empty_cache();
    assert_eq!(pool.engine().stats().reserved_bytes.all.current, 0);
    let allocs = stub.calls("cuMemHostAlloc") - allocs;
    assert!(allocs >= 1);
    assert_eq!(stub.calls("cuMemFreeHost") - frees, allocs);
}

#[test]
fn pinned_pool_reports_driver_oom() {
    let (stub, _g) = stub(false);
    let pool = PinnedPool::new(0).expect("pinned pool");
    stub.fail("cuMemHostAlloc", 1, OOM);
    stub.fail("cuMemHostAlloc", 2, OOM);
    let e = pool.allocate(4096).expect_err("host OOM twice");
    assert!(e.to_string().starts_with("out of memory"), "{e}");
}

/// Streams 0..3 of the Op interpreter, launched and completed on the stub.
struct StubStreams<'a> {
    stub: &'a Stub,
    streams: Vec<RawStream>,
}

impl<B: DeviceBackend> Harness<B> for StubStreams<'_> {
    fn launch(&self, s: u32) {
        self.stub
            .launch(self.streams[s as usize % self.streams.len()]);
    }
    fn complete(&self, s: u32) {
        self.stub
            .complete(self.streams[s as usize % self.streams.len()]);
    }
    fn complete_all(&self) {
        self.stub.complete_all();
    }
}

#[test]
fn conformance_on_the_stub() {
    let (stub, _g) = stub(false);
    let violations = stub.violations();
    stub.set_capacity(2 << 30);
    for cfg in [
        "",
        "expandable_segments:false",
        "max_split_size_mb:20,expandable_segments:false",
    ] {
        for seed in 1..=3u64 {
            let backend = CudaBackend::new(0).expect("stub device");
            let streams = (0..ops::STREAMS)
                .map(|i| backend.stream_for_id(i).as_raw() as RawStream)
                .collect();
            let a = CachingAllocator::new(
                FaultInjectingBackend::new(backend),
                Config::parse(cfg).expect("config"),
            );
            let h = StubStreams { stub, streams };
            let r = ops::run(&a, &h, &ops::program(seed * 7919, 400));
            let r = r.unwrap_or_else(|e| panic!("`{cfg}` seed {seed}: {e}"));
            assert!(r.allocs > 0);
            a.empty_cache();
            assert_eq!(a.backend().inner().driver_errors(), 0);
            assert_eq!(stub.used(), 0, "`{cfg}` seed {seed}: device memory left");
        }
    }
    assert_eq!(stub.violations(), violations);
}

#[test]
fn backend_errors_name_the_call() {
    let (stub, _g) = stub(false);
    let b = CudaBackend::new(0).expect("stub device");
    stub.fail("cuMemAlloc_v2", 1, INVALID_VALUE);
    let e = b.allocate(1 << 20).expect_err("injected");
    assert!(
        matches!(&e, BackendError::Other(m) if m.contains("cuMemAlloc_v2")),
        "{e}"
    );
    stub.fail("cuMemAlloc_v2", 1, OOM);
    assert_eq!(b.allocate(1 << 20), Err(BackendError::OutOfMemory));
}

#[test]
fn backend_unmap_waits_for_no_unrelated_stream() {
    let (stub, _g) = stub(false);
    let (unsafe_releases, stalls) = (stub.unsafe_releases(), stub.stalls());
    let b = CudaBackend::new(0).expect("stub device");
    let page = b.page_size().expect("the stub has virtual memory");
    let r = b.reserve(4 * page).expect("reserve");
    // SAFETY: the pages of a fresh reservation, unmapped.
    unsafe { b.map(r, 4 * page) }.expect("map");
    // A long kernel on another stream, using the last two pages only.
    let other = b.stream_for_id(7).as_raw() as RawStream;
    stub.launch_on(other, r.0 + 2 * page, 2 * page);
    // SAFETY: the first two pages are mapped and no queued work uses them.
    unsafe { b.unmap(r, 2 * page) };
    assert!(stub.busy(other), "the unrelated stream was synchronised");
    assert_eq!(stub.stalls(), stalls, "unmap waited for unrelated work");
    assert_eq!(stub.unsafe_releases(), unsafe_releases);
    stub.complete(other);
    // SAFETY: the last two pages are mapped; their work completed.
    unsafe { b.unmap(DevicePtr(r.0 + 2 * page), 2 * page) };
    // SAFETY: the reservation is live with nothing mapped.
    unsafe { b.release(r, 4 * page) };
    assert_eq!(b.driver_errors(), 0);
    assert_eq!(b.mapped_pages(), 0);
    assert_eq!(stub.unsafe_releases(), unsafe_releases);
}

#[test]
fn the_callers_current_context_is_left_unchanged() {
    use alloc_cuda::cudarc::driver::sys;
    let (_stub, _g) = stub(false);
    let current = || {
        let mut c: sys::CUcontext = core::ptr::null_mut();
        // SAFETY: `c` is a valid out-pointer.
        unsafe { sys::cuCtxGetCurrent(&mut c) }
            .result()
            .expect("get");
        c
    };
    // a thread with no current context, as a runtime-managed one may be
    std::thread::spawn(move || {
        assert!(current().is_null());
        let a = CudaAllocator::global(0).expect("global allocator");
        let b = a.engine().allocate(3 << 20, StreamHandle::DEFAULT);
        drop(b.expect("allocate"));
        a.empty_cache();
        assert!(
            current().is_null(),
            "the allocator left its context current"
        );
    })
    .join()
    .expect("thread");
}

#[test]
fn setup_failures_are_errors_naming_the_step() {
    let (stub, _g) = stub(false);
    stub.fail("cuEventCreate", 1, OOM);
    let e = CudaBackend::new(0).expect_err("no events");
    assert!(
        matches!(
            &e,
            CudaError::Setup {
                device: 0,
                action: "creating the event pool",
                ..
            }
        ),
        "{e}"
    );
    stub.fail("cuInit", 1, INVALID_VALUE);
    let e = CudaAllocator::new(0).expect_err("cuInit fails");
    let text = e.to_string();
    assert!(
        text.starts_with("CUDA driver call cuDeviceGetCount failed with CUDA_ERROR_INVALID_VALUE"),
        "{text}"
    );
    // and the next attempt, with a healthy driver, works
    assert!(CudaAllocator::new(0).is_ok());
}
