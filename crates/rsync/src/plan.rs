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
/// The "a collection refers to it" flag (`--by-collections`).
const REFERENCED: u32 = 1 << 30;
/// The "to top up for what its collections ask" flag (`--by-collections`).
const TOPPED: u32 = 1 << 29;
/// Every flag: what is left is the holder set id.
const FLAGS: u32 = SEEN | REFERENCED | TOPPED;

/// What the destination should hold of every block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// The replication level.
    pub replicas: u32,
    /// Classes that must each hold `replicas`; 0: any class counts.
    pub classes: ClassSet,
}

impl Want {
    /// The same, as replicas per class.
    pub fn profile(&self) -> Profile {
        if self.classes == 0 {
            return Box::new([(0, self.replicas)]);
        }
        bits(self.classes).map(|b| (b, self.replicas)).collect()
    }
}

/// Replicas wanted per class, as `(class bit, replicas)` sorted by bit; bit 0 means
/// "in any class". What a block's collections ask of it: keep-balance's `Desired`,
/// the most any of them asks in each class.
pub type Profile = Box<[(ClassSet, u32)]>;

/// The single bits of `set`, lowest first.
fn bits(set: ClassSet) -> impl Iterator<Item = ClassSet> {
    (0..64).map(|b| 1u64 << b).filter(move |bit| set & bit != 0)
}

/// The most either profile asks in each class.
fn combine(a: &[(ClassSet, u32)], b: &[(ClassSet, u32)]) -> Profile {
    let mut v: Vec<(ClassSet, u32)> = a.to_vec();
    for &(bit, n) in b {
        match v.iter_mut().find(|(c, _)| *c == bit) {
            Some(e) => e.1 = e.1.max(n),
            None => v.push((bit, n)),
        }
    }
    v.sort_unstable();
    v.into_boxed_slice()
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

/// A block, ordered by (hash, size).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
struct Key {
    hash: [u8; 16],
    size: u32,
}

/// The (hash, size) order in one integer comparison: a hash read big-endian sorts
/// like its bytes, and compares in two instructions instead of a `memcmp` call.
fn key(hash: &[u8; 16], size: u32) -> (u128, u32) {
    (u128::from_be_bytes(*hash), size)
}

// By hand rather than derived: the derived order compares the hash arrays through
// `memcmp`, and sorting the blocks to copy was a sixth of S5's CPU.
impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        key(&self.hash, self.size).cmp(&key(&other.hash, other.size))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
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
    /// The set of each device alone, by device: asked for every destination entry, so
    /// kept out of the hash map (SipHash per entry was 3% of S5's CPU).
    singles: Vec<Option<u32>>,
    want: Want,
    default: Profile,
    devices: Vec<DeviceWeight>,
}

