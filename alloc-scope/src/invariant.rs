//! The invariants of the scope registry, one variant each: the variant's doc
//! comment is the definition, and every comment that relies on one links to it
//! or cites its displayed id (`scope:C1`). [`crate::validate()`] checks the
//! counter invariants C1–C4 and reports the variant that fails.

crate::invariants! {
    /// An invariant of the scope registry. Displayed as its id with the crate
    /// prefix, `scope:C1`, unique across the workspace.
    pub enum ScopeInvariant in "scope" {
        /// Live bytes balance, at quiescence (every thread has flushed), for every
        /// scope: `live_bytes = bytes_allocated - bytes_freed`. Defined on the
        /// counters in `counters.rs`; checked by [`crate::validate()`].
        C1 => "live bytes balance",
        /// Live allocations balance, at quiescence, for every scope:
        /// `live_allocations = allocations - frees`. Checked by
        /// [`crate::validate()`].
        C2 => "live allocations balance",
        /// Peak covers live, at quiescence, for every scope, host and device:
        /// `peak_bytes >= live_bytes`. Checked by [`crate::validate()`].
        C3 => "peak covers live",
        /// A parent includes its children, at quiescence: a parent's counters =
        /// its own charges + Σ its children's counters (every charge is applied to
        /// the whole chain), so a parent's peak is the peak of that sum, not the
        /// sum of the children's peaks. Checked by [`crate::validate()`] as
        /// Σ children's allocations, bytes allocated and live bytes ≤ the
        /// parent's.
        C4 => "a parent includes its children",
        /// The life word: `life = refs·2³² + owned_live`, where `refs` counts
        /// handles, guards and live children, and `owned_live` the live
        /// allocations (host and device) whose owner is this scope. The operation
        /// that brings `life` to 0 retires the slot, exactly once (a single atomic
        /// add observes the zero). Kept in `record.rs`.
        R1 => "life word",
        /// A record's parent outlives it: a child holds one ref on its parent
        /// until it retires.
        R2 => "parent outlives child",
        /// The all-zero bit pattern is a valid free record, so the registry lives
        /// in `.bss` and works before `main`.
        R3 => "zero is a free record",
        /// Recycling a closed slot: a slot is recycled while it still owns memory
        /// only from the CLOSED state (no handle, guard or child holds it): the
        /// recycler claims it (CLOSED → EVICTING), bumps its generation, waits
        /// until `pins` is 0, then moves its remaining live figures to `retired`.
        /// A charge to an owner pins the slot, then compares the generation: a
        /// stale id is charged to `retired`, so no charge ever lands on a recycled
        /// slot.
        R4 => "recycling a closed slot",
        /// Slot exclusivity: a slot is on the free list, or handed out by bumping,
        /// at most once at a time (tagged Treiber stack: each successful pop or
        /// push bumps the tag, so an ABA interleaving fails its
        /// compare-and-swap). Kept in `registry.rs`.
        G1 => "slot exclusivity",
        /// Fixed slots: slots 0 (the process), 1 (unattributed) and 2 (retired)
        /// are never retired, never on the free list; the parent of slots 1 and
        /// 2 is 0.
        G2 => "fixed slots",
        /// Bounded walks: every walk up a chain stops at the root; it is bounded
        /// by [`MAX_DEPTH`](crate::MAX_DEPTH) as well, so a corrupted link cannot
        /// loop.
        G3 => "bounded walks",
        /// Hard budgets: for a scope with a hard limit `L`, `live_bytes ≤ L` at
        /// every moment (a reservation is a compare-and-swap that checks the
        /// limit), so no other thread ever sees a refused request's bytes there,
        /// and `peak_bytes ≤ L`.
        G4 => "hard budgets",
    }
}

/// Declares a crate's invariants as an enum whose variants are the
/// invariants, each with its doc comment (the definition, with its equation)
/// and a short name; generates `ALL` (every variant, in order), `id()` (the
/// prefixed id, `"scope:C1"`, unique across the workspace), `name()` and a
/// `Display` that prints the id. Every crate of the workspace declares its
/// invariants with it, so ids are prefixed and match their variant by
/// construction (`tests/tests/invariant_ids.rs` checks that no two crates
/// share one).
///
/// ```
/// alloc_scope::invariants! {
///     /// An invariant of an example.
///     pub enum ExampleInvariant in "example" {
///         /// Live bytes balance: `live = allocated − freed`.
///         C1 => "live bytes balance",
///     }
/// }
/// assert_eq!(ExampleInvariant::C1.to_string(), "example:C1");
/// assert_eq!(ExampleInvariant::C1.name(), "live bytes balance");
/// assert_eq!(ExampleInvariant::ALL, &[ExampleInvariant::C1]);
/// ```
#[macro_export]
macro_rules! invariants {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident in $prefix:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $short:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in the order of their definitions.
            pub const ALL: &'static [Self] = &[ $( Self::$variant ),+ ];

            /// The id with the crate prefix, unique across the workspace.
            pub const fn id(self) -> &'static str {
                match self {
                    $( Self::$variant => concat!($prefix, ":", stringify!($variant)), )+
                }
            }

            /// The short name of what the variant states.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $short, )+
                }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.id())
            }
        }
    };
}
