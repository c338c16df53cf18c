//! Checks on a real CUDA device. Without one, every test prints
//! `SKIPPED: no CUDA device` and returns: it is reported, never passed as
//! if run.
//!
//! The kernel is hand-written PTX loaded with `cuModuleLoadData`, so no
//! NVRTC is needed.

/// Writes to stderr past the test harness's output capture, so a skip is
/// seen in every `cargo test` run, not only when a test fails.
macro_rules! skipped {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

use std::ffi::c_void;
use std::sync::Arc;

use alloc_core::adaptors::FaultInjectingBackend;
use alloc_core::ops::{self, Harness, Op};
use alloc_core::{CachingAllocator, Config, DeviceBackend};
use alloc_cuda::cudarc::driver::{CudaStream, sys};
use alloc_cuda::{CudaAllocator, CudaBackend, CudaError, PinnedPool, StreamHandle};

const MIB: usize = 1 << 20;

/// `fill(out, n, base, cycles)`: spins for `cycles` clock ticks, then writes
/// `out[i] = i + base` for `i < n`.
const PTX: &str = r#"
.version 6.0
.target sm_50
.address_size 64

.visible .entry fill(
    .param .u64 out,
    .param .u32 n,
    .param .u32 base,
    .param .u64 cycles
)
{
    .reg .pred %p<3>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<10>;

    ld.param.u64 %rd1, [out];
    ld.param.u32 %r1, [n];
    ld.param.u32 %r2, [base];
    ld.param.u64 %rd5, [cycles];
    mov.u64 %rd6, %clock64;
SPIN:
    mov.u64 %rd7, %clock64;
    sub.s64 %rd8, %rd7, %rd6;
    setp.lt.s64 %p2, %rd8, %rd5;
    @%p2 bra SPIN;
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %tid.x;
    mad.lo.s32 %r6, %r3, %r4, %r5;
    setp.ge.u32 %p1, %r6, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.u32 %rd3, %r6, 4;
    add.s64 %rd4, %rd2, %rd3;
    add.s32 %r7, %r6, %r2;
    st.global.u32 [%rd4], %r7;
DONE:
    ret;
}
"#;

/// The allocator of device 0 with `cfg`, or `None` after printing SKIPPED.
fn gpu(test: &str, cfg: &str) -> Option<CudaAllocator> {
    if !alloc_cuda::cuda_available() {
        skipped!("SKIPPED: no CUDA device ({test}: libcuda not found)");
        return None;
    }
    match CudaAllocator::with_config(0, Config::parse(cfg).expect("valid config")) {
        Ok(a) => Some(a),
        Err(e) => {
            skipped!("SKIPPED: no CUDA device ({test}: {e})");
            None
        }
    }
}

/// The `fill` kernel, loaded into the allocator's context.
struct Kernel {
    func: sys::CUfunction,
}

impl Kernel {
    fn load(a: &CudaAllocator) -> Kernel {
        a.context().bind_to_thread().expect("bind");
        let src = std::ffi::CString::new(PTX).expect("no NUL");
        let mut module: sys::CUmodule = core::ptr::null_mut();
        // SAFETY: `src` is NUL-terminated PTX; `module` is an out-pointer.
        let r = unsafe { sys::cuModuleLoadData(&mut module, src.as_ptr().cast()) };
        r.result().expect("load the PTX");
        let mut func: sys::CUfunction = core::ptr::null_mut();
        // SAFETY: `module` was loaded above; the name is NUL-terminated.
        let r = unsafe { sys::cuModuleGetFunction(&mut func, module, c"fill".as_ptr()) };
        r.result().expect("find `fill`");
        Kernel { func }
    }

    /// Launches `fill` on `stream` over `n` u32 at `out`.
    fn launch(&self, stream: &CudaStream, out: sys::CUdeviceptr, n: u32, base: u32, cycles: u64) {
        let mut out = out;
        let (mut n_, mut base_, mut cycles_) = (n, base, cycles);
        let mut params: [*mut c_void; 4] = [
            (&mut out as *mut sys::CUdeviceptr).cast(),
            (&mut n_ as *mut u32).cast(),
            (&mut base_ as *mut u32).cast(),
            (&mut cycles_ as *mut u64).cast(),
        ];
        let blocks = n.div_ceil(256).max(1);
        // SAFETY: the parameters match the kernel's signature and live across
        // the call (the driver copies them); `out` holds `n` u32.
        let r = unsafe {
            sys::cuLaunchKernel(
                self.func,
                blocks,
                1,
                1,
                256,
                1,
                1,
                0,
                stream.cu_stream(),
                params.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        };
        r.result().expect("launch `fill`");
    }
}

fn read_u32(stream: &Arc<CudaStream>, buf: &alloc_cuda::CudaBuffer<'_>, n: usize) -> Vec<u32> {
    let mut host = vec![0u32; n];
    stream.memcpy_dtoh(buf, &mut host).expect("dtoh");
    host
}

#[test]
fn kernel_writes_and_reads_through_buffers() {
    let Some(a) = gpu("kernel_writes_and_reads_through_buffers", "") else {
        return;
    };
    let k = Kernel::load(&a);
    let s = a.new_stream().expect("stream");
    let n = 1 << 20;
    let buf = a.allocate(n * 4, &s).expect("alloc");
    k.launch(&s, buf.device_address(), n as u32, 7, 0);
    let host = read_u32(&s, &buf, n);
    assert!(host.iter().enumerate().all(|(i, &v)| v == i as u32 + 7));
    // and data written by a copy is seen by the device
    let mut buf2 = a.allocate(n * 4, &s).expect("alloc");
    let data: Vec<u32> = (0..n as u32).rev().collect();
    s.memcpy_htod(&data, &mut buf2).expect("htod");
    assert_eq!(read_u32(&s, &buf2, n), data);
    a.validate().expect("invariants");
}

#[test]
fn block_in_use_by_a_kernel_on_another_stream_is_not_handed_out() {
    let Some(a) = gpu("cross-stream safety", "expandable_segments:false") else {
        return;
    };
    let k = Kernel::load(&a);
    let sa = a.new_stream().expect("stream A");
    let sb = a.new_stream().expect("stream B");
    let n = 1 << 20;
    let buf = a.allocate(n * 4, &sa).expect("alloc");
    let old = buf.device_address();
    // B writes `buf` for about a second (2e9 cycles at ~2 GHz).
    k.launch(&sb, old, n as u32, 1000, 2_000_000_000);
    buf.record_stream(&sb);
    drop(buf); // freed on A while B still writes it
    let b_done = sb.record_event(None).expect("event");
    for round in 0..100 {
        let again = a.allocate(n * 4, &sa).expect("alloc");
        if again.device_address() == old {
            assert!(
                b_done.is_complete(),
                "round {round}: block handed out while stream B still writes it"
            );
            break;
        }
        // write the new block on A; B's kernel must not be able to clobber it
        k.launch(&sa, again.device_address(), n as u32, 5, 0);
        sb.synchronize().expect("sync B");
        assert!(
            read_u32(&sa, &again, n)
                .iter()
                .enumerate()
                .all(|(i, &v)| v == i as u32 + 5)
        );
        drop(again);
    }
}

#[test]
fn expandable_segments_grow_and_release() {
    let Some(a) = gpu("expandable segments", "expandable_segments:true") else {
        return;
    };
    if let Some(why) = a.backend().vm_unavailable_reason() {
        skipped!("SKIPPED: expandable segments unavailable on this device: {why}");
        return;
    }
    assert!(a.uses_expandable_segments());
    let k = Kernel::load(&a);
    let s = a.new_stream().expect("stream");
    let bufs: Vec<_> = (0..3)
        .map(|i| {
            let b = a.allocate(100 * MIB, &s).expect("alloc");
            k.launch(&s, b.device_address(), (25 * MIB) as u32, i, 0);
            b
        })
        .collect();
    assert!(a.backend().mapped_pages() * a.backend().page_size().unwrap_or(1) >= 300 * MIB);
    for (i, b) in bufs.iter().enumerate() {
        let v = read_u32(&s, b, 25 * MIB);
        assert_eq!(v[12345], 12345 + i as u32);
    }
    drop(bufs);
    a.empty_cache();
    assert_eq!(a.backend().mapped_pages(), 0);
    assert_eq!(a.backend().driver_errors(), 0);
    assert_eq!(a.stats().reserved_bytes.all.current, 0);
}

#[test]
fn oom_under_a_memory_fraction_recovers() {
    let Some(a) = gpu("OOM under a memory fraction", "") else {
        return;
    };
    let cap = a.set_memory_fraction(0.05).expect("device total known");
    let s = a.context().default_stream();
    let mut live = Vec::new();
    let err = loop {
        match a.allocate(64 * MIB, &s) {
            Ok(b) => live.push(b),
            Err(e) => break e,
        }
        assert!(
            live.len() * 64 * MIB <= cap + 64 * MIB,
            "the cap {cap} B is not enforced"
        );
    };
    match &err {
        CudaError::Alloc(e) => assert_eq!(e.as_oom().expect("OOM").limit, Some(cap)),
        other => panic!("expected OOM, got {other}"),
    }
    assert!(a.stats().num_ooms >= 1);
    live.pop();
    let _again = a.allocate(64 * MIB, &s).expect("fits after a free");
}

#[test]
fn pinned_pool_round_trip_and_reuse() {
    let Some(a) = gpu("pinned pool", "") else {
        return;
    };
    let pool = PinnedPool::new(0).expect("pinned pool");
    let s = a.new_stream().expect("stream");
    let n = 4 * MIB;
    let mut staging = pool.allocate(n).expect("pinned");
    for (i, x) in staging.as_mut_slice().iter_mut().enumerate() {
        *x = i as u8;
    }
    let dev = a.allocate(n, &s).expect("device");
    // SAFETY: both ranges hold `n` bytes and stay alive until the stream
    // synchronises below (the pinned block is recorded on `s`).
    let r = unsafe {
        sys::cuMemcpyHtoDAsync_v2(
            dev.device_address(),
            staging.as_ptr().cast(),
            n,
            s.cu_stream(),
        )
    };
    r.result().expect("copy");
    staging.record_stream(&s);
    let first = staging.as_ptr();
    drop(staging);
    s.synchronize().expect("sync");
    let mut back = vec![0u8; n];
    s.memcpy_dtoh(&dev, &mut back).expect("dtoh");
    assert!(back.iter().enumerate().all(|(i, &x)| x == i as u8));
    let again = pool.allocate(n).expect("pinned");
    assert_eq!(again.as_ptr(), first, "reused once the copy completed");
}

struct GpuStreams(
    Vec<StreamHandle>,
    Arc<alloc_cuda::cudarc::driver::CudaContext>,
);

impl<B: DeviceBackend> Harness<B> for GpuStreams {
    fn launch(&self, _s: u32) {}
    fn complete(&self, s: u32) {
        let h = self.0[s as usize % self.0.len()];
        // SAFETY: a stream of this context, kept alive by the backend.
        let _ = unsafe { sys::cuStreamSynchronize(h.as_raw()) };
    }
    fn complete_all(&self) {
        let _ = self.1.synchronize();
    }
}

#[test]
fn conformance_on_the_device() {
    let Some(probe) = gpu("conformance", "") else {
        return;
    };
    let ctx = Arc::clone(probe.context());
    drop(probe);
    for cfg in ["", "expandable_segments:false"] {
        let backend = CudaBackend::new(0).expect("device");
        let streams = (0..ops::STREAMS)
            .map(|i| backend.stream_for_id(i))
            .collect();
        let a = CachingAllocator::new(
            FaultInjectingBackend::new(backend),
            Config::parse(cfg).expect("cfg"),
        );
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let program: Vec<Op> = (0..400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let (p, q) = ((x >> 8) as u32, (x >> 40) as u8);
                match x % 10 {
                    0..=5 => Op::Alloc {
                        bytes: p,
                        stream: q,
                    },
                    6..=7 => Op::Free { slot: p as u16 },
                    8 => Op::RecordStream {
                        slot: p as u16,
                        stream: q,
                    },
                    _ => Op::EmptyCache,
                }
            })
            .collect();
        let r = ops::run(&a, &GpuStreams(streams, Arc::clone(&ctx)), &program);
        assert!(r.is_ok(), "`{cfg}`: {}", r.unwrap_err());
        a.empty_cache();
        assert_eq!(a.backend().inner().driver_errors(), 0);
    }
}
