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
    /// Set once the plan outgrew its budget: the scan stops, and the run is split
    /// into passes.
    over: tokio::sync::watch::Receiver<bool>,
}

/// The plan outgrew `--max-plan-memory` while the indexes were read: the run must
/// be split into passes.
#[derive(Debug)]
pub struct OverBudget;

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the plan outgrew --max-plan-memory")
    }
}

impl std::error::Error for OverBudget {}

impl Planner {
    /// Starts the thread.
    ///
    /// # Errors
    /// The operating system refused a thread.
    pub fn start(mut builder: PlanBuilder, budget: u64) -> Result<Planner> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        let (over_tx, over) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("planner".into())
            .spawn(move || {
                for msg in rx {
                    if *over_tx.borrow() {
                        // Over budget: drain, so that no reader waits on the queue.
                        continue;
                    }
                    let grows = matches!(msg, Msg::Dst(..) | Msg::Src(_));
                    match msg {
                        Msg::Dst(device, batch) => {
                            for e in batch {
                                builder.add_dst(device, e.hash, e.size);
                            }
                        }
                        Msg::ForgetDst(device) => builder.forget_dst(device),
                        Msg::Src(batch) => {
                            for e in batch {
                                builder.add_src_at(e.hash, e.size, e.mtime_ns);
                            }
                        }
                        Msg::FinishDst => builder.finish_dst(),
                    }
                    if grows && builder.heap_bytes() > budget {
                        let _ = over_tx.send(true);
                    }
                }
                builder
            })
            .context("cannot start the planner thread")?;
        Ok(Planner { tx, thread, over })
    }

    /// Resolves once the plan outgrows its budget (never, if it fits).
    async fn outgrown(&self) {
        let mut rx = self.over.clone();
        if rx.wait_for(|v| *v).await.is_err() {
            // The planner thread ended without outgrowing it: wait forever.
            std::future::pending::<()>().await;
        }
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
                // Never older than anything: a listed block is never skipped as
                // unreferenced garbage.
                mtime_ns: i64::MAX,
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
    /// The planner thread panicked, or the plan outgrew its budget ([`OverBudget`]).
    pub fn finish(self) -> Result<Plan> {
        drop(self.tx);
        let builder = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the planner thread panicked"))?;
        // Checked after the last queued batch: the readers may have finished first.
        if *self.over.borrow() {
            return Err(anyhow::Error::new(OverBudget));
        }
        Ok(builder.finish())
    }
}

/// Lists device `d` of `topology`, one prefix after another, each through the
/// services that mount it, in order, until one answers: its volume
/// (`/mounts/{uuid}/blocks`) when the topology knows volumes, else the whole service
/// (`/index`).
async fn list_device(
    cluster: &Cluster,
    topology: &Topology,
    d: usize,
    prefixes: &[String],
    on_entry: &mut (impl FnMut(IndexEntry) + Send),
) -> keep_client::Result<()> {
    for prefix in prefixes {
        list_device_prefix(cluster, topology, d, prefix, on_entry).await?;
    }
    Ok(())
}

async fn list_device_prefix(
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

/// Reads every device index of `cluster` (restricted to `prefixes`) into `planner`:
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
    prefixes: &[String],
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
                let mut on_entry = |e| {
                    delivered += 1;
                    batch.push(e);
                    if batch.len() >= BATCH {
                        flush(&mut batch);
                    }
                };
                let listing = list_device(cluster, topology, d, prefixes, &mut on_entry);
                // An oversized plan stops every listing at once (the requests are
                // dropped), to be read again in passes.
                let got = tokio::select! {
                    got = listing => got,
                    () = planner.outgrown() => return Err(anyhow::Error::new(OverBudget)),
                };
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
