//! Listening sockets (`tcp://` and `unix://`) and their accept loops: one thread per
//! connection, so a slow vendor call of one client never stalls another.

use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use protocol::address::Address;

use crate::server::Server;
use protocol::stream::Stream;

/// Stack of each connection thread: vendor libraries get the room they need.
const CONNECTION_STACK: usize = 1024 * 1024;

/// TCP keepalive of client connections: first probe after 30 s idle, then every 10 s, 3 tries.
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(std::time::Duration::from_secs(30))
    .with_interval(std::time::Duration::from_secs(10))
    .with_retries(3);

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds `addr`, trying every resolved address in order for TCP. A stale Unix socket file
    /// is replaced only if it really is a socket.
    pub fn bind(addr: &Address) -> Result<Self, String> {
        match addr {
            Address::Tcp { host, port } => {
                let candidates = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| format!("{addr}: cannot resolve: {e}"))?;
                let mut last = format!("{addr}: no address");
                for sa in candidates {
                    match TcpListener::bind(sa) {
                        Ok(l) => return Ok(Self::Tcp(l)),
                        Err(e) => last = format!("{addr}: cannot listen on {sa}: {e}"),
                    }
                }
                Err(last)
            }
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                let l =
                    UnixListener::bind(path).map_err(|e| format!("{addr}: cannot listen: {e}"))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                    .map_err(|e| format!("{addr}: cannot set mode 0660: {e}"))?;
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
            Self::Tcp(l) => l.as_raw_fd(),
            Self::Unix(l) => l.as_raw_fd(),
        };
        // SAFETY: fd is a listening socket owned by self.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }

    fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Self::Tcp(l) => {
                let (s, peer) = l.accept()?;
                s.set_nodelay(true)?;
                // A client that vanished without a FIN (power loss, network cut) is noticed
                // within about a minute, and its sessions are closed.
                socket2::SockRef::from(&s).set_tcp_keepalive(&KEEPALIVE)?;
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Self::Unix(l) => {
                let (s, _) = l.accept()?;
                Ok((Stream::Unix(s), "unix".to_string()))
            }
        }
    }
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

/// Accepts connections on `listener` until the server stops, each served on its own thread.
pub fn accept_loop(server: Arc<Server>, index: usize) {
    let listener = &server.listeners[index];
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
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
        let Some(conn_id) = server.track(&stream) else {
            continue;
        };
        let srv = server.clone();
        let spawned = std::thread::Builder::new()
            .name("p11-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                crate::connection::serve(&srv.shared, stream, &peer);
                srv.untrack(conn_id);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a connection thread; connection dropped");
            server.untrack(conn_id);
        }
    }
}
