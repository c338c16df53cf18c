//! Expandable segments on CUDA virtual memory: reserve address space with
//! `cuMemAddressReserve`, back each page with its own physical allocation
//! (`cuMemCreate` + `cuMemMap` + `cuMemSetAccess`), unmap page by page once
//! no queued work uses them, release the range with `cuMemAddressFree`.
//!
//! Access is granted to the owning device and to every device that can
//! access it as a peer (`cuDeviceCanAccessPeer`): memory from
//! `cuMemAlloc` is reachable from peers once peer access is enabled, and
//! virtual memory must be granted to them explicitly or their kernels fault.
//!
//! One physical allocation per page, because `cuMemUnmap` must name exactly a
//! mapped range: the engine unmaps single free pages out of larger mapped
//! runs.
//!
//! # Invariants
//! The page table keeps [`CudaInvariant::V1`] (it is the mapped pages) and
//! [`CudaInvariant::V2`] (a handle is mapped once); their definitions are on
//! the variants.

use std::collections::HashMap;
use std::sync::Mutex;

use cudarc::driver::sys;

use alloc_core::{BackendError, DevicePtr};

#[cfg(doc)]
use crate::CudaInvariant;
use crate::driver::{VM_SYMBOLS, backend_error, check, has_symbols};

/// The smallest page of expandable segments (the driver's granularity is
/// usually 2 MiB; a larger one is used as it is).
pub const MIN_VM_PAGE: usize = 2 << 20;

/// Virtual-memory state of one device.
pub(crate) struct Vm {
    pub(crate) page: usize,
    device: i32,
    /// Devices that can access this one's memory as peers.
    peers: Vec<i32>,
    /// The mapped pages ([`CudaInvariant::V1`]).
    pages: Mutex<HashMap<usize, sys::CUmemGenericAllocationHandle>>,
}

fn prop(device: i32) -> sys::CUmemAllocationProp {
    // SAFETY: the struct is plain data for which all-zero is valid (no
    // handle types, no flags, null metadata pointer).
    let mut p: sys::CUmemAllocationProp = unsafe { core::mem::zeroed() };
    p.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = device;
    p
}

/// The ordinals of the other devices that can access memory of `device`.
fn peers_of(device: sys::CUdevice, ordinal: i32) -> Vec<i32> {
    let mut count = 0;
    // SAFETY: `count` is a valid out-pointer; the driver is initialised.
    if check(unsafe { sys::cuDeviceGetCount(&mut count) }).is_err() {
        return Vec::new();
    }
    (0..count)
        .filter(|&p| p != ordinal && can_access(device, p))
        .collect()
}

/// Whether device `p` can access memory of `device`.
fn can_access(device: sys::CUdevice, p: i32) -> bool {
    let mut peer: sys::CUdevice = 0;
    let mut can = 0;
    // SAFETY: out-pointers valid for the calls; `p` is an ordinal below the
    // device count and `device` a device handle.
    let asked = unsafe {
        check(sys::cuDeviceGet(&mut peer, p)).is_ok()
            && check(sys::cuDeviceCanAccessPeer(&mut can, peer, device)).is_ok()
    };
    asked && can == 1
}

/// Read-write access for `device`.
fn access(device: i32) -> sys::CUmemAccessDesc {
    let mut location = prop(device).location;
    location.id = device;
    sys::CUmemAccessDesc {
        location,
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    }
}

impl Vm {
    /// The devices granted access to the pages: the owner, then its peers.
    pub(crate) fn accessors(&self) -> Vec<i32> {
        core::iter::once(self.device)
            .chain(self.peers.iter().copied())
            .collect()
    }

