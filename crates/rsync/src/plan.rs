//! The plan: which source blocks the destination lacks, held compactly. No I/O.
//!
//! Indexes of hundreds of millions of blocks must fit in memory, so nothing here is a
//! string or a hash set. The destination index is kept as 24-byte entries
//! (hash, size, service, a "seen at the source" flag) in 256 buckets by the first
//! byte of the hash; source entries are then streamed past it and only the blocks the
//! destination lacks (or holds on too few services) are kept, as 20-byte entries.
//! Buckets grow by a quarter at a time, and a source bucket is de-duplicated before it
//! grows, so replicas listed by several source services cost no extra memory.
//!
//! The checkpoint is the destination index (#7167): a block already listed by a
//! destination service is never sent to that service again. A block listed on fewer
//! services than the replication level is topped up on other services only.

use keep_client::BlockHash;

/// Number of buckets: one per value of the hash's first byte.
const BUCKETS: usize = 256;

/// One destination index line, reduced to what planning needs. Ordered by
/// (hash, size, service, seen).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct DstEntry {
    hash: [u8; 16],
    size: u32,
    /// Index of the destination service that listed it.
    service: u16,
    /// Set when the source lists the same block.
    seen: bool,
}

/// A block to copy (or top up): 20 bytes. Ordered by (hash, size).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Todo {
    hash: [u8; 16],
    size: u32,
}

/// The (hash, size) order as one integer comparison: the hash read big-endian sorts
/// like its bytes, and compares in two instructions instead of a `memcmp` call
/// (sorting and searching the plan is most of the index phase, BENCHMARKS.md S5).
fn key(hash: &[u8; 16], size: u32) -> (u128, u32) {
    (u128::from_be_bytes(*hash), size)
}

impl Ord for DstEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (key(&self.hash, self.size), self.service, self.seen).cmp(&(
            key(&other.hash, other.size),
            other.service,
            other.seen,
        ))
    }
}

impl PartialOrd for DstEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Todo {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        key(&self.hash, self.size).cmp(&key(&other.hash, other.size))
    }
}

impl PartialOrd for Todo {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Todo {
    /// The block hash.
    pub fn hash(&self) -> BlockHash {
        BlockHash(self.hash)
    }

    /// The block size in bytes.
    pub fn size(&self) -> u64 {
        u64::from(self.size)
    }

    /// `hash+size`: safe to log.
    pub fn locator(&self) -> keep_client::Locator {
        keep_client::Locator::new(self.hash(), self.size())
    }
}

/// Grows `v` by about a quarter (not double), so a full index wastes little memory.
fn reserve_quarter<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.capacity() / 4 + 64);
    }
}

/// Counts and bytes of one group of blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Number of blocks.
    pub blocks: u64,
    /// Sum of their sizes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, size: u64) {
        self.blocks += 1;
        self.bytes += size;
    }
}

/// Collects the destination index, then the source index, into a [`Plan`].
///
/// Call [`PlanBuilder::add_dst`] for every destination entry, then
/// [`PlanBuilder::finish_dst`] once, then [`PlanBuilder::add_src`] for every source
/// entry (any order, duplicates allowed), then [`PlanBuilder::finish`].
#[derive(Debug)]
pub struct PlanBuilder {
    replicas: usize,
    dst: Vec<Vec<DstEntry>>,
    todo: Vec<Vec<Todo>>,
    dst_sorted: bool,
    /// Per bucket, after `finish_dst`: where each value of the hash's second byte
    /// starts (257 offsets), so a lookup searches ~1/256 of the bucket: a binary search
    /// over the whole bucket missed the cache on every step (BENCHMARKS.md, S5).
    /// Flat: bucket `b`'s offsets are `[b * 257..(b + 1) * 257]`.
    dst_offsets: Vec<u32>,
    src_entries: u64,
    dst_entries: u64,
    /// Sizes too large for a Keep block (cannot happen with a sane server).
    oversize: u64,
}

impl PlanBuilder {
    /// A builder for a destination replication level of `replicas` (at least 1).
    pub fn new(replicas: usize) -> PlanBuilder {
        PlanBuilder {
            replicas: replicas.max(1),
            dst: (0..BUCKETS).map(|_| Vec::new()).collect(),
            todo: (0..BUCKETS).map(|_| Vec::new()).collect(),
            dst_sorted: false,
            dst_offsets: Vec::new(),
            src_entries: 0,
            dst_entries: 0,
            oversize: 0,
        }
    }

