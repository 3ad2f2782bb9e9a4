//! The shim's client side (DESIGN.md, "Shim semantics", "Recovery model"): the application's
//! C_Initialize state and the rooms it is made of:
//! - `config`: what the shim reads from its environment and file;
//! - `pool` and `connection`: the connections to the servers, with instance affinity;
//! - `call`: one call's way (answered ahead, translated, sent, mended, recorded);
//! - `journal`, `handles`, `ahead`: what the shim remembers of the application's state on
//!   the server (its sessions, object handles, logins, operations, answers given ahead);
//! - `recovery`: the journal replayed on a new server instance.

mod ahead;
mod call;
pub mod config;
mod connection;
mod handles;
mod journal;
mod pool;
mod recovery;
mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};
use protocol::function::OpKind;
use protocol::handshake::{ClientId, InitArgs};
use protocol::message::{Request, Response};

use self::config::Config;
use self::connection::Connection;
use self::journal::Journal;
use self::pool::{Pool, FAILED_IN_A_ROW};
use crate::ffi::Rv;
use crate::log::{self, warn};

/// One initialised shim instance.
pub struct Client {
    /// The connections to the servers (and the configuration).
    pool: Pool,
    /// The version of the vendor library's "PKCS 11" interface, from the first connection.
    vendor_interface: (u8, u8),
    /// The process that called C_Initialize: a forked child must initialise again.
    pid: u32,
    /// The application's sessions, objects, logins and operations, with the shim's handles.
    journal: RwLock<Journal>,
    /// The mechanism of each session's message-based operation, which fixes the layout of
    /// the per-message parameters (v3.0 §5.9).
    message_mechanisms: Mutex<HashMap<(CK_SESSION_HANDLE, OpKind), CK_MECHANISM_TYPE>>,
}

/// The instance, present between C_Initialize and C_Finalize.
static CLIENT: RwLock<Option<Arc<Client>>> = RwLock::new(None);

impl Client {
    /// The configuration the shim read at C_Initialize.
    fn config(&self) -> &Config {
        self.pool.config()
    }

    /// Remembers (or, with `None`, forgets) the mechanism of a message-based operation.
    pub fn set_message_mechanism(
        &self,
        session: CK_SESSION_HANDLE,
        op: OpKind,
        mech: Option<CK_MECHANISM_TYPE>,
    ) {
        let mut m = self.message_mechanisms.lock();
        match mech {
            Some(t) => m.insert((session, op), t),
            None => m.remove(&(session, op)),
        };
    }

    /// The mechanism of a session's message-based operation; an unknown one (no Init) reads
    /// the parameter as plain bytes and lets the vendor answer.
    pub fn message_mechanism(&self, session: CK_SESSION_HANDLE, op: OpKind) -> CK_MECHANISM_TYPE {
        self.message_mechanisms
            .lock()
            .get(&(session, op))
            .copied()
            .unwrap_or(CK_UNAVAILABLE_INFORMATION)
    }

    /// C_WaitForSlotEvent's round trip, which C_Finalize may interrupt
    /// ([`Pool::call_interruptible`]).
    pub fn call_interruptible(&self, request: Request) -> Rv<Response> {
        self.pool.call_interruptible(request, &self.journal)
    }
}

/// The initialised instance of this process, or CKR_CRYPTOKI_NOT_INITIALIZED.
pub fn current() -> Rv<Arc<Client>> {
    match &*CLIENT.read() {
        Some(c) if c.pid == std::process::id() => Ok(c.clone()),
        _ => Err(CKR_CRYPTOKI_NOT_INITIALIZED),
    }
}

/// The version of the vendor library's "PKCS 11" interface behind this shim: known from the
/// connection of the initialised instance, or, before C_Initialize (C_GetInterfaceList and
/// C_GetInterface may come first, v3.0 §5.2), asked of the server with the configuration
/// read now, bounded by the connect timeout. `None` when no server answers.
pub fn vendor_interface() -> Option<(u8, u8)> {
    if let Ok(c) = current() {
        return Some(c.vendor_interface).filter(|v| *v != (0, 0));
    }
    log::configure_from_env();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            log::log(
                log::LogLevel::Info,
                &format!("C_GetInterface before C_Initialize: no configuration ({e}); offering PKCS#11 3.0 and 2.40"),
            );
            return None;
        }
    };
    match connection::vendor_interface(&config) {
        Ok(v) if v != (0, 0) => Some(v),
        Ok(_) => None,
        Err(e) => {
            warn(&format!(
                "C_GetInterface before C_Initialize: cannot ask the proxy server ({e}); offering PKCS#11 3.0 and 2.40"
            ));
            None
        }
    }
}

/// Sends `request` through the initialised instance.
pub fn call(request: Request) -> Rv<Response> {
    current()?.call(request)
}

