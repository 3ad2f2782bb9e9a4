//! The shim's log: lines on stderr or appended to a file, filtered by a level chosen with
//! `PKCS11_PROXY_LOG` (default warn; `trace` adds a line per call, `crate::trace`). The shim
//! lives in someone else's process, so it has no other channel; it never logs PINs or key
//! material.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::RwLock;

/// Log level: off, error, warn, info, debug, trace (default warn).
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
    /// Debug, and one line per PKCS#11 call.
    Trace,
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
            "trace" => Self::Trace,
            other => {
                return Err(format!(
                    "`{other}` is not a level (off, error, warn, info, debug, trace)"
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

/// The settings in force (configuration errors before them go to stderr at warn), with the
/// log file open once.
static SETTINGS: RwLock<(LogLevel, LogTarget, Option<File>)> =
    RwLock::new((LogLevel::Warn, LogTarget::Stderr, None));

/// Whether calls are traced: not yet known (the environment is read at the first call,
/// which may come before C_Initialize reads the configuration), no, or yes.
static TRACING: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const NO: u8 = 1;
const YES: u8 = 2;

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
    let mut settings = SETTINGS.write();
    if settings.1 != target || settings.2.is_none() {
        settings.2 = match &target {
            LogTarget::Stderr => None,
            LogTarget::File(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok(),
        };
    }
    settings.0 = level;
    settings.1 = target;
    TRACING.store(
        if level == LogLevel::Trace { YES } else { NO },
        Ordering::Relaxed,
    );
}

/// Whether every call is traced (one atomic load once the environment was read).
pub fn tracing() -> bool {
    match TRACING.load(Ordering::Relaxed) {
        UNKNOWN => {
            configure_from_env();
            TRACING.load(Ordering::Relaxed) == YES
        }
        state => state == YES,
    }
}

/// Writes one line if `level` passes the filter.
pub fn log(level: LogLevel, msg: &str) {
    let settings = SETTINGS.read();
    if level > settings.0 || settings.0 == LogLevel::Off {
        return;
    }
    let line = format!("pkcs11-shim[{}] {level:?}: {msg}\n", std::process::id());
    // One write of the whole line: lines of threads writing at once do not mix (O_APPEND).
    let written = match &settings.2 {
        Some(file) => {
            let mut file: &File = file;
            file.write_all(line.as_bytes()).is_ok()
        }
        None => false,
    };
    if !written {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// Writes one warning line.
pub fn warn(msg: &str) {
    log(LogLevel::Warn, msg);
}
