//! [`HostBackend`]: real host memory, the embedded default. Segments are
//! anonymous mmaps; expandable segments reserve address space with
//! `PROT_NONE` and map pages with `mprotect`, unmapping them with
//! `madvise(MADV_DONTNEED)` + `mprotect(PROT_NONE)` on Linux (on macOS, where
//! `MADV_DONTNEED` keeps the pages, by mapping fresh `PROT_NONE` pages over
//! them), so they work on any Linux or macOS machine. Free and total memory:
//! `sysinfo(2)` on Linux, `hw.memsize` and `host_statistics64` on Apple
//! systems. Host memory has one stream, `()`, and its work is always
//! complete.

use crate::backend::{BackendError, DeviceBackend, DevicePtr, MemInfo, SyncCoverage};

/// Page size of expandable segments on the host (2 MiB, a huge-page size).
pub const HOST_PAGE: usize = 2 << 20;

/// Real host memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostBackend {
    _private: (),
}

impl HostBackend {
    /// The host backend.
    pub const fn new() -> Self {
        HostBackend { _private: () }
    }
}

fn mmap_error(what: &str) -> BackendError {
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOMEM) => BackendError::OutOfMemory,
        _ => BackendError::Other(format!("{what}: {err}")),
    }
}

fn anon_map(
    bytes: usize,
    prot: libc::c_int,
    extra: libc::c_int,
) -> Result<*mut libc::c_void, BackendError> {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory; the result is checked below.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            bytes,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(mmap_error("mmap"))
    } else {
        Ok(p)
    }
}

// SAFETY: every region comes from a fresh anonymous mmap, which overlaps no
// other live mapping; mmap returns 4096-aligned addresses (≥ 512) and
// `reserve` trims its mapping to a HOST_PAGE-aligned range. Host work is
// synchronous, so every event is complete when recorded.
unsafe impl DeviceBackend for HostBackend {
    type Stream = ();
    type Event = ();

    fn name(&self) -> &str {
        "host"
    }

    fn stream_for_id(&self, _id: u32) {}

    fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        if bytes == 0 {
            return Err(BackendError::Other(
                "allocate(0): segments are never empty".into(),
            ));
        }
        anon_map(bytes, libc::PROT_READ | libc::PROT_WRITE, 0).map(|p| DevicePtr(p as usize))
    }

    unsafe fn deallocate(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: the caller passes one live segment from `allocate`.
        unsafe { libc::munmap(ptr.0 as *mut libc::c_void, bytes) };
    }

    fn record_event(&self, _stream: ()) -> Result<(), BackendError> {
        Ok(())
    }

    fn event_done(&self, _event: &()) -> bool {
        true
    }

    fn wait_event(&self, _event: &()) {}

    fn synchronize(&self) -> SyncCoverage {
        SyncCoverage::All // one stream, and host work is synchronous
    }

    fn mem_info(&self) -> Option<MemInfo> {
        system_mem_info()
    }

    fn page_size(&self) -> Option<usize> {
        Some(HOST_PAGE)
    }

    fn reserve(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        if bytes == 0 || bytes % HOST_PAGE != 0 {
            return Err(BackendError::Other(format!(
                "reserve({bytes}): not a positive multiple of {HOST_PAGE}"
            )));
        }
        let over = bytes
            .checked_add(HOST_PAGE)
            .ok_or(BackendError::OutOfMemory)?;
        let p = anon_map(over, libc::PROT_NONE, libc::MAP_NORESERVE)? as usize;
        let start = p.next_multiple_of(HOST_PAGE);
        let (head, tail) = (start - p, p + over - (start + bytes));
        // SAFETY: both ranges are the unused ends of the mapping made above.
        unsafe {
            if head > 0 {
                libc::munmap(p as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((start + bytes) as *mut libc::c_void, tail);
            }
        }
        Ok(DevicePtr(start))
    }

    unsafe fn map(&self, ptr: DevicePtr, bytes: usize) -> Result<(), BackendError> {
        // SAFETY: the caller passes page-aligned unmapped pages of one live
        // reservation of ours, so no other mapping changes.
        let r = unsafe {
            libc::mprotect(
                ptr.0 as *mut libc::c_void,
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if r != 0 {
            Err(mmap_error("mprotect"))
        } else {
            Ok(())
        }
    }

    unsafe fn unmap(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: the caller passes mapped pages of one live reservation that
        // nothing uses any more; dropping their contents is what is asked.
        unsafe { discard_pages(ptr.0 as *mut libc::c_void, bytes) };
    }

    unsafe fn release(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: the caller passes one live reservation of ours.
        unsafe { libc::munmap(ptr.0 as *mut libc::c_void, bytes) };
    }
}

/// Returns the physical pages of `[p, p + bytes)` to the system and makes the
/// range inaccessible again, keeping the reservation.
///
/// # Safety
/// The range is page-aligned, inside one live reservation of ours, and
/// nothing uses its contents any more.
#[cfg(not(target_vendor = "apple"))]
unsafe fn discard_pages(p: *mut libc::c_void, bytes: usize) {
    // SAFETY: per this function's contract the range is ours and unused.
    unsafe {
        libc::madvise(p, bytes, libc::MADV_DONTNEED);
        libc::mprotect(p, bytes, libc::PROT_NONE);
    }
}

/// As above; on Apple systems `MADV_DONTNEED` leaves the pages resident, so
/// fresh `PROT_NONE` pages are mapped over the range (`MAP_FIXED` replaces
/// exactly the pages named, and the range stays reserved).
///
/// # Safety
/// As above.
#[cfg(target_vendor = "apple")]
unsafe fn discard_pages(p: *mut libc::c_void, bytes: usize) {
    // SAFETY: per this function's contract the range is ours and unused, so
    // replacing its pages touches no other mapping.
    let r = unsafe {
        libc::mmap(
            p,
            bytes,
            libc::PROT_NONE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANON | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        // SAFETY: as above; the range at least becomes inaccessible.
        unsafe { libc::mprotect(p, bytes, libc::PROT_NONE) };
    }
}

/// Free and total RAM from `sysinfo(2)`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn system_mem_info() -> Option<MemInfo> {
    // SAFETY: an all-zero sysinfo struct is a valid value of it.
    let mut si: libc::sysinfo = unsafe { core::mem::zeroed() };
    // SAFETY: `si` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return None;
    }
    let unit = si.mem_unit.max(1) as usize;
    Some(MemInfo {
        free: (si.freeram as usize).saturating_mul(unit),
        total: (si.totalram as usize).saturating_mul(unit),
    })
}

/// Total RAM from `sysctl hw.memsize`; free RAM = free + inactive pages
/// ([`vm_memory`]): what the kernel can hand out without compressing or
/// swapping pages in use.
#[cfg(target_vendor = "apple")]
fn system_mem_info() -> Option<MemInfo> {
    let m = vm_memory()?;
    Some(MemInfo {
        free: usize::try_from(m.free + m.inactive).unwrap_or(usize::MAX),
        total: usize::try_from(m.total).unwrap_or(usize::MAX),
    })
}

/// The machine's memory as macOS counts it, in bytes.
#[cfg(target_vendor = "apple")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmMemory {
    /// `sysctl hw.memsize`.
    pub total: u64,
    /// Free pages of `host_statistics64(HOST_VM_INFO64)` × the page size.
    pub free: u64,
    /// Inactive pages (reclaimable without swapping) × the page size.
    pub inactive: u64,
}

