//! The budget of connections that have not completed their handshake (OpenSSH's
//! `MaxStartups start:rate:full`): on the data port before the routing prelude (router) and
//! before the hello (worker), on the metrics port before the request. Nobody needs a
//! certificate or a client id to open a TCP connection, so these connections get a budget of
//! their own, apart from authenticated ones, which they can never crowd out:
//!
//! - from `start` open, a new one is refused with a probability of `rate` %, rising linearly
//!   to 100 % at `full` (random early drop);
//! - at `full`, the oldest is dropped to make room (an idle connection is the oldest; a real
//!   client's handshake takes milliseconds);
//! - one peer address holds at most `per_peer`, so that one address cannot fill the budget,
//!   nor make the server drop other addresses' connections. Beyond it, a new connection of
//!   that address that has already sent something (a real client sends its prelude at once)
//!   takes the place of that address's oldest, which is dropped: clients behind one NAT or one
//!   service-mesh sidecar share an address with whatever floods from it, and are served while
//!   the flood's idle connections are the ones that go. A new one that has sent nothing yet is
//!   refused at once (cheaply: closed before any thread or buffer is spent on it), so an idle
//!   flood does not churn the address's share; a client refused so connects again.
//!
//! A dropped connection's socket is shut down; the thread reading it then sees the end of
//! the stream. Refusals and drops are logged as one summary line per interval, not one line
//! each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often a summary of refusals and drops is logged, at most.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// `start:rate:full` and the per-peer cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub start: usize,
    pub rate: u32,
    pub full: usize,
    pub per_peer: usize,
}

impl FromStr for Limits {
    type Err = String;

    /// `start:rate:full` (the per-peer cap is set apart, and defaults to `full`).
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || format!("{s:?}: expected start:rate:full, e.g. 512:30:1024");
        let [start, rate, full] = parts.as_slice() else {
            return Err(bad());
        };
        let (start, rate, full): (usize, u32, usize) = (
            start.parse().map_err(|_| bad())?,
            rate.parse().map_err(|_| bad())?,
            full.parse().map_err(|_| bad())?,
        );
        if full == 0 || start > full || rate > 100 {
            return Err(format!("{s:?}: need 0 < start <= full and rate <= 100"));
        }
        Ok(Self {
            start,
            rate,
            full,
            per_peer: full,
        })
    }
}

/// Whether bytes from the peer wait on the socket (looked at, not read).
fn has_sent_something(fd: BorrowedFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv(2) of at most one byte into a local, without blocking and without taking
    // it from the socket.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// What happened to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Refused by random early drop.
    Refused,
}

struct Entry {
    peer: Option<IpAddr>,
    /// A duplicate of the connection's descriptor, to shut it down when it is dropped (never
    /// a descriptor number that may have been reused).
    socket: OwnedFd,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Open connections, oldest first.
    open: BTreeMap<u64, Entry>,
    /// Each peer address's open connections, oldest first.
    per_peer: HashMap<IpAddr, BTreeSet<u64>>,
    /// Since the last summary.
    refused: u64,
    dropped: u64,
    last_summary: Option<Instant>,
    rng: u64,
}

/// One budget (the data port's, a worker's, the metrics port's).
pub struct Startups {
    limits: Limits,
    /// For logs: which handshake these connections have not completed.
    what: &'static str,
    inner: Mutex<Inner>,
    pub refused_total: AtomicU64,
    pub dropped_total: AtomicU64,
}

/// A connection's place in the budget, given back when it is dropped (handshake done, or the
/// connection over).
pub struct Ticket {
    startups: Arc<Startups>,
    id: u64,
}

impl Ticket {
    /// Leaves the budget (the handshake is done): whether the connection was still in it.
    /// After this nothing drops it; `false` means it was dropped already (its socket shut
    /// down), and must not be answered as accepted.
    pub fn release(self) -> bool {
        self.leave()
    }

