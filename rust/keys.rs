//! Grouping rows by prompt key: a 64-bit hash per row, checked by exact comparison.
//!
//! Keys stay where the caller keeps them (Arrow offsets and data buffers, a numpy array); the engine
//! holds only per-row integers, so grouping `n` rows needs about 24 bytes per row at its peak and
//! returns 8 (the row order):
//!
//! 1. hash every row in parallel (integers by a bijective mix of their value, bytes by [`hash_bytes`]);
//! 2. radix-partition the rows by the hash's top bits (`Partitioned`), stably, so each partition
//!    lists its rows in increasing order and every hash lives in exactly one partition;
//! 3. number each partition's distinct hashes with a small open-addressing table that fits in cache
//!    (`PartitionKeys`);
//! 4. renumber the keys of all partitions by first appearance (`Prompts`) and write the stable row
//!    order that makes every prompt's rows contiguous;
//! 5. check every row's key against its prompt's first key. Integer keys skip this (their hash is
//!    a bijection, so equal hashes mean equal keys). If two distinct keys shared a hash, steps 3-4
//!    run again with the table comparing keys wherever hashes are equal, which separates them exactly.
//!
//! [`crate::keyed`] runs the same steps with each row's values carried along, scoring as it groups.

use std::borrow::Borrow;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::buffers::{zeroed, Zeroable};
use crate::groups::DisjointWriter;

/// Rows per parallel task when hashing and partitioning.
pub(crate) const ROW_CHUNK: usize = 1 << 16;
/// Rows per partition aimed at: one partition's table and first rows stay in a core's cache.
const PARTITION_ROWS: usize = 1 << 14;
/// At most this many partitions (the partitioning writes to one stream per partition).
const MAX_PARTITION_BITS: u32 = 10;

/// The prompt keys of `n` rows, borrowed from the caller.
pub enum Keys<'a> {
    I64(&'a [i64]),
    I32(&'a [i32]),
    U64(&'a [u64]),
    U32(&'a [u32]),
    /// Variable-length byte strings (Arrow string/binary columns), one entry per chunk.
    Bytes(Vec<ByteChunk<'a>>),
    /// Fixed-width byte strings of `width` bytes each; when `strip_unit` > 0, trailing all-zero units
    /// of that many bytes are not part of the key (numpy `S` pads with 1-byte and `U` with 4-byte zeros).
    Fixed {
        data: &'a [u8],
        width: usize,
        strip_unit: usize,
    },
}

/// One Arrow chunk of byte strings: row `i` is `data[offsets[i]..offsets[i + 1]]`.
pub struct ByteChunk<'a> {
    pub offsets: Offsets<'a>,
    pub data: &'a [u8],
}

/// Arrow offsets: 32-bit (string, binary) or 64-bit (large_string, large_binary).
pub enum Offsets<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
}

impl Offsets<'_> {
    fn len(&self) -> usize {
        match self {
            Offsets::I32(o) => o.len(),
            Offsets::I64(o) => o.len(),
        }
    }

    #[inline(always)]
    fn get(&self, i: usize) -> i64 {
        match self {
            Offsets::I32(o) => i64::from(o[i]),
            Offsets::I64(o) => o[i],
        }
    }
}

impl ByteChunk<'_> {
    fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Checks that the offsets start at or after 0, never decrease and stay inside `data`.
    fn validate(&self, chunk: usize) -> Result<(), String> {
        if self.offsets.len() == 0 {
            return Err(format!("key chunk {chunk} has no offsets (want rows + 1)"));
        }
        let first = self.offsets.get(0);
        let last = self.offsets.get(self.offsets.len() - 1);
        if first < 0 || last < first || last as u64 > self.data.len() as u64 {
            return Err(format!(
                "key chunk {chunk}: offsets run from {first} to {last} outside its {} data bytes",
                self.data.len()
            ));
        }
        let decreasing = match &self.offsets {
            Offsets::I32(o) => o.windows(2).any(|w| w[1] < w[0]),
            Offsets::I64(o) => o.windows(2).any(|w| w[1] < w[0]),
        };
        if decreasing {
            return Err(format!("key chunk {chunk}: offsets decrease"));
        }
        Ok(())
    }

    /// The key of local row `i` (offsets validated).
    #[inline(always)]
    fn key(&self, i: usize) -> &[u8] {
        &self.data[self.offsets.get(i) as usize..self.offsets.get(i + 1) as usize]
    }
}

