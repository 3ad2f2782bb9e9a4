//! One client connection inside a worker (TLS handshake, hello, the request loop), the
//! application view that all connections of one shim instance share, and the worker state
//! they serve from (DESIGN.md, "Server semantics").
//!
//! An application's worker serves one application: the first hello whose client id matches
//! the worker's routing id binds it, with the peer's identity (certificate, uid); a hello of
//! any other client id or identity is refused, so a routing id seen on the wire gets nobody
//! in. Its vendor instance is the application's own, so session handles pass unchecked to the
//! vendor, which answers for them. A shared worker (`--shared-worker`) serves every
//! application from one vendor instance; each application then owns the sessions it opened,
//! and a session handle of another answers `CKR_SESSION_HANDLE_INVALID`.

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::Mutex;
use protocol::codec;
use protocol::frame::{read_frame, wipe, write_frame, MAX_FRAME_LEN};
use protocol::handshake::{routing_id, ClientId, Hello, Welcome, VERSION};
use protocol::message::Request;
use protocol::stream::Stream;
use protocol::ProtocolError;

use super::backend::Backend;
use crate::control::{Role, WorkerSettings};
use crate::rv;
use crate::tls::TlsListener;

/// Read buffer of a connection: small frames are read in one system call; larger ones go
/// straight into the frame buffer. Small, since an idle connection keeps it.
const READ_BUFFER: usize = 8 * 1024;

/// Longest a response may take to be accepted by a client's socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// One application's view: the sessions it opened.
pub struct App {
    /// A number naming this application inside the worker (logs, metrics).
    pub id: u64,
    /// Whether the vendor instance serves other applications too (a shared worker).
    shared_vendor: bool,
    /// Session handle to the slot it was opened on.
    sessions: Mutex<HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>>,
    /// The shim asked for the identity of the objects handed out (hello flag).
    pub identify_objects: bool,
    /// The objects whose identity it was sent (`identify`).
    identified: Mutex<HashSet<u64>>,
}

/// Most objects remembered as identified for one application; past it the memory starts
/// again (an object is then identified once more: a vendor call, never a wrong answer).
const MAX_IDENTIFIED: usize = 65_536;

impl App {
    fn new(id: u64, shared_vendor: bool, identify_objects: bool) -> Self {
        Self {
            id,
            shared_vendor,
            sessions: Mutex::new(HashMap::new()),
            identify_objects,
            identified: Mutex::new(HashSet::new()),
        }
    }

    /// Whether `object` is handed out to the application for the first time (its identity
    /// is to be sent); it is remembered as sent from now on.
    pub fn first_handout(&self, object: u64) -> bool {
        let mut identified = self.identified.lock();
        if identified.len() >= MAX_IDENTIFIED {
            identified.clear();
        }
        identified.insert(object)
    }

    /// `object` was destroyed: its handle may name another object later.
    pub fn forget_object(&self, object: u64) {
        self.identified.lock().remove(&object);
    }

    /// Whether other applications share this application's vendor instance.
    pub fn shares_vendor(&self) -> bool {
        self.shared_vendor
    }

    /// The session handle to pass to the vendor. In a shared worker, only a session the
    /// application opened (PKCS#11 v2.40 §5.6: a handle it did not get is invalid for it);
    /// in its own worker, any: the vendor answers for it.
    pub fn check(&self, session: u64) -> Result<CK_SESSION_HANDLE, CK_RV> {
        let h = CK_SESSION_HANDLE::try_from(session).map_err(|_| CKR_SESSION_HANDLE_INVALID)?;
        if !self.shared_vendor || self.sessions.lock().contains_key(&h) {
            Ok(h)
        } else {
            Err(CKR_SESSION_HANDLE_INVALID)
        }
    }

    pub fn add_session(&self, session: CK_SESSION_HANDLE, slot: CK_SLOT_ID) {
        self.sessions.lock().insert(session, slot);
    }

    pub fn remove_session(&self, session: CK_SESSION_HANDLE) {
        self.sessions.lock().remove(&session);
    }

