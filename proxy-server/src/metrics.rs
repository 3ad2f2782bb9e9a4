//! Counters: each worker keeps its own [`Metrics`] and reports a [`Snapshot`] to the router,
//! which adds them up with its own [`RouterCounters`] and renders the Prometheus text
//! exposition (version 0.0.4) on `/metrics` (served by `router::http`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use cryptoki_sys::*;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Per-function call statistics.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FunctionStats {
    by_rv: HashMap<u64, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters and gauges of one worker.
#[derive(Default)]
pub struct Metrics {
    functions: Mutex<HashMap<&'static str, FunctionStats>>,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    backend_errors: AtomicU64,
}

/// What a worker reports: its counters at one moment, and its sessions per application.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub functions: HashMap<String, FunctionStats>,
    pub connections_open: i64,
    pub connections_total: u64,
    pub connections_refused: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub backend_errors: u64,
    /// Applications served (one for an application's worker, any number for a shared one).
    pub applications: u64,
    /// Sessions open, by application label.
    pub sessions: Vec<(String, u64)>,
}

/// The router's own counters.
#[derive(Default)]
pub struct RouterCounters {
    /// Connections refused before reaching a worker (prelude, limits, worker failures).
    pub connections_refused: AtomicU64,
    pub worker_starts: AtomicU64,
    /// Workers that ended by a signal or a non-zero exit status without being asked to.
    pub worker_crashes: AtomicU64,
    /// Workers no hello reached, stopped to make room (--max-pending-applications).
    pub pending_stopped: AtomicU64,
    /// New applications refused: more than --max-pending-applications a second.
    pub pending_refused: AtomicU64,
    /// Readiness checks that reached the vendor library (the others were answered from the
    /// last one).
    pub readiness_checks: AtomicU64,
}

/// A return value as the wire and the metrics keep it.
#[allow(clippy::useless_conversion)]
fn rv_key(rv: CK_RV) -> u64 {
    u64::from(rv)
}

/// Return values that mean the vendor library or device is in trouble.
fn is_backend_error(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_DEVICE_ERROR
            | CKR_DEVICE_MEMORY
            | CKR_DEVICE_REMOVED
            | CKR_GENERAL_ERROR
            | CKR_FUNCTION_FAILED
            | CKR_TOKEN_NOT_PRESENT
    )
}

impl Metrics {
    /// Records one call.
    pub fn call(&self, function: &'static str, rv: CK_RV, elapsed: Duration) {
        if is_backend_error(rv) {
            self.backend_errors.fetch_add(1, Ordering::Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        let mut all = self.functions.lock();
        let f = all.entry(function).or_default();
        *f.by_rv.entry(rv_key(rv)).or_default() += 1;
        f.count += 1;
        f.sum += secs;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            f.buckets[i] += 1;
        }
    }

    /// The counters as they are now; `applications` and `sessions` are the worker's to fill.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            functions: self
                .functions
                .lock()
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            backend_errors: self.backend_errors.load(Ordering::Relaxed),
            applications: 0,
            sessions: Vec::new(),
        }
    }
}

impl Snapshot {
    /// Adds another worker's snapshot to this one.
    pub fn add(&mut self, other: Snapshot) {
        for (name, f) in other.functions {
            let mine = self.functions.entry(name).or_default();
            for (rv, n) in f.by_rv {
                *mine.by_rv.entry(rv).or_default() += n;
            }
            for (a, b) in mine.buckets.iter_mut().zip(f.buckets) {
                *a += b;
            }
            mine.count += f.count;
            mine.sum += f.sum;
        }
        self.connections_open += other.connections_open;
        self.connections_total += other.connections_total;
        self.connections_refused += other.connections_refused;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.backend_errors += other.backend_errors;
        self.applications += other.applications;
        self.sessions.extend(other.sessions);
    }