    fn leave(&self) -> bool {
        let mut inner = self.startups.inner.lock();
        match inner.open.remove(&self.id) {
            Some(e) => {
                Startups::forget_peer(&mut inner, e.peer, self.id);
                true
            }
            None => false,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Startups {
    pub fn new(limits: Limits, what: &'static str) -> Arc<Self> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Arc::new(Self {
            limits,
            what,
            inner: Mutex::new(Inner {
                rng: seed,
                ..Inner::default()
            }),
            refused_total: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
        })
    }

    /// Connections open in the budget.
    pub fn open(&self) -> usize {
        self.inner.lock().open.len()
    }

    /// Admits a new connection from `peer` (its socket `fd`), dropping the oldest where the
    /// budget is full; `None` when it is refused (the caller closes it).
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>, fd: BorrowedFd) -> Option<Ticket> {
        let socket = fd.try_clone_to_owned().ok()?;
        let mut inner = self.inner.lock();
        let l = self.limits;
        // One peer's share: a new connection that talks takes its oldest's place.
        let over_share = peer.and_then(|ip| {
            let ids = inner.per_peer.get(&ip)?;
            (ids.len() >= l.per_peer).then(|| ids.first().copied())?
        });
        if let Some(oldest) = over_share {
            if !has_sent_something(fd) {
                inner.refused += 1;
                self.refused_total.fetch_add(1, Ordering::Relaxed);
                self.summarise(&mut inner);
                return None;
            }
            self.drop_connection(&mut inner, oldest);
        }
        let n = inner.open.len();
        if over_share.is_some() {
            // It took its own address's place: the budget is no fuller than before.
        } else if n >= l.full {
            if let Some(id) = inner.open.keys().next().copied() {
                self.drop_connection(&mut inner, id);
            }
        } else if n >= l.start && self.early_drop(&mut inner, n) == Admission::Refused {
            inner.refused += 1;
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            self.summarise(&mut inner);
            return None;
        }
        let id = inner.next;
        inner.next += 1;
        inner.open.insert(id, Entry { peer, socket });
        if let Some(ip) = peer {
            inner.per_peer.entry(ip).or_default().insert(id);
        }
        drop(inner);
        Some(Ticket {
            startups: self.clone(),
            id,
        })
    }

    /// Counts a connection refused for what it sent (no valid prelude), into the summary.
    pub fn refused_invalid(&self) {
        let mut inner = self.inner.lock();
        inner.refused += 1;
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        self.summarise(&mut inner);
    }

    /// Random early drop between `start` and `full` (OpenSSH's formula).
    fn early_drop(&self, inner: &mut Inner, n: usize) -> Admission {
        let l = self.limits;
        let span = (l.full - l.start).max(1) as u64;
        let p = u64::from(l.rate) + (100 - u64::from(l.rate)) * (n - l.start) as u64 / span;
        // xorshift64: enough for a coin, not for secrets.
        let mut x = inner.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        inner.rng = x;
        if x % 100 < p {
            Admission::Refused
        } else {
            Admission::Admitted
        }
    }

    fn drop_connection(&self, inner: &mut Inner, id: u64) {
        if let Some(e) = inner.open.remove(&id) {
            // SAFETY: shutdown(2) of a socket this budget holds a descriptor of.
            unsafe { libc::shutdown(e.socket.as_raw_fd(), libc::SHUT_RDWR) };
            Self::forget_peer(inner, e.peer, id);
            inner.dropped += 1;
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            self.summarise(inner);
        }
    }

    fn forget_peer(inner: &mut Inner, peer: Option<IpAddr>, id: u64) {
        if let Some(ip) = peer {
            if let Some(ids) = inner.per_peer.get_mut(&ip) {
                ids.remove(&id);
                if ids.is_empty() {
                    inner.per_peer.remove(&ip);
                }
            }
        }
    }