/// A bijective mix of a 64-bit integer (the SplitMix64 finalizer): distinct keys, distinct hashes.
#[inline(always)]
pub fn hash_u64(value: u64) -> u64 {
    let mut x = value;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const K0: u64 = 0x9E37_79B9_7F4A_7C15;
const K1: u64 = 0xA076_1D64_78BD_642F;
const K2: u64 = 0xE703_7ED1_A0B4_28DB;

/// Multiplies to 128 bits and folds the halves: one well-mixed step.
#[inline(always)]
fn fold_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Reads up to 8 bytes little-endian, zero-padded.
#[inline(always)]
fn read_tail(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// A fast 64-bit hash of a byte string (16 bytes per multiply, the length mixed in).
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    hash_bytes_with(bytes, [K0, K1, K2])
}

/// A second 64-bit hash of a byte string, seeded apart from [`hash_bytes`]: two distinct keys that
/// share one hash are told apart by this one unless they also collide here.
#[inline]
pub fn check_hash_bytes(bytes: &[u8]) -> u64 {
    hash_bytes_with(bytes, [K2 ^ K1, K0.rotate_left(17), K1.rotate_left(29)])
}

#[inline(always)]
fn hash_bytes_with(bytes: &[u8], [k0, k1, k2]: [u64; 3]) -> u64 {
    let mut h = k0 ^ (bytes.len() as u64).wrapping_mul(k1);
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        let a = u64::from_le_bytes(block[..8].try_into().unwrap_or_default());
        let b = u64::from_le_bytes(block[8..].try_into().unwrap_or_default());
        h = fold_multiply(a ^ k1 ^ h, b ^ k2);
    }
    let rest = blocks.remainder();
    let (a, b) = if rest.len() > 8 {
        (read_tail(&rest[..8]), read_tail(&rest[8..]))
    } else {
        (read_tail(rest), 0)
    };
    hash_u64(fold_multiply(a ^ k1 ^ h, b ^ k2 ^ k0))
}

/// A key column as the grouping sees it: hashes of row ranges and the key of a row, to compare.
pub(crate) trait KeyColumn: Sync {
    /// A row's key, borrowed: equal keys compare equal.
    type Key<'k>: PartialEq + Send + Sync
    where
        Self: 'k;
    fn len(&self) -> usize;
    /// Writes the hashes of rows `start..start + out.len()`.
    fn hash_rows(&self, start: usize, out: &mut [u64]);
    /// A second hash of a row's key, independent of [`KeyColumn::hash_rows`]'.
    fn check_hash(&self, row: usize) -> u64;
    fn key(&self, row: usize) -> Self::Key<'_>;
    /// Starts loading what comparing `key` reads, when that is more than the key itself.
    #[inline(always)]
    fn prefetch_key(_key: &Self::Key<'_>) {}
    /// Starts loading what [`KeyColumn::key`] reads first for `row`: the key itself, or where it is.
    fn prefetch_row(&self, row: usize);
    /// Whether equal (unmasked) hashes always mean equal keys.
    const HASH_IS_INJECTIVE: bool;
}

/// An integer type whose value, widened to 64 bits, is the key.
pub trait IntKey: Copy + PartialEq + Send + Sync {
    fn bits(self) -> u64;
}

macro_rules! int_key {
    ($($t:ty => $wide:ty),*) => {$(
        impl IntKey for $t {
            #[inline(always)]
            fn bits(self) -> u64 {
                <$wide>::from(self) as u64
            }
        }
    )*};
}
int_key!(i64 => i64, i32 => i64, u64 => u64, u32 => u64);

struct IntColumn<'a, T>(&'a [T]);

impl<T: IntKey> KeyColumn for IntColumn<'_, T> {
    type Key<'k>
        = u64
    where
        Self: 'k;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn hash_rows(&self, start: usize, out: &mut [u64]) {
        for (h, &value) in out.iter_mut().zip(&self.0[start..]) {
            *h = hash_u64(value.bits());
        }
    }

    fn check_hash(&self, row: usize) -> u64 {
        self.0[row].bits()
    }

    fn key(&self, row: usize) -> u64 {
        self.0[row].bits()
    }

    #[inline(always)]
    fn prefetch_row(&self, row: usize) {
        prefetch(self.0.as_ptr().wrapping_add(row));
    }

    const HASH_IS_INJECTIVE: bool = true;
}

/// Chunks of byte strings, addressed by global row.
struct BytesColumn<'a, 'k> {
    chunks: &'k [ByteChunk<'a>],
    /// `starts[c]` is the first global row of chunk `c`; one more entry holds the row count.
    starts: Vec<usize>,
}

impl BytesColumn<'_, '_> {
    /// The chunk holding global `row`, and the row's place in it.
    #[inline]
    fn locate(&self, row: usize) -> (&ByteChunk<'_>, usize) {
        let chunk = if self.chunks.len() == 1 {
            0
        } else {
            self.starts.partition_point(|&s| s <= row) - 1
        };
        (&self.chunks[chunk], row - self.starts[chunk])
    }

    #[inline]
    fn key_bytes(&self, row: usize) -> &[u8] {
        let (chunk, local) = self.locate(row);
        chunk.key(local)
    }
}

impl KeyColumn for BytesColumn<'_, '_> {
    type Key<'k>
        = &'k [u8]
    where
        Self: 'k;

    fn len(&self) -> usize {
        self.starts[self.chunks.len()]
    }

    fn hash_rows(&self, start: usize, out: &mut [u64]) {
        let mut chunk = self.starts.partition_point(|&s| s <= start) - 1;
        let mut local = start - self.starts[chunk];
        for h in out.iter_mut() {
            while local >= self.chunks[chunk].rows() {
                chunk += 1;
                local = 0;
            }
            *h = hash_bytes(self.chunks[chunk].key(local));
            local += 1;
        }
    }

    fn check_hash(&self, row: usize) -> u64 {
        check_hash_bytes(self.key_bytes(row))
    }

    fn key(&self, row: usize) -> &[u8] {
        self.key_bytes(row)
    }

    #[inline(always)]
    fn prefetch_key(key: &&[u8]) {
        prefetch(key.as_ptr());
    }

