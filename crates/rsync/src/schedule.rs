//! Which block starts next. At most `limit` copies run at once (the [`Tuner`]'s or
//! `--concurrency`), and no keep service takes more than its share of them:
//! - **fair share**: a service may be busy with at most twice its share of the
//!   copies in flight (at least 4), so one slow keepstore cannot hold every slot
//!   while the others idle: blocks bound for it wait in a look-ahead queue while
//!   blocks for the others go ahead;
//! - **busy answers**: a service that answers 503 (a keepstore past its
//!   `MaxConcurrentRequests`, §5.10) or 429 gets at most half of what it had in
//!   flight, then an eighth more (at least one) per block time (at least half a
//!   second) without another such answer: much as TCP backs off, settling just
//!   under the service's own limit.
//!
//! A copy is counted against the source service it reads from first and the
//! destination services it writes to first (probe order): where its requests go
//! unless something fails. Bookkeeping only; no I/O.
//!
//! [`Tuner`]: crate::tune::Tuner

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::plan::Todo;

/// The keep services one copy keeps busy: indexes into the source's and the
/// destination's service lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touch {
    /// The source service read first.
    pub src: Option<usize>,
    /// The destination services written first.
    pub dst: Vec<usize>,
}

/// Bounds of how long a busy service's lowered limit holds before it is raised (one
/// block time, within these).
const RELAX_MIN: Duration = Duration::from_millis(500);
const RELAX_MAX: Duration = Duration::from_secs(5);
/// Blocks waiting for a busy or over-share service, at most.
const LOOKAHEAD_MAX: usize = 4096;

/// A lowered limit of one service after busy answers.
#[derive(Debug, Clone, Copy)]
struct BusyCap {
    n: usize,
    since: Instant,
}

/// One cluster's services, as the scheduler sees them.
#[derive(Debug)]
struct Side {
    in_flight: Vec<usize>,
    busy_cap: Vec<Option<BusyCap>>,
    seen_busy: Vec<u64>,
    /// Services one copy keeps busy on this side (1 source; R destinations).
    per_copy: usize,
    /// Uuids of services that were ever capped for busy answers (for the report).
    ever_busy: Vec<bool>,
}

impl Side {
    fn new(services: usize, per_copy: usize) -> Side {
        Side {
            in_flight: vec![0; services],
            busy_cap: vec![None; services],
            seen_busy: vec![0; services],
            per_copy: per_copy.max(1),
            ever_busy: vec![false; services],
        }
    }

    /// Twice a service's share of `limit` copies, at least 4; unbounded when there
    /// are too few services for shares to mean anything.
    fn fair(&self, limit: usize) -> usize {
        let n = self.in_flight.len();
        if n <= 2 * self.per_copy {
            return usize::MAX;
        }
        (2 * limit * self.per_copy).div_ceil(n).max(4)
    }

    fn room(&self, i: usize, fair: usize) -> bool {
        let cap = self.busy_cap[i].map_or(fair, |c| c.n.min(fair));
        self.in_flight[i] < cap
    }

    /// Takes new busy answers into account (`busy(i)`: the count so far) and raises
    /// the lowered limits that held long enough.
    fn update(&mut self, busy: impl Fn(usize) -> u64, now: Instant, settle: Duration) {
        for i in 0..self.in_flight.len() {
            let seen = busy(i);
            if seen > self.seen_busy[i] {
                self.seen_busy[i] = seen;
                // One cut per settling time: answers to requests sent before the last
                // cut say nothing new.
                let fresh = self.busy_cap[i].is_none_or(|c| now.duration_since(c.since) >= settle);
                if fresh {
                    let had =
                        self.busy_cap[i].map_or(self.in_flight[i], |c| c.n.min(self.in_flight[i]));
                    self.busy_cap[i] = Some(BusyCap {
                        n: (had / 2).max(1),
                        since: now,
                    });
                    self.ever_busy[i] = true;
                    tracing::debug!(
                        service = i,
                        in_flight = self.in_flight[i],
                        limit = (had * 3 / 4).max(1),
                        "busy answers: fewer at once"
                    );
                }
            } else if let Some(c) = &mut self.busy_cap[i] {
                if now.duration_since(c.since) >= settle.clamp(RELAX_MIN, RELAX_MAX) {
                    c.n += (c.n / 8).max(1);
                    c.since = now;
                }
            }
        }
    }
}

