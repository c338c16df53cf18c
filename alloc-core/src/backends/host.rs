//! [`HostBackend`]: real host memory, the embedded default. Segments are
//! anonymous mmaps; expandable segments reserve address space with
//! `PROT_NONE` and map pages with `mprotect`, unmapping them with
//! `madvise(MADV_DONTNEED)` + `mprotect(PROT_NONE)`, so they work on any
//! Linux machine. Host memory has one stream, `()`, and its work is always
//! complete.

use crate::backend::{BackendError, DeviceBackend, DevicePtr, MemInfo};

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

    fn synchronize(&self) {}

    fn mem_info(&self) -> Option<MemInfo> {
        // SAFETY: sysinfo only writes the struct passed to it.
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
        unsafe {
            libc::madvise(ptr.0 as *mut libc::c_void, bytes, libc::MADV_DONTNEED);
            libc::mprotect(ptr.0 as *mut libc::c_void, bytes, libc::PROT_NONE);
        }
    }

    unsafe fn release(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: the caller passes one live reservation of ours.
        unsafe { libc::munmap(ptr.0 as *mut libc::c_void, bytes) };
    }
}
