//! `keep-rsync merge-reports FILE...`: the JSON reports of the shards of one
//! migration (`--shard I/N --report FILE`) added up into one report with one exit
//! status, the worst, naming the shards that are missing, repeated or failed. A
//! migration is done when this says 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::cli::exit;
use crate::report::Report;

/// One shard's report as read back.
#[derive(Debug)]
struct Part {
    path: PathBuf,
    report: Report,
    exit_code: u8,
    failures: Vec<serde_json::Value>,
}

/// How bad an exit status is, to pick the worst: a fatal error or a stop, then an
/// interruption, then failures, then vanished blocks.
fn severity(code: u8) -> u8 {
    match code {
        exit::OK => 0,
        exit::VANISHED => 1,
        exit::SOME_FAILED => 2,
        exit::INTERRUPTED => 3,
        _ => 4,
    }
}

/// Reads a report file: the JSON report itself, or any output whose lines include
/// it (`--json` output); the last report line counts.
fn read(path: &Path) -> Result<Part> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the report {}", path.display()))?;
    let value = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(|v| v["event"] == "report")
        .or_else(|| {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .filter(|v| v["event"] == "report")
        })
        .with_context(|| {
            format!(
                "{}: no keep-rsync JSON report in it (write one with --report FILE)",
                path.display()
            )
        })?;
    let exit_code = value["exit_code"]
        .as_u64()
        .and_then(|c| u8::try_from(c).ok())
        .with_context(|| format!("{}: the report has no exit_code", path.display()))?;
    let failures = value["failures"].as_array().cloned().unwrap_or_default();
    let report: Report = serde_json::from_value(value)
        .with_context(|| format!("{}: not a keep-rsync report", path.display()))?;
    Ok(Part {
        path: path.to_owned(),
        report,
        exit_code,
        failures,
    })
}

/// The merged report and its exit status, with the reasons it is not 0.
#[derive(Debug)]
pub struct Merged {
    /// The sum of the shards' reports.
    pub report: Report,
    /// The worst exit status among the shards, or 2 if shards are missing.
    pub exit_code: u8,
    /// What is wrong with the set of shards: missing, repeated, failed.
    pub problems: Vec<String>,
    failures: Vec<serde_json::Value>,
    shards: Option<u32>,
    files: usize,
}

/// Adds up the reports in `paths`.
///
/// # Errors
/// A file cannot be read or holds no report, or the reports are of different
/// migrations (different modes, prefixes or shard counts).
pub fn merge(paths: &[PathBuf]) -> Result<Merged> {
    if paths.is_empty() {
        bail!("merge-reports: name the report files (e.g. reports/*.json)");
    }
    let parts = paths.iter().map(|p| read(p)).collect::<Result<Vec<_>>>()?;
    let first = &parts[0];
    let count = first.report.shard.map(|s| s.count);
    for p in &parts {
        let same = p.report.shard.map(|s| s.count) == count
            && p.report.prefix == first.report.prefix
            && (p.report.mode == first.report.mode
                || p.report.fatal.is_some()
                || first.report.fatal.is_some());
        if !same {
            bail!(
                "{} and {} are not shards of one run (mode, -prefix or shard count differ)",
                first.path.display(),
                p.path.display()
            );
        }
    }
    let mut problems = Vec::new();
    let mut seen: BTreeMap<u32, &Path> = BTreeMap::new();
    for p in &parts {
        if let Some(s) = p.report.shard {
            if let Some(other) = seen.insert(s.index, &p.path) {
                problems.push(format!(
                    "shard {s} is reported twice ({} and {}); only the newer run counts, remove the other",
                    other.display(),
                    p.path.display()
                ));
            }
        }
    }
    if let Some(n) = count {
        let missing: Vec<String> = (0..n)
            .filter(|i| !seen.contains_key(i))
            .map(|i| i.to_string())
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} of {n} shards have no report: {}",
                missing.len(),
                missing.join(", ")
            ));
        }
    } else if parts.len() > 1 {
        problems.push(format!(
            "{} reports without --shard: each covers everything, so they overlap",
            parts.len()
        ));
    }
    let mut exit_code = exit::OK;
    for p in &parts {
        if p.exit_code != exit::OK {
            let what = p
                .report
                .shard
                .map_or_else(String::new, |s| format!("shard {s} "));
            let why = p
                .report
                .fatal
                .as_deref()
                .or(p.report.stopped.as_deref())
                .map_or_else(String::new, |m| format!(": {m}"));
            problems.push(format!(
                "{what}({}) exited {}{why}",
                p.path.display(),
                p.exit_code
            ));
        }
        if severity(p.exit_code) > severity(exit_code) {
            exit_code = p.exit_code;
        }
    }
    if !problems.is_empty() && exit_code == exit::OK {
        exit_code = exit::FATAL;
    }
    if count.is_some_and(|n| seen.len() < n as usize) {
        exit_code = exit::FATAL;
    }
    let mut report = Report {
        mode: first.report.mode.clone(),
        prefix: first.report.prefix.clone(),
        ..Report::default()
    };
    let mut failures = Vec::new();
    for p in &parts {
        absorb(&mut report, &p.report);
        failures.extend(p.failures.iter().cloned());
    }
    failures.truncate(1000);
    Ok(Merged {
        report,
        exit_code,
        problems,
        failures,
        shards: count,
        files: parts.len(),
    })
}

