//! Command-line flags: the raw [`Cli`] as clap parses it, and [`go_style_args`], which
//! lets every flag of the Go keep-rsync work in its single-dash form (`-src foo`).
//!
//! The same definitions produce `--help`, the man page and the shell completions, so
//! they cannot drift apart.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};

use crate::shard::ShardArg;
use crate::tune::Concurrency;

/// Exit codes, as documented in `--help` and the README.
pub mod exit {
    /// Every block is on the destination (or, with `--verify`, verified).
    pub const OK: u8 = 0;
    /// The run finished but some blocks failed (see the report and `--failed-list`).
    pub const SOME_FAILED: u8 = 1;
    /// Usage, settings or fatal error (for example an incomplete index or a rejected token).
    pub const FATAL: u8 = 2;
    /// Everything else was copied, but some source blocks vanished (were deleted on
    /// the source) after its index was read; rsync's code for the same thing.
    pub const VANISHED: u8 = 24;
    /// Interrupted by Ctrl-C or SIGTERM; the report covers what was done.
    pub const INTERRUPTED: u8 = 130;
}

const AFTER_HELP: &str = "\
Every flag also works in the Go keep-rsync's single-dash form: -src, -dst, -replications,
-prefix, -src-keep-services-json, -dst-keep-services-json, -src-blob-signature-ttl, -version.

SETTINGS (-src / -dst)
  NAME   reads $XDG_CONFIG_HOME/arvados/NAME.conf (default ~/.config/arvados/NAME.conf),
         then $XDG_CONFIG_DIRS/arvados/NAME.conf, as arv-copy does.
  PATH   anything containing '/' is read as a file.
  Keys: ARVADOS_API_HOST, ARVADOS_API_TOKEN (the cluster's SystemRootToken: the index
  needs it), ARVADOS_API_HOST_INSECURE, ARVADOS_BLOB_SIGNING_KEY (source: signs reads).

EXIT STATUS
  0    every source block is on the destination at the replication level
  1    finished, but some blocks failed (see the report and --failed-list)
  2    usage, settings or fatal error (bad flag, unreadable settings, incomplete
       index, rejected token or signing key), or stopped: block after block failed
       the same way, or the destination is full; nothing was half-written
  24   everything else copied, but some source blocks vanished (were deleted on the
       source since its index was read); they are listed as vanished
  130  interrupted (Ctrl-C / SIGTERM): copies in flight finished, the report was printed

Run it again after any interruption: the destination's index is the checkpoint, so
only what is still missing is copied.

SHARDS
  keep-rsync ... --shard auto --report DIR/report-$SLURM_ARRAY_TASK_ID.json
                             one task of `sbatch --array=0-15` (examples/slurm/)
  keep-rsync merge-reports [--json] FILE...
                             one report (and one exit status, the worst) for all the
                             shards; says which are missing or failed";

/// Copy every Keep block from one Arvados cluster to another.
///
/// Indexes both clusters, then copies each block the destination lacks, exactly once,
/// onto the destination services that come first in its rendezvous probe order.
#[derive(Debug, Parser)]
#[command(
    name = "keep-rsync",
    version,
    disable_version_flag = true,
    after_long_help = AFTER_HELP,
    max_term_width = 100
)]
pub struct Cli {
    /// Source cluster: a settings NAME or a PATH to a settings file.
    #[arg(long, value_name = "NAME|PATH", required_unless_present = "version")]
    pub src: Option<String>,

    /// Destination cluster: a settings NAME or a PATH to a settings file.
    #[arg(long, value_name = "NAME|PATH", required_unless_present = "version")]
    pub dst: Option<String>,

    /// Number of replicas to write on the destination [default: the destination's
    /// defaultCollectionReplication].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub replications: Option<i64>,

    /// Only blocks whose hash starts with these hex digits (split a migration into
    /// 16 jobs with 0..f).
    #[arg(long, value_name = "HEX", default_value = "")]
    pub prefix: String,

