//! The plan: which source blocks the destination lacks, held compactly. No I/O.
//!
//! Indexes of hundreds of millions of blocks must fit in memory, so nothing here is a
//! string or a hash set. Destination index entries become 24-byte records (hash, size,
//! and the set of devices holding the block, interned: most blocks share a handful of
//! sets) in 256 buckets by the hash's first byte; entries of one block from several
//! devices merge into one record. Source entries then stream past them: a block the
//! destination holds enough of is marked and dropped, the rest are kept as 20-byte
//! records to copy. Buckets grow by a quarter at a time and are sorted and merged
//! before they grow, so duplicates cost no lasting memory.
//!
//! "Enough" is the destination's rule ([`crate::topology`]): the replication of the
//! distinct devices holding a block reaches the wanted level in every wanted class.
//! The checkpoint is the destination index (#7167): a device that lists a block is
//! never sent it again.

use std::collections::HashMap;

use keep_client::BlockHash;

use crate::topology::ClassSet;

/// Number of buckets: one per value of the hash's first byte.
const BUCKETS: usize = 256;
/// The "seen at the source" flag, in a record's `set` field.
const SEEN: u32 = 1 << 31;

/// What the destination should hold of every block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// The replication level.
    pub replicas: u32,
    /// Classes that must each hold `replicas`; 0: any class counts.
    pub classes: ClassSet,
}

/// A device as the plan counts it: replicas per block, and its classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceWeight {
    /// Replicas a block on it counts for.
    pub replication: u32,
    /// Its classes.
    pub classes: ClassSet,
}

/// One destination block: hash, size, and its holder set (with [`SEEN`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct DstRec {
    hash: [u8; 16],
    size: u32,
    set: u32,
}

/// A block to copy (or top up): 20 bytes. Ordered by (hash, size).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub struct Todo {
    key: Key,
}

/// The (hash, size) order in one integer comparison: a hash read big-endian sorts
/// like its bytes, and compares in two instructions instead of a `memcmp` call.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
struct Key {
    hash: [u8; 16],
    size: u32,
}

fn key(hash: &[u8; 16], size: u32) -> (u128, u32) {
    (u128::from_be_bytes(*hash), size)
}

impl DstRec {
    fn key(&self) -> (u128, u32) {
        key(&self.hash, self.size)
    }
}

impl Todo {
    /// A block whose hash starts with `first` (the rest zero), for tests.
    #[cfg(test)]
    pub(crate) fn for_test(first: u8, size: u32) -> Todo {
        let mut hash = [0; 16];
        hash[0] = first;
        Todo {
            key: Key { hash, size },
        }
    }

    /// The block hash.
    pub fn hash(&self) -> BlockHash {
        BlockHash(self.key.hash)
    }