    /// Takes the sessions opened on `slot` out of the view.
    pub fn take_sessions_of_slot(&self, slot: CK_SLOT_ID) -> Vec<CK_SESSION_HANDLE> {
        let mut sessions = self.sessions.lock();
        let on_slot: Vec<_> = sessions
            .iter()
            .filter(|(_, s)| **s == slot)
            .map(|(h, _)| *h)
            .collect();
        for h in &on_slot {
            sessions.remove(h);
        }
        on_slot
    }

    /// Takes every session out of the view (C_Finalize, departure, stop).
    pub fn take_all_sessions(&self) -> Vec<CK_SESSION_HANDLE> {
        self.sessions.lock().drain().map(|(h, _)| h).collect()
    }

    fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }
}

/// A client id and the peer identity it was presented with.
type AppKey = (ClientId, Vec<u8>);

/// One application and its connections.
struct Entry {
    app: Arc<App>,
    connections: usize,
    /// When its last connection ended, while it waits to be resumed.
    left_at: Option<Instant>,
}

/// The vendor library's C_Initialize, made once per worker.
enum Init {
    /// An application's worker before its first hello.
    Pending,
    /// Made, with the vendor's answer.
    Done(CK_RV),
    /// C_Finalize answered CKR_OK: nothing more to serve.
    Finalized,
}

/// The worker's state, shared by its connections.
pub struct Shared {
    pub settings: WorkerSettings,
    pub policy: crate::policy::Policy,
    pub metrics: crate::metrics::Metrics,
    pub backend: Backend,
    pub tls: Option<TlsListener>,
    /// New for every worker: a restart, a failover or a crash gives the application a new
    /// instance, which the shim's recovery notices.
    pub instance_id: [u8; 16],
    init: Mutex<Init>,
    apps: Mutex<HashMap<AppKey, Entry>>,
    next_app: AtomicU64,
    /// The worker told the router it is leaving: connections still handed over are closed.
    pub leaving: AtomicBool,
}

impl Shared {
    /// The state of a worker whose vendor library is loaded; shared and probe workers have
    /// initialised it already (`initialised`).
    pub fn new(
        settings: WorkerSettings,
        policy: crate::policy::Policy,
        backend: Backend,
        tls: Option<TlsListener>,
        initialised: bool,
    ) -> Self {
        Self {
            instance_id: settings.instance_id,
            settings,
            policy,
            metrics: Default::default(),
            backend,
            tls,
            init: Mutex::new(if initialised {
                Init::Done(CKR_OK)
            } else {
                Init::Pending
            }),
            apps: Mutex::new(HashMap::new()),
            next_app: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
        }
    }

    fn shared_vendor(&self) -> bool {
        !matches!(self.settings.role, Role::Application(_))
    }

    /// C_Finalize answered CKR_OK: the application is done with its instance.
    pub fn finalized(&self) {
        *self.init.lock() = Init::Finalized;
    }

    /// Whether an application's worker has nothing more to serve: its application finalised,
    /// or its C_Initialize failed.
    pub fn done(&self) -> bool {
        match *self.init.lock() {
            Init::Pending => false,
            Init::Done(r) => r != CKR_OK,
            Init::Finalized => true,
        }
    }

    /// Whether a hello ever reached this worker (an application is bound to it). A worker no
    /// hello reached (a prelude without a client behind it) has nothing to keep for a resume.
    pub fn bound(&self) -> bool {
        !self.apps.lock().is_empty()
    }

    /// Whether the vendor library is initialised and not finalised.
    pub fn initialised(&self) -> bool {
        matches!(*self.init.lock(), Init::Done(CKR_OK))
    }

    /// Closes sessions on the vendor library, logging failures other than an already-closed
    /// session.
    pub fn close_sessions(&self, sessions: &[CK_SESSION_HANDLE]) {
        for &s in sessions {
            let r = self.backend.session(self.backend.list().C_CloseSession, s);
            if r != CKR_OK && r != CKR_SESSION_HANDLE_INVALID && r != CKR_SESSION_CLOSED {
                tracing::warn!(session = s, rv = %rv::name(r), "closing a session failed");
            }
        }
    }