impl HolderSets {
    fn new(want: Want, devices: Vec<DeviceWeight>) -> HolderSets {
        let mut h = HolderSets {
            sets: Vec::new(),
            present: Vec::new(),
            ids: HashMap::new(),
            with: HashMap::new(),
            singles: Vec::new(),
            want,
            default: want.profile(),
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
        assert!(id < TOPPED, "too many distinct holder sets");
        self.present
            .push(enough(&set, &self.devices, &self.default));
        self.ids.insert(set.clone(), id);
        self.sets.push(set);
        id
    }

    fn single(&mut self, device: u16) -> u32 {
        let d = usize::from(device);
        if let Some(Some(id)) = self.singles.get(d) {
            return *id;
        }
        let id = self.add(0, device);
        if self.singles.len() <= d {
            self.singles.resize(d + 1, None);
        }
        self.singles[d] = Some(id);
        id
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
/// the holders, counted in each wanted class (in any class for bit 0).
pub fn shortfall(holders: &[u16], devices: &[DeviceWeight], want: &[(ClassSet, u32)]) -> Shortfall {
    let sum = |class: ClassSet| -> u32 {
        holders
            .iter()
            .map(|&d| devices[usize::from(d)])
            .filter(|d| class == 0 || d.classes & class != 0)
            .map(|d| d.replication)
            .fold(0u32, u32::saturating_add)
    };
    let mut replicas = 0;
    let mut classes = Vec::new();
    for &(bit, n) in want {
        let lack = n.saturating_sub(sum(bit));
        replicas = replicas.max(lack);
        if bit != 0 && lack > 0 {
            classes.push((bit, lack));
        }
    }
    Shortfall { replicas, classes }
}

/// Whether blocks on `holders` meet `want`.
fn enough(holders: &[u16], devices: &[DeviceWeight], want: &[(ClassSet, u32)]) -> bool {
    shortfall(holders, devices, want).is_none()
}

/// Sorts a bucket and merges the records of one block into one (union of holders).
fn merge_bucket(b: &mut Vec<DstRec>, sets: &mut HolderSets) {
    // Stable: the part merged last time is one sorted run, so this is a merge.
    b.sort_by_key(DstRec::key);
    let mut w = 0;
    for r in 0..b.len() {
        if w > 0 && b[w - 1].key() == b[r].key() {
            let flags = (b[w - 1].set | b[r].set) & FLAGS;
            let set = sets.union(b[w - 1].set & !FLAGS, b[r].set & !FLAGS);
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
    /// Source blocks stored at or after this time (ns) are young: a client may still
    /// hold a signed locator for them (`--skip-unreferenced`). `None`: not tracked.
    young_since: Option<i64>,
    young: Vec<Key>,
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
            young_since: None,
            young: Vec::new(),
        }
    }

    /// Remembers which source blocks were stored at or after `since` (ns since the
    /// epoch): [`Plan::finish_collections`] never skips those.
    pub fn track_young(&mut self, since: i64) {
        self.young_since = Some(since);
    }

    /// Heap bytes held so far by the records (capacity, not length): what the plan
    /// will take, give or take its holder sets, checked against `--max-plan-memory`
    /// while the indexes stream in.
    pub fn heap_bytes(&self) -> u64 {
        (records_heap(&self.dst, &self.todo, &self.offsets)
            + self.young.capacity() * size_of::<Key>()) as u64
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
            if self.sets.present[(r.set & !FLAGS) as usize] {
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

    /// [`PlanBuilder::add_src`], for an entry stored at `mtime_ns`.
    pub fn add_src_at(&mut self, hash: BlockHash, size: u64, mtime_ns: i64) {
        if self.young_since.is_some_and(|t| mtime_ns >= t) {
            if let Ok(size) = u32::try_from(size) {
                if self.young.len() == self.young.capacity() && !self.young.is_empty() {
                    self.young.sort_unstable();
                    self.young.dedup();
                }
                reserve_quarter(&mut self.young);
                self.young.push(Key { hash: hash.0, size });
            }
        }
        self.add_src(hash, size);
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
        self.young.sort_unstable();
        self.young.dedup();
        self.young.shrink_to_fit();
        for bucket in &self.dst {
            for r in bucket {
                stats.dst.add(u64::from(r.size));
                if r.set & SEEN != 0 {
                    stats.src.add(u64::from(r.size));
                }
            }
        }
        let mut plan = Plan {
            dst: self.dst,
            offsets: self.offsets,
            todo: self.todo,
            sets: self.sets.sets,
            devices: self.sets.devices,
            want: self.sets.want,
            stats: PlanStats::default(),
            profiles: vec![self.sets.default],
            profile_ids: HashMap::new(),
            combined: HashMap::new(),
            special: HashMap::new(),
            young: self.young,
            referenced: Vec::new(),
            extra: Vec::new(),
            not_at_source: std::collections::HashSet::new(),
        };
        plan.recount();
        // The source's blocks: those the destination lists too, and the missing ones.
        stats.src.absorb(&plan.stats.missing);
        stats.present = Tally {
            blocks: stats.src.blocks - plan.stats.missing.blocks,
            bytes: stats.src.bytes - plan.stats.missing.bytes,
        };
        stats.oversize = self.oversize;
        for (a, b) in [
            (&mut stats.missing, plan.stats.missing),
            (&mut stats.under_replicated, plan.stats.under_replicated),
            (&mut stats.to_copy, plan.stats.to_copy),
        ] {
            *a = b;
        }
        stats.by_digit = plan.stats.by_digit;
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
    /// `--by-collections`: blocks whose collections ask for another replication or
    /// other classes than the defaults.
    pub special_wants: u64,
    /// `--by-collections`: blocks the destination held enough of by default, sent
    /// again for what their collections ask (also in `under_replicated`).
    pub topped_up: Tally,
    /// `--by-collections`: blocks the destination lacks that no collection refers to
    /// (skipped or not).
    pub unreferenced: Tally,
    /// Of those, blocks younger than the source's blob signature TTL: a client may
    /// still save them into a collection, so they are copied.
    pub unreferenced_young: Tally,
    /// Of those, blocks `--skip-unreferenced` left behind (not in `to_copy`).
    pub unreferenced_skipped: Tally,
    /// Blocks collections refer to that no source keep service lists (lost before
    /// the migration; keep-balance reports them as missing too).
    pub referenced_not_at_source: u64,
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
    /// What blocks may ask for: the first is the plan's [`Want`], the rest what collections
    /// ask of a few blocks (`--by-collections`).
    profiles: Vec<Profile>,
    profile_ids: HashMap<Profile, u32>,
    /// (profile, profile) -> their combination, so that a block's many collections
    /// cost no allocation.
    combined: HashMap<(u32, u32), u32>,
    /// Blocks that ask for another profile than the first: the exceptions, kept beside the
    /// compact records (most blocks ask for the defaults).
    special: HashMap<Key, u32>,
    /// Source blocks younger than the blob signature TTL, sorted (only when tracked).
    young: Vec<Key>,
    /// While collections are read: one bit per `todo` record, set once a collection
    /// refers to it.
    referenced: Vec<Vec<u64>>,
    /// While collections are read: present blocks to top up.
    extra: Vec<Todo>,
    /// Blocks collections refer to that the source does not list.
    not_at_source: std::collections::HashSet<Key>,
}

/// Where a block a collection refers to stands in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Referral {
    /// Outside the hash range of this plan (another pass or shard).
    Elsewhere,
    /// A block to copy.
    ToCopy,
    /// The destination holds what is asked.
    Present,
    /// The destination holds enough for the defaults but not what is asked: it is
    /// added to the blocks to copy.
    ToppedUp,
    /// No source keep service lists it.
    NotAtSource,
}

/// Distinct blocks remembered as [`Referral::NotAtSource`] (beyond this, they are
/// counted per reference).
const NOT_AT_SOURCE_CAP: usize = 1 << 20;

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
        self.special_wants += o.special_wants;
        for (a, b) in [
            (&mut self.topped_up, &o.topped_up),
            (&mut self.unreferenced, &o.unreferenced),
            (&mut self.unreferenced_young, &o.unreferenced_young),
            (&mut self.unreferenced_skipped, &o.unreferenced_skipped),
        ] {
            a.absorb(b);
        }
        self.referenced_not_at_source += o.referenced_not_at_source;
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
            Some(i) => &self.sets[(self.dst[b][lo + i].set & !FLAGS) as usize],
            None => &[],
        }
    }

    /// What `todo` lacks on the destination.
    pub fn shortfall(&self, todo: &Todo) -> Shortfall {
        shortfall(self.dst_holders(todo), &self.devices, self.profile(todo))
    }

    /// What the plan aims for by default.
    pub fn want(&self) -> Want {
        self.want
    }

    /// What `todo` asks for: the default, or what its collections ask.
    pub fn profile(&self, todo: &Todo) -> &[(ClassSet, u32)] {
        let id = self.special.get(&todo.key).copied().unwrap_or(0);
        &self.profiles[id as usize]
    }

    /// The replication `todo` asks for: the most in any class.
    pub fn wanted_replicas(&self, todo: &Todo) -> u32 {
        self.profile(todo)
            .iter()
            .map(|&(_, n)| n)
            .max()
            .unwrap_or(0)
    }

    /// Aims for `want` from now on (through a keepproxy the plan counts a listed
    /// block as present, but a write still asks for the replicas and classes wanted).
    pub fn set_want(&mut self, want: Want) {
        self.want = want;
        self.profiles[0] = want.profile();
    }

    /// Every profile blocks may ask for; the first is the default.
    pub fn profiles(&self) -> &[Profile] {
        &self.profiles
    }

    /// The id of `profile`, to pass to [`Plan::refer`].
    pub fn profile_id(&mut self, profile: Profile) -> u32 {
        if *profile == *self.profiles[0] {
            return 0;
        }
        if let Some(&id) = self.profile_ids.get(&profile) {
            return id;
        }
        let id = self.profiles.len() as u32;
        self.profiles.push(profile.clone());
        self.profile_ids.insert(profile, id);
        id
    }

    fn combine_ids(&mut self, a: u32, b: u32) -> u32 {
        if a == b {
            return a;
        }
        let k = (a.min(b), a.max(b));
        if let Some(&c) = self.combined.get(&k) {
            return c;
        }
        let p = combine(&self.profiles[a as usize], &self.profiles[b as usize]);
        let c = self.profile_id(p);
        self.combined.insert(k, c);
        c
    }

    /// Records that a collection asking for profile `id` refers to `hash+size`
    /// (call for every block of every collection, then
    /// [`Plan::finish_collections`]). With `top_up`, a block the destination holds
    /// enough of by default but not for what is asked joins the blocks to copy
    /// (not through a keepproxy, whose index cannot tell replicas apart).
    pub fn refer(&mut self, hash: &BlockHash, size: u32, id: u32, top_up: bool) -> Referral {
        let key = Key { hash: hash.0, size };
        let b = usize::from(hash.0[0]);
        self.start_referring();
        if let Ok(i) = self.todo[b].binary_search(&Todo { key }) {
            let word = &mut self.referenced[b][i / 64];
            let was = *word & (1 << (i % 64)) != 0;
            *word |= 1 << (i % 64);
            self.ask(key, id, was);
            return Referral::ToCopy;
        }
        let (lo, hi) = {
            let (_, lo, hi) = range_of(&self.offsets, &hash.0);
            (lo, hi)
        };
        let Some(i) = locate(&self.dst[b][lo..hi], &hash.0, size).map(|i| lo + i) else {
            return self.not_at_source(key);
        };
        let set = self.dst[b][i].set;
        if set & SEEN == 0 {
            return self.not_at_source(key);
        }
        self.dst[b][i].set |= REFERENCED;
        let now = self.ask(key, id, set & REFERENCED != 0);
        let holders = &self.sets[(set & !FLAGS) as usize];
        if !top_up
            || set & TOPPED != 0
            || enough(holders, &self.devices, &self.profiles[now as usize])
        {
            return if set & TOPPED != 0 {
                Referral::ToppedUp
            } else {
                Referral::Present
            };
        }
        self.dst[b][i].set |= TOPPED;
        self.extra.push(Todo { key });
        Referral::ToppedUp
    }

    /// Makes room for the "referenced" bits of the blocks to copy, once.
    fn start_referring(&mut self) {
        if self.referenced.len() != BUCKETS {
            self.referenced = self
                .todo
                .iter()
                .map(|t| vec![0u64; t.len().div_ceil(64)])
                .collect();
        }
    }

    /// Adds profile `id` to what `key` asks (`seen`: it asked before); returns what
    /// it asks now.
    fn ask(&mut self, key: Key, id: u32, seen: bool) -> u32 {
        let before = if seen {
            self.special.get(&key).copied().unwrap_or(0)
        } else {
            id
        };
        let now = self.combine_ids(before, id);
        if now == 0 {
            self.special.remove(&key);
        } else {
            self.special.insert(key, now);
        }
        now
    }

    fn not_at_source(&mut self, key: Key) -> Referral {
        if self.not_at_source.len() < NOT_AT_SOURCE_CAP {
            self.not_at_source.insert(key);
        } else if !self.not_at_source.contains(&key) {
            self.stats.referenced_not_at_source += 1;
        }
        Referral::NotAtSource
    }

    /// Ends the reading of collections: counts the blocks to copy no collection
    /// refers to and, with `skip_unreferenced`, drops those not younger than the
    /// blob signature TTL, passing each to `skipped`; adds the blocks to top up.
    pub fn finish_collections(&mut self, skip_unreferenced: bool, mut skipped: impl FnMut(Todo)) {
        // (With no collection at all, nothing is referenced.)
        self.start_referring();
        let referenced = std::mem::take(&mut self.referenced);
        let young = std::mem::take(&mut self.young);
        let (mut unref, mut unref_young, mut dropped) =
            (Tally::default(), Tally::default(), Tally::default());
        let mut todo = std::mem::take(&mut self.todo);
        for (bucket, bits) in todo.iter_mut().zip(&referenced) {
            let mut i = 0;
            bucket.retain(|t| {
                let refd = bits[i / 64] & (1 << (i % 64)) != 0;
                i += 1;
                if refd {
                    // Short of the defaults, but its collections ask for less (or
                    // for other classes the destination already holds).
                    let holders = self.dst_holders(t);
                    return holders.is_empty() || !enough(holders, &self.devices, self.profile(t));
                }
                unref.add(t.size());
                if young.binary_search(&t.key).is_ok() {
                    unref_young.add(t.size());
                    return true;
                }
                if skip_unreferenced {
                    dropped.add(t.size());
                    skipped(*t);
                    return false;
                }
                true
            });
            bucket.shrink_to_fit();
        }
        self.todo = todo;
        let mut topped = Tally::default();
        for t in std::mem::take(&mut self.extra) {
            topped.add(t.size());
            self.todo[usize::from(t.key.hash[0])].push(t);
        }
        for b in &mut self.todo {
            b.sort_unstable();
        }
        self.recount();
        let s = &mut self.stats;
        s.special_wants = self.special.len() as u64;
        s.topped_up = topped;
        s.unreferenced = unref;
        s.unreferenced_young = unref_young;
        s.unreferenced_skipped = dropped;
        s.referenced_not_at_source += self.not_at_source.len() as u64;
        self.not_at_source = std::collections::HashSet::new();
    }

    /// Counts the blocks to copy again (after [`Plan::finish_collections`]).
    fn recount(&mut self) {
        let mut s = PlanStats {
            by_digit: Default::default(),
            ..PlanStats::default()
        };
        for t in self.todo() {
            let size = t.size();
            if self.dst_holders(&t).is_empty() {
                s.missing.add(size);
            } else {
                s.under_replicated.add(size);
            }
            s.to_copy.add(size);
            s.by_digit[usize::from(t.key.hash[0] >> 4)].add(size);
        }
        self.stats.missing = s.missing;
        self.stats.under_replicated = s.under_replicated;
        self.stats.to_copy = s.to_copy;
        self.stats.by_digit = s.by_digit;
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
                self.sets[(r.set & !FLAGS) as usize]
                    .iter()
                    .map(move |&d| (t, d))
            })
    }

