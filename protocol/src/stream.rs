//! A connected socket the protocol runs over (TCP, Unix domain, or TLS over TCP), so both
//! sides read and write frames through one type. The TLS session itself is the caller's
//! (the shim and the server each own their rustls configuration); this module only needs it
//! as something to read and write, plus the TCP socket under it for timeouts and shutdown.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A TLS session over a TCP socket, as the shim or the server built it.
pub trait Tunnel: Read + Write + Send {}
impl<T: Read + Write + Send> Tunnel for T {}

/// A TCP, Unix-domain or TLS stream.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A TLS session and (a second handle on) the TCP socket under it.
    Tls(Box<dyn Tunnel>, TcpStream),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(s) => write!(f, "Tcp({s:?})"),
            Self::Unix(s) => write!(f, "Unix({s:?})"),
            Self::Tls(_, s) => write!(f, "Tls({s:?})"),
        }
    }
}

impl Stream {
    /// A second handle, for shutting the stream down from another thread. For TLS it is the
    /// TCP socket under the session: never read or write through it.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(s) | Self::Tls(_, s) => Self::Tcp(s.try_clone()?),
            Self::Unix(s) => Self::Unix(s.try_clone()?),
        })
    }

    /// Shuts down one or both directions; errors (an already closed socket) are ignored.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Self::Tcp(s) | Self::Tls(_, s) => s.shutdown(how),
            Self::Unix(s) => s.shutdown(how),
        };
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) | Self::Tls(_, s) => s.set_read_timeout(t),
            Self::Unix(s) => s.set_read_timeout(t),
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) | Self::Tls(_, s) => s.set_write_timeout(t),
            Self::Unix(s) => s.set_write_timeout(t),
        }
    }

    /// Bounds every read and every write by `t`.
    pub fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Self::Tcp(s) | Self::Tls(_, s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
            Self::Unix(s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Tcp(s) | Self::Tls(_, s) => s.as_raw_fd(),
            Self::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(s) | Self::Tls(_, s) => s.as_fd(),
            Self::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
            Self::Tls(t, _) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
            Self::Tls(t, _) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tls(t, _) => t.flush(),
            _ => Ok(()),
        }
    }
}
