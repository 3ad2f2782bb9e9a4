//! The worker's state, shared by all its connections: settings, policy, metrics, the loaded
//! vendor library, its C_Initialize, and the applications it serves (DESIGN.md, "Server
//! semantics").
//!
//! An application's worker serves one application: the first hello whose client id matches
//! the worker's routing id binds it, with the peer's identity (certificate, uid); a hello of
//! any other client id or identity is refused, so a routing id seen on the wire gets nobody
//! in. A shared worker (`--shared-worker`) serves every application from one vendor instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex};
use protocol::handshake::{routing_id, ClientId, Hello};

use super::application::Application;
use super::backend::Backend;
use super::deadline::Watchdog;
use super::heal::Heal;
use crate::control::{Role, WorkerSettings};
use crate::rv;
use crate::tls::TlsListener;

/// A client id and the peer identity it was presented with.
pub type AppKey = (ClientId, Vec<u8>);

/// One application and its connections.
struct Entry {
    app: Arc<Application>,
    connections: usize,
    /// When its last connection ended, while it waits to be resumed.
    left_at: Option<Instant>,
}

/// The vendor library's C_Initialize, made once per worker.
enum Init {
    /// An application's worker before its first hello.
    Pending,
    /// The vendor works on it, for the hello of `connection`, since `since`.
    Initialising { since: Instant, connection: u64 },
    /// Made, with the vendor's answer.
    Done(CK_RV),
    /// C_Finalize answered CKR_OK: nothing more to serve.
    Finalized,
}

/// The worker's state, shared by its connections.
pub struct WorkerState {
    pub settings: WorkerSettings,
    pub policy: crate::policy::Policy,
    pub metrics: crate::metrics::Metrics,
    pub backend: Backend,
    pub tls: Option<TlsListener>,
    /// New for every worker: a restart, a failover or a crash gives the application a new
    /// instance, which the shim's recovery notices.
    pub instance_id: [u8; 16],
    init: Mutex<Init>,
    /// Signalled when the vendor answers the first C_Initialize.
    init_done: Condvar,
    apps: Mutex<HashMap<AppKey, Entry>>,
    next_app: AtomicU64,
    /// The worker told the router it is leaving: connections still handed over are closed.
    pub leaving: AtomicBool,
    /// Whether the vendor instance lost its device, and when it is replaced (`--heal`).
    pub heal: Heal,
    /// The deadlines of vendor calls (with `--heal`).
    pub watchdog: Watchdog,
    /// Where audited calls go (`--audit-log`).
    pub audit: Option<crate::audit::Sink>,
    /// Its own end of the control channel, for messages from the calls (PIN custody).
    pub router: Option<crate::control::Channel>,
    /// Identities under PIN custody locked out, until when (ms since the epoch).
    locked: Mutex<HashMap<String, u64>>,
}

impl WorkerState {
    /// The state of a worker whose vendor library is loaded; shared and probe workers have
    /// initialised it already (`initialised`).
    pub fn new(
        settings: WorkerSettings,
        policy: crate::policy::Policy,
        backend: Backend,
        tls: Option<TlsListener>,
        initialised: bool,
    ) -> Self {
        // Only an application's own instance is replaced: a shared worker's is everyone's,
        // a probe's answers readiness.
        let healing = match settings.role {
            Role::Application(_) => settings.heal.clone(),
            _ => Default::default(),
        };
        Self {
            router: None,
            locked: Mutex::new(settings.locked.iter().cloned().collect()),
            audit: None,
            watchdog: Watchdog::new(&healing),
            heal: Heal::new(healing),
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
            init_done: Condvar::new(),
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
            Init::Pending | Init::Initialising { .. } => false,
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

    /// The vendor's C_Initialize answer for this hello (on `connection`), made at the first
    /// one of an application's worker with the application's own arguments; the hellos that
    /// come meanwhile wait for it. No lock is held while the vendor works: the worker's
    /// lifetime and the deadline watchdog ([`WorkerState::initialising_past`]) read the state.
    pub fn init_for(&self, hello: &Hello, connection: u64) -> CK_RV {
        let mut init = self.init.lock();
        loop {
            match *init {
                Init::Pending => break,
                // Its C_Initialize abandoned at its deadline: the instance is broken.
                Init::Initialising { .. } if self.heal.fail_fast().is_some() => {
                    return self.heal.fail_fast().unwrap_or(CKR_DEVICE_ERROR)
                }
                Init::Initialising { .. } => self.init_done.wait(&mut init),
                Init::Done(r) => return r,
                Init::Finalized => return CKR_CRYPTOKI_NOT_INITIALIZED,
            }
        }
        let started = Instant::now();
        *init = Init::Initialising {
            since: started,
            connection,
        };
        drop(init);
        let r = self
            .backend
            .initialize(hello.init, self.settings.init_args.as_deref());
        tracing::info!(rv = %rv::name(r), ms = started.elapsed().as_millis() as u64, "vendor library C_Initialize for the application");
        *self.init.lock() = Init::Done(r);
        self.init_done.notify_all();
        r
    }

    /// Wakes the hellos waiting for the first C_Initialize (it was abandoned).
    pub fn wake_hellos(&self) {
        let _init = self.init.lock();
        self.init_done.notify_all();
    }

    /// The connection whose hello's C_Initialize the vendor has been working on for longer
    /// than `limit`, if any.
    pub fn initialising_past(&self, limit: std::time::Duration) -> Option<u64> {
        match *self.init.lock() {
            Init::Initialising { since, connection } if since.elapsed() >= limit => {
                Some(connection)
            }
            _ => None,
        }
    }

    /// Attaches a connection of the application named by `key`; `Err` with a reason when the
    /// hello is not for this worker.
    /// Whether `identity` is locked out now (PIN custody).
    pub fn locked_out(&self, identity: &str) -> bool {
        self.locked
            .lock()
            .get(identity)
            .is_some_and(|&until| crate::audit::now_ms() < until)
    }

    /// The router locked `identity` out until `until_ms`.
    pub fn lock_out(&self, identity: String, until_ms: u64) {
        self.locked.lock().insert(identity, until_ms);
    }

    /// Sends a message to the router from a call.
    pub fn tell_router(&self, message: &crate::control::ToRouter) -> std::io::Result<()> {
        match &self.router {
            Some(c) => c.send(message, None),
            None => Ok(()),
        }
    }

    pub fn attach(&self, key: &AppKey, identify_objects: bool) -> Result<Arc<Application>, String> {
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
            app: Arc::new(Application::new(
                self.next_app.fetch_add(1, Ordering::Relaxed),
                shared_vendor,
                identify_objects,
                crate::policy::Presented::of(&key.1),
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
    /// the resume grace period (in a shared worker, [`WorkerState::reap`] closes its sessions then;
    /// an application's worker leaves), or, in a shared worker with no grace, has its sessions
    /// closed at once.
    pub fn detach(&self, key: &AppKey) {
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
        let gone: Vec<Arc<Application>> = {
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
    fn application_gone(&self, app: &Application) {
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
