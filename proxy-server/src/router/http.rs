//! `/metrics` (OpenMetrics text, encoded by `prometheus-client`: the sum of every worker's
//! report and the router's own counters), `/healthz` (the router answers) and `/readyz` (the probe worker checks that the
//! vendor library answers C_GetTokenInfo for a slot), served on `--metrics-listen`.
//!
//! Each connection is served on a thread of its own, so a probe never waits behind a scrape or
//! a slow client, and within a budget of its own (`crate::startups`: at most
//! [`MAX_CONNECTIONS`], the oldest dropped to make room): a request is read within
//! [`READ_TIMEOUT`] and [`MAX_REQUEST`] bytes and parsed by `httparse` (anything else is a
//! 400), an answer written within [`WRITE_TIMEOUT`].
//! A readiness answer is kept for [`READY_CACHE`], and while one probe asks the vendor the
//! others answer from the last check: a storm of probes costs the vendor one call a second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::state::Router;
use crate::metrics::Probed;
use crate::startups::{Limits, Startups};

/// How long a readiness answer is reused.
const READY_CACHE: Duration = Duration::from_secs(1);
/// Connections open at once; the oldest is dropped to make room for a new one.
const MAX_CONNECTIONS: usize = 128;
/// Time to send the request, and to take the answer.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of a request (line and headers).
const MAX_REQUEST: usize = 8192;
/// Stack of a responder thread.
const STACK: usize = 256 * 1024;
/// Content types of the answers.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The last readiness answer, and whether a probe is asking the vendor now.
#[derive(Default)]
struct Readiness {
    last: Option<(Instant, Probed)>,
    checking: bool,
}

struct Responder {
    router: Arc<Router>,
    readiness: Mutex<Readiness>,
    /// Held by the probe asking the vendor.
    check: Mutex<()>,
    budget: Arc<Startups>,
}

impl Responder {
    /// The last readiness answer while it is fresh, or while another probe is asking the
    /// vendor; else this probe asks (one at a time). A scrape of `/metrics` asks too, for the
    /// gauge of the tokens that answer.
    fn probe(&self) -> Probed {
        let fresh = |r: &Readiness| r.last.clone().filter(|(at, _)| at.elapsed() < READY_CACHE);
        {
            let r = self.readiness.lock();
            if let Some((_, probed)) = fresh(&r) {
                return probed;
            }
            if let (Some((_, probed)), true) = (&r.last, r.checking) {
                return probed.clone();
            }
        }
        let _one = self.check.lock();
        {
            let mut r = self.readiness.lock();
            if let Some((_, probed)) = fresh(&r) {
                return probed;
            }
            r.checking = true;
        }
        let counters = &self.router.workers.counters;
        counters
            .readiness_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probed = self.router.workers.probe();
        let mut r = self.readiness.lock();
        r.last = Some((Instant::now(), probed.clone()));
        r.checking = false;
        probed
    }

    fn respond(&self, mut c: TcpStream) {
        let deadline = Instant::now() + READ_TIMEOUT;
        let _ = c.set_write_timeout(Some(WRITE_TIMEOUT));
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        // The request line and headers, parsed by httparse as they arrive.
        let path = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(&request) {
                Ok(httparse::Status::Complete(_)) => break parsed.path.unwrap_or("").to_string(),
                Ok(httparse::Status::Partial) if request.len() < MAX_REQUEST => {}
                _ => {
                    self.answer(&mut c, "400 Bad Request", TEXT, "bad request\n");
                    return;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || c.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        };
        match path.as_str() {
            "/metrics" => {
                let router = &self.router;
                let tokens = self.probe().tokens;
                let (total, workers) = router.workers.snapshot();
                let body =
                    total.render(&router.workers.counters, workers, &router.startups, &tokens);
                self.answer(&mut c, "200 OK", OPENMETRICS, &body);
            }
            "/healthz" => self.answer(&mut c, "200 OK", TEXT, "ok\n"),
            "/readyz" if self.probe().ready => self.answer(&mut c, "200 OK", TEXT, "ready\n"),
            "/readyz" => self.answer(
                &mut c,
                "503 Service Unavailable",
                TEXT,
                "vendor library not ready\n",
            ),
            _ => self.answer(&mut c, "404 Not Found", TEXT, "not found\n"),
        }
    }

    fn answer(&self, c: &mut TcpStream, status: &str, content_type: &str, body: &str) {
        let _ = write!(
            c,
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// Starts the responder on `addr`; returns the address bound.
pub fn serve(router: Arc<Router>, addr: SocketAddr) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let responder = Arc::new(Responder {
        router,
        readiness: Mutex::new(Readiness::default()),
        check: Mutex::new(()),
        // No random early drop and no per-address share here: a probe must get in, from
        // whatever address; the oldest connection goes.
        budget: Startups::new(
            Limits {
                start: MAX_CONNECTIONS,
                rate: 100,
                full: MAX_CONNECTIONS,
                per_peer: usize::MAX,
            },
            "HTTP request",
        ),
    });
    std::thread::Builder::new()
        .name("p11-metrics".into())
        .spawn(move || {
            for c in listener.incoming().flatten() {
                let peer = c.peer_addr().ok().map(|a| a.ip());
                let Some(ticket) = responder.budget.admit(peer, c.as_fd()) else {
                    continue;
                };
                let r = responder.clone();
                let _ = std::thread::Builder::new()
                    .name("p11-http".into())
                    .stack_size(STACK)
                    .spawn(move || {
                        let _ticket = ticket;
                        r.respond(c);
                    });
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(local)
}
