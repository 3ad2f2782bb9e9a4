//! The router's state, shared by its accepting threads and its HTTP endpoints: who may
//! connect, the workers, the budget of connections before their prelude, and whether it is
//! stopping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::workers::Workers;
use crate::startups::Startups;

/// Who may connect, and how Unix sockets are made.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Mode of Unix socket files.
    pub unix_mode: u32,
    /// Peer uids allowed on Unix sockets (SO_PEERCRED); empty: any.
    pub allowed_uids: Vec<u32>,
    /// TLS material was given, for `tls://` listeners (the workers load it).
    pub tls: bool,
    /// Listening on a non-loopback plain `tcp://` address was explicitly allowed.
    pub allow_plaintext: bool,
}

/// The running router.
pub struct Router {
    pub access: Access,
    pub workers: Arc<Workers>,
    pub handshake_timeout: Duration,
    /// Connections that have not sent their routing prelude yet.
    pub startups: Arc<Startups>,
    pub stopping: AtomicBool,
}

impl Router {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Reloads the TLS material and the policy (SIGHUP): every worker reads them again.
    pub fn reload(&self) {
        self.workers.reload();
        tracing::info!("reload (TLS files, policy) sent to every worker");
    }
}
