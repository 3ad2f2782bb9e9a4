//! The connections of one shim instance to its servers (DESIGN.md, "Shim semantics"): idle
//! ones kept for reuse, new ones opened with instance affinity (a call stays on the server
//! instance the application is on while it lives), the backoff while no server answers, and
//! the interruptible waits C_Finalize ends.
//!
//! Threads call concurrently: each call takes an idle connection (or opens a new one) and
//! parks it when answered, so no lock is held across a round trip. Every connection presents
//! the same client id, so the server sees one application.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex, RwLock};
use protocol::handshake::{ClientId, InitArgs};
use protocol::message::{Request, Response};
use protocol::stream::Stream;

use super::config::Config;
use super::connection::Connection;
use super::journal::{InstanceId, Journal};
use crate::ffi::Rv;
use crate::log::warn;

/// First and longest wait between reconnection attempts while no server answers.
const RECONNECT_FIRST_WAIT: Duration = Duration::from_millis(50);
const RECONNECT_MAX_WAIT: Duration = Duration::from_millis(250);

/// The wait before the next attempt to reach a server, after `previous` (none: the first).
pub fn next_wait(previous: Option<Duration>) -> Duration {
    previous.map_or(RECONNECT_FIRST_WAIT, |w| (w * 2).min(RECONNECT_MAX_WAIT))
}

/// Idle connections kept for reuse; more may be open while busy.
const MAX_IDLE: usize = 64;

/// New connections in a row that reached other instances before the application may move
/// to another (DESIGN.md, "Shim semantics"). Behind a random spread over two live replicas,
/// eight in a row happen once in 256 openings, and only matter when the application holds
/// no connection to its instance at that moment.
const ELSEWHERE_BEFORE_MOVE: usize = 8;

/// Failed connection attempts in a row before the shim waits (backs off): behind a load
/// balancer, a failed one may have reached a dead replica the balancer still sends to.
pub const FAILED_IN_A_ROW: usize = 3;

/// Most attempts for one new connection (each a connect and a prelude, answered before TLS).
const MAX_OPEN_ATTEMPTS: usize = 32;

/// How long a call waits for one of the application's busy connections to its instance while
/// new connections keep reaching others, before it moves.
const AFFINITY_WAIT: Duration = Duration::from_secs(2);

/// The connections of one initialised shim instance.
pub struct Pool {
    config: Config,
    client_id: ClientId,
    /// The shape of the application's C_Initialize arguments, which every hello carries: a
    /// new worker (a restart, a crash) initialises its vendor instance with them.
    init: Option<InitArgs>,
    idle: Mutex<Vec<Connection>>,
    /// Signalled when a connection comes back to `idle`.
    parked: Condvar,
    /// A token per instance, held by each open connection to it: counts them.
    live: Mutex<Vec<(InstanceId, Arc<()>)>>,
    /// The index of the address new connections try first.
    address: AtomicUsize,
    /// When the next connection attempt may be made, and the current wait, after a failure.
    backoff: Mutex<Option<(Instant, Duration)>>,
    /// Streams of the interruptible calls in progress, by a key of their own.
    waits: Mutex<HashMap<u64, Stream>>,
    next_wait: AtomicU64,
}

impl Pool {
    /// A pool holding C_Initialize's first connection.
    pub fn new(
        config: Config,
        client_id: ClientId,
        init: Option<InitArgs>,
        mut first: Connection,
    ) -> Self {
        let token = Arc::new(());
        first.live = Some(token.clone());
        Self {
            config,
            client_id,
            init,
            address: AtomicUsize::new(first.address_index()),
            live: Mutex::new(vec![(first.instance(), token)]),
            idle: Mutex::new(vec![first]),
            parked: Condvar::new(),
            backoff: Mutex::new(None),
            waits: Mutex::new(HashMap::new()),
            next_wait: AtomicU64::new(0),
        }
    }

    /// The configuration the shim read at C_Initialize.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Drops the idle connections `keep` refuses (those to a server that may be stopping, or
    /// one the application left).
    pub fn retain_idle(&self, keep: impl Fn(&Connection) -> bool) {
        self.idle.lock().retain(|c| keep(c));
    }

