//! # keep-rsync: copy every Keep block from one Arvados cluster to another
//!
//! The main flow is [`run`]: validate flags and settings (no network), connect to both
//! clusters, read every destination index and then every source index into a compact
//! [`plan::Plan`], then copy (or, with `--dry-run`/`--verify`, only report).
//!
//! # Layout
//! - [`cli`]: flags (Go single-dash forms included) and exit codes.
//! - [`cluster`]: one side: settings, secrets, Keep client, discovery values, signing.
//! - [`topology`]: a side's volumes (`/mounts`) and how replicas are counted.
//! - [`scan`]: all indexes at once, streamed into the plan.
//! - [`plan`]: the compact set difference (≤ 40 bytes per block). No I/O.
//! - [`copy`]: the bounded concurrent copy engine.
//! - [`verify`]: `--verify` and `--verify-data`.
//! - [`listfile`]: `--from-list`, locators to copy instead of the source's indexes.
//! - [`progress`], [`report`], [`limit`], [`signals`]: what the operator sees,
//!   `--bwlimit` and `--max-buffer-memory`, Ctrl-C.

pub mod cli;
pub mod cluster;
pub mod collections;
pub mod copy;
pub mod limit;
pub mod listfile;
pub mod merge;
mod passes;
pub mod plan;
pub mod progress;
pub mod report;
pub mod scan;
pub mod schedule;
pub mod shard;
pub mod signals;
pub mod topology;
pub mod tune;
pub mod verify;

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use keep_client::{ClientOptions, RetryConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, exit};
use crate::cluster::{ClusterArgs, Role};
use crate::plan::PlanBuilder;
use crate::progress::{Mode, Progress};
use crate::report::Report;

/// Checks what can be checked without the network, so a typo costs no connection.
fn validate(cli: &Cli) -> Result<()> {
    let p = &cli.prefix;
    if p.len() > 32 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!("-prefix {p:?} is not a hash prefix: use up to 32 hex digits, e.g. -prefix 0a");
    }
    if p.bytes().any(|c| c.is_ascii_uppercase()) {
        bail!(
            "-prefix {p:?}: Keep hashes are lowercase; use -prefix {}",
            p.to_ascii_lowercase()
        );
    }
    if let Some(r) = cli.replications {
        if r < 1 {
            bail!(
                "-replications {r}: must be at least 1 (omit it to use the destination's default)"
            );
        }
        if r > 64 {
            bail!("-replications {r}: too many; Keep clusters use 1 to 3");
        }
    }
    if cli.retries > 100 {
        bail!("--retries {}: use 0 to 100", cli.retries);
    }
    if cli.stall_timeout.as_millis() < 100 {
        bail!("--stall-timeout: must be at least 100ms (e.g. 60s)");
    }
    for (flag, ttl) in [
        ("-src-blob-signature-ttl", cli.src_blob_signature_ttl),
        ("--dst-blob-signature-ttl", cli.dst_blob_signature_ttl),
    ] {
        if ttl.is_some_and(|t| t.as_secs() == 0) {
            bail!("{flag}: must be at least one second (e.g. 336h)");
        }
    }
    if cli.verify_data && !cli.verify {
        bail!("--verify-data goes with --verify");
    }
    if cli.dry_run && cli.verify {
        bail!("--dry-run and --verify are different runs; choose one");
    }
    for (flag, f) in [
        ("--failed-list", &cli.failed_list),
        ("--unreferenced-list", &cli.unreferenced_list),
    ] {
        let Some(f) = f else { continue };
        if f.is_dir() {
            bail!("{flag} {}: is a directory; name a file", f.display());
        }
        // Checked now, not after a day of copying.
        let dir = f.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            bail!("{flag} {}: the directory does not exist", f.display());
        }
    }
    if cli.by_collections && cli.from_list.is_some() {
        bail!(
            "--by-collections and --from-list: a list run copies the listed blocks at the defaults; choose one"
        );
    }
    Ok(())
}

