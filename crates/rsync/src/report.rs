//! The final report (stdout) and the exit-code policy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::exit;
use crate::plan::{PlanStats, Tally};
use crate::progress::{fmt_bytes, fmt_duration};
use crate::shard::Shard;

/// What went wrong with a block: decided once, from the error's type, and read by the
/// report, the early stop and the failed list alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Every source service said 404: the block was deleted (keep-balance trashed it)
    /// since the source index was read. Not a failure of the copy: counted apart.
    Vanished,
    /// Every source copy that exists is damaged (a keepstore said so, or the data did
    /// not hash to its name).
    BadSourceCopy,
    /// The source refused the token or the permission signature.
    SourcePermission,
    /// Reading failed for temporary reasons (5xx, timeouts, broken or refused
    /// connections) after every retry.
    SourceUnavailable,
    /// Reading failed another way (a size that does not match, a protocol error).
    SourceError,
    /// The destination keepstores that could take the block answered "full".
    DestinationFull,
    /// The destination refused the token.
    DestinationPermission,
    /// Writing failed for temporary reasons after every retry.
    DestinationUnavailable,
    /// Writing failed another way.
    DestinationError,
    /// `--verify`: the destination does not list the block.
    Missing,
    /// `--verify`: the destination holds too few replicas, or not in every class.
    UnderReplicated,
    /// `--verify-data`: a destination copy failed its read or its MD5.
    BadDestinationCopy,
}

impl FailureKind {
    /// The short label of the report and the failed list.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Vanished => "vanished from the source",
            FailureKind::BadSourceCopy => "source: bad stored copy",
            FailureKind::SourcePermission => "source: permission denied",
            FailureKind::SourceUnavailable => "source: unavailable",
            FailureKind::SourceError => "source: read failed",
            FailureKind::DestinationFull => "destination: full",
            FailureKind::DestinationPermission => "destination: permission denied",
            FailureKind::DestinationUnavailable => "destination: unavailable",
            FailureKind::DestinationError => "destination: write failed",
            FailureKind::Missing => "missing",
            FailureKind::UnderReplicated => "under-replicated",
            FailureKind::BadDestinationCopy => "destination copy: bad",
        }
    }

    /// The one-word name written in the failed list.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Vanished => "vanished",
            FailureKind::BadSourceCopy => "bad-source-copy",
            FailureKind::SourcePermission => "source-permission",
            FailureKind::SourceUnavailable => "source-unavailable",
            FailureKind::SourceError => "source-error",
            FailureKind::DestinationFull => "destination-full",
            FailureKind::DestinationPermission => "destination-permission",
            FailureKind::DestinationUnavailable => "destination-unavailable",
            FailureKind::DestinationError => "destination-error",
            FailureKind::Missing => "missing",
            FailureKind::UnderReplicated => "under-replicated",
            FailureKind::BadDestinationCopy => "bad-destination-copy",
        }
    }

    /// Whether a later try could succeed by itself (the cause is not the block's, nor
    /// the settings'): such failures say nothing about the run as a whole.
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            FailureKind::SourceUnavailable | FailureKind::DestinationUnavailable
        )
    }

    /// Whether the cause lies with one block alone (a damaged or vanished copy), so
    /// that many of them in a row still say nothing about the run.
    pub fn is_per_block(self) -> bool {
        matches!(self, FailureKind::Vanished | FailureKind::BadSourceCopy)
    }

    /// The kind of a failed source read.
    pub fn of_read(e: &keep_client::Error) -> FailureKind {
        use keep_client::Error as E;
        match e {
            E::NotFound { .. } => FailureKind::Vanished,
            E::PermissionDenied { .. } => FailureKind::SourcePermission,
            E::ChecksumMismatch { .. } => FailureKind::BadSourceCopy,
            _ if e.reason() == "bad stored copy" => FailureKind::BadSourceCopy,
            _ if e.is_retryable() => FailureKind::SourceUnavailable,
            _ => FailureKind::SourceError,
        }
    }

    /// The kind of a failed destination write.
    pub fn of_write(e: &keep_client::Error) -> FailureKind {
        use keep_client::Error as E;
        match e {
            E::PermissionDenied { .. } => FailureKind::DestinationPermission,
            E::InsufficientReplicas { failures, .. } => {
                if failures.iter().any(|f| f.reason == "permission denied") {
                    FailureKind::DestinationPermission
                } else if !failures.is_empty()
                    && failures.iter().all(|f| f.reason == "storage full")
                {
                    FailureKind::DestinationFull
                } else if e.is_retryable() {
                    FailureKind::DestinationUnavailable
                } else {
                    FailureKind::DestinationError
                }
            }
            _ if e.is_retryable() => FailureKind::DestinationUnavailable,
            _ => FailureKind::DestinationError,
        }
    }
}

