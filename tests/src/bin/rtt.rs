//! `rtt [--delay-us N]`: the raw loopback round trip of this machine (64-byte ping-pong
//! between two threads, TCP with TCP_NODELAY and a Unix socket), the yardstick of the proxy's
//! own cost; with `--delay-us`, also TCP through a [`tests::delay::DelayLink`] of N us each
//! way (`delayed_us`: the link's own round trip, its cost beyond 2 N included).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use tests::delay::DelayLink;

const ROUNDS: u32 = 20_000;

/// Round trips through a delayed link (0.5 ms each: a second's worth).
const DELAYED_ROUNDS: u32 = 2_000;

fn ping_pong<S: Read + Write>(mut client: S, rounds: u32) -> f64 {
    let mut b = [0u8; 64];
    for _ in 0..rounds / 20 {
        client.write_all(&b).unwrap();
        client.read_exact(&mut b).unwrap();
    }
    let t = Instant::now();
    for _ in 0..rounds {
        client.write_all(&b).unwrap();
        client.read_exact(&mut b).unwrap();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

/// A TCP echo server on a free loopback port, for one connection.
fn tcp_echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        echo(s)
    });
    addr
}

fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

fn echo<S: Read + Write>(mut s: S) {
    let mut b = [0u8; 64];
    while s.read_exact(&mut b).is_ok() {
        if s.write_all(&b).is_err() {
            return;
        }
    }
}

fn main() {
    let delay_us: Option<u64> = match std::env::args().nth(1).as_deref() {
        Some("--delay-us") => std::env::args().nth(2).and_then(|v| v.parse().ok()),
        _ => None,
    };
    let tcp = ping_pong(connect(&tcp_echo().to_string()), ROUNDS);

    let path = std::env::temp_dir().join(format!("rtt-{}.sock", std::process::id()));
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || echo(l.accept().unwrap().0));
    let unix = ping_pong(UnixStream::connect(&path).unwrap(), ROUNDS);
    let _ = std::fs::remove_file(&path);
    let delayed = delay_us.map(|d| {
        let link = DelayLink::start(&tcp_echo().to_string(), Duration::from_micros(d));
        let through = ping_pong(
            connect(link.address.trim_start_matches("tcp://")),
            DELAYED_ROUNDS,
        );
        format!(",\"delay_us\":{d},\"delayed_us\":{through:.1}")
    });
    println!(
        "{{\"tcp_us\":{tcp:.1},\"unix_us\":{unix:.1}{}}}",
        delayed.unwrap_or_default()
    );
}