/// Runs keep-rsync with parsed flags and returns the exit code. Errors are printed
/// as one line on stderr (and, with `--report`, written there as a report that says
/// so, for `merge-reports`).
pub async fn run(cli: Cli) -> u8 {
    let report_path = cli.report.clone();
    let fatal_report = Report {
        mode: mode_name(&cli).into(),
        prefix: cli.prefix.clone(),
        shard: match cli.shard {
            Some(shard::ShardArg::Given(s)) => Some(s),
            Some(shard::ShardArg::Auto) => shard::Shard::from_env(|k| std::env::var(k).ok()).ok(),
            None => None,
        },
        ..Report::default()
    };
    match run_inner(cli).await {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("keep-rsync: {msg}");
            if let Some(path) = report_path {
                let r = Report {
                    fatal: Some(msg),
                    ..fatal_report
                };
                if let Err(e) = report::write_file(&path, &r.to_json()) {
                    eprintln!("keep-rsync: {e:#}");
                }
            }
            exit::FATAL
        }
    }
}

async fn run_inner(cli: Cli) -> Result<u8> {
    if cli.version {
        println!("keep-rsync {}", env!("CARGO_PKG_VERSION"));
        return Ok(exit::OK);
    }
    validate(&cli)?;
    let shard = match cli.shard {
        None => shard::Shard::ALL,
        Some(shard::ShardArg::Given(s)) => s,
        Some(shard::ShardArg::Auto) => {
            shard::Shard::from_env(|k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?
        }
    };
    let started = Instant::now();
    let progress = Progress::new(Mode::choose(cli.json, cli.quiet), cli.stats);
    // Created (emptied) now: a path that cannot be written is found before any work,
    // and from here on the file holds every failure as it happens.
    let failed_list = match &cli.failed_list {
        Some(p) => Some(report::FailedList::create(p)?),
        None => None,
    };
    let from_list = match &cli.from_list {
        Some(p) => Some(listfile::read(p)?),
        None => None,
    };
    let unreferenced_list = match &cli.unreferenced_list {
        Some(p) => Some(Mutex::new(collections::UnreferencedList::create(p)?)),
        None => None,
    };
    let src_arg = cli.src.as_deref().expect("clap requires -src");
    let dst_arg = cli.dst.as_deref().expect("clap requires -dst");
    let src_args = ClusterArgs {
        role: Role::Source,
        settings: src_arg,
        services_json: cli.src_keep_services_json.as_deref(),
        token_file: cli.src_token_file.as_deref(),
        key_file: cli.src_blob_signing_key_file.as_deref(),
        ttl: cli.src_blob_signature_ttl,
    };
    let dst_args = ClusterArgs {
        role: Role::Destination,
        settings: dst_arg,
        services_json: cli.dst_keep_services_json.as_deref(),
        token_file: cli.dst_token_file.as_deref(),
        key_file: cli.dst_blob_signing_key_file.as_deref(),
        ttl: cli.dst_blob_signature_ttl,
    };
    // Settings errors before any connection.
    let src_loaded = cluster::load_settings(&src_args)?;
    let dst_loaded = cluster::load_settings(&dst_args)?;

    let options = ClientOptions {
        retry: RetryConfig {
            retries: cli.retries,
            ..RetryConfig::default()
        },
        pool_max_idle_per_host: cli.concurrency.max().max(8),
        stall_timeout: cli.stall_timeout,
        ..ClientOptions::default()
    };
    // With keep services given as JSON, the API server is asked only for what no
    // flag gave (the Go tool's use with -replications and -src-blob-signature-ttl).
    let src_use_api = src_loaded.key.is_some() && cli.src_blob_signature_ttl.is_none();
    let dst_use_api = cli.replications.is_none()
        || (cli.verify_data && dst_loaded.key.is_some() && cli.dst_blob_signature_ttl.is_none());
    let (src, dst) = tokio::try_join!(
        cluster::connect(&src_args, src_loaded, options.clone(), src_use_api),
        cluster::connect(&dst_args, dst_loaded, options, dst_use_api)
    )?;
    same_cluster_check(&src, &dst)?;

    let replicas = match (cli.replications, dst.default_replication) {
        (Some(r), _) => r as u32,
        (None, Some(r)) => r,
        (None, None) => bail!(
            "the destination's default replication is unknown (it has no discovery document); pass -replications N"
        ),
    };
    let (src_topology, mut dst_topology) = tokio::try_join!(
        async {
            if from_list.is_some() {
                // The source's indexes are not read: its volumes do not matter.
                return Ok(topology::Topology::unread());
            }
            topology::Topology::discover(&src.client)
                .await
                .context("source /mounts")
        },
        async {
            topology::Topology::discover(&dst.client)
                .await
                .context("destination /mounts")
        }
    )?;
    let classes = wanted_classes(&cli, &dst, &dst_topology);
    let want = plan::Want {
        replicas,
        classes: dst_topology.class_set(&classes)?,
    };
    preflight(&dst, &dst_topology, want, &classes)?;
    if src.key.is_none() {
        tracing::warn!(
            "no ARVADOS_BLOB_SIGNING_KEY for the source: reading with unsigned locators (works only if the source does not enforce permission signatures)"
        );
    } else if src.ttl.is_none() {
        bail!(
            "the source's blobSignatureTtl is unknown (no discovery document); give -src-blob-signature-ttl, e.g. 336h"
        );
    }
    if cli.by_collections {
        collections::source_api(&src)?;
    }
    if cli.skip_unreferenced && src.ttl.is_none() {
        bail!(
            "--skip-unreferenced keeps blocks younger than the source's blob signature TTL, which is unknown (no discovery document); give -src-blob-signature-ttl, e.g. 336h"
        );
    }

    let stop = CancellationToken::new();
    {
        let mode = progress.mode();
        signals::install(stop.clone(), move |m| {
            if matches!(mode, Mode::Bar | Mode::Lines) {
                eprintln!("{m}");
            }
        });
    }

    // Through a keepproxy the destination index cannot tell services apart (§6.5), so
    // a block it lists at all counts as present; keepproxy makes the copies.
    let counting = if dst_topology.rule == topology::Rule::Proxy {
        plan::Want {
            replicas: 1,
            classes: 0,
        }
    } else {
        want
    };
    let job = Job {
        cli: &cli,
        src: &src,
        dst: &dst,
        src_topology: &src_topology,
        dst_topology: &dst_topology,
        want,
        counting,
        from_list: from_list.as_deref(),
        unreferenced_list: unreferenced_list.as_ref(),
        stop: &stop,
    };
    // One pass, unless the plan outgrows --max-plan-memory while it is read: then
    // the run starts again as passes.
    let mut passes = vec![shard.prefixes(&cli.prefix)];
    let mut report = Report {
        mode: mode_name(&cli).into(),
        prefix: cli.prefix.clone(),
        shard: (shard != shard::Shard::ALL).then_some(shard),
        passes: passes.len() as u32,
        from_list: cli.from_list.as_ref().map(|p| p.display().to_string()),
        failed_list,
        counting_rule: dst_topology.rule.to_string(),
        storage_classes: classes.clone(),
        ..Report::default()
    };
    let copy_started = Instant::now();
    let progress = std::sync::Arc::new(progress);
    let mut i = 0;
    while i < passes.len() {
        let prefixes = &passes[i];
        if passes.len() > 1 {
            progress.note(&format!(
                "pass {} of {}: hashes starting {}",
                i + 1,
                passes.len(),
                passes::describe(prefixes)
            ));
        }
        let outcome = match run_pass(&job, prefixes, &progress, &mut report).await {
            Err(e) if e.is::<scan::OverBudget>() => {
                if passes.len() == 1 {
                    passes = passes::split(&job, shard, &progress).await?;
                } else {
                    // The estimate was low for this range: halve it.
                    let halves = passes::halve(&passes[i])?;
                    passes.splice(i..=i, halves);
                }
                report.passes = passes.len() as u32;
                continue;
            }
            other => other?,
        };
        i += 1;
        if let Some(msg) = outcome {
            report.stopped = Some(msg.clone());
            finish_report(&cli, &mut report, started, copy_started, &progress)?;
            eprintln!("keep-rsync: {msg}");
            return Ok(report.exit_code());
        }
        if stop.is_cancelled() {
            break;
        }
        report.passes_done += 1;
    }
    finish(&cli, &stop, &mut report, started, copy_started, &progress)?;
    Ok(report.exit_code())
}

/// What every pass of a run shares.
pub(crate) struct Job<'a> {
    pub(crate) cli: &'a Cli,
    pub(crate) src: &'a cluster::Cluster,
    pub(crate) dst: &'a cluster::Cluster,
    pub(crate) src_topology: &'a topology::Topology,
    pub(crate) dst_topology: &'a topology::Topology,
    /// What the destination should hold, and what its index counts toward.
    pub(crate) want: plan::Want,
    pub(crate) counting: plan::Want,
    /// `--from-list`: these blocks instead of the source's indexes.
    pub(crate) from_list: Option<&'a [keep_client::Locator]>,
    /// `--unreferenced-list`.
    pub(crate) unreferenced_list: Option<&'a Mutex<collections::UnreferencedList>>,
    pub(crate) stop: &'a CancellationToken,
}

