//! `--bwlimit`: a byte-rate limiter shared by every copy task; `--max-buffer-memory`:
//! a budget of block bytes held at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

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

/// `--max-buffer-memory`: room for block data in memory, one permit per byte, so that
/// 64 MiB blocks cannot hold concurrency x 64 MiB while small blocks still run at full
/// concurrency.
#[derive(Debug)]
pub struct BufferRoom {
    permits: Semaphore,
    /// The most one block takes: a block larger than the whole budget runs alone.
    cap: u64,
}

impl BufferRoom {
    /// Room for `bytes` bytes (at least 1).
    pub fn new(bytes: u64) -> BufferRoom {
        let cap = bytes.clamp(1, Semaphore::MAX_PERMITS as u64);
        BufferRoom {
            permits: Semaphore::new(cap as usize),
            cap,
        }
    }

    /// Waits for room for `size` bytes; the room is given back when the permit drops.
    pub async fn reserve(&self, size: u64) -> tokio::sync::SemaphorePermit<'_> {
        let n = u32::try_from(size.min(self.cap)).unwrap_or(u32::MAX);
        self.permits
            .acquire_many(n)
            .await
            .expect("the semaphore is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    #[test]
    fn buffer_room_waits_for_bytes_and_caps_big_blocks() {
        let room = BufferRoom::new(100);
        let a = room.reserve(60).now_or_never().expect("room for 60 of 100");
        assert!(room.reserve(50).now_or_never().is_none(), "60 + 50 > 100");
        let b = room.reserve(40).now_or_never().expect("60 + 40 fits");
        drop((a, b));
        // Larger than the whole budget: waits for all of it, then runs alone.
        let big = room.reserve(1000).now_or_never().expect("an empty budget");
        assert!(room.reserve(1).now_or_never().is_none());
        drop(big);
        assert!(room.reserve(0).now_or_never().is_some());
    }

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
