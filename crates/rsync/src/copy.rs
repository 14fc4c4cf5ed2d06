//! The copy engine: a bounded pool of block copies (read from the source, write to the
//! destination in its probe order until the wanted replicas and classes are
//! confirmed), that records failures and goes on, stops on a systematic failure or a
//! full destination, and drains cleanly on Ctrl-C.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use keep_client::{CopyError, WriteTarget};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::limit::{BufferRoom, RateLimiter};
use crate::plan::{Plan, Todo};
use crate::progress::Progress;
use crate::report::{ConcurrencyUsed, Failure, FailureKind, Report};
use crate::schedule::{Scheduler, Touch};
use crate::topology::{ClassSet, Topology};
use crate::tune::{BLOCK_WEIGHT, Concurrency, Pace, Tuner, auto_max, auto_start};

/// Blocks larger than this are relayed from the source to the destination uploads as
/// they arrive, never held whole: memory no longer grows with block size × blocks in
/// flight. Smaller ones are read whole first, which lets a failed upload be retried on
/// the next service without reading the source again.
const STREAM_ABOVE: u64 = 4 << 20;
/// What a relayed copy is counted for against `--max-buffer-memory`: a few pieces of
/// the source body per upload.
const RELAY_ROOM: u64 = 2 << 20;

/// How many failures before any success, all of one kind that says something about
/// the run (a wrong key, a refused token), stop it.
const SYSTEMATIC_AFTER: usize = 5;
/// How many outcomes in a row, all failures of one such kind, stop a run at any point
/// (a key rotated mid-run, a token revoked).
const WINDOW: usize = 20;

/// The outcome of one block.
enum Outcome {
    Copied {
        replicas: usize,
        past_first_choice: bool,
        /// Destination services that answered "full" along the way.
        full: Vec<String>,
    },
    Failed {
        failure: Failure,
        full: Vec<String>,
    },
}

/// Settings of the engine.
#[derive(Debug)]
pub struct CopyOptions {
    /// Blocks in flight at once: tuned, or fixed.
    pub concurrency: Concurrency,
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
    /// Block after block failed the same way, a way that will not change by itself;
    /// the message says why.
    Systematic(String),
    /// Every writable destination volume is on keepstores that answered "full".
    Full(String),
}

/// Decides when failures say something about the whole run, so that it stops instead
/// of failing every block the same way. Failures that are temporary (5xx, timeouts)
/// or belong to one block (a damaged or vanished copy) never count.
#[derive(Debug, Default)]
struct Verdict {
    /// The latest outcomes, newest last: `None` for a copied block.
    recent: VecDeque<Option<FailureKind>>,
    any_success: bool,
}

impl Verdict {
    /// Records an outcome; returns the kind that should stop the run, if any.
    fn record(&mut self, outcome: Option<FailureKind>) -> Option<FailureKind> {
        self.any_success |= outcome.is_none();
        self.recent.push_back(outcome);
        if self.recent.len() > WINDOW {
            self.recent.pop_front();
        }
        let k = outcome?;
        if k.is_temporary() || k.is_per_block() {
            return None;
        }
        let needed = if self.any_success {
            WINDOW
        } else {
            SYSTEMATIC_AFTER
        };
        let run = self
            .recent
            .iter()
            .rev()
            .take_while(|o| **o == Some(k))
            .count();
        (run >= needed).then_some(k)
    }

    /// How many blocks in a row failed that way (for the message).
    fn run_length(&self) -> usize {
        let last = self.recent.back().copied().flatten();
        self.recent.iter().rev().take_while(|o| **o == last).count()
    }
}