/// The start order of the copies. See the module docs.
#[derive(Debug)]
pub struct Scheduler<I> {
    todo: I,
    exhausted: bool,
    deferred: VecDeque<(Todo, Touch)>,
    src: Side,
    dst: Side,
    running: usize,
}

impl<I: Iterator<Item = Todo>> Scheduler<I> {
    /// Blocks from `todo`, over `src_services` and `dst_services` services, each copy
    /// writing `replicas` destination services.
    pub fn new(todo: I, src_services: usize, dst_services: usize, replicas: usize) -> Self {
        Scheduler {
            todo,
            exhausted: false,
            deferred: VecDeque::new(),
            src: Side::new(src_services, 1),
            dst: Side::new(dst_services, replicas),
            running: 0,
        }
    }

    /// Copies started and not yet finished.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Whether every block was started and finished.
    pub fn is_done(&self) -> bool {
        self.exhausted && self.deferred.is_empty() && self.running == 0
    }

    /// The next block to start with at most `limit` running, and the services it
    /// keeps busy (`touch` says which); `None` when nothing may start now.
    pub fn next(&mut self, limit: usize, touch: impl Fn(&Todo) -> Touch) -> Option<(Todo, Touch)> {
        if self.running >= limit {
            return None;
        }
        let (fs, fd) = (self.src.fair(limit), self.dst.fair(limit));
        let fits = |s: &Self, t: &Touch| {
            t.src.is_none_or(|i| s.src.room(i, fs)) && t.dst.iter().all(|&i| s.dst.room(i, fd))
        };
        let found = match self.deferred.iter().position(|(_, t)| fits(self, t)) {
            Some(i) => self.deferred.remove(i),
            None => loop {
                if self.exhausted || self.deferred.len() >= LOOKAHEAD_MAX.min(64 + 4 * limit) {
                    break None;
                }
                let Some(todo) = self.todo.next() else {
                    self.exhausted = true;
                    break None;
                };
                let t = touch(&todo);
                if fits(self, &t) {
                    break Some((todo, t));
                }
                self.deferred.push_back((todo, t));
            },
        };
        let (todo, t) = found?;
        if let Some(i) = t.src {
            self.src.in_flight[i] += 1;
        }
        for &i in &t.dst {
            self.dst.in_flight[i] += 1;
        }
        self.running += 1;
        Some((todo, t))
    }

    /// A copy ended.
    pub fn finish(&mut self, t: &Touch) {
        if let Some(i) = t.src {
            self.src.in_flight[i] -= 1;
        }
        for &i in &t.dst {
            self.dst.in_flight[i] -= 1;
        }
        self.running -= 1;
    }

    /// Takes the services' busy answers so far into account (see the module docs);
    /// `settle` is about one block's copy time.
    pub fn update(
        &mut self,
        src_busy: impl Fn(usize) -> u64,
        dst_busy: impl Fn(usize) -> u64,
        now: Instant,
        settle: Duration,
    ) {
        self.src.update(src_busy, now, settle);
        self.dst.update(dst_busy, now, settle);
    }

    /// Stops starting blocks: what was not started stays so.
    pub fn close(&mut self) {
        self.exhausted = true;
        self.deferred.clear();
    }

