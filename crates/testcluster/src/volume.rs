//! Volumes ("mounts") of a keepstore: in memory, on disk in the unix-volume layout
//! (§11: `<root>/<3 hex>/<32 hex>`, temp file + rename), or synthetic (contents derived
//! from a seed, for scale tests).

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keep_client::BlockHash;
use md5::{Digest, Md5};
use tokio::sync::mpsc;

/// One index entry: hash, stored size, mtime in ns.
pub(crate) type IndexEntry = (BlockHash, u64, i64);

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Why a write failed.
#[derive(Debug)]
pub(crate) enum WriteError {
    Full,
    Other(String),
}

pub(crate) enum Kind {
    Memory(Mutex<HashMap<BlockHash, (Bytes, i64)>>),
    Dir(PathBuf),
    Synthetic(Synthetic),
}

/// A mount.
pub(crate) struct Volume {
    pub(crate) uuid: String,
    pub(crate) read_only: bool,
    pub(crate) full: AtomicBool,
    /// Copies the volume keeps of each block (`Replication`).
    pub(crate) replication: u64,
    /// Its storage classes (never empty: `default` unless set).
    pub(crate) classes: Vec<String>,
    /// What `/mounts` calls where it lives: the same on every keepstore that mounts it.
    pub(crate) device_id: String,
    pub(crate) kind: Kind,
}

impl Volume {
    pub(crate) fn new(
        uuid: String,
        kind: Kind,
        read_only: bool,
        full: bool,
    ) -> anyhow::Result<Volume> {
        if let Kind::Dir(p) = &kind {
            std::fs::create_dir_all(p)?;
        }
        let device_id = match &kind {
            Kind::Dir(p) => format!("localhost:{}", p.display()),
            Kind::Memory(_) | Kind::Synthetic(_) => format!("memory:{uuid}"),
        };
        Ok(Volume {
            uuid,
            read_only,
            full: AtomicBool::new(full),
            replication: 1,
            classes: vec!["default".to_owned()],
            device_id,
            kind,
        })
    }

    pub(crate) fn writable(&self) -> bool {
        !self.read_only && !matches!(self.kind, Kind::Synthetic(_))
    }

    fn path(root: &std::path::Path, hash: &BlockHash) -> PathBuf {
        let h = hash.to_hex();
        root.join(&h[..3]).join(h)
    }

    /// The stored bytes, or None when the block is absent.
    pub(crate) async fn get(&self, hash: &BlockHash) -> io::Result<Option<Bytes>> {
        match &self.kind {
            Kind::Memory(m) => Ok(lock(m).get(hash).map(|(b, _)| b.clone())),
            Kind::Dir(root) => match tokio::fs::read(Self::path(root, hash)).await {
                Ok(v) => Ok(Some(Bytes::from(v))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Kind::Synthetic(s) => s.get(hash).await,
        }
    }

    /// mtime in ns, if the block is present.
    pub(crate) async fn mtime(&self, hash: &BlockHash) -> Option<i64> {
        match &self.kind {
            Kind::Memory(m) => lock(m).get(hash).map(|(_, t)| *t),
            Kind::Dir(root) => {
                let md = tokio::fs::metadata(Self::path(root, hash)).await.ok()?;
                Some(
                    md.modified()
                        .ok()?
                        .duration_since(UNIX_EPOCH)
                        .ok()?
                        .as_nanos() as i64,
                )
            }
            Kind::Synthetic(s) => s.get(hash).await.ok().flatten().map(|_| s.mtime),
        }
    }

    /// Stores a block; mtime = now.
    pub(crate) async fn put(&self, hash: &BlockHash, data: Bytes) -> Result<(), WriteError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(WriteError::Full);
        }
        match &self.kind {
            Kind::Memory(m) => {
                lock(m).insert(*hash, (data, now_ns()));
                Ok(())
            }
            Kind::Dir(root) => {
                let root = root.clone();
                let hash = *hash;
                tokio::task::spawn_blocking(move || write_file(&root, &hash, &data))
                    .await
                    .map_err(|e| WriteError::Other(e.to_string()))?
                    .map_err(|e| {
                        if e.raw_os_error() == Some(libc::ENOSPC) {
                            WriteError::Full
                        } else {
                            WriteError::Other(e.to_string())
                        }
                    })
            }
            Kind::Synthetic(_) => Err(WriteError::Other("synthetic volume is read-only".into())),
        }
    }

