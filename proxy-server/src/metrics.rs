//! Counters: each worker keeps its own [`Metrics`] and reports a [`Snapshot`] to the router,
//! which adds them up with its own [`RouterCounters`] and renders the OpenMetrics text
//! exposition on `/metrics` (served by `router::http`) with the Prometheus client library
//! (`prometheus-client`): names, escaping and number formats are the library's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use cryptoki_sys::*;
use parking_lot::Mutex;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
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

/// Most keys counted apart for one identity; the others count as `other` (bounded label
/// cardinality whatever the token holds).
const MAX_KEYS: usize = 32;

/// One identity's calls (`--policy`), summed over its applications.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct IdentityStats {
    calls: u64,
    refusals: u64,
    /// Signatures begun (C_SignInit answered CKR_OK), by the key's CKA_ID (hex).
    signatures: HashMap<String, u64>,
}

impl IdentityStats {
    fn add(&mut self, other: IdentityStats) {
        self.calls += other.calls;
        self.refusals += other.refusals;
        for (key, n) in other.signatures {
            let key = if self.signatures.len() >= MAX_KEYS && !self.signatures.contains_key(&key) {
                "other".to_string()
            } else {
                key
            };
            *self.signatures.entry(key).or_default() += n;
        }
    }
}

/// Counters and gauges of one worker.
#[derive(Default)]
pub struct Metrics {
    functions: Mutex<HashMap<&'static str, FunctionStats>>,
    identities: Mutex<HashMap<String, IdentityStats>>,
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
    /// Calls by identity of the policy.
    pub identities: HashMap<String, IdentityStats>,
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
    /// Connections whose prelude named an instance this server does not hold (another
    /// replica's application), or that came while it was stopping: sent elsewhere.
    pub connections_elsewhere: AtomicU64,
    /// Readiness checks that reached the vendor library (the others were answered from the
    /// last one).
    pub readiness_checks: AtomicU64,
    /// Vendor instances replaced as broken, by reason ([`BROKEN_BY`], `--heal`).
    pub reinitialisations: [AtomicU64; 5],
    /// Vendor calls abandoned at their deadline, by deadline ([`ABANDONED_AT`]).
    pub abandoned: [AtomicU64; 2],
    /// Lines the audit log wrote, and events it dropped (`crate::audit::log`).
    pub audit_written: std::sync::Arc<AtomicU64>,
    pub audit_dropped: std::sync::Arc<AtomicU64>,
}

/// Why vendor instances were replaced (`--heal`), as metrics label them, in the order of
/// `control::BrokenBy`.
pub const BROKEN_BY: [&str; 5] = [
    "device_error",
    "device_removed",
    "token_not_present",
    "not_initialized",
    "hung_call",
];

