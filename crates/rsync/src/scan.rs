//! The index phase: every keepstore of a cluster is asked for its index at once, and
//! the entries stream into the [`PlanBuilder`] without any index body being held.
//!
//! The builder lives on a thread of its own ([`Planner`]): parsing index text and
//! looking entries up in the plan each take about half of the index phase, so on two
//! cores they overlap (BENCHMARKS.md, S5).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{Context as _, Result, bail};
use keep_client::index::IndexEntry;

use crate::cluster::{Cluster, Role};
use crate::plan::{Plan, PlanBuilder};
use crate::progress::Progress;

/// Entries per message to the planner thread.
const BATCH: usize = 4096;
/// Messages queued for the planner before index readers wait (16 × 4096 × 32 B = 2 MiB).
const QUEUE: usize = 16;

enum Msg {
    Dst(u16, Vec<IndexEntry>),
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
                        Msg::Dst(service, batch) => {
                            for e in batch {
                                builder.add_dst(service, e.hash, e.size);
                            }
                        }
                        Msg::Src(batch) => {
                            builder.add_src_many(batch.into_iter().map(|e| (e.hash, e.size)));
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

/// Reads every index of `cluster` (restricted to `prefix`) into `planner`: destination
/// entries with the service number, source entries without.
///
/// An incomplete, malformed or refused index fails the whole scan: a short index would
/// silently skip data (on the source) or resend it (on the destination). A service
/// that cannot be reached at all (connection refused, after retries) is different:
/// it is skipped and returned, so the run can copy everything else and report it
/// (exit 1); the next run, once it is back, picks up what it holds. When no service
/// of a side can be reached, the scan fails.
///
/// # Errors
/// The first index that failed, naming the service.
pub async fn scan(
    cluster: &Cluster,
    prefix: &str,
    planner: &Planner,
    progress: &Progress,
) -> Result<Vec<String>> {
    let services = cluster.client.services();
    let side = cluster.role.name();
    let outstanding = AtomicUsize::new(services.len());
    let listed = AtomicU64::new(0);
    progress.indexes(side, services.len(), 0);
    let fetches = services.iter().enumerate().map(|(i, svc)| {
        let outstanding = &outstanding;
        let listed = &listed;
        async move {
            let mut batch: Vec<IndexEntry> = Vec::with_capacity(BATCH);
            let mut delivered = 0u64;
            let flush = |batch: &mut Vec<IndexEntry>| {
                if batch.is_empty() {
                    return;
                }
                listed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let full = std::mem::replace(batch, Vec::with_capacity(BATCH));
                planner.send(match cluster.role {
                    Role::Destination => Msg::Dst(i as u16, full),
                    Role::Source => Msg::Src(full),
                });
            };
            let got = cluster
                .client
                .index(svc, prefix, |e| {
                    delivered += 1;
                    batch.push(e);
                    if batch.len() >= BATCH {
                        flush(&mut batch);
                    }
                })
                .await;
            let unreachable = match got {
                Ok(_) => None,
                Err(e @ keep_client::Error::Connect { .. }) if delivered == 0 => {
                    tracing::warn!(
                        "{side} keep service {} is unreachable; skipping it: {e}",
                        svc.uuid
                    );
                    Some(svc.uuid.clone())
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("{side} index"))),
            };
            flush(&mut batch);
            let left = outstanding.fetch_sub(1, Ordering::Relaxed) - 1;
            progress.indexes(side, left, listed.load(Ordering::Relaxed));
            anyhow::Ok(unreachable)
        }
    });
    let down: Vec<String> = futures::future::try_join_all(fetches)
        .await?
        .into_iter()
        .flatten()
        .collect();
    if !down.is_empty() && down.len() == services.len() {
        bail!(
            "no {side} keep service could be reached ({}); check the services and the network",
            down.join(", ")
        );
    }
    Ok(down)
}
