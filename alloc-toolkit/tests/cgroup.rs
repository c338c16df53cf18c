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
    assert_eq!(c.headroom(), Some(412 << 20));
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
        (412 << 20, "cgroup limit - cgroup usage")
    );
    assert_eq!(info.host_limit(), 512 << 20);
    let err = ensure_available_in(&info, 400 << 20, 1.2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cgroup") && err.contains("68.00 MiB missing"),
        "{err}"
    );
    assert!(ensure_available_in(&info, 300 << 20, 1.2).is_ok());
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
