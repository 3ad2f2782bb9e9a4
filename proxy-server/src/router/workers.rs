//! The router's worker processes: started on an application's first connection (the server's
//! own binary, re-executed with `--worker`: never a bare fork of this multi-threaded process),
//! handed each of its connections, asked for reports, told to stop, and supervised by their
//! exit status, as PostgreSQL's postmaster does: a worker that dies is logged with its signal
//! and counted, and only its own application is affected (DESIGN.md, "Server semantics").

use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use protocol::handshake::{InstanceId, RoutingId};

use crate::control::{
    Channel, Replaced, Role, ToRouter, ToWorker, Transport, WorkerSettings, WORKER_FD,
};
use crate::metrics::{Probed, RouterCounters, Snapshot};

/// How long a report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a worker waits for its application's hello before a new application may take
/// its place as a pending one (--max-pending-applications).
const PENDING_MIN_AGE: Duration = Duration::from_secs(1);

/// How long the start-up check waits for the probe worker to load the vendor library.
const PROBE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A worker's metrics, and the vendor's readiness when it was asked for.
type Report = (Snapshot, Option<Probed>);

/// Where a connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Application(RoutingId),
    Shared,
}

/// Why a connection was not routed.
#[derive(Debug)]
pub enum Refusal {
    /// More new applications a second than --max-pending-applications: a flood of routing
    /// ids, counted, not logged one by one.
    Flood(String),
    /// A limit or a state an operator should see in the log.
    Limit(String),
    /// The prelude named an instance this router does not hold (the application is on
    /// another replica, or its worker is gone), or the server is stopping: the shim tries
    /// another connection, and moves only when its instance is gone.
    Elsewhere(String),
}

/// One worker process, as the router sees it.
pub struct Worker {
    pub pid: u32,
    role: Role,
    /// The instance id it tells in every welcome.
    instance: InstanceId,
    channel: Channel,
    started: Instant,
    /// Where the next report goes; one request at a time.
    report: Mutex<Option<mpsc::SyncSender<Report>>>,
    report_turn: Mutex<()>,
    /// Its first message: `Ok` once the vendor library is loaded, or the reason it failed.
    start: Mutex<Option<Result<(), String>>>,
    start_cv: Condvar,
    /// Asked to stop (a stop, or after it said it is leaving): its exit is no crash.
    asked_to_stop: AtomicBool,
    /// A hello was accepted: a real application, not only a routing id.
    authenticated: AtomicBool,
}

impl Worker {
    /// Hands over one connection.
    pub fn hand_over(
        &self,
        fd: std::os::fd::BorrowedFd,
        peer: String,
        transport: Transport,
        identity: Vec<u8>,
    ) -> std::io::Result<()> {
        self.channel.send(
            &ToWorker::Connection {
                peer,
                transport,
                identity,
            },
            Some(fd),
        )
    }

    fn stop(&self) {
        self.asked_to_stop.store(true, Ordering::Release);
        let _ = self.channel.send(&ToWorker::Stop, None);
    }

    /// Its report: metrics, and the vendor's readiness when `ready`.
    pub fn report(&self, ready: bool) -> Option<Report> {
        let _turn = self.report_turn.lock();
        let (tx, rx) = mpsc::sync_channel(1);
        *self.report.lock() = Some(tx);
        self.channel.send(&ToWorker::Report { ready }, None).ok()?;
        let r = rx.recv_timeout(REPORT_TIMEOUT).ok();
        *self.report.lock() = None;
        r
    }

    /// Waits for the worker's first message.
    fn wait_started(&self, timeout: Duration) -> Result<(), String> {
        let mut start = self.start.lock();
        let deadline = Instant::now() + timeout;
        while start.is_none() {
            if self.start_cv.wait_until(&mut start, deadline).timed_out() {
                return Err("the worker did not start in time".into());
            }
        }
        start.clone().unwrap_or(Ok(()))
    }
}

