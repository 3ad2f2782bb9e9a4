//! Listening sockets (`tcp://`, `tls://` and `unix://`) and their accept loops: one thread per
//! connection, so a slow vendor call of one client never stalls another.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use protocol::address::Address;
use protocol::stream::Stream;

use crate::server::Server;
use crate::tls::{TlsFiles, TlsListener};

/// Stack of each connection thread: vendor libraries get the room they need.
const CONNECTION_STACK: usize = 1024 * 1024;

/// TCP keepalive of client connections: first probe after 30 s idle, then every 10 s, 3 tries.
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(std::time::Duration::from_secs(30))
    .with_interval(std::time::Duration::from_secs(10))
    .with_retries(3);

/// Who may connect, and how Unix sockets are made.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Mode of Unix socket files.
    pub unix_mode: u32,
    /// Peer uids allowed on Unix sockets (SO_PEERCRED); empty: any.
    pub allowed_uids: Vec<u32>,
    /// TLS material, for `tls://` listeners.
    pub tls: Option<TlsFiles>,
    /// Listening on a non-loopback plain `tcp://` address was explicitly allowed.
    pub allow_plaintext: bool,
}

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Tls(TcpListener, TlsListener),
    Unix(UnixListener),
}

/// An accepted connection, before its TLS handshake (done on the connection's own thread).
pub enum Incoming {
    Plain(Stream),
    Tls(Box<rustls::ServerConnection>, TcpStream),
}

/// An accepted connection, who it comes from, and the identity a client id is bound to.
pub struct Accepted {
    pub incoming: Incoming,
    pub peer: String,
    /// "tcp", `uid:N` for a Unix socket, or the client certificate (DER) for TLS (filled in
    /// after the handshake).
    pub identity: Vec<u8>,
}

fn bind_tcp(addr: &Address, host: &str, port: u16) -> Result<TcpListener, String> {
    let candidates = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: cannot resolve: {e}"))?;
    let mut last = format!("{addr}: no address");
    for sa in candidates {
        match TcpListener::bind(sa) {
            Ok(l) => return Ok(l),
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
                let files = access.tls.clone().ok_or_else(|| {
                    format!(
                        "{addr}: a tls:// listener needs --tls-cert, --tls-key and --tls-client-ca"
                    )
                })?;
                Ok(Self::Tls(
                    bind_tcp(addr, host, *port)?,
                    TlsListener::new(files)?,
                ))
            }
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                let l =
                    UnixListener::bind(path).map_err(|e| format!("{addr}: cannot listen: {e}"))?;
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
            Self::Tls(l, _) => l
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

    /// Reloads TLS material (SIGHUP); other listeners have none.
    pub fn reload(&self) -> Option<Result<(), String>> {
        match self {
            Self::Tls(_, tls) => Some(tls.reload()),
            _ => None,
        }
    }

    /// Wakes a thread blocked in `accept` (shutdown(2) on a listening socket makes accept fail).
    pub fn stop(&self) {
        let fd = match self {
            Self::Tcp(l) | Self::Tls(l, _) => l.as_raw_fd(),
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
            Self::Tcp(l) => {
                let (s, peer) = l.accept()?;
                tcp(&s)?;
                Ok(Some(Accepted {
                    incoming: Incoming::Plain(Stream::Tcp(s)),
                    peer: peer.to_string(),
                    identity: b"tcp".to_vec(),
                }))
            }
            Self::Tls(l, tls) => {
                let (s, peer) = l.accept()?;
                tcp(&s)?;
                match tls.session() {
                    Ok(conn) => Ok(Some(Accepted {
                        incoming: Incoming::Tls(Box::new(conn), s),
                        peer: peer.to_string(),
                        identity: vec![],
                    })),
                    Err(e) => {
                        tracing::error!(%peer, error = %e, "cannot start a TLS session");
                        Ok(None)
                    }
                }
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
                    incoming: Incoming::Plain(Stream::Unix(s)),
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

/// Accepts connections on `listener` until the server stops, each served on its own thread;
/// beyond `--max-connections` new ones are closed at once, with a log line.
pub fn accept_loop(server: Arc<Server>, index: usize) {
    let listener = &server.listeners[index];
    loop {
        let accepted = match listener.accept(&server.access) {
            Ok(Some(a)) => a,
            Ok(None) => {
                server
                    .shared
                    .metrics
                    .connections_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            Err(_) if server.is_stopping() => return,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        if server.is_stopping() {
            return;
        }
        let Some(conn_id) = server.track(&accepted) else {
            continue;
        };
        let srv = server.clone();
        let spawned = std::thread::Builder::new()
            .name("p11-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                crate::connection::serve(&srv.shared, accepted);
                srv.untrack(conn_id);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a connection thread; connection dropped");
            server.untrack(conn_id);
        }
    }
}
