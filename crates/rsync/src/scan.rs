//! The index phase: every device of a cluster is listed at once, and the entries stream
//! into the [`PlanBuilder`] without any index body being held.
//!
//! A device is a volume, listed through the first keepstore that mounts it
//! (`/mounts/{uuid}/blocks`), or, where `/mounts` cannot be read, a whole keep service
//! (`/index`); see [`crate::topology`]. The builder lives on a thread of its own
//! ([`Planner`]): parsing index text and looking entries up in the plan each take about
//! half of the index phase, so on two cores they overlap (BENCHMARKS.md, S5).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{Context as _, Result, bail};
use keep_client::index::IndexEntry;

use crate::cluster::{Cluster, Role};
use crate::plan::{Plan, PlanBuilder};
use crate::progress::Progress;
use crate::topology::Topology;

/// Entries per message to the planner thread.
const BATCH: usize = 4096;
/// Messages queued for the planner before index readers wait (16 × 4096 × 32 B = 2 MiB).
const QUEUE: usize = 16;
/// Times a device's index is read in all, when it breaks part-way.
const INDEX_ATTEMPTS: usize = 3;

enum Msg {
    Dst(u16, Vec<IndexEntry>),
    ForgetDst(u16),
    Src(Vec<IndexEntry>),
    FinishDst,
}

/// A [`PlanBuilder`] on its own thread, fed batches of index entries in order.
#[derive(Debug)]
pub struct Planner {
    tx: mpsc::SyncSender<Msg>,
    thread: JoinHandle<PlanBuilder>,
}

impl Planner {
    /// Starts the thread.
    ///
    /// # Errors
    /// The operating system refused a thread.
    pub fn start(mut builder: PlanBuilder) -> Result<Planner> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("planner".into())
            .spawn(move || {
                for msg in rx {
                    match msg {
                        Msg::Dst(device, batch) => {
                            for e in batch {
                                builder.add_dst(device, e.hash, e.size);
                            }
                        }
                        Msg::ForgetDst(device) => builder.forget_dst(device),
                        Msg::Src(batch) => {
                            for e in batch {
                                builder.add_src(e.hash, e.size);
                            }
                        }
                        Msg::FinishDst => builder.finish_dst(),
                    }
                }
                builder
            })
            .context("cannot start the planner thread")?;
        Ok(Planner { tx, thread })
    }

    fn send(&self, msg: Msg) {
        // An error means the thread is gone (it panicked); `finish` reports that.
        let msg = match self.tx.try_send(msg) {
            Err(mpsc::TrySendError::Full(msg)) => msg,
            Ok(()) | Err(mpsc::TrySendError::Disconnected(_)) => return,
        };
        // A full queue means the planner is behind: wait for it. On the multi-thread
        // runtime, tell tokio this worker blocks so its other tasks move elsewhere
        // (only then: handing the worker over costs more than a send).
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let send = || drop(self.tx.send(msg));
        if multi {
            tokio::task::block_in_place(send);
        } else {
            send();
        }
    }

    /// Source entries that come from elsewhere than an index (`--from-list`).
    pub fn add_src<'a>(&self, locators: impl Iterator<Item = &'a keep_client::Locator>) {
        let mut batch = Vec::with_capacity(BATCH);
        for l in locators {
            batch.push(IndexEntry {
                hash: l.hash(),
                size: l.size().unwrap_or(0),
                mtime_ns: 0,
            });
            if batch.len() == BATCH {
                self.send(Msg::Src(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(BATCH),
                )));
            }
        }
        if !batch.is_empty() {
            self.send(Msg::Src(batch));
        }
    }

    /// Ends the destination phase (see [`PlanBuilder::finish_dst`]).
    pub fn finish_dst(&self) {
        self.send(Msg::FinishDst);
    }

    /// Waits for every queued entry, and returns the plan.
    ///
    /// # Errors
    /// The planner thread panicked.
    pub fn finish(self) -> Result<Plan> {
        drop(self.tx);
        let builder = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the planner thread panicked"))?;
        Ok(builder.finish())
    }
}