/// Every worker process of the router.
pub struct Workers {
    exe: PathBuf,
    /// The settings each worker gets, its role aside.
    template: WorkerSettings,
    shared_worker: bool,
    max_applications: usize,
    max_pending: usize,
    /// Starts of workers for applications not yet known: a token bucket (a burst of
    /// `max_applications`, then `max_pending` a second), so that a flood of made-up routing
    /// ids costs at most that many process starts a second.
    pending_starts: Mutex<(Instant, f64)>,
    routes: Mutex<HashMap<Key, Arc<Worker>>>,
    probe: Mutex<Option<Arc<Worker>>>,
    /// Workers alive (routed or not), by pid.
    alive: Mutex<HashMap<u32, Arc<Worker>>>,
    gone: Condvar,
    pub counters: RouterCounters,
    stopping: AtomicBool,
    /// The version of the vendor library's "PKCS 11" interface, as the workers loaded it.
    interface: Mutex<(u8, u8)>,
    /// Applications whose vendor instance was replaced as broken: that instance, and what
    /// their next worker inherits (the backoff step, when the outage began), until the
    /// application leaves.
    replaced: Mutex<HashMap<RoutingId, (InstanceId, Replaced)>>,
    /// Every application's calls are traced (SIGUSR1 to the router), those to come too.
    trace_all: AtomicBool,
    /// The audit log, which the workers' events go to (`--audit-log`).
    audit: std::sync::OnceLock<crate::audit::log::AuditLog>,
    /// PIN custody's lock-outs, per identity.
    lockouts: super::lockouts::Lockouts,
}