/// Adds report `o` (of other blocks) to `r`.
fn absorb(r: &mut Report, o: &Report) {
    r.plan.absorb(&o.plan);
    // Every shard reads every collection: the same numbers, not a sum.
    if r.collections.is_none() {
        r.collections.clone_from(&o.collections);
    }
    if r.counting_rule.is_empty() {
        r.counting_rule.clone_from(&o.counting_rule);
    }
    if r.storage_classes.is_empty() {
        r.storage_classes.clone_from(&o.storage_classes);
    }
    r.copied.absorb(&o.copied);
    r.replicas_written += o.replicas_written;
    r.placed_past_first_choice += o.placed_past_first_choice;
    r.failed.absorb(&o.failed);
    for (k, n) in &o.failed_by_reason {
        *r.failed_by_reason.entry(k.clone()).or_default() += n;
    }
    r.vanished.absorb(&o.vanished);
    r.verified_copies += o.verified_copies;
    r.verified_bytes += o.verified_bytes;
    r.not_attempted.absorb(&o.not_attempted);
    for u in &o.unreachable_services {
        if !r.unreachable_services.contains(u) {
            r.unreachable_services.push(u.clone());
        }
    }
    r.interrupted |= o.interrupted;
    r.passes += o.passes;
    r.passes_done += o.passes_done;
    r.plan_bytes = r.plan_bytes.max(o.plan_bytes);
    // Shards run side by side: the migration took as long as the slowest.
    r.elapsed_seconds = r.elapsed_seconds.max(o.elapsed_seconds);
    r.bytes_per_second += o.bytes_per_second;
}

impl Merged {
    /// The human-readable report: the shards' sum, then what is wrong, if anything.
    pub fn render(&self) -> String {
        let mut s = match self.shards {
            Some(n) => format!(
                "keep-rsync merged report: {} reports of {n} shards\n",
                self.files
            ),
            None => format!("keep-rsync merged report: {} reports\n", self.files),
        };
        s.push_str(&self.report.render());
        for f in self.failures.iter().take(20) {
            s.push_str(&format!(
                "    {} {}: {}\n",
                f["locator"].as_str().unwrap_or("?"),
                f["reason"].as_str().unwrap_or("?"),
                f["detail"].as_str().unwrap_or("")
            ));
        }
        for p in &self.problems {
            s.push_str(&format!("  problem: {p}\n"));
        }
        s.push_str(&format!(
            "  result:              {}\n",
            if self.exit_code == exit::OK {
                "every shard finished and every block is on the destination (exit 0)".to_owned()
            } else {
                format!("not done (exit {})", self.exit_code)
            }
        ));
        s
    }

    /// The JSON form: the summed report, plus `shards`, `files`, `problems`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self.report.to_json();
        v["event"] = "merged_report".into();
        v["exit_code"] = self.exit_code.into();
        v["shards"] = self.shards.into();
        v["files"] = self.files.into();
        v["problems"] = self.problems.clone().into();
        v["failures"] = self.failures.clone().into();
        v
    }
}

/// `keep-rsync merge-reports [--json] FILE...`: prints the merged report; returns the
/// exit status.
pub fn main(args: &[String]) -> u8 {
    let json = args.iter().any(|a| a == "--json" || a == "-json");
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "keep-rsync merge-reports [--json] FILE...\n\nAdds up the JSON reports of the shards of one migration (keep-rsync --shard I/N\n--report FILE) and exits with the worst status: 0 only when every shard reported\nand every block is on the destination. Names missing, repeated and failed shards."
        );
        return exit::OK;
    }
    let paths: Vec<PathBuf> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .collect();
    if let Some(bad) = args
        .iter()
        .find(|a| a.starts_with('-') && !matches!(a.as_str(), "--json" | "-json"))
    {
        eprintln!("keep-rsync merge-reports: unknown flag {bad} (only --json)");
        return exit::FATAL;
    }
    match merge(&paths) {
        Ok(m) => {
            if json {
                println!("{}", m.to_json());
            } else {
                print!("{}", m.render());
            }
            m.exit_code
        }
        Err(e) => {
            eprintln!("keep-rsync merge-reports: {e:#}");
            exit::FATAL
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_pick_the_worst() {
        let order = [
            exit::OK,
            exit::VANISHED,
            exit::SOME_FAILED,
            exit::INTERRUPTED,
            exit::FATAL,
        ];
        for w in order.windows(2) {
            assert!(severity(w[0]) < severity(w[1]), "{w:?}");
        }
    }
}
