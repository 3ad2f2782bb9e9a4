//! Observability: Prometheus text on `/metrics`, liveness on `/healthz`, readiness on
//! `/readyz` (the vendor library answers C_GetTokenInfo for at least one slot), served by a
//! small HTTP/1.1 responder on `--metrics-listen`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cryptoki_sys::*;
use parking_lot::Mutex;

use crate::server::Server;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Per-function call statistics.
#[derive(Default)]
struct FunctionStats {
    by_rv: HashMap<CK_RV, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters and gauges of the server.
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
        *f.by_rv.entry(rv).or_default() += 1;
        f.count += 1;
        f.sum += secs;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            f.buckets[i] += 1;
        }
    }

    /// The Prometheus text exposition (version 0.0.4).
    fn render(&self, server: &Server) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP pkcs11_proxy_calls_total PKCS#11 calls served, by function and return value."
        );
        let _ = writeln!(out, "# TYPE pkcs11_proxy_calls_total counter");
        let all = self.functions.lock();
        let mut names: Vec<_> = all.keys().copied().collect();
        names.sort_unstable();
        for name in &names {
            let mut rvs: Vec<_> = all[name].by_rv.iter().collect();
            rvs.sort();
            for (rv, n) in rvs {
                let _ = writeln!(
                    out,
                    "pkcs11_proxy_calls_total{{function=\"{name}\",rv=\"{}\"}} {n}",
                    crate::rv::label(*rv)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP pkcs11_proxy_call_duration_seconds Time to serve a call, by function."
        );
        let _ = writeln!(out, "# TYPE pkcs11_proxy_call_duration_seconds histogram");
        for name in &names {
            let f = &all[name];
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
        drop(all);
        let _ = writeln!(out, "# HELP pkcs11_proxy_connections Client connections open.\n# TYPE pkcs11_proxy_connections gauge");
        let _ = writeln!(
            out,
            "pkcs11_proxy_connections {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "pkcs11_proxy_connections_total",
            "Client connections accepted.",
            self.connections_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pkcs11_proxy_connections_refused_total",
            "Connections refused (limit, TLS, uid, handshake).",
            self.connections_refused.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pkcs11_proxy_received_bytes_total",
            "Bytes of frames received from clients.",
            self.bytes_received.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pkcs11_proxy_sent_bytes_total",
            "Bytes of frames sent to clients.",
            self.bytes_sent.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pkcs11_proxy_backend_errors_total",
            "Calls the vendor library answered with a device or general error.",
            self.backend_errors.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP pkcs11_proxy_applications Applications (shim instances) connected.\n# TYPE pkcs11_proxy_applications gauge");
        let _ = writeln!(
            out,
            "pkcs11_proxy_applications {}",
            server.shared.registry.app_count()
        );
        let _ = writeln!(out, "# HELP pkcs11_proxy_sessions Sessions open, by application.\n# TYPE pkcs11_proxy_sessions gauge");
        for (app, sessions) in server.shared.registry.session_counts() {
            let _ = writeln!(out, "pkcs11_proxy_sessions{{client=\"{app}\"}} {sessions}");
        }
        out
    }
}

/// Whether the vendor library answers C_GetTokenInfo for at least one slot with a token.
fn ready(server: &Server) -> bool {
    let b = &server.shared.backend;
    let (rv, _, slots) = b.slot_list(true, Some(64));
    rv == CKR_OK
        && slots
            .iter()
            .any(|s| b.get_token_info(*s, &mut CK_TOKEN_INFO::default()) == CKR_OK)
}

fn respond(server: &Server, mut c: TcpStream) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/metrics" => ("200 OK", server.shared.metrics.render(server)),
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/readyz" if ready(server) => ("200 OK", "ready\n".to_string()),
        "/readyz" => (
            "503 Service Unavailable",
            "vendor library not ready\n".to_string(),
        ),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Starts the metrics responder on `addr`; returns the address bound.
pub fn serve(server: Arc<Server>, addr: SocketAddr) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("p11-metrics".into())
        .spawn(move || {
            for c in listener.incoming().flatten() {
                respond(&server, c);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(local)
}