    /// The block size in bytes.
    pub fn size(&self) -> u64 {
        u64::from(self.key.size)
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Tally {
    /// Number of blocks.
    pub blocks: u64,
    /// Sum of their sizes.
    pub bytes: u64,
}

impl Tally {
    /// Counts one block of `size` bytes.
    pub fn add(&mut self, size: u64) {
        self.blocks += 1;
        self.bytes += size;
    }

    /// Adds another tally (of disjoint blocks).
    pub fn absorb(&mut self, o: &Tally) {
        self.blocks += o.blocks;
        self.bytes += o.bytes;
    }
}

/// The distinct sets of devices that hold blocks, each with whether it is enough.
#[derive(Debug)]
struct HolderSets {
    sets: Vec<Box<[u16]>>,
    present: Vec<bool>,
    ids: HashMap<Box<[u16]>, u32>,
    /// (set, device) -> set with the device added: the common step, without allocating.
    with: HashMap<(u32, u16), u32>,
    want: Want,
    devices: Vec<DeviceWeight>,
}

impl HolderSets {
    fn new(want: Want, devices: Vec<DeviceWeight>) -> HolderSets {
        let mut h = HolderSets {
            sets: Vec::new(),
            present: Vec::new(),
            ids: HashMap::new(),
            with: HashMap::new(),
            want,
            devices,
        };
        h.intern(Box::new([]));
        h
    }

    fn intern(&mut self, set: Box<[u16]>) -> u32 {
        if let Some(&id) = self.ids.get(&set) {
            return id;
        }
        let id = u32::try_from(self.sets.len()).expect("fewer than 2^31 holder sets");
        assert!(id < SEEN, "too many distinct holder sets");
        self.present.push(enough(&set, &self.devices, self.want));
        self.ids.insert(set.clone(), id);
        self.sets.push(set);
        id
    }

    fn single(&mut self, device: u16) -> u32 {
        self.add(0, device)
    }

    fn add(&mut self, set: u32, device: u16) -> u32 {
        if let Some(&id) = self.with.get(&(set, device)) {
            return id;
        }
        let mut v = self.sets[set as usize].to_vec();
        if let Err(at) = v.binary_search(&device) {
            v.insert(at, device);
        }
        let id = self.intern(v.into_boxed_slice());
        self.with.insert((set, device), id);
        id
    }

    fn union(&mut self, a: u32, b: u32) -> u32 {
        if a == b {
            return a;
        }
        let mut id = a;
        for i in 0..self.sets[b as usize].len() {
            let d = self.sets[b as usize][i];
            id = self.add(id, d);
        }
        id
    }

    fn without(&mut self, set: u32, device: u16) -> u32 {
        let v: Vec<u16> = self.sets[set as usize]
            .iter()
            .copied()
            .filter(|&d| d != device)
            .collect();
        self.intern(v.into_boxed_slice())
    }
}

/// What a block lacks of [`Want`] on the destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shortfall {
    /// Replicas still to store: the most any wanted class lacks (or the total lacking
    /// when no class is wanted).
    pub replicas: u32,
    /// Each wanted class that lacks replicas (its bit), with how many.
    pub classes: Vec<(ClassSet, u32)>,
}

impl Shortfall {
    /// Whether nothing is lacking.
    pub fn is_none(&self) -> bool {
        self.replicas == 0
    }
}

/// What blocks on `holders` lack of `want`: replicas are the summed replication of
/// the holders, counted in each wanted class (any class when none is wanted).
pub fn shortfall(holders: &[u16], devices: &[DeviceWeight], want: Want) -> Shortfall {
    let sum = |class: ClassSet| -> u32 {
        holders
            .iter()
            .map(|&d| devices[usize::from(d)])
            .filter(|d| class == 0 || d.classes & class != 0)
            .map(|d| d.replication)
            .fold(0u32, u32::saturating_add)
    };
    if want.classes == 0 {
        return Shortfall {
            replicas: want.replicas.saturating_sub(sum(0)),
            classes: Vec::new(),
        };
    }
    let classes: Vec<(ClassSet, u32)> = (0..64)
        .map(|b| 1u64 << b)
        .filter(|bit| want.classes & bit != 0)
        .map(|bit| (bit, want.replicas.saturating_sub(sum(bit))))
        .filter(|&(_, n)| n > 0)
        .collect();
    Shortfall {
        replicas: classes.iter().map(|&(_, n)| n).max().unwrap_or(0),
        classes,
    }
}

/// Whether blocks on `holders` meet `want`.
fn enough(holders: &[u16], devices: &[DeviceWeight], want: Want) -> bool {
    shortfall(holders, devices, want).is_none()
}

/// Sorts a bucket and merges the records of one block into one (union of holders).
fn merge_bucket(b: &mut Vec<DstRec>, sets: &mut HolderSets) {
    // Stable: the part merged last time is one sorted run, so this is a merge.
    b.sort_by_key(DstRec::key);
    let mut w = 0;
    for r in 0..b.len() {
        if w > 0 && b[w - 1].key() == b[r].key() {
            let flags = (b[w - 1].set | b[r].set) & SEEN;
            let set = sets.union(b[w - 1].set & !SEEN, b[r].set & !SEEN);
            b[w - 1].set = set | flags;
        } else {
            b[w] = b[r];
            w += 1;
        }
    }
    b.truncate(w);
}

/// The bucket of `hash`, and the part of it whose hashes share `hash`'s second byte.
fn range_of(offsets: &[u32], hash: &[u8; 16]) -> (usize, usize, usize) {
    let b = usize::from(hash[0]);
    let o = b * 257 + usize::from(hash[1]);
    (b, offsets[o] as usize, offsets[o + 1] as usize)
}

/// Where `hash+size` is in `range` (sorted records whose hashes share their first two
/// bytes), if it is there. MD5 hashes are uniform, so the next bytes of the hash say
/// almost exactly where it is: start there and walk. One cache miss instead of one
/// per step of a binary search, which was half of the index phase at 10 million
/// blocks (BENCHMARKS.md, S5); skewed hashes only make the walk longer.
fn locate(range: &[DstRec], hash: &[u8; 16], size: u32) -> Option<usize> {
    let n = range.len();
    if n == 0 {
        return None;
    }
    let frac = u64::from_be_bytes(hash[2..10].try_into().expect("8 bytes"));
    let mut i = ((u128::from(frac) * n as u128) >> 64) as usize;
    let k = key(hash, size);
    while i > 0 && range[i].key() > k {
        i -= 1;
    }
    while i < n && range[i].key() < k {
        i += 1;
    }
    (i < n && range[i].key() == k).then_some(i)
}

/// Collects the destination index, then the source index, into a [`Plan`].
///
/// Call [`PlanBuilder::add_dst`] for every destination entry, then
/// [`PlanBuilder::finish_dst`] once, then [`PlanBuilder::add_src`] for every source
/// entry (any order, duplicates allowed), then [`PlanBuilder::finish`].
#[derive(Debug)]
pub struct PlanBuilder {
    sets: HolderSets,
    dst: Vec<Vec<DstRec>>,
    /// Per bucket after `finish_dst`: where each value of the hash's second byte
    /// starts (257 offsets), so a lookup searches ~1/65536 of the records.
    offsets: Vec<u32>,
    todo: Vec<Vec<Todo>>,
    src_entries: u64,
    dst_entries: u64,
    /// Sizes too large for a Keep block (cannot happen with a sane server).
    oversize: u64,
}

impl PlanBuilder {
    /// A builder for `want` on a destination of `devices` (indexed as in
    /// [`PlanBuilder::add_dst`]).
    pub fn new(want: Want, devices: Vec<DeviceWeight>) -> PlanBuilder {
        PlanBuilder {
            sets: HolderSets::new(want, devices),
            dst: (0..BUCKETS).map(|_| Vec::new()).collect(),
            offsets: Vec::new(),
            todo: (0..BUCKETS).map(|_| Vec::new()).collect(),
            src_entries: 0,
            dst_entries: 0,
            oversize: 0,
        }
    }

