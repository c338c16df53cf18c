//! The engine on a real Metal device: the shared conformance suite, a buffer
//! round trip through the GPU, event completion, memory figures and the
//! mapping of errors. Compiled on macOS only; each test returns early (and
//! says so) when the machine has no Metal device.

#![cfg(target_os = "macos")]

use alloc_core::adaptors::FaultInjectingBackend;
use alloc_core::ops::{self, Harness};
use alloc_core::{AllocError, CachingAllocator, Config, DeviceBackend};
use alloc_mps::objc2::rc::Retained;
use alloc_mps::objc2::runtime::ProtocolObject;
use alloc_mps::objc2_metal::{
    MTLBlitCommandEncoder, MTLBuffer, MTLCommandBuffer, MTLCommandEncoder, MTLCommandQueue,
    MTLDevice, MTLResourceOptions,
};
use alloc_mps::{MetalAllocator, MetalBackend, MetalError, MetalStream};

type Queue = Retained<ProtocolObject<dyn MTLCommandQueue>>;

/// The default device's backend, or `None` (with a note) without one.
fn backend(test: &str) -> Option<MetalBackend> {
    match MetalBackend::system_default() {
        Ok(b) => Some(b),
        Err(MetalError::NoDevice) => {
            eprintln!("{test}: skipped, no Metal device");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Streams of the suite: `launch` commits a real blit on the queue,
/// `complete` waits for the queue, `complete_all` for every queue.
struct MetalStreams {
    queues: Vec<Queue>,
    scratch: Retained<ProtocolObject<dyn MTLBuffer>>,
}

impl MetalStreams {
    fn new(backend: &MetalBackend) -> MetalStreams {
        let queues = (0..ops::STREAMS)
            .map(|i| {
                backend
                    .command_queue(backend.stream_for_id(i))
                    .expect("queue")
            })
            .collect();
        let scratch = backend
            .device()
            .newBufferWithLength_options(1 << 20, MTLResourceOptions::StorageModePrivate)
            .expect("scratch buffer");
        MetalStreams { queues, scratch }
    }

    fn queue(&self, s: u32) -> &Queue {
        &self.queues[s as usize % self.queues.len()]
    }

    fn wait(q: &Queue) {
        let cb = q.commandBuffer().expect("command buffer");
        cb.commit();
        cb.waitUntilCompleted();
    }
}

impl<B: DeviceBackend> Harness<B> for MetalStreams {
    fn launch(&self, s: u32) {
        let cb = self.queue(s).commandBuffer().expect("command buffer");
        let blit = cb.blitCommandEncoder().expect("blit encoder");
        blit.fillBuffer_range_value(
            &self.scratch,
            alloc_mps::objc2_foundation::NSRange::new(0, self.scratch.length()),
            0x5a,
        );
        blit.endEncoding();
        cb.commit();
    }

    fn complete(&self, s: u32) {
        MetalStreams::wait(self.queue(s));
    }

    fn complete_all(&self) {
        self.queues.iter().for_each(MetalStreams::wait);
    }
}

#[test]
fn conformance() {
    for cfg in [
        "",
        "expandable_segments:false",
        "expandable_segments:false,max_split_size_mb:20",
        "roundup_power2_divisions:4",
    ] {
        for seed in 1..=2u64 {
            let Some(b) = backend("conformance") else {
                return;
            };
            let streams = MetalStreams::new(&b);
            let a =
                CachingAllocator::new(FaultInjectingBackend::new(b), Config::parse(cfg).unwrap());
            assert!(
                !a.uses_expandable_segments(),
                "Metal has no expandable segments"
            );
            let r = ops::run(&a, &streams, &ops::program(seed * 7919, 600));
            assert!(r.is_ok(), "`{cfg}` seed {seed}: {}", r.unwrap_err());
            assert!(
                r.unwrap().allocs > 0,
                "`{cfg}` seed {seed}: nothing allocated"
            );
        }
    }
}

/// Bytes `i % 251` written by the CPU (unified memory) or blitted from a
/// shared staging buffer (private storage), copied on the GPU from one block
/// to another, and read back.
#[test]
fn buffer_round_trip() {
    let Some(b) = backend("buffer_round_trip") else {
        return;
    };
    let a = MetalAllocator::from_backend(b, Config::default());
    let s = MetalStream::DEFAULT;
    let n = 3 << 20;
    let pattern: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let device = a.backend().device();
    let staging = device
        .newBufferWithLength_options(n, MTLResourceOptions::StorageModeShared)
        .expect("staging");
    // SAFETY: a fresh shared buffer of `n` bytes that no GPU work uses yet.
    unsafe {
        core::ptr::copy_nonoverlapping(pattern.as_ptr(), staging.contents().as_ptr().cast(), n)
    };

    let src = a.allocate(n, s).expect("source");
    let dst = a.allocate(n, s).expect("destination");
    assert_ne!(src.ptr(), dst.ptr());
    let q = a.backend().command_queue(s).expect("queue");
    let cb = q.commandBuffer().expect("command buffer");
    let blit = cb.blitCommandEncoder().expect("blit");
    let (sb, db) = (src.metal_buffer().unwrap(), dst.metal_buffer().unwrap());
    // SAFETY: every range lies inside its buffer (offset + n ≤ length), and
    // the command buffer retains the buffers until it completes.
    unsafe {
        blit.copyFromBuffer_sourceOffset_toBuffer_destinationOffset_size(
            &staging,
            0,
            &sb,
            src.offset(),
            n,
        );
        blit.copyFromBuffer_sourceOffset_toBuffer_destinationOffset_size(
            &sb,
            src.offset(),
            &db,
            dst.offset(),
            n,
        );
        blit.copyFromBuffer_sourceOffset_toBuffer_destinationOffset_size(
            &db,
            dst.offset(),
            &staging,
            0,
            n,
        );
    }
    blit.endEncoding();
    cb.commit();
    a.synchronize_stream(s).expect("sync");
    // SAFETY: the copies above have completed (the stream is synchronized).
    let back = unsafe { core::slice::from_raw_parts(staging.contents().as_ptr().cast::<u8>(), n) };
    assert!(back == &pattern[..], "the round trip changed the bytes");
    if a.backend().has_unified_memory() {
        // SAFETY: as above: no GPU work on `dst` is pending.
        let seen = unsafe { dst.as_slice() }.expect("shared storage is CPU-visible");
        assert!(
            seen == &pattern[..],
            "the CPU sees other bytes than the GPU wrote"
        );
    }
    let first = dst.ptr();
    drop(dst);
    let again = a.allocate(n, s).expect("again");
    assert_eq!(
        again.ptr(),
        first,
        "a freed block is reused on its own stream at once"
    );
    drop((src, again));
    a.empty_cache();
    assert_eq!(a.stats().reserved_bytes.all.current, 0);
}

#[test]
fn events_complete_and_streams_are_queues() {
    let Some(b) = backend("events") else {
        return;
    };
    let s = b.new_stream().expect("stream");
    assert_ne!(s, MetalStream::DEFAULT);
    let e = b.record_event(s).expect("event");
    b.wait_event(&e);
    assert!(b.event_done(&e));
    let later = b.record_event(s).expect("event");
    assert!(later.value() > e.value(), "values grow on a queue");
    assert_eq!(
        b.synchronize(),
        alloc_core::SyncCoverage::All,
        "every queue is waited for"
    );
    assert!(b.event_done(&later), "synchronize waits for every queue");
}

#[test]
fn memory_figures_come_from_the_device() {
    let Some(b) = backend("mem_info") else {
        return;
    };
    let m = b.mem_info().expect("Metal reports memory");
    assert_eq!(m.total as u64, b.recommended_max_memory());
    assert!(m.free <= m.total);
    let a = MetalAllocator::from_backend(b, Config::default());
    let before = a.driver_allocated_memory();
    let buf = a.allocate(8 << 20, MetalStream::DEFAULT).expect("fits");
    assert!(a.driver_allocated_memory() >= before + (8 << 20) - (1 << 20));
    assert_eq!(a.current_allocated_memory(), buf.capacity() as u64);
}

#[test]
fn errors_are_mapped_to_oom_or_other() {
    let Some(b) = backend("errors") else {
        return;
    };
    let too_long = b.device().maxBufferLength() + 1;
    b.set_high_watermark_ratio(0.0).expect("no watermark");
    let a = MetalAllocator::from_backend(b, Config::default());
    match a.allocate(too_long, MetalStream::DEFAULT) {
        Err(AllocError::Backend { .. }) => {}
        other => panic!("past maxBufferLength: expected a backend error, got {other:?}"),
    }
    // A watermark of 4 KiB refuses every segment.
    let ratio = 4096.0 / a.recommended_max_memory() as f64;
    let w = a
        .backend()
        .set_high_watermark_ratio(ratio)
        .expect("tiny watermark");
    assert!(w.is_some_and(|w| w <= 4096), "{w:?}");
    match a.allocate(64 << 20, MetalStream::DEFAULT) {
        Err(AllocError::OutOfMemory(_)) => {}
        other => panic!("past the watermark: expected out of memory, got {other:?}"),
    }
    assert!(a.backend().set_high_watermark_ratio(-1.0).is_err());
}