impl Job<'_> {
    /// Indexes both sides under `prefixes` (the destination first: the source's
    /// entries are filtered against it as they stream in) into a plan. Returns the
    /// plan and the devices of each side that could not be reached.
    pub(crate) async fn plan(
        &self,
        prefixes: &[String],
        progress: &Progress,
    ) -> Result<(plan::Plan, Vec<usize>, Vec<usize>)> {
        let weights = self
            .dst_topology
            .devices
            .iter()
            .map(|d| plan::DeviceWeight {
                replication: d.replication,
                classes: d.classes,
            })
            .collect();
        let mut builder = PlanBuilder::new(self.counting, weights);
        if let (true, Some(ttl)) = (self.cli.skip_unreferenced, self.src.ttl) {
            // keep-balance's rule: a block stored within the TTL may yet be saved
            // into a collection by a client holding a signed locator for it.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let since = now.saturating_sub(ttl).as_nanos();
            builder.track_young(i64::try_from(since).unwrap_or(i64::MAX));
        }
        let planner = scan::Planner::start(builder, self.cli.max_plan_memory)?;
        let dst_down =
            scan::scan(self.dst, self.dst_topology, prefixes, &planner, progress).await?;
        planner.finish_dst();
        let src_down = match self.from_list {
            // Exactly the listed blocks, as if the source had listed them.
            Some(blocks) => {
                planner.add_src(
                    blocks
                        .iter()
                        .filter(|l| prefixes.iter().any(|p| l.hash().has_hex_prefix(p))),
                );
                Vec::new()
            }
            None => scan::scan(self.src, self.src_topology, prefixes, &planner, progress).await?,
        };
        let mut plan = planner.finish()?;
        plan.set_want(self.want);
        Ok((plan, src_down, dst_down))
    }
}