    /// Heap bytes held so far by the records (capacity, not length): what the plan
    /// will take, give or take its holder sets, checked against `--max-plan-memory`
    /// while the indexes stream in.
    pub fn heap_bytes(&self) -> u64 {
        records_heap(&self.dst, &self.todo, &self.offsets) as u64
    }

    /// Records that destination device `device` lists `hash+size`.
    pub fn add_dst(&mut self, device: u16, hash: BlockHash, size: u64) {
        debug_assert!(self.offsets.is_empty(), "add_dst after finish_dst");
        let Ok(size) = u32::try_from(size) else {
            self.oversize += 1;
            return;
        };
        self.dst_entries += 1;
        let set = self.sets.single(device);
        let b = &mut self.dst[usize::from(hash.0[0])];
        if b.len() == b.capacity() && !b.is_empty() {
            // Merge the records of one block (listed by several devices, or twice by
            // a retried index) before paying for more room.
            merge_bucket(b, &mut self.sets);
        }
        reserve_quarter(b);
        b.push(DstRec {
            hash: hash.0,
            size,
            set,
        });
    }

    /// Forgets what device `device` listed: its index failed part-way and is read
    /// again from the start (a block trashed in between must not count).
    pub fn forget_dst(&mut self, device: u16) {
        debug_assert!(self.offsets.is_empty(), "forget_dst after finish_dst");
        let PlanBuilder { sets, dst, .. } = self;
        for b in dst.iter_mut() {
            for r in b.iter_mut() {
                r.set = sets.without(r.set, device);
            }
            b.retain(|r| r.set != 0);
        }
    }