/// Lists device `d` of `topology` through the services that mount it, in order,
/// until one answers: its volume (`/mounts/{uuid}/blocks`) when the topology knows
/// volumes, else the whole service (`/index`).
async fn list_device(
    cluster: &Cluster,
    topology: &Topology,
    d: usize,
    prefix: &str,
    on_entry: &mut (impl FnMut(IndexEntry) + Send),
) -> keep_client::Result<()> {
    let device = &topology.devices[d];
    let services = cluster.client.services();
    let mut last = None;
    for &s in &device.services {
        let svc = &services[usize::from(s)];
        let mut delivered = 0u64;
        let mut count = |e| {
            delivered += 1;
            on_entry(e);
        };
        let r = if topology.by_volume() {
            cluster
                .client
                .index_mount(svc, &device.id, prefix, &mut count)
                .await
        } else {
            cluster.client.index(svc, prefix, &mut count).await
        };
        match r {
            Ok(_) => return Ok(()),
            // Another keepstore that mounts the same volume may answer.
            Err(e @ keep_client::Error::Connect { .. }) if delivered == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("a device is mounted by at least one service"))
}

/// Reads every device index of `cluster` (restricted to `prefix`) into `planner`:
/// destination entries with the device number, source entries without.
///
/// An index that breaks part-way (cut short, or its connection broken) is read again
/// from the start, up to three times in all; a destination device's entries from the
/// broken attempt are forgotten first, so a block trashed in between does not count
/// (a source entry that went stale is found out at copy time, as a vanished block).
/// A malformed or refused index fails the whole scan: a short index would silently
/// skip data (on the source) or resend it (on the destination). A device that cannot
/// be reached at all (connection refused through every keepstore that mounts it,
/// after retries) is skipped and returned, so the run can copy everything else and
/// report it (exit 1); when nothing can be reached, the scan fails. Returns the
/// devices (indexes into the topology) that could not be reached.
///
/// # Errors
/// The first index that failed, naming the service.
pub async fn scan(
    cluster: &Cluster,
    topology: &Topology,
    prefix: &str,
    planner: &Planner,
    progress: &Progress,
) -> Result<Vec<usize>> {
    let side = cluster.role.name();
    let n = topology.devices.len();
    let outstanding = AtomicUsize::new(n);
    let listed = AtomicU64::new(0);
    progress.indexes(side, n, 0);
    let jobs = (0..n).map(|d| {
        let outstanding = &outstanding;
        let listed = &listed;
        async move {
            let device = d as u16;
            let flush = |batch: &mut Vec<IndexEntry>| {
                if batch.is_empty() {
                    return;
                }
                listed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let full = std::mem::replace(batch, Vec::with_capacity(BATCH));
                planner.send(match cluster.role {
                    Role::Destination => Msg::Dst(device, full),
                    Role::Source => Msg::Src(full),
                });
            };
            let mut unreachable = None;
            for attempt in 1..=INDEX_ATTEMPTS {
                let mut batch: Vec<IndexEntry> = Vec::with_capacity(BATCH);
                let mut delivered = 0u64;
                let got = list_device(cluster, topology, d, prefix, &mut |e| {
                    delivered += 1;
                    batch.push(e);
                    if batch.len() >= BATCH {
                        flush(&mut batch);
                    }
                })
                .await;
                match got {
                    Ok(()) => {
                        flush(&mut batch);
                        break;
                    }
                    Err(e @ keep_client::Error::Connect { .. }) if delivered == 0 => {
                        tracing::warn!(
                            "{side} device {} is unreachable; skipping it: {e}",
                            topology.devices[d].id
                        );
                        unreachable = Some(d);
                        break;
                    }
                    // Before the first entry the client has retried already.
                    Err(e) if e.is_retryable() && delivered > 0 && attempt < INDEX_ATTEMPTS => {
                        tracing::warn!(
                            "{side} index of {} broke after {delivered} entries; reading it again from the start: {e}",
                            topology.devices[d].id
                        );
                        // What this attempt sent must go; what it did not send yet
                        // goes with `batch`.
                        if cluster.role == Role::Destination && delivered > 0 {
                            planner.send(Msg::ForgetDst(device));
                        }
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("{side} index"))),
                }
            }
            let left = outstanding.fetch_sub(1, Ordering::Relaxed) - 1;
            progress.indexes(side, left, listed.load(Ordering::Relaxed));
            anyhow::Ok(unreachable)
        }
    });
    let down: Vec<usize> = futures::future::try_join_all(jobs)
        .await?
        .into_iter()
        .flatten()
        .collect();
    if down.len() == n {
        bail!("no {side} keep service could be reached; check the services and the network");
    }
    Ok(down)
}