    /// Records that destination service number `service` lists `hash+size`.
    pub fn add_dst(&mut self, service: u16, hash: BlockHash, size: u64) {
        debug_assert!(!self.dst_sorted, "add_dst after finish_dst");
        let Ok(size) = u32::try_from(size) else {
            self.oversize += 1;
            return;
        };
        self.dst_entries += 1;
        let b = &mut self.dst[usize::from(hash.0[0])];
        if b.len() == b.capacity() && !b.is_empty() {
            // Two volumes of one keepstore list the same block twice; squeeze those
            // out before paying for more room. A stable sort finds the part sorted
            // last time as one run and merges, instead of sorting it all again.
            b.sort();
            b.dedup_by(|a, b| (a.hash, a.size, a.service) == (b.hash, b.size, b.service));
        }
        reserve_quarter(b);
        b.push(DstEntry {
            hash: hash.0,
            size,
            service,
            seen: false,
        });
    }

    /// Ends the destination phase: sorts and de-duplicates every bucket.
    pub fn finish_dst(&mut self) {
        for b in &mut self.dst {
            b.sort();
            b.dedup_by(|a, b| (a.hash, a.size, a.service) == (b.hash, b.size, b.service));
            b.shrink_to_fit();
        }
        self.dst_offsets = vec![0u32; BUCKETS * 257];
        for (b, off) in self.dst.iter().zip(self.dst_offsets.chunks_exact_mut(257)) {
            for e in b {
                off[usize::from(e.hash[1]) + 1] += 1;
            }
            for i in 1..257 {
                off[i] += off[i - 1];
            }
        }
        self.dst_sorted = true;
    }

    /// Records that the source lists `hash+size`. Must follow [`PlanBuilder::finish_dst`].
    pub fn add_src(&mut self, hash: BlockHash, size: u64) {
        assert!(self.dst_sorted, "add_src before finish_dst");
        let Ok(size) = u32::try_from(size) else {
            self.oversize += 1;
            return;
        };
        self.src_entries += 1;
        let (bucket, lo, hi) = self.dst_range(&hash.0);
        let holders = holders_mut(&mut self.dst[bucket][lo..hi], &hash.0, size);
        let count = holders.len();
        for e in holders {
            e.seen = true;
        }
        if count >= self.replicas {
            return;
        }
        let t = &mut self.todo[bucket];
        if t.len() == t.capacity() && !t.is_empty() {
            // Stable: merges with the run sorted last time (see add_dst).
            t.sort();
            t.dedup();
        }
        reserve_quarter(t);
        t.push(Todo { hash: hash.0, size });
    }

    /// [`PlanBuilder::add_src`] for many entries. Faster: before each group of
    /// entries is looked up, the destination entries they will land on are read
    /// together, so the cache misses overlap instead of coming one at a time.
    pub fn add_src_many(&mut self, entries: impl IntoIterator<Item = (BlockHash, u64)>) {
        const GROUP: usize = 32;
        let mut group = [(BlockHash([0; 16]), 0u64); GROUP];
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let mut n = 0;
            for e in entries.by_ref().take(GROUP) {
                group[n] = e;
                n += 1;
            }
            let mut touched = 0u32;
            for (hash, _) in &group[..n] {
                let (bucket, lo, hi) = self.dst_range(&hash.0);
                if lo < hi {
                    let guess = lo + guess(&hash.0, 2, hi - lo);
                    touched = touched.wrapping_add(self.dst[bucket][guess].size);
                }
            }
            std::hint::black_box(touched);
            for &(hash, size) in &group[..n] {
                self.add_src(hash, size);
            }
        }
    }

    /// The bucket of `hash`, and the range of it whose hashes share `hash`'s second
    /// byte. Must follow [`PlanBuilder::finish_dst`].
    fn dst_range(&self, hash: &[u8; 16]) -> (usize, usize, usize) {
        let bucket = usize::from(hash[0]);
        let o = bucket * 257 + usize::from(hash[1]);
        (
            bucket,
            self.dst_offsets[o] as usize,
            self.dst_offsets[o + 1] as usize,
        )
    }

    /// Ends the source phase and returns the plan.
    pub fn finish(mut self) -> Plan {
        let mut stats = PlanStats {
            src_entries: self.src_entries,
            dst_entries: self.dst_entries,
            replicas: self.replicas as u64,
            ..PlanStats::default()
        };
        for b in &mut self.todo {
            b.sort();
            b.dedup();
            b.shrink_to_fit();
        }
        for (i, bucket) in self.dst.iter().enumerate() {
            let mut prev: Option<([u8; 16], u32)> = None;
            for e in bucket {
                if prev == Some((e.hash, e.size)) {
                    continue;
                }
                prev = Some((e.hash, e.size));
                stats.dst.add(u64::from(e.size));
                if e.seen {
                    stats.src.add(u64::from(e.size));
                }
            }
            for t in &self.todo[i] {
                let n = holders(bucket, &t.hash, t.size).len();
                let size = u64::from(t.size);
                if n == 0 {
                    stats.src.add(size);
                    stats.missing.add(size);
                } else {
                    stats.under_replicated.add(size);
                }
                stats.to_copy.add(size);
                stats.by_digit[usize::from(t.hash[0] >> 4)].add(size);
            }
        }
        stats.present = Tally {
            blocks: stats.src.blocks - stats.missing.blocks,
            bytes: stats.src.bytes - stats.missing.bytes,
        };
        stats.oversize = self.oversize;
        Plan {
            dst: self.dst,
            todo: self.todo,
            stats,
        }
    }
}

