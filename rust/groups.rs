//! Ragged groups given by offsets, and a divide-and-conquer driver that scores them in parallel.

/// Groups below this many items in total are scored on one thread.
const LEAF_ITEMS: usize = 1 << 14;

/// Checks that `offsets` (length g + 1) start at 0, never decrease and end at `n`.
pub fn validate_offsets(offsets: &[i64], n: usize) -> Result<(), String> {
    match (offsets.first(), offsets.last()) {
        (Some(&0), Some(&last)) if last as u64 == n as u64 && last >= 0 => {}
        (None, _) => return Err("group offsets must hold at least one value".into()),
        (Some(&first), _) if first != 0 => return Err(format!("group offsets must start at 0, got {first}")),
        (_, Some(&last)) => return Err(format!("group sizes sum to {last} but there are {n} items")),
        _ => unreachable!(),
    }
    if let Some(at) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(format!(
            "group_sizes[{at}] is {}; group sizes must be >= 0",
            offsets[at + 1] - offsets[at]
        ));
    }
    Ok(())
}

/// Output buffers for a contiguous range of groups, split in two at a group boundary.
pub trait GroupOutputs: Send + Sized {
    /// Splits after `items` items and `groups` groups of this range.
    fn split_at(self, items: usize, groups: usize) -> (Self, Self);
}

/// Runs `leaf(offsets, outputs)` over disjoint ranges of groups in parallel.
///
/// `offsets` are absolute (they need not start at 0); the leaf sees the offsets of its own range and
/// outputs whose item and group indices start at `offsets[0]` and 0.
pub fn for_each_group_range<O, F>(offsets: &[i64], outputs: O, leaf: &F)
where
    O: GroupOutputs,
    F: Fn(&[i64], O) + Sync,
{
    let groups = offsets.len() - 1;
    let start = offsets[0] as usize;
    let items = offsets[groups] as usize - start;
    if groups <= 1 || items <= LEAF_ITEMS {
        leaf(offsets, outputs);
        return;
    }
    // Split at the group boundary closest to the middle item, so ragged ranges stay balanced.
    let middle_item = (start + items / 2) as i64;
    let mid = offsets.partition_point(|&o| o < middle_item).clamp(1, groups - 1);
    let (left, right) = outputs.split_at(offsets[mid] as usize - start, mid);
    rayon::join(
        || for_each_group_range(&offsets[..=mid], left, leaf),
        || for_each_group_range(&offsets[mid..], right, leaf),
    );
}

/// The stable order that makes equal group ids contiguous (a counting sort): rows of group 0 first,
/// each group's rows in their original order. Every id must lie in `[0, num_groups)`.
pub fn stable_group_order(ids: &[i32], num_groups: usize) -> Result<Vec<i64>, String> {
    let mut next = vec![0usize; num_groups + 1];
    for (row, &id) in ids.iter().enumerate() {
        if id < 0 || id as usize >= num_groups {
            return Err(format!("ids[{row}] is {id}; group ids must lie in [0, {num_groups})"));
        }
        next[id as usize + 1] += 1;
    }
    for g in 0..num_groups {
        next[g + 1] += next[g];
    }
    let mut order = vec![0i64; ids.len()];
    for (row, &id) in ids.iter().enumerate() {
        let slot = &mut next[id as usize];
        order[*slot] = row as i64;
        *slot += 1;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_order_is_a_stable_counting_sort() {
        let ids = [2, 0, 2, 1, 0, 2];
        assert_eq!(stable_group_order(&ids, 3).unwrap(), vec![1, 4, 3, 0, 2, 5]);
        assert_eq!(stable_group_order(&ids, 4).unwrap(), vec![1, 4, 3, 0, 2, 5]);
        assert!(stable_group_order(&[], 0).unwrap().is_empty());
        assert!(stable_group_order(&ids, 2).unwrap_err().contains("ids[0] is 2"));
        assert!(stable_group_order(&[0, -1], 2).unwrap_err().contains("ids[1] is -1"));
    }

    #[test]
    fn offsets_are_checked() {
        assert!(validate_offsets(&[0, 2, 2, 5], 5).is_ok());
        assert!(validate_offsets(&[0], 0).is_ok());
        assert!(validate_offsets(&[], 0).unwrap_err().contains("at least one"));
        assert!(validate_offsets(&[1, 5], 5).unwrap_err().contains("start at 0"));
        assert!(validate_offsets(&[0, 4], 5).unwrap_err().contains("sum to 4"));
        assert!(validate_offsets(&[0, 3, 2, 5], 5)
            .unwrap_err()
            .contains("group_sizes[1] is -1"));
    }
}
