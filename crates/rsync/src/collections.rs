//! `--by-collections`: what the source's collections ask of each block, and
//! `--skip-unreferenced`: the blocks none of them asks for.
//!
//! keep-balance decides where a block belongs from the collections that refer to it:
//! in each storage class a collection asks for (`storage_classes_desired`, empty =
//! the cluster's default classes), as many replicas as the most any of them asks
//! (`replication_desired`, null = the cluster's default). Copying every block at the
//! defaults would leave keep-balance on the new cluster a second pass over the data,
//! so the plan learns the same wants before it copies. Most blocks ask for the
//! defaults; only the exceptions are kept, beside the plan ([`Plan::refer`]).
//!
//! Trashed collections and old versions are read too: they own their blocks until
//! they are deleted, and keep-balance counts them.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use keep_client::CollectionDemand;

use crate::Job;
use crate::cluster::Cluster;
use crate::plan::{Plan, Profile, Referral, Todo};
use crate::progress::Progress;
use crate::topology::ClassSet;

/// What was read of the source's collections (the same in every pass).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CollectionsRead {
    /// Collections read, trashed ones and old versions included.
    pub collections: u64,
    /// Of those, in the trash.
    pub trashed: u64,
    /// Of those, old versions of others.
    pub old_versions: u64,
    /// Manifests that could not be read to their end (their uuids are logged).
    pub bad_manifests: u64,
    /// Block references read (a block in two collections counts twice).
    pub references: u64,
}

/// `--unreferenced-list`: the blocks `--skip-unreferenced` left behind, one locator
/// per line, written as each pass decides.
#[derive(Debug)]
pub struct UnreferencedList {
    out: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
}

impl UnreferencedList {
    /// Creates (or empties) `path`.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &Path) -> Result<UnreferencedList> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("--unreferenced-list {}: cannot write it", path.display()))?;
        Ok(UnreferencedList {
            out: std::io::BufWriter::new(file),
            path: path.to_owned(),
        })
    }

    fn add(&mut self, t: &Todo) -> std::io::Result<()> {
        writeln!(self.out, "{} unreferenced", t.locator())
    }

    fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("--unreferenced-list {}", self.path.display()))
    }
}

/// The profile ids of (classes, replication) pairs, so a collection costs a lookup.
struct Profiles {
    ids: HashMap<(ClassSet, u32), u32>,
}

impl Profiles {
    fn id(&mut self, plan: &mut Plan, classes: ClassSet, replicas: u32) -> u32 {
        *self.ids.entry((classes, replicas)).or_insert_with(|| {
            let p: Profile = if classes == 0 {
                Box::new([(0, replicas)])
            } else {
                (0..64)
                    .map(|b| 1u64 << b)
                    .filter(|bit| classes & bit != 0)
                    .map(|bit| (bit, replicas))
                    .collect()
            };
            plan.profile_id(p)
        })
    }
}

/// The source's API server, which `--by-collections` reads.
///
/// # Errors
/// The source settings name none.
pub(crate) fn source_api(src: &Cluster) -> Result<&keep_client::Controller> {
    match src.api.as_ref() {
        Some(api) => Ok(api),
        None => bail!(
            "--by-collections reads the source's collections from its API server, but -src {} has no ARVADOS_API_HOST; add it",
            src.origin
        ),
    }
}