    /// Bytes of heap the plan holds (capacity, not length): what `--max-plan-memory`
    /// bounds.
    pub fn heap_bytes(&self) -> usize {
        let s: usize = self.sets.iter().map(|s| s.len() * 2 + 16).sum();
        // A hashbrown entry is the pair plus one control byte.
        let special = self.special.capacity() * (size_of::<(Key, u32)>() + 1);
        let bits: usize = self.referenced.iter().map(|b| b.capacity() * 8).sum();
        records_heap(&self.dst, &self.todo, &self.offsets)
            + s
            + special
            + bits
            + self.young.capacity() * size_of::<Key>()
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

    /// Keys sort as std sorts (hash bytes, size) tuples, including hashes that differ
    /// only in their last byte and sizes that differ only in their high bits.
    #[test]
    fn keys_sort_as_bytes_then_size() {
        let mut keys = Vec::new();
        for i in 0..200u64 {
            let mut hash = h(i % 50).0;
            hash[15] ^= (i % 3) as u8;
            let size = [0, 1, 255, 256, 1 << 24, u32::MAX][(i % 6) as usize];
            keys.push(Key { hash, size });
        }
        let mut want: Vec<([u8; 16], u32)> = keys.iter().map(|k| (k.hash, k.size)).collect();
        want.sort();
        keys.sort();
        let got: Vec<([u8; 16], u32)> = keys.iter().map(|k| (k.hash, k.size)).collect();
        assert_eq!(got, want);
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

    /// What collections ask, as keep-balance counts it: the most any of them asks in
    /// each class; only blocks asking other than the defaults are kept aside; a block
    /// the destination holds enough of by default but not for what is asked is sent
    /// again; blocks no collection refers to are left behind unless young.
    #[test]
    fn collections_decide_each_blocks_want() {
        let (default, archive) = (1u64, 2u64);
        let dev = |classes| DeviceWeight {
            replication: 1,
            classes,
        };
        let devs = vec![dev(default), dev(default), dev(archive), dev(default)];
        let two = Want {
            replicas: 2,
            classes: default,
        };
        let mut b = PlanBuilder::new(two, devs);
        b.track_young(100);
        for (d, i) in [(0, 1), (1, 1), (0, 2), (0, 5), (1, 5), (0, 7)] {
            b.add_dst(d, h(i), 10);
        }
        b.finish_dst();
        for i in [1, 2, 3, 4, 5, 7] {
            b.add_src_at(h(i), 10, 0);
        }
        b.add_src_at(h(6), 10, 200);
        let mut plan = b.finish();
        assert_eq!(plan.stats().to_copy.blocks, 5, "2, 3, 4, 6 and 7");
        assert_eq!(plan.profile_id(Box::new([(default, 2)])), 0, "the default");
        let three = plan.profile_id(Box::new([(default, 3)]));
        let arch = plan.profile_id(Box::new([(archive, 1)]));
        let one = plan.profile_id(Box::new([(default, 1)]));
        assert_eq!(plan.refer(&h(7), 10, one, true), Referral::ToCopy);
        assert_eq!(plan.refer(&h(1), 10, three, true), Referral::ToppedUp);
        assert_eq!(plan.refer(&h(1), 10, 0, true), Referral::ToppedUp);
        assert_eq!(plan.refer(&h(2), 10, 0, true), Referral::ToCopy);
        assert_eq!(plan.refer(&h(2), 10, arch, true), Referral::ToCopy);
        assert_eq!(plan.refer(&h(3), 10, 0, true), Referral::ToCopy);
        assert_eq!(plan.refer(&h(5), 10, 0, true), Referral::Present);
        assert_eq!(plan.refer(&h(99), 10, 0, true), Referral::NotAtSource);
        let mut skipped = Vec::new();
        plan.finish_collections(true, |t| skipped.push(t.hash()));
        assert_eq!(skipped, vec![h(4)], "old and unreferenced");
        let s = plan.stats().clone();
        assert_eq!(
            s.to_copy.blocks, 4,
            "1 (topped up), 2, 3 and 6 (young); not 7, which has the one replica asked"
        );
        assert_eq!(s.topped_up.blocks, 1);
        assert_eq!(s.special_wants, 3, "1, 2 and 7");
        assert_eq!((s.unreferenced.blocks, s.unreferenced_young.blocks), (2, 1));
        assert_eq!(s.unreferenced_skipped.blocks, 1);
        assert_eq!(s.referenced_not_at_source, 1);
        let todo: Vec<Todo> = plan.todo().collect();
        let find = |i| *todo.iter().find(|t| t.hash() == h(i)).unwrap();
        assert_eq!(
            plan.shortfall(&find(1)),
            Shortfall {
                replicas: 1,
                classes: vec![(default, 1)]
            }
        );
        assert_eq!(
            plan.shortfall(&find(2)),
            Shortfall {
                replicas: 1,
                classes: vec![(default, 1), (archive, 1)]
            }
        );
        assert_eq!(plan.wanted_replicas(&find(2)), 2);
        assert_eq!(plan.wanted_replicas(&find(3)), 2);
    }
}
