//! One client connection, and the per-application view that all connections of one shim
//! instance share (DESIGN.md, "Server semantics").
//!
//! An application is known by the 128-bit client id of its handshake. It owns the sessions it
//! opened: a session handle of another application answers `CKR_SESSION_HANDLE_INVALID`. When
//! the application finalises, its sessions are closed; when its last connection ends without
//! that (a crash, a network cut), they are kept for the resume grace period, then closed.

use std::collections::HashMap;
use std::io::BufReader;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::Mutex;
use protocol::codec;
use protocol::frame::{read_frame, wipe, write_frame, MAX_FRAME_LEN};
use protocol::handshake::{ClientId, Hello, Welcome, VERSION};
use protocol::message::Request;
use protocol::stream::Stream;
use protocol::ProtocolError;

use crate::backend::Backend;
use crate::listener::{Accepted, Incoming};
use crate::login::Logins;
use crate::objects::SessionObjects;
use crate::rv;

/// Read buffer of a connection: small frames are read in one system call; larger ones go
/// straight into the frame buffer. Small, since an idle connection keeps it.
const READ_BUFFER: usize = 8 * 1024;

/// Longest a response may take to be accepted by a client's socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a new connection may take for its TLS handshake and its hello.
    pub handshake_timeout: Duration,
    /// How long a connection may stay silent between requests; `None`: for ever.
    pub idle_timeout: Option<Duration>,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long an application's sessions are kept after its last connection ends, for it to
    /// reconnect and resume; zero: closed at once.
    pub resume_grace: Duration,
}

/// One application's view: the sessions it opened.
///
/// Whether the application called C_Initialize is the shim's to know (it answers
/// CKR_CRYPTOKI_NOT_INITIALIZED itself); to the server an application exists while it has a
/// connection. So an application whose connections all dropped (a network blip) and came back
/// carries on: its old sessions are gone and answer CKR_SESSION_HANDLE_INVALID, which makes
/// pooling callers such as Fabric open new ones.
pub struct App {
    /// A number naming this application inside the server (session-object ownership).
    pub id: u64,
    /// Session handle to the slot it was opened on.
    sessions: Mutex<HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>>,
}

