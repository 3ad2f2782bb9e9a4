//! Listening sockets (`tcp://`, `tls://` and `unix://`), their accept loops, and the routing
//! of each accepted connection: its plaintext prelude names the application, whose worker is
//! handed the socket (SCM_RIGHTS) and does everything after, the TLS handshake included.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use protocol::address::Address;
use protocol::frame::write_frame;
use protocol::handshake::{
    is_v1_hello, Prelude, RouteAnswer, Welcome, PRELUDE_LEN, ROUTE_MAGIC, VERSION,
};

use super::state::{Access, Router};
use super::workers::Refusal;
use crate::control::Transport;

/// Stack of a routing thread: it reads 26 bytes and hands the socket over.
const ROUTING_STACK: usize = 64 * 1024;

/// How much of a version-1 hello the router reads to answer it in its own terms.
const V1_PRELUDE_READ: usize = 26;

/// TCP keepalive of client connections: first probe after 30 s idle, then every 10 s, 3 tries.
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(std::time::Duration::from_secs(30))
    .with_interval(std::time::Duration::from_secs(10))
    .with_retries(3);

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Tls(TcpListener),
    Unix(UnixListener),
}

/// An accepted socket, before its prelude.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn read_exact(&self, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => (&*s).read_exact(buf),
            Self::Unix(s) => (&*s).read_exact(buf),
        }
    }

    fn write_all(&self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => (&*s).write_all(buf),
            Self::Unix(s) => (&*s).write_all(buf),
        }
    }

    /// Ends a refused connection so that the peer reads the refusal: closing a socket with
    /// unread bytes would reset it and lose what was written. Reads what is left (bounded).
    fn close_gently(&self) {
        // SAFETY: shutdown(2) of our own socket's sending side.
        unsafe { libc::shutdown(self.fd().as_raw_fd(), libc::SHUT_WR) };
        self.set_timeouts(Duration::from_millis(500));
        let mut sink = [0u8; 1024];
        for _ in 0..16 {
            let n = match self {
                Self::Tcp(s) => (&*s).read(&mut sink),
                Self::Unix(s) => (&*s).read(&mut sink),
            };
            if !matches!(n, Ok(n) if n > 0) {
                break;
            }
        }
    }

    fn set_timeouts(&self, t: Duration) {
        let _ = match self {
            Self::Tcp(s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
            Self::Unix(s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
        };
    }

    /// The peer's IP address (none for a Unix socket).
    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Self::Tcp(s) => s.peer_addr().ok().map(|a| a.ip()),
            Self::Unix(_) => None,
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Self::Tcp(s) => s.as_fd(),
            Self::Unix(s) => s.as_fd(),
        }
    }
}

/// An accepted connection, who it comes from, and the identity a client id is bound to.
struct Accepted {
    socket: Socket,
    transport: Transport,
    peer: String,
    /// "tcp", or `uid:N` for a Unix socket; for TLS, the worker fills in the client
    /// certificate after the handshake.
    identity: Vec<u8>,
}

/// Backlog of a listening socket (the kernel caps it at `net.core.somaxconn`): a burst of
/// connections, a reconnect storm or a flood, waits in the queue rather than having its SYNs
/// dropped (a client then retries only after a second).
const BACKLOG: libc::c_int = 4096;

/// Raises a bound listener's backlog (listen(2) again on a listening socket sets it).
fn deepen_backlog(fd: std::os::fd::RawFd) {
    // SAFETY: listen(2) on a socket this process owns and listens on.
    unsafe { libc::listen(fd, BACKLOG) };
}

fn bind_tcp(addr: &Address, host: &str, port: u16) -> Result<TcpListener, String> {
    let candidates = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: cannot resolve: {e}"))?;
    let mut last = format!("{addr}: no address");
    for sa in candidates {
        match TcpListener::bind(sa) {
            Ok(l) => {
                deepen_backlog(l.as_raw_fd());
                return Ok(l);
            }
            Err(e) => last = format!("{addr}: cannot listen on {sa}: {e}"),
        }
    }
    Err(last)
}

