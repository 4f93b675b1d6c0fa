//! Ragged groups given by offsets, a divide-and-conquer driver that scores them in parallel, and the
//! permutations that bring rows into group order and back.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

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

/// `(x[order[j]], y[order[j]])` for every `j`: two columns put in group order in one pass.
/// `order` must be a checked permutation.
pub fn gather_pair<T: Copy + Send + Sync>(x: &[T], y: &[T], order: &[i64]) -> (Vec<T>, Vec<T>) {
    order.par_iter().map(|&row| (x[row as usize], y[row as usize])).unzip()
}

/// The inverse of [`gather_pair`] for any number of columns, in one pass: each non-empty column
/// `c` is replaced by `out` with `out[order[j]] = c[j]`, results put back in row order. `order`
/// must be a checked permutation of `0..c.len()`.
pub fn scatter_columns(columns: &mut [&mut Vec<f64>], order: &[i64]) {
    let wanted: Vec<usize> = (0..columns.len()).filter(|&k| !columns[k].is_empty()).collect();
    let mut scattered: Vec<Vec<f64>> = wanted.iter().map(|&k| vec![0.0; columns[k].len()]).collect();
    {
        let grouped: Vec<&[f64]> = wanted.iter().map(|&k| columns[k].as_slice()).collect();
        let writers: Vec<DisjointWriter<'_, f64>> = scattered.iter_mut().map(|c| DisjointWriter::new(c)).collect();
        order.par_iter().enumerate().for_each(|(j, &row)| {
            for (writer, values) in writers.iter().zip(&grouped) {
                // SAFETY: `order` is a permutation, so every row is written by exactly one iteration.
                unsafe { writer.write(row as usize, values[j]) };
            }
        });
    }
    for (&k, values) in wanted.iter().zip(scattered) {
        *columns[k] = values;
    }
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
        let (x, y) = ([10.0, 11.0, 12.0, 13.0], [0.0, 1.0, 2.0, 3.0]);
        let (mut gx, mut gy) = gather_pair(&x, &y, &order);
        assert_eq!((&gx, &gy), (&vec![12.0, 10.0, 13.0, 11.0], &vec![2.0, 0.0, 3.0, 1.0]));
        let mut unwanted = Vec::new();
        scatter_columns(&mut [&mut gx, &mut unwanted, &mut gy], &order);
        assert_eq!((gx, gy), (x.to_vec(), y.to_vec()));
        assert!(unwanted.is_empty());
        let big: Vec<i64> = (0..100_000).map(|i| (i * 7919) % 100_000).collect();
        assert!(check_permutation(&big).is_ok());
        let values: Vec<f64> = (0..100_000).map(|i| i as f64 * 0.5).collect();
        let (mut grouped, _) = gather_pair(&values, &values, &big);
        scatter_columns(&mut [&mut grouped], &big);
        assert_eq!(grouped, values);
    }
}
