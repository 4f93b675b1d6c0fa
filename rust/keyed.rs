//! Scoring rows grouped by prompt key in one pass, without reordering the whole table.
//!
//! Grouping first and scoring afterwards gathers every input through a row order and scatters every
//! output back through it: random accesses over the whole table, a cache miss each. [`score_keys`]
//! instead radix-partitions the rows by key hash as [`crate::keys`] does, carrying each row's
//! log-prob and reward along. Every partition numbers its keys, and the prompts are ranked by first
//! appearance. A partition holds a few thousand rows and fits in a core's cache: it then sorts its
//! rows by key, scores its prompts and writes each entry's scores with its prompt number, in its own
//! entry order. One sequential pass over the rows reads every partition's entry scores as a stream
//! (the partitions list their rows in increasing order) and writes them in row order, with no lookup.
//! Byte keys are then checked exactly, rows in order, against their prompt's first key; only if two
//! distinct keys shared a hash are the partitions scored again, comparing keys.

use rayon::prelude::*;

use crate::buffers::{zeroed, Zeroable};
use crate::groups::DisjointWriter;
use crate::keys::{
    hash_rows, rows_match_first_keys, run_on_keys, ColumnTask, Entry, KeyColumn, Keys, PartitionKeys, Partitioned,
    Prompts, ROW_CHUNK,
};
use crate::real::Real;
use crate::scoring::{score_into, Scores, Wanted};

/// Scores of rows grouped by key, and how the rows fall into prompts.
pub struct KeyedScores {
    /// The `wanted` outputs: item outputs in row order, group outputs by prompt.
    pub scores: Scores,
    /// The prompt of each row, `[n]`; prompts are numbered by first appearance.
    pub index: Vec<i64>,
    /// Rows per prompt, `[g]`.
    pub sizes: Vec<i64>,
    /// The row where each prompt first appears, increasing, `[g]`.
    pub first_rows: Vec<i64>,
    /// Whether every prompt's rows are already adjacent, in first-appearance order.
    pub contiguous: bool,
}

/// The `wanted` scores of rows grouped by `keys`, rows in any order. `hash_mask` is as in
/// [`crate::keys::group_keys`].
pub fn score_keys<T: Real>(
    keys: &Keys<'_>,
    logprobs: &[T],
    rewards: &[T],
    wanted: Wanted,
    hash_mask: u64,
) -> Result<KeyedScores, String> {
    run_on_keys(
        keys,
        ScoreTask {
            logprobs,
            rewards,
            wanted,
            hash_mask,
        },
    )
}

/// A row as its partition holds it: hash, row number and the two values to score.
#[derive(Clone, Copy)]
struct ScoredEntry<T> {
    hash: u64,
    row: u32,
    logprob: T,
    reward: T,
}

// SAFETY: integers and floats.
unsafe impl<T: Real> Zeroable for ScoredEntry<T> {}

impl<T: Real> Entry for ScoredEntry<T> {
    fn hash(&self) -> u64 {
        self.hash
    }
    fn row(&self) -> u32 {
        self.row
    }
}

/// What the row pass reads of an entry once its partition is scored: one record, so that each
/// partition is one stream.
#[derive(Clone, Copy)]
struct EntryScore {
    /// The entry's prompt number.
    prompt: u32,
    z_logprob: f64,
    z_reward: f64,
    pacs: f64,
}

struct ScoreTask<'a, T> {
    logprobs: &'a [T],
    rewards: &'a [T],
    wanted: Wanted,
    hash_mask: u64,
}