    #[inline(always)]
    fn prefetch_row(&self, row: usize) {
        let (chunk, local) = self.locate(row);
        match chunk.offsets {
            Offsets::I32(o) => prefetch(o.as_ptr().wrapping_add(local)),
            Offsets::I64(o) => prefetch(o.as_ptr().wrapping_add(local)),
        }
    }

    const HASH_IS_INJECTIVE: bool = false;
}

/// Fixed-width byte strings, trailing zero units stripped.
struct FixedColumn<'a> {
    data: &'a [u8],
    width: usize,
    strip_unit: usize,
}

impl FixedColumn<'_> {
    #[inline]
    fn key_bytes(&self, row: usize) -> &[u8] {
        let mut key = &self.data[row * self.width..(row + 1) * self.width];
        if self.strip_unit > 0 {
            while key.len() >= self.strip_unit && key[key.len() - self.strip_unit..].iter().all(|&b| b == 0) {
                key = &key[..key.len() - self.strip_unit];
            }
        }
        key
    }
}

impl KeyColumn for FixedColumn<'_> {
    type Key<'k>
        = &'k [u8]
    where
        Self: 'k;

    fn len(&self) -> usize {
        self.data.len().checked_div(self.width).unwrap_or(0)
    }

    fn hash_rows(&self, start: usize, out: &mut [u64]) {
        for (i, h) in out.iter_mut().enumerate() {
            *h = hash_bytes(self.key_bytes(start + i));
        }
    }

    fn check_hash(&self, row: usize) -> u64 {
        check_hash_bytes(self.key_bytes(row))
    }

    fn key(&self, row: usize) -> &[u8] {
        self.key_bytes(row)
    }

    #[inline(always)]
    fn prefetch_key(key: &&[u8]) {
        prefetch(key.as_ptr());
    }

    #[inline(always)]
    fn prefetch_row(&self, row: usize) {
        prefetch(self.data.as_ptr().wrapping_add(row * self.width));
    }

    const HASH_IS_INJECTIVE: bool = false;
}

/// How `n` rows fall into `g` prompts numbered by first appearance.
#[derive(Debug, PartialEq, Eq)]
pub struct Grouping {
    /// The stable row order that makes prompts contiguous: prompt 0's rows first, each prompt's rows
    /// in their original order, `[n]`.
    pub order: Vec<i64>,
    /// Rows per prompt, `[g]`.
    pub sizes: Vec<i64>,
    /// The row where each prompt first appears, increasing, `[g]`.
    pub first_rows: Vec<i64>,
    /// Whether `order` is the identity (every prompt's rows already adjacent, in first-appearance order).
    pub contiguous: bool,
}
/// Work that runs on any key column: [`run_on_keys`] validates a [`Keys`] and hands its column over.
pub(crate) trait ColumnTask {
    type Output;
    fn run<K: KeyColumn>(self, keys: &K) -> Result<Self::Output, String>;
}

/// Validates `keys` and runs `task` on its column.
pub(crate) fn run_on_keys<Task: ColumnTask>(keys: &Keys<'_>, task: Task) -> Result<Task::Output, String> {
    match keys {
        Keys::I64(k) => task.run(&IntColumn(k)),
        Keys::I32(k) => task.run(&IntColumn(k)),
        Keys::U64(k) => task.run(&IntColumn(k)),
        Keys::U32(k) => task.run(&IntColumn(k)),
        Keys::Bytes(chunks) => {
            let mut starts = Vec::with_capacity(chunks.len() + 1);
            starts.push(0usize);
            for (c, chunk) in chunks.iter().enumerate() {
                chunk.validate(c)?;
                starts.push(starts[c] + chunk.rows());
            }
            if chunks.is_empty() {
                return task.run(&IntColumn::<i64>(&[]));
            }
            task.run(&BytesColumn { chunks, starts })
        }
        &Keys::Fixed {
            data,
            width,
            strip_unit,
        } => {
            if width == 0 || data.len() % width != 0 {
                return Err(format!(
                    "fixed-width keys: {} bytes are not rows of {width}",
                    data.len()
                ));
            }
            if strip_unit > 0 && width % strip_unit != 0 {
                return Err(format!(
                    "fixed-width keys: width {width} is not a multiple of {strip_unit}"
                ));
            }
            task.run(&FixedColumn {
                data,
                width,
                strip_unit,
            })
        }
    }
}

/// Groups the rows of `keys`. `hash_mask` is ANDed into every hash: `u64::MAX` in use; tests pass a
/// narrow mask to force collisions between distinct keys through the exact comparison.
pub fn group_keys(keys: &Keys<'_>, hash_mask: u64) -> Result<Grouping, String> {
    run_on_keys(keys, GroupTask { hash_mask })
}

struct GroupTask {
    hash_mask: u64,
}

impl ColumnTask for GroupTask {
    type Output = Grouping;

    fn run<K: KeyColumn>(self, keys: &K) -> Result<Grouping, String> {
        let hashes = hash_rows(keys, self.hash_mask)?;
        let partitioned = Partitioned::new(&hashes, |row, hash| KeyEntry { hash, row });
        drop(hashes);
        // As in keyed scoring: number by hash, check every key against its prompt's first key (here
        // in prompt order, where each first key is read once), and only on a collision number again
        // comparing keys.
        let by_hash = group_partitioned(keys, &partitioned, false);
        let injective = K::HASH_IS_INJECTIVE && self.hash_mask == u64::MAX;
        if injective || grouped_rows_match_first_keys(keys, &by_hash.order, &by_hash.sizes) {
            return Ok(by_hash);
        }
        drop(by_hash);
        Ok(group_partitioned(keys, &partitioned, true))
    }
}

