//! The shim's client side: the configuration, the connections to the server, the
//! application's C_Initialize state, and its recovery across server restarts (DESIGN.md,
//! "Recovery model"): `journal` holds the shim's handles and what it records, `recovery`
//! replays it on a new server.
//!
//! Threads call concurrently: each call takes an idle connection from the pool (or opens a new
//! one), so no lock is held across a round trip (the journal's write lock is held across the
//! round trips of a replay only, so that no thread uses half-restored handles). All
//! connections of one shim instance present the same client id, so the server sees one
//! application (DESIGN.md, "Shim semantics").

mod ahead;
pub mod config;
mod connection;
mod handles;
mod journal;
mod recovery;
mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex, RwLock};
use protocol::function::OpKind;
use protocol::handshake::{ClientId, InitArgs};
use protocol::message::{Request, Response};
use protocol::stream::Stream;

use self::ahead::Served;
use self::config::Config;
use self::connection::Connection;
use self::journal::{InstanceId, Journal};
use crate::ffi::Rv;
use crate::log::{self, warn};

/// Sends of one request at most: the first, and resends after lost answers.
const MAX_SENDS: usize = 3;

/// First and longest wait between reconnection attempts while no server answers.
const RECONNECT_FIRST_WAIT: Duration = Duration::from_millis(50);
const RECONNECT_MAX_WAIT: Duration = Duration::from_millis(250);

/// Idle connections kept for reuse; more may be open while busy.
const MAX_IDLE: usize = 64;

/// New connections in a row that reached other instances before the application may move
/// to another (DESIGN.md, "Shim semantics"). Behind a random spread over two live replicas,
/// eight in a row happen once in 256 openings, and only matter when the application holds
/// no connection to its instance at that moment.
const ELSEWHERE_BEFORE_MOVE: usize = 8;

/// How many handles C_FindObjectsInit fetches ahead: Fabric asks for one, listing tools for
/// a few at a time.
const SEARCH_AHEAD: u64 = 32;

/// Failed connection attempts in a row before the shim waits (backs off): behind a load
/// balancer, a failed one may have reached a dead replica the balancer still sends to.
const FAILED_IN_A_ROW: usize = 3;

/// Most attempts for one new connection (each a connect and a prelude, answered before TLS).
const MAX_OPEN_ATTEMPTS: usize = 32;

/// How long a call waits for one of the application's busy connections to its instance while
/// new connections keep reaching others, before it moves.
const AFFINITY_WAIT: Duration = Duration::from_secs(2);

/// One initialised shim instance.
pub struct Client {
    config: Config,
    client_id: ClientId,
    /// The shape of the application's C_Initialize arguments, which every hello carries: a
    /// new worker (a restart, a crash) initialises its vendor instance with them.
    init: Option<InitArgs>,
    /// The version of the vendor library's "PKCS 11" interface, from the first connection.
    vendor_interface: (u8, u8),
    /// The process that called C_Initialize: a forked child must initialise again.
    pid: u32,
    idle: Mutex<Vec<Connection>>,
    /// Signalled when a connection comes back to `idle`.
    parked: Condvar,
    /// A token per instance, held by each open connection to it: counts them.
    live: Mutex<Vec<(InstanceId, Arc<()>)>>,
    /// The application's sessions, objects, logins and operations, with the shim's handles.
    journal: RwLock<Journal>,
    /// The index of the address new connections try first.
    address: AtomicUsize,
    /// The mechanism of each session's message-based operation, which fixes the layout of
    /// the per-message parameters (v3.0 §5.9).
    message_mechanisms: Mutex<HashMap<(CK_SESSION_HANDLE, OpKind), CK_MECHANISM_TYPE>>,
    /// When the next connection attempt may be made, and the current wait, after a failure.
    backoff: Mutex<Option<(Instant, Duration)>>,
    /// Streams of the interruptible calls in progress, by a key of their own.
    waits: Mutex<HashMap<u64, Stream>>,
    next_wait: std::sync::atomic::AtomicU64,
}