/// What every copy shares: the options, and what follows from them once per run.
struct Shared<'a> {
    opts: &'a CopyOptions,
    /// Destination services that answered "full" (indexes): not written again.
    full: Mutex<Vec<usize>>,
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
    // The defaults, or what the block's collections ask (--by-collections).
    let desired = plan.wanted_replicas(todo);
    let topology = &shared.opts.topology;
    // (class bit, replicas) pairs as (class name, replicas).
    let named = |per_class: &[(ClassSet, u32)]| -> std::collections::BTreeMap<String, usize> {
        per_class
            .iter()
            .flat_map(|&(bit, n)| {
                topology
                    .names(bit)
                    .into_iter()
                    .map(move |c| (c, n as usize))
            })
            .collect()
    };
    let (need, classes) = if dst.client.has_proxy() {
        // A proxy is asked for every replica (X-Keep-Desired-Replicas) and makes them.
        (desired, named(plan.profile(todo)))
    } else {
        let s = plan.shortfall(todo);
        (s.replicas, named(&s.classes))
    };
    WriteTarget {
        hash: todo.hash(),
        desired: desired as usize,
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
    let fail = |kind: FailureKind, e: &keep_client::Error| Outcome::Failed {
        failure: Failure {
            locator: loc.to_string(),
            kind,
            detail: e.to_string(),
        },
        full: full_services(e),
    };
    // Never to a service that lists it already (the checkpoint), nor one that is
    // down or full.
    let mut exclude = if dst.client.has_proxy() {
        Vec::new()
    } else {
        opts.topology.services_of(plan.dst_holders(&todo))
    };
    exclude.extend(opts.skip_dst.iter().copied());
    exclude.extend(shared.full.lock().expect("full lock").iter().copied());
    let target = target(dst, plan, &todo, shared, &exclude);
    // No service left to write: say why (see `nowhere_to_write`), after `what`.
    let nowhere = |what: &str| {
        let full = shared.full.lock().expect("full lock");
        let (kind, why) = nowhere_to_write(&opts.skip_dst, &full, &exclude);
        Outcome::Failed {
            failure: Failure {
                locator: loc.to_string(),
                kind,
                detail: format!("{what}: {why}"),
            },
            full: Vec::new(),
        }
    };
    let mut services = dst.client.services().iter().enumerate();
    if target.need > 0 && services.all(|(i, s)| s.read_only || exclude.contains(&i)) {
        // Every writable service lists it, is down or is full. (A block whose copy
        // first runs after the run learned that the destination is full lands here.)
        // Nothing is read: no write could take it.
        return nowhere("not copied");
    }
    let streamed = todo.size() > STREAM_ABOVE;
    // Held until the block is written (or given up): what the copy holds in memory,
    // the block (buffered) or the relay's pieces (streamed).
    let room = if streamed { RELAY_ROOM } else { todo.size() };
    let mut held = Some(shared.room.reserve(room).await);
    if let Some(l) = &opts.limiter {
        l.acquire(todo.size()).await;
    }
    // The destination keepstores check every byte against the hash before storing
    // it (§5), so the read skips our own MD5 pass (half of a copy's CPU,
    // BENCHMARKS.md); a rejection below re-reads with the check.
    let read_loc = src.signed_for_read(&loc);
    let mut written = if streamed {
        // Relayed from the source to every upload at once, never held whole.
        match src.client.copy_to(&read_loc, &dst.client, &target).await {
            Ok(r) => Ok(r),
            Err(CopyError::Read(e)) => return fail(FailureKind::of_read(&e), &e),
            Err(CopyError::Write(e)) => Err(e),
        }
    } else {
        match src.client.get_unchecked(&read_loc).await {
            Ok(d) => dst.client.put_to(d, &target).await,
            Err(e) => return fail(FailureKind::of_read(&e), &e),
        }
    };
    if let Err(keep_client::Error::ContentRejected { .. }) = &written {
        // (Rare: a bad replica its keepstore did not notice. The checked read holds
        // the whole block, within the budget; the relay's share is given back first,
        // or a budget of one block could never be met.)
        if streamed {
            drop(held.take());
            held.replace(shared.room.reserve(todo.size()).await);
        }
        // The bytes do not match the hash: a source replica is bad (and its keepstore
        // did not notice). Read again with our own check, which fails over to a good
        // replica, or reports the checksum failure.
        tracing::warn!(block = %loc, "the destination rejected the data read from the source; reading it again, checked");
        written = match src.client.get(&read_loc).await {
            Ok(d) => dst.client.put_to(d, &target).await,
            Err(e) => return fail(FailureKind::of_read(&e), &e),
        };
    }
    match written {
        Ok(r) => {
            let first = first_choice(dst, &target);
            let past = !dst.client.has_proxy() && r.stored_on.iter().any(|u| !first.contains(u));
            Outcome::Copied {
                replicas: r.replicas,
                past_first_choice: past,
                full: r.full,
            }
        }
        // Nothing failed, but not enough services were left to ask: the others are
        // down or full (skipped on purpose), a state a later run may not find.
        Err(e)
            if matches!(&e, keep_client::Error::InsufficientReplicas { failures, .. }
                if failures.is_empty()) =>
        {
            nowhere(&short_of(&e))
        }
        Err(e) => fail(FailureKind::of_write(&e), &e),
    }
}

/// Why a block has no writable service left to try, `exclude` being the services
/// its write left out: some are down (`skipped` from the start), full (as far as the
/// run knows now, `full`), or neither (they all list it already).
fn nowhere_to_write(
    skipped: &[usize],
    full: &[usize],
    exclude: &[usize],
) -> (FailureKind, &'static str) {
    if skipped.iter().any(|s| exclude.contains(s)) {
        (
            FailureKind::DestinationUnavailable,
            "the other writable keep services could not be reached",
        )
    } else if full.iter().any(|s| exclude.contains(s)) {
        (
            FailureKind::DestinationFull,
            "the other writable keep services are full",
        )
    } else {
        (
            FailureKind::DestinationError,
            "no other writable keep service could take it",
        )
    }
}

