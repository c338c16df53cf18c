//! Opens the caching allocator on CUDA device 0 (or the ordinal given as the
//! first argument) and prints what it found: the driver's version, which
//! driver library is mapped (exactly one, never a toolkit `stubs/` one), the
//! device, its SM count and clock, and whether expandable segments work.
//!
//! ```text
//! cargo run -p alloc-cuda --example cuda_info [-- ORDINAL]
//! ```
//!
//! Exit status (the GPU kit's `run.sh` reads it): 0 the device works; 2 no
//! GPU here (no driver library, `cuInit` says `CUDA_ERROR_NO_DEVICE`, or no
//! device counted), with a `status: no-gpu: ...` line; 1 anything else, with
//! an `error:` line and a `hint:` line (a toolkit stub library, a driver and
//! library that do not match, a device that fails to open).

use std::process::ExitCode;

use alloc_core::DeviceBackend;
use alloc_cuda::CudaAllocator;
use alloc_cuda::cudarc::driver::sys;

/// Exit status for "no GPU here".
const NO_GPU: u8 = 2;

fn no_gpu(why: &str) -> ExitCode {
    println!("status: no-gpu: {why}");
    ExitCode::from(NO_GPU)
}

fn fail(what: &str, hint: &str) -> ExitCode {
    eprintln!("error: {what}");
    eprintln!("hint: {hint}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let ordinal = match std::env::args().nth(1).map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("error: the device ordinal must be a number: {e}");
            return ExitCode::from(3);
        }
    };
    if !alloc_cuda::cuda_available() {
        return no_gpu("no driver: libcuda.so / libcuda.so.1 not found on the loader path");
    }
    // SAFETY: the library is loaded (cuda_available); cuInit takes flags 0.
    let init = unsafe { sys::cuInit(0) };
    // mapped now: cudarc keeps the library it loaded for cuInit
    let mapped = libcuda_mapped();
    if let Some(paths) = &mapped {
        if let Some(stub) = paths.iter().find(|p| p.contains("/stubs/")) {
            return fail(
                &format!("the driver library mapped is a toolkit stub: {stub}"),
                "a CUDA toolkit's stubs/ directory is on LD_LIBRARY_PATH (it is for linking only); remove it so the driver's libcuda.so.1 loads",
            );
        }
    }
    if let Err(code) = probe_driver(init) {
        return code;
    }
    let alloc = match CudaAllocator::new(ordinal) {
        Ok(a) => a,
        Err(e) => {
            return fail(
                &e.to_string(),
                "the driver initialised but the device did not open: check nvidia-smi, CUDA_VISIBLE_DEVICES and that no process holds the device exclusively",
            );
        }
    };
    let name = alloc
        .context()
        .name()
        .unwrap_or_else(|e| format!("unknown ({e:?})"));
    println!("device {ordinal}: {name}");
    if let (Some(sms), Some(khz)) = (
        attribute(
            &alloc,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        ),
        attribute(
            &alloc,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE,
        ),
    ) {
        println!("sms: {sms}, clock: {khz} kHz");
    }
    match alloc.backend().mem_info() {
        Some(m) => println!("memory: {} B free of {} B", m.free, m.total),
        None => println!("memory: unknown"),
    }
    match alloc.backend().vm_unavailable_reason() {
        None => println!(
            "expandable segments: available (page {} B), in use: {}",
            alloc.backend().page_size().unwrap_or(0),
            alloc.uses_expandable_segments()
        ),
        Some(why) => println!("expandable segments: unavailable: {why}"),
    }
    let stream = alloc.context().default_stream();
    match alloc.allocate(64 << 20, &stream) {
        Ok(b) => println!("allocated {} B at {:#x}", b.byte_len(), b.device_address()),
        Err(e) => {
            return fail(
                &e.to_string(),
                "a 64 MiB allocation on a fresh device failed",
            );
        }
    }
    print!("{}", alloc.memory_summary());
    match mapped {
        Some(paths) if paths.len() == 1 => println!("libcuda mapped: {}", paths[0]),
        Some(paths) => {
            return fail(
                &format!(
                    "{} driver libraries mapped ({}); exactly one is expected",
                    paths.len(),
                    paths.join(", ")
                ),
                "two libcuda copies (a compat/ one and the driver's?) are on the loader path: keep the driver's",
            );
        }
        None => println!("libcuda mapped: unknown (no /proc/self/maps)"),
    }
    ExitCode::SUCCESS
}

/// `cuInit`'s result `r`, the driver's version and the device count, each failure
/// classified: no device is NO-GPU, every other failure a FAIL with a hint.
fn probe_driver(r: sys::CUresult) -> Result<(), ExitCode> {
    use sys::CUresult as R;
    match r {
        R::CUDA_SUCCESS => {}
        R::CUDA_ERROR_NO_DEVICE => {
            return Err(no_gpu("no device: cuInit returned CUDA_ERROR_NO_DEVICE"));
        }
        R::CUDA_ERROR_STUB_LIBRARY => {
            return Err(fail(
                "cuInit returned CUDA_ERROR_STUB_LIBRARY: a toolkit stub libcuda.so was loaded",
                "a CUDA toolkit's stubs/ directory is on LD_LIBRARY_PATH (cudarc tries libcuda.so before libcuda.so.1); remove it",
            ));
        }
        R::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
        | R::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
        | R::CUDA_ERROR_NOT_SUPPORTED => {
            return Err(fail(
                &format!(
                    "cuInit returned {r:?}: the driver library does not match the kernel driver"
                ),
                "the libcuda.so loaded is not the one of the running driver (nvidia-smi shows its version): remove compat/ or copied libcuda files from LD_LIBRARY_PATH",
            ));
        }
        other => {
            return Err(fail(
                &format!("cuInit returned {other:?}"),
                "the driver is installed but does not initialise: check nvidia-smi and dmesg",
            ));
        }
    }
    let mut version = 0;
    // SAFETY: `version` is a valid out-pointer.
    if unsafe { sys::cuDriverGetVersion(&mut version) } == R::CUDA_SUCCESS {
        println!(
            "driver: CUDA {}.{} ({version})",
            version / 1000,
            version % 1000 / 10
        );
    }
    let mut count = 0;
    // SAFETY: `count` is a valid out-pointer; the driver is initialised.
    match unsafe { sys::cuDeviceGetCount(&mut count) } {
        R::CUDA_SUCCESS if count > 0 => Ok(()),
        R::CUDA_SUCCESS => Err(no_gpu("no device: the driver counts 0 devices")),
        other => Err(fail(
            &format!("cuDeviceGetCount returned {other:?}"),
            "check nvidia-smi",
        )),
    }
}

/// A device attribute, where the driver answers.
fn attribute(a: &CudaAllocator, attr: sys::CUdevice_attribute) -> Option<i32> {
    let mut v = 0;
    // SAFETY: `v` is an out-pointer; the device handle is the live context's.
    let r = unsafe { sys::cuDeviceGetAttribute(&mut v, attr, a.context().cu_device()) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(v)
}

/// The distinct files named `libcuda.so*` mapped into this process, from
/// `/proc/self/maps` (`None` where it cannot be read).
fn libcuda_mapped() -> Option<Vec<String>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut paths: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|f| f.starts_with("libcuda.so"))
        })
        .map(str::to_string)
        .collect();
    paths.sort();
    paths.dedup();
    Some(paths)
}
