//! How many blocks are in flight: `--concurrency auto` (the default) or a fixed N.
//!
//! The right number depends on the link: on a LAN, a few dozen copies keep the
//! keepstores busy and more only queue; across a WAN (100 ms per request), hundreds
//! are needed to fill the pipe; behind a slow link, anything past a handful waits for
//! the same bandwidth. [`Tuner`] finds it from what it measures, by hill climbing on
//! throughput: it doubles the limit while doubling pays (small blocks, which start at
//! half the maximum, double once half the first blocks have finished and keep it if
//! block times say it paid; big blocks, which start at one or two, take their first
//! step after a few turnovers and keep it if blocks then finish faster),
//! steps down while less loses nothing, and probes a step up and a step down now
//! and then, keeping what moved more. Busy answers (503 beyond a keepstore's
//! `MaxConcurrentRequests`) are handled per service by the scheduler (`copy.rs`), so
//! one overloaded keepstore does not slow the others.
//!
//! Pure state machine: it is fed the clock and counters and returns the limit, so
//! the tests drive it with simulated links.

use std::time::Duration;

/// Where `auto` starts for small blocks: high enough that a WAN run does not spend
/// its first seconds ramping up (from 64, S6 took 11% longer than a fixed 256; from
/// 128, 2.5%), and a LAN that wants fewer comes down in a few windows.
pub const AUTO_START: usize = 128;
/// Block data `auto` starts with in flight: larger blocks start fewer at once. On a
/// LAN, 128 blocks of 1 MiB took 1.6x as long as 64, and 16 of 64 MiB at once 1.3x
/// as long as one at a time (real keepstores take a 64 MiB buffer per request; on
/// real 3.2.1 keepstores, auto starting at 2 took 8.13 s against 6.81 s at a fixed 1,
/// medians of 3 in `bench/run --only S2,S3,S6 --sweep ""`); more is tried as soon as
/// it pays.
pub const AUTO_START_BYTES: u64 = 64 << 20;

/// Where `auto` starts for blocks of `mean_size` bytes on average: [`AUTO_START`],
/// or fewer so that about [`AUTO_START_BYTES`] are in flight, but at least 1.
pub fn auto_start(mean_size: u64) -> usize {
    let by_bytes = AUTO_START_BYTES / mean_size.max(1);
    usize::try_from(by_bytes)
        .unwrap_or(usize::MAX)
        .clamp(1, AUTO_START)
}

/// Block data `auto` holds in flight at most, for blocks read whole before they are
/// written: past it, more blocks only queue on a LAN. Real 3.2.1 keepstores,
/// 1,000 × 1 MiB (S2's shape): a fixed 8, 16, 32 or 64 took 5.6–6.0 s, auto with
/// 128 MiB (which went to 128 in flight) 6.8–7.1 s; with 64 MiB, in alternation with
/// 128 MiB, 4 runs each: 5.70–6.89 s against 6.08–6.84 s, the same speed for half
/// the memory. On keep-testcluster a fixed 256 took 11.27 s against 8.09 s at 128.
/// Across a WAN, 64 blocks of 1 MiB in flight, each needing at least a GET and a
/// PUT of 100 ms, still allow up to 320 MiB/s (64 MiB per 0.2 s).
/// Relayed blocks hold a few pieces each, whatever their size.
pub const AUTO_MAX_BYTES: u64 = 64 << 20;

/// The most blocks `auto` keeps in flight for blocks of `mean_size` bytes on average,
/// `held` whole (not relayed): [`AUTO_MAX`], or fewer so that at most
/// [`AUTO_MAX_BYTES`] are held, and never below where it starts.
pub fn auto_max(mean_size: u64, held: bool) -> usize {
    if !held {
        return AUTO_MAX;
    }
    let by_bytes = AUTO_MAX_BYTES / mean_size.max(1);
    usize::try_from(by_bytes)
        .unwrap_or(usize::MAX)
        .clamp(auto_start(mean_size), AUTO_MAX)
}
/// The most blocks `auto` keeps in flight.
pub const AUTO_MAX: usize = 256;
/// What a completed block counts for, beside its bytes, in the throughput measured:
/// small blocks cost a request each whatever their size.
pub const BLOCK_WEIGHT: u64 = 64 << 10;

