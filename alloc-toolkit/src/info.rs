//! [`memory_info`]: one snapshot of the system, the container, the process,
//! the tracked host heap and every registered device.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroup::{CgroupLimit, cgroup_limit_at};
use crate::device::{DeviceInfo, device_infos};

/// `/proc/meminfo` figures (on macOS: `hw.memsize` and `host_statistics64`),
/// bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SystemMemory {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable` (what can be allocated without swapping).
    pub available: u64,
    /// `MemFree`.
    pub free: u64,
}

/// `/proc/self/status` figures (on macOS: `proc_pidinfo` and `getrusage`),
/// bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessMemory {
    /// Resident set size now (`VmRSS`).
    pub rss: u64,
    /// Highest resident set size (`VmHWM`).
    pub peak_rss: u64,
}

/// Host bytes counted by `alloc_host::TrackingAllocator` (zero when it is not
/// the global allocator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrackedHost {
    /// Whether the tracking allocator is installed.
    pub installed: bool,
    /// Live bytes.
    pub live: u64,
    /// Highest live bytes since start (or the last `reset_peak`).
    pub peak: u64,
    /// Live blocks.
    pub live_allocations: u64,
}

/// Everything [`memory_info`] reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryInfo {
    /// The machine.
    pub system: SystemMemory,
    /// The container's limit, if the process is in a memory cgroup.
    pub cgroup: Option<CgroupLimit>,
    /// This process.
    pub process: ProcessMemory,
    /// The tracked host heap.
    pub tracked: TrackedHost,
    /// Every registered device.
    pub devices: Vec<DeviceInfo>,
}

impl MemoryInfo {
    /// Host bytes this process can still use: the system's available memory,
    /// lowered to the cgroup's headroom (min over limited ancestors of limit
    /// − working set) when that is smaller. Returns the
    /// figure and where it came from.
    pub fn host_available(&self) -> (u64, &'static str) {
        match self.cgroup.as_ref().and_then(CgroupLimit::headroom) {
            Some(h) if h < self.system.available => (h, "cgroup limit - working set"),
            _ => (self.system.available, SYSTEM_AVAILABLE_SOURCE),
        }
    }

    /// The effective host limit: the cgroup limit when below the system total.
    pub fn host_limit(&self) -> u64 {
        match self.cgroup.as_ref().and_then(|c| c.limit) {
            Some(l) if l < self.system.total => l,
            _ => self.system.total,
        }
    }
}

/// Where [`SystemMemory::available`] comes from on this platform.
#[cfg(not(target_os = "macos"))]
const SYSTEM_AVAILABLE_SOURCE: &str = "/proc/meminfo MemAvailable";
/// Where [`SystemMemory::available`] comes from on this platform.
#[cfg(target_os = "macos")]
const SYSTEM_AVAILABLE_SOURCE: &str = "host_statistics64 free + inactive pages";

/// Where [`memory_info_from`] reads; [`Default`] is the running process.
#[derive(Clone, Debug)]
pub struct MemorySources {
    /// `/proc/meminfo`.
    pub meminfo: PathBuf,
    /// `/proc/self/status`.
    pub status: PathBuf,
    /// The cgroup mount, `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// `/proc/self/cgroup`.
    pub proc_cgroup: PathBuf,
}

impl Default for MemorySources {
    fn default() -> Self {
        MemorySources {
            meminfo: "/proc/meminfo".into(),
            status: "/proc/self/status".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            proc_cgroup: "/proc/self/cgroup".into(),
        }
    }
}

/// The value of `key:   N kB` in a /proc text, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let n: u64 = parts.next()?.parse().ok()?;
        Some(match parts.next() {
            Some("kB") => n * 1024,
            _ => n,
        })
    })
}

/// Parses `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> SystemMemory {
    let free = kb_field(text, "MemFree").unwrap_or(0);
    SystemMemory {
        total: kb_field(text, "MemTotal").unwrap_or(0),
        available: kb_field(text, "MemAvailable").unwrap_or(free),
        free,
    }
}

