//! `--bwlimit`: a byte-rate limiter shared by every copy task.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Schedules reads so that, on average, no more than `rate` bytes per second start.
///
/// Each caller reserves the time its bytes take at the configured rate after the
/// previous reservation ("virtual scheduling"), then sleeps until its slot. One
/// second of burst is allowed so short idle gaps are not lost.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_second` (greater than 0).
    pub fn new(bytes_per_second: u64) -> RateLimiter {
        RateLimiter {
            rate: bytes_per_second.max(1) as f64,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// How long the caller must wait before moving `bytes` bytes (and books them).
    pub fn reserve(&self, bytes: u64) -> Duration {
        let now = Instant::now();
        let mut next = self.next_free.lock().expect("limiter lock");
        let burst_floor = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let start = (*next).max(burst_floor);
        *next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
        start.saturating_duration_since(now)
    }

    /// Waits until `bytes` bytes may move.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_reservations_at_the_rate() {
        let l = RateLimiter::new(1000);
        // No credit at the start: the fifth 1000 bytes start 4 s out.
        let mut total = Duration::ZERO;
        for _ in 0..5 {
            total = l.reserve(1000);
        }
        assert!(
            total >= Duration::from_millis(3900) && total <= Duration::from_millis(4100),
            "{total:?}"
        );
    }
}
