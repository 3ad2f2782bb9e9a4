//! Faults, on loopback and bounded in time: a network blip (the application resumes on the
//! same server with nothing lost), a server killed and restarted under a Fabric-like load,
//! failover to a second server, 200 clients killed mid-operation, a frozen server.

use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use tests::raw::RawModule;
use tests::{private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir, PIN, SOFTHSM};

/// A TCP relay between clients and the server, whose connections can be cut (a network blip).
struct Relay {
    address: String,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("tcp://{}", listener.local_addr().unwrap());
        let live = Arc::new(Mutex::new(Vec::new()));
        let (target, conns) = (
            target.trim_start_matches("tcp://").to_string(),
            live.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                conns
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { address, live }
    }

    /// Cuts every connection through the relay.
    fn cut(&self) {
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn client(address: &str, dir: &TempDir, extra: &[(&str, &str)]) -> RawModule {
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let mut env = vec![("PKCS11_PROXY_SOCKET", address)];
    env.extend_from_slice(extra);
    assert_eq!(with_env(&env, || m.initialize()), CKR_OK);
    m
}

fn attr(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as CK_ULONG,
    }
}

const KEY_ID: &[u8] = b"fabric-key";

/// A token EC P-256 key pair with CKA_ID `KEY_ID`, as Fabric keeps its signing key.
fn make_token_key(m: &RawModule) {
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_OK);
    let ec = [0x06u8, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let tru = [CK_TRUE];
    let mut public = [
        attr(CKA_EC_PARAMS, &ec),
        attr(CKA_TOKEN, &tru),
        attr(CKA_ID, KEY_ID),
        attr(CKA_VERIFY, &tru),
    ];
    let mut private = [
        attr(CKA_TOKEN, &tru),
        attr(CKA_PRIVATE, &tru),
        attr(CKA_ID, KEY_ID),
        attr(CKA_SIGN, &tru),
    ];
    let mut gen = CK_MECHANISM {
        mechanism: CKM_EC_KEY_PAIR_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let (mut a, mut b) = (0, 0);
    // SAFETY: valid templates and out pointers.
    let rv = unsafe {
        m.f().C_GenerateKeyPair.unwrap()(
            s,
            &mut gen,
            public.as_mut_ptr(),
            4,
            private.as_mut_ptr(),
            4,
            &mut a,
            &mut b,
        )
    };
    assert_eq!(rv, CKR_OK);
}

/// Fabric's signing path on session `s`: find the private key by CKA_ID, C_SignInit, C_Sign.
unsafe fn fabric_sign(m: &RawModule, s: CK_SESSION_HANDLE) -> CK_RV {
    let f = m.f();
    let class = CKO_PRIVATE_KEY.to_ne_bytes();
    let mut t = [attr(CKA_CLASS, &class), attr(CKA_ID, KEY_ID)];
    let rv = f.C_FindObjectsInit.unwrap()(s, t.as_mut_ptr(), 2);
    if rv != CKR_OK {
        return rv;
    }
    let (mut key, mut n) = (0, 0);
    let rv = f.C_FindObjects.unwrap()(s, &mut key, 1, &mut n);
    f.C_FindObjectsFinal.unwrap()(s);
    if rv != CKR_OK {
        return rv;
    }
    if n != 1 {
        return CKR_KEY_HANDLE_INVALID;
    }
    let mut mech = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let rv = f.C_SignInit.unwrap()(s, &mut mech, key);
    if rv != CKR_OK {
        return rv;
    }
    let digest = [7u8; 32];
    let mut len: CK_ULONG = 0;
    let rv = f.C_Sign.unwrap()(s, digest.as_ptr() as *mut u8, 32, ptr::null_mut(), &mut len);
    if rv != CKR_OK {
        return rv;
    }
    let mut sig = [0u8; 128];
    f.C_Sign.unwrap()(
        s,
        digest.as_ptr() as *mut u8,
        32,
        sig.as_mut_ptr(),
        &mut len,
    )
}

/// What a Fabric-like loop saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    evictions: AtomicU64,
    /// Milliseconds since the start of the first success after `mark`.
    first_ok_after_mark: AtomicU64,
}

/// Threads that sign in a loop with Fabric's session rules until `deadline`: a pooled session
/// is evicted only on a 0xB* return value; a session is opened and logged in (accepting
/// CKR_USER_ALREADY_LOGGED_IN) when the pool is empty.
fn fabric_loop(
    m: &RawModule,
    threads: usize,
    deadline: Instant,
    start: Instant,
    mark: &AtomicU64,
    tally: &Tally,
) {
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let f = m.f();
                let mut pooled: Option<CK_SESSION_HANDLE> = None;
                while Instant::now() < deadline {
                    let s = match pooled.take() {
                        Some(s) => s,
                        None => {
                            let mut s = 0;
                            // SAFETY: valid out pointer.
                            let rv = unsafe {
                                f.C_OpenSession.unwrap()(
                                    m.first_slot(),
                                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                                    ptr::null_mut(),
                                    None,
                                    &mut s,
                                )
                            };
                            if rv != CKR_OK {
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                            let rv = m.login(s, PIN);
                            if rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN {
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                            }
                            s
                        }
                    };
                    // SAFETY: the session handle may be stale; that is the point.
                    let rv = unsafe { fabric_sign(m, s) };
                    if rv == CKR_OK {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        let now = start.elapsed().as_millis() as u64;
                        let marked = mark.load(Ordering::Relaxed);
                        if marked > 0 && now >= marked {
                            let _ = tally.first_ok_after_mark.compare_exchange(
                                0,
                                now,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                        pooled = Some(s);
                    } else if (0xB0..=0xBF).contains(&rv) {
                        tally.evictions.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: closing a stale handle is harmless.
                        unsafe { f.C_CloseSession.unwrap()(s) };
                    } else {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        pooled = Some(s);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        }
    });
}

#[test]
fn a_network_blip_loses_nothing_not_even_an_operation_in_progress() {
    let hsm = SoftHsm::new("blip");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let relay = Relay::start(&server.address);
    let dir = TempDir::new("blip");
    let m = client(&relay.address, &dir, &[]);
    make_token_key(&m);
    let s = m.open_rw(m.first_slot());
    let mut mech = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY: valid arguments.
    unsafe { assert_eq!(m.f().C_DigestInit.unwrap()(s, &mut mech), CKR_OK) };
    relay.cut();
    std::thread::sleep(Duration::from_millis(100));
    // The shim reconnects; the server kept the application's sessions: the digest goes on.
    let data = b"abc";
    let mut out = [0u8; 32];
    let mut len: CK_ULONG = 32;
    // SAFETY: valid buffers.
    let rv = unsafe {
        m.f().C_Digest.unwrap()(s, data.as_ptr() as *mut u8, 3, out.as_mut_ptr(), &mut len)
    };
    assert_eq!(rv, CKR_OK);
    assert_eq!(&out[..4], &[0xba, 0x78, 0x16, 0xbf]);
    // SAFETY: the session is alive, still logged in.
    assert_eq!(unsafe { fabric_sign(&m, s) }, CKR_OK);
    assert!(server.log_contains("application resumed"));
}

#[test]
fn a_fabric_like_load_recovers_by_itself_after_the_server_is_killed_and_restarted() {
    let hsm = SoftHsm::new("restart");
    let dir = TempDir::new("restart");
    let address = format!("unix://{}", dir.path().join("p.sock").display());
    let mut first = ProxyServer::start(&hsm, &address);
    let m = client(&address, &dir, &[("PKCS11_PROXY_CALL_TIMEOUT_MS", "3000")]);
    make_token_key(&m);
    let start = Instant::now();
    let mark = AtomicU64::new(0);
    let tally = Tally::default();
    let restarted_at = Mutex::new(None);
    std::thread::scope(|scope| {
        scope.spawn(|| fabric_loop(&m, 4, start + Duration::from_secs(6), start, &mark, &tally));
        std::thread::sleep(Duration::from_millis(1500));
        let before = tally.ok.load(Ordering::Relaxed);
        assert!(before > 0, "signing before the crash");
        first.kill();
        std::thread::sleep(Duration::from_millis(300));
        let _second = ProxyServer::start(&hsm, &address);
        let t = start.elapsed();
        mark.store(t.as_millis() as u64, Ordering::Relaxed);
        *restarted_at.lock().unwrap() = Some(t);
        std::thread::sleep(Duration::from_secs(5));
    });
    let restarted = restarted_at.lock().unwrap().unwrap().as_millis() as u64;
    let first_ok = tally.first_ok_after_mark.load(Ordering::Relaxed);
    let recovery = first_ok.saturating_sub(restarted);
    println!(
        "signatures {}, errors seen by the application {}, evicted sessions {}, recovery {} ms after the restart",
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.evictions.load(Ordering::Relaxed),
        recovery
    );
    assert!(first_ok > 0, "never signed again after the restart");
    assert!(recovery < 2000, "recovery took {recovery} ms");
    assert!(
        tally.evictions.load(Ordering::Relaxed) > 0,
        "stale sessions answered 0xB* (Fabric's eviction rule)"
    );
}

#[test]
fn calls_fail_over_to_the_second_server() {
    let hsm = SoftHsm::new("failover2");
    let dir = TempDir::new("failover2");
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let (a, b) = (
        format!("unix://{}", a.display()),
        format!("unix://{}", b.display()),
    );
    let mut first = ProxyServer::start(&hsm, &a);
    let _second = ProxyServer::start(&hsm, &b);
    let m = client(&format!("{a},{b}"), &dir, &[]);
    make_token_key(&m);
    let start = Instant::now();
    let mark = AtomicU64::new(0);
    let tally = Tally::default();
    std::thread::scope(|scope| {
        scope.spawn(|| fabric_loop(&m, 2, start + Duration::from_secs(3), start, &mark, &tally));
        std::thread::sleep(Duration::from_millis(1000));
        first.kill();
        mark.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    });
    let first_ok = tally.first_ok_after_mark.load(Ordering::Relaxed);
    assert!(first_ok > 0, "no signature on the second server");
    println!(
        "failover: first signature {} ms after the kill",
        first_ok - mark.load(Ordering::Relaxed)
    );
}

#[test]
fn two_hundred_clients_killed_mid_operation_leave_no_session() {
    let hsm = SoftHsm::new("massacre");
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            SOFTHSM,
            "--listen",
            "tcp://127.0.0.1:0",
            "--resume-grace",
            "1",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let dir = TempDir::new("massacre");
    let shim = private_copy(&shim_path(), dir.path());
    let mut killed = 0;
    for _batch in 0..10 {
        let mut holders: Vec<Child> = (0..20)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_hold-sessions"))
                    .arg(&shim)
                    .arg("2")
                    .env("PKCS11_PROXY_SOCKET", &server.address)
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for h in &mut holders {
            let mut line = String::new();
            BufReader::new(h.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.starts_with("ready"), "{line}");
        }
        for mut h in holders {
            h.kill().unwrap();
            h.wait().unwrap();
            killed += 1;
        }
    }
    assert_eq!(killed, 200);
    let metrics_addr = server.metrics_address();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        use std::io::{Read, Write};
        let mut c = TcpStream::connect(&metrics_addr).unwrap();
        write!(c, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let sessions: u64 = text
            .lines()
            .filter(|l| l.starts_with("pkcs11_proxy_sessions{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if sessions == 0 && text.contains("pkcs11_proxy_applications 0") {
            break;
        }
        assert!(Instant::now() < deadline, "sessions left: {sessions}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_frozen_server_never_hangs_the_application() {
    let hsm = SoftHsm::new("frozen");
    let dir = TempDir::new("frozen");
    let mut server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let m = client(
        &server.address,
        &dir,
        &[("PKCS11_PROXY_CALL_TIMEOUT_MS", "1000")],
    );
    make_token_key(&m);
    let s = m.open_rw(m.first_slot());
    server.signal(libc::SIGSTOP);
    let started = Instant::now();
    // SAFETY: valid arguments.
    let rv = unsafe { fabric_sign(&m, s) };
    let took = started.elapsed();
    server.signal(libc::SIGCONT);
    assert_eq!(rv, CKR_DEVICE_ERROR);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    server.kill();
}
