//! Progress: a live bar on a terminal, one line per block otherwise (the Go tool's
//! format, so existing log scrapers keep working, each line with a UTC timestamp),
//! or with `--stats` one summary line per interval; NDJSON events with `--json`.
//! Failures are always printed as they happen.
//!
//! The engine only calls the methods here; how progress looks is decided once, from
//! the flags and whether stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A live bar on stderr (stderr is a terminal).
    Bar,
    /// One line per event on stderr (stderr is a file or a pipe).
    Lines,
    /// NDJSON events on stdout.
    Json,
    /// Nothing (`-q`).
    Quiet,
}

impl Mode {
    /// Picks the mode from the flags and the terminal.
    pub fn choose(json: bool, quiet: bool) -> Mode {
        if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        }
    }
}

/// Bytes-per-second estimate, smoothed so one slow 64 MiB block does not swing the ETA.
#[derive(Debug)]
struct Rate {
    last: Instant,
    last_bytes: u64,
    ewma: Option<f64>,
}

impl Rate {
    fn update(&mut self, bytes: u64) -> Option<f64> {
        let dt = self.last.elapsed().as_secs_f64();
        if dt >= 0.5 {
            let inst = (bytes - self.last_bytes) as f64 / dt;
            self.ewma = Some(match self.ewma {
                None => inst,
                // A time constant of about 10 s.
                Some(r) => r + (inst - r) * (dt / 10.0).min(1.0),
            });
            self.last = Instant::now();
            self.last_bytes = bytes;
        }
        self.ewma
    }
}

#[derive(Debug)]
struct CopyState {
    total_blocks: u64,
    total_bytes: u64,
    done_blocks: u64,
    done_bytes: u64,
    failed: u64,
    rate: Rate,
    last_json: Instant,
}

/// Progress reporter shared by the tasks of a run.
#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    /// The copy's bar (one per pass), shown in bar mode.
    bar: Mutex<Option<ProgressBar>>,
    copy: Mutex<CopyState>,
    started: Instant,
    /// `--stats`: a summary line per interval instead of a line per block.
    stats: Option<Duration>,
}

