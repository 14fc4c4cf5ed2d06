//! `--verify`: does the destination hold every source block at the wanted replication,
//! in every wanted storage class, by the rule the copy uses ([`crate::topology`])? And
//! with `--verify-data`, does every destination copy still hash to its name? (The
//! integrity check the original design, #7167, left for later.)

use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::limit::BufferRoom;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::report::{Failure, FailureKind, Report};
use crate::topology::Topology;

/// Settings of a verification.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// `--verify-data`: read every destination copy and check its MD5.
    pub data: bool,
    /// Reads in flight at once.
    pub concurrency: usize,
    /// Most block bytes held at once (`--max-buffer-memory`).
    pub buffer_memory: u64,
}

/// Fills `report` with every missing, under-replicated or (with `opts.data`) corrupt
/// block.
pub async fn run(
    dst: &Cluster,
    topology: &Topology,
    plan: &Plan,
    opts: VerifyOptions,
    progress: &Progress,
    stop: &CancellationToken,
    report: &mut Report,
) {
    for todo in plan.todo() {
        let (kind, detail) = if plan.dst_holders(&todo).is_empty() {
            (
                FailureKind::Missing,
                "not listed by any destination service".to_string(),
            )
        } else {
            let s = plan.shortfall(&todo);
            let lacking: Vec<String> = s
                .classes
                .iter()
                .map(|&(bit, n)| format!("{n} in class {}", topology.names(bit).join(",")))
                .collect();
            let lacking = if lacking.is_empty() {
                format!("{} replica(s)", s.replicas)
            } else {
                lacking.join(", ")
            };
            (
                FailureKind::UnderReplicated,
                format!(
                    "lacks {lacking} of the {} wanted",
                    plan.wanted_replicas(&todo)
                ),
            )
        };
        report.fail(
            Failure {
                locator: todo.locator().to_string(),
                kind,
                detail,
            },
            todo.size(),
        );
    }
    if !opts.data {
        return;
    }
    let services = dst.client.services();
    let verified = AtomicU64::new(0);
    let verified_bytes = AtomicU64::new(0);
    let room = BufferRoom::new(opts.buffer_memory);
    let checks = futures::stream::iter(plan.dst_copies_of_src_blocks())
        .take_while(|_| futures::future::ready(!stop.is_cancelled()))
        .map(|(todo, device)| {
            let (verified, verified_bytes, room) = (&verified, &verified_bytes, &room);
            async move {
                let _room = room.reserve(todo.size()).await;
                // A volume is read through the first keepstore that mounts it.
                let svc = topology.devices[usize::from(device)].services[0];
                let service = &services[usize::from(svc)];
                let loc = dst.signed_for_read(&todo.locator());
                match dst.client.get_from(service, &loc).await {
                    Ok(_) => {
                        verified.fetch_add(1, Ordering::Relaxed);
                        verified_bytes.fetch_add(todo.size(), Ordering::Relaxed);
                        None
                    }
                    Err(e) => {
                        // Most errors of one service already name it.
                        let msg = e.to_string();
                        let detail = if msg.contains(&service.uuid) {
                            msg
                        } else {
                            format!("on {}: {msg}", service.uuid)
                        };
                        Some((
                            todo,
                            Failure {
                                locator: todo.locator().to_string(),
                                kind: FailureKind::BadDestinationCopy,
                                detail,
                            },
                        ))
                    }
                }
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    futures::pin_mut!(checks);
    let mut progress_count = 0u64;
    while let Some(r) = checks.next().await {
        progress_count += 1;
        if let Some((todo, f)) = r {
            progress.note(&format!(
                "verify: {} {}: {}",
                f.locator,
                f.kind.label(),
                f.detail
            ));
            report.fail(f, todo.size());
        } else if progress_count % 1000 == 0 {
            progress.note(&format!("verified {progress_count} destination copies"));
        }
    }
    report.verified_copies = verified.load(Ordering::Relaxed);
    report.verified_bytes = verified_bytes.load(Ordering::Relaxed);
}
