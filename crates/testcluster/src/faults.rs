//! Fault injection (style.md B5): one `Faults` per service, applied by the single
//! middleware in `server.rs` and, for body-level faults (truncated index, corrupted
//! reads), by the keepstore handlers. Random faults use a seeded RNG.

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A change to a service's faults, as sent by `keep-testcluster fault` and accepted by
/// [`FaultHandle::apply`]. Unset fields leave the current setting alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultSpec {
    /// Remove every fault first.
    pub clear: bool,
    /// Added latency before each request is handled, in milliseconds.
    pub latency_ms: Option<u64>,
    /// Bandwidth limit of the service's link in bytes per second, each direction,
    /// shared by all its requests (0 removes it).
    pub bandwidth: Option<u64>,
    /// The status to inject (500, 502, 503, 504, 507, 429, ...).
    pub status: Option<u16>,
    /// Inject `status` on each request with this probability (seeded).
    pub rate: Option<f64>,
    /// Inject `status` on the next N requests.
    pub burst: Option<u64>,
    /// Only inject `status` on this method (e.g. `PUT`).
    pub method: Option<String>,
    /// Cut indexes short: the final blank line (end-of-index marker) is left out.
    pub truncate_index: Option<bool>,
    /// Cut the next N indexes short, then answer whole ones again.
    pub truncate_index_next: Option<u64>,
    /// Add a malformed line ([`MALFORMED_INDEX_LINE`]) before the end-of-index line.
    pub malformed_index: Option<bool>,
    /// Flip a byte in every block body sent (the client's checksum must catch it).
    pub corrupt: Option<bool>,
    /// Send only the first half of every block body (Content-Length stays the full
    /// size), then close the connection.
    pub truncate_body: Option<bool>,
    /// Send the first half of every block body, then nothing more, without closing
    /// the connection: a stalled transfer.
    pub stall_body: Option<bool>,
    /// Answer 503 (empty body) beyond this many concurrent requests (0 removes it).
    pub max_concurrent: Option<usize>,
    /// Stop the service (listener and connections closed).
    pub stop: bool,
    /// Start the service again on the same port.
    pub start: bool,
}

#[derive(Debug, Clone)]
enum StatusMode {
    Burst(u64),
    Rate(f64),
}

#[derive(Debug, Clone)]
struct StatusFault {
    code: u16,
    method: Option<http::Method>,
    mode: StatusMode,
}

/// The settings the middleware reads once per request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub(crate) latency: Duration,
    pub(crate) bandwidth: Option<u64>,
    pub(crate) max_concurrent: Option<usize>,
    pub(crate) truncate_index: bool,
    /// Indexes still to cut short (`truncate_index_next`).
    pub(crate) truncate_index_next: u64,
    pub(crate) malformed_index: bool,
    pub(crate) corrupt: bool,
    pub(crate) truncate_body: bool,
    pub(crate) stall_body: bool,
}

/// The line a keepstore with the `malformed_index` fault adds to its index: a hash
/// with a non-hex digit, as a damaged file name on disk would give.
pub const MALFORMED_INDEX_LINE: &str = "0123456789abcdef0123456789abcdeg+1 1700000000000000000";

struct State {
    plan: Plan,
    status: Option<StatusFault>,
    rng: StdRng,
}

/// What the middleware does with a request.
pub(crate) enum StatusDecision {
    Pass,
    Fail(u16),
}

/// One direction of a service's link under a bandwidth limit. Every request shares
/// it, as they would a real network link: ten uploads at once get a tenth of the rate
/// each, not the rate each.
#[derive(Debug, Default)]
pub(crate) struct Link {
    /// When the bytes booked so far are through.
    busy_until: Mutex<Option<tokio::time::Instant>>,
}

impl Link {
    /// Books `bytes` at `bps` after everything booked before; returns when they are
    /// through.
    pub(crate) fn book(&self, bytes: usize, bps: u64) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let mut busy = self.busy_until.lock().unwrap_or_else(|e| e.into_inner());
        let start = busy.map_or(now, |b| b.max(now));
        let end = start + Duration::from_secs_f64(bytes as f64 / bps.max(1) as f64);
        *busy = Some(end);
        end
    }
}

