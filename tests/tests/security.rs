//! Who may connect: mutual TLS (good, missing, foreign and expired client certificates,
//! plaintext against TLS and back), certificate reload on SIGHUP, Unix socket mode and uid
//! allow-list, plain TCP refused off loopback, connection limits, slow and flooding clients.
//! Each refusal is clean, and the server keeps serving good clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use tests::pki::{tls_client as initialize, tls_server, Pki};
use tests::raw::RawModule;
use tests::{ProxyServer, SoftHsm, TempDir, PIN, SOFTHSM};

/// C_Initialize of a fresh shim instance with these settings; the module when it worked.
/// The module signs a random request through a logged-in session: it is really served.
fn works(m: &RawModule) {
    let s = m.open_rw(m.first_slot());
    let rv = m.login(s, PIN);
    assert!(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN, "{rv:#x}");
    let mut buf = [0u8; 16];
    // SAFETY: valid buffer.
    assert_eq!(
        unsafe { m.f().C_GenerateRandom.unwrap()(s, buf.as_mut_ptr(), 16) },
        CKR_OK
    );
}

/// The server's second address (its plain TCP listener).
fn plain_address(server: &ProxyServer) -> String {
    let log = server.log.lock().unwrap();
    let line = log.iter().find(|l| l.contains("listening on")).unwrap();
    line.split_whitespace()
        .find(|w| w.starts_with("tcp://"))
        .unwrap()
        .to_string()
}

#[test]
fn mutual_tls_accepts_good_clients_and_refuses_the_others_cleanly() {
    let hsm = SoftHsm::new("tls");
    let dir = TempDir::new("tls");
    let pki = Pki::new(dir.path(), "main");
    let other = Pki::new(dir.path(), "other");
    let server_id = pki.server("server");
    let server = tls_server(&hsm, &pki, &server_id, &[]);
    assert!(
        server.address.starts_with("tls://127.0.0.1:"),
        "{}",
        server.address
    );
    let tls = server.address.clone();
    let plain = plain_address(&server);

    let good = pki.client("good", false);
    let (rv, m) = initialize(&dir, &tls, Some(&pki), Some(&good));
    assert_eq!(rv, CKR_OK);
    works(&m);

    let foreign = other.client("foreign", false);
    let expired = pki.client("expired", true);
    let refused = [
        (
            "no client certificate",
            initialize(&dir, &tls, Some(&pki), None).0,
        ),
        (
            "client certificate of another CA",
            initialize(&dir, &tls, Some(&pki), Some(&foreign)).0,
        ),
        (
            "expired client certificate",
            initialize(&dir, &tls, Some(&pki), Some(&expired)).0,
        ),
        (
            "server not signed by the trusted CA",
            initialize(&dir, &tls, Some(&other), Some(&good)).0,
        ),
        (
            "plaintext client on the TLS port",
            initialize(&dir, &tls.replace("tls://", "tcp://"), None, None).0,
        ),
        (
            "TLS client on a plaintext port",
            initialize(
                &dir,
                &plain.replace("tcp://", "tls://"),
                Some(&pki),
                Some(&good),
            )
            .0,
        ),
    ];
    for (what, rv) in refused {
        assert_eq!(rv, CKR_FUNCTION_FAILED, "{what}");
    }
    assert!(server.log_contains("connection refused"));
    // Still serving: the first client and a new one.
    works(&m);
    let (rv, again) = initialize(&dir, &tls, Some(&pki), Some(&good));
    assert_eq!(rv, CKR_OK);
    works(&again);
}

