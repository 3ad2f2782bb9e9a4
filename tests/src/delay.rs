//! A link with a cluster's latency, for benchmarks on one machine: a TCP relay that holds
//! every segment it reads for a fixed delay in each direction before it writes it on, as a
//! network between pods does (0.1-0.5 ms a round trip), without serialising what is in flight
//! (a segment read while another waits is timed from its own arrival). This machine's kernel
//! has no `netem` queueing discipline, hence a relay; its own cost (two copies, two thread
//! wake-ups, the sleep's overshoot) is measured by `rtt --delay-us` on the same link and
//! stated beside every figure taken through it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bytes read in one go.
const CHUNK: usize = 64 * 1024;

pub struct DelayLink {
    /// `tcp://127.0.0.1:PORT`.
    pub address: String,
}

impl DelayLink {
    /// A link on a free loopback port to `target` (`tcp://HOST:PORT` or `HOST:PORT`), with
    /// `delay` each way. It serves until the process ends.
    pub fn start(target: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("tcp://{}", listener.local_addr().unwrap());
        let target = target.trim_start_matches("tcp://").to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                carry(client, s2, delay);
                carry(server, c2, delay);
            }
        });
        Self { address }
    }
}

/// One direction: a reader stamps each segment with its arrival, a writer sends it on when
/// its delay is over.
fn carry(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return, // the sender's end drops: the writer ends too
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        precise_sleeps();
        for (due, bytes) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Asks the kernel to wake this thread's sleeps within a microsecond of their end (its default
/// timer slack is 50 us, a fifth of the delays measured here).
fn precise_sleeps() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) of the calling thread, with a value in nanoseconds.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_trip_takes_twice_the_delay_and_bytes_arrive_whole_and_in_order() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut b = vec![0u8; 1000];
            while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
        });
        let link = DelayLink::start(&target, Duration::from_millis(2));
        let mut c = TcpStream::connect(link.address.trim_start_matches("tcp://")).unwrap();
        c.set_nodelay(true).unwrap();
        let started = Instant::now();
        for round in 0..10u8 {
            let sent: Vec<u8> = (0..1000).map(|i| (i as u8).wrapping_add(round)).collect();
            c.write_all(&sent).unwrap();
            let mut got = vec![0u8; 1000];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, sent);
        }
        let per_round = started.elapsed() / 10;
        assert!(per_round >= Duration::from_millis(4), "{per_round:?}");
        assert!(per_round < Duration::from_millis(40), "{per_round:?}");
    }
}
