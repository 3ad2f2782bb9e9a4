//! Shim configuration, read in C_Initialize (never at `dlopen` time).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::address::Address;

use super::tls;

/// Server address(es), comma-separated, tried in order (same name as the old C proxy).
pub const ENV_SOCKET: &str = "PKCS11_PROXY_SOCKET";
/// Connect timeout in milliseconds (default 5000).
pub const ENV_CONNECT_TIMEOUT_MS: &str = "PKCS11_PROXY_CONNECT_TIMEOUT_MS";
/// The CA that signed the server's certificate (PEM), for `tls://` addresses.
pub const ENV_TLS_CA: &str = "PKCS11_PROXY_TLS_CA";
/// This client's certificate (PEM), presented to the server.
pub const ENV_TLS_CERT: &str = "PKCS11_PROXY_TLS_CERT";
/// This client's private key (PEM).
pub const ENV_TLS_KEY: &str = "PKCS11_PROXY_TLS_KEY";
/// Longest wait for one call's answer in milliseconds (default 300000: slow HSM key
/// generation, e.g. RSA 4096, must fit).
pub const ENV_CALL_TIMEOUT_MS: &str = "PKCS11_PROXY_CALL_TIMEOUT_MS";

/// Everything the shim needs to reach its server.
#[derive(Debug, Clone)]
pub struct Config {
    pub addresses: Vec<Address>,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    /// The TLS configuration, when an address is `tls://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Config {
    /// Reads the configuration from the environment; the error names the variable at fault.
    pub fn from_env() -> Result<Self, String> {
        let socket = std::env::var(ENV_SOCKET).map_err(|_| format!("{ENV_SOCKET} is not set"))?;
        let addresses = Address::parse_list(&socket).map_err(|e| format!("{ENV_SOCKET}: {e}"))?;
        let tls = if addresses.iter().any(|a| matches!(a, Address::Tls { .. })) {
            let ca =
                path(ENV_TLS_CA)?.ok_or_else(|| format!("a tls:// address needs {ENV_TLS_CA}"))?;
            let pair = match (path(ENV_TLS_CERT)?, path(ENV_TLS_KEY)?) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(format!("{ENV_TLS_CERT} and {ENV_TLS_KEY} go together")),
            };
            let pair_ref = pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            Some(tls::client_config(&ca, pair_ref)?)
        } else {
            None
        };
        Ok(Self {
            addresses,
            connect_timeout: millis(ENV_CONNECT_TIMEOUT_MS, 5_000)?,
            call_timeout: millis(ENV_CALL_TIMEOUT_MS, 300_000)?,
            tls,
        })
    }
}

fn path(var: &str) -> Result<Option<PathBuf>, String> {
    match std::env::var_os(var) {
        None => Ok(None),
        Some(v) if v.is_empty() => Err(format!("{var} is empty")),
        Some(v) => Ok(Some(PathBuf::from(v))),
    }
}

fn millis(var: &str, default: u64) -> Result<Duration, String> {
    match std::env::var(var) {
        Err(_) => Ok(Duration::from_millis(default)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "{var}: `{v}` is not a positive number of milliseconds"
            )),
        },
    }
}
