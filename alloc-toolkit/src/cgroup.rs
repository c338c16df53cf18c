//! The container's memory limit: cgroup v2 `memory.max` and v1
//! `memory.limit_in_bytes`, read from paths so that tests use sample trees.
//!
//! The effective limit is the smallest limit on the way from the process's own
//! cgroup up to the root of the hierarchy, since every ancestor's limit applies.

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
    /// Bytes the cgroup uses now (`memory.current` / `memory.usage_in_bytes`).
    pub usage: Option<u64>,
    /// The directory whose file set the limit (or the process's own cgroup).
    pub dir: PathBuf,
}

impl CgroupLimit {
    /// `limit − usage`, when both are known.
    pub fn headroom(&self) -> Option<u64> {
        Some(self.limit?.saturating_sub(self.usage?))
    }
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

fn min_limit(
    dirs: &[PathBuf],
    file: &str,
    parse: fn(&str) -> Option<Option<u64>>,
) -> Option<(Option<u64>, PathBuf)> {
    let mut best: Option<(Option<u64>, PathBuf)> = None;
    for d in dirs {
        let Some(limit) = read(&d.join(file)).and_then(|t| parse(&t)) else {
            continue;
        };
        let better = match &best {
            None => true,
            Some((None, _)) => limit.is_some(),
            Some((Some(old), _)) => limit.is_some_and(|l| l < *old),
        };
        if better {
            best = Some((limit, d.clone()));
        }
    }
    best
}

fn usage(dir: &Path, file: &str) -> Option<u64> {
    read(&dir.join(file))?.trim().parse().ok()
}

/// The effective limit under the cgroup mount `root` (normally
/// `/sys/fs/cgroup`) for a process whose `/proc/self/cgroup` reads
/// `proc_cgroup`. Tries v2 first, then v1 (`root/memory/...`). `None` when
/// neither interface has a memory file.
pub fn cgroup_limit_at(root: &Path, proc_cgroup: &str) -> Option<CgroupLimit> {
    let (v2, v1) = parse_proc_cgroup(proc_cgroup);
    let dirs = chain(root, v2.as_deref());
    if let Some((limit, dir)) = min_limit(&dirs, "memory.max", parse_v2_max) {
        let own = dirs.first().cloned().unwrap_or(dir.clone());
        return Some(CgroupLimit {
            version: CgroupVersion::V2,
            limit,
            usage: usage(&own, "memory.current"),
            dir: if limit.is_some() { dir } else { own },
        });
    }
    let dirs = chain(&root.join("memory"), v1.as_deref());
    let (limit, dir) = min_limit(&dirs, "memory.limit_in_bytes", parse_v1_limit)?;
    let own = dirs.first().cloned().unwrap_or(dir.clone());
    Some(CgroupLimit {
        version: CgroupVersion::V1,
        limit,
        usage: usage(&own, "memory.usage_in_bytes"),
        dir: if limit.is_some() { dir } else { own },
    })
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
    fn parses_proc_self_cgroup() {
        let text = "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n0::/user.slice/x\n";
        let (v2, v1) = parse_proc_cgroup(text);
        assert_eq!(v2.as_deref(), Some("/user.slice/x"));
        assert_eq!(v1.as_deref(), Some("/docker/abc"));
    }
}