    /// Indexes of the source and destination services ever limited for busy answers.
    pub fn busy_services(&self) -> (Vec<usize>, Vec<usize>) {
        let f = |s: &Side| {
            s.ever_busy
                .iter()
                .enumerate()
                .filter(|(_, b)| **b)
                .map(|(i, _)| i)
                .collect()
        };
        (f(&self.src), f(&self.dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Todo;

    fn todos(n: usize) -> Vec<Todo> {
        (0..n).map(|i| Todo::for_test(i as u8, 100)).collect()
    }

    /// Block i reads from source service i % 4 and writes nothing counted.
    fn by_source(t: &Todo) -> Touch {
        Touch {
            src: Some(usize::from(t.hash().0[0]) % 4),
            dst: Vec::new(),
        }
    }

    #[test]
    fn a_slow_service_holds_at_most_twice_its_share() {
        let mut s = Scheduler::new(todos(200).into_iter(), 4, 3, 2);
        let mut started = Vec::new();
        // 16 slots; nothing finishes on service 0 (slow), the others finish at once.
        for _ in 0..200 {
            while let Some((todo, t)) = s.next(16, by_source) {
                started.push(todo);
                if t.src != Some(0) {
                    s.finish(&t);
                }
            }
            if s.running() == 0 {
                break;
            }
            // All 16 slots taken? Only by service 0's blocks, up to its fair share.
            if s.running() >= 8 {
                break;
            }
        }
        let on_slow = started
            .iter()
            .filter(|t| usize::from(t.hash().0[0]) % 4 == 0)
            .count();
        // Twice a quarter of 16 is 8: the slow service holds 8, the rest went on.
        assert_eq!(s.running(), 8);
        assert_eq!(on_slow, 8);
        assert_eq!(started.len(), 8 + 150, "every other block started");
    }

    #[test]
    fn busy_answers_lower_a_services_limit_then_it_recovers() {
        let mut s = Scheduler::new(todos(400).into_iter(), 4, 3, 2);
        let t0 = Instant::now();
        let settle = Duration::from_millis(200);
        let mut held = Vec::new();
        while let Some((_, t)) = s.next(64, by_source) {
            held.push(t);
        }
        assert_eq!(s.src.in_flight[1], 16);
        // Service 1 answered 503 twice: halved once (the second answer is about
        // requests sent before the cut).
        s.update(|i| u64::from(i == 1) * 2, |_| 0, t0, settle);
        assert_eq!(s.src.busy_cap[1].unwrap().n, 8);
        s.update(|i| u64::from(i == 1) * 3, |_| 0, t0, settle);
        assert_eq!(s.src.busy_cap[1].unwrap().n, 8);
        // After settling, a new answer halves again.
        s.update(|i| u64::from(i == 1) * 4, |_| 0, t0 + settle, settle);
        assert_eq!(s.src.busy_cap[1].unwrap().n, 4);
        // Its blocks wait while it is over its limit; the others' do not.
        for t in held.drain(..) {
            s.finish(&t);
        }
        while let Some((_, t)) = s.next(64, by_source) {
            held.push(t);
        }
        assert_eq!(s.src.in_flight[1], 4);
        assert_eq!(s.running(), 64);
        // Half a second (more than a block time) without busy answers: one more.
        s.update(
            |i| u64::from(i == 1) * 4,
            |_| 0,
            t0 + settle + RELAX_MIN,
            settle,
        );
        assert_eq!(s.src.busy_cap[1].unwrap().n, 5);
        assert_eq!(s.busy_services(), (vec![1], vec![]));
    }

    #[test]
    fn few_services_have_no_share_limit() {
        // 3 destination services, 2 written per copy: every copy touches most of them.
        let s: Scheduler<std::vec::IntoIter<Todo>> =
            Scheduler::new(Vec::new().into_iter(), 1, 3, 2);
        assert_eq!(s.dst.fair(64), usize::MAX);
        assert_eq!(s.src.fair(64), usize::MAX);
        let s: Scheduler<std::vec::IntoIter<Todo>> =
            Scheduler::new(Vec::new().into_iter(), 20, 20, 2);
        assert_eq!(s.src.fair(64), 7);
        assert_eq!(s.dst.fair(64), 13);
        assert_eq!(s.src.fair(8), 4);
    }

    #[test]
    fn ends_when_everything_finished() {
        let mut s = Scheduler::new(todos(3).into_iter(), 4, 3, 2);
        let mut held = Vec::new();
        while let Some((_, t)) = s.next(8, by_source) {
            held.push(t);
        }
        assert!(!s.is_done());
        for t in &held {
            s.finish(t);
        }
        assert!(s.next(8, by_source).is_none());
        assert!(s.is_done());
    }
}