    /// Sets mtime to now; false when absent. (A synthetic volume's mtime is fixed:
    /// it only says whether it holds the block.)
    pub(crate) async fn touch(&self, hash: &BlockHash) -> bool {
        match &self.kind {
            Kind::Synthetic(s) => s.get(hash).await.ok().flatten().is_some(),
            // Set explicitly, as the unix volume does (§11): coarse fs clocks.
            _ => self.set_mtime(hash, SystemTime::now()).await,
        }
    }

    /// Sets the block's mtime (what `/index` and `/mounts/{uuid}/blocks` report) to
    /// `mtime`; false when absent or the volume is synthetic.
    pub(crate) async fn set_mtime(&self, hash: &BlockHash, mtime: SystemTime) -> bool {
        match &self.kind {
            Kind::Memory(m) => match lock(m).get_mut(hash) {
                Some(e) => {
                    e.1 = mtime
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i64);
                    true
                }
                None => false,
            },
            Kind::Dir(root) => {
                let p = Self::path(root, hash);
                tokio::task::spawn_blocking(move || {
                    std::fs::File::options()
                        .write(true)
                        .open(&p)
                        .and_then(|f| f.set_modified(mtime))
                        .is_ok()
                })
                .await
                .unwrap_or(false)
            }
            Kind::Synthetic(_) => false,
        }
    }

    /// Deletes a block; false when absent.
    pub(crate) async fn remove(&self, hash: &BlockHash) -> bool {
        match &self.kind {
            Kind::Memory(m) => lock(m).remove(hash).is_some(),
            Kind::Dir(root) => tokio::fs::remove_file(Self::path(root, hash)).await.is_ok(),
            Kind::Synthetic(_) => false,
        }
    }

    /// Overwrites a stored block with different bytes (same hash): a bad disk.
    pub(crate) async fn corrupt(&self, hash: &BlockHash) -> bool {
        let Ok(Some(data)) = self.get(hash).await else {
            return false;
        };
        let mut v = data.to_vec();
        if v.is_empty() {
            v.push(0);
        } else {
            v[0] ^= 0xff;
        }
        match &self.kind {
            Kind::Memory(m) => {
                if let Some(e) = lock(m).get_mut(hash) {
                    e.0 = Bytes::from(v);
                }
                true
            }
            Kind::Dir(root) => tokio::fs::write(Self::path(root, hash), v).await.is_ok(),
            Kind::Synthetic(_) => false,
        }
    }

    /// Streams the index entries whose hex hash starts with `prefix`, in chunks.
    pub(crate) fn index(&self, prefix: &str, tx: mpsc::Sender<Vec<IndexEntry>>) -> IndexJob {
        let prefix = prefix.to_owned();
        match &self.kind {
            Kind::Memory(m) => {
                let mut v: Vec<IndexEntry> = lock(m)
                    .iter()
                    .filter(|(h, _)| h.has_hex_prefix(&prefix))
                    .map(|(h, (b, t))| (*h, b.len() as u64, *t))
                    .collect();
                v.sort_by_key(|e| e.0.0);
                IndexJob::Ready(v)
            }
            Kind::Dir(root) => {
                let root = root.clone();
                IndexJob::Blocking(Box::new(move || walk_dir(&root, &prefix, &tx)))
            }
            Kind::Synthetic(s) => {
                let (hashes, mtime) = (std::sync::Arc::clone(&s.hashes), s.mtime);
                IndexJob::Blocking(Box::new(move || {
                    let mut chunk = Vec::with_capacity(CHUNK);
                    for p in hashes.listing(&prefix) {
                        let (h, len) = (BlockHash(hashes.hashes[p]), hashes.lens[p]);
                        if prefix.is_empty() || h.has_hex_prefix(&prefix) {
                            chunk.push((h, u64::from(len), mtime));
                            if chunk.len() == CHUNK
                                && tx.blocking_send(std::mem::take(&mut chunk)).is_err()
                            {
                                return Ok(());
                            }
                        }
                    }
                    if !chunk.is_empty() {
                        let _ = tx.blocking_send(chunk);
                    }
                    Ok(())
                }))
            }
        }
    }
}