/// `--concurrency`: `auto` or a fixed number of blocks in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Tuned while running, from [`auto_start`], at most [`auto_max`].
    Auto,
    /// Exactly this many.
    Fixed(usize),
}

impl Concurrency {
    /// The most blocks in flight this setting can reach.
    pub fn max(self) -> usize {
        match self {
            Concurrency::Auto => AUTO_MAX,
            Concurrency::Fixed(n) => n,
        }
    }

    /// The number of blocks in flight at the start.
    pub fn start(self) -> usize {
        match self {
            Concurrency::Auto => AUTO_START,
            Concurrency::Fixed(n) => n,
        }
    }
}

impl std::str::FromStr for Concurrency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Concurrency::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(Concurrency::Fixed(n)),
            _ => Err(format!("{s:?}: use auto or a number from 1 to 1024")),
        }
    }
}

impl std::fmt::Display for Concurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Concurrency::Auto => f.write_str("auto"),
            Concurrency::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// How long blocks take to copy, for the tuner's windows and the scheduler.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    /// Blocks finished, copied or failed.
    pub finished: u64,
    /// Moving average of their copy times; none before the first.
    average: Option<Duration>,
}

impl Pace {
    /// One more block finished, after `took`.
    pub fn finish(&mut self, took: Duration) {
        self.finished += 1;
        self.average = Some(match self.average {
            Some(t) => t.mul_f64(0.8) + took.mul_f64(0.2),
            None => took,
        });
    }

    /// A typical block's copy time: the average, or 100 ms before the first.
    pub fn block_time(&self) -> Duration {
        self.average.unwrap_or(Duration::from_millis(100))
    }

    /// The block time [`Tuner::observe`] sizes its windows by: none before the first
    /// block has finished, when what moves is start-up, not the pace: socket
    /// buffers filling (S7, 8 MiB blocks on 5 MB/s links: windows that saw no bytes
    /// took the limit from 8 down to 1 in 5 s), connections opening, and the
    /// keepstores' first 64 MiB buffers.
    pub fn tuning_time(&self) -> Option<Duration> {
        self.average
    }
}

/// A gain smaller than this is noise (a shared machine's jitter).
const NOISE: f64 = 0.05;
/// Doubling must gain at least this much to double again.
const DOUBLING_PAYS: f64 = 0.15;
/// Windows in the steady state between two probes.
const PROBE_EVERY: u32 = 3;
/// Below this many blocks in flight, a window (at least 8 blocks finishing) spans
/// more than two block times, and the first step up is judged on blocks finishing
/// instead (see [`Tuner::observe`]).
const FEW: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Doubling while doubling pays; `prev` is the limit and rate before the last one.
    Growing { prev: Option<(usize, f64)> },
    /// Holding; a probe after `PROBE_EVERY` windows, up and down in turn.
    Steady { windows: u32, up_next: bool },
    /// Trying `limit` against `base` (the limit and rate before the probe).
    Probing { base: (usize, f64), up: bool },
    /// Doubled to the maximum once half the first blocks had finished, before any
    /// window could measure a rate: judged on block times instead (see
    /// [`Tuner::observe`]). `from` is the limit before and the block time then.
    Leaped { from: (usize, f64) },
    /// Doubled from fewer than [`FEW`] in flight: judged over the second turnover
    /// at the new limit. `from` is the limit before and its blocks per second, `at`
    /// the clock and counters (work, blocks finished) at the step, then at the end
    /// of the first turnover (`settled`).
    Stepped {
        from: (usize, f64),
        at: (f64, u64, u64),
        settled: bool,
    },
}

/// Hill climbing on throughput. See the module docs.
#[derive(Debug, Clone)]
pub struct Tuner {
    limit: usize,
    max: usize,
    state: State,
    /// The window being measured: its start (seconds) and the work counter then.
    start: f64,
    work: u64,
    /// Measurement waits until then after a change, for the new limit to take hold.
    settle_until: f64,
    /// Limits taken, for the report: lowest and highest.
    low: usize,
    high: usize,
    /// The clock and blocks finished at the end of the first turnover.
    first: Option<(f64, u64)>,
}