/// "stored N of M wanted replicas of L", without the list of failures.
fn short_of(e: &keep_client::Error) -> String {
    match e {
        keep_client::Error::InsufficientReplicas {
            locator,
            wanted,
            stored,
            ..
        } => format!("stored {stored} of {wanted} wanted replicas of {locator}"),
        other => other.to_string(),
    }
}

/// The services an error says are full.
fn full_services(e: &keep_client::Error) -> Vec<String> {
    match e {
        keep_client::Error::InsufficientReplicas { failures, .. } => failures
            .iter()
            .filter(|f| f.reason == "storage full")
            .map(|f| f.service.clone())
            .collect(),
        _ => Vec::new(),
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
    let halt = stop.child_token();
    let services = dst.client.services();
    let shared = Shared {
        opts,
        expect: opts
            .topology
            .expected_per_service(services.len(), plan.want().classes),
        sharing: opts.topology.sharing(services.len()),
        room: BufferRoom::new(opts.buffer_memory),
        full: Mutex::new(Vec::new()),
    };
    let shared = &shared;
    let mut verdict = Verdict::default();
    let mut stopped = Stop::Finished;

    let replicas = if dst.client.has_proxy() {
        0
    } else {
        plan.want().replicas as usize
    };
    let mut sched = Scheduler::new(
        plan.todo(),
        src.client.services().len(),
        services.len(),
        replicas,
    );
    let mut tuner = match opts.concurrency {
        Concurrency::Auto => {
            let t = plan.stats().to_copy;
            let mean = t.bytes / t.blocks.max(1);
            Some(Tuner::new(
                auto_start(mean),
                auto_max(mean, mean <= STREAM_ABOVE),
            ))
        }
        Concurrency::Fixed(_) => None,
    };
    let mut limit = tuner
        .as_ref()
        .map_or(opts.concurrency.start(), Tuner::limit);
    let began = Instant::now();
    let mut pace = Pace::default();
    let mut running = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if halt.is_cancelled() {
            sched.close();
        }
        while let Some((todo, touch)) = sched.next(limit, |t| touches(src, dst, plan, opts, t)) {
            running.push(async move {
                let t = Instant::now();
                let outcome = copy_one(src, dst, plan, todo, shared).await;
                (todo, touch, outcome, t.elapsed())
            });
        }
        if sched.is_done() {
            break;
        }
        let (todo, touch, outcome, took) = tokio::select! {
            Some(done) = running.next() => done,
            _ = tick.tick() => {
                retune(&mut sched, &mut tuner, &mut limit, (src, dst), began, &pace, running.len());
                continue;
            }
        };
        sched.finish(&touch);
        pace.finish(took);
        retune(
            &mut sched,
            &mut tuner,
            &mut limit,
            (src, dst),
            began,
            &pace,
            running.len(),
        );
        let mut r = report.lock().expect("report lock");
        let (kind, full) = match outcome {
            Outcome::Copied {
                replicas,
                past_first_choice,
                full,
            } => {
                r.copied.blocks += 1;
                r.copied.bytes += todo.size();
                r.replicas_written += replicas as u64;
                r.placed_past_first_choice += u64::from(past_first_choice);
                progress.block_done(&todo.locator().to_string(), todo.size(), true);
                (None, full)
            }
            Outcome::Failed { failure: f, full } => {
                let kind = f.kind;
                progress.block_failed(&f.locator, todo.size(), kind.label(), &f.detail);
                r.fail(f, todo.size());
                (Some(kind), full)
            }
        };
        drop(r);
        if !matches!(stopped, Stop::Finished) {
            continue; // Blocks still in flight end as they may; the first verdict stands.
        }
        if let Some(k) = verdict.record(kind) {
            stopped = Stop::Systematic(format!(
                "{} blocks in a row failed the same way ({}); see the report",
                verdict.run_length(),
                k.label()
            ));
            halt.cancel();
        }
        if !full.is_empty() {
            if let Some(msg) = note_full(dst, shared, plan, &full) {
                stopped = Stop::Full(msg);
                halt.cancel();
            }
        }
    }
    let (low, high) = tuner.as_ref().map_or((limit, limit), Tuner::range);
    let (src_busy, dst_busy) = sched.busy_services();
    let names = |c: &Cluster, v: Vec<usize>| -> Vec<String> {
        v.into_iter()
            .map(|i| c.client.services()[i].uuid.clone())
            .collect()
    };
    report.lock().expect("report lock").concurrency = Some(ConcurrencyUsed {
        setting: opts.concurrency.to_string(),
        low,
        high,
        last: limit,
        busy_services: names(src, src_busy)
            .into_iter()
            .chain(names(dst, dst_busy))
            .collect(),
    });
    stopped
}