/// Reads [`VmMemory`]: `sysctl hw.memsize` and `host_statistics64`; `None`
/// when either call fails. Shared with alloc-toolkit's memory info.
#[cfg(target_vendor = "apple")]
pub fn vm_memory() -> Option<VmMemory> {
    let mut total: u64 = 0;
    let mut len = core::mem::size_of::<u64>();
    // SAFETY: the name is NUL-terminated and `total`/`len` describe a valid,
    // writable u64, which is what `hw.memsize` holds.
    let r = unsafe {
        libc::sysctlbyname(
            c"hw.memsize".as_ptr(),
            (&raw mut total).cast(),
            &mut len,
            core::ptr::null_mut(),
            0,
        )
    };
    if r != 0 || len != core::mem::size_of::<u64>() {
        return None;
    }
    // SAFETY: an all-zero vm_statistics64 is a valid value of it.
    let mut vm: libc::vm_statistics64 = unsafe { core::mem::zeroed() };
    let mut count = libc::HOST_VM_INFO64_COUNT;
    // SAFETY: `vm` is writable for `count` integers (HOST_VM_INFO64_COUNT is
    // its size in integers); the kernel writes at most `count` of them.
    let kr = unsafe {
        libc::host_statistics64(
            mach_host(),
            libc::HOST_VM_INFO64,
            (&raw mut vm).cast(),
            &mut count,
        )
    };
    if kr != libc::KERN_SUCCESS {
        return None;
    }
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(VmMemory {
        total,
        free: u64::from(vm.free_count).saturating_mul(page),
        inactive: u64::from(vm.inactive_count).saturating_mul(page),
    })
}

/// The host port, asked for once: each `mach_host_self` call adds a
/// reference to the port that would otherwise have to be released.
#[cfg(target_vendor = "apple")]
fn mach_host() -> libc::mach_port_t {
    static HOST: std::sync::OnceLock<libc::mach_port_t> = std::sync::OnceLock::new();
    // SAFETY: mach_host_self has no preconditions. libc marks it deprecated
    // in favour of the mach2 crate, which would be a dependency for one call.
    #[allow(deprecated)]
    *HOST.get_or_init(|| unsafe { libc::mach_host_self() })
}

/// Systems with neither interface: the backend does not know.
#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn system_mem_info() -> Option<MemInfo> {
    None
}
