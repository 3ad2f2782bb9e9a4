//! One server holding 1,000 client connections at once, idle and active: no error, bounded
//! memory, and a client still served normally. (Timing figures belong to the benchmark.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cryptoki_sys::*;
use tests::raw::RawModule;
use tests::{private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir, PIN};

const CONNECTIONS: usize = 1000;

/// A connection that completed the handshake, as application number `n`.
fn connect(address: &str, n: usize) -> TcpStream {
    let mut c = TcpStream::connect(address.trim_start_matches("tcp://")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = b"P11PROXY".to_vec();
    hello.extend_from_slice(&1u16.to_le_bytes());
    hello.extend_from_slice(&[8, 0]);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(n as u64).to_le_bytes());
    hello.extend_from_slice(&id);
    let mut frame = (hello.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&hello);
    c.write_all(&frame).unwrap();
    let mut welcome = [0u8; 31];
    c.read_exact(&mut welcome).unwrap();
    assert_eq!(&welcome[4..12], b"P11PROXY");
    assert_eq!(welcome[14], 0, "accepted");
    c
}

#[test]
fn a_thousand_connections_in_bounded_memory() {
    let hsm = SoftHsm::new("scale");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let before = server.rss_kib();
    let idle: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|n| connect(&server.address, n))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let after = server.rss_kib();
    let per_connection = (after.saturating_sub(before)) as f64 / CONNECTIONS as f64;
    println!("server RSS: {before} KiB before, {after} KiB with {CONNECTIONS} idle connections ({per_connection:.1} KiB each)");
    assert!(
        after < 100 * 1024,
        "server RSS {after} KiB with {CONNECTIONS} connections"
    );

    // Active clients alongside the idle ones.
    let dir = TempDir::new("scale");
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || m
            .initialize()),
        CKR_OK
    );
    let slot = m.first_slot();
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                let s = m.open_rw(slot);
                let rv = m.login(s, PIN);
                assert!(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN, "{rv:#x}");
                let mut buf = [0u8; 32];
                for _ in 0..50 {
                    // SAFETY: valid buffer.
                    assert_eq!(
                        unsafe { m.f().C_GenerateRandom.unwrap()(s, buf.as_mut_ptr(), 32) },
                        CKR_OK
                    );
                }
            });
        }
    });
    let busy = server.rss_kib();
    println!("server RSS with {CONNECTIONS} idle and 16 active connections: {busy} KiB");
    assert!(busy < 100 * 1024, "server RSS {busy} KiB");
    drop(idle);
}