    /// Ends the destination phase: sorts and merges every bucket.
    pub fn finish_dst(&mut self) {
        for b in &mut self.dst {
            merge_bucket(b, &mut self.sets);
            b.shrink_to_fit();
        }
        self.offsets = vec![0u32; BUCKETS * 257];
        for (b, off) in self.dst.iter().zip(self.offsets.chunks_exact_mut(257)) {
            for r in b {
                off[usize::from(r.hash[1]) + 1] += 1;
            }
            for i in 1..257 {
                off[i] += off[i - 1];
            }
        }
    }

    /// The record of `hash+size`, if any: its bucket and index.
    fn find(&self, hash: &[u8; 16], size: u32) -> Option<(usize, usize)> {
        let (b, lo, hi) = range_of(&self.offsets, hash);
        locate(&self.dst[b][lo..hi], hash, size).map(|i| (b, lo + i))
    }

    /// Records that the source lists `hash+size`. Must follow [`PlanBuilder::finish_dst`].
    pub fn add_src(&mut self, hash: BlockHash, size: u64) {
        assert!(!self.offsets.is_empty(), "add_src before finish_dst");
        let Ok(size) = u32::try_from(size) else {
            self.oversize += 1;
            return;
        };
        self.src_entries += 1;
        if let Some((b, i)) = self.find(&hash.0, size) {
            let r = &mut self.dst[b][i];
            r.set |= SEEN;
            if self.sets.present[(r.set & !SEEN) as usize] {
                return;
            }
        }
        let t = &mut self.todo[usize::from(hash.0[0])];
        if t.len() == t.capacity() && !t.is_empty() {
            // Stable: merges with the run sorted last time (see add_dst).
            t.sort();
            t.dedup();
        }
        reserve_quarter(t);
        t.push(Todo {
            key: Key { hash: hash.0, size },
        });
    }

    /// Ends the source phase and returns the plan.
    pub fn finish(mut self) -> Plan {
        let mut stats = PlanStats {
            src_entries: self.src_entries,
            dst_entries: self.dst_entries,
            replicas: u64::from(self.sets.want.replicas),
            ..PlanStats::default()
        };
        for b in &mut self.todo {
            b.sort();
            b.dedup();
            b.shrink_to_fit();
        }
        for bucket in &self.dst {
            for r in bucket {
                stats.dst.add(u64::from(r.size));
                if r.set & SEEN != 0 {
                    stats.src.add(u64::from(r.size));
                }
            }
        }
        let plan = Plan {
            dst: self.dst,
            offsets: self.offsets,
            todo: self.todo,
            sets: self.sets.sets,
            devices: self.sets.devices,
            want: self.sets.want,
            stats: PlanStats::default(),
        };
        for t in plan.todo() {
            let size = t.size();
            if plan.dst_holders(&t).is_empty() {
                stats.src.add(size);
                stats.missing.add(size);
            } else {
                stats.under_replicated.add(size);
            }
            stats.to_copy.add(size);
            stats.by_digit[usize::from(t.key.hash[0] >> 4)].add(size);
        }
        stats.present = Tally {
            blocks: stats.src.blocks - stats.missing.blocks,
            bytes: stats.src.bytes - stats.missing.bytes,
        };
        stats.oversize = self.oversize;
        Plan { stats, ..plan }
    }
}

/// What the indexes said, in numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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
    /// Source blocks the destination lists at all.
    pub present: Tally,
    /// Source blocks the destination does not list at all.
    pub missing: Tally,
    /// Source blocks the destination holds too few replicas of (or not in every
    /// wanted class).
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
    dst: Vec<Vec<DstRec>>,
    offsets: Vec<u32>,
    todo: Vec<Vec<Todo>>,
    sets: Vec<Box<[u16]>>,
    devices: Vec<DeviceWeight>,
    want: Want,
    stats: PlanStats,
}

