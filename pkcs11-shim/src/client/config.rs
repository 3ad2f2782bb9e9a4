//! Shim configuration, read in C_Initialize (never at `dlopen` time): environment variables
//! over an optional TOML file named by `PKCS11_PROXY_CONFIG`, over defaults. The file's keys
//! are the variables' names without the `PKCS11_PROXY_` prefix, in lower case
//! (`pkcs11-shim/shim.example.toml`). Unknown keys and bad values are errors naming the file,
//! the line and the key, or the variable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::address::Address;
use serde::Deserialize;

use super::tls;
use crate::log::{LogLevel, LogTarget, ENV_LOG, ENV_LOG_FILE};

/// The TOML file with the settings below.
pub const ENV_CONFIG: &str = "PKCS11_PROXY_CONFIG";
/// Server address(es), comma-separated, tried in order (same name as the old C proxy).
pub const ENV_SOCKET: &str = "PKCS11_PROXY_SOCKET";
/// Connect timeout in milliseconds (default 5000).
pub const ENV_CONNECT_TIMEOUT_MS: &str = "PKCS11_PROXY_CONNECT_TIMEOUT_MS";
/// Longest wait for one call's answer in milliseconds (default 310000: slow HSM key
/// generation, e.g. RSA 4096, must fit, and the server's `--slow-call-deadline`, 300 s, comes
/// first, so that a hung call gets the server's answer and heals).
pub const ENV_CALL_TIMEOUT_MS: &str = "PKCS11_PROXY_CALL_TIMEOUT_MS";
/// How long a call keeps trying to reach a server (restarting, failing over) before it
/// answers CKR_DEVICE_ERROR, in milliseconds (default 10000; 0: fail at once).
pub const ENV_RECONNECT_MS: &str = "PKCS11_PROXY_RECONNECT_MS";
/// Transparent recovery after a server restart or failover: `on` (default) or `off` (the
/// application's sessions then answer CKR_SESSION_HANDLE_INVALID).
pub const ENV_RECOVERY: &str = "PKCS11_PROXY_RECOVERY";
/// Whether the PIN given to C_Login is kept in memory (zeroized at C_Finalize) to log in again
/// on a new server: `on` (default) or `off` (sessions of a logged-in slot are then lost).
pub const ENV_KEEP_PIN: &str = "PKCS11_PROXY_KEEP_PIN";
/// Whether the size query of a single-part function (C_Sign, C_Encrypt, C_Decrypt, C_Digest,
/// C_SignRecover, C_VerifyRecover) or of C_GetAttributeValue is completed on the server in
/// the same round trip, the follow-up call then answered by the shim: `on` (default) or
/// `off` (two round trips, as the application makes them).
pub const ENV_COMPLETE_SIZE_QUERIES: &str = "PKCS11_PROXY_COMPLETE_SIZE_QUERIES";
/// Whether C_FindObjectsInit runs the search ahead on the server (the first handles, and the
/// end of the search when that is all), C_FindObjects and C_FindObjectsFinal then answered
/// by the shim: `on` (default) or `off`.
pub const ENV_PREFETCH_SEARCHES: &str = "PKCS11_PROXY_PREFETCH_SEARCHES";
/// The CA that signed the server's certificate (PEM), for `tls://` addresses.
pub const ENV_TLS_CA: &str = "PKCS11_PROXY_TLS_CA";
/// This client's certificate (PEM), presented to the server.
pub const ENV_TLS_CERT: &str = "PKCS11_PROXY_TLS_CERT";
/// This client's private key (PEM).
pub const ENV_TLS_KEY: &str = "PKCS11_PROXY_TLS_KEY";

/// The file: the same settings, lower case, without the prefix.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<String>,
    connect_timeout_ms: Option<u64>,
    call_timeout_ms: Option<u64>,
    reconnect_ms: Option<u64>,
    recovery: Option<String>,
    keep_pin: Option<String>,
    complete_size_queries: Option<String>,
    prefetch_searches: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    log: Option<String>,
    log_file: Option<PathBuf>,
}

/// Everything the shim needs to reach its server.
#[derive(Debug, Clone)]
pub struct Config {
    pub addresses: Vec<Address>,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    /// How long a call waits for a server to answer a connection again.
    pub reconnect_window: Duration,
    /// Transparent recovery on a new server instance.
    pub recovery: bool,
    /// Keep the login PIN for recovery.
    pub keep_pin: bool,
    /// Complete single-part size queries on the server (DESIGN.md, "Two-call functions").
    pub complete_size_queries: bool,
    /// Run searches ahead on the server.
    pub prefetch_searches: bool,
    /// The TLS configuration, when an address is `tls://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub log_level: LogLevel,
    pub log_target: LogTarget,
}