    /// One line per interval at most.
    fn summarise(&self, inner: &mut Inner) {
        if inner
            .last_summary
            .is_some_and(|t| t.elapsed() < SUMMARY_INTERVAL)
        {
            return;
        }
        let l = self.limits;
        tracing::warn!(
            refused = inner.refused,
            dropped = inner.dropped,
            open = inner.open.len(),
            "connections that had not completed their {} were refused (an address over its share sending nothing yet, random early drop, or nothing valid sent) or dropped (an address's oldest for its new one that talks, or the oldest of all when full; budget {}:{}:{}, {} per peer address){}",
            self.what,
            l.start,
            l.rate,
            l.full,
            l.per_peer,
            if inner.last_summary.is_some() { " in the last 10 s" } else { "" }
        );
        inner.refused = 0;
        inner.dropped = 0;
        inner.last_summary = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn limits(start: usize, rate: u32, full: usize, per_peer: usize) -> Limits {
        Limits {
            start,
            rate,
            full,
            per_peer,
        }
    }

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    /// Waits until what the client wrote has reached `s`.
    fn wait_readable(s: &TcpStream) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.peek(&mut [0u8; 1]).unwrap();
    }

    /// Whether the client end sees the server end shut down.
    fn was_dropped(c: &mut TcpStream) -> bool {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        matches!(c.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn the_oldest_goes_when_full_and_an_address_over_its_share_loses_its_own_oldest() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = Startups::new(limits(3, 100, 3, 2), "test");
        let mut conns: Vec<(TcpStream, TcpStream, Option<Ticket>)> = Vec::new();
        for peer in [ip(1), ip(1), ip(2)] {
            let (c, s) = pair(&l);
            let t = b.admit(peer, s.as_fd_ref());
            assert!(t.is_some());
            conns.push((c, s, t));
        }
        // Peer 1 at its share: a new one that has sent nothing is refused, nobody dropped.
        let (_c, s) = pair(&l);
        assert!(b.admit(ip(1), s.as_fd_ref()).is_none());
        assert!(!was_dropped(&mut conns[0].0));
        assert_eq!(b.refused_total.load(Ordering::Relaxed), 1);
        // One that talks at once takes the place of its own address's oldest; peer 2 keeps
        // its place although it is older than the new one.
        let (mut _c1, s) = pair(&l);
        _c1.write_all(b"prelude").unwrap();
        wait_readable(&s);
        let newest = b.admit(ip(1), s.as_fd_ref());
        assert!(newest.is_some());
        assert!(was_dropped(&mut conns[0].0));
        assert!(!was_dropped(&mut conns[1].0));
        assert!(!was_dropped(&mut conns[2].0));
        assert_eq!(b.dropped_total.load(Ordering::Relaxed), 1);
        assert_eq!(b.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(b.open(), 3);
        conns.push((_c1, s, newest));
        // Full: a new peer gets in, the oldest of all (peer 1's second) goes.
        let (_c, s) = pair(&l);
        let t = b.admit(ip(3), s.as_fd_ref());
        assert!(t.is_some());
        assert!(was_dropped(&mut conns[1].0));
        assert!(!was_dropped(&mut conns[2].0));
        assert!(!was_dropped(&mut conns[3].0));
        assert_eq!(b.open(), 3);
        assert_eq!(b.dropped_total.load(Ordering::Relaxed), 2);
        // Done handshakes give their place back.
        conns.clear();
        drop(t);
        assert_eq!(b.open(), 0);
    }

    #[test]
    fn random_early_drop_between_start_and_full() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = Startups::new(limits(2, 50, 1000, 1000), "test");
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..400 {
            let (c, s) = pair(&l);
            match b.admit(ip((i % 200) as u8), s.as_fd_ref()) {
                Some(t) => held.push((c, s, t)),
                None => refused += 1,
            }
        }
        // Below start nothing is refused; above it at least half are, never all.
        assert!(held.len() >= 2);
        assert!(refused > 150 && refused < 400, "{refused}");
    }

    #[test]
    fn limits_parse_as_openssh_writes_them() {
        let l: Limits = "10:30:100".parse().unwrap();
        assert_eq!((l.start, l.rate, l.full, l.per_peer), (10, 30, 100, 100));
        for bad in ["10:30", "100:30:10", "1:101:2", "a:b:c", "0:0:0"] {
            assert!(bad.parse::<Limits>().is_err(), "{bad}");
        }
    }

    trait AsFdRef {
        fn as_fd_ref(&self) -> BorrowedFd<'_>;
    }
    impl AsFdRef for TcpStream {
        fn as_fd_ref(&self) -> BorrowedFd<'_> {
            std::os::fd::AsFd::as_fd(self)
        }
    }
}
