//! `pkcs11-proxy-server`: serves a vendor PKCS#11 library to pkcs11-shim clients.
//!
//! ```text
//! pkcs11-proxy-server --module /usr/lib/softhsm/libsofthsm2.so --listen tcp://127.0.0.1:2345
//! pkcs11-proxy-server --config /etc/pkcs11-proxy/server.toml
//! pkcs11-proxy-server /usr/lib/softhsm/libsofthsm2.so [-]      # address from PKCS11_DAEMON_SOCKET
//! ```

mod audit;
mod config;
mod control;
mod metrics;
mod policy;
mod process;
mod router;
mod rv;
mod startups;
mod tls;
mod worker;

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Args, LogFormat, Settings};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("audit") => return audit::verify::run(&argv[2..]),
        Some("policy") => return policy::secret::run(&argv[2..]),
        _ => {}
    }
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
    process::init_logging(settings.log_format == LogFormat::Json);
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

/// `--check-config`: what can be checked without loading the vendor library or binding.
fn check(settings: &Settings) -> Result<(), String> {
    if !std::path::Path::new(&settings.module).exists() {
        return Err(format!("module {}: no such file", settings.module));
    }
    policy::Denials::new(&settings.deny_functions, &settings.deny_mechanisms)?;
    if let Some(path) = &settings.policy {
        policy::Identities::load(path)?;
    }
    if let Some(tls) = &settings.tls {
        tls.load()?;
    }
    Ok(())
}
