//! The worker side: one process per application (or one for all, `--shared-worker`), started
//! by the router as `pkcs11-proxy-server --worker` with its control channel at
//! [`crate::control::WORKER_FD`]. It loads the vendor library, owns the connections the router hands
//! over (TLS, hello and every call happen here: no extra hop), and answers the router's
//! requests for reports and stops (DESIGN.md, "Server semantics").
//!
//! Lifetime of an application's worker: the vendor library is C_Initialized at the
//! application's first hello with the application's own arguments, and C_Finalized at its
//! C_Finalize; a worker whose application finalised, or had no connection for the resume
//! grace period, tells the router it is leaving, and exits when told to stop. The control
//! channel closing (the router is gone) stops it too: no orphans.

mod application;
mod audit;
mod backend;
mod confine;
mod connection;
mod custody;
mod deadline;
mod dispatch;
mod heal;
mod identify;
mod limits;
mod mechanism;
mod readiness;
mod state;
mod template;
mod trace;
mod ulong;

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex};
use protocol::message::Function;
use protocol::stream::Stream;

use self::backend::Backend;
use self::connection::Handed;
use self::state::WorkerState;
use crate::control::{Channel, Replaced, Role, ToRouter, ToWorker, Transport, WorkerSettings};
use crate::rv;
use crate::startups::{Limits, Startups};
use crate::tls::TlsListener;

/// Stack of each connection thread: vendor libraries get the room they need.
const CONNECTION_STACK: usize = 1024 * 1024;

/// How long a stop waits for calls in flight before finalising anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The running worker: its state and its live connections (to wake them at a stop).
struct Worker {
    state: WorkerState,
    channel: Channel,
    /// Names this worker's application in logs and metrics (not secret).
    label: String,
    next_conn: AtomicU64,
    /// Connections handed over and not yet ended (their handshake included), to wake them at
    /// a stop; how many are open, for the limit and the lifetime.
    connections: Mutex<HashMap<u64, Stream>>,
    /// When the last connection ended.
    idle_since: Mutex<Instant>,
    drained: Condvar,
    /// Connections before their hello (anyone who learnt the routing id can open them).
    startups: Arc<Startups>,
    /// The router was told that a hello was accepted.
    announced: AtomicBool,
    /// A call was abandoned at its deadline: a thread is stuck inside the vendor library.
    hung: AtomicBool,
    /// The tokens the readiness probe saw.
    known: readiness::Known,
}

/// Most connections of one application before their hello.
const MAX_PRE_HELLO: usize = 256;

/// Runs a worker process until it is told to stop or its router goes away.
pub fn run() -> ExitCode {
    // SAFETY: this process was started by the router as a worker, with the channel at
    // WORKER_FD; nothing else in it uses that descriptor.
    let channel = unsafe { Channel::inherited() };
    // A terminal's Ctrl-C, systemd's SIGTERM to the whole control group, a hang-up of an
    // orphaned process group: the router orders the stop (and its reload), over the control
    // channel, so that calls in flight finish and the vendor instance is finalised.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: ignoring a signal has no preconditions.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // Before any thread starts: they inherit the handlers' mask.
    trace::install();
    let settings = match channel.recv::<ToWorker>() {
        Ok(Some((ToWorker::Start(s), _))) => *s,
        other => {
            eprintln!("pkcs11-proxy-server worker: no start message from the router ({other:?}); run the server without --worker");
            return ExitCode::FAILURE;
        }
    };
    crate::process::init_logging(settings.json_logs);
    crate::process::raise_file_limit();
    let label = settings.role.label();
    let span = tracing::info_span!("worker", app = %label);
    let _entered = span.enter();
    trace::set(settings.trace);
    let sink = match settings
        .audit
        .map(|level| channel.try_clone().map(|c| (c, level)))
    {
        Some(Ok((c, level))) => Some(crate::audit::Sink::new(
            level,
            label.clone(),
            Box::new(move |events, dropped| {
                let n = events.len();
                if let Err(e) = c.send(&ToRouter::Audit { events, dropped }, None) {
                    tracing::error!(error = %e, events = n, "audit events could not be sent to the router");
                }
            }),
        )),
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot open the audit channel");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let mut state = match start(settings) {
        Ok(s) => s,
        Err(reason) => {
            tracing::error!("{reason}");
            let _ = channel.send(&ToRouter::Failed { reason }, None);
            return ExitCode::FAILURE;
        }
    };
    state.audit = sink;
    state.router = channel.try_clone().ok();
    let interface = state.backend.interface_version();
    if channel
        .send(&ToRouter::Started { interface }, None)
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    // Before their hello, an application's connections are bounded by --max-connections
    // too, apart from its authenticated ones; the oldest goes to make room, whatever its
    // address (the application's own may share it, behind a NAT).
    let pre_hello = state.settings.max_connections.min(MAX_PRE_HELLO);
    let startups = Startups::new(
        Limits {
            start: pre_hello,
            rate: 100,
            full: pre_hello,
            per_peer: usize::MAX,
        },
        "hello",
    );
    let worker = Arc::new(Worker {
        state,
        channel,
        label,
        next_conn: AtomicU64::new(0),
        connections: Mutex::new(HashMap::new()),
        idle_since: Mutex::new(Instant::now()),
        drained: Condvar::new(),
        startups,
        announced: AtomicBool::new(false),
        hung: AtomicBool::new(false),
        known: Default::default(),
    });
    if matches!(worker.state.settings.role, Role::Application(_))
        && worker.state.settings.heal.enabled
    {
        worker.start_healing(&span);
        worker.start_watchdog(&span);
    }
    if worker.state.audit.is_some() {
        worker.background("p11-audit", &span, |worker| {
            if let Some(sink) = &worker.state.audit {
                sink.run();
            }
        });
    }
    worker.control_loop(&span);
    worker.stop();
    ExitCode::SUCCESS
}

