//! Invariant ids are unique across the workspace: every crate's invariant enum
//! (and the engine's locking rules, which share the id space) is listed here,
//! and no two variants share a displayed id.

use std::collections::HashMap;

/// One invariant as its enum defines it.
struct Inv {
    /// The displayed id (`core:T1`).
    id: String,
    /// The variant as written (`alloc_core::CoreInvariant::T1`).
    variant: String,
    /// Its short name.
    name: &'static str,
}

/// Every variant of the listed enums, in order.
macro_rules! every {
    ($($krate:ident :: $ty:ident),+ $(,)?) => {
        [$(
            $krate::$ty::ALL
                .iter()
                .map(|v| Inv {
                    id: v.to_string(),
                    variant: format!("{}::{}::{v:?}", stringify!($krate), stringify!($ty)),
                    name: v.name(),
                })
                .collect::<Vec<_>>()
        ),+]
        .into_iter()
        .flatten()
        .collect::<Vec<Inv>>()
    };
}

/// Every invariant of every crate.
fn all() -> Vec<Inv> {
    every!(
        alloc_scope::ScopeInvariant,
        alloc_core::CoreInvariant,
        alloc_core::LockRule,
        alloc_host::HostInvariant,
        alloc_cuda::CudaInvariant,
        alloc_mps::MpsInvariant,
        alloc_toolkit::ToolkitInvariant,
    )
}

#[test]
fn no_two_invariants_share_a_displayed_id() {
    let mut seen: HashMap<String, String> = HashMap::new();
    for Inv { id, variant, .. } in all() {
        if let Some(first) = seen.insert(id.clone(), variant.clone()) {
            panic!("{id} names both {first} and {variant}");
        }
    }
}

#[test]
fn every_id_has_a_crate_prefix_and_a_short_number() {
    for Inv { id, variant, .. } in all() {
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
    let defined = all();
    for Inv { id, name, .. } in &defined {
        match listed.get(id) {
            None => panic!("ARCHITECTURE.md does not list {id} ({name})"),
            Some(n) => assert_eq!(n, name, "ARCHITECTURE.md names {id} differently"),
        }
    }
    for id in listed.keys() {
        assert!(
            defined.iter().any(|d| &d.id == id),
            "ARCHITECTURE.md lists {id}, which no invariant enum defines"
        );
    }
}