/// Groups the partitioned rows, numbering each partition's keys by hash (and by key too with
/// `compare_keys`).
fn group_partitioned<K: KeyColumn>(keys: &K, partitioned: &Partitioned<KeyEntry>, compare_keys: bool) -> Grouping {
    let numbered: Vec<PartitionKeys> = partitioned
        .partitions()
        .into_par_iter()
        .map(|entries| PartitionKeys::number_by(keys, compare_keys, entries))
        .collect();
    let prompts = Prompts::rank(&numbered, partitioned.entries.len());
    let starts = prompts.starts();
    let mut order = zeroed(partitioned.entries.len());
    {
        let order_writer = DisjointWriter::new(&mut order);
        partitioned
            .partitions()
            .into_par_iter()
            .zip(&numbered)
            .zip(&prompts.ids)
            .for_each(|((entries, part), ids)| {
                let mut next: Vec<i64> = ids.iter().map(|&id| starts[id as usize]).collect();
                for (entry, &key) in entries.iter().zip(&part.local) {
                    let key = key as usize;
                    // SAFETY: a key lives in one partition, and its `sizes[id]` slots from
                    // `starts[id]` are handed out one row at a time.
                    unsafe { order_writer.write(next[key] as usize, i64::from(entry.row)) };
                    next[key] += 1;
                }
            });
    }
    Grouping {
        order,
        contiguous: prompts.contiguous(&starts),
        sizes: prompts.sizes,
        first_rows: prompts.first_rows,
    }
}

/// Whether every row's key equals the key of its prompt's first row, rows grouped by prompt
/// (`order`, prompts of `sizes` rows in turn). The rows are scattered: each is prefetched in two
/// steps along `order` (where its key is, then the key's bytes), so that many cache misses are in
/// flight at once instead of one or two per row.
fn grouped_rows_match_first_keys<K: KeyColumn>(keys: &K, order: &[i64], sizes: &[i64]) -> bool {
    const AHEAD: usize = 16;
    const PROMPTS_PER_BLOCK: usize = 1 << 12;
    // Blocks of whole prompts: (first prompt, first position in `order`).
    let mut blocks = Vec::with_capacity(sizes.len() / PROMPTS_PER_BLOCK + 1);
    let mut position = 0usize;
    for (prompt, &size) in sizes.iter().enumerate() {
        if prompt % PROMPTS_PER_BLOCK == 0 {
            blocks.push((prompt, position));
        }
        position += size as usize;
    }
    blocks.par_iter().all(|&(first_prompt, start)| {
        let block_sizes = &sizes[first_prompt..sizes.len().min(first_prompt + PROMPTS_PER_BLOCK)];
        let rows = &order[start..start + block_sizes.iter().sum::<i64>() as usize];
        let row_at = |j: usize| {
            if let Some(&later) = rows.get(j + 2 * AHEAD) {
                keys.prefetch_row(later as usize);
            }
            if let Some(&sooner) = rows.get(j + AHEAD) {
                K::prefetch_key(&keys.key(sooner as usize));
            }
            keys.key(rows[j] as usize)
        };
        let mut j = 0;
        block_sizes.iter().all(|&size| {
            let end = j + size as usize;
            let first = row_at(j);
            j += 1;
            while j < end {
                if row_at(j) != first {
                    return false;
                }
                j += 1;
            }
            true
        })
    })
}

/// The 64-bit hash of every row, `hash_mask` applied; refuses more rows than a `u32` numbers.
pub(crate) fn hash_rows<K: KeyColumn>(keys: &K, hash_mask: u64) -> Result<Vec<u64>, String> {
    let n = keys.len();
    if n > u32::MAX as usize {
        return Err(format!("{n} rows are more than {} that one grouping takes", u32::MAX));
    }
    let mut hashes = zeroed(n);
    hashes.par_chunks_mut(ROW_CHUNK).enumerate().for_each(|(c, out)| {
        keys.hash_rows(c * ROW_CHUNK, out);
        if hash_mask != u64::MAX {
            out.iter_mut().for_each(|h| *h &= hash_mask);
        }
    });
    Ok(hashes)
}

/// Two independent 64-bit hashes of every row's key: the first (`hash_mask` applied) to group by,
/// the second to detect two distinct keys that share the first, without keeping the keys. Integer
/// keys hash injectively, and their second hash is the value itself.
pub fn hash_keys(keys: &Keys<'_>, hash_mask: u64) -> Result<(Vec<u64>, Vec<u64>), String> {
    run_on_keys(keys, HashTask { hash_mask })
}

struct HashTask {
    hash_mask: u64,
}

impl ColumnTask for HashTask {
    type Output = (Vec<u64>, Vec<u64>);

    fn run<K: KeyColumn>(self, keys: &K) -> Result<(Vec<u64>, Vec<u64>), String> {
        let hashes = hash_rows(keys, self.hash_mask)?;
        let mut checks = zeroed(keys.len());
        checks.par_chunks_mut(ROW_CHUNK).enumerate().for_each(|(c, out)| {
            for (i, h) in out.iter_mut().enumerate() {
                *h = keys.check_hash(c * ROW_CHUNK + i);
            }
        });
        Ok((hashes, checks))
    }
}

