//! The copy engine: a bounded pool of block copies (read from the source, verify the
//! MD5, write to the destination in its probe order), that records failures and goes
//! on, stops early on a systematic failure, and drains cleanly on Ctrl-C.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use keep_client::{Locator, SignatureFormat, signing};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::limit::{BufferRoom, RateLimiter};
use crate::plan::{Plan, Todo};
use crate::progress::Progress;
use crate::report::{Failure, Report};

/// How many failures, before any success, that all share one permanent reason make the
/// run stop instead of failing every block the same way.
const SYSTEMATIC_AFTER: usize = 5;

/// Signs `loc` for reading from `cluster`, when its key is known: expiry one day out,
/// as the Go tool does, with the cluster's TTL (a verifier uses its own TTL, §3.1).
pub fn signed_for_read(cluster: &Cluster, loc: &Locator) -> Locator {
    match (&cluster.key, cluster.ttl) {
        (Some(key), Some(ttl)) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            signing::sign(
                loc,
                key,
                &cluster.token,
                now + 86_400,
                SignatureFormat::Current { ttl },
            )
        }
        _ => loc.clone(),
    }
}

/// The outcome of one block.
enum Outcome {
    Copied {
        replicas: usize,
        past_first_choice: bool,
    },
    /// The failure, and whether it was temporary (a retry later could succeed).
    Failed(Failure, bool),
}

/// Settings of the engine.
#[derive(Debug)]
pub struct CopyOptions {
    /// Blocks in flight at once.
    pub concurrency: usize,
    /// Most block bytes held at once (`--max-buffer-memory`).
    pub buffer_memory: u64,
    /// Destination replication level.
    pub replicas: usize,
    /// `--bwlimit`.
    pub limiter: Option<RateLimiter>,
    /// Destination services found unreachable while indexing: not written to.
    pub skip_dst: Vec<String>,
}

/// Why the engine stopped before the end.
#[derive(Debug)]
pub enum Stop {
    /// Ran to the end (or was interrupted: see the report).
    Finished,
    /// Every early attempt failed the same permanent way; the message says why.
    Systematic(String),
}

async fn copy_one(
    src: &Cluster,
    dst: &Cluster,
    plan: &Plan,
    todo: Todo,
    opts: &CopyOptions,
    room: &BufferRoom,
) -> Outcome {
    let loc = todo.locator();
    let fail = |reason: &str, e: &keep_client::Error| {
        Outcome::Failed(
            Failure {
                locator: loc.to_string(),
                reason: reason.to_owned(),
                detail: e.to_string(),
            },
            e.is_retryable(),
        )
    };
    let holders = plan.dst_holders(&todo);
    // A proxy destination is asked for every replica (X-Keep-Desired-Replicas);
    // keepstores are topped up to the replication level.
    let proxy = dst.client.has_proxy();
    let holders = if proxy { Vec::new() } else { holders };
    let need = opts.replicas.saturating_sub(holders.len()).max(1);
    // Held until the block is written (or given up): the read buffer lives that long.
    let _room = room.reserve(todo.size()).await;
    if let Some(l) = &opts.limiter {
        l.acquire(todo.size()).await;
    }
    // The destination keepstores check every byte against the hash before storing
    // it (§5), so the read skips our own MD5 pass (half of a copy's CPU,
    // BENCHMARKS.md); a rejection below re-reads with the check.
    let read_loc = signed_for_read(src, &loc);
    let data = match src.client.get_unchecked(&read_loc).await {
        Ok(d) => d,
        Err(e) => return fail(&format!("source: {}", e.reason()), &e),
    };
    let services = dst.client.services();
    let exclude: Vec<&str> = holders
        .iter()
        .map(|&i| services[usize::from(i)].uuid.as_str())
        .chain(opts.skip_dst.iter().map(String::as_str))
        .collect();
    let first_choice: Vec<String> = dst
        .client
        .writable_order(&todo.hash())
        .into_iter()
        .filter(|s| !exclude.contains(&s.uuid.as_str()))
        .take(need)
        .map(|s| s.uuid.clone())
        .collect();
    let put = |data| dst.client.put_excluding(todo.hash(), data, need, &exclude);
    let mut written = put(data).await;
    if let Err(keep_client::Error::ContentRejected { .. }) = &written {
        // The bytes do not match the hash: a source replica is bad (and its keepstore
        // did not notice). Read again with our own check, which fails over to a good
        // replica, or reports the checksum failure.
        tracing::warn!(block = %loc, "the destination rejected the data read from the source; reading it again, checked");
        written = match src.client.get(&read_loc).await {
            Ok(d) => put(d).await,
            Err(e) => return fail(&format!("source: {}", e.reason()), &e),
        };
    }
    match written {
        Ok(r) => {
            let past = !proxy && r.stored_on.iter().any(|u| !first_choice.contains(u));
            Outcome::Copied {
                replicas: r.replicas,
                past_first_choice: past,
            }
        }
        Err(e) => fail(&format!("destination: {}", e.reason()), &e),
    }
}

