//! The messages between the router and its workers (DESIGN.md, "Server semantics"), and the
//! channel that carries them: a `SOCK_SEQPACKET` socket pair, one message per packet, with an
//! accepted client socket attached to a hand-over as `SCM_RIGHTS` (unix(7)), so the worker
//! owns the connection and the router relays no byte of it.
//!
//! The worker's end is descriptor [`WORKER_FD`] in the worker process (the router's own
//! binary, started with `--worker`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use protocol::codec;
use protocol::handshake::{InstanceId, RoutingId};
use serde::{Deserialize, Serialize};

use crate::metrics::Snapshot;
use crate::tls::TlsFiles;

/// The descriptor of the control channel in a worker.
pub const WORKER_FD: RawFd = 3;

/// Largest control message (a metrics snapshot is the largest: a few KiB).
const MAX_MESSAGE: usize = 128 * 1024;

/// What a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// One application (one shim instance, named by its routing id): the vendor library is
    /// C_Initialized with the application's own arguments at its first hello.
    Application(RoutingId),
    /// Every application (`--shared-worker`), and the readiness probe: the vendor library is
    /// C_Initialized at start with CKF_OS_LOCKING_OK.
    Shared,
    /// The readiness probe only (no client connection): C_Initialized at start.
    Probe,
}

impl Role {
    /// Names a worker in logs and metrics: the first 8 hex digits of its routing id (not
    /// secret), `shared` or `probe`.
    pub fn label(&self) -> String {
        match self {
            Self::Application(route) => route[..4].iter().map(|b| format!("{b:02x}")).collect(),
            Self::Shared => "shared".into(),
            Self::Probe => "probe".into(),
        }
    }
}

/// What a worker needs of the server's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSettings {
    pub role: Role,
    /// The worker's instance id, chosen by the router, which routes by it (the prelude names
    /// the instance an application is on) and tells it in every welcome.
    pub instance_id: InstanceId,
    pub module: String,
    pub init_args: Option<String>,
    pub tls: Option<TlsFiles>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub resume_grace: Duration,
    /// Most connections of this worker open at once.
    pub max_connections: usize,
    pub deny_functions: Vec<String>,
    pub deny_mechanisms: Vec<String>,
    /// `--policy`: read by the worker at start and at each reload.
    pub policy: Option<std::path::PathBuf>,
    /// What its application's calls the audit log gets (`--audit-log`, `--audit`).
    pub audit: Option<crate::audit::Level>,
    /// Identities locked out at its start (PIN custody), until when (ms since the epoch).
    pub locked: Vec<(String, u64)>,
    pub json_logs: bool,
    pub heal: HealSettings,
    /// Trace every call of the application (`worker::trace`).
    pub trace: bool,
}

/// What an application's worker is told of healing (DESIGN.md, "Healing the HSM side").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HealSettings {
    /// A broken vendor instance is replaced (`--heal on`).
    pub enabled: bool,
    /// How many instances of this application broke one after the other before this one:
    /// the backoff step of its own replacement.
    pub step: u32,
    /// When the outage began (milliseconds since the Unix epoch), when `step` > 0.
    pub outage_since_ms: u64,
    /// The slots the application's broken instances saw a token in: a CKR_TOKEN_NOT_PRESENT
    /// there is the token still gone, not a slot that never had one.
    pub present: Vec<u64>,
    /// `--call-deadline` and `--slow-call-deadline` (DESIGN.md, "Healing the HSM side").
    pub call_deadline: std::time::Duration,
    pub slow_call_deadline: std::time::Duration,
}

/// Why a vendor instance was taken for broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokenBy {
    DeviceError,
    DeviceRemoved,
    TokenNotPresent,
    NotInitialized,
    /// A call outlived its deadline: its thread is stuck inside the vendor library.
    HungCall,
}

impl BrokenBy {
    /// Its name in logs and metrics labels.
    pub fn label(self) -> &'static str {
        crate::metrics::BROKEN_BY[self as usize]
    }
}

/// A worker leaving because its vendor instance is broken: what its replacement inherits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replaced {
    pub by: BrokenBy,
    /// The replacement's [`HealSettings::step`], [`HealSettings::outage_since_ms`] and
    /// [`HealSettings::present`].
    pub step: u32,
    pub outage_since_ms: u64,
    pub present: Vec<u64>,
}

/// What an accepted connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    Tcp,
    /// TCP whose TLS handshake is the worker's to do.
    Tls,
    Unix,
}

/// Router to worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first message: what to serve.
    Start(Box<WorkerSettings>),
    /// An accepted connection (attached), its routing prelude already read.
    Connection {
        peer: String,
        transport: Transport,
        /// The identity a client id is bound to: "tcp", `uid:N` (Unix socket); TLS: filled
        /// in by the worker from the client certificate.
        identity: Vec<u8>,
    },
    /// Reload the TLS material (SIGHUP).
    Reload,
    /// Trace the application's calls, or stop (SIGUSR1, SIGUSR2 to the router).
    Trace { on: bool },
    /// An identity under PIN custody is locked out until then (milliseconds since the Unix
    /// epoch): too many wrong client secrets across its applications.
    Locked { identity: String, until_ms: u64 },
    /// Send a [`ToRouter::Report`]; with `ready`, check the vendor library too.
    Report { ready: bool },
    /// Finish the calls in flight (bounded), close sessions, C_Finalize, exit 0.
    Stop,
}