const CHUNK: usize = 4096;

/// How an index listing is produced.
pub(crate) enum IndexJob {
    Ready(Vec<IndexEntry>),
    Blocking(Box<dyn FnOnce() -> io::Result<()> + Send>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_file(root: &std::path::Path, hash: &BlockHash, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let h = hash.to_hex();
    let dir = root.join(&h[..3]);
    std::fs::create_dir_all(&dir)?;
    // A temp file in the same directory, then a rename: partial blocks never show (§5.4).
    let tmp = dir.join(format!("tmp{h}{}", rand::random::<u32>()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.set_modified(SystemTime::now())?;
        drop(f);
        std::fs::rename(&tmp, dir.join(&h))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn walk_dir(
    root: &std::path::Path,
    prefix: &str,
    tx: &mpsc::Sender<Vec<IndexEntry>>,
) -> io::Result<()> {
    let mut chunk = Vec::with_capacity(CHUNK);
    for d in std::fs::read_dir(root)? {
        let d = d?;
        let name = d.file_name();
        let Some(name) = name.to_str() else { continue };
        // Index directories match ^[0-9a-f]+$ (§11); skip ones that cannot hold the prefix.
        if !is_hex(name) || !(prefix.starts_with(name) || name.starts_with(prefix)) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(d.path()) else {
            continue;
        };
        for f in files {
            let f = f?;
            let fname = f.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            if fname.len() != 32 || !is_hex(fname) || !fname.starts_with(prefix) {
                continue;
            }
            let Ok(md) = f.metadata() else { continue };
            let Ok(hash) = BlockHash::from_hex(fname) else {
                continue;
            };
            let mtime = md
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            chunk.push((hash, md.len(), mtime));
            if chunk.len() == CHUNK && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(chunk);
    }
    Ok(())
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Block `i` of a synthetic volume: `i` as 8 little-endian bytes, 8 bytes mixed from
/// (seed, i), then filler derived from the seed; 48..=175 bytes long (the length is
/// derived from (seed, i)) so 10 million hashes take seconds, not minutes.
pub fn synthetic_block(seed: u64, i: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(176);
    synthetic_block_into(seed, i, &mut v);
    v
}

/// [`synthetic_block`] into a reused buffer. Only the first 16 bytes depend on `i`;
/// the rest is a seed-derived pattern, so a block costs one mix and a copy (this
/// crate runs at opt-level 0 in test builds, where per-byte work shows).
fn synthetic_block_into(seed: u64, i: u64, v: &mut Vec<u8>) {
    let pattern = pattern(seed);
    let mix = splitmix(seed ^ splitmix(i));
    let len = 48 + (mix % 128) as usize;
    v.clear();
    v.extend_from_slice(&pattern[..len]);
    v[..8].copy_from_slice(&i.to_le_bytes());
    v[8..16].copy_from_slice(&mix.to_le_bytes());
}

/// 176 filler bytes derived from the seed.
fn pattern(seed: u64) -> [u8; 176] {
    let mut p = [0u8; 176];
    let mut state = seed;
    for c in p.chunks_mut(8) {
        state = splitmix(state);
        c.copy_from_slice(&state.to_le_bytes());
    }
    p
}

/// A read-only volume of `n` derived blocks. Their hashes are computed once, when the
/// volume is made (21 bytes per block, on all cores): a real keepstore lists its index
/// from file names without reading data, so a listing must not cost an MD5 per line
/// here either, or every index benchmark would mostly measure this test fixture
/// (BENCHMARKS.md, S5). Listed in the order a real Directory volume lists (keepstore
/// 2.7.4 and 3.2.1, `unix_volume.go`): its `<3 hex>` directories in the order
/// `Readdirnames` returns them (unsorted: a seeded shuffle here), the blocks of each
/// sorted by name (`os.ReadDir` sorts); a prefix lists only the directories it
/// matches.
pub(crate) struct Synthetic {
    pub(crate) mtime: i64,
    seed: u64,
    hashes: std::sync::Arc<SyntheticHashes>,
}

/// Every block of a synthetic volume, sorted by hash: its hash, length and block
/// number (what its content derives from); where each `<3 hex>` directory starts; and
/// the order the directories are listed in.
struct SyntheticHashes {
    hashes: Vec<[u8; 16]>,
    lens: Vec<u8>,
    blocks: Vec<u32>,
    starts: Vec<usize>,
    dirs: Vec<u16>,
}

/// The `<3 hex>` directory of a hash, as a number.
fn dir_of(h: &[u8; 16]) -> usize {
    (usize::from(h[0]) << 4) | usize::from(h[1] >> 4)
}

impl SyntheticHashes {
    /// Sorts `(hash, length, block)` and indexes the directories.
    fn new(mut all: Vec<([u8; 16], u8, u32)>, seed: u64) -> SyntheticHashes {
        all.sort_unstable();
        let mut starts = vec![0usize; 4097];
        for (h, _, _) in &all {
            starts[dir_of(h) + 1] += 1;
        }
        for d in 0..4096 {
            starts[d + 1] += starts[d];
        }
        // Fisher-Yates with a xorshift generator: the same order for the same seed.
        let mut dirs: Vec<u16> = (0..4096).collect();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for k in (1..dirs.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            dirs.swap(k, (x % (k as u64 + 1)) as usize);
        }
        SyntheticHashes {
            hashes: all.iter().map(|e| e.0).collect(),
            lens: all.iter().map(|e| e.1).collect(),
            blocks: all.iter().map(|e| e.2).collect(),
            starts,
            dirs,
        }
    }

    /// Positions of the entries listed for `prefix`, in listing order.
    fn listing<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.dirs
            .iter()
            .filter(move |&&d| {
                let name = format!("{d:03x}");
                name.starts_with(prefix) || prefix.starts_with(&name)
            })
            .flat_map(move |&d| self.starts[usize::from(d)]..self.starts[usize::from(d) + 1])
    }
}

impl Synthetic {
    pub(crate) fn new(n: u64, seed: u64) -> Synthetic {
        assert!(n <= u64::from(u32::MAX), "at most 2^32-1 synthetic blocks");
        let len = usize::try_from(n).expect("fits in memory");
        let mut all = vec![([0u8; 16], 0u8, 0u32); len];
        let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
        let per = len.div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (k, part) in all.chunks_mut(per).enumerate() {
                scope.spawn(move || {
                    let mut buf = Vec::with_capacity(176);
                    for (j, e) in part.iter_mut().enumerate() {
                        let i = u32::try_from(k * per + j).expect("at most 2^32-1 blocks");
                        synthetic_block_into(seed, u64::from(i), &mut buf);
                        *e = (
                            Md5::digest(&buf).into(),
                            u8::try_from(buf.len()).expect("at most 175 bytes"),
                            i,
                        );
                    }
                });
            }
        });
        Synthetic {
            mtime: now_ns(),
            seed,
            hashes: std::sync::Arc::new(SyntheticHashes::new(all, seed)),
        }
    }

    #[allow(clippy::unused_async)] // the same shape as the other volumes' reads
    async fn get(&self, hash: &BlockHash) -> io::Result<Option<Bytes>> {
        let h = &self.hashes;
        Ok(h.hashes
            .binary_search(&hash.0)
            .ok()
            .map(|p| Bytes::from(synthetic_block(self.seed, u64::from(h.blocks[p])))))
    }
}
