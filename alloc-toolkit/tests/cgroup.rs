//! cgroup v1/v2 limits and /proc parsing, read from the sample trees in
//! `tests/fixtures/`.

use std::path::{Path, PathBuf};

use alloc_toolkit::{
    CgroupVersion, MemorySources, cgroup_limit_at, ensure_available_in, memory_info_from,
};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn limit_of(dir: &str) -> Option<alloc_toolkit::CgroupLimit> {
    let root = fixture(dir);
    let proc = std::fs::read_to_string(root.join("proc_self_cgroup")).unwrap_or_default();
    cgroup_limit_at(&root, &proc)
}

#[test]
fn v2_takes_the_smallest_limit_on_the_way_to_the_root() {
    let c = limit_of("cgroup_v2_nested").expect("v2 files");
    assert_eq!(c.version, CgroupVersion::V2);
    assert_eq!(
        c.limit,
        Some(512 << 20),
        "pod1 (512 MiB) beats kubepods (1 GiB)"
    );
    assert!(c.dir.ends_with("kubepods/pod1"), "{}", c.dir.display());
    assert_eq!(
        c.usage,
        Some(100 << 20),
        "usage of the process's own cgroup"
    );
    assert_eq!(c.working_set(), Some(60 << 20), "100 MiB - 40 MiB inactive");
    // pod1: 512 MiB limit - (450 MiB usage - 100 MiB inactive file): its
    // other children use memory too, so the own cgroup's 100 MiB would
    // overstate the room (412 MiB).
    assert_eq!(c.headroom(), Some(162 << 20));
    assert!(c.headroom_dir.as_ref().unwrap().ends_with("kubepods/pod1"));
}

#[test]
fn v2_max_everywhere_is_no_limit() {
    let c = limit_of("cgroup_v2_unlimited").expect("v2 files");
    assert_eq!(
        (c.version, c.limit, c.usage),
        (CgroupVersion::V2, None, Some(2048))
    );
    assert_eq!(c.headroom(), None);
}

#[test]
fn v1_reads_the_memory_controller_path() {
    let c = limit_of("cgroup_v1").expect("v1 files");
    assert_eq!(c.version, CgroupVersion::V1);
    assert_eq!(c.limit, Some(2 << 30));
    assert_eq!(c.usage, Some(300 << 20));
    let u = limit_of("cgroup_v1_unlimited").expect("v1 files");
    assert_eq!((u.limit, u.usage), (None, Some(4096)));
}

#[test]
fn no_cgroup_files_is_none() {
    assert!(limit_of("cgroup_none").is_none());
}

#[test]
fn memory_info_from_samples_and_the_container_limit_wins() {
    let sources = MemorySources {
        meminfo: fixture("meminfo"),
        status: fixture("status"),
        cgroup_root: fixture("cgroup_v2_nested"),
        proc_cgroup: fixture("cgroup_v2_nested/proc_self_cgroup"),
    };
    let info = memory_info_from(&sources);
    assert_eq!(info.system.total, 16_384_000 * 1024);
    assert_eq!(info.system.available, 8_192_000 * 1024);
    assert_eq!(info.process.rss, 1 << 30);
    assert_eq!(info.process.peak_rss, 2 << 30);
    // 8 GB available on the machine, but only 412 MiB left in the container.
    assert_eq!(
        info.host_available(),
        (162 << 20, "cgroup limit - working set")
    );
    assert_eq!(info.host_limit(), 512 << 20);
    let err = ensure_available_in(&info, 200 << 20, 1.2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cgroup") && err.contains("78.00 MiB missing"),
        "{err}"
    );
    assert!(ensure_available_in(&info, 130 << 20, 1.2).is_ok());
}

#[test]
fn missing_files_give_zeros_not_errors() {
    let sources = MemorySources {
        meminfo: fixture("nope"),
        status: fixture("nope"),
        cgroup_root: fixture("cgroup_none"),
        proc_cgroup: fixture("nope"),
    };
    let info = memory_info_from(&sources);
    assert_eq!((info.system.total, info.process.rss), (0, 0));
    assert!(info.cgroup.is_none());
}

/// A cgroup v2 tree built in a temporary directory: `(relative dir, file,
/// contents)` triples; returns the root.
fn fake_tree(name: &str, files: &[(&str, &str, String)]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("alloc-toolkit-cg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (dir, file, text) in files {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(file), text).unwrap();
    }
    root
}

const MIB: u64 = 1 << 20;

#[test]
fn page_cache_is_not_used_memory() {
    // A container that mmap-loaded 3 GiB of weights: usage 3.5 GiB of a
    // 4 GiB limit, 3 GiB of it inactive file pages the kernel can drop.
    let root = fake_tree(
        "cache",
        &[
            ("c", "memory.max", format!("{}", 4096 * MIB)),
            ("c", "memory.current", format!("{}", 3584 * MIB)),
            (
                "c",
                "memory.stat",
                format!("anon {}\ninactive_file {}\n", 512 * MIB, 3072 * MIB),
            ),
        ],
    );
    let c = cgroup_limit_at(&root, "0::/c\n").unwrap();
    assert_eq!(c.working_set(), Some(512 * MIB));
    assert_eq!(
        c.headroom(),
        Some(3584 * MIB),
        "4 GiB - 512 MiB working set"
    );
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn headroom_is_the_minimum_over_ancestors() {
    // pod: 2 GiB limit, 1.9 GiB used by all its containers; our container:
    // 1 GiB limit, 100 MiB used. The pod leaves 100 MiB, not 900 MiB.
    let root = fake_tree(
        "ancestors",
        &[
            ("pod", "memory.max", format!("{}", 2048 * MIB)),
            ("pod", "memory.current", format!("{}", 1948 * MIB)),
            ("pod/app", "memory.max", format!("{}", 1024 * MIB)),
            ("pod/app", "memory.current", format!("{}", 100 * MIB)),
            ("pod/other", "memory.current", format!("{}", 1848 * MIB)),
        ],
    );
    let c = cgroup_limit_at(&root, "0::/pod/app\n").unwrap();
    assert_eq!(c.limit, Some(1024 * MIB), "the smallest limit");
    assert!(c.dir.ends_with("pod/app"));
    assert_eq!(c.headroom(), Some(100 * MIB));
    assert!(c.headroom_dir.as_ref().unwrap().ends_with("pod"));
    // Unknown usage of an ancestor: the own working set stands in.
    std::fs::remove_file(root.join("pod/memory.current")).unwrap();
    let c = cgroup_limit_at(&root, "0::/pod/app\n").unwrap();
    assert_eq!(c.headroom(), Some(924 * MIB));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn v1_subtracts_total_inactive_file() {
    let root = fake_tree(
        "v1",
        &[
            (
                "memory/d",
                "memory.limit_in_bytes",
                format!("{}", 1024 * MIB),
            ),
            (
                "memory/d",
                "memory.usage_in_bytes",
                format!("{}", 900 * MIB),
            ),
            (
                "memory/d",
                "memory.stat",
                format!("inactive_file 1\ntotal_inactive_file {}\n", 500 * MIB),
            ),
        ],
    );
    let c = cgroup_limit_at(&root, "4:memory:/d\n").unwrap();
    assert_eq!(c.version, CgroupVersion::V1);
    assert_eq!(c.headroom(), Some(624 * MIB));
    std::fs::remove_dir_all(root).unwrap();
}
