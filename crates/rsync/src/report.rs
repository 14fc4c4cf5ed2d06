//! The final report (stdout) and the exit-code policy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::cli::exit;
use crate::plan::{PlanStats, Tally};
use crate::progress::{fmt_bytes, fmt_duration};

/// A block that could not be copied (or failed verification).
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// `hash+size`, never signed.
    pub locator: String,
    /// Short category used for grouping (e.g. "not found", "checksum mismatch").
    pub reason: String,
    /// One-line detail (no secrets: built from unsigned locators and service names).
    pub detail: String,
}

/// What the run did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// "copy", "dry-run" or "verify".
    pub mode: String,
    /// The prefix the run was limited to.
    pub prefix: String,
    /// The plan's numbers (listed, present, to copy, per digit).
    pub plan: PlanStats,
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
    /// Blocks that failed.
    pub failed: Tally,
    /// Failed blocks by reason.
    pub failed_by_reason: BTreeMap<String, u64>,
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
}

impl Report {
    /// Records a failure.
    pub fn fail(&mut self, f: Failure, size: u64) {
        self.failed.blocks += 1;
        self.failed.bytes += size;
        *self.failed_by_reason.entry(f.reason.clone()).or_default() += 1;
        self.failures.push(f);
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
        if self.interrupted {
            exit::INTERRUPTED
        } else if self.failed.blocks > 0 || !self.unreachable_services.is_empty() {
            exit::SOME_FAILED
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
            "  under-replicated:    {} (fewer than {} replicas{})",
            t(&p.under_replicated),
            p.replicas,
            if self.storage_classes.is_empty() {
                String::new()
            } else {
                format!(" in class {}", self.storage_classes.join(", "))
            }
        );
        let _ = writeln!(s, "  to copy:             {}", t(&p.to_copy));
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
        let _ = writeln!(s, "  failed:              {}", t(&self.failed));
        for (reason, n) in &self.failed_by_reason {
            let _ = writeln!(s, "    {reason}: {n}");
        }
        for f in self.failures.iter().take(20) {
            let _ = writeln!(s, "    {} {}: {}", f.locator, f.reason, f.detail);
        }
        if self.failures.len() > 20 {
            let _ = writeln!(
                s,
                "    ... and {} more (see --failed-list)",
                self.failures.len() - 20
            );
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
        v["failures"] = serde_json::to_value(self.failures.iter().take(1000).collect::<Vec<_>>())
            .expect("failures serialise");
        v
    }
}

/// Writes the failed locators, one per line, through a temporary file and a rename so
/// that a crash never leaves half a list.
///
/// # Errors
/// The I/O error, with the path.
pub fn write_failed_list(path: &Path, failures: &[Failure]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write the failed list in {}", dir.display()))?;
    for f in failures {
        writeln!(tmp, "{}", f.locator)?;
    }
    tmp.persist(path)
        .with_context(|| format!("cannot write the failed list {}", path.display()))?;
    Ok(())
}