/// Worker to router.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToRouter {
    /// The vendor library is loaded (and, for shared and probe workers, initialised).
    Started { interface: (u8, u8) },
    /// The vendor library could not be loaded or initialised; the worker exits.
    Failed { reason: String },
    /// Metrics, and the vendor's readiness when it was asked for.
    Report {
        snapshot: Snapshot,
        ready: Option<crate::metrics::Probed>,
    },
    /// A hello was accepted: the worker serves a real application, no longer a routing id
    /// alone (sent once).
    Authenticated,
    /// The application is gone (C_Finalize, or no connection for the resume grace period),
    /// or its vendor instance is broken and is to be replaced (`replaced`): route nothing
    /// more here; the router answers with [`ToWorker::Stop`].
    Leaving { replaced: Option<Replaced> },
    /// A vendor call outlived its deadline and was abandoned (`slow`: `--slow-call-deadline`).
    Abandoned { slow: bool },
    /// Events for the audit log (`crate::audit`), and how many the worker dropped before
    /// them (its queue was full).
    Audit {
        events: Vec<crate::audit::Event>,
        dropped: u64,
    },
    /// A wrong client secret of an identity under PIN custody, whose lock-out comes after
    /// `attempts` of them within `window_ms`.
    LoginFailed {
        identity: String,
        attempts: u32,
        window_ms: u64,
    },
}

/// One end of a control channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// Another end on the same socket (the worker's audit events go out on it).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
        })
    }

    /// A connected pair (router end, worker end), close-on-exec both.
    pub fn pair() -> io::Result<(Self, Self)> {
        let mut fds = [0; 2];
        // SAFETY: fds is writable for two descriptors.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socketpair returned two fresh descriptors that nothing else owns.
        unsafe {
            Ok((
                Self {
                    fd: OwnedFd::from_raw_fd(fds[0]),
                },
                Self {
                    fd: OwnedFd::from_raw_fd(fds[1]),
                },
            ))
        }
    }

    /// The worker's end, inherited at [`WORKER_FD`].
    ///
    /// # Safety
    /// Only in a worker process, whose router placed the channel there; called once.
    pub unsafe fn inherited() -> Self {
        libc::fcntl(WORKER_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        Self {
            fd: OwnedFd::from_raw_fd(WORKER_FD),
        }
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends one message, with `attached` as SCM_RIGHTS when given.
    pub fn send<T: Serialize>(&self, message: &T, attached: Option<BorrowedFd>) -> io::Result<()> {
        let mut bytes = Vec::new();
        codec::encode(message, &mut bytes).map_err(io::Error::other)?;
        let mut iov = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: bytes.len(),
        };
        // Room for one descriptor, aligned as cmsghdr wants.
        let mut control = [0u64; 4];
        // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
        let rc = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if let Some(fd) = attached {
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
            }
            libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one message and the descriptor attached to it, if any; `Ok(None)` when the
    /// other end closed.
    pub fn recv<T: serde::de::DeserializeOwned>(&self) -> io::Result<Option<(T, Option<OwnedFd>)>> {
        let mut bytes = vec![0u8; MAX_MESSAGE];
        let mut iov = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: bytes.len(),
        };
        let mut control = [0u64; 4];
        // SAFETY: as in send; recvmsg writes within the buffers it is given, and
        // MSG_CMSG_CLOEXEC marks a received descriptor close-on-exec at once.
        let (n, msg) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = loop {
                let n = libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
                if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break n;
                }
            };
            (n, msg)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the control buffer was filled by recvmsg; a descriptor received is ours.
        let attached = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if !cmsg.is_null()
                && (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
            {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                Some(OwnedFd::from_raw_fd(fd))
            } else {
                None
            }
        };
        if n == 0 {
            return Ok(None);
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(io::Error::other("control message truncated"));
        }
        bytes.truncate(n as usize);
        let message = codec::decode(&bytes).map_err(io::Error::other)?;
        Ok(Some((message, attached)))
    }
}

/// 16 random bytes from the kernel (getrandom(2)): a new instance id for every worker.
pub fn new_instance_id() -> InstanceId {
    let mut id = [0u8; 16];
    // SAFETY: id is writable for its length.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize || id == [0; 16] {
        // Uniqueness, not secrecy, is what an instance id needs (and all zeros names none).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        id.copy_from_slice(&(t.as_nanos() | 1).to_le_bytes());
        id[..4].copy_from_slice(&std::process::id().to_le_bytes());
    }
    id
}