/// Copies every block of `plan`, filling `report`.
pub async fn run(
    src: &Cluster,
    dst: &Cluster,
    plan: &Plan,
    opts: &CopyOptions,
    progress: &Progress,
    stop: &CancellationToken,
    report: &Mutex<Report>,
) -> Stop {
    let systematic: Mutex<Option<String>> = Mutex::new(None);
    let any_success = AtomicBool::new(false);
    let early: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let halt = stop.child_token();
    let room = BufferRoom::new(opts.buffer_memory);
    let room = &room;

    let work = futures::stream::iter(plan.todo())
        .take_while(|_| futures::future::ready(!halt.is_cancelled()))
        .map(|todo| async move { (todo, copy_one(src, dst, plan, todo, opts, room).await) })
        .buffer_unordered(opts.concurrency.max(1));
    futures::pin_mut!(work);
    while let Some((todo, outcome)) = work.next().await {
        let mut r = report.lock().expect("report lock");
        match outcome {
            Outcome::Copied {
                replicas,
                past_first_choice,
            } => {
                any_success.store(true, Ordering::Relaxed);
                r.copied.blocks += 1;
                r.copied.bytes += todo.size();
                r.replicas_written += replicas as u64;
                r.placed_past_first_choice += u64::from(past_first_choice);
                progress.block_done(&todo.locator().to_string(), todo.size(), true);
            }
            Outcome::Failed(f, temporary) => {
                tracing::warn!(block = %f.locator, reason = %f.reason, "{}", f.detail);
                progress.block_done(&f.locator, todo.size(), false);
                if !any_success.load(Ordering::Relaxed) {
                    let mut e = early.lock().expect("early lock");
                    e.push(f.reason.clone());
                    // Temporary failures (a `read failed` or `insufficient replicas`
                    // made of 503s and refused connections) say nothing systematic.
                    let permanent = !temporary
                        && !f.reason.contains("server error")
                        && !f.reason.contains("timeout")
                        && !f.reason.contains("connection")
                        && !f.reason.contains("checksum")
                        && !f.reason.contains("bad stored copy");
                    let threshold = SYSTEMATIC_AFTER;
                    if permanent && e.len() >= threshold && e.iter().all(|x| *x == f.reason) {
                        // Blocks still in flight fail the same way; the first
                        // verdict is the one to report.
                        systematic.lock().expect("lock").get_or_insert_with(|| {
                            format!(
                                "the first {} blocks all failed the same way ({}): {}",
                                e.len(),
                                f.reason,
                                f.detail
                            )
                        });
                        halt.cancel();
                    }
                }
                r.fail(f, todo.size());
            }
        }
    }
    match systematic.into_inner().expect("lock") {
        Some(msg) => Stop::Systematic(msg),
        None => Stop::Finished,
    }
}

/// Lets a second Ctrl-C abort at once; the first only stops new copies.
pub fn install_signal_handlers(
    stop: CancellationToken,
    progress_note: impl Fn(&str) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            count += 1;
            if count == 1 {
                progress_note(
                    "interrupted: finishing the copies in flight (press Ctrl-C again to abort now)",
                );
                stop.cancel();
            } else {
                eprintln!("keep-rsync: aborted; blocks in flight were not counted as copied");
                std::process::exit(i32::from(crate::cli::exit::INTERRUPTED));
            }
        }
    });
}