/// One pass: plans the blocks under `prefixes`, then copies (or verifies) them,
/// adding to `report`. Returns why the run must stop, if it must.
async fn run_pass(
    job: &Job<'_>,
    prefixes: &[String],
    progress: &std::sync::Arc<Progress>,
    report: &mut Report,
) -> Result<Option<String>> {
    let cli = job.cli;
    let (src, dst) = (job.src, job.dst);
    let (mut plan, src_down, dst_down) = job.plan(prefixes, progress).await?;
    if cli.by_collections {
        let read =
            collections::apply(job, &mut plan, prefixes, progress, job.unreferenced_list).await?;
        report.collections = Some(read);
    }
    let s = plan.stats();
    progress.note(&if cli.verify {
        format!(
            "There are {} blocks in src and {} blocks in dst; {} src blocks are missing or under-replicated in dst.",
            s.src.blocks, s.dst.blocks, s.to_copy.blocks
        )
    } else if cli.dry_run {
        format!(
            "There are {} blocks in src and {} blocks in dst; {} blocks would be copied.",
            s.src.blocks, s.dst.blocks, s.to_copy.blocks
        )
    } else {
        // The Go tool's line, word for word: log scrapers look for it.
        format!(
            "Before keep-rsync, there are {} blocks in src and {} blocks in dst. Start copying {} blocks from src not found in dst.",
            s.src.blocks, s.dst.blocks, s.to_copy.blocks
        )
    });
    report.plan.absorb(s);
    report.plan_bytes = report.plan_bytes.max(plan.heap_bytes() as u64);
    for u in unreachable("source", src, job.src_topology, &src_down)
        .into_iter()
        .chain(unreachable("destination", dst, job.dst_topology, &dst_down))
    {
        if !report.unreachable_services.contains(&u) {
            report.unreachable_services.push(u);
        }
    }
    if cli.verify {
        verify::run(
            dst,
            job.dst_topology,
            &plan,
            verify::VerifyOptions {
                data: cli.verify_data,
                concurrency: cli.concurrency.start(),
                buffer_memory: cli.max_buffer_memory,
            },
            progress,
            job.stop,
            report,
        )
        .await;
        return Ok(None);
    }
    if cli.dry_run {
        return Ok(None);
    }
    progress.start_copy(s.to_copy.blocks, s.to_copy.bytes);
    let skip_dst = job
        .dst_topology
        .services_of(&dst_down.iter().map(|&d| d as u16).collect::<Vec<_>>());
    let opts = copy::CopyOptions {
        concurrency: cli.concurrency,
        buffer_memory: cli.max_buffer_memory,
        limiter: cli.bwlimit.map(limit::RateLimiter::new),
        skip_dst: skip_dst
            .into_iter()
            .chain(job.dst_topology.unreachable.iter().map(|&s| usize::from(s)))
            .collect(),
        topology: job.dst_topology.clone(),
    };
    let shared = Mutex::new(std::mem::take(report));
    let stats = progress.spawn_stats();
    let outcome = copy::run(src, dst, &plan, &opts, progress, job.stop, &shared).await;
    if let Some(t) = stats {
        t.abort();
    }
    *report = shared.into_inner().expect("report lock");
    Ok(match outcome {
        copy::Stop::Finished => None,
        copy::Stop::Systematic(msg) => Some(format!("stopped early: {msg}")),
        copy::Stop::Full(msg) => Some(format!("stopped: {msg}")),
    })
}