impl Workers {
    pub fn new(
        template: WorkerSettings,
        shared_worker: bool,
        max_applications: usize,
        max_pending: usize,
    ) -> Result<Arc<Self>, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this program to start workers: {e}"))?;
        Ok(Arc::new(Self {
            exe,
            template,
            shared_worker,
            max_applications,
            max_pending,
            pending_starts: Mutex::new((Instant::now(), max_applications as f64)),
            routes: Mutex::new(HashMap::new()),
            probe: Mutex::new(None),
            alive: Mutex::new(HashMap::new()),
            gone: Condvar::new(),
            counters: RouterCounters::default(),
            stopping: AtomicBool::new(false),
            interface: Mutex::new((0, 0)),
            replaced: Mutex::new(HashMap::new()),
            trace_all: AtomicBool::new(false),
            audit: std::sync::OnceLock::new(),
            lockouts: Default::default(),
        }))
    }

    /// Starts the worker that answers `/readyz` (with `--shared-worker`, the shared worker
    /// itself) and waits until it has loaded and initialised the vendor library: a module
    /// that cannot be loaded is an error at start, not at the first client.
    pub fn start_probe(self: &Arc<Self>) -> Result<(), String> {
        let (role, key) = if self.shared_worker {
            (Role::Shared, Some(Key::Shared))
        } else {
            (Role::Probe, None)
        };
        let worker = self.spawn(role)?;
        worker.wait_started(PROBE_START_TIMEOUT)?;
        if let Some(key) = key {
            self.routes.lock().insert(key, worker.clone());
        }
        *self.probe.lock() = Some(worker);
        Ok(())
    }

    /// The worker for the application named `routing_id`, started if it has none. When the
    /// prelude named the instance the application is on (`on`, not all zeros), only that
    /// worker takes the connection: none is started for an application that is on another
    /// replica behind the same address (DESIGN.md, "Shim semantics").
    pub fn route(
        self: &Arc<Self>,
        routing_id: RoutingId,
        on: InstanceId,
    ) -> Result<Arc<Worker>, Refusal> {
        if self.stopping.load(Ordering::Acquire) {
            // Its connections drain; new ones go to another replica, if there is one.
            return Err(Refusal::Elsewhere("the server is stopping".into()));
        }
        let key = if self.shared_worker {
            Key::Shared
        } else {
            Key::Application(routing_id)
        };
        let mut routes = self.routes.lock();
        // An instance this server replaced as broken (`--heal`): its replacement is here.
        let replaced_here = || {
            self.replaced
                .lock()
                .get(&routing_id)
                .is_some_and(|(instance, _)| *instance == on)
        };
        if on != [0; 16] && !replaced_here() {
            return match routes.get(&key) {
                Some(w) if w.instance == on => Ok(w.clone()),
                _ => Err(Refusal::Elsewhere(
                    "the application's instance is not on this server".into(),
                )),
            };
        }
        if let Some(w) = routes.get(&key) {
            return Ok(w.clone());
        }
        if key == Key::Shared {
            // It died (a vendor crash): a new one for every application, as at start.
            let worker = self.spawn(Role::Shared).map_err(Refusal::Limit)?;
            routes.insert(key, worker.clone());
            *self.probe.lock() = Some(worker.clone());
            return Ok(worker);
        }
        // Workers no hello reached yet (anyone can send a routing id): a budget of their own,
        // the oldest stopped to make room, so that they never keep a real application out.
        let mut pending: Vec<&Arc<Worker>> = routes
            .values()
            .filter(|w| !w.authenticated.load(Ordering::Acquire) && w.role != Role::Shared)
            .collect();
        let serving = routes.len() - pending.len();
        if serving >= self.max_applications {
            return Err(Refusal::Limit(format!(
                "the server serves {serving} applications already (--max-applications)"
            )));
        }
        let flood = |why: String| {
            self.counters
                .pending_refused
                .fetch_add(1, Ordering::Relaxed);
            Err(Refusal::Flood(format!(
                "{why} (--max-pending-applications); try again"
            )))
        };
        {
            // Starts for applications not yet known: a burst as large as --max-applications
            // (every application reconnecting after a restart), then --max-pending-applications
            // a second.
            let mut bucket = self.pending_starts.lock();
            let (at, tokens) = *bucket;
            let burst = self.max_applications as f64;
            let tokens = (tokens + at.elapsed().as_secs_f64() * self.max_pending as f64).min(burst);
            if tokens < 1.0 {
                *bucket = (Instant::now(), tokens);
                return flood(format!(
                    "more than {} new applications a second",
                    self.max_pending
                ));
            }
            *bucket = (Instant::now(), tokens - 1.0);
        }
        if pending.len() >= self.max_pending {
            pending.sort_by_key(|w| w.started);
            let oldest = pending[0].clone();
            // A real application's hello follows its worker's start within milliseconds:
            // only a worker that has waited longer than that is taken for a made-up one.
            if oldest.started.elapsed() < PENDING_MIN_AGE {
                return flood(format!(
                    "{} new applications are starting already",
                    pending.len()
                ));
            }
            self.counters
                .pending_stopped
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                pid = oldest.pid,
                "stopping the oldest worker no hello reached (--max-pending-applications)"
            );
            routes.retain(|_, w| !Arc::ptr_eq(w, &oldest));
            oldest.stop();
        }
        let worker = self
            .spawn(Role::Application(routing_id))
            .map_err(Refusal::Limit)?;
        routes.insert(key, worker.clone());
        Ok(worker)
    }

    /// Starts a worker process and its supervising thread.
    fn spawn(self: &Arc<Self>, role: Role) -> Result<Arc<Worker>, String> {
        let (ours, theirs) =
            Channel::pair().map_err(|e| format!("cannot make a worker channel: {e}"))?;
        let child_fd = theirs.raw();
        let mut command = Command::new(&self.exe);
        command
            .arg("--worker")
            .stdin(Stdio::null())
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        // SAFETY: dup2 is async-signal-safe; it places the channel at WORKER_FD, without
        // close-on-exec, in the child only.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(child_fd, WORKER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        drop(theirs);
        let mut settings = self.template.clone();
        settings.trace = self.trace_all.load(Ordering::Relaxed);
        settings.locked = self.lockouts.current();
        settings.role = role;
        if let Role::Application(id) = role {
            if let Some((_, r)) = self.replaced.lock().get(&id) {
                settings.heal.step = r.step;
                settings.heal.outage_since_ms = r.outage_since_ms;
                settings.heal.present = r.present.clone();
            }
        }
        settings.instance_id = crate::control::new_instance_id();
        let instance = settings.instance_id;
        ours.send(&ToWorker::Start(Box::new(settings)), None)
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        let worker = Arc::new(Worker {
            pid: child.id(),
            role,
            instance,
            channel: ours,
            started,
            report: Mutex::new(None),
            report_turn: Mutex::new(()),
            start: Mutex::new(None),
            start_cv: Condvar::new(),
            asked_to_stop: AtomicBool::new(false),
            authenticated: AtomicBool::new(false),
        });
        self.counters.worker_starts.fetch_add(1, Ordering::Relaxed);
        self.alive.lock().insert(worker.pid, worker.clone());
        let me = self.clone();
        let w = worker.clone();
        std::thread::Builder::new()
            .name("p11-worker".into())
            .spawn(move || me.supervise(w, child))
            .map_err(|e| format!("cannot start a worker's supervisor: {e}"))?;
        Ok(worker)
    }

    /// Reads a worker's messages until its channel closes, then reaps and logs its exit.
    fn supervise(&self, worker: Arc<Worker>, mut child: Child) {
        let pid = worker.pid;
        let app = worker.role.label();
        loop {
            match worker.channel.recv::<ToRouter>() {
                Ok(Some((message, _))) => match message {
                    ToRouter::Started { interface } => {
                        tracing::info!(
                            pid,
                            app,
                            ms = worker.started.elapsed().as_millis() as u64,
                            "worker started (vendor library loaded, PKCS#11 {}.{} interface)",
                            interface.0,
                            interface.1
                        );
                        *self.interface.lock() = interface;
                        *worker.start.lock() = Some(Ok(()));
                        worker.start_cv.notify_all();
                    }
                    ToRouter::Failed { reason } => {
                        *worker.start.lock() = Some(Err(reason));
                        worker.start_cv.notify_all();
                    }
                    ToRouter::Report { snapshot, ready } => {
                        if let Some(tx) = worker.report.lock().as_ref() {
                            let _ = tx.try_send((snapshot, ready));
                        }
                    }
                    ToRouter::Authenticated => {
                        worker.authenticated.store(true, Ordering::Release);
                    }
                    ToRouter::LoginFailed {
                        identity,
                        attempts,
                        window_ms,
                    } => {
                        if let Some(until_ms) = self.lockouts.failed(&identity, attempts, window_ms)
                        {
                            tracing::warn!(
                                identity,
                                attempts,
                                seconds = window_ms / 1000,
                                "identity locked out: wrong client secrets (PIN custody); the HSM was never asked"
                            );
                            for w in self.alive.lock().values() {
                                let locked = ToWorker::Locked {
                                    identity: identity.clone(),
                                    until_ms,
                                };
                                let _ = w.channel.send(&locked, None);
                            }
                        }
                    }
                    ToRouter::Audit { events, dropped } => {
                        if let Some(log) = self.audit.get() {
                            log.lost(dropped);
                            for event in events {
                                log.record(event);
                            }
                        }
                    }
                    ToRouter::Abandoned { slow } => {
                        self.counters.abandoned[slow as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    ToRouter::Leaving { replaced } => {
                        // Noted first: the application's next worker inherits the backoff.
                        self.note_replaced(&worker, replaced);
                        self.unroute(&worker);
                        worker.stop();
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(pid, error = %e, "worker channel failed");
                    break;
                }
            }
        }
        self.unroute(&worker);
        let status = child.wait();
        if worker.start.lock().is_none() {
            *worker.start.lock() = Some(Err("the worker exited at start".into()));
            worker.start_cv.notify_all();
        }
        let asked = worker.asked_to_stop.load(Ordering::Acquire);
        match status {
            Ok(s) if s.success() && asked => tracing::info!(pid, app, "worker exited"),
            Ok(s) => {
                self.counters.worker_crashes.fetch_add(1, Ordering::Relaxed);
                match s.signal() {
                    Some(sig) => tracing::error!(
                        pid,
                        app,
                        signal = sig,
                        "worker killed by signal {sig}{}; only its application's connections are affected",
                        if s.core_dumped() { " (core dumped)" } else { "" }
                    ),
                    None => tracing::error!(
                        pid,
                        app,
                        status = s.code().unwrap_or(-1),
                        "worker exited unexpectedly; only its application's connections are affected"
                    ),
                }
            }
            Err(e) => tracing::error!(pid, error = %e, "cannot reap a worker"),
        }
        let mut alive = self.alive.lock();
        alive.remove(&pid);
        self.gone.notify_all();
    }

    /// Remembers, for the application of `worker` leaving, whether its vendor instance is
    /// replaced as broken (its next worker inherits the backoff) or the application is gone.
    fn note_replaced(&self, worker: &Worker, replaced: Option<Replaced>) {
        let Role::Application(id) = worker.role else {
            return;
        };
        let mut known = self.replaced.lock();
        match replaced {
            Some(r) => {
                self.counters.reinitialisations[r.by as usize].fetch_add(1, Ordering::Relaxed);
                known.insert(id, (worker.instance, r));
            }
            None => {
                known.remove(&id);
            }
        }
    }

    /// Routes nothing more to `worker`.
    fn unroute(&self, worker: &Arc<Worker>) {
        self.routes.lock().retain(|_, w| !Arc::ptr_eq(w, worker));
        let mut probe = self.probe.lock();
        if probe.as_ref().is_some_and(|p| Arc::ptr_eq(p, worker)) {
            *probe = None;
        }
    }

    /// The vendor library as the probe worker sees it now (restarted if it died): whether it
    /// is ready, and which tokens answer.
    pub fn probe(self: &Arc<Self>) -> Probed {
        let probe = self.probe.lock().clone();
        let probe = match probe {
            Some(p) => p,
            None => {
                if self.stopping.load(Ordering::Acquire) || self.start_probe().is_err() {
                    return Probed::default();
                }
                match self.probe.lock().clone() {
                    Some(p) => p,
                    None => return Probed::default(),
                }
            }
        };
        probe
            .report(true)
            .and_then(|(_, probed)| probed)
            .unwrap_or_default()
    }

    /// The sum of every worker's report, and the number of workers running.
    pub fn snapshot(&self) -> (Snapshot, usize) {
        let workers: Vec<Arc<Worker>> = self.alive.lock().values().cloned().collect();
        let mut total = Snapshot::default();
        for w in &workers {
            if let Some((s, _)) = w.report(false) {
                total.add(s);
            }
        }
        (total, workers.len())
    }

    /// The version of the vendor library's "PKCS 11" interface (0.0 before a worker loaded
    /// it).
    pub fn interface(&self) -> (u8, u8) {
        *self.interface.lock()
    }

    /// Applications with a worker.
    pub fn application_count(&self) -> usize {
        self.routes
            .lock()
            .keys()
            .filter(|k| matches!(k, Key::Application(_)))
            .count()
    }

    /// Sends SIGHUP's reload to every worker.
    /// Opens the audit log the workers' events go to.
    pub fn open_audit(&self, path: &std::path::Path, max_bytes: u64) -> Result<(), String> {
        let log = crate::audit::log::AuditLog::open(
            path,
            max_bytes,
            self.counters.audit_written.clone(),
            self.counters.audit_dropped.clone(),
        )?;
        let _ = self.audit.set(log);
        Ok(())
    }

    /// Writes the audit events queued and closes the log (after the workers stopped).
    pub fn close_audit(&self) {
        if let Some(log) = self.audit.get() {
            log.close();
        }
    }

    /// Every application's call trace on or off, those to come included.
    pub fn trace(&self, on: bool) {
        self.trace_all.store(on, Ordering::Relaxed);
        let alive = self.alive.lock();
        for w in alive.values() {
            let _ = w.channel.send(&ToWorker::Trace { on }, None);
        }
        tracing::info!(
            workers = alive.len(),
            "call trace {} for every application",
            if on { "on" } else { "off" }
        );
    }

    pub fn reload(&self) {
        for w in self.alive.lock().values() {
            let _ = w.channel.send(&ToWorker::Reload, None);
        }
    }

    /// Tells every worker to stop and waits for them (bounded); kills those still running.
    pub fn stop(&self, timeout: Duration) {
        self.stopping.store(true, Ordering::Release);
        let workers: Vec<Arc<Worker>> = self.alive.lock().values().cloned().collect();
        for w in &workers {
            w.stop();
        }
        let deadline = Instant::now() + timeout;
        let mut alive = self.alive.lock();
        while !alive.is_empty() {
            if self.gone.wait_until(&mut alive, deadline).timed_out() {
                for pid in alive.keys() {
                    tracing::warn!(pid, "worker did not stop in time; killing it");
                    // SAFETY: kill(2) on a child of ours that has not been reaped yet.
                    unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                }
                let _ = self.gone.wait_for(&mut alive, Duration::from_secs(2));
                break;
            }
        }
    }
}
