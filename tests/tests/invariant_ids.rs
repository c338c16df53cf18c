//! Invariant ids are unique across the workspace: every crate's invariant enum
//! (and the engine's locking rules, which share the id space) is listed here,
//! and no two variants share a displayed id.

use std::collections::HashMap;

/// Every invariant of every crate: (displayed id, the variant as written).
fn all() -> Vec<(String, String)> {
    fn each<T: std::fmt::Display + std::fmt::Debug>(
        crate_name: &str,
        all: &[T],
    ) -> Vec<(String, String)> {
        all.iter()
            .map(|v| (v.to_string(), format!("{crate_name}::{v:?}")))
            .collect()
    }
    let mut out = Vec::new();
    out.extend(each(
        "alloc_scope::ScopeInvariant",
        alloc_scope::ScopeInvariant::ALL,
    ));
    out.extend(each(
        "alloc_core::CoreInvariant",
        alloc_core::CoreInvariant::ALL,
    ));
    out.extend(each("alloc_core::LockRule", alloc_core::LockRule::ALL));
    out.extend(each(
        "alloc_host::HostInvariant",
        alloc_host::HostInvariant::ALL,
    ));
    out.extend(each(
        "alloc_cuda::CudaInvariant",
        alloc_cuda::CudaInvariant::ALL,
    ));
    out.extend(each(
        "alloc_mps::MpsInvariant",
        alloc_mps::MpsInvariant::ALL,
    ));
    out.extend(each(
        "alloc_toolkit::ToolkitInvariant",
        alloc_toolkit::ToolkitInvariant::ALL,
    ));
    out
}

#[test]
fn no_two_invariants_share_a_displayed_id() {
    let mut seen: HashMap<String, String> = HashMap::new();
    for (id, variant) in all() {
        if let Some(first) = seen.insert(id.clone(), variant.clone()) {
            panic!("{id} names both {first} and {variant}");
        }
    }
}

#[test]
fn every_id_has_a_crate_prefix_and_a_short_number() {
    for (id, variant) in all() {
        let (prefix, local) = id
            .split_once(':')
            .unwrap_or_else(|| panic!("{variant}: {id} has no prefix"));
        assert!(
            ["scope", "core", "host", "cuda", "mps", "toolkit"].contains(&prefix),
            "{variant}: unknown prefix in {id}"
        );
        assert!(
            local.len() >= 2
                && local.as_bytes()[0].is_ascii_uppercase()
                && local[1..].bytes().all(|b| b.is_ascii_digit()),
            "{variant}: {id} is not a letter and a number"
        );
    }
}

/// Every invariant's (displayed id, name), as the enums define them.
fn names() -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    out.extend(
        alloc_scope::ScopeInvariant::ALL
            .iter()
            .map(|v| (v.to_string(), v.name())),
    );
    out.extend(
        alloc_core::CoreInvariant::ALL
            .iter()
            .map(|v| (v.to_string(), v.name())),
    );
    out.extend(
        alloc_core::LockRule::ALL
            .iter()
            .map(|v| (v.to_string(), v.name())),
    );
    out.extend(
        alloc_host::HostInvariant::ALL
            .iter()
            .map(|v| (v.to_string(), v.name())),
    );
    out.extend(
        alloc_cuda::CudaInvariant::ALL
            .iter()
            .map(|v| (v.to_string(), v.name())),
    );
    out.extend(
        alloc_mps::MpsInvariant::ALL
            .iter()
            .map(|v| (v.to_string(), v.name())),
    );
    out.extend(
        alloc_toolkit::ToolkitInvariant::ALL
            .iter()
            .map(|v| (v.to_string(), v.name())),
    );
    out
}

/// ARCHITECTURE.md's invariants table lists exactly the invariants the code
/// defines, each with its name: the map cannot fall behind the code.
#[test]
fn architecture_md_lists_exactly_the_invariants_of_the_code() {
    let text = include_str!("../../ARCHITECTURE.md");
    let mut listed: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        // Rows of the invariants table: | `prefix:ID` | name | ... |
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') || !cells[1].contains(':') {
            continue;
        }
        let id = cells[1].trim_matches('`').to_string();
        let prefix = id.split(':').next().unwrap_or_default();
        if ["scope", "core", "host", "cuda", "mps", "toolkit"].contains(&prefix) {
            assert!(
                listed.insert(id.clone(), cells[2].to_string()).is_none(),
                "ARCHITECTURE.md lists {id} twice"
            );
        }
    }
    let defined = names();
    for (id, name) in &defined {
        match listed.get(id) {
            None => panic!("ARCHITECTURE.md does not list {id} ({name})"),
            Some(n) => assert_eq!(n, name, "ARCHITECTURE.md names {id} differently"),
        }
    }
    for id in listed.keys() {
        assert!(
            defined.iter().any(|(d, _)| d == id),
            "ARCHITECTURE.md lists {id}, which no invariant enum defines"
        );
    }
}