/// Parses `/proc/self/status` text.
pub fn parse_status(text: &str) -> ProcessMemory {
    let rss = kb_field(text, "VmRSS").unwrap_or(0);
    ProcessMemory {
        rss,
        peak_rss: kb_field(text, "VmHWM").unwrap_or(rss),
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The tracked host heap now (flushes the calling thread's pending charges).
pub fn tracked_host() -> TrackedHost {
    let s = alloc_host::process_stats();
    TrackedHost {
        installed: alloc_host::is_installed(),
        live: s.live_bytes,
        peak: s.peak_bytes,
        live_allocations: s.live_allocations,
    }
}

/// This process's resident set (`/proc/self/status`; on macOS
/// `proc_pidinfo` and `getrusage`).
pub fn process_memory() -> ProcessMemory {
    #[cfg(target_os = "macos")]
    return macos::process_memory();
    #[cfg(not(target_os = "macos"))]
    parse_status(&read(Path::new("/proc/self/status")))
}

/// Resident set size now from `/proc/self/statm` (a short line, cheaper than
/// `/proc/self/status`; on macOS `proc_pidinfo`). 0 when it cannot be read.
pub fn resident_bytes() -> u64 {
    #[cfg(target_os = "macos")]
    return macos::resident_bytes();
    #[cfg(not(target_os = "macos"))]
    std::fs::File::open("/proc/self/statm").map_or(0, |f| resident_bytes_from(&f))
}

/// Resident set size read from an open `/proc/self/statm` (read at offset 0
/// into a stack buffer: no allocation, no reopening), so a sampler can keep
/// the file open.
pub fn resident_bytes_from(statm: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 128];
    let n = statm.read_at(&mut buf, 0).unwrap_or(0);
    let pages = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    pages * page_size()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// System, container, process, tracked host and device memory now.
///
/// On macOS, which has neither /proc nor cgroups: the system from `sysctl
/// hw.memsize` and `host_statistics64`, the process from `proc_pidinfo` and
/// `getrusage`, and no container limit.
pub fn memory_info() -> MemoryInfo {
    #[cfg(target_os = "macos")]
    return MemoryInfo {
        system: macos::system_memory(),
        cgroup: None,
        process: macos::process_memory(),
        tracked: tracked_host(),
        devices: device_infos(),
    };
    #[cfg(not(target_os = "macos"))]
    memory_info_from(&MemorySources::default())
}

/// [`memory_info`] with its own allocations left uncharged. The
/// installation probe runs first, outside `untracked` (inside, the probe's
/// allocation would go uncounted and the allocator would look absent).
pub(crate) fn memory_info_untracked() -> MemoryInfo {
    let installed = alloc_host::is_installed();
    let mut info = alloc_host::untracked(memory_info);
    info.tracked.installed = installed;
    info
}

/// [`memory_info`] reading the /proc and cgroup files named in `sources`.
/// Missing files give zeros (system, process) or `None` (cgroup).
pub fn memory_info_from(sources: &MemorySources) -> MemoryInfo {
    MemoryInfo {
        system: parse_meminfo(&read(&sources.meminfo)),
        cgroup: cgroup_limit_at(&sources.cgroup_root, &read(&sources.proc_cgroup)),
        process: parse_status(&read(&sources.status)),
        tracked: tracked_host(),
        devices: device_infos(),
    }
}

/// The macOS sources: no /proc, no cgroups.
#[cfg(target_os = "macos")]
mod macos {
    use super::{ProcessMemory, SystemMemory};

    /// Total from `hw.memsize`; free = free pages, available = free +
    /// inactive pages of `host_statistics64(HOST_VM_INFO64)` (what the kernel
    /// can hand out without compressing or swapping pages in use); read by
    /// alloc-core's `vm_memory`, shared with the host backend.
    pub(super) fn system_memory() -> SystemMemory {
        let m = alloc_core::backends::host::vm_memory().unwrap_or(
            alloc_core::backends::host::VmMemory {
                total: 0,
                free: 0,
                inactive: 0,
            },
        );
        SystemMemory {
            total: m.total,
            available: (m.free + m.inactive).min(m.total),
            free: m.free.min(m.total),
        }
    }

    /// Resident bytes now (`proc_pidinfo(PROC_PIDTASKINFO)`), 0 on failure.
    pub(super) fn resident_bytes() -> u64 {
        // SAFETY: an all-zero proc_taskinfo is a valid value of it.
        let mut ti: libc::proc_taskinfo = unsafe { core::mem::zeroed() };
        let size = core::mem::size_of::<libc::proc_taskinfo>() as libc::c_int;
        // SAFETY: `ti` is writable for `size` bytes; proc_pidinfo writes at
        // most that many and returns how many it wrote.
        let n = unsafe {
            libc::proc_pidinfo(
                libc::getpid(),
                libc::PROC_PIDTASKINFO,
                0,
                (&raw mut ti).cast(),
                size,
            )
        };
        if n == size { ti.pti_resident_size } else { 0 }
    }

    /// Resident bytes now and their peak (`getrusage`'s `ru_maxrss`, bytes on
    /// macOS).
    pub(super) fn process_memory() -> ProcessMemory {
        let rss = resident_bytes();
        // SAFETY: an all-zero rusage is a valid value of it.
        let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
        // SAFETY: `ru` is a writable rusage.
        let peak = if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
            ru.ru_maxrss.max(0) as u64
        } else {
            0
        };
        ProcessMemory {
            rss,
            peak_rss: peak.max(rss),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let info = memory_info();
        assert!(info.system.total > 0, "{info:?}");
        assert!(info.system.available <= info.system.total);
        assert!(info.process.rss > 0 && info.process.peak_rss >= info.process.rss);
        assert!(info.host_available().0 <= info.system.total);
        let statm = resident_bytes();
        assert!(statm > 0 && statm <= info.process.peak_rss * 2, "{statm}");
    }

    #[test]
    fn kb_fields_need_the_exact_key() {
        let t = "MemTotalX: 5 kB\nMemTotal:  2 kB\n";
        assert_eq!(kb_field(t, "MemTotal"), Some(2048));
        assert_eq!(kb_field(t, "Missing"), None);
    }
}
