//! [`plan_chunks`]: split `total_items` into chunks whose bytes fit a budget.

use std::ops::Range;

use serde::Serialize;

use crate::error::ToolkitError;

/// How to walk `total_items` in chunks that fit the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ChunkPlan {
    /// Items in all.
    pub total_items: u64,
    /// Items in every chunk but possibly the last.
    pub items_per_chunk: u64,
    /// Chunks in all.
    pub chunks: u64,
    /// Bytes a full chunk needs (`items_per_chunk × bytes_per_item`) ≤ budget.
    pub bytes_per_chunk: u64,
}

impl ChunkPlan {
    /// The item ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let step = self.items_per_chunk.max(1);
        (0..self.chunks).map(move |i| {
            let start = i * step;
            start..(start + step).min(self.total_items)
        })
    }
}

/// The fewest chunks of `total_items` items of `bytes_per_item` bytes such
/// that each chunk needs at most `budget` bytes; chunks are as even as that
/// allows (sizes differ by at most one chunk's remainder at the end).
pub fn plan_chunks(
    total_items: u64,
    bytes_per_item: u64,
    budget: u64,
) -> Result<ChunkPlan, ToolkitError> {
    if budget == 0 {
        return Err(ToolkitError::ZeroBudget {
            what: "plan_chunks budget",
        });
    }
    if bytes_per_item == 0 {
        return Err(ToolkitError::Zero {
            what: "plan_chunks bytes_per_item",
        });
    }
    if bytes_per_item > budget {
        return Err(ToolkitError::ItemTooLarge {
            bytes_per_item,
            budget,
        });
    }
    let fit = budget / bytes_per_item;
    let chunks = total_items.div_ceil(fit);
    // Spread the items evenly over that many chunks.
    let items_per_chunk = if chunks == 0 {
        0
    } else {
        total_items.div_ceil(chunks)
    };
    Ok(ChunkPlan {
        total_items,
        items_per_chunk,
        chunks,
        bytes_per_chunk: items_per_chunk * bytes_per_item,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn even_chunks_within_budget() {
        let p = plan_chunks(10, 100, 450).unwrap();
        assert_eq!(
            (p.chunks, p.items_per_chunk, p.bytes_per_chunk),
            (3, 4, 400)
        );
        let r: Vec<_> = p.ranges().collect();
        assert_eq!(r, vec![0..4, 4..8, 8..10]);
        assert_eq!(plan_chunks(0, 1, 1).unwrap().ranges().count(), 0);
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(
            plan_chunks(1, 1, 0)
                .unwrap_err()
                .to_string()
                .contains("budget is 0")
        );
        assert!(
            plan_chunks(1, 0, 1)
                .unwrap_err()
                .to_string()
                .contains("bytes_per_item")
        );
        let e = plan_chunks(1, 2048, 1024).unwrap_err().to_string();
        assert!(e.contains("2.00 KiB") && e.contains("1.00 KiB"), "{e}");
    }

    proptest! {
        #[test]
        fn chunks_cover_every_item_once_and_fit(total in 0u64..100_000, per in 1u64..10_000, budget in 1u64..1_000_000) {
            prop_assume!(per <= budget);
            let p = plan_chunks(total, per, budget).unwrap();
            prop_assert!(p.bytes_per_chunk <= budget);
            let mut next = 0;
            for r in p.ranges() {
                prop_assert_eq!(r.start, next);
                prop_assert!(r.end > r.start);
                next = r.end;
            }
            prop_assert_eq!(next, total);
            // Fewest chunks: one fewer could not hold the items.
            let fit = budget / per;
            prop_assert!(p.chunks == 0 || (p.chunks - 1) * fit < total);
        }
    }
}