impl PlanStats {
    /// Adds the numbers of a plan over other blocks (another pass or shard): the
    /// hash ranges are disjoint, so every count adds up.
    pub fn absorb(&mut self, o: &PlanStats) {
        self.replicas = self.replicas.max(o.replicas);
        self.src_entries += o.src_entries;
        self.dst_entries += o.dst_entries;
        for (a, b) in [
            (&mut self.src, &o.src),
            (&mut self.dst, &o.dst),
            (&mut self.present, &o.present),
            (&mut self.missing, &o.missing),
            (&mut self.under_replicated, &o.under_replicated),
            (&mut self.to_copy, &o.to_copy),
        ] {
            a.absorb(b);
        }
        for (a, b) in self.by_digit.iter_mut().zip(&o.by_digit) {
            a.absorb(b);
        }
        self.oversize += o.oversize;
    }
}

impl Plan {
    /// Heap bytes any plan holds whatever its blocks: the buckets and their offsets
    /// (the fixed part of [`Plan::heap_bytes`]).
    pub const FIXED_HEAP: u64 =
        (BUCKETS * 257 * 4 + 2 * BUCKETS * std::mem::size_of::<Vec<u8>>()) as u64;

    /// The numbers.
    pub fn stats(&self) -> &PlanStats {
        &self.stats
    }

    /// Every block to copy or top up, in hash order.
    pub fn todo(&self) -> impl Iterator<Item = Todo> + '_ {
        self.todo.iter().flatten().copied()
    }

    /// Destination devices that already hold `todo` (empty for a missing block).
    pub fn dst_holders(&self, todo: &Todo) -> &[u16] {
        let (hash, size) = (&todo.key.hash, todo.key.size);
        let (b, lo, hi) = range_of(&self.offsets, hash);
        match locate(&self.dst[b][lo..hi], hash, size) {
            Some(i) => &self.sets[(self.dst[b][lo + i].set & !SEEN) as usize],
            None => &[],
        }
    }

    /// What `todo` lacks on the destination.
    pub fn shortfall(&self, todo: &Todo) -> Shortfall {
        shortfall(self.dst_holders(todo), &self.devices, self.want)
    }

    /// What the plan aims for.
    pub fn want(&self) -> Want {
        self.want
    }

    /// Aims for `want` from now on (through a keepproxy the plan counts a listed
    /// block as present, but a write still asks for the replicas and classes wanted).
    pub fn set_want(&mut self, want: Want) {
        self.want = want;
    }

    /// Every (block, destination device) pair for blocks the source also lists:
    /// what `--verify-data` reads back.
    pub fn dst_copies_of_src_blocks(&self) -> impl Iterator<Item = (Todo, u16)> + '_ {
        self.dst
            .iter()
            .flatten()
            .filter(|r| r.set & SEEN != 0)
            .flat_map(|r| {
                let t = Todo {
                    key: Key {
                        hash: r.hash,
                        size: r.size,
                    },
                };
                self.sets[(r.set & !SEEN) as usize]
                    .iter()
                    .map(move |&d| (t, d))
            })
    }

    /// Bytes of heap the plan holds (capacity, not length): what `--max-plan-memory`
    /// bounds.
    pub fn heap_bytes(&self) -> usize {
        let s: usize = self.sets.iter().map(|s| s.len() * 2 + 16).sum();
        records_heap(&self.dst, &self.todo, &self.offsets) + s
    }
}

