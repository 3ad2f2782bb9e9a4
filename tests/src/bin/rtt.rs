//! `rtt`: the raw loopback round trip of this machine (64-byte ping-pong between two threads,
//! TCP with TCP_NODELAY and a Unix socket), the yardstick of the proxy's own cost.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

const ROUNDS: u32 = 20_000;

fn ping_pong<S: Read + Write>(mut client: S) -> f64 {
    let mut b = [0u8; 64];
    for _ in 0..1000 {
        client.write_all(&b).unwrap();
        client.read_exact(&mut b).unwrap();
    }
    let t = Instant::now();
    for _ in 0..ROUNDS {
        client.write_all(&b).unwrap();
        client.read_exact(&mut b).unwrap();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS)
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
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        echo(s)
    });
    let c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let tcp = ping_pong(c);

    let path = std::env::temp_dir().join(format!("rtt-{}.sock", std::process::id()));
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || echo(l.accept().unwrap().0));
    let unix = ping_pong(UnixStream::connect(&path).unwrap());
    let _ = std::fs::remove_file(&path);
    println!("{{\"tcp_us\":{tcp:.1},\"unix_us\":{unix:.1}}}");
}
