//! One server serving 100 applications with 10 connections each at once, each application
//! by its own worker process: no error, the memory of router and workers reported and bounded,
//! a client still served normally, and the workers gone (their memory with them) once their
//! applications are. (Timing figures belong to the benchmark.)

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use protocol::handshake::ROUTE_ANSWER_LEN;
use tests::raw::RawModule;
use tests::{
    private_copy, raw_hello, shim_path, with_env, ProxyServer, SoftHsm, TempDir, ANSWERS_LEN, PIN,
};

const APPLICATIONS: usize = 100;
const CONNECTIONS_EACH: usize = 10;

/// A connection that completed the handshake, as application number `app`.
fn connect(address: &str, app: usize) -> TcpStream {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(app as u64).to_le_bytes());
    let mut c = raw_hello(address, id);
    let mut answers = [0u8; ANSWERS_LEN];
    c.read_exact(&mut answers).unwrap();
    assert_eq!(answers[10], 0, "routed");
    let welcome = &answers[ROUTE_ANSWER_LEN + 4..];
    assert_eq!(&welcome[..8], b"P11PROXY");
    assert_eq!(welcome[10], 0, "accepted");
    c
}

#[test]
fn a_hundred_applications_of_ten_connections_in_bounded_memory() {
    let hsm = SoftHsm::new("scale");
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            tests::SOFTHSM,
            "--listen",
            "tcp://127.0.0.1:0",
            "--resume-grace",
            "1",
        ],
        &[],
    );
    let before = server.tree_rss_kib();
    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..APPLICATIONS * CONNECTIONS_EACH)
        .map(|n| connect(&server.address, n / CONNECTIONS_EACH))
        .collect();
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let workers = server.workers().len();
    let router = server.rss_kib();
    let after = server.tree_rss_kib();
    let per_app = (after.saturating_sub(before)) as f64 / APPLICATIONS as f64;
    println!(
        "{APPLICATIONS} applications x {CONNECTIONS_EACH} connections in {} ms: {workers} worker processes; RSS router {router} KiB, router + workers {before} KiB before, {after} KiB after ({per_app:.0} KiB per application)",
        took.as_millis()
    );
    assert_eq!(
        workers,
        APPLICATIONS + 1,
        "one worker per application, and the probe"
    );
    assert!(router < 64 * 1024, "router RSS {router} KiB");
    assert!(per_app < 32.0 * 1024.0, "{per_app:.0} KiB per application");

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
    drop(idle);
    assert_eq!(
        // SAFETY: NULL is the valid argument.
        unsafe { m.f().C_Finalize.unwrap()(std::ptr::null_mut()) },
        CKR_OK
    );
    // The applications are gone: their workers finalise and exit after the resume grace.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.workers().len() > 1 {
        assert!(
            Instant::now() < deadline,
            "{} workers still running",
            server.workers().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = server.tree_rss_kib();
    println!(
        "after the applications left: one worker (the probe), RSS router + workers {gone} KiB"
    );
    assert!(
        gone < before + 16 * 1024,
        "{gone} KiB left, {before} KiB at start"
    );
}

#[test]
fn bursts_of_64_threads_of_one_application_leave_no_peak_behind() {
    let hsm = SoftHsm::new("bursts");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("bursts");
    let m = tests::proxy_client(&server.address, &dir);
    tests::fabric::make_token_key(&m);
    let s = m.open_rw(m.first_slot());
    // SAFETY: a logged-in session of this module.
    assert_eq!(unsafe { tests::fabric::fabric_sign(&m, s) }, CKR_OK);
    std::thread::sleep(Duration::from_millis(500));
    let idle = server.tree_rss_kib();
    let mut after = Vec::new();
    for _ in 0..3 {
        std::thread::scope(|scope| {
            for _ in 0..64 {
                scope.spawn(|| {
                    let s = m.open_rw(m.first_slot());
                    for _ in 0..30 {
                        // SAFETY: a session of this module, logged in (the token's login).
                        assert_eq!(unsafe { tests::fabric::fabric_sign(&m, s) }, CKR_OK);
                    }
                    // SAFETY: a session of this module.
                    unsafe { m.f().C_CloseSession.unwrap()(s) };
                });
            }
        });
        std::thread::sleep(Duration::from_millis(1500));
        after.push(server.tree_rss_kib());
    }
    // SAFETY: no call in progress.
    unsafe { m.f().C_Finalize.unwrap()(std::ptr::null_mut()) };
    std::thread::sleep(Duration::from_millis(1500));
    let gone = server.tree_rss_kib();
    println!("server RSS (router + workers): idle {idle} KiB, after each burst {after:?} KiB, the application gone {gone} KiB");
    for a in &after {
        assert!(
            *a <= idle + 16 * 1024,
            "{a} KiB after a burst, idle {idle} KiB"
        );
    }
    assert!(
        gone <= idle * 3 / 2 + 8 * 1024,
        "{gone} KiB, idle {idle} KiB"
    );
}