/// C_Initialize's work: read the configuration, connect, and have the application's worker
/// C_Initialize its vendor instance with the shape of the application's arguments (`init`);
/// the vendor's answer is C_Initialize's.
pub fn initialize(init: Option<InitArgs>) -> Rv {
    // A process that exits without C_Finalize still ends its view on the server at once, so
    // its sessions and login do not wait out the server's resume grace period.
    static EXIT_HOOK: std::sync::Once = std::sync::Once::new();
    // SAFETY: registering a handler with no preconditions; it never unwinds.
    EXIT_HOOK.call_once(|| unsafe {
        libc::atexit(finalize_at_exit);
    });
    let mut slot = CLIENT.write();
    if let Some(c) = &*slot {
        if c.pid == std::process::id() {
            return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
        // A child after fork(): the parent's connections are not ours to use. Dropping them
        // closes only this process's descriptors.
    }
    *slot = None;
    log::configure_from_env();
    let config = Config::load().map_err(|e| {
        log::log(
            log::LogLevel::Error,
            &format!("C_Initialize: configuration error: {e}"),
        );
        CKR_GENERAL_ERROR
    })?;
    log::configure(config.log_level, config.log_target.clone());
    let client_id = random_id().ok_or_else(|| {
        log::log(
            log::LogLevel::Error,
            "C_Initialize: no randomness for the client id",
        );
        CKR_GENERAL_ERROR
    })?;
    let conn = first_connection(&config, &client_id, init)?;
    let init_rv = conn.init_rv();
    if init_rv != 0 {
        // Not initialised: the worker ends when this connection closes.
        return Err(crate::ffi::narrow(init_rv).unwrap_or(CKR_GENERAL_ERROR));
    }
    let client = Client {
        vendor_interface: conn.vendor_interface(),
        pid: std::process::id(),
        journal: RwLock::new(Journal::new(conn.instance())),
        pool: Pool::new(config, client_id, init, conn),
        message_mechanisms: Mutex::new(HashMap::new()),
    };
    *slot = Some(Arc::new(client));
    Ok(())
}

/// C_Initialize's first connection. Behind a load balancer a first attempt may reach a dead
/// replica: a few are made in a row at once. While no server is there at all (the proxy
/// restarts or rolls out), it keeps trying for the reconnect window
/// (`PKCS11_PROXY_RECONNECT_MS`), as every other call does (DESIGN.md, "Healing the HSM
/// side"), so an application started meanwhile starts normally. A server that answered and
/// refused (TLS, `--allow-uid`, `--max-applications`...) is the answer: CKR_FUNCTION_FAILED.
fn first_connection(
    config: &Config,
    client_id: &ClientId,
    init: Option<InitArgs>,
) -> Rv<Connection> {
    let deadline = Instant::now() + config.reconnect_window;
    let mut failed = 0;
    let mut waited = None;
    // Some attempt reached a server (which failed or refused the connection).
    let mut reached = false;
    loop {
        let error = match Connection::open(config, client_id, init, 0, [0; 16]) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        failed += 1;
        reached |= !error.unreachable;
        if failed < FAILED_IN_A_ROW {
            continue;
        }
        let wait = pool::next_wait(waited);
        if reached || Instant::now() + wait > deadline {
            log::log(
                log::LogLevel::Error,
                &format!("C_Initialize: cannot reach the proxy server: {error}"),
            );
            return Err(CKR_FUNCTION_FAILED);
        }
        if waited.is_none() {
            warn(&format!(
                "C_Initialize: no proxy server yet ({error}); trying for up to {} ms",
                config.reconnect_window.as_millis()
            ));
        }
        std::thread::sleep(wait);
        waited = Some(wait);
    }
}

/// C_Finalize: ends this application's view on the server (its sessions are closed) and
/// drops every connection.
pub fn finalize() -> Rv {
    let client = {
        let mut slot = CLIENT.write();
        match slot.take() {
            Some(c) if c.pid == std::process::id() => c,
            _ => return Err(CKR_CRYPTOKI_NOT_INITIALIZED),
        }
    };
    client.pool.interrupt_waits();
    // The vendor's answer is C_Finalize's. Unanswered (the server is gone), the worker
    // finalises the instance when its resume grace runs out: the application is finalised
    // here all the same.
    let answer = client.call_with(Request::Finalize {}, false);
    // Kept PINs are wiped as the records drop.
    client.journal.write().clear();
    match answer {
        Ok(r) => crate::ffi::rv_of(r),
        Err(_) => Ok(()),
    }
}

/// At process exit (or when the library is unloaded): C_Finalize's work, if the application
/// did not do it, over an idle connection with a short timeout. Never blocks on a lock.
extern "C" fn finalize_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Some(mut slot) = CLIENT.try_write() else {
            return;
        };
        let client = match slot.take() {
            Some(c) if c.pid == std::process::id() => c,
            other => {
                *slot = other;
                return;
            }
        };
        drop(slot);
        client.pool.say_goodbye();
    });
}

/// A new random client id, from getrandom(2).
fn random_id() -> Option<ClientId> {
    let mut id = [0u8; 16];
    // SAFETY: id is writable for its length.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    (n == id.len() as isize).then_some(id)
}