    /// The Prometheus text exposition (version 0.0.4) of the sum over workers and the
    /// router's counters; `workers` is the number of workers running.
    pub fn render(
        &self,
        router: &RouterCounters,
        workers: usize,
        startups: &crate::startups::Startups,
    ) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(
            out,
            "# HELP pkcs11_proxy_calls_total PKCS#11 calls served, by function and return value."
        );
        let _ = writeln!(out, "# TYPE pkcs11_proxy_calls_total counter");
        let mut names: Vec<_> = self.functions.keys().collect();
        names.sort_unstable();
        for name in &names {
            let mut rvs: Vec<_> = self.functions[*name].by_rv.iter().collect();
            rvs.sort();
            for (rv, n) in rvs {
                let _ = writeln!(
                    out,
                    "pkcs11_proxy_calls_total{{function=\"{name}\",rv=\"{}\"}} {n}",
                    crate::rv::label(*rv as CK_RV)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP pkcs11_proxy_call_duration_seconds Time to serve a call, by function."
        );
        let _ = writeln!(out, "# TYPE pkcs11_proxy_call_duration_seconds histogram");
        for name in &names {
            let f = &self.functions[*name];
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += f.buckets[i];
                let _ = writeln!(out, "pkcs11_proxy_call_duration_seconds_bucket{{function=\"{name}\",le=\"{b}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "pkcs11_proxy_call_duration_seconds_bucket{{function=\"{name}\",le=\"+Inf\"}} {}",
                f.count
            );
            let _ = writeln!(
                out,
                "pkcs11_proxy_call_duration_seconds_sum{{function=\"{name}\"}} {}",
                f.sum
            );
            let _ = writeln!(
                out,
                "pkcs11_proxy_call_duration_seconds_count{{function=\"{name}\"}} {}",
                f.count
            );
        }
        gauge(
            &mut out,
            "pkcs11_proxy_connections",
            "Client connections open.",
            self.connections_open,
        );
        counter(
            &mut out,
            "pkcs11_proxy_connections_total",
            "Client connections accepted.",
            self.connections_total,
        );
        counter(
            &mut out,
            "pkcs11_proxy_connections_refused_total",
            "Connections refused (limit, TLS, uid, handshake).",
            self.connections_refused + router.connections_refused.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pkcs11_proxy_received_bytes_total",
            "Bytes of frames received from clients.",
            self.bytes_received,
        );
        counter(
            &mut out,
            "pkcs11_proxy_sent_bytes_total",
            "Bytes of frames sent to clients.",
            self.bytes_sent,
        );
        counter(
            &mut out,
            "pkcs11_proxy_backend_errors_total",
            "Calls the vendor library answered with a device or general error.",
            self.backend_errors,
        );
        gauge(
            &mut out,
            "pkcs11_proxy_applications",
            "Applications (shim instances) served.",
            self.applications as i64,
        );
        gauge(
            &mut out,
            "pkcs11_proxy_workers",
            "Worker processes running (the readiness probe included).",
            workers as i64,
        );
        counter(
            &mut out,
            "pkcs11_proxy_worker_starts_total",
            "Worker processes started.",
            router.worker_starts.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pkcs11_proxy_worker_crashes_total",
            "Worker processes that died of a signal or failed without being asked to stop.",
            router.worker_crashes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pkcs11_proxy_pending_workers_stopped_total",
            "Workers no hello reached, stopped to make room (--max-pending-applications).",
            router.pending_stopped.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pkcs11_proxy_pending_workers_refused_total",
            "New applications refused: more than --max-pending-applications started a second.",
            router.pending_refused.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "pkcs11_proxy_unauthenticated_connections",
            "Data-port connections that have not sent their routing prelude yet.",
            startups.open() as i64,
        );
        counter(
            &mut out,
            "pkcs11_proxy_unauthenticated_refused_total",
            "Data-port connections refused before their prelude (random early drop, or nothing valid sent).",
            startups.refused_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pkcs11_proxy_unauthenticated_dropped_total",
            "Data-port connections dropped before their prelude to make room (--max-startups, --max-startups-per-peer).",
            startups.dropped_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pkcs11_proxy_readiness_checks_total",
            "Readiness checks that reached the vendor library (/readyz answers from the last one for a second).",
            router.readiness_checks.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP pkcs11_proxy_sessions Sessions open, by application.\n# TYPE pkcs11_proxy_sessions gauge");
        for (app, sessions) in &self.sessions {
            let _ = writeln!(out, "pkcs11_proxy_sessions{{client=\"{app}\"}} {sessions}");
        }
        out
    }
}