    /// Run shard I of N (0 <= I < N <= 4096): a contiguous 1/N of the hash space
    /// (under -prefix, if given), read as the fewest index prefixes. N such runs, in
    /// any order or at once, copy everything exactly once. auto takes I and N from a
    /// Slurm job array (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) or a Kubernetes
    /// Indexed Job (JOB_COMPLETION_INDEX, KEEP_RSYNC_SHARDS).
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<ShardArg>,

    /// Most memory the plan may take (suffixes K, M, G). A larger migration runs as
    /// passes, one range of hashes after another, in this one process; the number of
    /// blocks is estimated first from a sample of every index (1/4096 of it).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4G")]
    pub max_plan_memory: u64,

    /// Also write the final JSON report to FILE (replaced whole, at the end, even
    /// after a fatal error): one per shard, to add up with keep-rsync merge-reports.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Source keep services as KeepServiceList JSON (literal text or a file), instead
    /// of asking the source API server.
    #[arg(long, value_name = "JSON|FILE")]
    pub src_keep_services_json: Option<String>,

    /// Destination keep services as KeepServiceList JSON (literal text or a file): lets
    /// a destination of bare keepstores with no API server be filled.
    #[arg(long, value_name = "JSON|FILE")]
    pub dst_keep_services_json: Option<String>,

    /// Source blob signature TTL (e.g. 336h, 1209600s, or seconds) [default: the
    /// source's blobSignatureTtl].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub src_blob_signature_ttl: Option<Duration>,

    /// Destination blob signature TTL, for --verify-data [default: the destination's
    /// blobSignatureTtl].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub dst_blob_signature_ttl: Option<Duration>,

    /// Read the source API token from this file instead of the settings file.
    #[arg(long, value_name = "FILE")]
    pub src_token_file: Option<PathBuf>,

    /// Read the destination API token from this file instead of the settings file.
    #[arg(long, value_name = "FILE")]
    pub dst_token_file: Option<PathBuf>,

    /// Read the source blob signing key from this file instead of the settings file.
    #[arg(long, value_name = "FILE")]
    pub src_blob_signing_key_file: Option<PathBuf>,

    /// Read the destination blob signing key from this file (used by --verify-data).
    #[arg(long, value_name = "FILE")]
    pub dst_blob_signing_key_file: Option<PathBuf>,

    /// Storage classes to write to and count in, comma-separated (e.g. archive or
    /// default,archive) [default: the destination's default classes, from its
    /// exported config]. Each class must hold the replication level.
    #[arg(long, value_name = "CLASS,...", value_delimiter = ',')]
    pub storage_classes: Vec<String>,

    /// Blocks copied at once: auto, or a fixed number (1 to 1024). auto starts at 128
    /// (fewer for big blocks: about 64 MiB in flight) and follows the throughput it
    /// measures, up to 256 (or 64 MiB of blocks up to 4 MiB, which are held whole):
    /// higher across a WAN, lower on a busy LAN; a keep service that answers 503 gets
    /// fewer at once, and none holds more than twice its share. Memory is bounded
    /// separately, by --max-buffer-memory.
    #[arg(long, value_name = "auto|N", default_value = "auto")]
    pub concurrency: Concurrency,

    /// Most block data held in memory at once, summed over the copies (or
    /// --verify-data reads) in flight (suffixes K, M, G; powers of 1024). A copy waits
    /// for room before it reads; a block larger than this is copied alone. The default
    /// holds sixteen 64 MiB blocks, which copied full blocks as fast as 32 did
    /// (BENCHMARKS.md, S3); small blocks never reach it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
    pub max_buffer_memory: u64,

    /// Index and plan only: print what would be copied, per leading hex digit. Writes
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Check that every source block is on at least the replication level's number of
    /// destination services; list what is missing or under-replicated. Copies nothing.
    #[arg(long)]
    pub verify: bool,

    /// With --verify, also read every destination copy and check its MD5.
    #[arg(long)]
    pub verify_data: bool,

    /// Give each block the replication and storage classes its collections ask for
    /// (replication_desired, storage_classes_desired: the most any of them asks in
    /// each class, as keep-balance counts; null asks for the destination's default)
    /// instead of the defaults for every block. Reads every source collection,
    /// trashed ones and old versions included, with the source token (the
    /// SystemRootToken). --replications and --storage-classes, when given, override
    /// what collections ask. --verify checks the same.
    #[arg(long)]
    pub by_collections: bool,

