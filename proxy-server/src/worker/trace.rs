//! The server's call trace, per application (the shim has its own: `PKCS11_PROXY_LOG=trace`
//! in the application's environment). Switched on and off without a restart:
//!
//! - `kill -USR1 <worker pid>` traces one application's calls, `kill -USR2 <worker pid>`
//!   stops (each worker serves one application; its pid and label are in the line
//!   `worker started` and in `ps`);
//! - `kill -USR1 <server pid>` traces every application's, those to come included, and
//!   `kill -USR2 <server pid>` stops them all (the router tells its workers).
//!
//! One line per call, at INFO whatever the log level (target `pkcs11_proxy_server::trace`),
//! with the application's label (the worker's span), its client number, the peer address and
//! identity (`tcp`, `uid:N`, or the client certificate's SHA-256), and the call as the shim
//! writes it (`protocol::trace`): function, arguments (the vendor's handles, mechanisms and
//! attributes by name, lengths, never a PIN's, key's or data's bytes), return value by name,
//! what the answer hands back, and the time the vendor took.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use protocol::message::{Request, Response};
use protocol::names;

/// Whether this worker traces its application's calls.
static ON: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    // An atomic store: safe in a signal handler.
    ON.store(sig == libc::SIGUSR1, Ordering::Relaxed);
}

/// Installs SIGUSR1 (on) and SIGUSR2 (off), unblocked in this thread (the router blocks
/// signals it waits for; threads started later inherit this thread's mask).
pub fn install() {
    // SAFETY: sigaction with a handler that only stores to an atomic; a local signal set.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGUSR1, libc::SIGUSR2] {
            libc::sigaction(sig, &action, std::ptr::null_mut());
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Turns the trace on or off (the router's order, or the start settings).
pub fn set(on: bool) {
    if ON.swap(on, Ordering::Relaxed) != on {
        tracing::info!("call trace {}", if on { "on" } else { "off" });
    }
}

/// The arguments of a request, when calls are traced (taken before the request is served).
pub fn arguments(request: &Request) -> Option<String> {
    ON.load(Ordering::Relaxed)
        .then(|| request.trace_arguments())
}

/// One call, served.
pub struct Call<'a> {
    pub function: &'static str,
    pub arguments: &'a str,
    pub response: &'a Response,
    pub started: Instant,
}

/// The line of one call of the application's client `client`, connected from `peer` as
/// `identity` ([`identity`]).
pub fn line(client: u64, peer: &str, identity: &str, call: &Call) {
    let Call {
        function,
        arguments,
        response,
        started,
    } = call;
    let rv = response.rv();
    let answer = match response.trace_answer() {
        a if a.is_empty() => a,
        a => format!(" -> {a}"),
    };
    tracing::info!(
        target: "pkcs11_proxy_server::trace",
        client,
        peer,
        identity,
        "{function}({arguments}) = {}{answer} ({:.3} ms)",
        names::or_hex(names::rv(rv), rv),
        started.elapsed().as_secs_f64() * 1000.0
    );
}

/// How a client's identity reads in a trace line: `tcp`, `uid:N`, or `cert sha256:` and the
/// first 16 hex digits of its certificate's fingerprint.
pub fn identity(identity: &[u8]) -> String {
    match std::str::from_utf8(identity) {
        Ok(s) if s.len() < 64 && s.chars().all(|c| c.is_ascii_graphic()) => s.to_string(),
        _ => {
            let digest = ring::digest::digest(&ring::digest::SHA256, identity);
            let hex: String = digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("cert sha256:{hex}")
        }
    }
}
