//! Ragged groups given by offsets, a divide-and-conquer driver that scores them in parallel, and the
//! permutations that bring rows into group order and back.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;

use crate::real::Real;
use crate::scoring::{score_into, ScoreOutputs, Scores, Wanted};

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
pub fn stable_group_order(ids: &[i64], num_groups: usize) -> Result<Vec<i64>, String> {
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

/// Checks that `order` is a permutation of `0..order.len()`: every value in range, none twice.
pub fn check_permutation(order: &[i64]) -> Result<(), String> {
    let n = order.len();
    let seen: Vec<AtomicU64> = (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
    order.par_iter().enumerate().try_for_each(|(i, &row)| {
        if row < 0 || row as u64 >= n as u64 {
            return Err(format!(
                "order[{i}] is {row}; a row order must hold each of 0..{n} once"
            ));
        }
        let bit = 1u64 << (row % 64);
        if seen[row as usize / 64].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            return Err(format!(
                "order[{i}] is {row}, which appears twice; a row order must hold each of 0..{n} once"
            ));
        }
        Ok(())
    })
}

/// The `wanted` scores of rows that `order` brings into the contiguous groups of `offsets`: item
/// outputs in row order, group outputs in group order. `order` must hold `logprobs.len()` rows and
/// `offsets` be validated; an `order` that is not a permutation is an error.
///
/// Each leaf range of groups (a few thousand items) claims its rows in a shared bit set (which
/// checks the permutation on the way), is gathered into buffers of its own, scored there, and its
/// item outputs written straight to their rows: no reordered copy of the inputs or outputs is ever
/// made, and every random access happens once, in parallel.
pub fn score_in_order<T: Real>(
    logprobs: &[T],
    rewards: &[T],
    order: &[i64],
    offsets: &[i64],
    wanted: Wanted,
) -> Result<Scores, String> {
    let (n, g) = (logprobs.len(), offsets.len().saturating_sub(1));
    let mut s = Scores::zeroed(n, g, wanted);
    if g == 0 {
        return Ok(s);
    }
    let claimed: Vec<AtomicU64> = (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
    let is_permutation = AtomicBool::new(true);
    let item_writers = [
        wanted.z_scores.then(|| DisjointWriter::new(&mut s.z_logprob)),
        wanted.z_scores.then(|| DisjointWriter::new(&mut s.z_reward)),
        wanted.pacs.then(|| DisjointWriter::new(&mut s.pacs)),
    ];
    let group_outputs = ScoreOutputs {
        group_conflict: wanted.conflict.then_some(s.group_conflict.as_mut_slice()),
        kendall_tau: wanted.kendall.then_some(s.kendall_tau.as_mut_slice()),
        degenerate: wanted.conflict.then_some(s.degenerate.as_mut_slice()),
        ..Default::default()
    };
    for_each_group_range(offsets, group_outputs, &|range: &[i64], out: ScoreOutputs| {
        let rows = &order[range[0] as usize..range[range.len() - 1] as usize];
        let claim = |row: i64| {
            let bit = 1u64 << (row as u64 % 64);
            (row as u64) < n as u64 && claimed[row as usize / 64].fetch_or(bit, Ordering::Relaxed) & bit == 0
        };
        // Claim every row first: the atomic updates would stall the gather's loads if interleaved.
        if !rows.iter().all(|&row| claim(row)) {
            is_permutation.store(false, Ordering::Relaxed);
            return;
        }
        let (l, r): (Vec<T>, Vec<T>) = rows
            .iter()
            .map(|&row| (logprobs[row as usize], rewards[row as usize]))
            .unzip();
        let local_offsets: Vec<i64> = range.iter().map(|&o| o - range[0]).collect();
        let mut items: Vec<Vec<f64>> = item_writers
            .iter()
            .map(|w| if w.is_some() { vec![0.0; rows.len()] } else { Vec::new() })
            .collect();
        {
            let [zl, zr, pacs] = items.as_mut_slice() else {
                unreachable!()
            };
            let local = ScoreOutputs {
                z_logprob: item_writers[0].is_some().then_some(zl.as_mut_slice()),
                z_reward: item_writers[1].is_some().then_some(zr.as_mut_slice()),
                pacs: item_writers[2].is_some().then_some(pacs.as_mut_slice()),
                ..out
            };
            // One leaf range: score_into runs it on this thread.
            score_into(&l, &r, &local_offsets, local);
        }
        for (writer, values) in item_writers.iter().zip(&items) {
            if let Some(writer) = writer {
                for (&row, &value) in rows.iter().zip(values) {
                    // SAFETY: this leaf claimed each of its rows, so no other iteration writes it.
                    unsafe { writer.write(row as usize, value) };
                }
            }
        }
    });
    if !is_permutation.into_inner() {
        // Name the first offending entry (a second pass, on bad input only).
        check_permutation(order)?;
    }
    Ok(s)
}

/// A slice that many threads write at once, at indices that never repeat: the scattered writes of a
/// permutation, which no safe split of the slice expresses.
pub struct DisjointWriter<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the writer only moves `T` values into the slice it exclusively borrows; `write`'s contract
// keeps two threads off one index.
unsafe impl<T: Send> Send for DisjointWriter<'_, T> {}
unsafe impl<T: Send> Sync for DisjointWriter<'_, T> {}

impl<'a, T: Copy> DisjointWriter<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        DisjointWriter {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: PhantomData,
        }
    }

    /// Writes `value` at index `i` (bounds-checked).
    ///
    /// # Safety
    /// While this writer lives, no index may be written twice (by any threads).
    #[inline(always)]
    pub unsafe fn write(&self, i: usize, value: T) {
        assert!(i < self.len, "index {i} out of bounds for a slice of {}", self.len);
        // SAFETY: in bounds, and by the contract no other thread touches index `i`.
        unsafe { self.ptr.add(i).write(value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::score;

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

    #[test]
    fn permutations_are_checked_and_inverted() {
        let order = [2i64, 0, 3, 1];
        assert!(check_permutation(&order).is_ok());
        assert!(check_permutation(&[]).is_ok());
        assert!(check_permutation(&[0, 4, 1, 2]).unwrap_err().contains("order[1] is 4"));
        assert!(check_permutation(&[0, -1]).unwrap_err().contains("order[1] is -1"));
        assert!(check_permutation(&[1, 0, 1])
            .unwrap_err()
            .contains("order[2] is 1, which appears twice"));
        let big: Vec<i64> = (0..100_000).map(|i| (i * 7919) % 100_000).collect();
        assert!(check_permutation(&big).is_ok());
    }

    #[test]
    fn scores_in_order_match_scores_of_the_reordered_rows() {
        // Ragged groups (0 to 12 items, some far above a leaf) over a scrambled row order.
        let mut offsets = vec![0i64];
        for g in 0..20_000i64 {
            let size = if g % 5000 == 7 { 40_000 } else { (g * 7919) % 13 };
            offsets.push(offsets.last().unwrap() + size);
        }
        let n = *offsets.last().unwrap() as usize;
        let order: Vec<i64> = (0..n as i64).map(|i| (i * 7919 + 3) % n as i64).collect();
        assert!(check_permutation(&order).is_ok());
        let l: Vec<f32> = (0..n).map(|i| ((i * 31) % 97) as f32).collect();
        let r: Vec<f32> = (0..n).map(|i| ((i * 53) % 89) as f32).collect();
        let (gl, gr): (Vec<f32>, Vec<f32>) = order.iter().map(|&row| (l[row as usize], r[row as usize])).unzip();
        let grouped = score(&gl, &gr, &offsets, Wanted::ALL);
        let in_order = score_in_order(&l, &r, &order, &offsets, Wanted::ALL).unwrap();
        let mut expected = vec![0.0; n];
        for (column, got) in [
            (&grouped.z_logprob, &in_order.z_logprob),
            (&grouped.z_reward, &in_order.z_reward),
            (&grouped.pacs, &in_order.pacs),
        ] {
            for (j, &row) in order.iter().enumerate() {
                expected[row as usize] = column[j];
            }
            assert_eq!(&expected, got);
        }
        assert_eq!(grouped.group_conflict, in_order.group_conflict);
        assert_eq!(grouped.degenerate, in_order.degenerate);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&grouped.kendall_tau), bits(&in_order.kendall_tau));
        let pacs_only = score_in_order(&l, &r, &order, &offsets, Wanted::PACS).unwrap();
        assert_eq!(pacs_only.pacs, in_order.pacs);
        assert!(pacs_only.z_logprob.is_empty() && pacs_only.kendall_tau.is_empty());
        let mut twice = order.clone();
        twice[n - 1] = twice[0];
        assert!(score_in_order(&l, &r, &twice, &offsets, Wanted::ALL)
            .err()
            .is_some_and(|e| e.contains(&format!("order[{}] is {}, which appears twice", n - 1, order[0]))));
        let mut outside = order.clone();
        outside[5] = n as i64;
        assert!(score_in_order(&l, &r, &outside, &offsets, Wanted::ALL)
            .err()
            .is_some_and(|e| e.contains("order[5] is")));
        let empty = score_in_order::<f64>(&[], &[], &[], &[0], Wanted::ALL).unwrap();
        assert!(empty.pacs.is_empty() && empty.group_conflict.is_empty());
    }
}
