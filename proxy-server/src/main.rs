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
mod policy;
mod rv;
mod server;
mod template;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use protocol::address::Address;

use crate::connection::{Limits, Registry, Shared};
use crate::listener::Access;
use crate::listener::Listener;
use crate::login::Logins;
use crate::server::Server;
use crate::tls::TlsFiles;

/// Serves a vendor PKCS#11 library to pkcs11-shim clients over TCP or Unix sockets.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The vendor PKCS#11 library to load.
    #[arg(long, value_name = "PATH")]
    module: Option<String>,

    /// Address to listen on (repeatable): tcp://HOST:PORT, tls://HOST:PORT, unix:///path or
    /// /path.
    #[arg(long, value_name = "ADDRESS")]
    listen: Vec<String>,

    /// Server certificate chain (PEM) for tls:// listeners.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// Server private key (PEM) for tls:// listeners.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// CA (PEM) that client certificates must chain to; a client certificate is required.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,

    /// Accept TLS 1.2 as well as TLS 1.3.
    #[arg(long)]
    tls12: bool,

    /// Allow plain tcp:// on a non-loopback address (PINs cross the network unencrypted).
    #[arg(long)]
    allow_plaintext: bool,

    /// Mode of Unix socket files, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "660", value_parser = parse_mode)]
    unix_mode: u32,

    /// Uid allowed to connect over Unix sockets (repeatable; default: anyone the file mode
    /// lets in).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uids: Vec<u32>,

    /// Most client connections open at once; more are closed at once with a log line.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_connections: usize,

    /// Refuse this PKCS#11 function to every client (repeatable), e.g. C_InitToken.
    #[arg(long = "deny-function", value_name = "C_NAME")]
    deny_functions: Vec<String>,

    /// Refuse this mechanism (number, decimal or 0x hex) to every client (repeatable).
    #[arg(long = "deny-mechanism", value_name = "CKM")]
    deny_mechanisms: Vec<String>,

    /// Seconds a new connection has for its TLS handshake and hello.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    handshake_timeout: u64,

    /// Seconds a connection may stay silent before it is closed (0: never).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    idle_timeout: u64,

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

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{s}` is not an octal file mode"))
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
    let policy = policy::Policy::new(&args.deny_functions, &args.deny_mechanisms)?;
    raise_file_limit();
    let signals = block_stop_signals()?;
    let backend = backend::Backend::load(&module, args.init_args.as_deref())?;
    let (major, minor) = backend.interface_version();
    tracing::info!(
        module,
        "vendor library loaded and initialised (PKCS#11 {major}.{minor} interface)"
    );
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_client_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
            allow_tls12: args.tls12,
        }),
        _ => return Err("--tls-cert, --tls-key and --tls-client-ca go together".into()),
    };
    let access = Access {
        unix_mode: args.unix_mode,
        allowed_uids: args.allow_uids.clone(),
        tls,
        allow_plaintext: args.allow_plaintext,
    };
    let listeners = match addresses
        .iter()
        .map(|a| Listener::bind(a, &access))
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
    let limits = Limits {
        handshake_timeout: Duration::from_secs(args.handshake_timeout.max(1)),
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        max_connections: args.max_connections.max(1),
    };
    if !policy.is_empty() {
        tracing::info!(functions = ?args.deny_functions, mechanisms = ?args.deny_mechanisms, "policy: refusing these to every client");
    }
    let shared = Shared {
        policy,
        backend,
        limits,
        registry: Registry::default(),
        logins,
        objects: Default::default(),
        instance_id: random_id(),
    };
    let server = Arc::new(Server::new(shared, listeners, access));
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