/// Which deadline abandoned calls outlived, as metrics label them.
pub const ABANDONED_AT: [&str; 2] = ["call_deadline", "slow_call_deadline"];

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
    /// A call of an application of `identity`: refused by the policy, or (`signed`) a
    /// signature begun with the key of that CKA_ID.
    pub fn identity_call(&self, identity: &str, refused: bool, signed: Option<String>) {
        let mut all = self.identities.lock();
        let stats = match all.get_mut(identity) {
            Some(s) => s,
            None => all.entry(identity.to_string()).or_default(),
        };
        let mut one = IdentityStats {
            calls: 1,
            refusals: u64::from(refused),
            signatures: HashMap::new(),
        };
        if let Some(key) = signed {
            one.signatures.insert(key, 1);
        }
        stats.add(one);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            identities: self.identities.lock().clone(),
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
        for (name, stats) in other.identities {
            self.identities.entry(name).or_default().add(stats);
        }
    }

    /// The OpenMetrics text exposition of the sum over workers and the router's counters
    /// (`workers`: the number of workers running; `startups`: the data port's budget before
    /// the prelude), encoded by the Prometheus client library.
    pub fn render(
        &self,
        router: &RouterCounters,
        workers: usize,
        startups: &crate::startups::Startups,
        tokens: &[Reach],
    ) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let scalars = vec![
            Scalar::gauge("pkcs11_proxy_connections_open", "Client connections open (since their hello).", self.connections_open),
            Scalar::counter("pkcs11_proxy_connections", "Client connections accepted (their hello done).", self.connections_total),
            Scalar::counter("pkcs11_proxy_connections_refused", "Connections refused (limit, TLS, uid, handshake).", self.connections_refused + load(&router.connections_refused)),
            Scalar::counter("pkcs11_proxy_received_bytes", "Bytes of frames received from clients.", self.bytes_received),
            Scalar::counter("pkcs11_proxy_sent_bytes", "Bytes of frames sent to clients.", self.bytes_sent),
            Scalar::counter("pkcs11_proxy_backend_errors", "Calls the vendor library answered with a device or general error.", self.backend_errors),
            Scalar::gauge("pkcs11_proxy_applications", "Applications (shim instances) served.", self.applications as i64),
            Scalar::gauge("pkcs11_proxy_workers", "Worker processes running (the readiness probe included).", workers as i64),
            Scalar::counter("pkcs11_proxy_worker_starts", "Worker processes started.", load(&router.worker_starts)),
            Scalar::counter("pkcs11_proxy_worker_crashes", "Worker processes that died of a signal or failed without being asked to stop.", load(&router.worker_crashes)),
            Scalar::counter("pkcs11_proxy_pending_workers_stopped", "Workers no hello reached, stopped to make room (--max-pending-applications).", load(&router.pending_stopped)),
            Scalar::counter("pkcs11_proxy_connections_elsewhere", "Connections whose application is on another server instance (another replica behind the same address) or that came while stopping: answered elsewhere, no worker started.", load(&router.connections_elsewhere)),
            Scalar::counter("pkcs11_proxy_pending_workers_refused", "New applications refused: more than --max-pending-applications started a second.", load(&router.pending_refused)),
            Scalar::gauge("pkcs11_proxy_unauthenticated_connections", "Data-port connections that have not sent their routing prelude yet.", startups.open() as i64),
            Scalar::counter("pkcs11_proxy_unauthenticated_refused", "Data-port connections refused before their prelude (a new one of an address over its share that has sent nothing yet, random early drop, or nothing valid sent).", load(&startups.refused_total)),
            Scalar::counter("pkcs11_proxy_unauthenticated_dropped", "Data-port connections dropped before their prelude to make room (for a new one of the same address that talks, or --max-startups full).", load(&startups.dropped_total)),
            Scalar::counter("pkcs11_proxy_audit_lines", "Lines written to the audit log (--audit-log).", load(&router.audit_written)),
            Scalar::counter("pkcs11_proxy_audit_dropped", "Audit events dropped because the audit log's queue was full (a `gap` record in the log counts them too).", load(&router.audit_dropped)),
            Scalar::counter("pkcs11_proxy_readiness_checks", "Readiness checks that reached the vendor library (/readyz answers from the last one for a second).", load(&router.readiness_checks)),
        ];
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Exposition {
            functions: self.functions.clone(),
            sessions: self.sessions.clone(),
            identities: self.identities.clone(),
            by_reason: vec![
                ByReason {
                    name: "pkcs11_proxy_vendor_reinitialisations",
                    help: "Vendor instances replaced because the HSM broke them (--heal), by reason.",
                    counts: BROKEN_BY.iter().zip(&router.reinitialisations).map(|(label, n)| (*label, load(n))).collect(),
                },
                ByReason {
                    name: "pkcs11_proxy_abandoned_calls",
                    help: "Vendor calls abandoned at their deadline (--call-deadline, --slow-call-deadline): the caller got CKR_DEVICE_ERROR, the instance was replaced.",
                    counts: ABANDONED_AT.iter().zip(&router.abandoned).map(|(label, n)| (*label, load(n))).collect(),
                },
            ],
            scalars,
            tokens: tokens.to_vec(),
        }));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            tracing::error!("cannot encode the metrics");
        }
        out
    }
}

/// What the readiness probe saw of the vendor library.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Probed {
    /// C_GetTokenInfo answered for a slot with a token (`/readyz`).
    pub ready: bool,
    /// Every initialised token the probe has seen, and whether it answers now.
    pub tokens: Vec<Reach>,
}

/// Whether one token answers (the gauge `pkcs11_proxy_hsm_reachable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    pub slot: u64,
    /// Its label, as it last answered.
    pub token: String,
    pub answers: bool,
}

/// One counter or gauge without labels.
#[derive(Debug)]
struct Scalar {
    /// For a counter, without the `_total` the encoder adds.
    name: &'static str,
    help: &'static str,
    value: Value,
}

#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(i64),
}

impl Scalar {
    fn counter(name: &'static str, help: &'static str, v: u64) -> Self {
        Self {
            name,
            help,
            value: Value::Counter(v),
        }
    }

    fn gauge(name: &'static str, help: &'static str, v: i64) -> Self {
        Self {
            name,
            help,
            value: Value::Gauge(v),
        }
    }
}

