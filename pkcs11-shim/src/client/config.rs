//! Shim configuration, read in C_Initialize (never at `dlopen` time).

use std::time::Duration;

use protocol::address::Address;

/// Server address(es), comma-separated, tried in order (same name as the old C proxy).
pub const ENV_SOCKET: &str = "PKCS11_PROXY_SOCKET";
/// Connect timeout in milliseconds (default 5000).
pub const ENV_CONNECT_TIMEOUT_MS: &str = "PKCS11_PROXY_CONNECT_TIMEOUT_MS";
/// Longest wait for one call's answer in milliseconds (default 300000: slow HSM key
/// generation, e.g. RSA 4096, must fit).
pub const ENV_CALL_TIMEOUT_MS: &str = "PKCS11_PROXY_CALL_TIMEOUT_MS";

/// Everything the shim needs to reach its server.
#[derive(Debug, Clone)]
pub struct Config {
    pub addresses: Vec<Address>,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
}

impl Config {
    /// Reads the configuration from the environment; the error names the variable at fault.
    pub fn from_env() -> Result<Self, String> {
        let socket = std::env::var(ENV_SOCKET).map_err(|_| format!("{ENV_SOCKET} is not set"))?;
        let addresses = Address::parse_list(&socket).map_err(|e| format!("{ENV_SOCKET}: {e}"))?;
        Ok(Self {
            addresses,
            connect_timeout: millis(ENV_CONNECT_TIMEOUT_MS, 5_000)?,
            call_timeout: millis(ENV_CALL_TIMEOUT_MS, 300_000)?,
        })
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