    /// The vendor's C_Initialize answer for this hello, made at the first one of an
    /// application's worker with the application's own arguments.
    fn init_for(&self, hello: &Hello) -> CK_RV {
        let mut init = self.init.lock();
        match *init {
            Init::Pending => {
                let started = Instant::now();
                let r = self
                    .backend
                    .initialize(hello.init, self.settings.init_args.as_deref());
                tracing::info!(rv = %rv::name(r), ms = started.elapsed().as_millis() as u64, "vendor library C_Initialize for the application");
                *init = Init::Done(r);
                r
            }
            Init::Done(r) => r,
            Init::Finalized => CKR_CRYPTOKI_NOT_INITIALIZED,
        }
    }

    /// Attaches a connection of the application named by `key`; `Err` with a reason when the
    /// hello is not for this worker.
    fn attach(&self, key: &AppKey, identify_objects: bool) -> Result<Arc<App>, String> {
        let mut apps = self.apps.lock();
        if let Role::Application(route) = self.settings.role {
            if routing_id(&key.0) != route {
                return Err("the client id does not match the connection's routing id".into());
            }
            if !apps.is_empty() && !apps.contains_key(key) {
                return Err("this application's client id was presented by another peer (certificate or uid)".into());
            }
        }
        let shared_vendor = self.shared_vendor();
        let entry = apps.entry(key.clone()).or_insert_with(|| Entry {
            app: Arc::new(App::new(
                self.next_app.fetch_add(1, Ordering::Relaxed),
                shared_vendor,
                identify_objects,
            )),
            connections: 0,
            left_at: None,
        });
        if entry.left_at.take().is_some() {
            tracing::info!(
                client = entry.app.id,
                "application resumed: its sessions were kept"
            );
        }
        entry.connections += 1;
        Ok(entry.app.clone())
    }

    /// Drops one connection of `key`. An application whose last connection ended waits for
    /// the resume grace period (in a shared worker, [`Shared::reap`] closes its sessions then;
    /// an application's worker leaves), or, in a shared worker with no grace, has its sessions
    /// closed at once.
    fn detach(&self, key: &AppKey) {
        let mut apps = self.apps.lock();
        let Some(entry) = apps.get_mut(key) else {
            return;
        };
        entry.connections -= 1;
        if entry.connections > 0 {
            return;
        }
        if !self.shared_vendor() || !self.settings.resume_grace.is_zero() {
            // Kept for the resume grace (an application's worker: the worker itself waits).
            entry.left_at = Some(Instant::now());
            return;
        }
        {
            if let Some(e) = apps.remove(key) {
                drop(apps);
                self.application_gone(&e.app);
            }
        }
    }

    /// In a shared worker: closes the sessions of applications that did not come back within
    /// the resume grace period.
    pub fn reap(&self) {
        let grace = self.settings.resume_grace;
        let gone: Vec<Arc<App>> = {
            let mut apps = self.apps.lock();
            let expired: Vec<AppKey> = apps
                .iter()
                .filter(|(_, e)| {
                    e.connections == 0 && e.left_at.is_some_and(|t| t.elapsed() >= grace)
                })
                .map(|(k, _)| k.clone())
                .collect();
            expired
                .iter()
                .filter_map(|k| apps.remove(k))
                .map(|e| e.app)
                .collect()
        };
        for app in gone {
            self.application_gone(&app);
        }
    }

    /// An application of a shared worker left for good: its sessions are closed.
    fn application_gone(&self, app: &App) {
        let sessions = app.take_all_sessions();
        if !sessions.is_empty() {
            tracing::info!(
                client = app.id,
                sessions = sessions.len(),
                "application gone: closing its sessions"
            );
        }
        self.close_sessions(&sessions);
    }

    /// Every application's sessions, taken out of their views (at stop).
    pub fn take_every_session(&self) -> Vec<CK_SESSION_HANDLE> {
        self.apps
            .lock()
            .values()
            .flat_map(|e| e.app.take_all_sessions())
            .collect()
    }

