//! One connection to the server: connect (trying each address in order), handshake, and
//! request/response round trips with every wait bounded by a timeout.

use std::io::{BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use protocol::address::Address;
use protocol::codec;
use protocol::frame::{read_frame, wipe, write_frame, MAX_FRAME_LEN};
use protocol::handshake::{
    routing_id, ClientId, Hello, InitArgs, InstanceId, Prelude, RouteAnswer, Welcome, PRELUDE_LEN,
};
use protocol::message::Identity;
use protocol::message::{Request, Response};
use protocol::stream::Stream;
use protocol::ProtocolError;

use super::config::Config;
use crate::ffi::ULONG;

/// TCP keepalive towards the server: a silently dead peer fails the call in about a minute
/// instead of waiting for the whole call timeout.
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(std::time::Duration::from_secs(30))
    .with_interval(std::time::Duration::from_secs(10))
    .with_retries(3);

/// A TCP connection to the first resolved address that answers, with TCP_NODELAY and
/// keepalive.
fn tcp_connect(host: &str, port: u16, config: &Config) -> Result<TcpStream, String> {
    let mut last = "no address resolved".to_string();
    for sa in (host, port).to_socket_addrs().map_err(|e| e.to_string())? {
        match TcpStream::connect_timeout(&sa, config.connect_timeout) {
            Ok(s) => {
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                socket2::SockRef::from(&s)
                    .set_tcp_keepalive(&KEEPALIVE)
                    .map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// The router's answer (the version of the vendor's interface), as an error when it refused
/// the connection.
fn routed_or_refused(
    answer: Result<RouteAnswer, ProtocolError>,
) -> Result<(u8, u8), ProtocolError> {
    match answer? {
        RouteAnswer::Routed { interface } => Ok(interface),
        RouteAnswer::Refused(reason) => Err(ProtocolError::Refused(reason)),
        RouteAnswer::Busy(reason) => Err(ProtocolError::Busy(reason)),
        RouteAnswer::Elsewhere(reason) => Err(ProtocolError::Elsewhere(reason)),
    }
}

/// Connections closed before any answer that one open makes again at once, before it waits
/// between tries as with a busy server.
const CLOSED_AT_ONCE: usize = 3;

/// Why a connection could not be made: for now (the server said to try again), not here
/// (the server does not hold the application's instance), no server there (nothing accepts
/// at the address, or its name does not resolve), or not at all.
enum OpenError {
    Busy(String),
    /// Closed before any answer: a load balancer's dead target, or the server's budget of
    /// connections that have not sent their prelude was full (an address over its share,
    /// random early drop). Nothing was refused.
    Closed(String),
    Elsewhere(String),
    Unreachable(String),
    Failed(String),
}

/// Why [`Connection::open`] made no connection.
#[derive(Debug)]
pub struct Unopened {
    /// A server answered, but does not hold the instance the application is on (or is
    /// stopping): the instance may be on another replica behind the same address.
    pub elsewhere: bool,
    /// No server was there at any address (nothing accepted, or no name resolved), as while
    /// the proxy restarts or rolls out; a server that answered and refused is not this.
    pub unreachable: bool,
    pub reason: String,
}

impl std::fmt::Display for Unopened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl From<String> for Unopened {
    fn from(reason: String) -> Self {
        Self {
            elsewhere: false,
            unreachable: false,
            reason,
        }
    }
}

impl From<String> for OpenError {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

impl From<&str> for OpenError {
    fn from(e: &str) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<ProtocolError> for OpenError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                Self::Closed(e.to_string())
            }
            ProtocolError::Busy(reason) => Self::Busy(reason),
            ProtocolError::Elsewhere(reason) => Self::Elsewhere(reason),
            e => Self::Failed(e.to_string()),
        }
    }
}

/// Asks the first server that answers which version of the "PKCS 11" interface its vendor
/// library offers (an interface query prelude, answered by the router without a worker,
/// before any TLS), every wait bounded by the connect timeout.
pub fn vendor_interface(config: &Config) -> Result<(u8, u8), String> {
    let mut errors = Vec::new();
    for addr in &config.addresses {
        let asked = (|| -> Result<(u8, u8), String> {
            let mut stream = match addr {
                Address::Tcp { host, port } | Address::Tls { host, port } => {
                    Stream::Tcp(tcp_connect(host, *port, config)?)
                }
                Address::Unix(path) => {
                    Stream::Unix(UnixStream::connect(path).map_err(|e| e.to_string())?)
                }
            };
            stream
                .set_timeouts(config.connect_timeout)
                .map_err(|e| e.to_string())?;
            stream
                .write_all(&Prelude::interface_query().encode())
                .map_err(|e| e.to_string())?;
            routed_or_refused(RouteAnswer::read(&mut stream)).map_err(|e| e.to_string())
        })();
        match asked {
            Ok(v) => return Ok(v),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// A connected, handshaken connection with its reusable buffers.
pub struct Connection {
    reader: BufReader<Stream>,
    /// The server's instance id (new for every worker: every server start, every worker
    /// started after a crash), from the handshake.
    instance: [u8; 16],
    /// The vendor library's answer to the application's C_Initialize, from the handshake.
    init_rv: u64,
    /// The version of the vendor library's "PKCS 11" interface, from the route answer.
    vendor_interface: (u8, u8),
    /// The journal's epoch when this connection was opened (see `Journal::epoch`).
    pub journal_epoch: u64,
    /// Held while the connection is open: counts the application's connections to its
    /// instance (see `Client::live_on`).
    pub live: Option<std::sync::Arc<()>>,
    address_index: usize,
    out: Vec<u8>,
    frame: Vec<u8>,
    scratch: Vec<u8>,
    /// What [`Connection::take_identities`] gives.
    identities: Vec<Identity>,
}

impl Connection {
    /// Connects to the first address that answers, trying them all in order from the one at
    /// index `first` (wrapping around), and performs the handshake, which carries the shape
    /// of the application's C_Initialize arguments (`init`). With `instance` (not all
    /// zeros), only a server holding that instance of the application takes the connection.
    pub fn open(
        config: &Config,
        client_id: &ClientId,
        init: Option<InitArgs>,
        first: usize,
        instance: InstanceId,
    ) -> Result<Self, Unopened> {
        let n = config.addresses.len();
        let mut errors = Vec::new();
        let mut elsewhere = false;
        let mut unreachable = true;
        for index in (0..n).map(|i| (first + i) % n) {
            let addr = &config.addresses[index];
            // A server busy with a flood of new applications says to try again: again, every
            // 50 to 250 ms, within the connect timeout.
            let deadline = Instant::now() + config.connect_timeout;
            let mut wait = Duration::from_millis(50);
            let mut closed = 0;
            loop {
                match Self::open_one(addr, config, client_id, init, instance) {
                    Ok(mut c) => {
                        c.address_index = index;
                        return Ok(c);
                    }
                    Err(OpenError::Busy(reason)) if Instant::now() + wait < deadline => {
                        crate::log::log(
                            crate::log::LogLevel::Debug,
                            &format!("{addr}: server busy ({reason}); trying again"),
                        );
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_millis(250));
                    }
                    Err(OpenError::Busy(reason)) => {
                        unreachable = false;
                        errors.push(format!("{addr}: server busy: {reason}"));
                        break;
                    }
                    // Closed before any answer: at once a few times (behind a balancer the
                    // next connection may reach a live server), then as a busy server.
                    Err(OpenError::Closed(_)) if closed < CLOSED_AT_ONCE => closed += 1,
                    Err(OpenError::Closed(reason)) if Instant::now() + wait < deadline => {
                        crate::log::log(
                            crate::log::LogLevel::Debug,
                            &format!("{addr}: closed before answering ({reason}); trying again"),
                        );
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_millis(250));
                    }
                    Err(OpenError::Closed(reason)) => {
                        unreachable = false;
                        errors.push(format!("{addr}: closed before answering: {reason}"));
                        break;
                    }
                    Err(OpenError::Elsewhere(reason)) => {
                        (elsewhere, unreachable) = (true, false);
                        errors.push(format!("{addr}: not here: {reason}"));
                        break;
                    }
                    Err(OpenError::Unreachable(e)) => {
                        errors.push(format!("{addr}: {e}"));
                        break;
                    }
                    Err(OpenError::Failed(e)) => {
                        unreachable = false;
                        errors.push(format!("{addr}: {e}"));
                        break;
                    }
                }
            }
        }
        Err(Unopened {
            elsewhere,
            unreachable: unreachable && n > 0,
            reason: errors.join("; "),
        })
    }

    /// The index, in the configured list, of the address this connection reached.
    pub fn address_index(&self) -> usize {
        self.address_index
    }

    fn open_one(
        addr: &Address,
        config: &Config,
        client_id: &ClientId,
        init: Option<InitArgs>,
        instance: InstanceId,
    ) -> Result<Self, OpenError> {
        // The routing prelude names the application (and the instance it is on) to the
        // server's router, before TLS; on a plain connection it goes out with the hello, and
        // its answer is read before the welcome.
        let prelude = Prelude {
            routing_id: routing_id(client_id),
            instance,
        }
        .encode();
        let (stream, routed_to) = match addr {
            Address::Tcp { host, port } => {
                let tcp = tcp_connect(host, *port, config).map_err(OpenError::Unreachable)?;
                (Stream::Tcp(tcp), None)
            }
            Address::Tls { host, port } => {
                let mut tcp = tcp_connect(host, *port, config).map_err(OpenError::Unreachable)?;
                tcp.set_read_timeout(Some(config.connect_timeout))
                    .map_err(|e| e.to_string())?;
                tcp.set_write_timeout(Some(config.connect_timeout))
                    .map_err(|e| e.to_string())?;
                tcp.write_all(&prelude).map_err(|e| e.to_string())?;
                let interface = routed_or_refused(RouteAnswer::read(&mut tcp))?;
                let tls = config.tls.as_ref().ok_or("no TLS configuration")?;
                (super::tls::connect(tcp, host, tls)?, Some(interface))
            }
            Address::Unix(path) => {
                let unix =
                    UnixStream::connect(path).map_err(|e| OpenError::Unreachable(e.to_string()))?;
                (Stream::Unix(unix), None)
            }
        };
        // The handshake is bounded by the connect timeout, every call after it by the call
        // timeout: a server that accepts and then says nothing never hangs the application.
        stream
            .set_timeouts(config.connect_timeout)
            .map_err(|e| e.to_string())?;
        let mut conn = Self {
            reader: BufReader::with_capacity(16 * 1024, stream),
            instance: [0; 16],
            init_rv: 0,
            vendor_interface: (0, 0),
            journal_epoch: 0,
            live: None,
            address_index: 0,
            out: Vec::new(),
            frame: Vec::new(),
            scratch: Vec::new(),
            identities: Vec::new(),
        };
        let hello = Hello {
            // Recovery finds token objects again by their identity: the server sends it with
            // the answer that hands each out.
            identify_objects: config.recovery,
            ..Hello::new(ULONG as u8, *client_id, init)
        };
        let (interface, accepted) = conn.handshake(&hello, routed_to, &prelude)?;
        if instance != [0; 16] && accepted.instance_id != instance {
            return Err(OpenError::Elsewhere("another instance answered".into()));
        }
        conn.instance = accepted.instance_id;
        conn.init_rv = accepted.init_rv;
        conn.vendor_interface = interface;
        conn.reader
            .get_ref()
            .set_timeouts(config.call_timeout)
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }

    /// Sends the hello (after `prelude`, unless the connection was `routed` already, with
    /// the vendor's interface version it learnt) and reads the answers.
    fn handshake(
        &mut self,
        hello: &Hello,
        routed: Option<(u8, u8)>,
        prelude: &[u8; PRELUDE_LEN],
    ) -> Result<((u8, u8), protocol::handshake::Accepted), ProtocolError> {
        let hello = hello.encode();
        let mut out = match routed {
            Some(_) => Vec::new(),
            None => prelude.to_vec(),
        };
        write_frame(&mut out, &hello, &mut self.scratch)?;
        self.reader.get_mut().write_all(&out)?;
        let interface = match routed {
            Some(v) => v,
            None => routed_or_refused(RouteAnswer::read(&mut self.reader))?,
        };
        read_frame(&mut self.reader, &mut self.frame, 4096)?;
        Ok((interface, Welcome::decode_accepted(&self.frame)?))
    }

    /// The version of the vendor library's "PKCS 11" interface (0.0 if the router did not
    /// know it).
    pub fn vendor_interface(&self) -> (u8, u8) {
        self.vendor_interface
    }

    /// The vendor library's answer to the application's C_Initialize.
    pub fn init_rv(&self) -> u64 {
        self.init_rv
    }

    /// Whether the server closed this idle connection (it stopped or restarted) or sent
    /// something unasked. Such a connection never saw a request of ours and is discarded
    /// instead of failing the next call. One non-blocking peek, no wait.
    pub fn is_stale(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let fd = self.reader.get_ref().as_raw_fd();
        let mut byte = 0u8;
        // SAFETY: fd is our open socket; one byte of writable buffer.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            -1 => std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock,
            _ => true,
        }
    }

    /// The id of the server instance this connection reached.
    pub fn instance(&self) -> [u8; 16] {
        self.instance
    }

    /// Bounds this connection's reads and writes by `t` from now on.
    pub fn set_timeouts(&self, t: std::time::Duration) -> std::io::Result<()> {
        self.reader.get_ref().set_timeouts(t)
    }

    /// A second handle on this connection's socket, to interrupt a call blocked on it.
    pub fn stream_handle(&self) -> std::io::Result<Stream> {
        self.reader.get_ref().try_clone()
    }

    /// Sends one request and waits (bounded by the call timeout) for its response.
    pub fn call(&mut self, request: &Request) -> Result<Response, ProtocolError> {
        codec::encode(request, &mut self.out)?;
        let sent = write_frame(self.reader.get_mut(), &self.out, &mut self.scratch);
        if request.descriptor().carries_pin {
            wipe(&mut self.out);
            wipe(&mut self.scratch);
        }
        match sent {
            Err(ProtocolError::Io(e)) => return Err(ProtocolError::Unsent(e)),
            other => other?,
        }
        read_frame(&mut self.reader, &mut self.frame, MAX_FRAME_LEN)?;
        self.identities.clear();
        match codec::decode(&self.frame)? {
            Response::Identified { identities, answer } => {
                self.identities = identities;
                Ok(*answer)
            }
            Response::Retired => Err(ProtocolError::Retired),
            answer => Ok(answer),
        }
    }

    /// The identities the server sent with the last answer, for the objects it hands out
    /// (hello flag `identify_objects`).
    pub fn take_identities(&mut self) -> Vec<Identity> {
        std::mem::take(&mut self.identities)
    }
}