/// Whether every row's key equals the key of its prompt's first row (`index` numbers each row's
/// prompt, `first_rows` each prompt's first row). The rows' own keys are read in order; the first
/// keys, scattered, are prefetched in two steps (where the key is, then its bytes), so that many
/// cache misses are in flight at once instead of one per row.
pub(crate) fn rows_match_first_keys<K: KeyColumn>(keys: &K, index: &[i64], first_rows: &[i64]) -> bool {
    const AHEAD: usize = 16;
    let first_keys: Vec<K::Key<'_>> = first_rows.par_iter().map(|&row| keys.key(row as usize)).collect();
    index.par_chunks(ROW_CHUNK).enumerate().all(|(c, ids)| {
        ids.iter().enumerate().all(|(i, &id)| {
            if let Some(&later) = ids.get(i + 2 * AHEAD) {
                prefetch(&first_keys[later as usize]);
            }
            if let Some(&sooner) = ids.get(i + AHEAD) {
                K::prefetch_key(&first_keys[sooner as usize]);
            }
            keys.key(c * ROW_CHUNK + i) == first_keys[id as usize]
        })
    })
}

/// Asks the CPU to start loading the cache line at `address` (a hint: it never faults).
#[inline(always)]
fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// What a partition holds of a row: at least its hash and its row number.
pub(crate) trait Entry: Zeroable + Send + Sync {
    fn hash(&self) -> u64;
    fn row(&self) -> u32;
}

/// A row's hash and number: all that grouping alone needs.
#[derive(Clone, Copy)]
struct KeyEntry {
    hash: u64,
    row: u32,
}

// SAFETY: plain integers.
unsafe impl Zeroable for KeyEntry {}

impl Entry for KeyEntry {
    fn hash(&self) -> u64 {
        self.hash
    }
    fn row(&self) -> u32 {
        self.row
    }
}

/// Rows radix-partitioned by the top bits of their hash, stably: each partition lists its rows in
/// increasing order, every hash lives in exactly one partition, and a partition's table and rows stay
/// in a core's cache while it is worked on.
pub(crate) struct Partitioned<E> {
    bits: u32,
    /// The entries, partition-major: partition `p` holds `entries[bounds[p]..bounds[p + 1]]`.
    pub entries: Vec<E>,
    bounds: Vec<usize>,
    /// `piece_starts[c][p]`: where row chunk `c`'s rows of partition `p` start in `entries`.
    piece_starts: Vec<Vec<usize>>,
}

impl<E: Entry> Partitioned<E> {
    /// Partitions rows `0..hashes.len()`, making each row's entry with `entry(row, hash)`.
    pub fn new(hashes: &[u64], entry: impl Fn(u32, u64) -> E + Sync) -> Self {
        let n = hashes.len();
        let bits = (n / PARTITION_ROWS).max(1).ilog2().min(MAX_PARTITION_BITS);
        let partitions = 1usize << bits;
        let counts: Vec<Vec<usize>> = hashes
            .par_chunks(ROW_CHUNK)
            .map(|chunk| {
                let mut count = vec![0usize; partitions];
                chunk.iter().for_each(|&h| count[partition_of(bits, h)] += 1);
                count
            })
            .collect();
        // Partition-major: partition p's rows of chunk 0, then of chunk 1, ...
        let mut piece_starts = vec![vec![0usize; partitions]; counts.len()];
        let mut bounds = Vec::with_capacity(partitions + 1);
        let mut total = 0usize;
        for p in 0..partitions {
            bounds.push(total);
            for (c, count) in counts.iter().enumerate() {
                piece_starts[c][p] = total;
                total += count[p];
            }
        }
        bounds.push(total);
        let mut entries = zeroed(n);
        {
            let writer = DisjointWriter::new(&mut entries);
            hashes
                .par_chunks(ROW_CHUNK)
                .zip(&piece_starts)
                .enumerate()
                .for_each(|(c, (chunk, starts))| {
                    let mut next = starts.clone();
                    for (i, &h) in chunk.iter().enumerate() {
                        let p = partition_of(bits, h);
                        // SAFETY: chunk c owns the slots of its pieces, handed out one row at a time.
                        unsafe { writer.write(next[p], entry((c * ROW_CHUNK + i) as u32, h)) };
                        next[p] += 1;
                    }
                });
        }
        Partitioned {
            bits,
            entries,
            bounds,
            piece_starts,
        }
    }

    /// Each partition's entries.
    pub fn partitions(&self) -> Vec<&[E]> {
        self.bounds.windows(2).map(|b| &self.entries[b[0]..b[1]]).collect()
    }

    /// `values`, one per entry, split by partition as the entries are.
    pub fn split_like_partitions<'v, V>(&self, mut values: &'v mut [V]) -> Vec<&'v mut [V]> {
        assert_eq!(values.len(), self.entries.len(), "one value per entry");
        self.bounds
            .windows(2)
            .map(|b| {
                let (part, rest) = std::mem::take(&mut values).split_at_mut(b[1] - b[0]);
                values = rest;
                part
            })
            .collect()
    }

    /// Visits the rows of row chunk `c` (starting at row `c * ROW_CHUNK`, hashes `chunk`) in order,
    /// calling `visit(i, p, e)` with each row's offset in the chunk, its partition and its index
    /// inside that partition.
    pub fn for_rows_of_chunk(&self, c: usize, chunk: &[u64], mut visit: impl FnMut(usize, usize, usize)) {
        let mut next: Vec<usize> = self.piece_starts[c]
            .iter()
            .zip(&self.bounds)
            .map(|(start, bound)| start - bound)
            .collect();
        for (i, &h) in chunk.iter().enumerate() {
            let p = partition_of(self.bits, h);
            visit(i, p, next[p]);
            next[p] += 1;
        }
    }
}