/// The report's name for what the run does.
fn mode_name(cli: &Cli) -> &'static str {
    if cli.dry_run {
        "dry-run"
    } else if cli.verify {
        "verify"
    } else {
        "copy"
    }
}

/// Marks an interrupted run's blocks as not attempted, and prints the report.
fn finish(
    cli: &Cli,
    stop: &CancellationToken,
    report: &mut Report,
    started: Instant,
    copy_started: Instant,
    progress: &Progress,
) -> Result<()> {
    let s = report.plan.clone();
    if stop.is_cancelled() {
        report.interrupted = true;
        let done = report.copied.blocks + report.failed.blocks + report.vanished.blocks;
        report.not_attempted.blocks = s.to_copy.blocks.saturating_sub(done);
        report.not_attempted.bytes = s
            .to_copy
            .bytes
            .saturating_sub(report.copied.bytes + report.failed.bytes + report.vanished.bytes);
    }
    finish_report(cli, report, started, copy_started, progress)
}

fn finish_report(
    cli: &Cli,
    report: &mut Report,
    started: Instant,
    copy_started: Instant,
    progress: &Progress,
) -> Result<()> {
    report.set_elapsed(started.elapsed(), copy_started.elapsed());
    progress.finish();
    if cli.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    if let Some(path) = &cli.report {
        report::write_file(path, &report.to_json())?;
    }
    Ok(())
}

