//! Checks on a real CUDA device. Without one, every test prints
//! `SKIPPED: no CUDA device` and returns: it is reported, never passed as
//! if run. With `ALLOC_CUDA_REQUIRE_GPU=1` (the kit's `run.sh` sets it) a
//! missing device, or a failed setup, fails the test instead.
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

/// `fill(out, n, base, cycles)`: every thread spins for `cycles` clock
/// ticks, then the grid writes `out[i] = i + base` for `i < n` in a
/// grid-stride loop. Launched with at most [`BLOCKS_PER_SM`] blocks per SM
/// (all resident at once), so it runs about `cycles / clock` whatever `n`
/// is: the spin is paid once, not once per wave of blocks.
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
    .reg .b32 %r<10>;
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
    cvta.to.global.u64 %rd2, %rd1;
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %tid.x;
    mad.lo.s32 %r6, %r3, %r4, %r5;
    mov.u32 %r8, %nctaid.x;
    mul.lo.s32 %r9, %r8, %r4;
LOOP:
    setp.ge.u32 %p1, %r6, %r1;
    @%p1 bra DONE;
    mul.wide.u32 %rd3, %r6, 4;
    add.s64 %rd4, %rd2, %rd3;
    add.s32 %r7, %r6, %r2;
    st.global.u32 [%rd4], %r7;
    add.s32 %r6, %r6, %r9;
    bra LOOP;
DONE:
    ret;
}
"#;

/// Threads per block of `fill`.
const THREADS: u32 = 256;
/// Blocks per SM at most (4 × 256 threads: resident at once on every GPU
/// since sm_50, so one wave).
const BLOCKS_PER_SM: u32 = 4;