#[test]
fn sighup_reloads_certificates_without_dropping_live_connections() {
    let hsm = SoftHsm::new("reload");
    let dir = TempDir::new("reload");
    let old = Pki::new(dir.path(), "old");
    let served = old.server("served");
    // The server reads its files from fixed paths, which the rotation overwrites.
    let (cert, key, ca) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::copy(&served.cert, &cert).unwrap();
    std::fs::copy(&served.key, &key).unwrap();
    std::fs::copy(&old.ca, &ca).unwrap();
    let args = [
        "--module",
        SOFTHSM,
        "--listen",
        "tls://127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-client-ca",
        ca.to_str().unwrap(),
    ];
    let server = ProxyServer::start_with(&hsm, &args, &[]);
    let old_client = old.client("old-client", false);
    let (rv, live) = initialize(&dir, &server.address, Some(&old), Some(&old_client));
    assert_eq!(rv, CKR_OK);
    works(&live);

    let new = Pki::new(dir.path(), "new");
    let rotated = new.server("rotated");
    std::fs::copy(&rotated.cert, &cert).unwrap();
    std::fs::copy(&rotated.key, &key).unwrap();
    std::fs::copy(&new.ca, &ca).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    assert!(server.log_contains("reloaded"));

    works(&live); // the live connection keeps its session
    let new_client = new.client("new-client", false);
    assert_eq!(
        initialize(&dir, &server.address, Some(&new), Some(&new_client)).0,
        CKR_OK
    );
    assert_eq!(
        initialize(&dir, &server.address, Some(&old), Some(&old_client)).0,
        CKR_FUNCTION_FAILED
    );
}

#[test]
fn plain_tcp_off_loopback_is_refused_without_allow_plaintext() {
    let hsm = SoftHsm::new("plain");
    let out = std::process::Command::new(tests::server_path())
        .args(["--module", SOFTHSM, "--listen", "tcp://0.0.0.0:0"])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing plain TCP") && err.contains("--allow-plaintext"),
        "{err}"
    );
}

#[test]
fn unix_socket_mode_and_uid_allow_list() {
    let hsm = SoftHsm::new("uid");
    let dir = TempDir::new("uid");
    let path = dir.path().join("p.sock");
    let address = format!("unix://{}", path.display());
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    let other = (me + 4242).to_string();
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            SOFTHSM,
            "--listen",
            &address,
            "--unix-mode",
            "600",
            "--allow-uid",
            &other,
        ],
        &[],
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        initialize(&dir, &address, None, None).0,
        CKR_FUNCTION_FAILED
    );
    assert!(server.log_contains("uid not in --allow-uid"));
    drop(server);

    let mine = me.to_string();
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            SOFTHSM,
            "--listen",
            &address,
            "--allow-uid",
            &mine,
        ],
        &[],
    );
    let (rv, m) = initialize(&dir, &address, None, None);
    assert_eq!(rv, CKR_OK);
    works(&m);
    drop(server);
}

/// A raw connection that completed the handshake.
/// A connection of one application (one worker) that sent its prelude and hello.
fn handshaken(address: &str) -> TcpStream {
    let c = tests::raw_hello(address, [9; 16]);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Whether the server closed `c` (read returns end of file or an error) within `within`.
fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        }
    }
}

#[test]
fn connection_limit_slow_loris_and_flood_leave_good_clients_served() {
    let hsm = SoftHsm::new("flood");
    let dir = TempDir::new("flood");
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            SOFTHSM,
            "--listen",
            "tcp://127.0.0.1:0",
            "--max-connections",
            "40",
            "--handshake-timeout",
            "1",
        ],
        &[],
    );
    // Slow loris: 20 connections that send three bytes of a hello and stall.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = TcpStream::connect(server.address.trim_start_matches("tcp://")).unwrap();
            c.write_all(&[28, 0, 0]).unwrap();
            c
        })
        .collect();
    // Meanwhile a good client is served.
    let (rv, m) = initialize(&dir, &server.address, None, None);
    assert_eq!(rv, CKR_OK);
    works(&m);
    for c in &mut slow {
        assert!(
            closed_within(c, Duration::from_secs(5)),
            "a stalled hello must be dropped"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));

    // Over the limit: an application's connections beyond 40 are refused in the handshake
    // (a welcome that says why), with a log line.
    let mut held: Vec<TcpStream> = (0..45).map(|_| handshaken(&server.address)).collect();
    let mut refused = 0;
    for c in &mut held {
        let mut route = [0u8; protocol::handshake::ROUTE_ANSWER_LEN];
        let mut len = [0u8; 4];
        let welcome = c
            .read_exact(&mut route)
            .and_then(|()| c.read_exact(&mut len))
            .and_then(|()| {
                let mut w = vec![0u8; u32::from_le_bytes(len) as usize];
                c.read_exact(&mut w).map(|()| w)
            });
        // Status 1: refused (protocol/src/handshake.rs).
        if welcome.map_or(true, |w| w.get(10) == Some(&1)) {
            refused += 1;
        }
    }
    let log_refusals = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("max-connections"))
        .count();
    assert!(
        refused >= 5,
        "only {refused} refused over the limit ({log_refusals} in the log)"
    );
    assert!(server.log_contains("--max-connections reached"));
    drop(held);

    // Flood: 300 connections opened and dropped as fast as possible.
    for _ in 0..300 {
        let _ = TcpStream::connect(server.address.trim_start_matches("tcp://"));
    }
    works(&m);
    let (rv, fresh) = initialize(&dir, &server.address, None, None);
    assert_eq!(rv, CKR_OK);
    works(&fresh);
}