/// The services a copy keeps busy unless something fails: the source service it
/// reads first, the destination services it writes first (none through a proxy).
fn touches(src: &Cluster, dst: &Cluster, plan: &Plan, opts: &CopyOptions, todo: &Todo) -> Touch {
    let hash = todo.hash();
    let dst_first = if dst.client.has_proxy() {
        Vec::new()
    } else {
        let held = opts.topology.services_of(plan.dst_holders(todo));
        let need = plan.shortfall(todo).replicas as usize;
        dst.client
            .writable_order_indexes(&hash)
            .into_iter()
            .filter(|i| !held.contains(i) && !opts.skip_dst.contains(i))
            .take(need)
            .collect()
    };
    Touch {
        src: src.client.readable_order_indexes(&hash).first().copied(),
        dst: dst_first,
    }
}

/// Feeds the scheduler the services' busy answers and the tuner the throughput.
fn retune<I: Iterator<Item = Todo>>(
    sched: &mut Scheduler<I>,
    tuner: &mut Option<Tuner>,
    limit: &mut usize,
    (src, dst): (&Cluster, &Cluster),
    began: Instant,
    pace: &Pace,
    in_flight: usize,
) {
    let (st, dt) = (src.client.traffic(), dst.client.traffic());
    let block_time = pace.block_time();
    sched.update(|i| st.busy(i), |i| dt.busy(i), Instant::now(), block_time);
    if let Some(t) = tuner {
        let work = st.received() + pace.finished * BLOCK_WEIGHT;
        let now = began.elapsed();
        *limit = t.observe(now, work, pace.finished, pace.tuning_time(), in_flight);
    }
}

/// Remembers services that said they are full (no block is sent to them again), and
/// says so when no writable room is left for the wanted replicas in some class.
fn note_full(dst: &Cluster, shared: &Shared<'_>, plan: &Plan, newly: &[String]) -> Option<String> {
    let services = dst.client.services();
    let mut full = shared.full.lock().expect("full lock");
    for uuid in newly {
        if let Some(i) = services.iter().position(|s| &s.uuid == uuid) {
            if !full.contains(&i) {
                tracing::warn!("destination keep service {uuid} is full; no more blocks go to it");
                full.push(i);
            }
        }
    }
    let t = &shared.opts.topology;
    let room = t.room_without(&full, plan.want().classes);
    (room < u64::from(plan.want().replicas)).then(|| {
        let names: Vec<&str> = full.iter().map(|&i| services[i].uuid.as_str()).collect();
        format!(
            "the destination is full: the keep services that answered 507 ({}) leave room for {room} of the {} wanted replicas; add volumes, then run again",
            names.join(", "),
            plan.want().replicas
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_service_left_says_why() {
        let kind =
            |skipped: &[usize], full: &[usize]| nowhere_to_write(skipped, full, &[0, 1, 2]).0;
        assert_eq!(kind(&[], &[0, 1, 2]), FailureKind::DestinationFull);
        assert_eq!(kind(&[], &[2]), FailureKind::DestinationFull);
        // Down outranks full: a later run may find the service up, with room.
        assert_eq!(kind(&[1], &[0, 2]), FailureKind::DestinationUnavailable);
        assert_eq!(kind(&[], &[]), FailureKind::DestinationError);
        // Full services this write did not leave out say nothing about it.
        assert_eq!(
            nowhere_to_write(&[], &[3], &[0, 1]).0,
            FailureKind::DestinationError
        );
    }

    #[test]
    fn verdicts() {
        let perm = Some(FailureKind::SourcePermission);
        // Five telling failures before any success stop the run.
        let mut v = Verdict::default();
        for _ in 0..4 {
            assert_eq!(v.record(perm), None);
        }
        assert_eq!(v.record(perm), perm);

        // After a success, it takes a window's worth in a row.
        let mut v = Verdict::default();
        v.record(None);
        for _ in 0..WINDOW - 1 {
            assert_eq!(v.record(perm), None);
        }
        assert_eq!(v.record(perm), perm);
        assert_eq!(v.run_length(), WINDOW);

        // A success or another kind breaks the run; temporary and per-block failures
        // never stop anything.
        let mut v = Verdict::default();
        for i in 0..100 {
            let k = match i % 3 {
                0 => Some(FailureKind::SourceUnavailable),
                1 => Some(FailureKind::Vanished),
                _ => Some(FailureKind::BadSourceCopy),
            };
            assert_eq!(v.record(k), None);
        }
        let mut v = Verdict::default();
        v.record(None);
        for i in 0..100 {
            let k = if i % 10 == 9 { None } else { perm };
            assert_eq!(v.record(k), None, "{i}");
        }
    }
}