#[inline(always)]
fn partition_of(bits: u32, h: u64) -> usize {
    if bits == 0 {
        0
    } else {
        (h >> (64 - bits)) as usize
    }
}

/// One partition's keys, numbered locally in order of first appearance.
pub(crate) struct PartitionKeys {
    /// Each key's first row (increasing).
    pub first_rows: Vec<u32>,
    /// Each key's rows.
    pub counts: Vec<u32>,
    /// Each entry's key.
    pub local: Vec<u32>,
}

impl PartitionKeys {
    /// Numbers by hash; with `compare_keys`, a row joins a key only if its hash *and* its key are equal.
    pub fn number_by<K: KeyColumn, E: Entry>(keys: &K, compare_keys: bool, entries: &[E]) -> Self {
        const EMPTY: u32 = u32::MAX;
        let mut capacity = 1024usize;
        // Slot: (hash, key number); EMPTY marks a free slot.
        let mut table: Vec<(u64, u32)> = vec![(0, EMPTY); capacity];
        let mut first_rows: Vec<u32> = Vec::new();
        let mut counts: Vec<u32> = Vec::new();
        let mut local = Vec::with_capacity(entries.len());
        for entry in entries {
            let (h, row) = (entry.hash(), entry.row());
            let mut slot = (hash_u64(h) as usize) & (capacity - 1);
            let key = loop {
                let (slot_hash, key) = table[slot];
                if key == EMPTY {
                    let key = first_rows.len() as u32;
                    table[slot] = (h, key);
                    first_rows.push(row);
                    counts.push(0);
                    break key;
                }
                if slot_hash == h
                    && (!compare_keys || keys.key(row as usize) == keys.key(first_rows[key as usize] as usize))
                {
                    break key;
                }
                slot = (slot + 1) & (capacity - 1);
            };
            counts[key as usize] += 1;
            local.push(key);
            if first_rows.len() * 2 > capacity {
                capacity *= 2;
                table = rehash(&table, capacity);
            }
        }
        PartitionKeys {
            first_rows,
            counts,
            local,
        }
    }
}

/// The occupied slots of `table`, placed in a table of `capacity` slots.
fn rehash(table: &[(u64, u32)], capacity: usize) -> Vec<(u64, u32)> {
    let mut grown = vec![(0, u32::MAX); capacity];
    for &(h, key) in table.iter().filter(|slot| slot.1 != u32::MAX) {
        let mut slot = (hash_u64(h) as usize) & (capacity - 1);
        while grown[slot].1 != u32::MAX {
            slot = (slot + 1) & (capacity - 1);
        }
        grown[slot] = (h, key);
    }
    grown
}

/// Every prompt numbered by first appearance across partitions.
pub(crate) struct Prompts {
    /// `ids[p][k]`: the number of partition `p`'s key `k`.
    pub ids: Vec<Vec<u32>>,
    pub sizes: Vec<i64>,
    pub first_rows: Vec<i64>,
}

impl Prompts {
    /// Numbers the keys of all partitions (`n` rows) by the rank of their first row among first rows.
    pub fn rank<P: Borrow<PartitionKeys> + Sync>(partitions: &[P], n: usize) -> Self {
        let words = n.div_ceil(64);
        let firsts: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
        partitions.par_iter().for_each(|part| {
            let part = part.borrow();
            for &row in &part.first_rows {
                firsts[row as usize / 64].fetch_or(1 << (row % 64), Ordering::Relaxed);
            }
        });
        let firsts: Vec<u64> = firsts.into_iter().map(AtomicU64::into_inner).collect();
        let mut word_ranks = Vec::with_capacity(words);
        let mut num_groups = 0usize;
        for word in &firsts {
            word_ranks.push(num_groups);
            num_groups += word.count_ones() as usize;
        }
        let rank = |row: u32| {
            let (w, b) = (row as usize / 64, row % 64);
            (word_ranks[w] + (firsts[w] & ((1u64 << b) - 1)).count_ones() as usize) as u32
        };
        let ids: Vec<Vec<u32>> = partitions
            .par_iter()
            .map(|part| part.borrow().first_rows.iter().map(|&row| rank(row)).collect())
            .collect();
        let mut sizes = vec![0i64; num_groups];
        let mut first_rows = vec![0i64; num_groups];
        {
            let (size_writer, first_writer) = (DisjointWriter::new(&mut sizes), DisjointWriter::new(&mut first_rows));
            partitions.par_iter().zip(&ids).for_each(|(part, ids)| {
                let part = part.borrow();
                for ((&count, &row), &id) in part.counts.iter().zip(&part.first_rows).zip(ids) {
                    // SAFETY: ids are ranks of distinct first rows, so no two keys share one.
                    unsafe {
                        size_writer.write(id as usize, i64::from(count));
                        first_writer.write(id as usize, i64::from(row));
                    }
                }
            });
        }
        Prompts { ids, sizes, first_rows }
    }

