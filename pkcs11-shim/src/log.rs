//! The shim's log: lines on stderr or appended to a file, filtered by a level chosen with
//! `PKCS11_PROXY_LOG` (default warn). The shim lives in someone else's process, so it has no
//! other channel; it never logs PINs or key material.

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;

use parking_lot::RwLock;

/// Log level: off, error, warn, info, debug (default warn).
pub const ENV_LOG: &str = "PKCS11_PROXY_LOG";
/// Log file (appended to); default stderr.
pub const ENV_LOG_FILE: &str = "PKCS11_PROXY_LOG_FILE";

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "error" => Self::Error,
            "warn" | "warning" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            other => {
                return Err(format!(
                    "`{other}` is not a level (off, error, warn, info, debug)"
                ))
            }
        })
    }
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    File(PathBuf),
}

/// The settings in force (configuration errors before them go to stderr at warn).
static SETTINGS: RwLock<(LogLevel, LogTarget)> = RwLock::new((LogLevel::Warn, LogTarget::Stderr));

/// Applies the level and target the environment names (before the configuration file is
/// read, so that its errors go where the operator looks).
pub fn configure_from_env() {
    let level = std::env::var(ENV_LOG)
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(LogLevel::Warn);
    let target = std::env::var_os(ENV_LOG_FILE)
        .filter(|p| !p.is_empty())
        .map_or(LogTarget::Stderr, |p| LogTarget::File(PathBuf::from(p)));
    configure(level, target);
}

/// Applies the configuration's level and target.
pub fn configure(level: LogLevel, target: LogTarget) {
    *SETTINGS.write() = (level, target);
}

/// Writes one line if `level` passes the filter.
pub fn log(level: LogLevel, msg: &str) {
    let settings = SETTINGS.read();
    if level > settings.0 || settings.0 == LogLevel::Off {
        return;
    }
    let line = format!("pkcs11-shim[{}] {level:?}: {msg}\n", std::process::id());
    match &settings.1 {
        LogTarget::Stderr => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        LogTarget::File(path) => {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if written.is_err() {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }
}

/// Writes one warning line.
pub fn warn(msg: &str) {
    log(LogLevel::Warn, msg);
}