/// The storage classes to write and count: `--storage-classes`, else the
/// destination's default classes from its exported config (§7.4), as the Go client
/// sends them. Without a config (keep services as JSON and no API server asked):
/// `default` if a destination volume is in that class (keep-balance's default for a
/// collection that names none), else none, with a warning.
fn wanted_classes(cli: &Cli, dst: &cluster::Cluster, t: &topology::Topology) -> Vec<String> {
    if !cli.storage_classes.is_empty() {
        let mut c: Vec<String> = cli
            .storage_classes
            .iter()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        c.sort();
        c.dedup();
        return c;
    }
    if !dst.default_storage_classes.is_empty() {
        return dst.default_storage_classes.clone();
    }
    if t.class_names.iter().any(|c| c == "default") {
        tracing::warn!(
            "the destination's default storage classes are unknown (its config was not read); writing to class default (pass --storage-classes to choose)"
        );
        return vec!["default".to_owned()];
    }
    if t.by_volume() {
        tracing::warn!(
            "the destination's default storage classes are unknown and none of its volumes is in class default; blocks go to whichever class each keepstore tries first (pass --storage-classes to choose)"
        );
    }
    Vec::new()
}

/// Refuses a replication level the destination cannot hold: for each wanted class,
/// the summed replication of its writable volumes in that class (one per writable
/// service where volumes are unknown). A keepproxy is trusted to know.
fn preflight(
    dst: &cluster::Cluster,
    t: &topology::Topology,
    want: plan::Want,
    classes: &[String],
) -> Result<()> {
    if t.rule == topology::Rule::Proxy {
        return Ok(());
    }
    let what = if t.by_volume() {
        "replicas on writable volumes"
    } else {
        "writable keep service(s)"
    };
    let checks: Vec<(Option<u64>, String)> = if want.classes == 0 {
        vec![(None, String::new())]
    } else {
        classes
            .iter()
            .map(|c| {
                let bit = t.class_names.iter().position(|n| n == c).map(|b| 1u64 << b);
                (bit, format!(" in class {c}"))
            })
            .collect()
    };
    for (bit, in_class) in checks {
        let room = bit.map_or_else(
            || t.writable_replication(None),
            |b| t.writable_replication(Some(b)),
        );
        if room < u64::from(want.replicas) {
            let services = dst.client.services().len();
            if !t.unreachable.is_empty() {
                // Its volumes are unknown until it is back: the blocks that need it
                // fail and are listed, and the report names it (exit 1).
                tracing::warn!(
                    "-replications {}: the reachable destination volumes hold only {room} {what}{in_class}; {} keep service(s) could not be reached",
                    want.replicas,
                    t.unreachable.len()
                );
                continue;
            }
            bail!(
                "-replications {}: the destination can hold only {room} {what}{in_class} ({services} keep services); lower -replications{}",
                want.replicas,
                if in_class.is_empty() {
                    ""
                } else {
                    " or choose other --storage-classes"
                }
            );
        }
    }
    Ok(())
}

/// Report lines for what could not be reached on one side: services whose `/mounts`
/// did not answer, and devices whose index did not.
fn unreachable(
    side: &str,
    c: &cluster::Cluster,
    t: &topology::Topology,
    devices: &[usize],
) -> Vec<String> {
    let services = c.client.services();
    t.unreachable
        .iter()
        .map(|&s| services[usize::from(s)].uuid.clone())
        .chain(devices.iter().map(|&d| {
            let dev = &t.devices[d];
            if t.by_volume() {
                let via: Vec<&str> = dev
                    .services
                    .iter()
                    .map(|&s| services[usize::from(s)].uuid.as_str())
                    .collect();
                format!("{} (volume, via {})", dev.id, via.join(", "))
            } else {
                dev.id.clone()
            }
        }))
        .map(|u| format!("{side} {u}"))
        .collect()
}

/// Refuses to copy a cluster onto itself, which would only waste a day of I/O.
fn same_cluster_check(src: &cluster::Cluster, dst: &cluster::Cluster) -> Result<()> {
    if let (Some(a), Some(b)) = (&src.api_host, &dst.api_host) {
        if a.eq_ignore_ascii_case(b) {
            bail!("source and destination are the same cluster ({a}); check -src and -dst");
        }
    }
    let dst_urls: Vec<&str> = dst
        .client
        .services()
        .iter()
        .map(|s| s.url.as_str())
        .collect();
    if let Some(s) = src
        .client
        .services()
        .iter()
        .find(|s| dst_urls.contains(&s.url.as_str()))
    {
        bail!(
            "source and destination share the keep service {}; check -src and -dst",
            s.url
        );
    }
    Ok(())
}
