//! The server's settings: command-line flags over an optional TOML file (`--config`), over
//! defaults. Every flag has a key of the same name in the file (`proxy-server/server.example.toml`
//! documents each with its default). Unknown keys and bad values are errors that name the
//! file, the line and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use protocol::address::Address;
use serde::Deserialize;

use crate::startups::Limits;
use crate::tls::TlsFiles;

/// Where the compatible form takes its address.
pub const DAEMON_SOCKET_ENV: &str = "PKCS11_DAEMON_SOCKET";

/// An on/off setting, as flag value and in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    Off,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Serves a vendor PKCS#11 library to pkcs11-shim clients over TCP, TLS or Unix sockets.
#[derive(Parser, Debug, Default)]
#[command(version, about)]
pub struct Args {
    /// TOML file with any of the options below (flags given here win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration (file, addresses, TLS files), print it and exit.
    #[arg(long)]
    pub check_config: bool,

    /// The vendor PKCS#11 library to load.
    #[arg(long, value_name = "PATH")]
    pub module: Option<String>,

    /// Address to listen on (repeatable): tcp://HOST:PORT, tls://HOST:PORT, unix:///path or
    /// /path.
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Vec<String>,

    /// String passed as pReserved to the vendor library's C_Initialize.
    #[arg(long, value_name = "STRING")]
    pub init_args: Option<String>,

    /// Server certificate chain (PEM) for tls:// listeners.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Server private key (PEM) for tls:// listeners.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// CA (PEM) that client certificates must chain to; a client certificate is required.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Accept TLS 1.2 as well as TLS 1.3.
    #[arg(long)]
    pub tls12: bool,

    /// Allow plain tcp:// on a non-loopback address (PINs cross the network unencrypted).
    #[arg(long)]
    pub allow_plaintext: bool,

    /// Mode of Unix socket files, in octal [default: 660].
    #[arg(long, value_name = "OCTAL")]
    pub unix_mode: Option<String>,

    /// Uid allowed to connect over Unix sockets (repeatable; default: anyone the file mode
    /// lets in).
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uid: Vec<u32>,

    /// Most connections of one application (one worker) open at once; more are closed at
    /// once with a log line [default: 4096].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Seconds a new connection has for its TLS handshake and hello [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub handshake_timeout: Option<u64>,

    /// Seconds a connection may stay silent before it is closed; 0: never [default: 0].
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,

    /// Seconds an application's sessions are kept after its last connection ends, so that
    /// it can reconnect (network blip) and find them; 0: closed at once [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub resume_grace: Option<u64>,

    /// Refuse this PKCS#11 function to every client (repeatable), e.g. C_InitToken.
    #[arg(long = "deny-function", value_name = "C_NAME")]
    pub deny_function: Vec<String>,

    /// Refuse this mechanism (number, decimal or 0x hex) to every client (repeatable).
    #[arg(long = "deny-mechanism", value_name = "CKM")]
    pub deny_mechanism: Vec<String>,

    /// Identities and what each may reach (TOML; OPERATIONS.md, "Identities and policy"):
    /// a client that matches none is refused in the handshake. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Audit log (JSON lines, hash-chained; `pkcs11-proxy-server audit verify PATH...`).
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,

    /// What the audit log records: management (logins, key and token management, wrapping,
    /// policy refusals) or all (and every use of a key) [default: management].
    #[arg(long, value_name = "LEVEL")]
    pub audit: Option<crate::audit::Level>,

    /// Size past which the audit log is rotated (the chain continues in the new file)
    /// [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub audit_max_bytes: Option<u64>,

    /// Heal what the HSM breaks (DESIGN.md, "Healing the HSM side"): an application's vendor
    /// instance that lost its device (CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, a token gone,
    /// CKR_CRYPTOKI_NOT_INITIALIZED after C_Initialize) is replaced by a new one, with backoff,
    /// and the shim brings the application's sessions back on it; `off`: the vendor's broken
    /// instance stays, as when the application loads the library itself [default: on].
    #[arg(long, value_name = "on|off")]
    pub heal: Option<Switch>,

    /// With --heal on: seconds a vendor call may take before it is abandoned (its caller gets
    /// CKR_DEVICE_ERROR and the application's next call runs on a new vendor instance), for
    /// every call but those of --slow-call-deadline [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub call_deadline: Option<u64>,

    /// The same for key generation, derivation and wrapping, token management and login (a
    /// PED-authenticated login waits for a person) [default: 300].
    #[arg(long, value_name = "SECONDS")]
    pub slow_call_deadline: Option<u64>,

    /// Serve every application from one worker process and one vendor library instance (for
    /// vendors that cope badly with many processes on one token): sessions stay owned per
    /// application, the vendor's login is shared by all (the old proxies' behaviour).
    #[arg(long)]
    pub shared_worker: bool,

    /// Most applications (shim instances) served at once, each by its own worker process;
    /// more are refused in the handshake with a clear reason [default: 256].
    #[arg(long, value_name = "N")]
    pub max_applications: Option<usize>,