    /// The virtual-memory capability of `device`, or why there is none. The
    /// device's context must be current.
    pub(crate) fn probe(device: sys::CUdevice, ordinal: i32) -> Result<Vm, String> {
        if !has_symbols(&VM_SYMBOLS) {
            return Err("the driver lacks the virtual-memory functions (cuMemCreate, ...); a driver for CUDA 10.2 or later has them".into());
        }
        let mut supported = 0;
        let attr = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED;
        // SAFETY: `supported` is a valid out-pointer and `device` a device
        // handle from the driver.
        let r = unsafe { sys::cuDeviceGetAttribute(&mut supported, attr, device) };
        if check(r).is_err() || supported == 0 {
            return Err(format!(
                "device {ordinal} does not support virtual memory management"
            ));
        }
        let mut gran = 0usize;
        let p = prop(ordinal);
        let opt = sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM;
        // SAFETY: the symbol exists (checked above); out-pointer and prop are
        // valid for the call.
        let r = unsafe { sys::cuMemGetAllocationGranularity(&mut gran, &p, opt) };
        if let Err(e) = check(r) {
            return Err(format!("cuMemGetAllocationGranularity failed: {e:?}"));
        }
        let page = gran.max(MIN_VM_PAGE);
        if !page.is_power_of_two() {
            return Err(format!(
                "granularity {gran} B is not a power of two; expandable segments need one"
            ));
        }
        Ok(Vm {
            page,
            device: ordinal,
            peers: peers_of(device, ordinal),
            pages: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, sys::CUmemGenericAllocationHandle>> {
        self.pages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pages currently mapped.
    pub(crate) fn mapped_pages(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn reserve(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        if bytes == 0 || bytes % self.page != 0 {
            return Err(BackendError::Other(format!(
                "reserve({bytes}): not a positive multiple of the page size {}",
                self.page
            )));
        }
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: the symbol exists (probe); `ptr` is a valid out-pointer.
        let r = unsafe { sys::cuMemAddressReserve(&mut ptr, bytes, self.page, 0, 0) };
        check(r).map_err(|e| backend_error("cuMemAddressReserve", e))?;
        Ok(DevicePtr(ptr as usize))
    }

    /// Maps one page at `addr`.
    fn map_page(&self, addr: usize) -> Result<sys::CUmemGenericAllocationHandle, BackendError> {
        let mut h: sys::CUmemGenericAllocationHandle = 0;
        let p = prop(self.device);
        // SAFETY: the symbol exists (probe); out-pointer and prop are valid.
        let r = unsafe { sys::cuMemCreate(&mut h, self.page, &p, 0) };
        check(r).map_err(|e| backend_error("cuMemCreate", e))?;
        // SAFETY: `addr` is an unmapped page of a live reservation (the
        // caller's contract) and `h` a fresh handle of one page.
        let r = unsafe { sys::cuMemMap(addr as sys::CUdeviceptr, self.page, 0, h, 0) };
        if let Err(e) = check(r) {
            // SAFETY: `h` is ours and mapped nowhere.
            let _ = unsafe { sys::cuMemRelease(h) };
            return Err(backend_error("cuMemMap", e));
        }
        Ok(h)
    }

    /// Maps `[ptr, ptr + bytes)`, page by page; on failure unmaps what it
    /// mapped and returns the error.
    ///
    /// # Safety
    /// The range is page-aligned, inside one live reservation of this device,
    /// and none of its pages is mapped.
    pub(crate) unsafe fn map(&self, ptr: DevicePtr, bytes: usize) -> Result<(), BackendError> {
        if bytes == 0 || bytes % self.page != 0 || ptr.0 % self.page != 0 {
            return Err(BackendError::Other(format!(
                "map({:#x}, {bytes}): not whole pages of {} B",
                ptr.0, self.page
            )));
        }
        let mut done: Vec<(usize, sys::CUmemGenericAllocationHandle)> = Vec::new();
        let mut result = Ok(());
        for addr in (ptr.0..ptr.0 + bytes).step_by(self.page) {
            match self.map_page(addr) {
                Ok(h) => done.push((addr, h)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            let desc: Vec<sys::CUmemAccessDesc> =
                self.accessors().into_iter().map(access).collect();
            // SAFETY: every page of the range was mapped above; `desc` holds
            // `desc.len()` valid descriptors and lives across the call.
            let r = unsafe {
                sys::cuMemSetAccess(ptr.0 as sys::CUdeviceptr, bytes, desc.as_ptr(), desc.len())
            };
            result = check(r).map_err(|e| backend_error("cuMemSetAccess", e));
        }
        match result {
            Ok(()) => {
                self.lock().extend(done);
                Ok(())
            }
            Err(e) => {
                for (addr, h) in done {
                    // SAFETY: the page was mapped above with `h`, nothing has
                    // used it (the mapping was never handed out).
                    unsafe { self.unmap_page(addr, h) };
                }
                Err(e)
            }
        }
    }

    /// # Safety
    /// `h` is mapped at `addr` (one page) and no work uses the page.
    unsafe fn unmap_page(&self, addr: usize, h: sys::CUmemGenericAllocationHandle) -> bool {
        // SAFETY: the caller's contract.
        let a = check(unsafe { sys::cuMemUnmap(addr as sys::CUdeviceptr, self.page) });
        // SAFETY: `h` is no longer mapped (or the unmap failed, in which case
        // the release fails too and the handle leaks, which is safe).
        let b = check(unsafe { sys::cuMemRelease(h) });
        a.is_ok() && b.is_ok()
    }

    /// Unmaps the pages of `[ptr, ptr + bytes)`; no queued work may use them.
    /// Returns how many driver calls failed.
    ///
    /// # Safety
    /// Every page of the range is mapped and no work uses it.
    pub(crate) unsafe fn unmap(&self, ptr: DevicePtr, bytes: usize) -> usize {
        let mut failed = 0;
        let mut pages = self.lock();
        for addr in (ptr.0..ptr.0 + bytes).step_by(self.page) {
            match pages.remove(&addr) {
                // SAFETY: cuda:V1: `h` is mapped at `addr`; the caller guarantees
                // no work uses it.
                Some(h) => failed += usize::from(!unsafe { self.unmap_page(addr, h) }),
                None => failed += 1,
            }
        }
        failed
    }

    /// Releases a reservation. Returns whether the driver accepted it.
    ///
    /// # Safety
    /// `ptr`/`bytes` name one live reservation with no page mapped.
    pub(crate) unsafe fn release(&self, ptr: DevicePtr, bytes: usize) -> bool {
        // SAFETY: the caller's contract.
        check(unsafe { sys::cuMemAddressFree(ptr.0 as sys::CUdeviceptr, bytes) }).is_ok()
    }
}
