//! The container's memory limit: cgroup v2 `memory.max` and v1
//! `memory.limit_in_bytes`, read from paths so that tests use sample trees.
//!
//! The effective limit is the smallest limit on the way from the process's own
//! cgroup up to the root of the hierarchy, since every ancestor's limit applies.
//!
//! # Headroom and working set
//! - **working set** of a cgroup = usage − inactive file pages (`memory.stat`
//!   `inactive_file`, v1 `total_inactive_file`), as kubelet counts it: page
//!   cache that the kernel drops under pressure (mmap-loaded weights, read
//!   files) is not memory in use.
//! - **headroom** = min over the process's cgroup and its ancestors that have
//!   a limit of (limit − working set of *that* cgroup). An ancestor's usage
//!   includes its other children (sibling containers of a pod), so the
//!   process's own usage subtracted from an ancestor's limit overstates what
//!   is left. Where an ancestor's usage cannot be read, the process's own
//!   working set stands in (a lower bound of the ancestor's).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// A v1 limit at or above this is "no limit" (the kernel writes the largest
/// page-aligned `i64`, 9223372036854771712).
pub const V1_UNLIMITED: u64 = 1 << 62;

/// Which cgroup interface the limit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    /// The unified hierarchy (`memory.max`).
    V2,
    /// The legacy memory controller (`memory.limit_in_bytes`).
    V1,
}

/// The container's memory limit and usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupLimit {
    /// v1 or v2.
    pub version: CgroupVersion,
    /// The smallest limit on the way to the root, bytes; `None` = no limit.
    pub limit: Option<u64>,
    /// Bytes the process's own cgroup uses now (`memory.current` /
    /// `memory.usage_in_bytes`), page cache included.
    pub usage: Option<u64>,
    /// Inactive file pages of the process's own cgroup (`memory.stat`).
    pub inactive_file: Option<u64>,
    /// The directory whose file set the limit (or the process's own cgroup).
    pub dir: PathBuf,
    /// Min over limited cgroups on the way to the root of (limit − working
    /// set); `None` without a limit or a usage (see the module docs).
    pub headroom: Option<u64>,
    /// The cgroup whose (limit − working set) is the headroom.
    pub headroom_dir: Option<PathBuf>,
}

impl CgroupLimit {
    /// Bytes left before the tightest limit on the way to the root, page
    /// cache not counted as used (see the module docs).
    pub fn headroom(&self) -> Option<u64> {
        self.headroom
    }

    /// The process's own cgroup's usage less its inactive file pages
    /// (kubelet's working set).
    pub fn working_set(&self) -> Option<u64> {
        Some(working_set(self.usage?, self.inactive_file))
    }
}

/// `usage − inactive_file` (0 at worst).
fn working_set(usage: u64, inactive_file: Option<u64>) -> u64 {
    usage.saturating_sub(inactive_file.unwrap_or(0))
}

/// The value of `key N` in a `memory.stat` text.
pub fn parse_stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Parses `memory.max` (v2): a number of bytes or `max`.
pub fn parse_v2_max(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        t => t.parse().ok().map(Some),
    }
}

/// Parses `memory.limit_in_bytes` (v1): a number; huge values mean no limit.
pub fn parse_v1_limit(text: &str) -> Option<Option<u64>> {
    let v: u64 = text.trim().parse().ok()?;
    Some((v < V1_UNLIMITED).then_some(v))
}

/// The process's cgroup paths from `/proc/self/cgroup` text: the v2 path
/// (`0::/path`) and the v1 memory controller's path (`N:memory:/path`, or a
/// comma list naming `memory`).
pub fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            v2 = Some(path.to_owned());
        } else if ctrls.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_owned());
        }
    }
    (v2, v1)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `dir` and its ancestors up to and including `root`.
fn chain(root: &Path, rel: Option<&str>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut dir = root.to_path_buf();
    dirs.push(dir.clone());
    if let Some(rel) = rel {
        for part in rel.split('/').filter(|p| !p.is_empty() && *p != "..") {
            dir.push(part);
            if dir.is_dir() {
                dirs.push(dir.clone());
            }
        }
    }
    dirs.reverse();
    dirs
}

/// The file names of one cgroup interface.
struct Files {
    version: CgroupVersion,
    limit: &'static str,
    usage: &'static str,
    inactive: &'static str,
    parse: fn(&str) -> Option<Option<u64>>,
}