    /// An idle connection that is still open, if any (the others are dropped).
    fn idle_connection(&self) -> Option<Connection> {
        let mut idle = self.idle.lock();
        while let Some(c) = idle.pop() {
            if !c.is_stale() {
                return Some(c);
            }
        }
        None
    }

    /// A connection to the instance the application is on: an idle one, or a new one.
    ///
    /// Instance affinity (DESIGN.md, "Shim semantics"): behind one address (a Kubernetes
    /// Service, a rolling update with surge, any TCP load balancer) a new connection may
    /// reach another replica. Its prelude names the application's instance, so a server
    /// that does not hold it answers "elsewhere" at once (no worker started) and another
    /// connection is made. The application moves to another instance (one replay) only when
    /// its own is gone: [`ELSEWHERE_BEFORE_MOVE`] new connections in a row reached others,
    /// and it holds no connection to its instance any more (or none came free within
    /// [`AFFINITY_WAIT`]). It never moves to an instance it left: it cannot move back and
    /// forth.
    fn take_connection(&self, journal: &RwLock<Journal>) -> Rv<Connection> {
        if let Some(c) = self.idle_connection() {
            return Ok(c);
        }
        // While the servers are unreachable, calls fail at once instead of each trying every
        // address again: the wait between attempts doubles from 50 ms up to 250 ms.
        if self
            .backoff
            .lock()
            .is_some_and(|(next, _)| Instant::now() < next)
        {
            return Err(CKR_DEVICE_ERROR);
        }
        let (epoch, current) = {
            let j = journal.read();
            (j.epoch(), j.instance())
        };
        // The address that served last is tried first: after a failover the application
        // stays on the server it moved to.
        let first = self.address.load(Ordering::Relaxed);
        let mut elsewhere = 0;
        let mut failed = 0;
        let mut waited = false;
        let mut last = String::new();
        for _ in 0..MAX_OPEN_ATTEMPTS {
            let moving = current == [0; 16]
                || (elsewhere >= ELSEWHERE_BEFORE_MOVE && (waited || self.live_on(current) == 0));
            let target = if moving { [0; 16] } else { current };
            let opened = Connection::open(&self.config, &self.client_id, self.init, first, target)
                .and_then(|c| match c.init_rv() {
                    0 => Ok(c),
                    rv => Err(format!(
                        "the vendor library refused C_Initialize on a new worker ({rv:#x})"
                    )
                    .into()),
                });
            match opened {
                Ok(c) if moving && journal.read().has_left(&c.instance()) => {
                    // An instance the application left, still alive on another replica.
                    last = "reached an instance this application left".into();
                    elsewhere += 1;
                }
                Ok(mut c) => {
                    *self.backoff.lock() = None;
                    c.journal_epoch = epoch;
                    c.live = Some(self.token(c.instance()));
                    self.address.store(c.address_index(), Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) if e.elsewhere && !moving => {
                    last = e.reason;
                    elsewhere += 1;
                    failed = 0;
                    if elsewhere >= ELSEWHERE_BEFORE_MOVE && !waited {
                        if let Some(c) = self.wait_for_idle(current) {
                            return Ok(c);
                        }
                        waited = true;
                    }
                }
                Err(e) => {
                    // Behind a load balancer the next connection may reach a live replica
                    // (this one may be a dead one the balancer still sends to).
                    last = e.reason;
                    failed += 1;
                    if failed >= FAILED_IN_A_ROW || self.config.addresses.len() > 1 {
                        break;
                    }
                }
            }
        }
        let mut backoff = self.backoff.lock();
        let wait = next_wait(backoff.map(|(_, w)| w));
        *backoff = Some((Instant::now() + wait, wait));
        warn(&format!(
            "cannot reach the proxy server (next attempt in {} ms): {last}",
            wait.as_millis()
        ));
        Err(CKR_DEVICE_ERROR)
    }

    /// While new connections reach other instances: one of the application's connections to
    /// its own, once another thread is done with it, if any is still open; `None` when none
    /// is left (the instance is gone) or none came free within [`AFFINITY_WAIT`].
    fn wait_for_idle(&self, instance: InstanceId) -> Option<Connection> {
        let deadline = Instant::now() + AFFINITY_WAIT;
        let mut idle = self.idle.lock();
        loop {
            while let Some(c) = idle.pop() {
                if !c.is_stale() {
                    return Some(c);
                }
            }
            if self.live_on(instance) == 0 || Instant::now() >= deadline {
                return None;
            }
            // Woken by a connection coming back; the count is read again now and then, as
            // busy connections that fail are dropped without a word.
            self.parked.wait_for(&mut idle, Duration::from_millis(10));
        }
    }

    /// The token every open connection to `instance` holds.
    fn token(&self, instance: InstanceId) -> Arc<()> {
        let mut tokens = self.live.lock();
        tokens.retain(|(i, t)| Arc::strong_count(t) > 1 || *i == instance);
        if let Some((_, t)) = tokens.iter().find(|(i, _)| *i == instance) {
            return t.clone();
        }
        let t = Arc::new(());
        tokens.push((instance, t.clone()));
        t
    }

    /// How many connections to `instance` are open (idle or in a call).
    fn live_on(&self, instance: InstanceId) -> usize {
        self.live
            .lock()
            .iter()
            .find(|(i, _)| *i == instance)
            .map_or(0, |(_, t)| Arc::strong_count(t) - 1)
    }

    /// A connection; with `wait`, keeps trying for the reconnect window while no server
    /// answers (a restart, a failover), then answers CKR_DEVICE_ERROR.
    pub fn connection(&self, wait: bool, journal: &RwLock<Journal>) -> Rv<Connection> {
        let deadline = Instant::now() + self.config.reconnect_window;
        loop {
            match self.take_connection(journal) {
                Ok(c) => return Ok(c),
                Err(rv) => {
                    let now = Instant::now();
                    if !wait || now >= deadline {
                        return Err(rv);
                    }
                    let next = self
                        .backoff
                        .lock()
                        .map_or(now + RECONNECT_FIRST_WAIT, |(next, _)| next);
                    let pause = next.min(deadline).saturating_duration_since(now);
                    std::thread::sleep(pause.max(Duration::from_millis(5)));
                }
            }
        }
    }

    /// Keeps a connection that answered for reuse.
    pub fn park(&self, conn: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
            self.parked.notify_one();
        }
    }

