//! `pkcs11-proxy-server`: serves a vendor PKCS#11 library to pkcs11-shim clients.
//!
//! ```text
//! pkcs11-proxy-server --module /usr/lib/softhsm/libsofthsm2.so --listen tcp://127.0.0.1:2345
//! pkcs11-proxy-server --config /etc/pkcs11-proxy/server.toml
//! pkcs11-proxy-server /usr/lib/softhsm/libsofthsm2.so [-]      # address from PKCS11_DAEMON_SOCKET
//! ```

mod config;
mod control;
mod metrics;
mod policy;
mod router;
mod rv;
mod startups;
mod tls;
mod worker;

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Args, LogFormat, Settings};

fn main() -> ExitCode {
    let args = Args::parse();
    if args.worker {
        return worker::run();
    }
    let settings = match Settings::load(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pkcs11-proxy-server: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(settings.log_format == LogFormat::Json);
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
    match router::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("pkcs11-proxy-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines on stderr, filtered by `RUST_LOG` (default `info`); workers write to the same
/// stderr as the router, each line carrying its worker's span.
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init()
    } else {
        builder.init()
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

/// Raises the open-file limit to its hard maximum: every client connection is a descriptor.
pub(crate) fn raise_file_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// glibc's `getrandom` (2.25 and later), which Rust's standard library calls, answered with
/// the system call itself, so that the server runs on glibc 2.17 and later (the release
/// baseline, `.ci/check-baseline`); on a kernel without the call (before 3.17) `ENOSYS` makes
/// the standard library fall back to `/dev/urandom`.
///
/// # Safety
/// `buf` must be writable for `len` bytes, as for getrandom(2).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[no_mangle]
pub unsafe extern "C" fn getrandom(
    buf: *mut std::ffi::c_void,
    len: libc::size_t,
    flags: libc::c_uint,
) -> libc::ssize_t {
    libc::syscall(libc::SYS_getrandom, buf, len, flags) as libc::ssize_t
}