impl Listener {
    /// Binds `addr`, trying every resolved address in order for TCP. A stale Unix socket file
    /// is replaced only if it really is a socket. Plain TCP on an address other than loopback
    /// is refused unless `access.allow_plaintext`: PINs and signatures would cross the
    /// network in clear.
    pub fn bind(addr: &Address, access: &Access) -> Result<Self, String> {
        match addr {
            Address::Tcp { host, port } => {
                let exposed = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| format!("{addr}: cannot resolve: {e}"))?
                    .any(|sa| !sa.ip().is_loopback());
                if exposed {
                    if !access.allow_plaintext {
                        return Err(format!(
                            "{addr}: refusing plain TCP on a non-loopback address: PINs would cross the network in clear; use tls://, or --allow-plaintext on a network you trust"
                        ));
                    }
                    tracing::warn!(%addr, "plain TCP on a non-loopback address (--allow-plaintext): PINs and data cross the network unencrypted");
                }
                Ok(Self::Tcp(bind_tcp(addr, host, *port)?))
            }
            Address::Tls { host, port } => {
                if !access.tls {
                    return Err(format!(
                        "{addr}: a tls:// listener needs --tls-cert, --tls-key and --tls-client-ca"
                    ));
                }
                Ok(Self::Tls(bind_tcp(addr, host, *port)?))
            }
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                let l =
                    UnixListener::bind(path).map_err(|e| format!("{addr}: cannot listen: {e}"))?;
                deepen_backlog(l.as_raw_fd());
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.unix_mode))
                    .map_err(|e| format!("{addr}: cannot set mode {:o}: {e}", access.unix_mode))?;
                Ok(Self::Unix(l))
            }
        }
    }

    /// The address actually bound (with the real port when port 0 was asked for).
    pub fn local_address(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp://{a}"))
                .unwrap_or_default(),
            Self::Tls(l) => l
                .local_addr()
                .map(|a| format!("tls://{a}"))
                .unwrap_or_default(),
            Self::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix://{}", p.display())))
                .unwrap_or_default(),
        }
    }

    /// Wakes a thread blocked in `accept` (shutdown(2) on a listening socket makes accept fail).
    pub fn stop(&self) {
        let fd = match self {
            Self::Tcp(l) | Self::Tls(l) => l.as_raw_fd(),
            Self::Unix(l) => l.as_raw_fd(),
        };
        // SAFETY: fd is a listening socket owned by self.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }

    fn accept(&self, access: &Access) -> std::io::Result<Option<Accepted>> {
        let tcp = |s: &TcpStream| -> std::io::Result<()> {
            s.set_nodelay(true)?;
            // A client that vanished without a FIN (power loss, network cut) is noticed
            // within about a minute, and its sessions are closed.
            socket2::SockRef::from(s).set_tcp_keepalive(&KEEPALIVE)
        };
        match self {
            Self::Tcp(l) | Self::Tls(l) => {
                let (s, peer) = l.accept()?;
                tcp(&s)?;
                Ok(Some(Accepted {
                    socket: Socket::Tcp(s),
                    transport: if matches!(self, Self::Tls(_)) {
                        Transport::Tls
                    } else {
                        Transport::Tcp
                    },
                    peer: peer.to_string(),
                    identity: b"tcp".to_vec(),
                }))
            }
            Self::Unix(l) => {
                let (s, _) = l.accept()?;
                let uid = peer_uid(&s);
                let peer = uid.map_or("unix (uid unknown)".to_string(), |u| {
                    format!("unix uid {u}")
                });
                if !access.allowed_uids.is_empty()
                    && !uid.is_some_and(|u| access.allowed_uids.contains(&u))
                {
                    tracing::warn!(%peer, "connection refused: uid not in --allow-uid");
                    return Ok(None);
                }
                let identity = format!("uid:{}", uid.map_or(-1, i64::from)).into_bytes();
                Ok(Some(Accepted {
                    socket: Socket::Unix(s),
                    transport: Transport::Unix,
                    peer,
                    identity,
                }))
            }
        }
    }
}

/// Listening sockets handed over by systemd socket activation (`LISTEN_PID`, `LISTEN_FDS`,
/// descriptors from 3; sd_listen_fds(3)). TCP sockets are served as `tcp://` (systemd's
/// socket unit decides where they listen), Unix sockets as `unix://`.
pub fn inherited() -> Vec<Listener> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !ours || count <= 0 {
        return Vec::new();
    }
    (3..3 + count)
        .filter_map(|fd| {
            let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: getsockname writes at most `len` bytes into `addr`.
            if unsafe {
                libc::getsockname(
                    fd,
                    (&mut addr as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                )
            } != 0
            {
                tracing::warn!(fd, "inherited descriptor is not a socket; ignored");
                return None;
            }
            // SAFETY: systemd hands these listening descriptors to this process alone.
            unsafe {
                use std::os::fd::FromRawFd;
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                match i32::from(addr.ss_family) {
                    libc::AF_INET | libc::AF_INET6 => {
                        Some(Listener::Tcp(TcpListener::from_raw_fd(fd)))
                    }
                    libc::AF_UNIX => Some(Listener::Unix(UnixListener::from_raw_fd(fd))),
                    family => {
                        tracing::warn!(
                            fd,
                            family,
                            "inherited socket of an unknown family; ignored"
                        );
                        None
                    }
                }
            }
        })
        .collect()
}

/// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

fn remove_stale_socket(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| format!("{}: cannot remove stale socket: {e}", path.display())),
        Ok(_) => Err(format!(
            "{}: exists and is not a socket; refusing to replace it",
            path.display()
        )),
        Err(_) => Ok(()),
    }
}

