//! The router side: the listening sockets, the routing of each accepted connection to its
//! application's worker, the workers' lifetimes, the metrics and health endpoints, and the
//! orderly stop. The router never loads the vendor library (DESIGN.md, "Server semantics").

mod http;
mod listener;
mod lockouts;
mod state;
mod workers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::LogFormat;
use crate::config::Settings;
use crate::control::{HealSettings, Role, WorkerSettings};
use crate::startups::Startups;

use self::listener::Listener;
use self::state::{Access, Router};
use self::workers::Workers;

/// Threads accepting on each listener.
const ACCEPTORS: usize = 2;

/// How long a stop waits for the workers (their own drain is 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the server until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> Result<(), String> {
    crate::policy::Denials::new(&settings.deny_functions, &settings.deny_mechanisms)?;
    let identities = match &settings.policy {
        Some(path) => Some(crate::policy::Identities::load(path)?.len()),
        None => None,
    };
    if let Some(tls) = &settings.tls {
        tls.load()?;
    }
    crate::process::raise_file_limit();
    let signals = block_stop_signals()?;
    let access = Access {
        unix_mode: settings.unix_mode,
        allowed_uids: settings.allowed_uids.clone(),
        tls: settings.tls.is_some(),
        allow_plaintext: settings.allow_plaintext,
    };
    let template = WorkerSettings {
        role: Role::Probe,
        instance_id: [0; 16],
        module: settings.module.clone(),
        init_args: settings.init_args.clone(),
        tls: settings.tls.clone(),
        handshake_timeout: settings.handshake_timeout,
        idle_timeout: settings.idle_timeout,
        resume_grace: settings.resume_grace,
        max_connections: settings.max_connections,
        deny_functions: settings.deny_functions.clone(),
        deny_mechanisms: settings.deny_mechanisms.clone(),
        policy: settings.policy.clone(),
        audit: settings.audit.as_ref().map(|(_, level, _)| *level),
        locked: Vec::new(),
        json_logs: settings.log_format == LogFormat::Json,
        heal: HealSettings {
            // One vendor instance for every application: replacing it is not one
            // application's business.
            enabled: settings.heal && !settings.shared_worker,
            call_deadline: settings.call_deadline,
            slow_call_deadline: settings.slow_call_deadline,
            ..HealSettings::default()
        },
        trace: false,
    };
    let workers = Workers::new(
        template,
        settings.shared_worker,
        settings.max_applications,
        settings.max_pending_applications,
    )?;
    if let Some((path, level, max_bytes)) = &settings.audit {
        workers.open_audit(path, *max_bytes)?;
        tracing::info!(path = %path.display(), ?level, "audit log open");
    }
    workers.start_probe()?;
    tracing::info!(
        module = settings.module,
        "vendor library loaded and initialised by a worker"
    );
    if settings.shared_worker {
        tracing::warn!("--shared-worker: every application is served by one vendor library instance; its login is shared by all (one application's C_Login lets every application use private keys, one C_Logout logs all out)");
    }
    let listeners = match settings
        .addresses
        .iter()
        .map(|a| Listener::bind(a, &access))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(mut l) => {
            l.extend(listener::inherited());
            l
        }
        Err(e) => {
            workers.stop(STOP_TIMEOUT);
            return Err(e);
        }
    };
    if !settings.deny_functions.is_empty() || !settings.deny_mechanisms.is_empty() {
        tracing::info!(functions = ?settings.deny_functions, mechanisms = ?settings.deny_mechanisms, "policy: refusing these to every client");
    }
    if let (Some(path), Some(n)) = (&settings.policy, identities) {
        tracing::info!(policy = %path.display(), identities = n, "policy: serving these identities only");
    }
    let listeners: Vec<Arc<Listener>> = listeners.into_iter().map(Arc::new).collect();
    let router = Arc::new(Router {
        access,
        workers,
        handshake_timeout: settings.handshake_timeout,
        startups: Startups::new(settings.startups, "routing prelude"),
        stopping: AtomicBool::new(false),
    });
    let mut bound: Vec<String> = listeners.iter().map(|l| l.local_address()).collect();
    if let Some(addr) = settings.metrics_listen {
        let local = http::serve(router.clone(), addr)?;
        bound.push(format!("http://{local}/metrics"));
    }
    // Two accepting threads a listener: a flood of connections is taken off the queue (and
    // dropped or refused) at the pace of two, so that a real client's connection waits less.
    for l in &listeners {
        for _ in 0..ACCEPTORS {
            let (r, l) = (router.clone(), l.clone());
            std::thread::Builder::new()
                .name("p11-accept".into())
                .spawn(move || listener::accept_loop(r, l))
                .map_err(|e| format!("cannot start accept thread: {e}"))?;
        }
    }
    eprintln!("pkcs11-proxy-server: listening on {}", bound.join(" "));
    let sig = loop {
        match wait_for_signal(&signals) {
            libc::SIGHUP => router.reload(),
            libc::SIGUSR1 => router.workers.trace(true),
            libc::SIGUSR2 => router.workers.trace(false),
            sig => break sig,
        }
    };
    tracing::info!(
        signal = sig,
        applications = router.workers.application_count(),
        "stopping"
    );
    // Stops accepting (an accepting thread whose accept fails while stopping returns), then
    // has every worker finish its calls in flight (bounded), close its sessions and finalise
    // its vendor instance.
    router.stopping.store(true, Ordering::Release);
    for l in &listeners {
        l.stop();
    }
    router.workers.stop(STOP_TIMEOUT);
    router.workers.close_audit();
    tracing::info!("stopped");
    Ok(())
}

/// Blocks SIGTERM, SIGINT, SIGHUP (TLS reload), SIGUSR1 and SIGUSR2 (every application's call
/// trace on and off: `crate::worker` `trace`) in every thread (threads inherit the mask) so
/// that the main thread alone receives them with sigwait.
fn block_stop_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err("cannot block SIGTERM/SIGINT".into());
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: set is a valid signal set; sig is writable.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