const V2: Files = Files {
    version: CgroupVersion::V2,
    limit: "memory.max",
    usage: "memory.current",
    inactive: "inactive_file",
    parse: parse_v2_max,
};

const V1: Files = Files {
    version: CgroupVersion::V1,
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
    inactive: "total_inactive_file",
    parse: parse_v1_limit,
};

fn number(dir: &Path, file: &str) -> Option<u64> {
    read(&dir.join(file))?.trim().parse().ok()
}

fn inactive_file(dir: &Path, f: &Files) -> Option<u64> {
    parse_stat_field(&read(&dir.join("memory.stat"))?, f.inactive)
}

/// Reads the limit, usage and headroom along `dirs` (own cgroup first);
/// `None` when no directory has the interface's limit file.
fn read_chain(dirs: &[PathBuf], f: &Files) -> Option<CgroupLimit> {
    let own = dirs.first()?.clone();
    let usage = number(&own, f.usage);
    let inactive = inactive_file(&own, f);
    let own_ws = usage.map(|u| working_set(u, inactive));
    let mut any = false;
    let mut limit: Option<(u64, PathBuf)> = None;
    let mut headroom: Option<(u64, PathBuf)> = None;
    for d in dirs {
        let Some(l) = read(&d.join(f.limit)).and_then(|t| (f.parse)(&t)) else {
            continue;
        };
        any = true;
        let Some(l) = l else { continue };
        if limit.as_ref().is_none_or(|(old, _)| l < *old) {
            limit = Some((l, d.clone()));
        }
        let ws = number(d, f.usage)
            .map(|u| working_set(u, inactive_file(d, f)))
            .or(own_ws);
        if let Some(ws) = ws {
            let h = l.saturating_sub(ws);
            if headroom.as_ref().is_none_or(|(old, _)| h < *old) {
                headroom = Some((h, d.clone()));
            }
        }
    }
    if !any {
        return None;
    }
    let (headroom, headroom_dir) = headroom.unzip();
    Some(CgroupLimit {
        version: f.version,
        limit: limit.as_ref().map(|l| l.0),
        usage,
        inactive_file: inactive,
        dir: limit.map_or(own, |l| l.1),
        headroom,
        headroom_dir,
    })
}

/// The effective limit under the cgroup mount `root` (normally
/// `/sys/fs/cgroup`) for a process whose `/proc/self/cgroup` reads
/// `proc_cgroup`. Tries v2 first, then v1 (`root/memory/...`). `None` when
/// neither interface has a memory file.
pub fn cgroup_limit_at(root: &Path, proc_cgroup: &str) -> Option<CgroupLimit> {
    let (v2, v1) = parse_proc_cgroup(proc_cgroup);
    read_chain(&chain(root, v2.as_deref()), &V2)
        .or_else(|| read_chain(&chain(&root.join("memory"), v1.as_deref()), &V1))
}

/// The effective limit of this process (`/sys/fs/cgroup`, `/proc/self/cgroup`).
pub fn cgroup_limit() -> Option<CgroupLimit> {
    let proc_cgroup = read(Path::new("/proc/self/cgroup")).unwrap_or_default();
    cgroup_limit_at(Path::new("/sys/fs/cgroup"), &proc_cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v2_and_v1_values() {
        assert_eq!(parse_v2_max("max\n"), Some(None));
        assert_eq!(parse_v2_max("1048576\n"), Some(Some(1 << 20)));
        assert_eq!(parse_v2_max("lots"), None);
        assert_eq!(parse_v1_limit("9223372036854771712\n"), Some(None));
        assert_eq!(parse_v1_limit("2147483648"), Some(Some(2 << 30)));
    }

    #[test]
    fn reads_memory_stat_fields() {
        let t = "anon 10\nfile 300\ninactive_file_x 1\ninactive_file 200\n";
        assert_eq!(parse_stat_field(t, "inactive_file"), Some(200));
        assert_eq!(parse_stat_field(t, "active_file"), None);
        assert_eq!(working_set(500, Some(200)), 300);
        assert_eq!(working_set(100, Some(200)), 0);
    }

    #[test]
    fn parses_proc_self_cgroup() {
        let text = "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n0::/user.slice/x\n";
        let (v2, v1) = parse_proc_cgroup(text);
        assert_eq!(v2.as_deref(), Some("/user.slice/x"));
        assert_eq!(v1.as_deref(), Some("/docker/abc"));
    }
}