/// Heap bytes of a plan's records (capacity, not length) and bucket vectors.
fn records_heap(dst: &[Vec<DstRec>], todo: &[Vec<Todo>], offsets: &[u32]) -> usize {
    let d: usize = dst.iter().map(|b| b.capacity() * size_of::<DstRec>()).sum();
    let t: usize = todo.iter().map(|b| b.capacity() * size_of::<Todo>()).sum();
    d + t + offsets.len() * 4 + 2 * BUCKETS * size_of::<Vec<u8>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u64) -> BlockHash {
        BlockHash::of(&i.to_le_bytes())
    }

    /// `n` devices of replication 1 in class bit 0.
    fn devices(n: usize) -> Vec<DeviceWeight> {
        vec![
            DeviceWeight {
                replication: 1,
                classes: 1
            };
            n
        ]
    }

    fn want(replicas: u32) -> Want {
        Want {
            replicas,
            classes: 1,
        }
    }

    #[test]
    fn record_sizes_are_compact() {
        assert_eq!(size_of::<DstRec>(), 24);
        assert_eq!(size_of::<Todo>(), 20);
    }

    /// The original tool's case: 5 on the source, 2 of them and 2 others on the destination.
    #[test]
    fn five_two_two() {
        let mut b = PlanBuilder::new(want(1), devices(1));
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
        // 1000 blocks listed by 3 source services in different orders, twice each.
        let mut b = PlanBuilder::new(want(2), devices(2));
        for i in 0..300 {
            b.add_dst(0, h(i), 100);
            b.add_dst(0, h(i), 100); // listed twice (a retried index)
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
        assert_eq!(s.under_replicated.blocks, 200); // 100..300 only on device 0
        assert_eq!(s.to_copy.blocks, 900);
        assert_eq!(s.by_digit.iter().map(|t| t.blocks).sum::<u64>(), 900);
        let t = p.todo().find(|t| t.hash() == h(150)).unwrap();
        assert_eq!(p.dst_holders(&t), [0]);
        assert!(p.todo().all(|t| t.hash() != h(50)));
        assert_eq!(p.dst_copies_of_src_blocks().count(), 400);
    }

    /// Replicas are the summed replication of the holding devices, in each wanted
    /// class: a volume that keeps 2 copies is enough for 2; a block on the wrong class
    /// is not present; two devices in different classes satisfy two classes.
    #[test]
    fn replication_and_classes_count() {
        let (default, archive) = (1u64, 2u64);
        let devs = vec![
            DeviceWeight {
                replication: 2,
                classes: default,
            },
            DeviceWeight {
                replication: 1,
                classes: archive,
            },
            DeviceWeight {
                replication: 1,
                classes: default,
            },
        ];
        let run = |want: Want, holders: &[u16]| -> u64 {
            let mut b = PlanBuilder::new(want, devs.clone());
            for &d in holders {
                b.add_dst(d, h(1), 10);
            }
            b.finish_dst();
            b.add_src(h(1), 10);
            b.finish().stats().to_copy.blocks
        };
        let two_default = Want {
            replicas: 2,
            classes: default,
        };
        assert_eq!(run(two_default, &[0]), 0, "a volume of replication 2");
        assert_eq!(run(two_default, &[2]), 1, "one copy of two");
        assert_eq!(
            run(two_default, &[1, 2]),
            1,
            "the archive copy does not count"
        );
        let both = Want {
            replicas: 1,
            classes: default | archive,
        };
        assert_eq!(run(both, &[2]), 1);
        assert_eq!(run(both, &[1, 2]), 0);
        let any = Want {
            replicas: 3,
            classes: 0,
        };
        assert_eq!(run(any, &[0, 1]), 0, "2 + 1 in any class");
    }

    /// A device's entries can be taken back (its index is read again).
    #[test]
    fn forget_a_device() {
        let mut b = PlanBuilder::new(want(1), devices(2));
        b.add_dst(0, h(1), 10);
        b.add_dst(1, h(2), 10);
        b.add_dst(1, h(1), 10);
        b.forget_dst(1);
        b.add_dst(1, h(1), 10);
        b.finish_dst();
        for i in 1..=2 {
            b.add_src(h(i), 10);
        }
        let p = b.finish();
        assert_eq!(p.stats().dst.blocks, 1);
        let t = p.todo().next().expect("h(2) is no longer on device 1");
        assert_eq!(t.hash(), h(2));
        assert_eq!(p.stats().to_copy.blocks, 1);
    }

    /// The interpolating search finds exactly what a binary search finds, on uniform
    /// hashes and on skewed ones (a long shared prefix), hits and misses alike.
    #[test]
    fn locate_matches_binary_search() {
        let mut x = 0x5eed_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (n, skew) in [
            (0usize, 0usize),
            (1, 0),
            (7, 0),
            (500, 0),
            (3000, 6),
            (3000, 14),
        ] {
            let mut v: Vec<DstRec> = (0..n)
                .map(|_| {
                    let mut hash = [0u8; 16];
                    hash[..8].copy_from_slice(&next().to_be_bytes());
                    hash[8..].copy_from_slice(&next().to_be_bytes());
                    hash[2..2 + skew.min(14)].fill(0);
                    DstRec {
                        hash,
                        size: (next() % 3) as u32,
                        set: 0,
                    }
                })
                .collect();
            v.sort_by_key(DstRec::key);
            v.dedup_by_key(|r| r.key());
            let mut probes: Vec<([u8; 16], u32)> = v.iter().map(|r| (r.hash, r.size)).collect();
            for _ in 0..n + 10 {
                let mut hash = [0u8; 16];
                hash[..8].copy_from_slice(&next().to_be_bytes());
                hash[2..2 + skew.min(14)].fill(0);
                probes.push((hash, (next() % 3) as u32));
            }
            probes.push(([0; 16], 0));
            probes.push(([0xff; 16], u32::MAX));
            for (hash, size) in probes {
                let k = key(&hash, size);
                let i = v.partition_point(|r| r.key() < k);
                let want = (i < v.len() && v[i].key() == k).then_some(i);
                assert_eq!(locate(&v, &hash, size), want, "n {n} skew {skew}");
            }
        }
    }

    #[test]
    fn size_is_part_of_identity() {
        let mut b = PlanBuilder::new(want(1), devices(1));
        b.add_dst(0, h(1), 5);
        b.finish_dst();
        b.add_src(h(1), 6);
        let p = b.finish();
        assert_eq!(p.stats().missing.blocks, 1);
        assert_eq!(p.stats().dst.blocks, 1);
    }

    /// Memory: at most 40 bytes per distinct block in both common shapes: a first
    /// pass (half the blocks on the destination, on one device; every source block
    /// listed twice) and a second pass (every block on two devices).
    #[test]
    fn memory_per_block_is_bounded() {
        let n = 200_000u64;
        let mut b = PlanBuilder::new(want(1), devices(1));
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
        assert!(per_block <= 40.0, "first pass: {per_block} bytes per block");

        let mut b = PlanBuilder::new(want(2), devices(2));
        for d in 0..2 {
            for i in 0..n {
                b.add_dst(d, h(i), 1000);
            }
        }
        b.finish_dst();
        for i in 0..n {
            b.add_src(h(i), 1000);
        }
        let p = b.finish();
        assert_eq!(p.stats().to_copy.blocks, 0);
        let per_block = p.heap_bytes() as f64 / n as f64;
        assert!(
            per_block <= 40.0,
            "second pass: {per_block} bytes per block"
        );
    }
}
