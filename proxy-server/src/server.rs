//! The running server: listeners, live connections, and the orderly stop.

use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use protocol::stream::Stream;

use crate::connection::Shared;
use crate::listener::{Accepted, Access, Incoming, Listener};

/// How long a stop waits for calls in flight before closing sessions anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Server {
    pub shared: Shared,
    pub listeners: Vec<Listener>,
    pub access: Access,
    stopping: AtomicBool,
    next_conn: AtomicU64,
    connections: Mutex<HashMap<u64, Stream>>,
    drained: Condvar,
}

impl Server {
    pub fn new(shared: Shared, listeners: Vec<Listener>, access: Access) -> Self {
        Self {
            shared,
            listeners,
            access,
            stopping: AtomicBool::new(false),
            next_conn: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
            drained: Condvar::new(),
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Records a live connection so a stop can wake it; `None` if it cannot be tracked or
    /// `--max-connections` are open already (the connection is then closed).
    pub fn track(&self, accepted: &Accepted) -> Option<u64> {
        let open = self.connections.lock().len();
        if open >= self.shared.limits.max_connections {
            self.shared
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %accepted.peer, open, "connection refused: --max-connections reached");
            return None;
        }
        let clone = match &accepted.incoming {
            Incoming::Plain(s) => s.try_clone(),
            Incoming::Tls(_, tcp) => tcp.try_clone().map(Stream::Tcp),
        };
        let clone = clone
            .map_err(|e| tracing::warn!(error = %e, "cannot track connection"))
            .ok()?;
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.connections.lock().insert(id, clone);
        Some(id)
    }

    pub fn untrack(&self, id: u64) {
        let mut conns = self.connections.lock();
        conns.remove(&id);
        if conns.is_empty() {
            self.drained.notify_all();
        }
    }

    /// Closes the sessions of applications that did not come back within the resume grace
    /// period; runs until the server stops.
    pub fn reap_departed(&self) {
        let grace = self.shared.limits.resume_grace;
        let tick = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        while !self.is_stopping() {
            std::thread::sleep(tick);
            for app in self.shared.registry.reap(grace) {
                self.shared.application_gone(&app);
            }
        }
    }

    /// Reloads the TLS material of every TLS listener (SIGHUP), logging the outcome.
    pub fn reload(&self) {
        for l in &self.listeners {
            match l.reload() {
                Some(Ok(())) => {
                    tracing::info!(listener = %l.local_address(), "TLS certificate, key and client CA reloaded")
                }
                Some(Err(e)) => {
                    tracing::error!(listener = %l.local_address(), error = %e, "TLS reload failed; keeping the previous material")
                }
                None => {}
            }
        }
    }

    /// Stops accepting, lets calls in flight finish (bounded), closes every client's sessions
    /// and finalises the vendor library.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for l in &self.listeners {
            l.stop();
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut conns = self.connections.lock();
        // Shutting down the read side ends each connection after the call it is serving.
        for s in conns.values() {
            s.shutdown(Shutdown::Read);
        }
        while !conns.is_empty() {
            if self.drained.wait_until(&mut conns, deadline).timed_out() {
                tracing::warn!(
                    connections = conns.len(),
                    "calls still in flight at stop; closing anyway"
                );
                break;
            }
        }
        drop(conns);
        for app in self.shared.registry.drain() {
            self.shared.close_sessions(&app, &app.take_all_sessions());
        }
        let rv = self.shared.backend.finalize();
        tracing::info!(rv = %crate::rv::name(rv), "vendor library finalised; stopped");
    }
}
