//! The index phase: every keepstore of a cluster is asked for its index at once, and
//! the entries stream into the [`PlanBuilder`] without any index body being held.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Result, bail};
use keep_client::index::IndexEntry;

use crate::cluster::{Cluster, Role};
use crate::plan::PlanBuilder;
use crate::progress::Progress;

/// Entries handed to the builder per lock.
const BATCH: usize = 4096;

/// Reads every index of `cluster` (restricted to `prefix`) into `builder`: destination
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
    builder: &Mutex<PlanBuilder>,
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
                let mut b = builder.lock().expect("plan lock");
                for e in batch.iter() {
                    match cluster.role {
                        Role::Destination => b.add_dst(i as u16, e.hash, e.size),
                        Role::Source => b.add_src(e.hash, e.size),
                    }
                }
                listed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
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
