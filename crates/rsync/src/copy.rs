//! The copy engine: a bounded pool of block copies (read from the source, write to the
//! destination in its probe order until the wanted replicas and classes are
//! confirmed), that records failures and goes on, stops early on a systematic
//! failure, and drains cleanly on Ctrl-C.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use keep_client::WriteTarget;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::limit::{BufferRoom, RateLimiter};
use crate::plan::{Plan, Todo};
use crate::progress::Progress;
use crate::report::{Failure, Report};
use crate::topology::Topology;

/// How many failures, before any success, that all share one permanent reason make the
/// run stop instead of failing every block the same way.
const SYSTEMATIC_AFTER: usize = 5;

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
    /// `--bwlimit`.
    pub limiter: Option<RateLimiter>,
    /// The destination's devices and counting rule.
    pub topology: Topology,
    /// Destination services not to write: unreachable while indexing.
    pub skip_dst: Vec<usize>,
}

/// Why the engine stopped before the end.
#[derive(Debug)]
pub enum Stop {
    /// Ran to the end (or was interrupted: see the report).
    Finished,
    /// Every early attempt failed the same permanent way; the message says why.
    Systematic(String),
}

/// What every copy shares: the options, and what follows from them once per run.
struct Shared<'a> {
    opts: &'a CopyOptions,
    /// Replicas a PUT to each destination service is expected to store.
    expect: Vec<usize>,
    /// Destination services that share writable volumes, if any do.
    sharing: Option<Vec<Vec<usize>>>,
    room: BufferRoom,
}

/// The write a block needs: what it lacks, in which classes, and where not to go.
fn target<'a>(
    dst: &Cluster,
    plan: &Plan,
    todo: &Todo,
    shared: &'a Shared<'_>,
    exclude: &'a [usize],
) -> WriteTarget<'a> {
    let want = plan.want();
    let topology = &shared.opts.topology;
    let (need, classes) = if dst.client.has_proxy() {
        // A proxy is asked for every replica (X-Keep-Desired-Replicas) and makes them.
        let all = topology.names(want.classes);
        (
            want.replicas,
            all.into_iter()
                .map(|c| (c, want.replicas as usize))
                .collect(),
        )
    } else {
        let s = plan.shortfall(todo);
        let classes = s
            .classes
            .iter()
            .flat_map(|&(bit, n)| {
                topology
                    .names(bit)
                    .into_iter()
                    .map(move |c| (c, n as usize))
            })
            .collect();
        (s.replicas, classes)
    };
    WriteTarget {
        hash: todo.hash(),
        desired: want.replicas as usize,
        need: need as usize,
        classes,
        exclude,
        expect: Some(&shared.expect),
        sharing: shared.sharing.as_deref(),
    }
}

async fn copy_one(
    src: &Cluster,
    dst: &Cluster,
    plan: &Plan,
    todo: Todo,
    shared: &Shared<'_>,
) -> Outcome {
    let opts = shared.opts;
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
    // Never to a service that lists it already (the checkpoint), nor one that is down.
    let mut exclude = if dst.client.has_proxy() {
        Vec::new()
    } else {
        opts.topology.services_of(plan.dst_holders(&todo))
    };
    exclude.extend(opts.skip_dst.iter().copied());
    let target = target(dst, plan, &todo, shared, &exclude);
    // Held until the block is written (or given up): the read buffer lives that long.
    let _room = shared.room.reserve(todo.size()).await;
    if let Some(l) = &opts.limiter {
        l.acquire(todo.size()).await;
    }
    // The destination keepstores check every byte against the hash before storing
    // it (§5), so the read skips our own MD5 pass (half of a copy's CPU,
    // BENCHMARKS.md); a rejection below re-reads with the check.
    let read_loc = src.signed_for_read(&loc);
    let data = match src.client.get_unchecked(&read_loc).await {
        Ok(d) => d,
        Err(e) => return fail(&format!("source: {}", e.reason()), &e),
    };
    let mut written = dst.client.put_to(data, &target).await;
    if let Err(keep_client::Error::ContentRejected { .. }) = &written {
        // The bytes do not match the hash: a source replica is bad (and its keepstore
        // did not notice). Read again with our own check, which fails over to a good
        // replica, or reports the checksum failure.
        tracing::warn!(block = %loc, "the destination rejected the data read from the source; reading it again, checked");
        written = match src.client.get(&read_loc).await {
            Ok(d) => dst.client.put_to(d, &target).await,
            Err(e) => return fail(&format!("source: {}", e.reason()), &e),
        };
    }
    match written {
        Ok(r) => {
            let first = first_choice(dst, &target);
            let past = !dst.client.has_proxy() && r.stored_on.iter().any(|u| !first.contains(u));
            Outcome::Copied {
                replicas: r.replicas,
                past_first_choice: past,
            }
        }
        Err(e) => fail(&format!("destination: {}", e.reason()), &e),
    }
}

/// The services a write goes to when nothing fails: the first writable ones in probe
/// order whose expected replicas cover what is needed.
fn first_choice(dst: &Cluster, t: &WriteTarget<'_>) -> Vec<String> {
    let services = dst.client.services();
    let mut covered = 0;
    let mut out = Vec::new();
    for i in dst.client.writable_order_indexes(&t.hash) {
        if covered >= t.need {
            break;
        }
        if t.exclude.contains(&i) {
            continue;
        }
        covered += t.expect.and_then(|e| e.get(i).copied()).unwrap_or(1);
        out.push(services[i].uuid.clone());
    }
    out
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
    let shared = Shared {
        opts,
        expect: opts
            .topology
            .expected_per_service(dst.client.services().len(), plan.want().classes),
        sharing: opts.topology.sharing(dst.client.services().len()),
        room: BufferRoom::new(opts.buffer_memory),
    };
    let shared = &shared;

    let work = futures::stream::iter(plan.todo())
        .take_while(|_| futures::future::ready(!halt.is_cancelled()))
        .map(|todo| async move { (todo, copy_one(src, dst, plan, todo, shared).await) })
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