/// Accepts connections on `listener` until the server stops, each routed on a short-lived
/// thread of its own (a client slow to send its prelude holds up nobody else), within the
/// budget of connections before their prelude (`crate::startups`).
pub fn accept_loop(router: Arc<Router>, listener: Arc<Listener>) {
    loop {
        let accepted = match listener.accept(&router.access) {
            Ok(Some(a)) => a,
            Ok(None) => {
                refused(&router);
                continue;
            }
            Err(_) if router.is_stopping() => return,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if router.is_stopping() {
            return;
        }
        // Refusals and drops are counted and logged as one summary per interval.
        let Some(ticket) = router
            .startups
            .admit(accepted.socket.peer_ip(), accepted.socket.fd())
        else {
            refused(&router);
            continue;
        };
        let r = router.clone();
        let spawned = std::thread::Builder::new()
            .name("p11-route".into())
            .stack_size(ROUTING_STACK)
            .spawn(move || route(&r, accepted, ticket));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a routing thread; connection dropped");
        }
    }
}

fn refused(router: &Router) {
    router
        .workers
        .counters
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
}

/// Reads the connection's prelude (bounded by the handshake timeout, no byte past it: TLS or
/// the hello follow) and hands the socket to the application's worker, started if need be.
/// The connection holds `ticket`, its place in the budget, until it is handed over (released
/// first, so that the budget never drops a connection its worker serves) or closed.
fn route(router: &Router, accepted: Accepted, ticket: crate::startups::Ticket) {
    let peer = accepted.peer.as_str();
    let socket = &accepted.socket;
    socket.set_timeouts(router.handshake_timeout);
    let mut first = [0u8; PRELUDE_LEN];
    // The magic and version first (or, from a shim of version 1, a frame length and the
    // magic), so that anything else, or a prelude of another length from another version, is
    // refused at once rather than after the handshake timeout.
    let magic_read = socket.read_exact(&mut first[..12]).and_then(|()| {
        if first[..8] == ROUTE_MAGIC && Prelude::check_head(&first).is_ok() {
            socket.read_exact(&mut first[12..])
        } else if is_v1_hello(&first[..12]) {
            socket.read_exact(&mut first[12..V1_PRELUDE_READ])
        } else {
            Ok(())
        }
    });
    if let Err(e) = magic_read {
        refused(router);
        // Idle and dropped connections are the budget's to report, in its summaries.
        tracing::debug!(peer, error = %e, "connection closed before its routing prelude");
        return;
    }
    let prelude = match Prelude::decode(&first) {
        Ok(p) => p,
        Err(e) => {
            refused(router);
            if is_v1_hello(&first) {
                // A shim from before the prelude reads this as a refused welcome.
                let theirs = u16::from_le_bytes([first[12], first[13]]);
                let reason = format!(
                    "server speaks protocol version {VERSION}, the client {theirs}: use a shim of the same release"
                );
                let mut frame = Vec::new();
                let welcome = Welcome::Refused {
                    version: VERSION,
                    reason,
                };
                if write_frame(&mut frame, &welcome.encode(), &mut Vec::new()).is_ok() {
                    let _ = socket.write_all(&frame);
                }
            } else if let protocol::ProtocolError::VersionMismatch { .. } = e {
                let reason = format!("server speaks protocol version {VERSION}: {e}");
                let _ = socket.write_all(&RouteAnswer::Refused(reason).encode());
            }
            router.startups.refused_invalid();
            tracing::debug!(peer, error = %e, "connection refused: no valid routing prelude");
            socket.close_gently();
            return;
        }
    };
    let interface = router.workers.interface();
    if prelude.is_interface_query() {
        // C_GetInterfaceList before C_Initialize: the vendor's version, and nothing more.
        let _ = socket.write_all(&RouteAnswer::Routed { interface }.encode());
        socket.close_gently();
        return;
    }
    let worker = match router.workers.route(prelude.routing_id, prelude.instance) {
        Ok(w) => w,
        Err(refusal) => {
            refused(router);
            let answer = match refusal {
                Refusal::Flood(reason) => {
                    // Counted in the metrics; one line each would be the flood's own. The
                    // shim tries again shortly.
                    tracing::debug!(peer, reason, "connection refused for now");
                    RouteAnswer::Busy(reason)
                }
                Refusal::Limit(reason) => {
                    tracing::warn!(peer, reason, "connection refused");
                    RouteAnswer::Refused(reason)
                }
                Refusal::Elsewhere(reason) => {
                    // The normal case behind a load balancer: counted, not logged each time.
                    tracing::debug!(peer, reason, "connection sent elsewhere");
                    router
                        .workers
                        .counters
                        .connections_elsewhere
                        .fetch_add(1, Ordering::Relaxed);
                    RouteAnswer::Elsewhere(reason)
                }
            };
            let _ = socket.write_all(&answer.encode());
            socket.close_gently();
            return;
        }
    };
    if !ticket.release() {
        // Dropped to make room just now: its socket is shut down.
        return;
    }
    // The answer goes before the hand-over: every byte after it is the worker's.
    if let Err(e) = socket.write_all(&RouteAnswer::Routed { interface }.encode()) {
        tracing::warn!(peer, error = %e, "connection lost while routing");
        return;
    }
    let Accepted {
        socket,
        transport,
        peer,
        identity,
    } = accepted;
    if let Err(e) = worker.hand_over(socket.fd(), peer.clone(), transport, identity) {
        refused(router);
        tracing::warn!(peer, pid = worker.pid, error = %e, "cannot hand the connection to its worker; closed");
    }
}