impl<T: Real> ColumnTask for ScoreTask<'_, T> {
    type Output = KeyedScores;

    fn run<K: KeyColumn>(self, keys: &K) -> Result<KeyedScores, String> {
        let n = keys.len();
        if self.logprobs.len() != n || self.rewards.len() != n {
            return Err(format!(
                "there are {n} keys but {} log-probs and {} rewards",
                self.logprobs.len(),
                self.rewards.len()
            ));
        }
        let hashes = hash_rows(keys, self.hash_mask)?;
        // Numbering by hash alone is exact when the hash is injective. Otherwise every row's key is
        // compared with its prompt's first key afterwards, rows in order; only if two distinct keys
        // shared a hash are the partitions numbered again, comparing keys wherever hashes are equal.
        let by_hash = self.score_partitioned(keys, &hashes, false);
        let injective = K::HASH_IS_INJECTIVE && self.hash_mask == u64::MAX;
        if injective || rows_match_first_keys(keys, &by_hash.index, &by_hash.first_rows) {
            return Ok(by_hash);
        }
        drop(by_hash);
        Ok(self.score_partitioned(keys, &hashes, true))
    }
}

impl<T: Real> ScoreTask<'_, T> {
    /// Partitions the rows and scores them, numbering each partition's keys by hash (and by key too
    /// with `compare_keys`).
    fn score_partitioned<K: KeyColumn>(&self, keys: &K, hashes: &[u64], compare_keys: bool) -> KeyedScores {
        let (n, wanted) = (hashes.len(), self.wanted);
        let mut partitioned = Partitioned::new(hashes, |row, hash| ScoredEntry {
            hash,
            row,
            logprob: self.logprobs[row as usize],
            reward: self.rewards[row as usize],
        });
        let partitions = partitioned.partitions();
        let numbered: Vec<PartitionKeys> = partitions
            .par_iter()
            .map(|entries| PartitionKeys::number_by(keys, compare_keys, entries))
            .collect();
        // Prompts are numbered before the partitions are scored, so that each entry's score carries
        // its prompt's number: the row pass then reads streams only, with no lookup per row.
        let prompts = Prompts::rank(&numbered, n);
        let mut scores = Scores::zeroed(n, prompts.sizes.len(), wanted);
        let mut entry_scores: Vec<EntryScore> = zeroed(n); // partition-major, as the entries
        {
            let prompt_outputs = PromptWriters {
                conflict: DisjointWriter::new(&mut scores.group_conflict),
                kendall_tau: DisjointWriter::new(&mut scores.kendall_tau),
                degenerate: DisjointWriter::new(&mut scores.degenerate),
            };
            partitions
                .into_par_iter()
                .zip(partitioned.split_like_partitions(&mut entry_scores))
                .zip(numbered)
                .zip(&prompts.ids)
                .for_each(|(((entries, out), keys), ids)| {
                    score_partition(&keys, entries, ids, wanted, &prompt_outputs, out);
                });
        }
        let entry_scores = partitioned.split_like_partitions(&mut entry_scores);
        partitioned.entries = Vec::new(); // the entry scores hold all that is left to do

        // Row outputs: each chunk of rows reads its partitions' entry scores in order.
        let mut index = zeroed(n);
        {
            let index_writer = DisjointWriter::new(&mut index);
            let z_logprob = DisjointWriter::new(&mut scores.z_logprob);
            let z_reward = DisjointWriter::new(&mut scores.z_reward);
            let pacs = DisjointWriter::new(&mut scores.pacs);
            hashes.par_chunks(ROW_CHUNK).enumerate().for_each(|(c, chunk)| {
                partitioned.for_rows_of_chunk(c, chunk, |i, p, e| {
                    let row = c * ROW_CHUNK + i;
                    let entry = entry_scores[p][e];
                    // SAFETY: chunks are disjoint row ranges and each row is visited once.
                    unsafe {
                        index_writer.write(row, i64::from(entry.prompt));
                        if wanted.z_scores {
                            z_logprob.write(row, entry.z_logprob);
                            z_reward.write(row, entry.z_reward);
                        }
                        if wanted.pacs {
                            pacs.write(row, entry.pacs);
                        }
                    }
                });
            });
        }
        let starts = prompts.starts();
        KeyedScores {
            scores,
            index,
            contiguous: prompts.contiguous(&starts),
            sizes: prompts.sizes,
            first_rows: prompts.first_rows,
        }
    }
}