/// The entries of a sorted bucket (all hashes share their first byte) that list
/// `hash+size`, one per service.
fn holders<'a>(bucket: &'a [DstEntry], hash: &[u8; 16], size: u32) -> &'a [DstEntry] {
    let (lo, hi) = holder_range(bucket, 1, hash, size);
    &bucket[lo..hi]
}

/// [`holders`] in a slice of a bucket whose hashes share their first two bytes.
fn holders_mut<'a>(slice: &'a mut [DstEntry], hash: &[u8; 16], size: u32) -> &'a mut [DstEntry] {
    let (lo, hi) = holder_range(slice, 2, hash, size);
    &mut slice[lo..hi]
}

/// Where `hash` should be among `n` sorted uniform hashes that share their first
/// `fixed` bytes: the next 8 bytes, read as a fraction of `n` (always `< n`).
fn guess(hash: &[u8; 16], fixed: usize, n: usize) -> usize {
    let frac = u64::from_be_bytes(hash[fixed..fixed + 8].try_into().expect("8 bytes"));
    ((u128::from(frac) * n as u128) >> 64) as usize
}

/// Where `hash+size` is in `sorted`, whose entries all share the first `fixed` bytes
/// of the hash.
///
/// Interpolation, then galloping: MD5 hashes are uniform, so the entry is almost
/// always within a few places of where the next 8 bytes of the hash say it should
/// be. One cache miss per lookup instead of one per binary-search step, which was
/// most of the index phase at 10 million blocks (BENCHMARKS.md, S5). Skewed data
/// only costs more steps: the galloping search is exact whatever the guess.
fn holder_range(sorted: &[DstEntry], fixed: usize, hash: &[u8; 16], size: u32) -> (usize, usize) {
    let n = sorted.len();
    if n == 0 {
        return (0, 0);
    }
    let k = key(hash, size);
    let below = |i: usize| key(&sorted[i].hash, sorted[i].size) < k;
    let guess = guess(hash, fixed, n);
    // Find lo..hi with every entry before lo below k and none from hi on.
    let (mut lo, mut hi);
    if below(guess) {
        (lo, hi) = (guess + 1, n);
        let mut step = 1;
        while lo + step - 1 < n {
            if below(lo + step - 1) {
                lo += step;
                step *= 2;
            } else {
                hi = lo + step - 1;
                break;
            }
        }
    } else {
        (lo, hi) = (0, guess);
        let mut step = 1;
        while step <= hi {
            if below(hi - step) {
                lo = hi - step + 1;
                break;
            }
            hi -= step;
            step *= 2;
        }
    }
    let start = lo + sorted[lo..hi].partition_point(|e| key(&e.hash, e.size) < k);
    let end = start
        + sorted[start..]
            .iter()
            .take_while(|e| key(&e.hash, e.size) == k)
            .count();
    (start, end)
}