impl App {
    /// `Ok` if the application owns `session` (PKCS#11 v2.40 §5.6: a handle it did not get is
    /// invalid for it).
    pub fn check(&self, session: u64) -> Result<CK_SESSION_HANDLE, CK_RV> {
        let h = CK_SESSION_HANDLE::try_from(session).map_err(|_| CKR_SESSION_HANDLE_INVALID)?;
        if self.sessions.lock().contains_key(&h) {
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

    /// The session handle and its slot, if `app` owns `session`.
    pub fn session(&self, session: u64) -> Result<(CK_SESSION_HANDLE, CK_SLOT_ID), CK_RV> {
        let h = CK_SESSION_HANDLE::try_from(session).map_err(|_| CKR_SESSION_HANDLE_INVALID)?;
        self.sessions
            .lock()
            .get(&h)
            .map(|slot| (h, *slot))
            .ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    /// The slot of one of the application's sessions.
    pub fn slot_of(&self, session: CK_SESSION_HANDLE) -> Option<CK_SLOT_ID> {
        self.sessions.lock().get(&session).copied()
    }

    /// Whether the application has a session open on `slot`.
    pub fn has_session_on(&self, slot: CK_SLOT_ID) -> bool {
        self.sessions.lock().values().any(|s| *s == slot)
    }

    /// Takes the sessions opened on `slot` out of the view, to be closed.
    pub fn take_sessions_of_slot(&self, slot: CK_SLOT_ID) -> Vec<(CK_SESSION_HANDLE, CK_SLOT_ID)> {
        let mut sessions = self.sessions.lock();
        let on_slot: Vec<_> = sessions
            .iter()
            .filter(|(_, s)| **s == slot)
            .map(|(h, _)| *h)
            .collect();
        for h in &on_slot {
            sessions.remove(h);
        }
        on_slot.into_iter().map(|h| (h, slot)).collect()
    }

    /// Takes every session out of the view, to be closed (C_Finalize, departure, stop).
    pub fn take_all_sessions(&self) -> Vec<(CK_SESSION_HANDLE, CK_SLOT_ID)> {
        self.sessions.lock().drain().collect()
    }
}

/// Every application with a live connection, or whose last connection ended less than the
/// resume grace period ago (a network blip: the shim reconnects with the same client id and
/// finds its sessions, logins and operations in progress as it left them).
#[derive(Default)]
pub struct Registry {
    /// By client id and the identity it is bound to (peer certificate, uid), so that nobody
    /// else can borrow an application's client id.
    apps: Mutex<HashMap<AppKey, Entry>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// One application and its connections.
struct Entry {
    app: Arc<App>,
    connections: usize,
    /// When its last connection ended, while it waits to be resumed.
    left_at: Option<Instant>,
}

/// A client id and the peer identity it was presented with.
pub type AppKey = (ClientId, Vec<u8>);

impl Registry {
    /// Attaches a connection; the application is new, resumed, or gains a connection.
    fn attach(&self, id: AppKey) -> Arc<App> {
        let mut apps = self.apps.lock();
        let entry = apps.entry(id).or_insert_with(|| Entry {
            app: Arc::new(App {
                id: self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                sessions: Mutex::new(HashMap::new()),
            }),
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
        entry.app.clone()
    }

    /// Drops one connection of `id`; returns the application when that was its last one and
    /// it is not to be kept for a resume (`grace` zero).
    fn detach(&self, id: &AppKey, grace: Duration) -> Option<Arc<App>> {
        let mut apps = self.apps.lock();
        let entry = apps.get_mut(id)?;
        entry.connections -= 1;
        if entry.connections > 0 {
            return None;
        }
        if grace.is_zero() {
            return apps.remove(id).map(|e| e.app);
        }
        entry.left_at = Some(Instant::now());
        None
    }

    /// Takes out the applications whose grace period ran out, to close their sessions.
    pub fn reap(&self, grace: Duration) -> Vec<Arc<App>> {
        let mut apps = self.apps.lock();
        let expired: Vec<AppKey> = apps
            .iter()
            .filter(|(_, e)| e.connections == 0 && e.left_at.is_some_and(|t| t.elapsed() >= grace))
            .map(|(k, _)| k.clone())
            .collect();
        expired
            .iter()
            .filter_map(|k| apps.remove(k))
            .map(|e| e.app)
            .collect()
    }

    /// Sessions open per application (by its number), for the metrics.
    pub fn session_counts(&self) -> Vec<(u64, usize)> {
        self.all()
            .iter()
            .map(|a| (a.id, a.sessions.lock().len()))
            .collect()
    }

    fn all(&self) -> Vec<Arc<App>> {
        self.apps.lock().values().map(|e| e.app.clone()).collect()
    }

    /// Every application still known (at shutdown).
    pub fn drain(&self) -> Vec<Arc<App>> {
        self.apps.lock().drain().map(|(_, e)| e.app).collect()
    }

    /// Any open session on `slot`, of any application.
    pub fn any_session_on(&self, slot: CK_SLOT_ID) -> Option<CK_SESSION_HANDLE> {
        self.all().iter().find_map(|a| {
            a.sessions
                .lock()
                .iter()
                .find(|(_, s)| **s == slot)
                .map(|(h, _)| *h)
        })
    }

    /// Applications with at least one live connection.
    pub fn app_count(&self) -> usize {
        self.apps
            .lock()
            .values()
            .filter(|e| e.connections > 0)
            .count()
    }
}

/// Shared state of the server, as seen by each connection.
pub struct Shared {
    pub policy: crate::policy::Policy,
    pub metrics: crate::metrics::Metrics,
    pub backend: Backend,
    pub limits: Limits,
    pub registry: Registry,
    pub objects: SessionObjects,
    pub logins: Logins,
    pub instance_id: [u8; 16],
}

impl Shared {
    /// An application left for good: its sessions are closed.
    pub fn application_gone(&self, app: &App) {
        let sessions = app.take_all_sessions();
        if !sessions.is_empty() {
            tracing::info!(
                client = app.id,
                sessions = sessions.len(),
                "application gone: closing its sessions"
            );
        }
        self.close_sessions(app, &sessions);
    }

    /// Closes `app`'s sessions on the vendor library (which destroys their session objects),
    /// logging failures other than an already-closed session, then settles what closing
    /// them ends.
    pub fn close_sessions(&self, app: &App, sessions: &[(CK_SESSION_HANDLE, CK_SLOT_ID)]) {
        for &(s, _) in sessions {
            let r = self.backend.session(self.backend.list().C_CloseSession, s);
            if r != CKR_OK && r != CKR_SESSION_HANDLE_INVALID && r != CKR_SESSION_CLOSED {
                tracing::warn!(session = s, rv = %rv::name(r), "closing a session failed");
            }
        }
        self.sessions_closed(app, sessions);
    }

    /// After sessions of `app` closed: their session objects are gone, and on a slot where
    /// `app` has no session left its login ends (v2.40 §5.6.2).
    pub fn sessions_closed(&self, app: &App, sessions: &[(CK_SESSION_HANDLE, CK_SLOT_ID)]) {
        let handles: Vec<_> = sessions.iter().map(|(h, _)| *h).collect();
        self.objects.forget_sessions(&handles);
        let mut slots: Vec<_> = sessions.iter().map(|(_, slot)| *slot).collect();
        slots.dedup();
        for slot in slots {
            if !app.has_session_on(slot) {
                let any = self.registry.any_session_on(slot);
                self.logins.leave(&self.backend, app.id, slot, any);
            }
        }
    }
}

/// Serves one connection until the peer goes away or the stream is shut down.
pub fn serve(shared: &Shared, accepted: Accepted) {
    let Accepted {
        incoming,
        peer,
        mut identity,
    } = accepted;
    let peer = peer.as_str();
    let stream = match incoming {
        Incoming::Plain(s) => s,
        Incoming::Tls(conn, tcp) => {
            let _ = tcp.set_read_timeout(Some(shared.limits.handshake_timeout));
            let _ = tcp.set_write_timeout(Some(shared.limits.handshake_timeout));
            match crate::tls::handshake(conn, tcp) {
                Ok((s, cert)) => {
                    identity = cert;
                    s
                }
                Err(e) => {
                    shared
                        .metrics
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer, error = %e, "connection refused");
                    return;
                }
            }
        }
    };
    let Some((client_id, reader)) = handshake(stream, peer, shared) else {
        shared
            .metrics
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = reader
        .get_ref()
        .set_read_timeout(shared.limits.idle_timeout);
    // A client that stops reading its answers cannot hold this thread for ever.
    let _ = reader.get_ref().set_write_timeout(Some(WRITE_TIMEOUT));
    let key = (client_id, identity);
    let app = shared.registry.attach(key.clone());
    shared
        .metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    shared
        .metrics
        .connections_open
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(peer, client = app.id, "client connected");
    let ended = request_loop(shared, &app, peer, reader);
    shared
        .metrics
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);
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
    if let Some(app) = shared.registry.detach(&key, shared.limits.resume_grace) {
        shared.application_gone(&app);
    }
}

fn handshake(stream: Stream, peer: &str, shared: &Shared) -> Option<(ClientId, BufReader<Stream>)> {
    let _ = stream.set_read_timeout(Some(shared.limits.handshake_timeout));
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
    let mut buf = Vec::new();
    let mut scratch = Vec::new();
    if let Err(e) = read_frame(&mut reader, &mut buf, 64) {
        tracing::warn!(peer, error = %e, "handshake failed: no valid hello");
        return None;
    }
    let hello = match Hello::decode(&buf) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(peer, error = %e, "handshake refused");
            let reason = format!("server speaks protocol version {VERSION}: {e}");
            let _ = write_frame(
                reader.get_mut(),
                &Welcome::Refused {
                    version: VERSION,
                    reason,
                }
                .encode(),
                &mut scratch,
            );
            return None;
        }
    };
    let welcome = Welcome::Accepted {
        version: VERSION,
        instance_id: shared.instance_id,
    };
    if let Err(e) = write_frame(reader.get_mut(), &welcome.encode(), &mut scratch) {
        tracing::warn!(peer, error = %e, "handshake failed");
        return None;
    }
    Some((hello.client_id, reader))
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
        if request.carries_secret() {
            wipe(&mut frame);
        }
        let name = request.function_name();
        let started = std::time::Instant::now();
        let response = crate::dispatch::dispatch(shared, app, request);
        let r = CK_RV::try_from(response.rv()).unwrap_or(CKR_GENERAL_ERROR);
        metrics.call(name, r, started.elapsed());
        match r {
            CKR_OK => {}
            // The two-call convention and Fabric's login on every session: not failures.
            CKR_BUFFER_TOO_SMALL | CKR_USER_ALREADY_LOGGED_IN => {
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