/// One scrape's values, encoded by the Prometheus client library.
#[derive(Debug)]
struct Exposition {
    functions: HashMap<String, FunctionStats>,
    sessions: Vec<(String, u64)>,
    identities: HashMap<String, IdentityStats>,
    by_reason: Vec<ByReason>,
    scalars: Vec<Scalar>,
    /// Whether each token answers, as the readiness probe saw it.
    tokens: Vec<Reach>,
}

/// A counter with a `reason` label.
#[derive(Debug)]
struct ByReason {
    name: &'static str,
    help: &'static str,
    counts: Vec<(&'static str, u64)>,
}

impl prometheus_client::collector::Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut names: Vec<&String> = self.functions.keys().collect();
        names.sort_unstable();
        let mut calls = encoder.encode_descriptor(
            "pkcs11_proxy_calls",
            "PKCS#11 calls served, by function and return value.",
            None,
            MetricType::Counter,
        )?;
        for name in &names {
            let mut rvs: Vec<_> = self.functions[*name].by_rv.iter().collect();
            rvs.sort();
            for (rv, n) in rvs {
                let rv = crate::rv::label(*rv as CK_RV);
                let labels = [("function", name.as_str()), ("rv", rv.as_str())];
                calls
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        let mut durations = encoder.encode_descriptor(
            "pkcs11_proxy_call_duration_seconds",
            "Time to serve a call, by function.",
            None,
            MetricType::Histogram,
        )?;
        for name in &names {
            let f = &self.functions[*name];
            let mut buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .copied()
                .zip(f.buckets.iter().copied())
                .collect();
            let inside: u64 = f.buckets.iter().sum();
            buckets.push((f64::MAX, f.count.saturating_sub(inside)));
            durations
                .encode_family(&[("function", name.as_str())])?
                .encode_histogram::<NoLabelSet>(f.sum, f.count, &buckets, None)?;
        }
        for s in &self.scalars {
            match s.value {
                Value::Counter(v) => encoder
                    .encode_descriptor(s.name, s.help, None, MetricType::Counter)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?,
                Value::Gauge(v) => encoder
                    .encode_descriptor(s.name, s.help, None, MetricType::Gauge)?
                    .encode_gauge(&v)?,
            }
        }
        let mut reachable = encoder.encode_descriptor(
            "pkcs11_proxy_hsm_reachable",
            "Whether the token answers C_GetTokenInfo (1) or not (0), from the readiness probe's own vendor instance, by slot and label; refreshed at most once a second by /readyz or a scrape.",
            None,
            MetricType::Gauge,
        )?;
        for t in &self.tokens {
            let slot = t.slot.to_string();
            reachable
                .encode_family(&[("slot", slot.as_str()), ("token", t.token.as_str())])?
                .encode_gauge(&(t.answers as i64))?;
        }
        for family in &self.by_reason {
            let mut counter =
                encoder.encode_descriptor(family.name, family.help, None, MetricType::Counter)?;
            for (reason, n) in &family.counts {
                counter
                    .encode_family(&[("reason", *reason)])?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        let mut names: Vec<&String> = self.identities.keys().collect();
        names.sort_unstable();
        for (family, help) in [
            (
                "pkcs11_proxy_identity_calls",
                "PKCS#11 calls by identity of the policy (--policy).",
            ),
            (
                "pkcs11_proxy_identity_refusals",
                "Calls the policy refused, by identity.",
            ),
        ] {
            let mut counter = encoder.encode_descriptor(family, help, None, MetricType::Counter)?;
            for name in &names {
                let s = &self.identities[*name];
                let n = if family.ends_with("calls") {
                    s.calls
                } else {
                    s.refusals
                };
                counter
                    .encode_family(&[("identity", name.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let mut signatures = encoder.encode_descriptor(
            "pkcs11_proxy_identity_signatures",
            "Signatures begun (C_SignInit answered CKR_OK), by identity and key (its CKA_ID in hex; past 32 keys of one identity, `other`).",
            None,
            MetricType::Counter,
        )?;
        for name in &names {
            let mut keys: Vec<_> = self.identities[*name].signatures.iter().collect();
            keys.sort();
            for (key, n) in keys {
                signatures
                    .encode_family(&[("identity", name.as_str()), ("key", key.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        let mut sessions = encoder.encode_descriptor(
            "pkcs11_proxy_sessions",
            "Sessions open, by application.",
            None,
            MetricType::Gauge,
        )?;
        for (app, n) in &self.sessions {
            sessions
                .encode_family(&[("client", app.as_str())])?
                .encode_gauge(&(*n as i64))?;
        }
        Ok(())
    }
}
