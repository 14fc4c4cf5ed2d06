//! Retry policy: how many passes over the services, and the jittered exponential
//! backoff between them.
//!
//! The Go client makes 3 passes (`Retries = 2`) and sleeps a random time below a cap
//! that starts at 2 s and doubles up to 10x (§8.4, §14). We default to more, shorter
//! retries (5 passes, 500 ms doubling to at most 10 s), because a migration of millions
//! of blocks should ride out a keepstore restart without failing blocks, and should
//! not sit idle for long on one block either.
//!
//! Which errors are retried is decided by [`Error::is_retryable`](crate::Error::is_retryable)
//! alone. A Keep PUT is content-addressed and therefore idempotent, so it is retried
//! on timeouts too.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Backoff between retry passes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// The cap on the first sleep. Default 500 ms.
    pub initial: Duration,
    /// The largest cap. Default 10 s.
    pub max: Duration,
    /// The factor by which the cap grows after each sleep. Default 2.
    pub base: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
            base: 2.0,
        }
    }
}

/// How often to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first pass: the total number of passes is `retries + 1`.
    /// Default 4.
    pub retries: u32,
    /// The sleep between passes.
    pub backoff: BackoffConfig,
    /// A fixed seed for the jitter, for reproducible tests. Default `None` (seeded
    /// from the OS).
    pub seed: Option<u64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            retries: 4,
            backoff: BackoffConfig::default(),
            seed: None,
        }
    }
}

impl RetryConfig {
    /// The total number of passes, `retries + 1`.
    pub fn attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// A fresh backoff sequence for one operation.
    pub fn backoff(&self) -> Backoff {
        match self.seed {
            Some(seed) => Backoff::with_seed(self.backoff, seed),
            None => Backoff::new(self.backoff),
        }
    }
}

/// A sequence of jittered exponential sleeps ("equal jitter"): the n-th sleep is
/// uniform in `[cap/2, cap]`, where `cap = min(max, initial * base^n)`. Half the cap
/// is guaranteed so that a retry never comes immediately; the random half spreads
/// out clients that failed together.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    cap: f64,
    rng: SmallRng,
}

impl Backoff {
    /// A sequence with an RNG seeded from the thread's RNG (itself seeded from the
    /// OS). Not `from_os_rng`: every GET and PUT builds a `Backoff`, and that cost a
    /// `getrandom` system call each (10,039 in a copy of 5,000 blocks, `strace -c`).
    pub fn new(config: BackoffConfig) -> Backoff {
        Self::from_rng(config, SmallRng::from_rng(&mut rand::rng()))
    }

    /// A reproducible sequence.
    pub fn with_seed(config: BackoffConfig, seed: u64) -> Backoff {
        Self::from_rng(config, SmallRng::seed_from_u64(seed))
    }

    fn from_rng(config: BackoffConfig, rng: SmallRng) -> Backoff {
        Backoff {
            config,
            cap: config.initial.as_secs_f64(),
            rng,
        }
    }

    /// The next sleep.
    pub fn next_delay(&mut self) -> Duration {
        let max = self.config.max.as_secs_f64();
        let cap = self.cap.min(max).max(0.0);
        let secs = if cap > 0.0 {
            self.rng.random_range(cap / 2.0..=cap)
        } else {
            0.0
        };
        self.cap = (self.cap * self.config.base.max(1.0)).min(max);
        Duration::from_secs_f64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let cfg = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            base: 2.0,
        };
        let mut b = Backoff::with_seed(cfg, 7);
        let caps = [100u64, 200, 400, 800, 1000, 1000, 1000];
        for cap in caps {
            let d = b.next_delay();
            let cap = Duration::from_millis(cap);
            assert!(d <= cap && d >= cap / 2, "{d:?} vs {cap:?}");
        }
    }

    #[test]
    fn seeded_is_reproducible() {
        let cfg = BackoffConfig::default();
        let a: Vec<_> = {
            let mut b = Backoff::with_seed(cfg, 1);
            (0..5).map(|_| b.next_delay()).collect()
        };
        let mut b = Backoff::with_seed(cfg, 1);
        let again: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(a, again);
        assert_eq!(RetryConfig::default().attempts(), 5);
    }

    #[test]
    fn zero_backoff() {
        let mut b = Backoff::with_seed(
            BackoffConfig {
                initial: Duration::ZERO,
                max: Duration::ZERO,
                base: 2.0,
            },
            1,
        );
        assert_eq!(b.next_delay(), Duration::ZERO);
    }
}