    /// Budget of connections that have not sent their routing prelude yet, as OpenSSH's
    /// MaxStartups: from START open, new ones are refused with RATE % probability, rising to
    /// 100 % at FULL; at FULL the oldest is dropped to make room [default: 512:30:1024].
    #[arg(long, value_name = "START:RATE:FULL")]
    pub max_startups: Option<String>,

    /// Most of those connections from one peer address; beyond it, a new one of that address
    /// that has sent nothing yet is refused at once, and one that talks takes the place of
    /// the address's oldest [default: 256].
    #[arg(long, value_name = "N")]
    pub max_startups_per_peer: Option<usize>,

    /// Most workers started for applications that have not completed a hello yet (a routing
    /// id alone starts one); beyond it, the oldest such worker is stopped. They do not count
    /// against --max-applications [default: 16].
    #[arg(long, value_name = "N")]
    pub max_pending_applications: Option<usize>,

    /// Run as a worker process (started by the server itself; not for operators).
    #[arg(long, hide = true)]
    pub worker: bool,

    /// Serve Prometheus metrics on /metrics, and /healthz and /readyz, at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,

    /// Log line format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Compatible form of the old pkcs11-daemon: LIB [-], address from PKCS11_DAEMON_SOCKET.
    /// The `-` (stay in the foreground) is accepted; this server never daemonises.
    #[arg(value_name = "LIB")]
    pub legacy: Vec<String>,
}

/// The TOML file: the same options as the flags, same names with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    module: Option<String>,
    listen: Option<Vec<String>>,
    init_args: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls12: Option<bool>,
    allow_plaintext: Option<bool>,
    unix_mode: Option<String>,
    allow_uid: Option<Vec<u32>>,
    max_connections: Option<usize>,
    handshake_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    resume_grace: Option<u64>,
    deny_function: Option<Vec<String>>,
    deny_mechanism: Option<Vec<String>>,
    policy: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    audit: Option<crate::audit::Level>,
    audit_max_bytes: Option<u64>,
    heal: Option<Switch>,
    call_deadline: Option<u64>,
    slow_call_deadline: Option<u64>,
    shared_worker: Option<bool>,
    max_applications: Option<usize>,
    max_startups: Option<String>,
    max_startups_per_peer: Option<usize>,
    max_pending_applications: Option<usize>,
    metrics_listen: Option<String>,
    log_format: Option<LogFormat>,
}