/// Loads the vendor library (and, for a shared or probe worker, initialises it) and the TLS
/// material.
fn start(settings: WorkerSettings) -> Result<WorkerState, String> {
    let policy = crate::policy::Policy::load(
        &settings.deny_functions,
        &settings.deny_mechanisms,
        settings.policy.clone(),
    )?;
    let backend = Backend::load(&settings.module)?;
    let tls = settings.tls.clone().map(TlsListener::new).transpose()?;
    let initialised = !matches!(settings.role, Role::Application(_));
    if initialised {
        let r = backend.initialize(Some(backend::os_locking()), settings.init_args.as_deref());
        if r != CKR_OK {
            return Err(format!(
                "{}: C_Initialize failed with {}",
                settings.module,
                rv::name(r)
            ));
        }
    }
    Ok(WorkerState::new(
        settings,
        policy,
        backend,
        tls,
        initialised,
    ))
}

impl Worker {
    /// Serves the router's messages until it says stop or goes away.
    fn control_loop(self: &Arc<Self>, span: &tracing::Span) {
        let mut lifecycle = false;
        loop {
            let (message, fd) = match self.channel.recv::<ToWorker>() {
                Ok(Some(m)) => m,
                Ok(None) => {
                    tracing::info!("the router is gone; stopping");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "control channel failed; stopping");
                    return;
                }
            };
            match message {
                ToWorker::Connection {
                    peer,
                    transport,
                    identity,
                } => {
                    let Some(fd) = fd else {
                        tracing::error!("a connection was handed over without its socket");
                        continue;
                    };
                    self.accept(fd, peer, transport, identity, span);
                    if !lifecycle {
                        lifecycle = true;
                        self.start_lifecycle(span);
                    }
                }
                ToWorker::Reload => {
                    self.state.policy.reload();
                    if let Some(tls) = &self.state.tls {
                        match tls.reload() {
                            Ok(()) => {
                                tracing::info!("TLS certificate, key and client CA reloaded")
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "TLS reload failed; keeping the previous material")
                            }
                        }
                    }
                }
                ToWorker::Trace { on } => trace::set(on),
                ToWorker::Locked { identity, until_ms } => {
                    tracing::warn!(
                        identity,
                        "identity locked out (PIN custody): too many wrong client secrets"
                    );
                    self.state.lock_out(identity, until_ms);
                }
                ToWorker::Report { ready } => {
                    let mut snapshot = self.state.metrics.snapshot();
                    (snapshot.applications, snapshot.sessions) = self.state.census(&self.label);
                    let ready = ready.then(|| readiness::probe(&self.state, &self.known));
                    let _ = self
                        .channel
                        .send(&ToRouter::Report { snapshot, ready }, None);
                }
                ToWorker::Stop => return,
                ToWorker::Start(_) => tracing::warn!("a second start message; ignored"),
            }
        }
    }

    /// Takes over one connection and serves it on its own thread.
    fn accept(
        self: &Arc<Self>,
        fd: OwnedFd,
        peer: String,
        transport: Transport,
        identity: Vec<u8>,
        span: &tracing::Span,
    ) {
        let stream = match transport {
            Transport::Tcp | Transport::Tls => Stream::Tcp(TcpStream::from(fd)),
            Transport::Unix => Stream::Unix(UnixStream::from(fd)),
        };
        let state = &self.state;
        if state.leaving.load(Ordering::Acquire) {
            // Routed here before the router learnt that this worker is leaving: the client
            // connects again and reaches a new worker.
            tracing::info!(%peer, "connection closed: this worker is leaving");
            return;
        }
        let clone = match stream.try_clone() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot track a connection; closed");
                return;
            }
        };
        let peer_ip = match &stream {
            Stream::Tcp(s) => s.peer_addr().ok().map(|a| a.ip()),
            _ => None,
        };
        let Some(ticket) = self.startups.admit(peer_ip, stream.as_fd()) else {
            state
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut conns = self.connections.lock();
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        conns.insert(id, clone);
        drop(conns);
        let worker = self.clone();
        let span = span.clone();
        let announce = self.clone();
        let handed = Handed {
            id,
            stream,
            ticket: Some(ticket),
            on_hello: Box::new(move || announce.hello_accepted()),
            tls: transport == Transport::Tls,
            peer,
            identity,
        };
        let spawned = std::thread::Builder::new()
            .name("p11-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                let _entered = span.enter();
                connection::serve(&worker.state, handed);
                worker.ended(id);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a connection thread; connection dropped");
            self.ended(id);
        }
    }

    /// Tells the router, once, that this worker serves a real application.
    fn hello_accepted(&self) {
        if !self.announced.swap(true, Ordering::AcqRel) {
            let _ = self.channel.send(&ToRouter::Authenticated, None);
        }
    }

    /// A connection ended.
    fn ended(&self, id: u64) {
        let mut conns = self.connections.lock();
        conns.remove(&id);
        if conns.is_empty() {
            *self.idle_since.lock() = Instant::now();
            self.drained.notify_all();
        }
    }

    /// Watches the worker's lifetime: a shared worker closes the sessions of applications
    /// that did not come back; an application's worker leaves when its application is done
    /// (finalised) or gone for the resume grace period, and at once when no hello ever came.
    fn start_lifecycle(self: &Arc<Self>, span: &tracing::Span) {
        let grace = self.state.settings.resume_grace;
        let tick = (grace / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        self.background("p11-lifecycle", span, move |worker| {
            let s = &worker.state;
            loop {
                std::thread::sleep(tick);
                match s.settings.role {
                    Role::Application(_) => {
                        if worker.connections.lock().is_empty()
                            && (s.done()
                                || !s.bound()
                                || worker.idle_since.lock().elapsed() >= grace)
                        {
                            if worker.leave(None) {
                                tracing::info!(finalised = s.done(), "application gone; leaving");
                            }
                            return;
                        }
                    }
                    Role::Shared | Role::Probe => s.reap(),
                }
            }
        });
    }

    /// Runs `work` on a thread of its own named `name`, in the worker's `span`.
    fn background(
        self: &Arc<Self>,
        name: &str,
        span: &tracing::Span,
        work: impl FnOnce(&Worker) + Send + 'static,
    ) {
        let worker = self.clone();
        let span = span.clone();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _entered = span.enter();
                work(&worker);
            });
        if let Err(e) = spawned {
            tracing::error!(thread = name, error = %e, "cannot start a worker thread");
        }
    }

    /// Tells the router, once, that this worker is leaving (`replaced`: for a new vendor
    /// instance); connections still handed over are closed. Whether this call told it.
    fn leave(&self, replaced: Option<Replaced>) -> bool {
        if self.state.leaving.swap(true, Ordering::AcqRel) {
            return false;
        }
        let _ = self.channel.send(&ToRouter::Leaving { replaced }, None);
        true
    }

    /// Heals what the HSM breaks (`--heal`, [`heal`]): once the broken vendor instance's
    /// replacement is due, the worker leaves for a new one. Its connections end after the
    /// call each is serving, so the shim's next call reaches a new worker, where its recovery
    /// brings the application's sessions, login and handles back.
    fn start_healing(self: &Arc<Self>, span: &tracing::Span) {
        self.background("p11-heal", span, |worker| {
            let broken = worker.state.heal.wait_replacement();
            worker.replace(&broken);
        });
    }

    /// Leaves for a new vendor instance (once): the connections end after the call each is
    /// serving, and those waiting for a request retire it ([`connection`]).
    fn replace(&self, broken: &heal::Broken) {
        if !self.leave(Some(broken.replaced.clone())) {
            return;
        }
        tracing::warn!(
            reason = broken.by.label(),
            broken_ms = broken.at.elapsed().as_millis() as u64,
            replacement = broken.replaced.step,
            "replacing the broken vendor instance: the application's next call runs on a new one"
        );
        for s in self.connections.lock().values() {
            s.shutdown(Shutdown::Read);
        }
    }

    /// Abandons the vendor calls that outlive their deadline ([`deadline`]): the caller gets
    /// CKR_DEVICE_ERROR, the instance is broken ([`heal::Heal::hung`]) and replaced as any
    /// broken one. The stuck thread's connection no longer counts for the drain at stop, and
    /// the worker exits without finalising ([`Worker::stop`]).
    fn start_watchdog(self: &Arc<Self>, span: &tracing::Span) {
        self.background("p11-deadline", span, |worker| worker.watch_deadlines());
    }

    fn watch_deadlines(&self) {
        let s = &self.state;
        let initialize = s.watchdog.limit(Function::Initialize.descriptor());
        loop {
            std::thread::sleep(s.watchdog.tick());
            let abandoned = s.watchdog.sweep(Instant::now());
            let hello = initialize
                .filter(|_| !self.hung.load(Ordering::Acquire))
                .and_then(|l| Some((s.initialising_past(l.after)?, l)));
            if abandoned.is_empty() && hello.is_none() {
                continue;
            }
            self.hung.store(true, Ordering::Release);
            s.heal.hung();
            // Leaving before the callers learn of it, when the replacement is due at once:
            // their next requests reach a leaving worker, which retires them (not
            // executed), and so run on the new instance.
            if let Some(broken) = s.heal.due() {
                self.replace(&broken);
            }
            for a in abandoned {
                a.answer();
                s.metrics.call(a.function, CKR_DEVICE_ERROR, a.limit.after);
                tracing::error!(
                    function = a.function,
                    deadline_s = a.limit.after.as_secs(),
                    "a vendor call outlived its deadline: abandoned, answered CKR_DEVICE_ERROR; the application's next call runs on a new vendor instance"
                );
                self.count_abandoned(a.limit, a.connection);
            }
            // A hello's C_Initialize: the hellos waiting for it get the broken instance's
            // code (`WorkerState::init_for`).
            if let Some((connection, limit)) = hello {
                tracing::error!(
                    deadline_s = limit.after.as_secs(),
                    "the vendor's C_Initialize outlived its deadline: abandoned; the application's next connection reaches a new vendor instance"
                );
                self.count_abandoned(limit, connection);
                s.wake_hellos();
            }
        }
    }

    /// Counts an abandoned call with the router, then ends its connection (counted first:
    /// the end may let the worker exit).
    fn count_abandoned(&self, limit: deadline::Limit, connection: u64) {
        let counted = ToRouter::Abandoned { slow: limit.slow };
        let _ = self.channel.send(&counted, None);
        self.ended(connection);
    }

    /// Lets calls in flight finish (bounded), closes the sessions and finalises the vendor
    /// library if it is still initialised.
    fn stop(&self) {
        let state = &self.state;
        state.leaving.store(true, Ordering::Release);
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
                    "calls still in flight at stop; finalising anyway"
                );
                break;
            }
        }
        drop(conns);
        if self.hung.load(Ordering::Acquire) {
            // Every caller gets an answer, none a closed connection.
            let stuck = state.watchdog.abandon_all();
            for a in &stuck {
                a.answer();
            }
            let stuck = stuck.len();
            // C_Finalize, or the library's destructors, could block on the stuck thread.
            tracing::warn!(
                stuck,
                "a vendor call never returned: exiting without finalising the vendor library"
            );
            // SAFETY: _exit(2) ends the process at once; nothing of it is used after.
            unsafe { libc::_exit(0) };
        }
        if state.initialised() {
            let sessions = state.take_every_session();
            if !matches!(state.settings.role, Role::Application(_)) {
                state.close_sessions(&sessions);
            }
            let r = state.backend.finalize();
            tracing::info!(rv = %rv::name(r), "vendor library finalised; worker stopped");
        } else {
            tracing::debug!("worker stopped");
        }
        // The last calls' audit records go before the worker does.
        if let Some(sink) = &state.audit {
            sink.flush();
        }
    }
}