    /// With --by-collections: leave behind blocks that no collection refers to,
    /// unless stored more recently than the source's blob signature TTL (a client
    /// holding a signed locator may still save those into a collection:
    /// keep-balance's own rule). The report counts what was left. Safe once the
    /// source is read-only (see the README's runbook).
    #[arg(long, requires = "by_collections")]
    pub skip_unreferenced: bool,

    /// With --skip-unreferenced: write the blocks left behind to FILE, one locator
    /// per line (a file --from-list reads, should they be wanted after all).
    #[arg(long, value_name = "FILE", requires = "skip_unreferenced")]
    pub unreferenced_list: Option<PathBuf>,

    /// Write each block that fails to this file as it fails: its locator (unsigned),
    /// a space, and the kind of failure (vanished, bad-source-copy,
    /// destination-full, ...). The file is emptied at the start of the run.
    #[arg(long, value_name = "FILE")]
    pub failed_list: Option<PathBuf>,

    /// Copy exactly the blocks listed in FILE (one locator with its size per line,
    /// as --failed-list writes them; `#` comments and blank lines are skipped) instead
    /// of those the source's indexes list: retry the failures of a huge run in
    /// minutes. The destination's index is still read, as the checkpoint.
    #[arg(long, value_name = "FILE")]
    pub from_list: Option<PathBuf>,

    /// Print one summary line per DURATION (e.g. 1m) instead of one line per block;
    /// failures are still printed as they happen. For large runs logged to a file.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stats: Option<Duration>,

    /// Limit reads from the source to RATE bytes per second (suffixes K, M, G; powers
    /// of 1024).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,

    /// Retries per request after a temporary error (5xx, timeout, refused
    /// connection), with jittered exponential backoff.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub retries: u32,

    /// A transfer (block read or write, index listing) fails when no byte has moved for
    /// this long (e.g. 60s, 5m); a slow but moving one is never cut, however long it
    /// takes. Connects still time out after 5 s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub stall_timeout: Duration,

    /// Write progress events and the final report as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,

    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,

    /// Only errors and the final report.
    #[arg(short, long)]
    pub quiet: bool,

    /// Print the version and exit.
    #[arg(long, action = ArgAction::SetTrue)]
    pub version: bool,
}

/// Flags of the Go keep-rsync, which the Go `flag` package also accepts with one dash.
/// Any long flag of ours is accepted that way too.
/// Returns each long flag's name and whether it takes a value.
fn long_flags() -> Vec<(String, bool)> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter_map(|a| {
            a.get_long()
                .map(|l| (l.to_owned(), a.get_action().takes_values()))
        })
        .collect()
}

/// Rewrites `-flag` and `-flag=value` to `--flag...` for every known long flag, so
/// scripts written for the Go keep-rsync keep working. Short flags (`-v`, `-q`,
/// `-vv`) and values are left alone.
pub fn go_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let flags = long_flags();
    let mut out = Vec::new();
    let mut after_double_dash = false;
    let mut value_expected = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || after_double_dash || value_expected {
            value_expected = false;
            out.push(arg);
            continue;
        }
        if arg == "--" {
            after_double_dash = true;
            out.push(arg);
            continue;
        }
        // Like Go's flag package, a flag that takes a value consumes the next
        // argument whatever it looks like.
        let (rewritten, takes_value) = match arg.to_str() {
            Some(s) => {
                let single = s.strip_prefix('-').filter(|r| !r.starts_with('-'));
                let rest = s.trim_start_matches('-');
                let (name, has_eq) = rest
                    .split_once('=')
                    .map_or((rest, false), |(n, _)| (n, true));
                match flags.iter().find(|(n, _)| n == name) {
                    Some((_, tv)) => (single.map(|_| format!("-{s}")), *tv && !has_eq),
                    None => (None, false),
                }
            }
            None => (None, false),
        };
        value_expected = takes_value;
        out.push(rewritten.map_or(arg, OsString::from));
    }
    out
}

