//! `pkcs11-proxy-server`: serves a vendor PKCS#11 library to pkcs11-shim clients.
//!
//! ```text
//! pkcs11-proxy-server --module /usr/lib/softhsm/libsofthsm2.so --listen tcp://127.0.0.1:2345
//! pkcs11-proxy-server --config /etc/pkcs11-proxy/server.toml
//! pkcs11-proxy-server /usr/lib/softhsm/libsofthsm2.so [-]      # address from PKCS11_DAEMON_SOCKET
//! ```

mod backend;
mod config;
mod connection;
mod dispatch;
mod listener;
mod login;
mod mechanism;
mod metrics;
mod objects;
mod policy;
mod rv;
mod server;
mod template;
mod tls;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use crate::config::{Args, LogFormat, Settings};
use crate::connection::{Limits, Registry, Shared};
use crate::listener::{Access, Listener};
use crate::login::Logins;
use crate::server::Server;

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::load(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pkcs11-proxy-server: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(settings.log_format);
    if args.check_config {
        return match check(&settings) {
            Ok(()) => {
                println!("configuration OK\n{settings:#?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pkcs11-proxy-server: configuration error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("pkcs11-proxy-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `--check-config`: what can be checked without loading the vendor library or binding.
fn check(settings: &Settings) -> Result<(), String> {
    if !std::path::Path::new(&settings.module).exists() {
        return Err(format!("module {}: no such file", settings.module));
    }
    policy::Policy::new(&settings.deny_functions, &settings.deny_mechanisms)?;
    if let Some(tls) = &settings.tls {
        tls.load()?;
    }
    Ok(())
}

fn run(settings: Settings) -> Result<(), String> {
    let policy = policy::Policy::new(&settings.deny_functions, &settings.deny_mechanisms)?;
    raise_file_limit();
    let signals = block_stop_signals()?;
    let backend = backend::Backend::load(&settings.module, settings.init_args.as_deref())?;
    let (major, minor) = backend.interface_version();
    tracing::info!(
        module = settings.module,
        "vendor library loaded and initialised (PKCS#11 {major}.{minor} interface)"
    );
    let access = Access {
        unix_mode: settings.unix_mode,
        allowed_uids: settings.allowed_uids.clone(),
        tls: settings.tls.clone(),
        allow_plaintext: settings.allow_plaintext,
    };
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
            backend.finalize();
            return Err(e);
        }
    };
    if settings.shared_login {
        tracing::warn!("--shared-login: clients share the vendor's login; one client's C_Login lets every client use private keys, one client's C_Logout logs all out");
    }
    let logins = Logins::new(&backend, settings.shared_login);
    let limits = Limits {
        handshake_timeout: settings.handshake_timeout,
        idle_timeout: settings.idle_timeout,
        max_connections: settings.max_connections,
        resume_grace: settings.resume_grace,
    };
    if !policy.is_empty() {
        tracing::info!(functions = ?settings.deny_functions, mechanisms = ?settings.deny_mechanisms, "policy: refusing these to every client");
    }
    let shared = Shared {
        policy,
        backend,
        limits,
        registry: Registry::default(),
        logins,
        objects: Default::default(),
        metrics: Default::default(),
        instance_id: random_id(),
    };
    let server = Arc::new(Server::new(shared, listeners, access));
    let mut bound: Vec<String> = server
        .listeners
        .iter()
        .map(Listener::local_address)
        .collect();
    if let Some(addr) = settings.metrics_listen {
        let local = metrics::serve(server.clone(), addr)?;
        bound.push(format!("http://{local}/metrics"));
    }
    if !settings.resume_grace.is_zero() {
        let s = server.clone();
        std::thread::Builder::new()
            .name("p11-reaper".into())
            .spawn(move || s.reap_departed())
            .map_err(|e| format!("cannot start the reaper thread: {e}"))?;
    }
    for i in 0..server.listeners.len() {
        let s = server.clone();
        std::thread::Builder::new()
            .name("p11-accept".into())
            .spawn(move || listener::accept_loop(s, i))
            .map_err(|e| format!("cannot start accept thread: {e}"))?;
    }
    eprintln!("pkcs11-proxy-server: listening on {}", bound.join(" "));
    let sig = loop {
        match wait_for_signal(&signals) {
            libc::SIGHUP => server.reload(),
            sig => break sig,
        }
    };
    tracing::info!(
        signal = sig,
        apps = server.shared.registry.app_count(),
        "stopping"
    );
    server.stop();
    Ok(())
}

/// Raises the open-file limit to its hard maximum: every client connection is a descriptor.
fn raise_file_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP (TLS reload) in every thread (threads inherit the mask) so that the main
/// thread alone receives them with sigwait.
fn block_stop_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
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

/// 16 random bytes from the kernel (getrandom(2)); a new instance id at every start.
fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    // SAFETY: id is writable for its length.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize {
        // Uniqueness, not secrecy, is what an instance id needs.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        id[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
    }
    id
}