#[test]
fn policy_refuses_denied_functions_and_mechanisms_with_a_log_line() {
    let hsm = SoftHsm::new("policy");
    let dir = TempDir::new("policy");
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            SOFTHSM,
            "--listen",
            "tcp://127.0.0.1:0",
            "--deny-function",
            "C_InitToken",
            "--deny-function",
            "C_SetPIN",
            "--deny-mechanism",
            "0x3", // CKM_RSA_X_509, raw RSA
        ],
        &[],
    );
    let (rv, m) = initialize(&dir, &server.address, None, None);
    assert_eq!(rv, CKR_OK);
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_OK);
    let f = m.f();
    let label = [b' '; 32];
    let mut raw_rsa = CK_MECHANISM {
        mechanism: CKM_RSA_X_509,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut sha = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY: valid arguments.
    unsafe {
        assert_eq!(
            f.C_InitToken.unwrap()(1, b"5678".as_ptr() as *mut u8, 4, label.as_ptr() as *mut u8),
            CKR_FUNCTION_NOT_SUPPORTED
        );
        assert_eq!(
            f.C_SetPIN.unwrap()(
                s,
                b"1234".as_ptr() as *mut u8,
                4,
                b"4321".as_ptr() as *mut u8,
                4
            ),
            CKR_FUNCTION_NOT_SUPPORTED
        );
        assert_eq!(
            f.C_SignInit.unwrap()(s, &mut raw_rsa, 1),
            CKR_MECHANISM_INVALID
        );
        assert_eq!(
            f.C_DigestInit.unwrap()(s, &mut sha),
            CKR_OK,
            "what is not denied still works"
        );
    }
    assert!(server.log_contains("refused by policy (--deny-function)"));
    assert!(server.log_contains("refused by policy (--deny-mechanism)"));
    let bad = std::process::Command::new(tests::server_path())
        .args([
            "--module",
            SOFTHSM,
            "--listen",
            "tcp://127.0.0.1:0",
            "--deny-function",
            "InitToken",
        ])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a PKCS#11 function name"));
}

#[test]
fn pins_never_reach_the_log_even_at_trace_level() {
    let hsm = SoftHsm::new("pinlog");
    let dir = TempDir::new("pinlog");
    let server = ProxyServer::start_with(
        &hsm,
        &["--module", SOFTHSM, "--listen", "tcp://127.0.0.1:0"],
        &[("RUST_LOG", "trace")],
    );
    let (rv, m) = initialize(&dir, &server.address, None, None);
    assert_eq!(rv, CKR_OK);
    let s = m.open_rw(m.first_slot());
    let wrong = "wr0ng-PIN-91377";
    // SAFETY: valid arguments.
    let rv = unsafe {
        m.f().C_Login.unwrap()(
            s,
            CKU_USER,
            wrong.as_ptr() as *mut u8,
            wrong.len() as CK_ULONG,
        )
    };
    assert_eq!(rv, CKR_PIN_INCORRECT);
    assert_eq!(m.login(s, PIN), CKR_OK);
    assert!(server.log_contains("C_Login"), "trace logging is on");
    let log = server.log.lock().unwrap();
    assert!(
        !log.iter().any(|l| l.contains(wrong)),
        "a PIN reached the log"
    );
}