/// A block that could not be copied (or failed verification).
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// `hash+size`, never signed.
    pub locator: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// One-line detail (no secrets: built from unsigned locators and service names).
    pub detail: String,
}

/// `--failed-list`: one line per failure, appended and flushed as it happens, so that
/// the file is the truth so far even if the run is killed. A line is the locator
/// (unsigned), a space, and the failure's one-word kind (`vanished`,
/// `bad-source-copy`, ...); `--from-list` reads the first word of each line.
#[derive(Debug)]
pub struct FailedList {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl FailedList {
    /// Creates (or empties) `path`.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &Path) -> anyhow::Result<FailedList> {
        use anyhow::Context as _;
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot write the failed list {}", path.display()))?;
        Ok(FailedList {
            file,
            path: path.to_owned(),
        })
    }

    fn append(&mut self, f: &Failure) {
        // One write per line on an unbuffered file: what was written is in the
        // kernel's hands, whatever happens to this process next.
        let line = format!("{} {}\n", f.locator, f.kind.name());
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            tracing::error!(
                "cannot append to the failed list {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Writes `report` to `path` whole or not at all (a temporary file beside it, then
/// renamed), so a reader never sees half a report.
///
/// # Errors
/// The file cannot be written.
pub fn write_file(path: &Path, report: &serde_json::Value) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{report}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write the report {}", path.display()))
}

/// Blocks in flight during a copy (`--concurrency`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ConcurrencyUsed {
    /// `auto` or the fixed number.
    pub setting: String,
    /// The lowest and highest limits used, and the last.
    pub low: usize,
    pub high: usize,
    pub last: usize,
    /// Keep services whose busy answers (503, 429) lowered their own limit.
    pub busy_services: Vec<String>,
}

impl std::fmt::Display for ConcurrencyUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.low == self.high {
            write!(f, "{} ({})", self.setting, self.last)?;
        } else {
            write!(
                f,
                "{} ({} to {}, last {})",
                self.setting, self.low, self.high, self.last
            )?;
        }
        if !self.busy_services.is_empty() {
            write!(
                f,
                "; fewer at once to busy services: {}",
                self.busy_services.join(", ")
            )?;
        }
        Ok(())
    }
}

/// What the run did.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// "copy", "dry-run" or "verify".
    pub mode: String,
    /// The prefix the run was limited to.
    pub prefix: String,
    /// `--shard`: which part of the hash space (under `prefix`) this run covered.
    pub shard: Option<Shard>,
    /// Passes the run was split into to fit `--max-plan-memory`, and how many ran to
    /// their end.
    pub passes: u32,
    pub passes_done: u32,
    /// The largest plan held, in bytes (over the passes).
    pub plan_bytes: u64,
    /// Why the run stopped before its end (block after block failing the same way,
    /// a full destination), if it did.
    pub stopped: Option<String>,
    /// The error that ended the run before any report could be made, if one did
    /// (only in a `--report` file).
    pub fatal: Option<String>,
    /// `--from-list`: the file whose locators were copied instead of the source's
    /// indexes.
    pub from_list: Option<String>,
    /// The plan's numbers (listed, present, to copy, per digit).
    pub plan: PlanStats,
    /// `--by-collections`: what was read of the source's collections.
    pub collections: Option<crate::collections::CollectionsRead>,
    /// How destination replicas were counted.
    pub counting_rule: String,
    /// The storage classes written to and counted (empty: any class).
    pub storage_classes: Vec<String>,
    /// Blocks (and bytes) written to the destination in this run.
    pub copied: Tally,
    /// Replicas the destination confirmed in this run.
    pub replicas_written: u64,
    /// Blocks whose copies went past a failed or full service to a later one in probe order.
    pub placed_past_first_choice: u64,
    /// Blocks in flight: the setting and what it came to.
    pub concurrency: Option<ConcurrencyUsed>,
    /// Blocks that failed (vanished ones not included).
    pub failed: Tally,
    /// Failed blocks by kind.
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Blocks deleted from the source since its index was read (keep-balance trashes
    /// blocks on a cluster in use): not copied, and not a failure.
    pub vanished: Tally,
    /// With --verify-data: destination copies read back and checked.
    pub verified_copies: u64,
    /// With --verify-data: bytes of those copies.
    pub verified_bytes: u64,
    /// Blocks not attempted because the run was interrupted.
    pub not_attempted: Tally,
    /// Keep services that could not be reached while indexing (their blocks were
    /// not seen; run again once they are back).
    pub unreachable_services: Vec<String>,
    /// Whether Ctrl-C or SIGTERM stopped the run early.
    pub interrupted: bool,
    /// Wall time of the whole run, seconds.
    pub elapsed_seconds: f64,
    /// Copy throughput, bytes per second.
    pub bytes_per_second: f64,
    /// The failures themselves (first 1000 in the report; all in --failed-list).
    #[serde(skip)]
    pub failures: Vec<Failure>,
    /// Where failures are appended as they happen (`--failed-list`).
    #[serde(skip)]
    pub failed_list: Option<FailedList>,
}

