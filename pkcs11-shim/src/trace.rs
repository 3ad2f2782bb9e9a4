//! The call trace (`PKCS11_PROXY_LOG=trace`): one line per PKCS#11 call the application
//! makes, as OpenSC's pkcs11-spy writes them, in the shim's log (`PKCS11_PROXY_LOG_FILE` to
//! send it to a file):
//!
//! ```text
//! pkcs11-shim[4242] Trace: thread 4250 C_Sign(session=1, data=32 bytes, capacity=buffer(72)) = CKR_OK -> 64 bytes (0.412 ms)
//! ```
//!
//! The function, its arguments as the application gave them (its own handles; names for
//! mechanisms and attributes; lengths for bytes; never a PIN's, key's or data's bytes:
//! `protocol::trace`), the return value by name, what the answer handed back, and the time
//! the call took in the shim. Grep a thread's calls by its thread id.

use std::cell::RefCell;
use std::time::Instant;

use cryptoki_sys::CK_RV;
use protocol::message::{Request, Response};
use protocol::names;

use crate::log::{self, LogLevel};

/// What the call being traced on this thread sent and got.
#[derive(Default)]
struct Call {
    arguments: Option<String>,
    answer: Option<String>,
}

thread_local! {
    static CALL: RefCell<Option<Call>> = const { RefCell::new(None) };
}

/// At a C function's entry: when calls are traced, the time it started.
pub fn begin() -> Option<Instant> {
    if !log::tracing() {
        return None;
    }
    CALL.with(|c| *c.borrow_mut() = Some(Call::default()));
    Some(Instant::now())
}

/// The application's request (the first of the call: the shim's own requests while it
/// serves it, a replay after a restart for one, are not the application's).
pub fn request(request: &Request) {
    with_call(|call| {
        call.arguments
            .get_or_insert_with(|| request.trace_arguments());
    });
}

/// The answer to the application's request.
pub fn answer(response: &Response) {
    with_call(|call| {
        call.answer.get_or_insert_with(|| response.trace_answer());
    });
}

fn with_call(f: impl FnOnce(&mut Call)) {
    if log::tracing() {
        CALL.with(|c| {
            if let Some(call) = c.borrow_mut().as_mut() {
                f(call);
            }
        });
    }
}

/// At a C function's exit: its line.
pub fn end(function: &str, started: Instant, rv: CK_RV) {
    let call = CALL.with(|c| c.borrow_mut().take()).unwrap_or_default();
    let rv = crate::ffi::wire(rv);
    let answer = match call.answer.as_deref() {
        Some("") | None => String::new(),
        Some(a) => format!(" -> {a}"),
    };
    // SAFETY: gettid(2) has no arguments and cannot fail (called as a system call: glibc
    // before 2.30, the shim's baseline, has no wrapper).
    let thread = unsafe { libc::syscall(libc::SYS_gettid) };
    log::log(
        LogLevel::Trace,
        &format!(
            "thread {thread} {function}({}) = {}{answer} ({:.3} ms)",
            call.arguments.unwrap_or_default(),
            names::or_hex(names::rv(rv), rv),
            started.elapsed().as_secs_f64() * 1000.0
        ),
    );
}
