//! Checks the counter invariants [`ScopeInvariant::C1`]–[`ScopeInvariant::C4`]
//! over the whole scope tree. Meaningful at quiescence: when no thread holds unapplied charges (every
//! thread has left its scopes, exited, or called `flush`).

use super::invariant::ScopeInvariant;
use super::report::scope_tree;

/// An invariant that does not hold, with the values involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{invariant} ({}) fails for `{scope}`: {detail}", invariant.name())]
pub struct ScopeInvariantViolation {
    /// The invariant that fails: [`ScopeInvariant::C1`]..[`ScopeInvariant::C4`].
    pub invariant: ScopeInvariant,
    /// The scope's name.
    pub scope: String,
    /// The equation and its values.
    pub detail: String,
}

/// Checks [`ScopeInvariant::C1`]–[`ScopeInvariant::C4`] for every scope in the registry.
pub fn validate() -> Result<(), ScopeInvariantViolation> {
    let tree = scope_tree();
    for node in &tree.scopes {
        let s = &node.stats;
        let fail = |invariant, detail: String| ScopeInvariantViolation {
            invariant,
            scope: s.name.clone(),
            detail,
        };
        let net = s.bytes_allocated.wrapping_sub(s.bytes_freed);
        if s.live_bytes != net {
            return Err(fail(
                ScopeInvariant::C1,
                format!(
                    "live_bytes {} != bytes_allocated {} - bytes_freed {}",
                    s.live_bytes, s.bytes_allocated, s.bytes_freed
                ),
            ));
        }
        if s.live_allocations != s.allocations.wrapping_sub(s.frees) {
            return Err(fail(
                ScopeInvariant::C2,
                format!(
                    "live_allocations {} != allocations {} - frees {}",
                    s.live_allocations, s.allocations, s.frees
                ),
            ));
        }
        if s.peak_bytes < s.live_bytes || s.device.peak_bytes < s.device.live_bytes {
            return Err(fail(
                ScopeInvariant::C3,
                format!(
                    "peak {} < live {} (device: peak {} < live {})",
                    s.peak_bytes, s.live_bytes, s.device.peak_bytes, s.device.live_bytes
                ),
            ));
        }
        let kids = tree
            .scopes
            .iter()
            .filter(|c| c.parent == Some(s.id))
            .map(|c| &c.stats);
        let (mut allocs, mut bytes, mut live) = (0u64, 0u64, 0u64);
        for c in kids {
            allocs += c.allocations;
            bytes += c.bytes_allocated;
            live += c.live_bytes;
        }
        if allocs > s.allocations || bytes > s.bytes_allocated || live > s.live_bytes {
            return Err(fail(
                ScopeInvariant::C4,
                format!(
                    "children's allocations {allocs}, bytes allocated {bytes}, live {live} exceed the parent's {}, {}, {}",
                    s.allocations, s.bytes_allocated, s.live_bytes
                ),
            ));
        }
    }
    Ok(())
}
