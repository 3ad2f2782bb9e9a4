//! `pkcs11-proxy-server`: serves a vendor PKCS#11 library to pkcs11-shim clients.
//!
//! ```text
//! pkcs11-proxy-server --module /usr/lib/softhsm/libsofthsm2.so --listen tcp://127.0.0.1:2345
//! pkcs11-proxy-server /usr/lib/softhsm/libsofthsm2.so [-]      # address from PKCS11_DAEMON_SOCKET
//! ```

mod backend;
mod connection;
mod dispatch;
mod listener;
mod login;
mod mechanism;
mod objects;
mod rv;
mod server;
mod template;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use protocol::address::Address;

use crate::connection::{Registry, Shared};
use crate::listener::Listener;
use crate::login::Logins;
use crate::server::Server;

/// Serves a vendor PKCS#11 library to pkcs11-shim clients over TCP or Unix sockets.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The vendor PKCS#11 library to load.
    #[arg(long, value_name = "PATH")]
    module: Option<String>,

    /// Address to listen on (repeatable): tcp://HOST:PORT, unix:///path or /path.
    #[arg(long, value_name = "ADDRESS")]
    listen: Vec<String>,

    /// String passed as pReserved to the vendor library's C_Initialize.
    #[arg(long, value_name = "STRING")]
    init_args: Option<String>,

    /// Let every client share the vendor library's login state (the old proxies' behaviour):
    /// one client's C_Login logs all clients in, one client's C_Logout logs all out.
    #[arg(long)]
    shared_login: bool,

    /// Compatible form of the old pkcs11-daemon: LIB [-], address from PKCS11_DAEMON_SOCKET.
    /// The `-` (stay in the foreground) is accepted; this server never daemonises.
    #[arg(value_name = "LIB")]
    legacy: Vec<String>,
}

/// Where the compatible form takes its address.
const DAEMON_SOCKET_ENV: &str = "PKCS11_DAEMON_SOCKET";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("pkcs11-proxy-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn resolve_args(args: &Args) -> Result<(String, Vec<Address>), String> {
    let legacy: Vec<&String> = args.legacy.iter().filter(|a| a.as_str() != "-").collect();
    let module = match (&args.module, legacy.as_slice()) {
        (Some(m), []) => m.clone(),
        (None, [m]) => (*m).clone(),
        (Some(_), _) => {
            return Err("give the module either with --module or as LIB, not both".into())
        }
        (None, []) => return Err("no PKCS#11 module given (--module PATH)".into()),
        (None, _) => return Err(format!("unexpected arguments: {:?}", args.legacy)),
    };
    let mut listen = args.listen.clone();
    if listen.is_empty() {
        match std::env::var(DAEMON_SOCKET_ENV) {
            Ok(v) if !v.trim().is_empty() => listen.push(v),
            _ => {
                return Err(format!(
                    "no address to listen on (--listen ADDRESS or {DAEMON_SOCKET_ENV})"
                ))
            }
        }
    }
    let addresses = listen
        .iter()
        .map(|a| Address::parse_list(a))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok((module, addresses))
}

fn run(args: Args) -> Result<(), String> {
    let (module, addresses) = resolve_args(&args)?;
    raise_file_limit();
    let signals = block_stop_signals()?;
    let backend = backend::Backend::load(&module, args.init_args.as_deref())?;
    let (major, minor) = backend.interface_version();
    tracing::info!(
        module,
        "vendor library loaded and initialised (PKCS#11 {major}.{minor} interface)"
    );
    let listeners = match addresses
        .iter()
        .map(Listener::bind)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(l) => l,
        Err(e) => {
            backend.finalize();
            return Err(e);
        }
    };
    if args.shared_login {
        tracing::warn!("--shared-login: clients share the vendor's login; one client's C_Login lets every client use private keys, one client's C_Logout logs all out");
    }
    let logins = Logins::new(&backend, args.shared_login);
    let shared = Shared {
        backend,
        registry: Registry::default(),
        logins,
        objects: Default::default(),
        instance_id: random_id(),
    };
    let server = Arc::new(Server::new(shared, listeners));
    let bound: Vec<String> = server
        .listeners
        .iter()
        .map(Listener::local_address)
        .collect();
    for i in 0..server.listeners.len() {
        let s = server.clone();
        std::thread::Builder::new()
            .name("p11-accept".into())
            .spawn(move || listener::accept_loop(s, i))
            .map_err(|e| format!("cannot start accept thread: {e}"))?;
    }
    eprintln!("pkcs11-proxy-server: listening on {}", bound.join(" "));
    let sig = wait_for_signal(&signals);
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

/// Blocks SIGTERM and SIGINT in every thread (threads inherit the mask) so that the main
/// thread alone receives them with sigwait.
fn block_stop_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
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