/// Reads every source collection into `plan` (the blocks under `prefixes`), then
/// applies `--skip-unreferenced`, writing what it leaves to `list`.
///
/// # Errors
/// The collections cannot be read (no API server, a token that is not the
/// SystemRootToken, a broken list), or collections ask for a storage class no
/// destination volume has.
pub(crate) async fn apply(
    job: &Job<'_>,
    plan: &mut Plan,
    prefixes: &[String],
    progress: &Progress,
    list: Option<&std::sync::Mutex<UnreferencedList>>,
) -> Result<CollectionsRead> {
    let cli = job.cli;
    let api = source_api(job.src)?;
    let topology = job.dst_topology;
    let default_classes = job.want.classes;
    let default_replicas = job.want.replicas;
    // Through a keepproxy the index cannot tell replicas apart: a listed block is
    // present, whatever its collections ask (the proxy makes the copies it is asked
    // for when a block is written).
    let top_up = job.counting == job.want;
    let all = prefixes.iter().any(String::is_empty);
    let mut read = CollectionsRead::default();
    let mut profiles = Profiles {
        ids: HashMap::new(),
    };
    let mut unknown: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_bad: Option<String> = None;
    let (mut not_at_source, mut last_note) = (0u64, Instant::now());
    progress.note("reading the source's collections (--by-collections)");
    let started = Instant::now();
    api.each_collection(|c: CollectionDemand| {
        read.collections += 1;
        read.trashed += u64::from(c.is_trashed);
        read.old_versions += u64::from(c.is_old_version);
        if let Some(e) = &c.manifest_error {
            read.bad_manifests += 1;
            tracing::warn!("collection {}: {e}", c.uuid);
            first_bad.get_or_insert_with(|| format!("{}: {e}", c.uuid));
        }
        let classes = if !cli.storage_classes.is_empty() || c.storage_classes_desired.is_empty() {
            default_classes
        } else if topology.class_names.is_empty() {
            // The destination's classes are unknown (no /mounts): count in any class.
            0
        } else {
            let mut set = 0;
            for name in &c.storage_classes_desired {
                match topology.class_names.iter().position(|n| n == name) {
                    Some(b) => set |= 1u64 << b,
                    None => *unknown.entry(name.clone()).or_default() += 1,
                }
            }
            if set == 0 { default_classes } else { set }
        };
        let replicas = match cli.replications {
            Some(r) => r as u32,
            None => c.replication_desired.unwrap_or(default_replicas),
        };
        let id = profiles.id(plan, classes, replicas);
        for b in &c.blocks {
            read.references += 1;
            if !all && !prefixes.iter().any(|p| b.hash.has_hex_prefix(p)) {
                continue;
            }
            if plan.refer(&b.hash, b.size, id, top_up) == Referral::NotAtSource {
                not_at_source += 1;
            }
        }
        if last_note.elapsed() >= Duration::from_secs(10) {
            last_note = Instant::now();
            progress.note(&format!("collections: {} read", read.collections));
        }
    })
    .await
    .context("source collections")?;
    if !unknown.is_empty() {
        let names: Vec<String> = unknown
            .iter()
            .map(|(n, c)| format!("{n} (asked by {c} collections)"))
            .collect();
        bail!(
            "collections ask for storage classes no destination volume has: {}; add volumes in those classes to the destination, or pass --storage-classes to write every block to the classes given",
            names.join(", ")
        );
    }
    // What the destination cannot hold fails block by block later: say so once now.
    let mut asked: BTreeMap<ClassSet, u32> = BTreeMap::new();
    for p in plan.profiles().iter().skip(1) {
        for &(bit, n) in p.iter() {
            let e = asked.entry(bit).or_default();
            *e = (*e).max(n);
        }
    }
    for (bit, n) in asked {
        let room = topology.writable_replication((bit != 0).then_some(bit));
        if u64::from(n) > room {
            let class = match topology.names(bit).join(",") {
                c if c.is_empty() => String::new(),
                c => format!(" in class {c}"),
            };
            tracing::warn!(
                "collections ask for {n} replicas{class}, but the destination's writable volumes hold {room}: their blocks will be reported under-replicated; add volumes, or pass -replications"
            );
        }
    }
    let mut skip = cli.skip_unreferenced;
    if skip {
        if let Some(bad) = &first_bad {
            // Their blocks would look unreferenced: leaving them behind could lose data.
            tracing::warn!(
                "{} collections have manifests that cannot be read (first: {bad}); --skip-unreferenced is off for this run so that none of their blocks is left behind",
                read.bad_manifests
            );
            skip = false;
        }
    }
    let mut write_error = None;
    let mut guard = list.map(|l| l.lock().expect("unreferenced list lock"));
    plan.finish_collections(skip, |t| {
        if let Some(l) = guard.as_deref_mut() {
            if let Err(e) = l.add(&t) {
                write_error.get_or_insert(e);
            }
        }
    });
    if let Some(l) = guard.as_deref_mut() {
        if let Some(e) = write_error {
            bail!("--unreferenced-list {}: {e}", l.path.display());
        }
        l.flush()?;
    }
    let s = plan.stats();
    progress.note(&format!(
        "{} collections read in {:.1} s ({} trashed, {} old versions): {} blocks ask for other than the defaults, {} to top up; {} blocks to copy are unreferenced{}",
        read.collections,
        started.elapsed().as_secs_f64(),
        read.trashed,
        read.old_versions,
        s.special_wants,
        s.topped_up.blocks,
        s.unreferenced.blocks,
        if skip {
            format!(
                " ({} left behind, {} younger than the blob signature TTL copied)",
                s.unreferenced_skipped.blocks, s.unreferenced_young.blocks
            )
        } else {
            String::new()
        }
    ));
    if s.referenced_not_at_source > 0 {
        tracing::warn!(
            "{} blocks that collections refer to are on no source keep service ({not_at_source} references): they were lost before this run, and cannot be copied",
            s.referenced_not_at_source
        );
    }
    Ok(read)
}