    /// Applications served, and sessions open by application (for the metrics); `label`
    /// names this worker's applications.
    pub fn census(&self, label: &str) -> (u64, Vec<(String, u64)>) {
        let apps = self.apps.lock();
        let sessions = apps
            .values()
            .map(|e| {
                let name = if self.shared_vendor() {
                    format!("{label}-{}", e.app.id)
                } else {
                    label.to_string()
                };
                (name, e.app.session_count() as u64)
            })
            .collect();
        (apps.len() as u64, sessions)
    }
}

/// A connection handed over by the router.
pub struct Handed {
    pub stream: Stream,
    /// Its place in the worker's budget of connections before their hello, given back
    /// once the hello is done.
    pub ticket: Option<crate::startups::Ticket>,
    /// Called once the hello is accepted.
    pub on_hello: Box<dyn FnOnce() + Send>,
    /// The TLS handshake is still to be done.
    pub tls: bool,
    pub peer: String,
    pub identity: Vec<u8>,
}

/// Serves one connection until the peer goes away or the stream is shut down.
pub fn serve(shared: &Shared, handed: Handed) {
    let Handed {
        stream,
        ticket,
        on_hello,
        tls,
        peer,
        mut identity,
    } = handed;
    let peer = peer.as_str();
    let stream = match (tls, stream) {
        (true, Stream::Tcp(tcp)) => {
            let Some(listener) = &shared.tls else {
                tracing::error!(peer, "TLS connection without TLS material");
                return;
            };
            let _ = tcp.set_read_timeout(Some(shared.settings.handshake_timeout));
            let _ = tcp.set_write_timeout(Some(shared.settings.handshake_timeout));
            let session = match listener.session() {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(peer, error = %e, "cannot start a TLS session");
                    return;
                }
            };
            match crate::tls::handshake(Box::new(session), tcp) {
                Ok((s, cert)) => {
                    identity = cert;
                    s
                }
                Err(e) => {
                    refused(shared);
                    tracing::warn!(peer, error = %e, "connection refused");
                    return;
                }
            }
        }
        (_, s) => s,
    };
    let Some((key, app, reader)) = handshake(stream, peer, identity, ticket, shared) else {
        refused(shared);
        return;
    };
    on_hello();
    let _ = reader
        .get_ref()
        .set_read_timeout(shared.settings.idle_timeout);
    // A client that stops reading its answers cannot hold this thread for ever.
    let _ = reader.get_ref().set_write_timeout(Some(WRITE_TIMEOUT));
    let metrics = &shared.metrics;
    // connections_open counts it since its hello (`handshake`).
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    tracing::info!(peer, client = app.id, "client connected");
    let ended = request_loop(shared, &app, peer, reader);
    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = ended {
        match e {
            ProtocolError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::info!(peer, client = app.id, "client disconnected")
            }
            ProtocolError::Io(ref io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                tracing::info!(peer, "closing idle connection (--idle-timeout)")
            }
            e => tracing::warn!(peer, error = %e, "closing connection"),
        }
    }
    shared.detach(&key);
}

fn refused(shared: &Shared) {
    shared
        .metrics
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
}

/// Writes a refusal the client logs, with `reason`.
fn refuse(reader: &mut BufReader<Stream>, reason: String) {
    let _ = write_frame(
        reader.get_mut(),
        &Welcome::Refused {
            version: VERSION,
            reason,
        }
        .encode(),
        &mut Vec::new(),
    );
}