impl Report {
    /// Records a failure (or a vanished block), in the failed list too.
    pub fn fail(&mut self, f: Failure, size: u64) {
        if let Some(list) = &mut self.failed_list {
            list.append(&f);
        }
        if f.kind == FailureKind::Vanished {
            self.vanished.add(size);
        } else {
            self.failed.add(size);
            *self
                .failed_by_reason
                .entry(f.kind.label().to_owned())
                .or_default() += 1;
        }
        if self.failures.len() < 1000 {
            self.failures.push(f);
        }
    }

    /// Sets the timing figures: the rate is of the bytes copied, or read back by
    /// `--verify-data`, over the time after the indexes.
    pub fn set_elapsed(&mut self, elapsed: Duration, copy_time: Duration) {
        self.elapsed_seconds = elapsed.as_secs_f64();
        let t = copy_time.as_secs_f64();
        let moved = self.copied.bytes + self.verified_bytes;
        self.bytes_per_second = if t > 0.0 { moved as f64 / t } else { 0.0 };
    }

    /// The exit code this report calls for.
    pub fn exit_code(&self) -> u8 {
        if self.fatal.is_some() || self.stopped.is_some() {
            exit::FATAL
        } else if self.interrupted {
            exit::INTERRUPTED
        } else if self.failed.blocks > 0 || !self.unreachable_services.is_empty() {
            exit::SOME_FAILED
        } else if self.vanished.blocks > 0 {
            exit::VANISHED
        } else {
            exit::OK
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let p = &self.plan;
        let t = |x: &Tally| format!("{} blocks ({})", x.blocks, fmt_bytes(x.bytes));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "keep-rsync {} report{}",
            self.mode,
            if self.prefix.is_empty() {
                String::new()
            } else {
                format!(" (prefix {})", self.prefix)
            }
        );
        if let Some(shard) = &self.shard {
            let _ = writeln!(s, "  shard:               {shard}");
        }
        if self.passes > 1 {
            let _ = writeln!(
                s,
                "  passes:              {} of {} (to fit --max-plan-memory; largest plan {})",
                self.passes_done,
                self.passes,
                fmt_bytes(self.plan_bytes)
            );
        }
        let _ = writeln!(
            s,
            "  source lists:        {} in {} index lines",
            t(&p.src),
            p.src_entries
        );
        let _ = writeln!(
            s,
            "  destination lists:   {} in {} index lines",
            t(&p.dst),
            p.dst_entries
        );
        let _ = writeln!(s, "  already present:     {}", t(&p.present));
        let _ = writeln!(s, "  missing:             {}", t(&p.missing));
        let _ = writeln!(
            s,
            "  under-replicated:    {} ({})",
            t(&p.under_replicated),
            match (&self.collections, self.storage_classes.is_empty()) {
                (Some(_), _) => "short of what their collections ask".to_owned(),
                (None, true) => format!("fewer than {} replicas", p.replicas),
                (None, false) => format!(
                    "fewer than {} replicas in class {}",
                    p.replicas,
                    self.storage_classes.join(", ")
                ),
            }
        );
        let _ = writeln!(s, "  to copy:             {}", t(&p.to_copy));
        if let Some(c) = &self.collections {
            let _ = writeln!(
                s,
                "  collections read:    {} ({} trashed, {} old versions, {} block references)",
                c.collections, c.trashed, c.old_versions, c.references
            );
            let _ = writeln!(
                s,
                "  asking other than the defaults: {} blocks ({} topped up: {})",
                p.special_wants,
                p.topped_up.blocks,
                t(&p.topped_up)
            );
            let _ = writeln!(
                s,
                "  unreferenced:        {} ({} younger than the blob signature TTL)",
                t(&p.unreferenced),
                p.unreferenced_young.blocks
            );
            if p.unreferenced_skipped.blocks > 0 {
                let _ = writeln!(
                    s,
                    "  left behind (--skip-unreferenced): {}",
                    t(&p.unreferenced_skipped)
                );
            }
            if p.referenced_not_at_source > 0 {
                let _ = writeln!(
                    s,
                    "  referenced but on no source service: {} blocks (lost before this run)",
                    p.referenced_not_at_source
                );
            }
            if c.bad_manifests > 0 {
                let _ = writeln!(
                    s,
                    "  unreadable manifests: {} (see the log; --skip-unreferenced was off)",
                    c.bad_manifests
                );
            }
        }
        if !self.counting_rule.is_empty() {
            let _ = writeln!(s, "  replicas counted:    {}", self.counting_rule);
        }
        if self.mode == "dry-run" {
            let _ = writeln!(s, "  to copy by leading hex digit:");
            for (d, x) in p.by_digit.iter().enumerate() {
                if x.blocks > 0 {
                    let _ = writeln!(s, "    {d:x}: {}", t(x));
                }
            }
        }
        if self.mode == "copy" {
            let _ = writeln!(
                s,
                "  copied:              {} ({} replicas written)",
                t(&self.copied),
                self.replicas_written
            );
            if let Some(c) = &self.concurrency {
                let _ = writeln!(s, "  concurrency:         {c}");
            }
            if self.placed_past_first_choice > 0 {
                let _ = writeln!(
                    s,
                    "  placed past a failed or full first-choice service: {} blocks",
                    self.placed_past_first_choice
                );
            }
        }
        if self.verified_copies > 0 {
            let _ = writeln!(
                s,
                "  copies read back and verified: {}",
                self.verified_copies
            );
        }
        if self.vanished.blocks > 0 {
            let _ = writeln!(
                s,
                "  vanished:            {} (deleted from the source since its index; not copied)",
                t(&self.vanished)
            );
        }
        let _ = writeln!(s, "  failed:              {}", t(&self.failed));
        for (reason, n) in &self.failed_by_reason {
            let _ = writeln!(s, "    {reason}: {n}");
        }
        for f in self.failures.iter().take(20) {
            let _ = writeln!(s, "    {} {}: {}", f.locator, f.kind.label(), f.detail);
        }
        let listed = self.failed.blocks + self.vanished.blocks;
        if listed > 20 {
            let _ = writeln!(s, "    ... and {} more (see --failed-list)", listed - 20);
        }
        for u in &self.unreachable_services {
            let _ = writeln!(
                s,
                "  unreachable: {u} (its blocks were not seen; run again when it is back)"
            );
        }
        if self.interrupted {
            let _ = writeln!(
                s,
                "  interrupted: {} not attempted; run the same command again to finish",
                t(&self.not_attempted)
            );
        }
        let _ = writeln!(
            s,
            "  elapsed:             {} ({}/s)",
            fmt_duration(Duration::from_secs_f64(self.elapsed_seconds)),
            fmt_bytes(self.bytes_per_second as u64)
        );
        s
    }

    /// The JSON report (one line).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("report serialises");
        v["event"] = "report".into();
        v["exit_code"] = self.exit_code().into();
        v["failures"] = self
            .failures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "locator": f.locator, "kind": f.kind.name(), "reason": f.kind.label(),
                    "detail": f.detail,
                })
            })
            .collect();
        v
    }
}