/// What the indexes said, in numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlanStats {
    /// Destination replication level the plan aims for.
    pub replicas: u64,
    /// Index lines read from the source (replicas and volumes counted separately).
    pub src_entries: u64,
    /// Index lines read from the destination.
    pub dst_entries: u64,
    /// Distinct blocks listed by the source.
    pub src: Tally,
    /// Distinct blocks listed by the destination.
    pub dst: Tally,
    /// Source blocks the destination lists on at least one service.
    pub present: Tally,
    /// Source blocks the destination does not list at all.
    pub missing: Tally,
    /// Source blocks the destination lists on fewer services than `replicas`.
    pub under_replicated: Tally,
    /// Blocks to send: `missing` plus `under_replicated`.
    pub to_copy: Tally,
    /// `to_copy` split by the leading hex digit of the hash (for `-prefix` sharding).
    pub by_digit: [Tally; 16],
    /// Index entries whose size cannot be a Keep block (ignored).
    pub oversize: u64,
}

/// The result of planning: blocks to copy, in hash order, and who already has what.
#[derive(Debug)]
pub struct Plan {
    dst: Vec<Vec<DstEntry>>,
    todo: Vec<Vec<Todo>>,
    stats: PlanStats,
}

impl Plan {
    /// The numbers.
    pub fn stats(&self) -> &PlanStats {
        &self.stats
    }