/// Reads and checks the hello and answers it. The connection leaves the budget of
/// connections before their hello (`ticket`) once its hello is valid, before it is counted
/// or answered: an accepted connection is never dropped by that budget afterwards.
fn handshake(
    stream: Stream,
    peer: &str,
    identity: Vec<u8>,
    ticket: Option<crate::startups::Ticket>,
    shared: &Shared,
) -> Option<(AppKey, Arc<App>, BufReader<Stream>)> {
    let _ = stream.set_read_timeout(Some(shared.settings.handshake_timeout));
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
    let mut buf = Vec::new();
    if let Err(e) = read_frame(&mut reader, &mut buf, 64) {
        tracing::warn!(peer, error = %e, "handshake failed: no valid hello");
        return None;
    }
    let hello = match Hello::decode(&buf) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(peer, error = %e, "handshake refused");
            refuse(
                &mut reader,
                format!("server speaks protocol version {VERSION}: {e}"),
            );
            return None;
        }
    };
    if ticket.is_some_and(|t| !t.release()) {
        // Dropped to make room just now: its socket is shut down.
        return None;
    }
    // Authenticated connections of the application: their own limit, which connections
    // before their hello never count against. The place is taken here (and given back if
    // the handshake fails), so that hellos at the same moment cannot pass the limit together.
    let open = shared
        .metrics
        .connections_open
        .fetch_add(1, Ordering::AcqRel);
    let release = || {
        shared
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::AcqRel);
    };
    if open >= shared.settings.max_connections as i64 {
        release();
        tracing::warn!(
            peer,
            open,
            "connection refused: --max-connections reached for this application"
        );
        refuse(
            &mut reader,
            format!("the application has {open} connections open already (--max-connections)"),
        );
        return None;
    }
    let key = (hello.client_id, identity);
    let app = match shared.attach(&key, hello.identify_objects) {
        Ok(app) => app,
        Err(reason) => {
            release();
            tracing::warn!(peer, reason, "handshake refused");
            refuse(&mut reader, reason);
            return None;
        }
    };
    let init_rv = shared.init_for(&hello);
    let welcome = Welcome::Accepted {
        version: VERSION,
        instance_id: shared.instance_id,
        init_rv: init_rv as u64,
    };
    if let Err(e) = write_frame(reader.get_mut(), &welcome.encode(), &mut Vec::new()) {
        tracing::warn!(peer, error = %e, "handshake failed");
        shared.detach(&key);
        release();
        return None;
    }
    Some((key, app, reader))
}

fn request_loop(
    shared: &Shared,
    app: &App,
    peer: &str,
    mut reader: BufReader<Stream>,
) -> Result<(), ProtocolError> {
    let mut frame = Vec::new();
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let metrics = &shared.metrics;
    loop {
        read_frame(&mut reader, &mut frame, MAX_FRAME_LEN)?;
        metrics
            .bytes_received
            .fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
        let request: Request = codec::decode(&frame)?;
        if request.descriptor().carries_pin {
            wipe(&mut frame);
        }
        let name = request.descriptor().name;
        let started = Instant::now();
        let response = super::dispatch::dispatch(shared, app, request);
        let r = CK_RV::try_from(response.rv()).unwrap_or(CKR_GENERAL_ERROR);
        metrics.call(name, r, started.elapsed());
        match r {
            CKR_OK => {}
            _ if is_routine(name, r) => {
                tracing::debug!(function = name, rv = %rv::name(r), client = app.id, peer, "call answered")
            }
            _ => {
                tracing::info!(function = name, rv = %rv::name(r), client = app.id, peer, "call failed")
            }
        }
        codec::encode(&response, &mut out)?;
        write_frame(reader.get_mut(), &out, &mut scratch)?;
        metrics
            .bytes_sent
            .fetch_add(out.len() as u64 + 4, Ordering::Relaxed);
    }
}

/// Answers that are part of normal PKCS#11 use, logged at debug rather than as failures: the
/// two-call convention (v2.40 §5.2), Fabric's login on every session, and the per-attribute
/// results of C_GetAttributeValue (v2.40 §5.7.5: an attribute the object does not have, or
/// may not reveal), which clients meet asking for several at once.
fn is_routine(function: &str, rv: CK_RV) -> bool {
    match rv {
        CKR_BUFFER_TOO_SMALL | CKR_USER_ALREADY_LOGGED_IN => true,
        CKR_ATTRIBUTE_TYPE_INVALID | CKR_ATTRIBUTE_SENSITIVE => function == "C_GetAttributeValue",
        _ => false,
    }
}