/// The faults of one service.
pub(crate) struct Faults {
    state: Mutex<State>,
    pub(crate) in_flight: AtomicUsize,
    /// The service's link, for uploads (request bodies) and downloads (responses).
    pub(crate) uplink: std::sync::Arc<Link>,
    pub(crate) downlink: std::sync::Arc<Link>,
}

impl Faults {
    pub(crate) fn new(seed: u64) -> Faults {
        Faults {
            state: Mutex::new(State {
                plan: Plan::default(),
                status: None,
                rng: StdRng::seed_from_u64(seed),
            }),
            in_flight: AtomicUsize::new(0),
            uplink: Default::default(),
            downlink: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn snapshot(&self) -> Plan {
        self.lock().plan.clone()
    }

    /// Whether this index is to be cut short (a standing fault, or one of the next N).
    pub(crate) fn take_index_truncation(&self) -> bool {
        let mut st = self.lock();
        if st.plan.truncate_index_next > 0 {
            st.plan.truncate_index_next -= 1;
            return true;
        }
        st.plan.truncate_index
    }

    pub(crate) fn decide_status(&self, method: &http::Method) -> StatusDecision {
        let mut st = self.lock();
        let State { status, rng, .. } = &mut *st;
        let Some(f) = status.as_mut() else {
            return StatusDecision::Pass;
        };
        if f.method.as_ref().is_some_and(|m| m != method) {
            return StatusDecision::Pass;
        }
        let code = f.code;
        match &mut f.mode {
            StatusMode::Burst(n) => {
                *n -= 1;
                if *n == 0 {
                    *status = None;
                }
                StatusDecision::Fail(code)
            }
            StatusMode::Rate(p) => {
                if rng.random::<f64>() < *p {
                    StatusDecision::Fail(code)
                } else {
                    StatusDecision::Pass
                }
            }
        }
    }

    /// Applies a spec (stop/start are handled by the caller).
    pub(crate) fn apply(&self, spec: &FaultSpec) -> anyhow::Result<()> {
        let mut st = self.lock();
        if spec.clear {
            st.plan = Plan::default();
            st.status = None;
        }
        if let Some(ms) = spec.latency_ms {
            st.plan.latency = Duration::from_millis(ms);
        }
        if let Some(b) = spec.bandwidth {
            st.plan.bandwidth = (b > 0).then_some(b);
        }
        if let Some(m) = spec.max_concurrent {
            st.plan.max_concurrent = (m > 0).then_some(m);
        }
        if let Some(t) = spec.truncate_index {
            st.plan.truncate_index = t;
        }
        if let Some(n) = spec.truncate_index_next {
            st.plan.truncate_index_next = n;
        }
        if let Some(t) = spec.truncate_body {
            st.plan.truncate_body = t;
        }
        if let Some(t) = spec.stall_body {
            st.plan.stall_body = t;
        }
        if let Some(m) = spec.malformed_index {
            st.plan.malformed_index = m;
        }
        if let Some(c) = spec.corrupt {
            st.plan.corrupt = c;
        }
        if let Some(code) = spec.status {
            anyhow::ensure!((100..600).contains(&code), "bad status {code}");
            let method = match &spec.method {
                Some(m) => Some(m.to_ascii_uppercase().parse::<http::Method>()?),
                None => None,
            };
            let mode = match (spec.burst, spec.rate) {
                (Some(n), None) if n > 0 => StatusMode::Burst(n),
                (None, Some(p)) if (0.0..=1.0).contains(&p) => StatusMode::Rate(p),
                (None, None) => StatusMode::Rate(1.0),
                _ => anyhow::bail!("give either --burst N (N > 0) or --rate P (0..=1)"),
            };
            st.status = Some(StatusFault { code, method, mode });
        } else if spec.burst.is_some() || spec.rate.is_some() {
            anyhow::bail!("--burst/--rate need --status");
        }
        Ok(())
    }
}

/// Fault controls of one service, from [`crate::TestCluster::faults`]. The setters
/// panic if their fault cannot be applied (e.g. `fail_next` with a method name that
/// is not one): a test must not pass without the fault it asked for.
#[derive(Clone)]
pub struct FaultHandle {
    pub(crate) faults: std::sync::Arc<Faults>,
}

impl FaultHandle {
    /// Applies a [`FaultSpec`] (its `stop`/`start` fields are ignored here; use
    /// [`crate::TestCluster::stop_service`]).
    ///
    /// # Errors
    /// An invalid combination (e.g. both burst and rate) or an unknown method.
    pub fn apply(&self, spec: &FaultSpec) -> anyhow::Result<()> {
        self.faults.apply(spec)
    }

    /// [`FaultHandle::apply`] for the helpers below, which take only valid values: a
    /// spec that cannot be applied is a broken test, so it panics instead of letting
    /// the test pass without its fault.
    fn must_apply(&self, spec: &FaultSpec) {
        if let Err(e) = self.apply(spec) {
            panic!("fault {spec:?} cannot be applied: {e:#}");
        }
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.must_apply(&FaultSpec {
            clear: true,
            ..Default::default()
        });
    }

    /// Adds latency before each request.
    pub fn set_latency(&self, latency: Duration) {
        self.must_apply(&FaultSpec {
            latency_ms: Some(latency.as_millis() as u64),
            ..Default::default()
        });
    }

    /// Limits bandwidth to `bytes_per_sec` (None removes the limit).
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.must_apply(&FaultSpec {
            bandwidth: Some(bytes_per_sec.unwrap_or(0)),
            ..Default::default()
        });
    }

    /// Answers the next `n` requests (only those with `method`, if given) with `status`.
    pub fn fail_next(&self, n: u64, status: u16, method: Option<&str>) {
        self.must_apply(&FaultSpec {
            status: Some(status),
            burst: Some(n.max(1)),
            method: method.map(str::to_owned),
            ..Default::default()
        });
    }

    /// Answers each request (only those with `method`, if given) with `status` with
    /// probability `p`, drawn from the cluster's seeded RNG.
    pub fn fail_rate(&self, p: f64, status: u16, method: Option<&str>) {
        self.must_apply(&FaultSpec {
            status: Some(status),
            rate: Some(p.clamp(0.0, 1.0)),
            method: method.map(str::to_owned),
            ..Default::default()
        });
    }

    /// Leaves the end-of-index blank line out of index responses.
    pub fn set_truncate_index(&self, on: bool) {
        self.must_apply(&FaultSpec {
            truncate_index: Some(on),
            ..Default::default()
        });
    }

    /// Leaves the end-of-index blank line out of the next `n` index responses only.
    pub fn truncate_next_indexes(&self, n: u64) {
        self.must_apply(&FaultSpec {
            truncate_index_next: Some(n),
            ..Default::default()
        });
    }

    /// Adds [`MALFORMED_INDEX_LINE`] to index responses, before the end-of-index line.
    pub fn set_malformed_index(&self, on: bool) {
        self.must_apply(&FaultSpec {
            malformed_index: Some(on),
            ..Default::default()
        });
    }

    /// Flips a byte in each block body sent with 200.
    pub fn set_corrupt_reads(&self, on: bool) {
        self.must_apply(&FaultSpec {
            corrupt: Some(on),
            ..Default::default()
        });
    }

    /// Sends only half of each block body under a full `Content-Length`.
    pub fn set_truncate_body(&self, on: bool) {
        self.must_apply(&FaultSpec {
            truncate_body: Some(on),
            ..Default::default()
        });
    }

    /// Sends half of each block body, then stalls (the connection stays open, silent).
    pub fn set_stall_body(&self, on: bool) {
        self.must_apply(&FaultSpec {
            stall_body: Some(on),
            ..Default::default()
        });
    }

    /// Answers 503 beyond `max` concurrent requests (None removes the cap).
    pub fn set_max_concurrent(&self, max: Option<usize>) {
        self.must_apply(&FaultSpec {
            max_concurrent: Some(max.unwrap_or(0)),
            ..Default::default()
        });
    }
}