    /// A round trip that C_Finalize may interrupt: the blocking C_WaitForSlotEvent (v2.40
    /// §5.5.4: a C_Finalize during the wait makes it return CKR_CRYPTOKI_NOT_INITIALIZED). It
    /// has a connection of its own, so it never holds up other calls.
    pub fn call_interruptible(&self, request: Request, journal: &RwLock<Journal>) -> Rv<Response> {
        let conn = self.take_connection(journal)?;
        let key = self.next_wait.fetch_add(1, Ordering::Relaxed);
        if let Ok(handle) = conn.stream_handle() {
            self.waits.lock().insert(key, handle);
        }
        let r = self.call_on(conn, &request);
        self.waits.lock().remove(&key);
        r
    }

    /// Sends C_Finalize's request on an idle connection, waiting at most two seconds; nothing
    /// if no connection is idle (the server then closes the sessions after its grace period).
    pub fn say_goodbye(&self) {
        let Some(mut conn) = self.idle.try_lock().and_then(|mut idle| idle.pop()) else {
            return;
        };
        if conn.is_stale() || conn.set_timeouts(Duration::from_secs(2)).is_err() {
            return;
        }
        let _ = conn.call(&Request::Finalize {});
    }

    /// Ends every interruptible wait in progress (at C_Finalize).
    pub fn interrupt_waits(&self) {
        for (_, stream) in self.waits.lock().drain() {
            stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn call_on(&self, mut conn: Connection, request: &Request) -> Rv<Response> {
        match conn.call(request) {
            Ok(r) => {
                self.park(conn);
                Ok(r)
            }
            Err(e) => {
                warn(&format!("{}: {e}", request.descriptor().name));
                Err(CKR_DEVICE_ERROR)
            }
        }
    }
}
