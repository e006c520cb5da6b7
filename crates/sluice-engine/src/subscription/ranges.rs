//! A set of `u64` offsets kept as a low watermark plus ranges above it.
//!
//! Invariants:
//! - every offset below `low` is a member, and `low` itself is not;
//! - `ranges` maps `start → end` of half-open ranges `[start, end)` with
//!   `low < start < end`, in order, and between two ranges there is at least one offset that
//!   is not a member (`end < next start`): adjacent ranges are merged, and a range reaching
//!   down to `low` is folded into it at once;
//! - `len` is the number of members above `low` (the sum of the ranges' lengths).
//!
//! So the set costs one entry per gap, whatever the number of members.

use std::collections::BTreeMap;

/// Offsets below a watermark plus disjoint ranges above it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Ranges {
    low: u64,
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl Ranges {
    /// The set of every offset below `low`.
    pub(crate) fn new(low: u64) -> Self {
        Self {
            low,
            ranges: BTreeMap::new(),
            len: 0,
        }
    }

    /// Builds a set from its parts, checking the invariants.
    pub(crate) fn from_parts(
        low: u64,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<Self, &'static str> {
        let mut set = Self::new(low);
        let mut previous_end = low;
        for (start, end) in ranges {
            if start <= previous_end || end <= start {
                return Err("ranges out of order, empty, adjacent or not above their watermark");
            }
            set.ranges.insert(start, end);
            set.len += end - start;
            previous_end = end;
        }
        Ok(set)
    }

    /// Every offset below it is a member; it is not.
    pub(crate) fn low(&self) -> u64 {
        self.low
    }

    /// Whether `offset` is a member.
    pub(crate) fn contains(&self, offset: u64) -> bool {
        self.run_end(offset).is_some()
    }

    /// If `offset` is a member, the first offset after it that is not.
    pub(crate) fn run_end(&self, offset: u64) -> Option<u64> {
        if offset < self.low {
            return Some(self.low);
        }
        match self.ranges.range(..=offset).next_back() {
            Some((_, &end)) if offset < end => Some(end),
            _ => None,
        }
    }

    /// Adds `[start, end)`.
    pub(crate) fn insert(&mut self, start: u64, end: u64) {
        let mut start = start.max(self.low);
        let mut end = end;
        if start >= end {
            return;
        }
        // A range that overlaps or touches the new one from below.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
                self.len -= e - s;
            }
        }
        // Ranges that start inside the new one or right after it.
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            end = end.max(e);
            self.ranges.remove(&s);
            self.len -= e - s;
        }
        if start == self.low {
            self.low = end;
        } else {
            self.ranges.insert(start, end);
            self.len += end - start;
        }
    }

    /// The ranges above `low`, in order.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&start, &end)| (start, end))
    }

    /// Number of ranges above `low` (the gaps, in memory).
    pub(crate) fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Number of members at or above `low`.
    pub(crate) fn len_above_low(&self) -> u64 {
        self.len
    }

    /// Number of members in `[from, to)`, for `from >= low`. Costs one step per range that
    /// ends after `from`.
    pub(crate) fn count_in(&self, from: u64, to: u64) -> u64 {
        let from = from.max(self.low);
        let mut count = 0;
        let first = self
            .ranges
            .range(..=from)
            .next_back()
            .map_or(from, |(&s, _)| s);
        for (&s, &e) in self.ranges.range(first..) {
            if s >= to {
                break;
            }
            let (s, e) = (s.max(from), e.min(to));
            if s < e {
                count += e - s;
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_range_reaching_the_watermark_is_folded_into_it() {
        let mut set = Ranges::new(0);
        set.insert(2, 3);
        set.insert(4, 6);
        assert_eq!(set.range_count(), 2, "two gaps, two ranges");
        set.insert(3, 4);
        assert_eq!(set.ranges().collect::<Vec<_>>(), vec![(2, 6)], "merged");
        set.insert(0, 2);
        assert_eq!(set.low(), 6, "the watermark swallows the range");
        assert_eq!(set.range_count(), 0, "no range left");
        assert_eq!(set.len_above_low(), 0, "nothing above the watermark");
    }

    proptest! {
        #[test]
        fn ranges_behave_like_a_set_of_offsets(
            inserts in proptest::collection::vec((0u64..64, 1u64..8), 0..40),
            probe in 0u64..80,
        ) {
            let mut set = Ranges::new(0);
            let mut model = BTreeSet::new();
            for (start, len) in inserts {
                set.insert(start, start + len);
                model.extend(start..start + len);
            }
            let low = (0..).find(|o| !model.contains(o)).unwrap();
            prop_assert_eq!(set.low(), low, "the watermark is the first missing offset");
            for offset in 0..80 {
                prop_assert_eq!(set.contains(offset), model.contains(&offset), "membership of {}", offset);
            }
            prop_assert_eq!(set.len_above_low(), model.range(low..).count() as u64, "len");
            let expected = model.range(probe.max(low)..probe.max(low) + 9).count() as u64;
            prop_assert_eq!(set.count_in(probe, probe.max(low) + 9), expected, "count_in");
            let rebuilt = Ranges::from_parts(set.low(), set.ranges()).unwrap();
            prop_assert_eq!(&rebuilt, &set, "from_parts accepts its own parts");
            let mut previous = low;
            for (start, end) in set.ranges() {
                prop_assert!(start > previous && end > start, "ordered, non-adjacent ranges");
                previous = end;
            }
        }
    }
}