/// Parses a Go-style duration (`336h`, `1h30m`, `90s`, `1209600s`) or a plain number
/// of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("'{s}' lacks a unit (use h, m, s or ms, e.g. 336h)"))?;
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a duration (e.g. 336h, 1209600s)"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return Err(format!("'{s}': unknown unit '{unit}' (use h, m, s or ms)")),
        };
        total += value * scale;
        rest = next;
    }
    Ok(Duration::from_secs_f64(total))
}

/// Parses a byte rate: `1048576`, `512K`, `10M`, `1G` (powers of 1024), with an
/// optional trailing `B` or `/s`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    parse_bytes(
        s,
        s.trim().trim_end_matches("/s"),
        "a rate (e.g. 50M for 50 MiB/s)",
    )
}

/// Parses an amount of memory: `1048576`, `512K`, `512M`, `1G` (powers of 1024), with
/// an optional trailing `B`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s, s.trim(), "a size (e.g. 512M)")
}

/// `t` (the trimmed `s`) as a positive number of bytes with an optional K/M/G suffix;
/// errors name `s` and say it is not `what`.
fn parse_bytes(s: &str, t: &str, what: &str) -> Result<u64, String> {
    let t = t.trim_end_matches(['B', 'b']);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not {what}"))?;
    if n.is_nan() || n < 1.0 || !n.is_finite() {
        return Err(format!("'{s}': must be positive, at least 1 byte"));
    }
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let args = go_style_args(args.iter().map(OsString::from));
        Cli::try_parse_from(args)
    }

    #[test]
    fn go_single_dash_flags() {
        let c = parse(&[
            "keep-rsync",
            "-src",
            "a",
            "-dst=b",
            "-replications",
            "3",
            "-prefix",
            "0a",
            "-src-keep-services-json",
            "{}",
            "-dst-keep-services-json={}",
            "-src-blob-signature-ttl",
            "336h",
            "-v",
        ])
        .unwrap();
        assert_eq!(c.src.as_deref(), Some("a"));
        assert_eq!(c.dst.as_deref(), Some("b"));
        assert_eq!(c.replications, Some(3));
        assert_eq!(c.prefix, "0a");
        assert_eq!(c.src_keep_services_json.as_deref(), Some("{}"));
        assert_eq!(c.dst_keep_services_json.as_deref(), Some("{}"));
        assert_eq!(
            c.src_blob_signature_ttl,
            Some(Duration::from_secs(1_209_600))
        );
        assert_eq!(c.verbose, 1);
        assert!(parse(&["keep-rsync", "-version"]).unwrap().version);
    }

    #[test]
    fn gnu_long_flags() {
        let c = parse(&[
            "keep-rsync",
            "--src",
            "a",
            "--dst",
            "b",
            "--dry-run",
            "--concurrency=4",
        ])
        .unwrap();
        assert!(c.dry_run);
        assert_eq!(c.concurrency, Concurrency::Fixed(4));
        assert!(parse(&["keep-rsync", "--src", "a"]).is_err());
        // A value that happens to be a flag name is not rewritten.
        let args = go_style_args(["keep-rsync", "-prefix", "-src"].map(OsString::from));
        assert_eq!(args[2], "-src");
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("336h").unwrap(),
            Duration::from_secs(1_209_600)
        );
        assert_eq!(
            parse_duration("1209600").unwrap(),
            Duration::from_secs(1_209_600)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("336h0m0s").unwrap(),
            Duration::from_secs(1_209_600)
        );
        assert!(parse_duration("two weeks").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1024").unwrap(), 1024);
        assert_eq!(parse_rate("10M").unwrap(), 10 << 20);
        assert_eq!(parse_rate("1.5K").unwrap(), 1536);
        assert_eq!(parse_rate("2G/s").unwrap(), 2 << 30);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-5M").is_err());
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("640MB").unwrap(), 640 << 20);
        assert!(parse_size("5M/s").is_err());
        assert!(parse_size("0.5").is_err());
    }
}