// SAFETY: an integer and floats.
unsafe impl Zeroable for EntryScore {}

/// Where partitions write their prompts' scores, by prompt number.
struct PromptWriters<'a> {
    conflict: DisjointWriter<'a, f64>,
    kendall_tau: DisjointWriter<'a, f64>,
    degenerate: DisjointWriter<'a, bool>,
}

/// Scores one partition's prompts (`keys` numbers its entries, `ids` numbers its keys globally):
/// writes the entry scores to `out` in entry order and the prompt scores to `prompt_outputs`.
fn score_partition<T: Real>(
    keys: &PartitionKeys,
    entries: &[ScoredEntry<T>],
    ids: &[u32],
    wanted: Wanted,
    prompt_outputs: &PromptWriters<'_>,
    out: &mut [EntryScore],
) {
    let (m, g) = (entries.len(), keys.counts.len());
    let mut offsets = Vec::with_capacity(g + 1);
    let mut total = 0i64;
    offsets.push(0);
    for &count in &keys.counts {
        total += i64::from(count);
        offsets.push(total);
    }
    // A counting sort by key, in cache: each entry's place among its prompt's rows.
    let mut next: Vec<usize> = offsets[..g].iter().map(|&o| o as usize).collect();
    let mut place = vec![0u32; m];
    let (mut logprobs, mut rewards) = (vec![T::default(); m], vec![T::default(); m]);
    for ((entry, &key), place) in entries.iter().zip(&keys.local).zip(place.iter_mut()) {
        let at = next[key as usize];
        next[key as usize] += 1;
        *place = at as u32;
        logprobs[at] = entry.logprob;
        rewards[at] = entry.reward;
    }
    let mut grouped = Scores::zeroed(m, g, wanted);
    score_into(&logprobs, &rewards, &offsets, grouped.outputs(wanted));
    for (k, &id) in ids.iter().enumerate() {
        let id = id as usize;
        // SAFETY: every prompt number belongs to one key of one partition.
        unsafe {
            if wanted.conflict {
                prompt_outputs.conflict.write(id, grouped.group_conflict[k]);
                prompt_outputs.degenerate.write(id, grouped.degenerate[k]);
            }
            if wanted.kendall {
                prompt_outputs.kendall_tau.write(id, grouped.kendall_tau[k]);
            }
        }
    }
    let item = |values: &[f64], at: usize| values.get(at).copied().unwrap_or(0.0);
    for ((&key, &at), out) in keys.local.iter().zip(&place).zip(out) {
        let at = at as usize;
        *out = EntryScore {
            prompt: ids[key as usize],
            z_logprob: item(&grouped.z_logprob, at),
            z_reward: item(&grouped.z_reward, at),
            pacs: item(&grouped.pacs, at),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::score_in_order;
    use crate::keys::tests::{arrow, lcg};
    use crate::keys::{group_keys, ByteChunk, Offsets};

    /// Scores through `group_keys` and `score_in_order`, and the prompt of each row.
    fn two_step<T: Real>(keys: &Keys<'_>, l: &[T], r: &[T], wanted: Wanted) -> (Scores, Vec<i64>) {
        let grouping = group_keys(keys, u64::MAX).unwrap();
        let mut offsets = vec![0i64];
        for &s in &grouping.sizes {
            offsets.push(offsets.last().unwrap() + s);
        }
        let mut index = vec![0i64; l.len()];
        for (p, w) in offsets.windows(2).enumerate() {
            for &row in &grouping.order[w[0] as usize..w[1] as usize] {
                index[row as usize] = p as i64;
            }
        }
        (score_in_order(l, r, &grouping.order, &offsets, wanted).unwrap(), index)
    }

    fn assert_same(a: &Scores, b: &Scores) {
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(a.z_logprob, b.z_logprob);
        assert_eq!(a.z_reward, b.z_reward);
        assert_eq!(a.pacs, b.pacs);
        assert_eq!(a.group_conflict, b.group_conflict);
        assert_eq!(bits(&a.kendall_tau), bits(&b.kendall_tau));
        assert_eq!(a.degenerate, b.degenerate);
    }

    #[test]
    fn matches_grouping_then_scoring() {
        let mut seed = 3;
        // Ragged prompts over many partitions, one of them far larger than a partition.
        let keys: Vec<i64> = (0..400_000)
            .map(|i| {
                if i % 9 == 0 {
                    7
                } else {
                    (lcg(&mut seed) % 50_000) as i64
                }
            })
            .collect();
        let l: Vec<f64> = (0..keys.len()).map(|_| (lcg(&mut seed) % 1000) as f64 * 0.01).collect();
        let r: Vec<f64> = (0..keys.len()).map(|_| (lcg(&mut seed) % 97) as f64).collect();
        let keys = Keys::I64(&keys);
        for wanted in [Wanted::ALL, Wanted::PACS, Wanted::KENDALL] {
            let fused = score_keys(&keys, &l, &r, wanted, u64::MAX).unwrap();
            let (expected, index) = two_step(&keys, &l, &r, wanted);
            assert_same(&fused.scores, &expected);
            assert_eq!(fused.index, index);
            let grouping = group_keys(&keys, u64::MAX).unwrap();
            assert_eq!(
                (fused.sizes, fused.first_rows, fused.contiguous),
                (grouping.sizes, grouping.first_rows, grouping.contiguous)
            );
        }
    }

    #[test]
    fn colliding_string_keys_are_told_apart() {
        let mut seed = 11;
        let strings: Vec<String> = (0..100_000)
            .map(|_| format!("prompt-{}", lcg(&mut seed) % 12_000))
            .collect();
        let (offsets, data) = arrow(&strings);
        let keys = Keys::Bytes(vec![ByteChunk {
            offsets: Offsets::I32(&offsets),
            data: &data,
        }]);
        let l: Vec<f32> = (0..strings.len()).map(|_| (lcg(&mut seed) % 100) as f32).collect();
        let r: Vec<f32> = (0..strings.len()).map(|_| (lcg(&mut seed) % 7) as f32).collect();
        let (expected, index) = two_step(&keys, &l, &r, Wanted::ALL);
        // About 12 keys on each of 1,024 hashes: only the exact comparison separates them.
        let fused = score_keys(&keys, &l, &r, Wanted::ALL, 0xFFC0_0000_0000_0000).unwrap();
        assert_same(&fused.scores, &expected);
        assert_eq!(fused.index, index);
        assert_eq!(fused.sizes.len(), 12_000);
    }

    #[test]
    fn contiguous_empty_and_mismatched_inputs() {
        let fused = score_keys(
            &Keys::U32(&[4, 4, 9, 9]),
            &[1.0f64, 2.0, 3.0, 5.0],
            &[2.0, 1.0, 0.0, 1.0],
            Wanted::ALL,
            u64::MAX,
        )
        .unwrap();
        assert!(fused.contiguous);
        assert_eq!(fused.index, vec![0, 0, 1, 1]);
        assert_eq!(fused.scores.kendall_tau, vec![-1.0, 1.0]);
        let empty = score_keys::<f64>(&Keys::I64(&[]), &[], &[], Wanted::ALL, u64::MAX).unwrap();
        assert!(empty.index.is_empty() && empty.scores.group_conflict.is_empty() && empty.contiguous);
        let err = score_keys(&Keys::I64(&[1, 2]), &[1.0f64], &[1.0, 2.0], Wanted::ALL, u64::MAX).err();
        assert_eq!(err.as_deref(), Some("there are 2 keys but 1 log-probs and 2 rewards"));
    }
}
