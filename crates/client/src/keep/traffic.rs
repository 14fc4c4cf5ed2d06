//! What a client's requests are doing, for a scheduler above it: body bytes received
//! (a throughput that moves smoothly, unlike blocks completed) and, per service, the
//! "busy" answers (a keepstore's request limiter answers 503 beyond
//! `MaxConcurrentRequests`, §5.10; a proxy may answer 429). Shared by every clone of a
//! [`KeepClient`](super::KeepClient); counters only grow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::services::KeepService;
use crate::stall::Progress;

/// Counters of one client's traffic. See the module docs.
#[derive(Debug)]
pub struct Traffic {
    received: AtomicU64,
    busy: Box<[AtomicU64]>,
    /// Per service, when any upload to it last moved (stall detection).
    uploads: Box<[Arc<Progress>]>,
}

impl Traffic {
    pub(crate) fn new(services: &[KeepService]) -> Traffic {
        Traffic {
            received: AtomicU64::new(0),
            busy: services.iter().map(|_| AtomicU64::new(0)).collect(),
            uploads: services.iter().map(|s| Progress::service(&s.url)).collect(),
        }
    }

    /// The stall clock of a new upload to service `i` (see [`Progress::upload`]); a
    /// clock of its own when `i` is not one of the client's services.
    pub(crate) fn upload_progress(&self, i: Option<usize>) -> Arc<Progress> {
        match i.and_then(|i| self.uploads.get(i)) {
            Some(s) => Progress::upload(Arc::clone(s)),
            None => Progress::new(),
        }
    }

    /// Block body bytes received so far (GET answers), counted as they arrive.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// "Busy" answers (429, or 503 other than 2.x's `Full`) from service `i` (an index
    /// into [`KeepClient::services`](super::KeepClient::services)) so far.
    pub fn busy(&self, i: usize) -> u64 {
        self.busy.get(i).map_or(0, |b| b.load(Ordering::Relaxed))
    }

    /// "Busy" answers from every service so far.
    pub fn busy_total(&self) -> u64 {
        self.busy.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts an answer of service `i` if it says "too many requests".
    pub(crate) fn note_answer(&self, i: Option<usize>, status: u16, body: &str) {
        let busy = status == 429 || (status == 503 && !crate::error::is_full(status, body));
        if let (true, Some(b)) = (busy, i.and_then(|i| self.busy.get(i))) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_answers() {
        let svc = |i: u32| KeepService {
            uuid: format!("zzzzz-bi6l4-{i:015}"),
            url: format!("http://127.0.0.1:{}", 25107 + i),
            service_type: crate::services::ServiceType::Disk,
            read_only: false,
        };
        let t = Traffic::new(&[svc(0), svc(1)]);
        t.note_answer(Some(0), 503, "");
        t.note_answer(Some(0), 503, "Full\n"); // 2.x: storage full, not busy
        t.note_answer(Some(1), 429, "slow down");
        t.note_answer(Some(1), 500, "oops");
        t.note_answer(Some(1), 507, "");
        t.note_answer(None, 503, "");
        t.note_answer(Some(9), 503, "");
        assert_eq!((t.busy(0), t.busy(1), t.busy_total()), (1, 1, 2));
        t.add_received(10);
        t.add_received(5);
        assert_eq!(t.received(), 15);
    }
}