fn env(var: &str) -> Result<Option<String>, String> {
    match std::env::var(var) {
        Ok(v) if v.trim().is_empty() => Err(format!("{var} is empty")),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(_) => Err(format!("{var} is not valid UTF-8")),
    }
}

fn millis(var: &str, file: Option<u64>, default: u64) -> Result<Duration, String> {
    let ms = match env(var)? {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{var}: `{v}` is not a number of milliseconds"))?,
        None => file.unwrap_or(default),
    };
    if ms == 0 {
        return Err(format!("{var}: the timeout must be positive"));
    }
    Ok(Duration::from_millis(ms))
}

fn switch(var: &str, file: Option<String>) -> Result<bool, String> {
    match env(var)?.or(file).as_deref().map(str::trim) {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(format!("{var}: `{other}` is neither `on` nor `off`")),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{ENV_CONFIG} {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{ENV_CONFIG} {}: {e}", path.display()))
}

impl Config {
    /// Reads the configuration; the error names the variable or the file line at fault.
    pub fn load() -> Result<Self, String> {
        let file = match env(ENV_CONFIG)? {
            Some(p) => read_file(Path::new(&p))?,
            None => FileConfig::default(),
        };
        let socket = env(ENV_SOCKET)?
            .or(file.socket)
            .ok_or_else(|| format!("{ENV_SOCKET} is not set (nor `socket` in {ENV_CONFIG})"))?;
        let addresses = Address::parse_list(&socket).map_err(|e| format!("{ENV_SOCKET}: {e}"))?;
        let path = |var: &str, from_file: Option<PathBuf>| -> Result<Option<PathBuf>, String> {
            Ok(env(var)?.map(PathBuf::from).or(from_file))
        };
        let tls = if addresses.iter().any(|a| matches!(a, Address::Tls { .. })) {
            let ca = path(ENV_TLS_CA, file.tls_ca)?
                .ok_or_else(|| format!("a tls:// address needs {ENV_TLS_CA}"))?;
            let pair = match (
                path(ENV_TLS_CERT, file.tls_cert)?,
                path(ENV_TLS_KEY, file.tls_key)?,
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(format!("{ENV_TLS_CERT} and {ENV_TLS_KEY} go together")),
            };
            let pair_ref = pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            Some(tls::client_config(&ca, pair_ref)?)
        } else {
            None
        };
        let log_level = match env(ENV_LOG)?.or(file.log) {
            Some(l) => l.parse().map_err(|e| format!("{ENV_LOG}: {e}"))?,
            None => LogLevel::Warn,
        };
        let log_target = match path(ENV_LOG_FILE, file.log_file)? {
            Some(p) => LogTarget::File(p),
            None => LogTarget::Stderr,
        };
        Ok(Self {
            addresses,
            connect_timeout: millis(ENV_CONNECT_TIMEOUT_MS, file.connect_timeout_ms, 5_000)?,
            call_timeout: millis(ENV_CALL_TIMEOUT_MS, file.call_timeout_ms, 310_000)?,
            reconnect_window: match env(ENV_RECONNECT_MS)? {
                Some(v) => Duration::from_millis(v.trim().parse::<u64>().map_err(|_| {
                    format!("{ENV_RECONNECT_MS}: `{v}` is not a number of milliseconds")
                })?),
                None => Duration::from_millis(file.reconnect_ms.unwrap_or(10_000)),
            },
            recovery: switch(ENV_RECOVERY, file.recovery)?,
            keep_pin: switch(ENV_KEEP_PIN, file.keep_pin)?,
            complete_size_queries: switch(ENV_COMPLETE_SIZE_QUERIES, file.complete_size_queries)?,
            prefetch_searches: switch(ENV_PREFETCH_SEARCHES, file.prefetch_searches)?,
            tls,
            log_level,
            log_target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("shim.example.toml");
        let f = read_file(&path).unwrap();
        assert!(f.socket.is_some());
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let e = toml::from_str::<FileConfig>("socket = \"tcp://h:1\"\nsokcet = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("sokcet"), "{e}");
        let e = toml::from_str::<FileConfig>("call_timeout_ms = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("call_timeout_ms"), "{e}");
    }
}
