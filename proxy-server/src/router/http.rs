//! `/metrics` (Prometheus text: the sum of every worker's report and the router's own
//! counters), `/healthz` (the router answers) and `/readyz` (the probe worker checks that the
//! vendor library answers C_GetTokenInfo for a slot; the answer is kept for a second, so a
//! storm of probes costs the vendor library one call a second at most), served on
//! `--metrics-listen` by a small HTTP/1.1 responder.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Router;

/// How long a readiness answer is reused.
const READY_CACHE: Duration = Duration::from_secs(1);

fn respond(router: &Router, ready_cache: &Mutex<Option<(Instant, bool)>>, mut c: TcpStream) {
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
        "/metrics" => {
            let (total, workers) = router.workers.snapshot();
            ("200 OK", total.render(&router.workers.counters, workers))
        }
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/readyz" => {
            let mut cache = ready_cache.lock();
            let ready = match *cache {
                Some((at, ready)) if at.elapsed() < READY_CACHE => ready,
                _ => {
                    let ready = router.workers.ready();
                    *cache = Some((Instant::now(), ready));
                    ready
                }
            };
            if ready {
                ("200 OK", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "vendor library not ready\n".to_string(),
                )
            }
        }
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Starts the responder on `addr`; returns the address bound.
pub fn serve(router: Arc<Router>, addr: SocketAddr) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("p11-metrics".into())
        .spawn(move || {
            let cache = Mutex::new(None);
            for c in listener.incoming().flatten() {
                respond(&router, &cache, c);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(local)
}