/// Whether a device is required (`ALLOC_CUDA_REQUIRE_GPU=1`): then a test
/// that cannot run fails.
fn required() -> bool {
    std::env::var("ALLOC_CUDA_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Reports that `test` could not run: a failure when a device is required,
/// a loud skip otherwise.
fn cannot_run(test: &str, why: &str) {
    assert!(
        !required(),
        "{test}: cannot run ({why}) and ALLOC_CUDA_REQUIRE_GPU=1"
    );
    skipped!("SKIPPED: {test}: {why}");
}

/// The allocator of device `ordinal` with `cfg`, or `None` after
/// [`cannot_run`].
fn gpu_on(test: &str, ordinal: usize, cfg: &str) -> Option<CudaAllocator> {
    if !alloc_cuda::cuda_available() {
        cannot_run(test, "no CUDA device: libcuda not found");
        return None;
    }
    match CudaAllocator::with_config(ordinal, Config::parse(cfg).expect("valid config")) {
        Ok(a) => Some(a),
        Err(e) => {
            cannot_run(test, &format!("no CUDA device: {e}"));
            None
        }
    }
}

/// The allocator of device 0 with `cfg`, or `None` after [`cannot_run`].
fn gpu(test: &str, cfg: &str) -> Option<CudaAllocator> {
    gpu_on(test, 0, cfg)
}

/// The `fill` kernel, loaded into the allocator's context, with what its
/// launches need to bound their time: the SM count and the clock rate.
struct Kernel {
    func: sys::CUfunction,
    /// `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`.
    sms: u32,
    /// `CU_DEVICE_ATTRIBUTE_CLOCK_RATE`, in kHz.
    clock_khz: u64,
}

// SAFETY: a CUfunction handle is usable from any thread on which its
// context is current (each launching thread binds it); the module is never
// unloaded.
unsafe impl Send for Kernel {}
// SAFETY: as for Send; launching takes no `&mut`.
unsafe impl Sync for Kernel {}

/// A device attribute of `a`'s device.
fn attribute(a: &CudaAllocator, attr: sys::CUdevice_attribute) -> i32 {
    let mut v = 0;
    // SAFETY: `v` is an out-pointer; the device handle is the live context's.
    unsafe { sys::cuDeviceGetAttribute(&mut v, attr, a.context().cu_device()) }
        .result()
        .expect("device attribute");
    v
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
        use sys::CUdevice_attribute::{
            CU_DEVICE_ATTRIBUTE_CLOCK_RATE, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        };
        let sms = attribute(a, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).max(1) as u32;
        let clock_khz = attribute(a, CU_DEVICE_ATTRIBUTE_CLOCK_RATE).max(1) as u64;
        Kernel {
            func,
            sms,
            clock_khz,
        }
    }

    /// Clock ticks that take about `ms` milliseconds.
    fn cycles_for(&self, ms: u64) -> u64 {
        self.clock_khz * ms
    }

    /// The time a launch spinning `cycles` is expected to take.
    fn expected(&self, cycles: u64) -> std::time::Duration {
        std::time::Duration::from_micros(cycles * 1000 / self.clock_khz)
    }

    /// The grid for `n` elements: one thread each, at most
    /// `BLOCKS_PER_SM` blocks per SM (the grid-stride loop does the rest).
    fn grid(&self, n: u32) -> u32 {
        n.div_ceil(THREADS).clamp(1, self.sms * BLOCKS_PER_SM)
    }

    /// Launches `fill` on `stream` over `n` u32 at `out`.
    fn launch(&self, stream: &CudaStream, out: sys::CUdeviceptr, n: u32, base: u32, cycles: u64) {
        self.launch_raw(stream.cu_stream(), out, n, base, cycles);
    }

    /// Launches `fill` on a raw stream (`0x2`: this thread's per-thread
    /// stream).
    fn launch_raw(
        &self,
        stream: sys::CUstream,
        out: sys::CUdeviceptr,
        n: u32,
        base: u32,
        cycles: u64,
    ) {
        let mut out = out;
        let (mut n_, mut base_, mut cycles_) = (n, base, cycles);
        let mut params: [*mut c_void; 4] = [
            (&mut out as *mut sys::CUdeviceptr).cast(),
            (&mut n_ as *mut u32).cast(),
            (&mut base_ as *mut u32).cast(),
            (&mut cycles_ as *mut u64).cast(),
        ];
        let blocks = self.grid(n);
        if cycles >= self.cycles_for(10) {
            skipped!(
                "spin: {blocks} blocks x {THREADS} threads on {} SMs, {cycles} cycles at {} kHz: expected {:?}",
                self.sms,
                self.clock_khz,
                self.expected(cycles)
            );
        }
        // SAFETY: the parameters match the kernel's signature and live across
        // the call (the driver copies them); `out` holds `n` u32.
        let r = unsafe {
            sys::cuLaunchKernel(
                self.func,
                blocks,
                1,
                1,
                THREADS,
                1,
                1,
                0,
                stream,
                params.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        };
        r.result().expect("launch `fill`");
    }
}

/// The first `n` u32 of `buf` (the whole buffer is copied: cudarc copies a
/// buffer whole).
fn read_u32(stream: &Arc<CudaStream>, buf: &alloc_cuda::CudaBuffer<'_>, n: usize) -> Vec<u32> {
    let mut host = vec![0u32; n.max(buf.byte_len().div_ceil(4))];
    stream.memcpy_dtoh(buf, &mut host).expect("dtoh");
    host.truncate(n);
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

/// The spin kernel's time is bounded by design: 32 Mi elements (a size
/// that, one block per 256 elements, once needed ~125 waves of blocks and a
/// minute) with a 200 ms spin end in about 200 ms. The bound is loose
/// (4x + 1 s): it catches a kernel that scales with `n`, not clock noise.
#[test]
fn the_spin_kernel_runs_about_its_expected_time() {
    let Some(a) = gpu("spin kernel time", "") else {
        return;
    };
    let k = Kernel::load(&a);
    let s = a.new_stream().expect("stream");
    let n: u32 = 32 << 20;
    let buf = a.allocate(n as usize * 4, &s).expect("128 MiB");
    let cycles = k.cycles_for(200);
    let expected = k.expected(cycles);
    let started = std::time::Instant::now();
    k.launch(&s, buf.device_address(), n, 1, cycles);
    s.synchronize().expect("the kernel ran without a fault");
    let took = started.elapsed();
    skipped!(
        "spin kernel: {} blocks for {n} elements, expected {expected:?}, took {took:?}",
        k.grid(n)
    );
    assert!(
        took <= expected * 4 + std::time::Duration::from_secs(1),
        "the spin kernel took {took:?}, expected about {expected:?}"
    );
    let v = read_u32(&s, &buf, n as usize);
    assert!(
        v.iter().enumerate().all(|(i, &x)| x == i as u32 + 1),
        "the grid-stride loop missed elements"
    );
}

#[test]
fn block_in_use_by_a_kernel_on_another_stream_is_not_handed_out() {
    for cfg in ["", "expandable_segments:false"] {
        let Some(a) = gpu("cross-stream safety", cfg) else {
            return;
        };
        cross_stream_safety(&a);
    }
}

/// A block freed on stream A while a kernel on B writes it is not handed
/// out again until B's kernel completes.
fn cross_stream_safety(a: &CudaAllocator) {
    let k = Kernel::load(a);
    let sa = a.new_stream().expect("stream A");
    let sb = a.new_stream().expect("stream B");
    let n = 1 << 20;
    let buf = a.allocate(n * 4, &sa).expect("alloc");
    let old = buf.device_address();
    // B writes `buf` after spinning for about half a second.
    k.launch(&sb, old, n as u32, 1000, k.cycles_for(500));
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
        cannot_run("expandable segments", why);
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
        let _ = self.1.bind_to_thread();
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

/// Whether `[a, a + n)` and `[b, b + m)` overlap.
fn overlaps(a: u64, n: usize, b: u64, m: usize) -> bool {
    a < b + m as u64 && b < a + n as u64
}

#[test]
fn unmap_and_reuse_while_a_kernel_runs_on_another_stream() {
    let test = "unmap and reuse under a running kernel (expandable segments)";
    let Some(a) = gpu(test, "") else {
        return;
    };
    if let Some(why) = a.backend().vm_unavailable_reason() {
        cannot_run(test, why);
        return;
    }
    let k = Kernel::load(&a);
    let (sa, sb, sc, sd) = (
        a.new_stream().expect("A"),
        a.new_stream().expect("B"),
        a.new_stream().expect("C"),
        a.new_stream().expect("D"),
    );
    let total = a.backend().mem_info().expect("mem info").total;
    let s = 128 * MIB;
    // x (S) + y (2S - 4 MiB) + D's 2 MiB fit under the cap; z (2S) fits
    // only once y's pages are unmapped.
    a.set_memory_fraction((3 * s + 16 * MIB) as f64 / total as f64)
        .expect("cap");
    // An unrelated kernel on D for about a second: nothing below may wait
    // for it.
    let unrelated = a.allocate(MIB, &sd).expect("D's buffer");
    k.launch(&sd, unrelated.device_address(), 1, 0, k.cycles_for(1000));
    // B writes x for about half a second; x is freed on A meanwhile.
    let x = a.allocate(s, &sa).expect("x");
    let px = x.device_address();
    k.launch(&sb, px, (s / 4) as u32, 1000, k.cycles_for(500));
    x.record_stream(&sb);
    drop(x);
    let b_done = sb.record_event(None).expect("event");
    let started = std::time::Instant::now();
    // 2S on A fits beside x; dropped, it is A's idle cache; then 2.5S on C
    // only fits by unmapping A's idle pages, never x's.
    drop(a.allocate(2 * s - 4 * MIB, &sa).expect("y"));
    sa.synchronize().expect("A idle");
    let z = a
        .allocate(2 * s, &sc)
        .expect("z fits once A's idle pages are unmapped");
    let elapsed = started.elapsed();
    assert!(
        b_done.is_complete() || !overlaps(z.device_address(), z.capacity(), px, s),
        "z overlaps x while B still writes x"
    );
    assert!(
        elapsed < std::time::Duration::from_millis(300),
        "allocating waited {elapsed:?}: a synchronise waited for unrelated work"
    );
    sb.synchronize().expect("B's kernel ran without a fault");
    sd.synchronize().expect("D's kernel ran without a fault");
    drop((z, unrelated));
    a.empty_cache();
    assert_eq!(a.backend().driver_errors(), 0);
    a.validate().expect("invariants");
}

#[test]
fn per_thread_default_streams_on_several_threads() {
    let Some(a) = gpu("per-thread default streams", "") else {
        return;
    };
    let a = Arc::new(a);
    let k = Arc::new(Kernel::load(&a));
    let n = 1 << 20;
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let (a, k) = (Arc::clone(&a), Arc::clone(&k));
            std::thread::spawn(move || {
                a.context().bind_to_thread().expect("bind");
                let s = a.context().per_thread_stream();
                for round in 0..20u32 {
                    let buf = a.allocate(n * 4, &s).expect("alloc");
                    let base = t * 1_000_000 + round;
                    k.launch_raw(s.cu_stream(), buf.device_address(), n as u32, base, 100_000);
                    let host = read_u32(&s, &buf, n);
                    assert!(
                        host.iter().enumerate().all(|(i, &v)| v == i as u32 + base),
                        "thread {t} round {round}: another thread's kernel wrote this block"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(a.backend().driver_errors(), 0);
}

#[test]
fn peer_devices_use_expandable_segments() {
    let test = "multi-GPU peer access";
    let Some(a) = gpu(test, "expandable_segments:true") else {
        return;
    };
    let count = alloc_cuda::cudarc::driver::CudaContext::device_count().unwrap_or(1);
    if count < 2 {
        // One device is a valid machine: reported, not failed.
        skipped!("SKIPPED: {test}: {count} device(s); needs two");
        return;
    }
    let Some(b) = gpu_on(test, 1, "") else {
        return;
    };
    let mut can = 0;
    // SAFETY: out-pointer; device handles of live contexts.
    unsafe {
        sys::cuDeviceCanAccessPeer(&mut can, b.context().cu_device(), a.context().cu_device())
    }
    .result()
    .expect("can access peer");
    if can == 0 {
        skipped!("SKIPPED: {test}: device 1 cannot access device 0");
        return;
    }
    let s0 = a.new_stream().expect("stream 0");
    let n = 1 << 20;
    let buf = a.allocate(n * 4, &s0).expect("on device 0");
    let k1 = Kernel::load(&b);
    let s1 = b.new_stream().expect("stream 1");
    k1.launch(&s1, buf.device_address(), n as u32, 77, 0);
    s1.synchronize()
        .expect("device 1 wrote device 0's pages without a fault");
    let host = read_u32(&s0, &buf, n);
    assert!(host.iter().enumerate().all(|(i, &v)| v == i as u32 + 77));
}

/// Runs alone in its own process (the kit runs it so, and skips it in the
/// parallel run): a capture in global mode is invalidated by another test's
/// context-wide synchronise or `cuMemFree` in the same process.
#[test]
fn graph_capture_allocates_and_frees_without_breaking_the_capture() {
    let Some(a) = gpu("graph capture", "") else {
        return;
    };
    let k = Kernel::load(&a);
    let s = a.new_stream().expect("stream");
    let other = a.new_stream().expect("other");
    let n = 1 << 20;
    let used_by_graph = a.allocate(n * 4, &other).expect("before capture");
    let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL;
    // SAFETY: a live stream of the bound context.
    unsafe { sys::cuStreamBeginCapture_v2(s.cu_stream(), mode) }
        .result()
        .expect("begin capture");
    // a new segment while capturing, written by a captured kernel
    let buf = a.allocate(64 * MIB, &s).expect("allocate during capture");
    k.launch(&s, buf.device_address(), n as u32, 9, 0);
    k.launch(&s, used_by_graph.device_address(), n as u32, 3, 0);
    let scratch = a
        .allocate(MIB, &other)
        .expect("other stream, during capture");
    scratch.record_stream(&s);
    drop(scratch); // freed while the capture uses nothing of it
    let mut graph: sys::CUgraph = core::ptr::null_mut();
    // SAFETY: `s` is capturing; out-pointer.
    unsafe { sys::cuStreamEndCapture(s.cu_stream(), &mut graph) }
        .result()
        .expect("the capture stayed valid");
    let mut exec: sys::CUgraphExec = core::ptr::null_mut();
    // SAFETY: `graph` is the captured graph; out-pointer.
    unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) }
        .result()
        .expect("instantiate");
    // SAFETY: a live executable graph and stream.
    unsafe { sys::cuGraphLaunch(exec, s.cu_stream()) }
        .result()
        .expect("launch the graph");
    s.synchronize().expect("the graph ran without a fault");
    assert!(
        read_u32(&s, &buf, n)
            .iter()
            .enumerate()
            .all(|(i, &v)| v == i as u32 + 9)
    );
    assert!(
        read_u32(&s, &used_by_graph, n)
            .iter()
            .enumerate()
            .all(|(i, &v)| v == i as u32 + 3)
    );
    // SAFETY: the graph and its executable are ours, idle (synchronised).
    unsafe {
        let _ = sys::cuGraphExecDestroy(exec);
        let _ = sys::cuGraphDestroy(graph);
    }
    drop((buf, used_by_graph));
    a.empty_cache();
    assert_eq!(a.backend().driver_errors(), 0);
}

/// Without a device, `ALLOC_CUDA_REQUIRE_GPU=1` turns the skip into a
/// failure (this binary run again on one test, with the variable set).
#[test]
fn a_required_device_that_is_missing_fails_the_tests() {
    if alloc_cuda::cuda_available() || required() {
        return; // a device is here (or this is the child run below)
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", "kernel_writes_and_reads_through_buffers"])
        .env("ALLOC_CUDA_REQUIRE_GPU", "1")
        .output()
        .expect("run the test binary");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "passed without a device: {text}");
    assert!(text.contains("ALLOC_CUDA_REQUIRE_GPU=1"), "{text}");
}