impl Tuner {
    /// A tuner starting at `start` blocks in flight, never above `max`.
    pub fn new(start: usize, max: usize) -> Tuner {
        let start = start.clamp(1, max.max(1));
        Tuner {
            limit: start,
            max: max.max(1),
            state: State::Growing { prev: None },
            start: 0.0,
            work: 0,
            settle_until: 0.0,
            low: start,
            high: start,
            first: None,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The lowest and highest limits used so far.
    pub fn range(&self) -> (usize, usize) {
        (self.low, self.high)
    }

    /// Feeds the clock (`now`, since the copy began), the work done so far (bytes
    /// received plus [`BLOCK_WEIGHT`] per block finished), the blocks finished, the
    /// typical time of one block copy ([`Pace::tuning_time`]) and the blocks in
    /// flight; returns the limit to use from now on.
    pub fn observe(
        &mut self,
        now: Duration,
        work: u64,
        finished: u64,
        block_time: Option<Duration>,
        in_flight: usize,
    ) -> usize {
        let now = now.as_secs_f64();
        // No block time yet (see [`Pace::tuning_time`]): no decision before the first
        // block has finished. The first window still starts with the copy: starting
        // it at the first finish instead cost a block's time on latency-bound links
        // (S6: 2.75 s against 2.46 s in full bench runs; 3.07 against 2.91 s, medians
        // of 3 single runs of S6's shape) and measured nothing better on S3 once windows
        // span 8 blocks (below). After a step down, the blocks already in flight run
        // on: until they have drained to the new limit, a window would measure the
        // old one (and every step down would look free).
        let Some(block) = block_time.map(|b| b.as_secs_f64()) else {
            return self.limit;
        };
        if self.state == (State::Growing { prev: None })
            && self.limit < self.max
            && self.limit * 2 >= self.max
            && finished >= (self.limit / 2) as u64
        {
            // The first step up is the only one left (small blocks start at half the
            // maximum), and the first window would take it whatever it measured: take
            // it now, once half the first blocks have finished, not two block times
            // later. Where a request takes 100 ms (S6) the wait cost a tenth of the
            // copy: 2.60 s against 2.36 s at a fixed 256, in a full bench run. (At
            // the first finished block, the block time is the fastest block's, and
            // the doubling was judged against it: 20 ms per request (S4), 1.35 s
            // against 1.25 s when it kept 256.)
            let before = self.limit;
            self.state = State::Leaped {
                from: (before, block),
            };
            self.set(before * 2);
            self.changed(now, work, block, before, None);
            return self.limit;
        }
        if self.state == (State::Growing { prev: None }) && self.limit < FEW.min(self.max) {
            return self.step_from_few(now, work, finished, block);
        }
        if let State::Stepped { from, at, settled } = self.state {
            return self.judge_step(now, (work, finished), block, from, at, settled);
        }
        if now < self.settle_until || in_flight > self.limit {
            self.start = now;
            self.work = work;
            return self.limit;
        }
        // Long enough to average over two turnovers of the blocks in flight (blocks
        // started together finish together, and each arrives in a burst as it
        // starts) and over at least 8 blocks finishing: with 1 or 2 big blocks in
        // flight, two turnovers are 2 to 4 blocks, a window measured 176 to 226 MB/s
        // of the same steady copy, and the first, with start-up in it, 141 MB/s at 1
        // in flight, against which 2 looked like a gain (S3, 64 MiB blocks, real
        // keepstores: the default took 5.89 s, a fixed 1 5.46 s); short
        // enough to follow a change within seconds on a LAN, or half a minute where a
        // block takes that long.
        let window = (2.0 * block)
            .max(8.0 * block / self.limit as f64)
            .clamp(0.2, 30.0);
        let elapsed = now - self.start;
        if elapsed < window {
            return self.limit;
        }
        let done = work.saturating_sub(self.work);
        if done == 0 {
            // Nothing moved: stalled, or between bursts; no throughput to compare.
            self.start = now;
            return self.limit;
        }
        let rate = done as f64 / elapsed;
        tracing::trace!(
            limit = self.limit,
            from = self.start,
            to = now,
            rate,
            "tuner window"
        );
        let before = self.limit;
        self.decide(rate, block);
        self.start = now;
        self.work = work;
        if self.limit != before {
            self.changed(now, work, block, before, Some(rate));
        }
        self.limit
    }

    /// The first step up from fewer than [`FEW`] in flight (big blocks: 64 MiB start
    /// at 1). A window there spans 8 blocks, half of S3's 16, and then the first
    /// window always doubles, so half of S3 ran at 2, judged over as long again (on
    /// real keepstores, where 2 move no more than 1, 0.93 of a fixed 1 in a bench
    /// run). Blocks finished per second at this limit are counted over two turnovers
    /// from the end of the first (start-up left out: the keepstores' first buffers,
    /// connections opening), then the limit doubles and [`Tuner::judge_step`] decides
    /// after two turnovers at the new limit.
    fn step_from_few(&mut self, now: f64, work: u64, finished: u64, block: f64) -> usize {
        let Some((t, f)) = self.first else {
            if finished > self.limit as u64 {
                self.first = Some((now, finished));
            }
            return self.limit;
        };
        let before = self.limit;
        if finished < f + 2 * before as u64 || now <= t {
            return self.limit;
        }
        let blocks = (finished - f) as f64 / (now - t);
        self.state = State::Stepped {
            from: (before, blocks),
            at: (now, work, finished),
            settled: false,
        };
        self.set(before * 2);
        self.changed(now, work, block, before, None);
        self.limit
    }

    /// After a step from fewer than [`FEW`]: blocks finished per second over the
    /// second turnover at the new limit against before. The first is skipped: the
    /// blocks started together at the step run in step (reading at once, then
    /// writing at once), and on keep-testcluster, where two in flight move 15% more
    /// than one once their phases drift apart (S3's shape, 32 × 64 MiB: medians
    /// 11.52 s against 13.64 s), the first turnover measured gains of 0.99 and 1.03.
    /// A clear gain (a link where each block is slow whatever else moves) grows on,
    /// a small one holds, none goes back. Blocks, not bytes received: the blocks
    /// started during a turnover send their first bytes at once, and counted in
    /// bytes two in flight looked 13 to 28% faster than one in 4 of 6 runs of S3's
    /// shape on real keepstores, where they were not. Copies start below [`FEW`]
    /// when their blocks average over 16 MiB; where sizes are mixed the count is
    /// noisier, and the steady state's probes correct a wrong call later.
    fn judge_step(
        &mut self,
        now: f64,
        (work, finished): (u64, u64),
        block: f64,
        (l, r): (usize, f64),
        (t, w, f): (f64, u64, u64),
        settled: bool,
    ) -> usize {
        let limit = self.limit;
        if finished < f + limit as u64 || now <= t {
            return limit;
        }
        if !settled {
            self.state = State::Stepped {
                from: (l, r),
                at: (now, work, finished),
                settled: true,
            };
            return limit;
        }
        let blocks = (finished - f) as f64 / (now - t);
        let rate = work.saturating_sub(w) as f64 / (now - t);
        let gain = blocks / r;
        tracing::debug!(from = l, to = limit, gain, "first step up judged");
        if gain >= 1.0 + DOUBLING_PAYS && limit < self.max {
            self.state = State::Growing {
                prev: Some((limit, rate)),
            };
            self.set(limit * 2);
        } else {
            if gain < 1.0 + NOISE {
                self.set(l);
            }
            self.state = State::Steady {
                windows: 0,
                up_next: false,
            };
        }
        if self.limit == limit {
            self.start = now;
            self.work = work;
        } else {
            self.changed(now, work, block, limit, Some(rate));
        }
        self.limit
    }

    /// After the limit changed from `before`: a new window, once it has settled.
    fn changed(&mut self, now: f64, work: u64, block: f64, before: usize, rate: Option<f64>) {
        self.start = now;
        self.work = work;
        // New slots start reading at once and fill the socket buffers on the way in a
        // burst that the links take a block's time to drain: measuring before that
        // counts the burst as throughput (S7, 8 MiB blocks on links that move 7.5
        // MB/s of blocks: windows of 13.4 MB/s, then 0.97 MB/s).
        self.settle_until = now + block.min(10.0);
        self.low = self.low.min(self.limit);
        self.high = self.high.max(self.limit);
        tracing::debug!(from = before, to = self.limit, rate, "concurrency");
    }

    fn set(&mut self, limit: usize) {
        self.limit = limit.clamp(1, self.max);
    }

    fn decide(&mut self, rate: f64, block: f64) {
        let limit = self.limit;
        match self.state {
            // Judged on blocks finishing, in `observe`.
            State::Stepped { .. } => {}
            State::Leaped { from: (l, then) } => {
                // No rate was measured before the leap, but blocks in flight over the
                // time each takes is the rate in blocks (Little's law): where requests
                // wait on latency, twice the blocks take as long each, and doubling
                // paid; where the servers were already busy, each takes twice as long.
                let gain = (limit as f64 / block) / (l as f64 / then);
                tracing::debug!(from = l, to = limit, gain, "leap judged");
                if gain < 1.0 + NOISE {
                    self.set(l);
                }
                self.state = State::Steady {
                    windows: 0,
                    up_next: false,
                };
            }
            State::Growing { prev } => {
                let pays = prev.is_none_or(|(_, r)| rate >= r * (1.0 + DOUBLING_PAYS));
                if pays && limit < self.max {
                    self.state = State::Growing {
                        prev: Some((limit, rate)),
                    };
                    self.set(limit * 2);
                    return;
                }
                // The last doubling did not pay (or there is no room): keep the lower
                // limit unless the higher one did better beyond noise.
                if let Some((l, r)) = prev {
                    if rate < r * (1.0 + NOISE) {
                        self.set(l);
                    }
                }
                self.state = State::Steady {
                    windows: 0,
                    up_next: false,
                };
            }
            State::Steady { windows, up_next } => {
                if windows + 1 < PROBE_EVERY {
                    self.state = State::Steady {
                        windows: windows + 1,
                        up_next,
                    };
                    return;
                }
                let to = if up_next {
                    (limit + limit / 4).max(limit + 1).min(self.max)
                } else {
                    (limit - limit / 5).min(limit.saturating_sub(1)).max(1)
                };
                if to == limit {
                    self.state = State::Steady {
                        windows: 0,
                        up_next: !up_next,
                    };
                    return;
                }
                self.state = State::Probing {
                    base: (limit, rate),
                    up: up_next,
                };
                self.set(to);
            }
            State::Probing { base: (l, r), up } => {
                let keep = if up {
                    rate > r * (1.0 + NOISE)
                } else {
                    rate >= r * (1.0 - NOISE)
                };
                if keep && up {
                    // More paid: grow again, fast, from here.
                    self.state = State::Growing {
                        prev: Some((limit, rate)),
                    };
                    self.set(limit * 2);
                    return;
                }
                if keep && limit > 1 {
                    // Less lost nothing: step down again at once, measured against
                    // the best rate of the descent, so small losses cannot add up.
                    let to = (limit - limit / 5).min(limit - 1).max(1);
                    self.state = State::Probing {
                        base: (limit, rate.max(r)),
                        up: false,
                    };
                    self.set(to);
                    return;
                }
                if !keep {
                    self.set(l);
                }
                self.state = State::Steady {
                    windows: 0,
                    up_next: !up,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated link: `slots` blocks in flight move `rate(slots)` work units per
    /// second. Runs the tuner for `secs` in 10 ms steps; returns the work done and
    /// the final limit.
    fn simulate(rate: impl Fn(usize) -> f64, block: f64, secs: f64) -> (f64, usize) {
        let mut t = Tuner::new(AUTO_START, AUTO_MAX);
        let (mut work, mut now) = (0.0, 0.0);
        let step = 0.01;
        while now < secs {
            work += rate(t.limit()) * step;
            now += step;
            let limit = t.limit();
            t.observe(
                Duration::from_secs_f64(now),
                work as u64,
                u64::MAX,
                Some(Duration::from_secs_f64(block)),
                limit,
            );
        }
        (work, t.limit())
    }

    /// The work a fixed limit does in the same time.
    fn fixed(rate: impl Fn(usize) -> f64, n: usize, secs: f64) -> f64 {
        rate(n) * secs
    }

    /// The best fixed limit of the bench's sweep, and its work.
    fn best(rate: &impl Fn(usize) -> f64, secs: f64) -> (usize, f64) {
        [8, 16, 32, 64, 128, 256]
            .into_iter()
            .map(|n| (n, fixed(rate, n, secs)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
    }

    #[test]
    fn latency_bound_climbs_to_the_top() {
        // 100 ms per request, 2 requests per block: each slot moves 64 KiB per 0.2 s,
        // up to a ceiling far above 256 slots.
        let rate = |n: usize| n as f64 * 65536.0 / 0.2;
        let (work, limit) = simulate(rate, 0.2, 10.0);
        let (n, b) = best(&rate, 10.0);
        assert_eq!(n, 256);
        assert_eq!(limit, AUTO_MAX);
        assert!(work >= 0.9 * b, "{:.2} of the best", work / b);
    }

    #[test]
    fn bandwidth_bound_holds_where_more_does_not_pay() {
        // 15 MB/s in all, reached by 4 slots; more only queue.
        let rate = |n: usize| 15e6 * (n.min(4) as f64 / 4.0);
        let (work, limit) = simulate(rate, 2.0, 120.0);
        let (_, b) = best(&rate, 120.0);
        assert!(work >= 0.95 * b, "{:.2} of the best", work / b);
        assert!(limit <= AUTO_START, "limit {limit}: more did not pay");
    }

    #[test]
    fn cpu_bound_lan_comes_down() {
        // A LAN whose servers saturate at 16 slots and lose 0.3% per slot beyond
        // (contention): 64 is 15% slower than 16.
        let rate = |n: usize| {
            let n = n as f64;
            if n <= 16.0 {
                n * 1e6
            } else {
                16e6 * (1.0 - 0.003 * (n - 16.0)).max(0.1)
            }
        };
        let (work, limit) = simulate(rate, 0.02, 20.0);
        let (_, b) = best(&rate, 20.0);
        assert!(limit < AUTO_START, "limit {limit}");
        assert!(work >= 0.9 * b, "{:.2} of the best", work / b);
    }

    #[test]
    fn a_link_that_improves_is_followed() {
        // 10 s at a ceiling of 32 slots, then a ceiling of 200.
        let mut t = Tuner::new(AUTO_START, AUTO_MAX);
        let (mut work, mut now, mut late) = (0.0, 0.0, 0.0);
        while now < 40.0 {
            let cap = if now < 10.0 { 32 } else { 200 };
            let w = t.limit().min(cap) as f64 * 1e5 * 0.01;
            work += w;
            if now >= 20.0 {
                late += w;
            }
            now += 0.01;
            let limit = t.limit();
            t.observe(
                Duration::from_secs_f64(now),
                work as u64,
                u64::MAX,
                Some(Duration::from_millis(100)),
                limit,
            );
        }
        // Down near the first ceiling, then (probes included) near the second.
        assert!(t.range().0 <= 40, "range {:?}", t.range());
        let best = 200.0 * 1e5 * 20.0;
        assert!(late >= 0.9 * best, "{:.2} of the best", late / best);
    }

    /// A link simulated block by block, as `copy.rs` drives the tuner: blocks of
    /// `size` bytes, the `n` in flight sharing `rate(n, seconds since the start)`
    /// bytes/s; the first `burst`
    /// bytes of each are received the moment it starts (socket buffers), the rest as
    /// it goes. A block in flight stays until it has finished, whatever the limit.
    /// `fixed` pins the limit; otherwise a tuner runs from [`auto_start`]. Returns the
    /// bytes of the blocks finished in `secs`, and the tuner's range.
    fn simulate_blocks(
        rate: &impl Fn(usize, f64) -> f64,
        size: f64,
        burst: f64,
        fixed: Option<usize>,
        secs: f64,
    ) -> (f64, (usize, usize)) {
        let mut tuner = Tuner::new(fixed.unwrap_or(auto_start(size as u64)), AUTO_MAX);
        let mut pace = Pace::default();
        // (bytes delivered, start) of each block in flight.
        let mut flying: Vec<(f64, f64)> = Vec::new();
        let (mut now, mut received, mut finished_bytes) = (0.0, 0.0, 0.0);
        let step = 0.01;
        while now < secs {
            let limit = fixed.unwrap_or(tuner.limit());
            while flying.len() < limit {
                flying.push((0.0, now));
                received += burst.min(size);
            }
            let each = rate(flying.len(), now) / flying.len() as f64 * step;
            now += step;
            flying.retain_mut(|(delivered, start)| {
                let seen = |d: f64| (d + burst).min(size);
                let was = seen(*delivered);
                *delivered += each;
                received += seen(*delivered) - was;
                if *delivered < size {
                    return true;
                }
                pace.finish(Duration::from_secs_f64(now - *start));
                finished_bytes += size;
                false
            });
            let elapsed = Duration::from_secs_f64(now);
            let work = received as u64 + pace.finished * BLOCK_WEIGHT;
            tuner.observe(
                elapsed,
                work,
                pace.finished,
                pace.tuning_time(),
                flying.len(),
            );
        }
        (finished_bytes, tuner.range())
    }

    /// What auto finishes in `secs` on a link simulated block by block, as a share of
    /// what a fixed `fixed` finishes; and auto's range of limits.
    fn auto_share(
        rate: &impl Fn(usize, f64) -> f64,
        size: f64,
        burst: f64,
        fixed: usize,
        secs: f64,
    ) -> (f64, (usize, usize)) {
        let pinned = simulate_blocks(rate, size, burst, Some(fixed), secs).0;
        let (auto, range) = simulate_blocks(rate, size, burst, None, secs);
        (auto / pinned, range)
    }

    #[test]
    fn slow_links_with_big_blocks_keep_enough_in_flight() {
        // S7: 8 MiB blocks through 15 MB/s of destination links; half of each block
        // sits in socket buffers at once. A few blocks leave some link idle at times
        // (8 in flight reach 86% of the links, 16 reach 98%).
        let rate = |n: usize, _| 15e6 * (1.0 - (-(n as f64) / 4.0).exp());
        let (size, burst, secs) = (8.0 * 1048576.0, 4.0 * 1048576.0, 240.0);
        let best = [8, 16, 32, 64, 128, 256]
            .into_iter()
            .map(|n| simulate_blocks(&rate, size, burst, Some(n), secs).0)
            .fold(0.0, f64::max);
        let (auto, range) = simulate_blocks(&rate, size, burst, None, secs);
        assert!(
            auto >= 0.9 * best,
            "{:.2} of the best, limits {range:?}",
            auto / best
        );
    }

    #[test]
    fn a_slow_start_is_not_taken_for_the_pace() {
        // S3 on real 3.2.1 keepstores, all on one 2-core machine: 64 MiB blocks, one
        // at a time moves 200 MB/s and two 185 MB/s (the servers' CPU is the limit);
        // for the first 0.6 s everything moves at 40% (connections opening, the
        // keepstores' first 64 MiB buffers), and the first window includes that.
        let rate = |n: usize, t: f64| {
            let warm = if t < 0.6 { 0.4 } else { 1.0 };
            warm * if n == 1 { 200e6 } else { 185e6 }
        };
        let (size, burst, secs) = (64.0 * 1048576.0, 1048576.0, 6.0);
        // Windows of two block times from the start: 0.81 (limits 1 to 4); of 8
        // blocks: 0.938, with 2 in flight for the second half, which loses 7.5% here.
        // Judged on blocks finishing (two turnovers at 1 from the end of the first,
        // then the second turnover at 2): 1.000.
        let (share, range) = auto_share(&rate, size, burst, 1, secs);
        assert!(share >= 0.97, "{share:.3} of a fixed 1, limits {range:?}");
    }

    #[test]
    fn big_blocks_on_a_long_link_climb() {
        // 64 MiB blocks across a WAN: each stream moves 20 MB/s however many run (the
        // round trip limits it), up to 400 MB/s in all. A fixed 32 is the best of the
        // sweep.
        let rate = |n: usize, _| (n as f64 * 20e6).min(400e6);
        let (size, burst, secs) = (64.0 * 1048576.0, 4.0 * 1048576.0, 120.0);
        // With a first window of 8 blocks at 1: 0.463 of a fixed 32 in two minutes;
        // with the first step judged on blocks finishing: 0.676.
        let (share, range) = auto_share(&rate, size, burst, 32, secs);
        assert!(share >= 0.65, "{share:.3} of a fixed 32, limits {range:?}");
        assert!(range.1 >= 16, "limits {range:?}");
    }

    #[test]
    fn a_latency_bound_start_doubles_early() {
        // S6: 64 KiB blocks, 100 ms per request and two requests per block, so each
        // takes 0.2 s however many are in flight; the copy lasts a few seconds.
        let rate = |n: usize, _| n as f64 * 65536.0 / 0.2;
        let (size, secs) = (65536.0, 2.4);
        let (share, range) = auto_share(&rate, size, 0.0, AUTO_MAX, secs);
        // Deciding at the end of the first window: 0.917 of a fixed 256; once half
        // the first blocks have finished 0.942 (none finishes before 0.2 s: 0.958 at
        // most).
        assert!(share >= 0.93, "{share:.3} of a fixed 256, limits {range:?}");
        assert_eq!(range.1, AUTO_MAX);
    }

    #[test]
    fn a_busy_lan_does_not_keep_the_leap() {
        // S4 on this machine: the servers are the limit from 32 blocks in flight on,
        // and 256 move 14% less than 128 (contention).
        let rate = |n: usize, _| {
            let n = n as f64;
            let busy = (n / 32.0).min(1.0) * (1.0 - 0.0011 * (n - 128.0).max(0.0));
            1400.0 * 65536.0 * busy
        };
        let (size, secs) = (65536.0, 1.5);
        let (share, range) = auto_share(&rate, size, 0.0, AUTO_START, secs);
        assert!(share >= 0.93, "{share:.3} of a fixed 128, limits {range:?}");
    }

    #[test]
    fn larger_blocks_start_fewer() {
        assert_eq!(auto_start(4 << 10), AUTO_START);
        assert_eq!(auto_start(1 << 20), 64);
        assert_eq!(auto_start(8 << 20), 8);
        assert_eq!(auto_start(64 << 20), 1);
        assert_eq!(auto_start(0), AUTO_START);
        // Held whole: at most 64 MiB in flight; relayed: any number.
        assert_eq!(auto_max(64 << 10, true), AUTO_MAX);
        assert_eq!(auto_max(256 << 10, true), AUTO_MAX);
        assert_eq!(auto_max(1 << 20, true), 64);
        assert_eq!(auto_max(4 << 20, true), 16);
        assert_eq!(auto_max(8 << 20, false), AUTO_MAX);
        assert_eq!(auto_max(0, true), AUTO_MAX);
    }

    #[test]
    fn parsing() {
        assert_eq!("auto".parse(), Ok(Concurrency::Auto));
        assert_eq!("AUTO".parse(), Ok(Concurrency::Auto));
        assert_eq!("8".parse(), Ok(Concurrency::Fixed(8)));
        assert!("0".parse::<Concurrency>().is_err());
        assert!("1025".parse::<Concurrency>().is_err());
        assert!("many".parse::<Concurrency>().is_err());
        assert_eq!(Concurrency::Auto.to_string(), "auto");
        assert_eq!(Concurrency::Fixed(3).max(), 3);
    }
}