    /// Where each prompt starts in the contiguous order.
    pub fn starts(&self) -> Vec<i64> {
        let mut total = 0i64;
        self.sizes
            .iter()
            .map(|&size| {
                total += size;
                total - size
            })
            .collect()
    }

    /// Whether the rows are already contiguous. Every row before prompt p + 1's first row belongs to
    /// prompts 0..=p, so when each prompt starts where the contiguous order puts it, induction makes
    /// that order the identity (and conversely).
    pub fn contiguous(&self, starts: &[i64]) -> bool {
        self.first_rows.iter().zip(starts).all(|(first, start)| first == start)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A hash mask that keeps 1,024 distinct hashes (the top bits, which also pick the partition).
    const TOP_10_BITS: u64 = 0xFFC0_0000_0000_0000;

    /// The grouping, computed the obvious way: a HashMap from key to first-appearance number.
    fn reference<T: std::hash::Hash + Eq + Clone>(keys: &[T]) -> Grouping {
        let mut ids: HashMap<T, i64> = HashMap::new();
        let index: Vec<i64> = keys
            .iter()
            .map(|k| {
                let next = ids.len() as i64;
                *ids.entry(k.clone()).or_insert(next)
            })
            .collect();
        let mut sizes = vec![0i64; ids.len()];
        index.iter().for_each(|&g| sizes[g as usize] += 1);
        let mut order: Vec<i64> = (0..keys.len() as i64).collect();
        order.sort_by_key(|&row| index[row as usize]);
        let contiguous = order.iter().enumerate().all(|(i, &r)| r == i as i64);
        let mut first_rows = vec![-1i64; sizes.len()];
        for (row, &g) in index.iter().enumerate().rev() {
            first_rows[g as usize] = row as i64;
        }
        Grouping {
            order,
            sizes,
            first_rows,
            contiguous,
        }
    }

    /// A small deterministic generator for test data.
    pub(crate) fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    /// The Arrow offsets and data of `strings`.
    pub(crate) fn arrow(strings: &[String]) -> (Vec<i32>, Vec<u8>) {
        let mut offsets = vec![0i32];
        let mut data = Vec::new();
        for s in strings {
            data.extend_from_slice(s.as_bytes());
            offsets.push(data.len() as i32);
        }
        (offsets, data)
    }

    #[test]
    fn small_example() {
        let g = group_keys(&Keys::I64(&[7, 3, 7, 9, 3, 7]), u64::MAX).unwrap();
        assert_eq!(g.first_rows, vec![0, 1, 3]);
        assert_eq!(g.order, vec![0, 2, 5, 1, 4, 3]);
        assert_eq!(g.sizes, vec![3, 2, 1]);
        assert!(!g.contiguous);
        let g = group_keys(&Keys::U32(&[5, 5, 1]), u64::MAX).unwrap();
        assert!(g.contiguous);
        assert_eq!(g.sizes, vec![2, 1]);
        // A row of prompt 0 after prompt 1 first appears; then rows already grouped, at scale.
        assert!(!group_keys(&Keys::I64(&[1, 1, 2, 1]), u64::MAX).unwrap().contiguous);
        let sorted: Vec<i64> = (0..100_000).map(|i| i / 7).collect();
        assert_eq!(group_keys(&Keys::I64(&sorted), u64::MAX).unwrap(), reference(&sorted));
    }

    #[test]
    fn integers_match_reference_at_scale() {
        let mut seed = 1;
        // Enough rows for many partitions, with ragged groups.
        let keys: Vec<i64> = (0..300_000)
            .map(|_| (lcg(&mut seed) % 40_000) as i64 - 20_000)
            .collect();
        assert_eq!(group_keys(&Keys::I64(&keys), u64::MAX).unwrap(), reference(&keys));
        // Keeping 10 bits puts about 40 distinct integers on each hash: the exact comparison separates them.
        assert_eq!(group_keys(&Keys::I64(&keys), TOP_10_BITS).unwrap(), reference(&keys));
        let narrow: Vec<i32> = keys.iter().map(|&k| k as i32).collect();
        assert_eq!(group_keys(&Keys::I32(&narrow), u64::MAX).unwrap(), reference(&keys));
    }

    #[test]
    fn signed_and_unsigned_widths_do_not_alias() {
        let keys = [-1i32, 1, -1];
        assert_eq!(group_keys(&Keys::I32(&keys), u64::MAX).unwrap().sizes, vec![2, 1]);
        let keys = [u64::MAX, 1 << 63, u64::MAX];
        assert_eq!(group_keys(&Keys::U64(&keys), u64::MAX).unwrap().sizes, vec![2, 1]);
    }

    #[test]
    fn strings_match_reference_across_chunks_and_collisions() {
        let mut seed = 7;
        let strings: Vec<String> = (0..200_000)
            .map(|_| format!("prompt-{}", lcg(&mut seed) % 30_000))
            .collect();
        let expected = reference(&strings);
        let (offsets, data) = arrow(&strings);
        let one = Keys::Bytes(vec![ByteChunk {
            offsets: Offsets::I32(&offsets),
            data: &data,
        }]);
        assert_eq!(group_keys(&one, u64::MAX).unwrap(), expected);
        // About 30 keys on each hash: only the exact comparison tells them apart.
        assert_eq!(group_keys(&one, TOP_10_BITS).unwrap(), expected);
        // Every key on one hash (a small table: the probing is quadratic in the keys).
        let few: Vec<String> = strings[..3000]
            .iter()
            .map(|s| s[..s.len().min(10)].to_string())
            .collect();
        let (o, d) = arrow(&few);
        let one_hash = Keys::Bytes(vec![ByteChunk {
            offsets: Offsets::I32(&o),
            data: &d,
        }]);
        assert_eq!(group_keys(&one_hash, 0).unwrap(), reference(&few));
        // The same rows in three chunks, one with 64-bit offsets and a non-zero first offset.
        let (a, b, c) = (&strings[..1000], &strings[1000..150_000], &strings[150_000..]);
        let (oa, da) = arrow(a);
        let (ob, db) = arrow(b);
        let (oc, dc) = arrow(c);
        let mut shifted = b"junk".to_vec();
        shifted.extend_from_slice(&dc);
        let oc: Vec<i64> = oc.iter().map(|&o| i64::from(o) + 4).collect();
        let chunks = Keys::Bytes(vec![
            ByteChunk {
                offsets: Offsets::I32(&oa),
                data: &da,
            },
            ByteChunk {
                offsets: Offsets::I32(&[0]),
                data: &[],
            },
            ByteChunk {
                offsets: Offsets::I32(&ob),
                data: &db,
            },
            ByteChunk {
                offsets: Offsets::I64(&oc),
                data: &shifted,
            },
        ]);
        assert_eq!(group_keys(&chunks, u64::MAX).unwrap(), expected);
        assert_eq!(group_keys(&chunks, TOP_10_BITS).unwrap(), expected);
    }

    #[test]
    fn fixed_width_keys_strip_trailing_zero_units() {
        // numpy S3: b"ab", b"ab\0" (the same key), b"a\0b", b"" (width 3).
        let data = b"ab\0ab\0a\0b\0\0\0";
        let g = group_keys(
            &Keys::Fixed {
                data,
                width: 3,
                strip_unit: 1,
            },
            0,
        )
        .unwrap();
        assert_eq!((g.order, g.sizes), (vec![0, 1, 2, 3], vec![2, 1, 1]));
        let exact = group_keys(
            &Keys::Fixed {
                data: b"a\0a\0",
                width: 2,
                strip_unit: 0,
            },
            u64::MAX,
        )
        .unwrap();
        assert_eq!(exact.sizes, vec![2]);
    }

    #[test]
    fn empty_and_invalid_inputs() {
        let g = group_keys(&Keys::I64(&[]), u64::MAX).unwrap();
        assert!(g.order.is_empty() && g.sizes.is_empty() && g.contiguous);
        assert!(group_keys(&Keys::Bytes(vec![]), u64::MAX).unwrap().sizes.is_empty());
        let bad = Keys::Bytes(vec![ByteChunk {
            offsets: Offsets::I32(&[0, 5]),
            data: b"abc",
        }]);
        assert!(group_keys(&bad, u64::MAX)
            .unwrap_err()
            .contains("outside its 3 data bytes"));
        let bad = Keys::Bytes(vec![ByteChunk {
            offsets: Offsets::I32(&[0, 2, 1]),
            data: b"abc",
        }]);
        assert!(group_keys(&bad, u64::MAX).unwrap_err().contains("decrease"));
        let bad = Keys::Fixed {
            data: b"abc",
            width: 2,
            strip_unit: 0,
        };
        assert!(group_keys(&bad, u64::MAX).unwrap_err().contains("not rows of 2"));
    }

    #[test]
    fn byte_hash_separates_lengths_and_tails() {
        let samples: [&[u8]; 8] = [
            b"",
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"prompt-1",
            b"prompt-10",
            b"0123456789abcdefX",
        ];
        for hash in [hash_bytes, check_hash_bytes] {
            let hashes: std::collections::HashSet<u64> = samples.iter().map(|s| hash(s)).collect();
            assert_eq!(hashes.len(), samples.len());
        }
    }

    #[test]
    fn second_hash_is_seeded_apart_and_follows_the_key() {
        let mut seed = 5;
        let strings: Vec<String> = (0..50_000).map(|_| format!("p{}", lcg(&mut seed) % 20_000)).collect();
        let (offsets, data) = arrow(&strings);
        let keys = Keys::Bytes(vec![ByteChunk {
            offsets: Offsets::I32(&offsets),
            data: &data,
        }]);
        let (hashes, checks) = hash_keys(&keys, TOP_10_BITS).unwrap();
        let mut seen: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut by_hash: HashMap<u64, std::collections::HashSet<u64>> = HashMap::new();
        for ((s, &h), &c) in strings.iter().zip(&hashes).zip(&checks) {
            assert_eq!(h, hash_bytes(s.as_bytes()) & TOP_10_BITS);
            assert_eq!(*seen.entry(s).or_insert((h, c)), (h, c)); // equal keys, equal hashes
            by_hash.entry(h).or_default().insert(c);
        }
        // About 20 distinct keys share each of the 1,024 masked hashes; the second hash tells every
        // one of them apart.
        let distinct_checks: usize = by_hash.values().map(|checks| checks.len()).sum();
        assert_eq!(distinct_checks, seen.len());
        let ints = [7i64, -7, 7];
        let (int_hashes, int_checks) = hash_keys(&Keys::I64(&ints), u64::MAX).unwrap();
        assert_eq!(int_checks, vec![7, (-7i64) as u64, 7]);
        assert_eq!(int_hashes[0], int_hashes[2]);
    }
}