/// Everything the server runs with.
#[derive(Debug)]
pub struct Settings {
    pub module: String,
    pub addresses: Vec<Address>,
    pub init_args: Option<String>,
    pub tls: Option<TlsFiles>,
    pub allow_plaintext: bool,
    pub unix_mode: u32,
    pub allowed_uids: Vec<u32>,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub resume_grace: Duration,
    pub deny_functions: Vec<String>,
    pub deny_mechanisms: Vec<String>,
    /// `--policy`: identities and their rights.
    pub policy: Option<PathBuf>,
    /// `--audit-log`, with its level and rotation size.
    pub audit: Option<(PathBuf, crate::audit::Level, u64)>,
    /// Broken vendor instances are replaced (`--heal`).
    pub heal: bool,
    /// `--call-deadline` and `--slow-call-deadline`, with `--heal on`.
    pub call_deadline: Duration,
    pub slow_call_deadline: Duration,
    pub shared_worker: bool,
    pub max_applications: usize,
    /// The data port's budget of connections before their prelude.
    pub startups: Limits,
    pub max_pending_applications: usize,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A deadline of `n` seconds, at least one (a vendor call that may not take a second would
/// abandon healthy calls).
fn seconds(name: &str, n: u64) -> Result<Duration, String> {
    match n {
        0 => Err(format!(
            "{name}: 0 seconds; a deadline is at least 1 second"
        )),
        n => Ok(Duration::from_secs(n)),
    }
}

/// A list from the command line if given there, else from the file.
fn list<T: Clone>(cli: &[T], file: Option<Vec<T>>) -> Vec<T> {
    if cli.is_empty() {
        file.unwrap_or_default()
    } else {
        cli.to_vec()
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("unix_mode `{s}` is not an octal file mode"))
}

impl Settings {
    /// Merges flags, file and defaults, and checks every value.
    pub fn load(args: &Args) -> Result<Self, String> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let legacy: Vec<&String> = args.legacy.iter().filter(|a| a.as_str() != "-").collect();
        let module = match (args.module.clone(), legacy.as_slice()) {
            (Some(m), []) => m,
            (None, [m]) => (*m).clone(),
            (Some(_), _) => {
                return Err("give the module either with --module or as LIB, not both".into())
            }
            (None, []) => file
                .module
                .clone()
                .ok_or("no PKCS#11 module given (--module PATH or `module` in the file)")?,
            (None, _) => return Err(format!("unexpected arguments: {:?}", args.legacy)),
        };
        let mut listen = list(&args.listen, file.listen.clone());
        let activated = std::env::var("LISTEN_FDS").is_ok_and(|n| n != "0");
        if listen.is_empty() && !activated {
            match std::env::var(DAEMON_SOCKET_ENV) {
                Ok(v) if !v.trim().is_empty() => listen.push(v),
                _ => return Err(format!("no address to listen on (--listen ADDRESS, `listen` in the file, or {DAEMON_SOCKET_ENV})")),
            }
        }
        let addresses = listen
            .iter()
            .map(|a| Address::parse_list(a))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        let cert = args.tls_cert.clone().or(file.tls_cert);
        let key = args.tls_key.clone().or(file.tls_key);
        let client_ca = args.tls_client_ca.clone().or(file.tls_client_ca);
        let tls = match (cert, key, client_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
                cert,
                key,
                client_ca,
                allow_tls12: args.tls12 || file.tls12.unwrap_or(false),
            }),
            _ => return Err("tls_cert, tls_key and tls_client_ca go together".into()),
        };
        let metrics_listen = match args.metrics_listen.clone().or(file.metrics_listen) {
            None => None,
            Some(a) => Some(a.parse().map_err(|_| {
                format!("metrics_listen `{a}` is not HOST:PORT with an IP address")
            })?),
        };
        let idle = args.idle_timeout.or(file.idle_timeout).unwrap_or(0);
        let mut startups: Limits = args
            .max_startups
            .as_deref()
            .or(file.max_startups.as_deref())
            .unwrap_or("512:30:1024")
            .parse()
            .map_err(|e| format!("max_startups {e}"))?;
        startups.per_peer = args
            .max_startups_per_peer
            .or(file.max_startups_per_peer)
            .unwrap_or(256)
            .max(1);
        Ok(Self {
            module,
            addresses,
            init_args: args.init_args.clone().or(file.init_args),
            tls,
            allow_plaintext: args.allow_plaintext || file.allow_plaintext.unwrap_or(false),
            unix_mode: parse_mode(
                args.unix_mode
                    .as_deref()
                    .or(file.unix_mode.as_deref())
                    .unwrap_or("660"),
            )?,
            allowed_uids: list(&args.allow_uid, file.allow_uid),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(4096)
                .max(1),
            handshake_timeout: Duration::from_secs(
                args.handshake_timeout
                    .or(file.handshake_timeout)
                    .unwrap_or(10)
                    .max(1),
            ),
            idle_timeout: (idle > 0).then(|| Duration::from_secs(idle)),
            resume_grace: Duration::from_secs(
                args.resume_grace.or(file.resume_grace).unwrap_or(30),
            ),
            deny_functions: list(&args.deny_function, file.deny_function),
            deny_mechanisms: list(&args.deny_mechanism, file.deny_mechanism),
            policy: args.policy.clone().or(file.policy),
            audit: args.audit_log.clone().or(file.audit_log).map(|path| {
                (
                    path,
                    args.audit
                        .or(file.audit)
                        .unwrap_or(crate::audit::Level::Management),
                    args.audit_max_bytes
                        .or(file.audit_max_bytes)
                        .unwrap_or(64 << 20)
                        .max(4096),
                )
            }),
            heal: args.heal.or(file.heal).unwrap_or(Switch::On) == Switch::On,
            call_deadline: seconds(
                "call_deadline",
                args.call_deadline.or(file.call_deadline).unwrap_or(10),
            )?,
            slow_call_deadline: seconds(
                "slow_call_deadline",
                args.slow_call_deadline
                    .or(file.slow_call_deadline)
                    .unwrap_or(300),
            )?,
            shared_worker: args.shared_worker || file.shared_worker.unwrap_or(false),
            max_applications: args
                .max_applications
                .or(file.max_applications)
                .unwrap_or(256)
                .max(1),
            startups,
            max_pending_applications: args
                .max_pending_applications
                .or(file.max_pending_applications)
                .unwrap_or(16)
                .max(1),
            metrics_listen,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(toml_text: &str) -> Result<FileConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("server.example.toml");
        let f = read_file(&path).unwrap();
        assert!(f.module.is_some() && f.listen.is_some());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_line_and_key() {
        let e = from("module = \"/x.so\"\nlistne = [\"tcp://127.0.0.1:1\"]\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("listne"), "{e}");
        let e = from("max_connections = \"many\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("max_connections"), "{e}");
        let e = from("log_format = \"xml\"\n").unwrap_err();
        assert!(e.contains("log_format") || e.contains("xml"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("p11cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.toml");
        std::fs::write(&file, "module = \"/file.so\"\nlisten = [\"tcp://127.0.0.1:1\"]\nmax_connections = 7\nidle_timeout = 30\n").unwrap();
        let args = Args {
            config: Some(file.clone()),
            max_connections: Some(9),
            ..Default::default()
        };
        let s = Settings::load(&args).unwrap();
        assert_eq!(s.module, "/file.so");
        assert_eq!(s.max_connections, 9);
        assert_eq!(s.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.unix_mode, 0o660);
        assert_eq!(
            (s.call_deadline, s.slow_call_deadline),
            (Duration::from_secs(10), Duration::from_secs(300))
        );
        let zero = Args {
            config: Some(file.clone()),
            call_deadline: Some(0),
            ..Default::default()
        };
        let e = Settings::load(&zero).unwrap_err();
        assert!(e.contains("call_deadline") && e.contains("at least"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