/// `1h2m3s`, `2m3s`, `4s`: the Go tool's style, rounded to seconds.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// The current time in UTC, as `2026-11-27T13:45:01Z`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `1.5 GiB`-style sizes.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Progress {
    /// A reporter in `mode`, printing a summary every `stats` instead of a line per
    /// block when set.
    pub fn new(mode: Mode, stats: Option<Duration>) -> Progress {
        Progress {
            mode,
            bar: Mutex::new(None),
            copy: Mutex::new(CopyState {
                total_blocks: 0,
                total_bytes: 0,
                done_blocks: 0,
                done_bytes: 0,
                failed: 0,
                rate: Rate {
                    last: Instant::now(),
                    last_bytes: 0,
                    ewma: None,
                },
                last_json: Instant::now(),
            }),
            started: Instant::now(),
            stats,
        }
    }

    /// A reporter that shows nothing (for work the operator need not follow).
    pub fn quiet() -> Progress {
        Progress::new(Mode::Quiet, None)
    }

    /// The mode in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn bar(&self) -> Option<ProgressBar> {
        self.bar.lock().expect("bar lock").clone()
    }

    fn json(&self, value: serde_json::Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    /// Prints `msg` on its own line: above the bar, or with a timestamp in line mode.
    fn line(&self, msg: &str) {
        match self.bar() {
            Some(bar) => bar.println(msg),
            None => eprintln!("{} {msg}", utc_now()),
        }
    }

    /// Index phase: `outstanding` index requests remain, `listed` entries seen so far.
    pub fn indexes(&self, side: &str, outstanding: usize, listed: u64) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => self.json(serde_json::json!({
                "event": "index", "side": side, "outstanding": outstanding, "listed": listed,
            })),
            Mode::Bar | Mode::Lines => self.line(&format!(
                "getting {side} indexes: {outstanding}... ({listed} blocks listed so far)"
            )),
        }
    }

    /// A free-form status line (not shown in JSON or quiet mode).
    pub fn note(&self, msg: &str) {
        if matches!(self.mode, Mode::Bar | Mode::Lines) {
            self.line(msg);
        }
    }

    /// Copy phase starts: `blocks` blocks of `bytes` bytes in all.
    pub fn start_copy(&self, blocks: u64, bytes: u64) {
        // A pass after another: the last pass's bar goes.
        self.finish();
        {
            let mut c = self.copy.lock().expect("progress lock");
            c.total_blocks = blocks;
            c.total_bytes = bytes;
            c.rate = Rate {
                last: Instant::now(),
                last_bytes: 0,
                ewma: None,
            };
        }
        if self.mode == Mode::Bar && blocks > 0 {
            let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            *self.bar.lock().expect("bar lock") = Some(bar);
        }
        if self.mode == Mode::Json {
            self.json(serde_json::json!({"event": "copy_start", "blocks": blocks, "bytes": bytes}));
        }
    }

    /// One block finished (`ok` false when it failed). `what` is `hash+size`.
    pub fn block_done(&self, what: &str, bytes: u64, ok: bool) {
        let mut c = self.copy.lock().expect("progress lock");
        c.done_blocks += 1;
        c.done_bytes += bytes;
        if !ok {
            c.failed += 1;
        }
        let done_bytes = c.done_bytes;
        let rate = c.rate.update(done_bytes);
        let remaining = c.total_bytes.saturating_sub(c.done_bytes);
        let eta = rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(remaining as f64 / r));
        match self.mode {
            Mode::Quiet => {}
            Mode::Bar => {
                if let Some(bar) = self.bar() {
                    bar.set_position(done_bytes);
                    bar.set_message(format!(
                        "{}/{} blocks{}",
                        c.done_blocks,
                        c.total_blocks,
                        if c.failed > 0 {
                            format!(", {} failed", c.failed)
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            Mode::Lines if self.stats.is_none() => {
                let pct = if c.total_blocks == 0 {
                    100.0
                } else {
                    (c.done_blocks - 1) as f64 * 100.0 / c.total_blocks as f64
                };
                let eta = eta.map_or_else(|| "unknown".to_string(), fmt_duration);
                eprintln!(
                    "{} copying data block {} of {} ({pct:.0}% done, ETA {eta}): {what}{}",
                    utc_now(),
                    c.done_blocks,
                    c.total_blocks,
                    if ok { "" } else { " FAILED" }
                );
            }
            Mode::Lines => {}
            Mode::Json => {
                let last = c.done_blocks == c.total_blocks;
                if last || c.last_json.elapsed() >= Duration::from_secs(1) {
                    c.last_json = Instant::now();
                    self.json(serde_json::json!({
                        "event": "progress",
                        "blocks_done": c.done_blocks, "blocks_total": c.total_blocks,
                        "bytes_done": c.done_bytes, "bytes_total": c.total_bytes,
                        "failed": c.failed,
                        "bytes_per_second": rate.unwrap_or(0.0).round(),
                        "eta_seconds": eta.map(|d| d.as_secs()),
                    }));
                }
            }
        }
    }

    /// One block failed: counted like [`Progress::block_done`], and printed at once
    /// with its reason whatever the mode (a failure never waits for a summary).
    pub fn block_failed(&self, what: &str, bytes: u64, reason: &str, detail: &str) {
        tracing::debug!(block = what, reason, "{detail}");
        if self.stats.is_some() || self.mode == Mode::Bar {
            self.line(&format!("FAILED {what} {reason}: {detail}"));
        } else if self.mode == Mode::Lines {
            // The per-block line says FAILED; the reason follows on its own line.
            eprintln!("{} FAILED {what} {reason}: {detail}", utc_now());
        }
        self.block_done(what, bytes, false);
    }

    /// The summary line `--stats` prints: blocks and bytes done, rate, failures, ETA.
    pub fn stats_line(&self) -> String {
        let c = self.copy.lock().expect("progress lock");
        let pct = if c.total_bytes == 0 {
            100.0
        } else {
            c.done_bytes as f64 * 100.0 / c.total_bytes as f64
        };
        let rate = c.rate.ewma.unwrap_or(0.0);
        let eta = if rate > 0.0 {
            fmt_duration(Duration::from_secs_f64(
                c.total_bytes.saturating_sub(c.done_bytes) as f64 / rate,
            ))
        } else {
            "unknown".into()
        };
        format!(
            "stats: {}/{} blocks, {}/{} ({pct:.1}%), {}/s, {} failed, elapsed {}, ETA {eta}",
            c.done_blocks,
            c.total_blocks,
            fmt_bytes(c.done_bytes),
            fmt_bytes(c.total_bytes),
            fmt_bytes(rate as u64),
            c.failed,
            fmt_duration(self.started.elapsed()),
        )
    }

    /// With `--stats`, prints [`Progress::stats_line`] every interval until dropped
    /// (the caller aborts the task at the end).
    pub fn spawn_stats(self: &std::sync::Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.stats?;
        if matches!(self.mode, Mode::Json | Mode::Quiet) {
            return None;
        }
        let me = std::sync::Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                me.line(&me.stats_line());
            }
        }))
    }

    /// Removes the bar (before the report is printed).
    pub fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("bar lock").take() {
            bar.finish_and_clear();
        }
    }

    /// Time since the reporter was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_786_321), "2026-11-27T13:32:01Z");
        assert_eq!(utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_duration(Duration::from_secs(123)), "2m3s");
        assert_eq!(fmt_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(fmt_duration(Duration::from_secs(4)), "4s");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(3 << 30), "3.0 GiB");
    }
}