/// The instance, present between C_Initialize and C_Finalize.
static CLIENT: RwLock<Option<Arc<Client>>> = RwLock::new(None);

impl Client {
    /// Remembers (or, with `None`, forgets) the mechanism of a message-based operation.
    pub fn set_message_mechanism(
        &self,
        session: CK_SESSION_HANDLE,
        op: OpKind,
        mech: Option<CK_MECHANISM_TYPE>,
    ) {
        let mut m = self.message_mechanisms.lock();
        match mech {
            Some(t) => m.insert((session, op), t),
            None => m.remove(&(session, op)),
        };
    }

    /// The mechanism of a session's message-based operation; an unknown one (no Init) reads
    /// the parameter as plain bytes and lets the vendor answer.
    pub fn message_mechanism(&self, session: CK_SESSION_HANDLE, op: OpKind) -> CK_MECHANISM_TYPE {
        self.message_mechanisms
            .lock()
            .get(&(session, op))
            .copied()
            .unwrap_or(CK_UNAVAILABLE_INFORMATION)
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
    fn take_connection(&self) -> Rv<Connection> {
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
            let j = self.journal.read();
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
                Ok(c) if moving && self.journal.read().has_left(&c.instance()) => {
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
        let wait = backoff.map_or(RECONNECT_FIRST_WAIT, |(_, w)| {
            (w * 2).min(RECONNECT_MAX_WAIT)
        });
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
    fn connection(&self, wait: bool) -> Rv<Connection> {
        let deadline = Instant::now() + self.config.reconnect_window;
        loop {
            match self.take_connection() {
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

    /// The answer to a call whose answer was lost and that is not sent again.
    fn lost_answer(&self) -> CK_RV {
        if self.config.recovery {
            CKR_FUNCTION_FAILED
        } else {
            CKR_DEVICE_ERROR
        }
    }

    /// One call, with the shim's handles in the request and in the answer.
    ///
    /// When the connection reaches a new server instance, the journal is replayed there
    /// first (`recovery`). When an answer is lost, the request is sent again only if that
    /// cannot do anything twice: to the same server (resumed) only if it changes nothing at
    /// all; to a new instance (restart, failover) only if it does not change the token (the
    /// first send may have done so before the server went away). Otherwise the call answers
    /// CKR_FUNCTION_FAILED (CKR_DEVICE_ERROR with recovery off). An answer lost a second
    /// time answers CKR_DEVICE_ERROR: the call may be what kills its worker (DESIGN.md,
    /// "Containment"), so it is sent at most twice.
    pub fn call(&self, request: Request) -> Rv<Response> {
        self.call_with(request, true)
    }

    fn call_with(&self, mut request: Request, wait: bool) -> Rv<Response> {
        // The follow-up of a size query the server completed, and the calls of a search it ran
        // ahead, cost no round trip (DESIGN.md, "Two-call functions").
        let mut prefix = Vec::new();
        let session = request.session();
        let ahead = {
            let j = self.journal.read();
            let ahead = j.answers_ahead(session, &request);
            if !ahead {
                self.ask_ahead(&mut request, &j);
            }
            ahead
        };
        if ahead {
            let mut j = self.journal.write();
            if let Some(answer) = j.serve_completed(&request) {
                return Ok(answer);
            }
            if let Some(answer) = j.serve_attributes(&request) {
                return Ok(answer);
            }
            match j.serve_search(&mut request) {
                Some(Served::All(answer)) => return Ok(answer),
                Some(Served::Part(handles)) => prefix = handles,
                None => self.ask_ahead(&mut request, &j),
            }
            // Not served: the vendor gets its operation back first (`prepare`).
        }
        let mut lost_on: Option<InstanceId> = None;
        let mut healed = false;
        let mut refound = false;
        let mut sends = 0;
        let mut lost = 0;
        while sends < MAX_SENDS {
            let mut conn = self.connection(wait)?;
            if let Some(lost) = lost_on {
                let resend = if conn.instance() == lost {
                    request.descriptor().repeatable
                } else {
                    self.config.recovery && !request.descriptor().changes_token
                };
                if !resend {
                    self.park(conn);
                    return Err(self.lost_answer());
                }
            }
            // The request stays in the application's form, with the shim's handles; each send
            // carries a copy with the handles of the server it goes to.
            let sent = match self.prepare(&mut conn, &request) {
                Prepared::Ready(sent) => sent,
                Prepared::Again => continue,
                Prepared::Failed => {
                    sends += 1;
                    continue;
                }
                Prepared::Refused(rv) => {
                    self.park(conn);
                    return Err(rv);
                }
            };
            if matches!(
                request,
                Request::CloseSession { .. } | Request::CloseAllSessions { .. }
            ) {
                self.journal.write().closing(&request);
            }
            sends += 1;
            match conn.call(&sent) {
                Ok(response) => {
                    if !healed && self.session_gone(&mut conn, &request, &sent, &response) {
                        // Reopened: the request is sent again on the new session.
                        healed = true;
                        self.park(conn);
                        continue;
                    }
                    if !refound && self.objects_renumbered(&mut conn, &request, &sent, &response) {
                        // Found again under new numbers: the request is sent again with them.
                        refound = true;
                        self.park(conn);
                        continue;
                    }
                    match self.record(&mut conn, &request, &sent, response) {
                        Some(response) => {
                            self.park(conn);
                            return Ok(ahead::after_prefix(std::mem::take(&mut prefix), response));
                        }
                        // Answered by a server the application has left meanwhile (another
                        // thread moved it to a new instance): its handles mean nothing there.
                        // A creation did happen on the token but cannot be mapped: failed, as
                        // a lost answer. Anything else is sent again to the new server.
                        None if request.descriptor().changes_token => {
                            return Err(self.lost_answer())
                        }
                        None => lost_on = Some(conn.instance()),
                    }
                }
                Err(e) => {
                    warn(&format!("{}: {e}", request.descriptor().name));
                    // A call whose answer is lost twice may be what kills the server's worker
                    // (a vendor library that crashes on it): it is not sent a third time.
                    lost += 1;
                    if lost >= 2 {
                        return Err(CKR_DEVICE_ERROR);
                    }
                    // The other idle connections to that server are suspect too (it may be
                    // stopping): the next attempt opens a new one, which tells whether the
                    // same server is still there.
                    let lost = conn.instance();
                    self.idle.lock().retain(|c| c.instance() != lost);
                    lost_on = Some(lost);
                }
            }
        }
        Err(self.lost_answer())
    }

    /// Asks the server to answer `request`'s follow-ups ahead, where the settings allow: a
    /// size query completed, a search run ahead.
    fn ask_ahead(&self, request: &mut Request, j: &Journal) {
        if self.config.complete_size_queries {
            j.ask_completion(request);
        }
        if self.config.prefetch_searches {
            j.ask_prefetch(request, SEARCH_AHEAD);
        }
    }

    /// Puts the server's handles into `request` for the server `conn` reached: at once on the
    /// usual path (a read lock: threads translate side by side); under the write lock when
    /// the journal must first be replayed on a new server instance, or objects the request
    /// names found again there.
    fn prepare(&self, conn: &mut Connection, request: &Request) -> Prepared {
        let moved = |j: &Journal| uses_handles(request) && j.instance() != conn.instance();
        // Another call on a session whose size query was completed: the vendor gets the
        // operation back first (closing the session needs nothing back).
        let restore = |j: &Journal| match request {
            Request::CloseSession { .. } => None,
            r => r.session().filter(|s| j.vendor_ended_early(*s)),
        };
        {
            let j = self.journal.read();
            if !moved(&j) && j.pending_in(request).is_empty() && restore(&j).is_none() {
                match j.to_server(request) {
                    Ok(s) => return Prepared::Ready(s),
                    // Closing a lost session releases its handle, below.
                    Err(_) if matches!(request, Request::CloseSession { .. }) => {}
                    Err(rv) => return Prepared::Refused(rv),
                }
            }
        }
        let mut j = self.journal.write();
        if moved(&j) {
            if conn.journal_epoch < j.epoch() {
                // Opened before the last switch, to a server the application left.
                return Prepared::Again;
            }
            if recovery::recover(conn, &mut j, self.config.recovery).is_err() {
                return Prepared::Failed;
            }
            let instance = conn.instance();
            self.idle.lock().retain(|c| c.instance() == instance);
        }
        if let Some(session) = restore(&j) {
            if recovery::restore_ended(conn, &mut j, session).is_err() {
                return Prepared::Failed;
            }
        }
        let pending = j.pending_in(request);
        let session = request.session().and_then(|s| j.session_real(s));
        if let (false, Some(session)) = (pending.is_empty(), session) {
            if recovery::find_pending(conn, &mut j, session, pending).is_err() {
                return Prepared::Failed;
            }
        }
        match j.to_server(request) {
            Ok(s) => Prepared::Ready(s),
            Err(rv) => {
                if let Request::CloseSession { session } = request {
                    j.forget_session(*session);
                }
                Prepared::Refused(rv)
            }
        }
    }

    /// Whether the server answered CKR_SESSION_HANDLE_INVALID for a session the application
    /// still holds, on the same server instance (the session outlived the resume grace, or the
    /// vendor library closed it), and the session could be opened again: the call is then
    /// sent again (it did nothing). With recovery off, the answer stands.
    fn session_gone(
        &self,
        conn: &mut Connection,
        request: &Request,
        sent: &Request,
        response: &Response,
    ) -> bool {
        if !self.config.recovery
            || response.rv() != CKR_SESSION_HANDLE_INVALID
            || matches!(request, Request::CloseSession { .. })
        {
            return false;
        }
        let (Some(session), Some(sent)) = (request.session(), sent.session()) else {
            return false;
        };
        let mut j = self.journal.write();
        let still_ours = j
            .session(session)
            .is_some_and(|s| s.real == Some(sent) && !s.closing);
        still_ours
            && j.instance() == conn.instance()
            && recovery::reopen_session(conn, &mut j, session).unwrap_or(false)
    }

    /// Whether the server answered that an object handle is invalid while the object, found
    /// again by its identity, has another handle now on the same server (the vendor library
    /// renumbered it, as SoftHSM2 does for private objects after a logout): the call is then
    /// sent again (it did nothing).
    fn objects_renumbered(
        &self,
        conn: &mut Connection,
        request: &Request,
        sent: &Request,
        response: &Response,
    ) -> bool {
        if !self.config.recovery || !recovery::is_invalid_handle(response.rv()) {
            return false;
        }
        let Some(session) = sent.session() else {
            return false;
        };
        let objects = request.object_handles();
        let mut j = self.journal.write();
        j.instance() == conn.instance()
            && recovery::find_again(conn, &mut j, session, &objects).unwrap_or(false)
    }

    /// Records the answer in the journal and gives it the shim's handles. With recovery on,
    /// each token object handed out for the first time is recorded with its identity, which
    /// the server sent with the answer (or, when another thread got it, is asked for now,
    /// while its server is there to answer). `None` when the journal has moved to another
    /// server instance since the request was sent, unless the answer is one of a call that
    /// changed the token and carries no handle (its record holds nothing of the old server).
    fn record(
        &self,
        conn: &mut Connection,
        request: &Request,
        sent: &Request,
        mut response: Response,
    ) -> Option<Response> {
        if !journal::records(request) {
            return Some(response);
        }
        let mut identities = conn.take_identities();
        if self.config.recovery {
            let new = self.journal.read().new_objects(request, &mut response);
            let missing: Vec<u64> = new
                .into_iter()
                .filter(|h| !identities.iter().any(|i| i.object == *h))
                .collect();
            if let (false, Some(session)) = (missing.is_empty(), sent.session()) {
                identities.extend(recovery::identify(conn, session, missing).unwrap_or_default());
            }
        }
        let keep_pin = self.config.recovery && self.config.keep_pin;
        let mut j = self.journal.write();
        let handle_free = request.descriptor().changes_token
            && protocol::objects::handed_out(request, &mut response).is_empty();
        if j.instance() != conn.instance() && !handle_free {
            return None;
        }
        Some(j.after(request, response, keep_pin, identities))
    }

    /// Keeps a connection that answered for reuse.
    fn park(&self, conn: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
            self.parked.notify_one();
        }
    }

    /// A round trip that C_Finalize may interrupt: the blocking C_WaitForSlotEvent (v2.40
    /// §5.5.4: a C_Finalize during the wait makes it return CKR_CRYPTOKI_NOT_INITIALIZED). It
    /// has a connection of its own, so it never holds up other calls.
    pub fn call_interruptible(&self, request: Request) -> Rv<Response> {
        let conn = self.take_connection()?;
        let key = self
            .next_wait
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(handle) = conn.stream_handle() {
            self.waits.lock().insert(key, handle);
        }
        let r = self.call_on(conn, &request);
        self.waits.lock().remove(&key);
        r
    }

    /// Sends C_Finalize's request on an idle connection, waiting at most two seconds; nothing
    /// if no connection is idle (the server then closes the sessions after its grace period).
    fn say_goodbye(&self) {
        let Some(mut conn) = self.idle.try_lock().and_then(|mut idle| idle.pop()) else {
            return;
        };
        if conn.is_stale() || conn.set_timeouts(Duration::from_secs(2)).is_err() {
            return;
        }
        let _ = conn.call(&Request::Finalize {});
    }

    /// Ends every interruptible wait in progress (at C_Finalize).
    fn interrupt_waits(&self) {
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

/// How [`Client::prepare`] left a request.
enum Prepared {
    /// Translated for the connection's server.
    Ready(Request),
    /// The connection belongs to a server the application left: take another.
    Again,
    /// The connection failed during a replay: another attempt.
    Failed,
    /// Answered here (a lost session or object).
    Refused(CK_RV),
}

/// Whether a request involves the journal's handles. Calls without a session (library, slot
/// and token information, C_Finalize) hold none: a replay on a new server waits for the first
/// call that needs it.
fn uses_handles(request: &Request) -> bool {
    request.session().is_some()
        || matches!(
            request,
            Request::OpenSession { .. } | Request::CloseAllSessions { .. }
        )
}

/// The initialised instance of this process, or CKR_CRYPTOKI_NOT_INITIALIZED.
pub fn current() -> Rv<Arc<Client>> {
    match &*CLIENT.read() {
        Some(c) if c.pid == std::process::id() => Ok(c.clone()),
        _ => Err(CKR_CRYPTOKI_NOT_INITIALIZED),
    }
}

/// The version of the vendor library's "PKCS 11" interface behind this shim: known from the
/// connection of the initialised instance, or, before C_Initialize (C_GetInterfaceList and
/// C_GetInterface may come first, v3.0 §5.2), asked of the server with the configuration
/// read now, bounded by the connect timeout. `None` when no server answers.
pub fn vendor_interface() -> Option<(u8, u8)> {
    if let Ok(c) = current() {
        return Some(c.vendor_interface).filter(|v| *v != (0, 0));
    }
    log::configure_from_env();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            log::log(
                log::LogLevel::Info,
                &format!("C_GetInterface before C_Initialize: no configuration ({e}); offering PKCS#11 3.0 and 2.40"),
            );
            return None;
        }
    };
    match connection::vendor_interface(&config) {
        Ok(v) if v != (0, 0) => Some(v),
        Ok(_) => None,
        Err(e) => {
            warn(&format!(
                "C_GetInterface before C_Initialize: cannot ask the proxy server ({e}); offering PKCS#11 3.0 and 2.40"
            ));
            None
        }
    }
}

/// Sends `request` through the initialised instance.
pub fn call(request: Request) -> Rv<Response> {
    current()?.call(request)
}

/// C_Initialize's work: read the configuration, connect, and have the application's worker
/// C_Initialize its vendor instance with the shape of the application's arguments (`init`);
/// the vendor's answer is C_Initialize's.
pub fn initialize(init: Option<InitArgs>) -> Rv {
    // A process that exits without C_Finalize still ends its view on the server at once, so
    // its sessions and login do not wait out the server's resume grace period.
    static EXIT_HOOK: std::sync::Once = std::sync::Once::new();
    // SAFETY: registering a handler with no preconditions; it never unwinds.
    EXIT_HOOK.call_once(|| unsafe {
        libc::atexit(finalize_at_exit);
    });
    let mut slot = CLIENT.write();
    if let Some(c) = &*slot {
        if c.pid == std::process::id() {
            return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
        // A child after fork(): the parent's connections are not ours to use. Dropping them
        // closes only this process's descriptors.
    }
    *slot = None;
    log::configure_from_env();
    let config = Config::load().map_err(|e| {
        log::log(
            log::LogLevel::Error,
            &format!("C_Initialize: configuration error: {e}"),
        );
        CKR_GENERAL_ERROR
    })?;
    log::configure(config.log_level, config.log_target.clone());
    let client_id = random_id().ok_or_else(|| {
        log::log(
            log::LogLevel::Error,
            "C_Initialize: no randomness for the client id",
        );
        CKR_GENERAL_ERROR
    })?;
    // Behind a load balancer a first attempt may reach a dead replica: a few in a row.
    let mut opened = Connection::open(&config, &client_id, init, 0, [0; 16]);
    for _ in 1..FAILED_IN_A_ROW {
        if opened.is_ok() {
            break;
        }
        opened = Connection::open(&config, &client_id, init, 0, [0; 16]);
    }
    let mut conn = opened.map_err(|e| {
        log::log(
            log::LogLevel::Error,
            &format!("C_Initialize: cannot reach the proxy server: {e}"),
        );
        CKR_FUNCTION_FAILED
    })?;
    let init_rv = conn.init_rv();
    if init_rv != 0 {
        // Not initialised: the worker ends when this connection closes.
        return Err(crate::ffi::narrow(init_rv).unwrap_or(CKR_GENERAL_ERROR));
    }
    let token = Arc::new(());
    conn.live = Some(token.clone());
    let client = Client {
        vendor_interface: conn.vendor_interface(),
        config,
        client_id,
        init,
        pid: std::process::id(),
        journal: RwLock::new(Journal::new(conn.instance())),
        address: AtomicUsize::new(conn.address_index()),
        live: Mutex::new(vec![(conn.instance(), token)]),
        idle: Mutex::new(vec![conn]),
        parked: Condvar::new(),
        message_mechanisms: Mutex::new(HashMap::new()),
        backoff: Mutex::new(None),
        waits: Mutex::new(HashMap::new()),
        next_wait: Default::default(),
    };
    *slot = Some(Arc::new(client));
    Ok(())
}

/// C_Finalize: ends this application's view on the server (its sessions are closed) and
/// drops every connection.
pub fn finalize() -> Rv {
    let client = {
        let mut slot = CLIENT.write();
        match slot.take() {
            Some(c) if c.pid == std::process::id() => c,
            _ => return Err(CKR_CRYPTOKI_NOT_INITIALIZED),
        }
    };
    client.interrupt_waits();
    // The vendor's answer is C_Finalize's. Unanswered (the server is gone), the worker
    // finalises the instance when its resume grace runs out: the application is finalised
    // here all the same.
    let answer = client.call_with(Request::Finalize {}, false);
    // Kept PINs are wiped as the records drop.
    client.journal.write().clear();
    match answer {
        Ok(r) => crate::ffi::rv_of(r),
        Err(_) => Ok(()),
    }
}

/// At process exit (or when the library is unloaded): C_Finalize's work, if the application
/// did not do it, over an idle connection with a short timeout. Never blocks on a lock.
extern "C" fn finalize_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Some(mut slot) = CLIENT.try_write() else {
            return;
        };
        let client = match slot.take() {
            Some(c) if c.pid == std::process::id() => c,
            other => {
                *slot = other;
                return;
            }
        };
        drop(slot);
        client.say_goodbye();
    });
}

/// A new random client id, from getrandom(2).
fn random_id() -> Option<ClientId> {
    let mut id = [0u8; 16];
    // SAFETY: id is writable for its length.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    (n == id.len() as isize).then_some(id)
}