    /// Every block to copy or top up, in hash order.
    pub fn todo(&self) -> impl Iterator<Item = Todo> + '_ {
        self.todo.iter().flatten().copied()
    }

    /// Destination service numbers that already list `todo` (empty for a missing block).
    pub fn dst_holders(&self, todo: &Todo) -> Vec<u16> {
        holders(&self.dst[usize::from(todo.hash[0])], &todo.hash, todo.size)
            .iter()
            .map(|e| e.service)
            .collect()
    }

    /// Every (block, destination service) pair for blocks the source also lists:
    /// what `--verify-data` reads back.
    pub fn dst_copies_of_src_blocks(&self) -> impl Iterator<Item = (Todo, u16)> + '_ {
        self.dst.iter().flatten().filter(|e| e.seen).map(|e| {
            (
                Todo {
                    hash: e.hash,
                    size: e.size,
                },
                e.service,
            )
        })
    }

    /// Bytes of heap the plan holds (capacity, not length), for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        let d: usize = self
            .dst
            .iter()
            .map(|b| b.capacity() * size_of::<DstEntry>())
            .sum();
        let t: usize = self
            .todo
            .iter()
            .map(|b| b.capacity() * size_of::<Todo>())
            .sum();
        d + t + 2 * BUCKETS * size_of::<Vec<u8>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u64) -> BlockHash {
        BlockHash::of(&i.to_le_bytes())
    }

    #[test]
    fn entry_sizes_are_compact() {
        assert_eq!(size_of::<DstEntry>(), 24);
        assert_eq!(size_of::<Todo>(), 20);
    }

    /// The original tool's case: 5 on the source, 2 of them and 2 others on the destination.
    #[test]
    fn five_two_two() {
        let mut b = PlanBuilder::new(1);
        for i in [0, 1, 10, 11] {
            b.add_dst(0, h(i), 3);
        }
        b.finish_dst();
        for i in 0..5 {
            b.add_src(h(i), 3);
        }
        let p = b.finish();
        let s = p.stats();
        assert_eq!(s.src.blocks, 5);
        assert_eq!(s.dst.blocks, 4);
        assert_eq!(s.present.blocks, 2);
        assert_eq!(s.missing.blocks, 3);
        assert_eq!(
            s.to_copy,
            Tally {
                blocks: 3,
                bytes: 9
            }
        );
        let mut got: Vec<BlockHash> = p.todo().map(|t| t.hash()).collect();
        got.sort();
        let mut want = vec![h(2), h(3), h(4)];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn duplicates_and_order_do_not_matter() {
        // 1000 blocks listed by 3 source services in different orders, 2 volumes each.
        let mut b = PlanBuilder::new(2);
        for i in 0..300 {
            b.add_dst(0, h(i), 100);
            b.add_dst(0, h(i), 100); // second volume
            if i < 100 {
                b.add_dst(1, h(i), 100);
            }
        }
        b.finish_dst();
        for pass in 0..3u64 {
            for j in 0..1000u64 {
                let i = (j * 7 + pass * 13) % 1000;
                b.add_src(h(i), 100);
                b.add_src(h(i), 100);
            }
        }
        let p = b.finish();
        let s = p.stats();
        assert_eq!(s.src_entries, 6000);
        assert_eq!(s.src.blocks, 1000);
        assert_eq!(s.present.blocks, 300);
        assert_eq!(s.missing.blocks, 700);
        assert_eq!(s.under_replicated.blocks, 200); // 100..300 only on service 0
        assert_eq!(s.to_copy.blocks, 900);
        assert_eq!(s.by_digit.iter().map(|t| t.blocks).sum::<u64>(), 900);
        let t = p.todo().find(|t| t.hash() == h(150)).unwrap();
        assert_eq!(p.dst_holders(&t), vec![0]);
        assert!(p.todo().all(|t| t.hash() != h(50)));
        assert_eq!(p.dst_copies_of_src_blocks().count(), 400);
    }

    /// The interpolating search agrees with a plain binary search, on uniform hashes
    /// and on skewed ones (every hash sharing a long prefix), hits and misses alike.
    #[test]
    fn holder_range_matches_binary_search() {
        let seed = 0x5eed_u64;
        println!("seed {seed}");
        let mut x = seed;
        let mut next = move || {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for (n, skew) in [
            (0, 0),
            (1, 0),
            (7, 0),
            (500, 0),
            (5000, 0),
            (3000, 6),
            (3000, 14),
        ] {
            let mut v: Vec<DstEntry> = (0..n)
                .map(|_| {
                    let mut hash = [0u8; 16];
                    hash[..8].copy_from_slice(&next().to_be_bytes());
                    hash[8..].copy_from_slice(&next().to_be_bytes());
                    // Skewed: the first `skew` bytes are all zero.
                    hash[..skew].fill(0);
                    let size = (next() % 3) as u32;
                    DstEntry {
                        hash,
                        size,
                        service: (next() % 2) as u16,
                        seen: false,
                    }
                })
                .collect();
            // Duplicates (the same block on two services).
            let dups: Vec<DstEntry> = v
                .iter()
                .step_by(3)
                .map(|e| DstEntry { service: 7, ..*e })
                .collect();
            v.extend(dups);
            v.sort();
            let mut probes: Vec<([u8; 16], u32)> = v.iter().map(|e| (e.hash, e.size)).collect();
            for _ in 0..n + 10 {
                let mut hash = [0u8; 16];
                hash[..8].copy_from_slice(&next().to_be_bytes());
                hash[..skew].fill(0);
                probes.push((hash, (next() % 3) as u32));
            }
            probes.push(([0; 16], 0));
            probes.push(([0xff; 16], u32::MAX));
            for (hash, size) in probes {
                let k = key(&hash, size);
                let lo = v.partition_point(|e| key(&e.hash, e.size) < k);
                let hi = v.partition_point(|e| key(&e.hash, e.size) <= k);
                assert_eq!(
                    holder_range(&v, 0, &hash, size),
                    (lo, hi),
                    "n {n} skew {skew}"
                );
            }
        }
    }

    #[test]
    fn size_is_part_of_identity() {
        let mut b = PlanBuilder::new(1);
        b.add_dst(0, h(1), 5);
        b.finish_dst();
        b.add_src(h(1), 6);
        let p = b.finish();
        assert_eq!(p.stats().missing.blocks, 1);
        assert_eq!(p.stats().dst.blocks, 1);
    }

    /// Memory: at most 40 bytes per distinct block even when every source block is
    /// listed twice and half of them are on the destination (the S5 shape, scaled down).
    #[test]
    fn memory_per_block_is_bounded() {
        let n = 200_000u64;
        let mut b = PlanBuilder::new(1);
        for i in 0..n / 2 {
            b.add_dst(0, h(i), 1000);
        }
        b.finish_dst();
        for i in 0..n {
            b.add_src(h(i), 1000);
            b.add_src(h(i), 1000);
        }
        let p = b.finish();
        assert_eq!(p.stats().src.blocks, n);
        let per_block = p.heap_bytes() as f64 / n as f64;
        assert!(per_block <= 40.0, "{per_block} bytes per block");
    }
}
