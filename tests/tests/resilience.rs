//! Faults, on loopback and bounded in time: a network blip (the application resumes on the
//! same server with nothing lost), a server killed and restarted under a Fabric-like load,
//! failover to a second server, 200 clients killed mid-operation, a frozen server.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use tests::fabric::{attr, fabric_loop, fabric_sign, make_token_key, Tally, KEY_ID};
use tests::raw::RawModule;
use tests::relay::{Relay, Spread};
use tests::{
    build_go_fabric, private_copy, shim_path, with_env, GoLoop, ProxyServer, SoftHsm, TempDir, PIN,
    SOFTHSM,
};

fn client(address: &str, dir: &TempDir, extra: &[(&str, &str)]) -> RawModule {
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let mut env = vec![("PKCS11_PROXY_SOCKET", address)];
    env.extend_from_slice(extra);
    assert_eq!(with_env(&env, || m.initialize()), CKR_OK);
    m
}

#[test]
fn a_network_blip_loses_nothing_not_even_an_operation_in_progress() {
    let hsm = SoftHsm::new("blip");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let relay = Relay::start(&[&server.address], Spread::RoundRobin);
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

/// What a Fabric-like load saw across a SIGKILL and restart of its server.
struct RestartOutcome {
    signatures: u64,
    errors: u64,
    evictions: u64,
    /// From the restart to the first signature after it.
    recovery_ms: u64,
}

fn fabric_load_across_a_restart(tag: &str, shim_env: &[(&str, &str)]) -> RestartOutcome {
    let hsm = SoftHsm::new(tag);
    let dir = TempDir::new(tag);
    let address = format!("unix://{}", dir.path().join("p.sock").display());
    let mut first = ProxyServer::start(&hsm, &address);
    let mut env = vec![("PKCS11_PROXY_CALL_TIMEOUT_MS", "3000")];
    env.extend_from_slice(shim_env);
    let m = client(&address, &dir, &env);
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
    assert!(first_ok > 0, "never signed again after the restart");
    let outcome = RestartOutcome {
        signatures: tally.ok.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        evictions: tally.evictions.load(Ordering::Relaxed),
        recovery_ms: first_ok.saturating_sub(restarted),
    };
    println!(
        "{tag}: signatures {}, errors seen by the application {} {:x?}, evicted sessions {}, first signature {} ms after the restart",
        outcome.signatures, outcome.errors, tally.codes.lock().unwrap(), outcome.evictions, outcome.recovery_ms
    );
    outcome
}

#[test]
fn a_session_the_server_dropped_is_opened_again_with_its_login_and_operation() {
    let hsm = SoftHsm::new("dropped");
    // No resume grace: the server closes the application's sessions as soon as its
    // connections drop, and logs the token out.
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            SOFTHSM,
            "--listen",
            "tcp://127.0.0.1:0",
            "--resume-grace",
            "0",
        ],
        &[],
    );
    let relay = Relay::start(&[&server.address], Spread::RoundRobin);
    let dir = TempDir::new("dropped");
    let m = client(&relay.address, &dir, &[]);
    make_token_key(&m);
    let f = m.f();
    let s = m.open_rw(m.first_slot());
    let key = find_key(&m, s, CKO_PRIVATE_KEY);
    let data_class = CKO_DATA.to_ne_bytes();
    let mut data_t = [attr(CKA_CLASS, &data_class), attr(CKA_LABEL, b"gone")];
    let mut session_object = 0;
    // SAFETY: valid arguments throughout.
    unsafe {
        assert_eq!(
            f.C_CreateObject.unwrap()(s, data_t.as_mut_ptr(), 2, &mut session_object),
            CKR_OK
        );
        assert_eq!(f.C_SignInit.unwrap()(s, &mut ecdsa(), key), CKR_OK);
        relay.cut();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(sign_digest(&m, s), CKR_OK);
        let mut info = CK_SESSION_INFO::default();
        assert_eq!(f.C_GetSessionInfo.unwrap()(s, &mut info), CKR_OK);
        assert_eq!(info.state, CKS_RW_USER_FUNCTIONS);
        // The session object went with the dropped session.
        let mut size = 0;
        assert_eq!(
            f.C_GetObjectSize.unwrap()(s, session_object, &mut size),
            CKR_OBJECT_HANDLE_INVALID
        );
    }
    assert_eq!(unsafe { fabric_sign(&m, s) }, CKR_OK);
}

#[test]
fn a_fabric_like_load_sees_no_error_when_the_server_is_killed_and_restarted() {
    let o = fabric_load_across_a_restart("restart", &[]);
    assert_eq!(o.errors, 0, "errors seen by the application");
    assert_eq!(o.evictions, 0, "sessions evicted by the application");
    assert!(o.recovery_ms < 2000, "recovery took {} ms", o.recovery_ms);
}

#[test]
fn with_recovery_off_a_fabric_like_load_recovers_by_evicting_its_sessions() {
    let o = fabric_load_across_a_restart("restart-off", &[("PKCS11_PROXY_RECOVERY", "off")]);
    assert!(o.recovery_ms < 2000, "recovery took {} ms", o.recovery_ms);
    assert!(
        o.evictions > 0,
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
        "failover: first signature {} ms after the kill, errors {}, evictions {}",
        first_ok - mark.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.evictions.load(Ordering::Relaxed)
    );
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0);
    assert_eq!(tally.evictions.load(Ordering::Relaxed), 0);
}

#[test]
fn a_rolling_restart_moves_clients_to_the_next_server_without_errors() {
    let hsm = SoftHsm::new("rolling");
    let dir = TempDir::new("rolling");
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let (a, b) = (
        format!("unix://{}", a.display()),
        format!("unix://{}", b.display()),
    );
    let mut first = ProxyServer::start(&hsm, &a);
    let _second = ProxyServer::start(&hsm, &b);
    let log = dir.path().join("shim.log");
    let m = client(
        &format!("{a},{b}"),
        &dir,
        &[("PKCS11_PROXY_LOG_FILE", log.to_str().unwrap())],
    );
    make_token_key(&m);
    let start = Instant::now();
    let mark = AtomicU64::new(0);
    let tally = Tally::default();
    let mut status = None;
    std::thread::scope(|scope| {
        scope.spawn(|| fabric_loop(&m, 4, start + Duration::from_secs(4), start, &mark, &tally));
        std::thread::sleep(Duration::from_millis(1000));
        mark.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        // SIGTERM: the first server drains its calls in progress and exits.
        status = first.stop();
        // Upgraded and back: the application stays on the second server.
        std::thread::sleep(Duration::from_millis(500));
        first = ProxyServer::start(&hsm, &a);
        // A burst of calls opens new connections: they go where the application is.
        std::thread::scope(|burst| {
            for _ in 0..16 {
                burst.spawn(|| {
                    let s = m.open_rw(m.first_slot());
                    let mut r = [0u8; 16];
                    // SAFETY: valid buffer.
                    let rv = unsafe { m.f().C_GenerateRandom.unwrap()(s, r.as_mut_ptr(), 16) };
                    assert_eq!(rv, CKR_OK);
                    // SAFETY: a session of this application.
                    unsafe { m.f().C_CloseSession.unwrap()(s) };
                });
            }
        });
    });
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let switches = std::fs::read_to_string(&log)
        .unwrap()
        .matches("new server instance")
        .count();
    assert_eq!(switches, 1, "moved once, to the second server");
    let first_ok = tally.first_ok_after_mark.load(Ordering::Relaxed);
    println!(
        "rolling restart: signatures {}, errors {} {:x?}, evictions {}, first signature {} ms after SIGTERM",
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.codes.lock().unwrap(),
        tally.evictions.load(Ordering::Relaxed),
        first_ok.saturating_sub(mark.load(Ordering::Relaxed))
    );
    assert!(first_ok > 0, "no signature on the second server");
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0);
    assert_eq!(tally.evictions.load(Ordering::Relaxed), 0);
}

/// Token-changing calls from `threads` threads of `m` until `until`: each creates a token data
/// object and destroys it; the answers other than CKR_OK, by code.
fn create_and_destroy_until(
    m: &RawModule,
    threads: usize,
    until: Instant,
) -> (u64, BTreeMap<CK_RV, u64>) {
    let done = AtomicU64::new(0);
    let codes = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (done, codes) = (&done, &codes);
            scope.spawn(move || {
                let f = m.f();
                let s = m.open_rw(m.first_slot());
                // Logged in once for the application: the other threads' sessions are too.
                assert!(matches!(
                    m.login(s, PIN),
                    CKR_OK | CKR_USER_ALREADY_LOGGED_IN
                ));
                let (class, tru) = (CKO_DATA.to_ne_bytes(), [CK_TRUE]);
                let label = format!("retired-{t}");
                while Instant::now() < until {
                    let mut template = [
                        attr(CKA_CLASS, &class),
                        attr(CKA_LABEL, label.as_bytes()),
                        attr(CKA_TOKEN, &tru),
                    ];
                    let mut h = 0;
                    // SAFETY: valid template and out pointer.
                    let mut rv =
                        unsafe { f.C_CreateObject.unwrap()(s, template.as_mut_ptr(), 3, &mut h) };
                    if rv == CKR_OK {
                        // SAFETY: the object just made.
                        rv = unsafe { f.C_DestroyObject.unwrap()(s, h) };
                    }
                    if rv == CKR_OK {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        *codes.lock().unwrap().entry(rv).or_default() += 1;
                    }
                }
            });
        }
    });
    (done.into_inner(), codes.into_inner().unwrap())
}

#[test]
fn a_rolling_restart_loses_no_token_changing_call() {
    let hsm = SoftHsm::new("retired");
    let dir = TempDir::new("retired");
    for tcp in [false, true] {
        let (a, b) = if tcp {
            (
                "tcp://127.0.0.1:0".to_string(),
                "tcp://127.0.0.1:0".to_string(),
            )
        } else {
            (
                format!("unix://{}", dir.path().join("a.sock").display()),
                format!("unix://{}", dir.path().join("b.sock").display()),
            )
        };
        restart_under_token_changing_calls(&hsm, &dir, &a, &b);
    }
}

/// [`create_and_destroy_until`] on two servers, `a` and `b`, while `a` stops.
fn restart_under_token_changing_calls(hsm: &SoftHsm, dir: &TempDir, a: &str, b: &str) {
    let mut first = ProxyServer::start(hsm, a);
    let second = ProxyServer::start(hsm, b);
    let log = dir.path().join(format!("shim-{}.log", a.len()));
    let m = client(
        &format!("{},{}", first.address, second.address),
        dir,
        &[("PKCS11_PROXY_LOG_FILE", log.to_str().unwrap())],
    );
    let start = Instant::now();
    let (done, codes) = std::thread::scope(|scope| {
        let load = scope.spawn(|| create_and_destroy_until(&m, 8, start + Duration::from_secs(3)));
        std::thread::sleep(Duration::from_millis(1000));
        // SIGTERM: the first server's worker leaves. A request it reads from then on, or
        // that crosses its closing, is retired (not executed) and sent to the second server,
        // even one that changes the token, instead of answering CKR_FUNCTION_FAILED.
        assert!(first.stop().is_some_and(|s| s.success()));
        load.join().unwrap()
    });
    println!("token-changing calls across a rolling restart ({a}): {done} ok, others {codes:x?}");
    assert!(done > 100, "{done}");
    // No request was lost: each was executed by one server or the other.
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("transport error"), "{log}");
    // Every error the application saw is the vendor's own answer (SoftHSM2's file store
    // written by two processes at once: the first server's worker finishing its calls, the
    // second's starting), as the servers logged it, or a creation the first server answered
    // after another thread had moved the application to the second (its object cannot be
    // mapped: CKR_FUNCTION_FAILED, logged by the shim). No request was lost or done twice.
    let unmapped = log.matches("cannot be mapped").count() as u64;
    // Or an object the second server's SoftHSM2 did not find (yet), logged by the shim's
    // recovery: CKR_OBJECT_HANDLE_INVALID (DESIGN.md, "Recovery model").
    let not_found = log.matches("was not found again").count() as u64;
    // The servers' last lines read.
    std::thread::sleep(Duration::from_millis(500));
    for (&rv, &n) in &codes {
        let name = match rv {
            CKR_FUNCTION_FAILED => "CKR_FUNCTION_FAILED",
            CKR_GENERAL_ERROR => "CKR_GENERAL_ERROR",
            CKR_OBJECT_HANDLE_INVALID => "CKR_OBJECT_HANDLE_INVALID",
            other => panic!("{other:#x} ({n} times) is not an answer of the vendor's"),
        };
        let vendor: u64 = [&first, &second]
            .iter()
            .map(|s| {
                let log = s.log.lock().unwrap();
                log.iter()
                    .filter(|l| l.contains("call failed") && l.contains(name))
                    .count() as u64
            })
            .sum();
        let ours = match rv {
            CKR_FUNCTION_FAILED => unmapped,
            CKR_OBJECT_HANDLE_INVALID => not_found,
            _ => 0,
        };
        assert!(
            n <= vendor + ours,
            "{name}: {n} seen, {vendor} answered by the vendor, {ours} unmapped"
        );
    }
}

#[test]
fn a_leaving_worker_retires_the_requests_it_will_not_execute() {
    use protocol::frame::{read_frame, write_frame};
    use protocol::message::{Request, Response};
    use std::io::Read;
    let hsm = SoftHsm::new("retire");
    let mut server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let mut c = tests::raw_hello(&server.address, [5; 16]);
    let mut answers = [0u8; tests::ANSWERS_LEN];
    c.read_exact(&mut answers).unwrap();
    let mut frame = Vec::new();
    let info = Request::GetInfo {
        outputs: protocol::shape::Outputs::ALL,
    };
    protocol::codec::encode(&info, &mut frame).unwrap();
    write_frame(&mut c, &frame, &mut Vec::new()).unwrap();
    read_frame(&mut c, &mut frame, 1 << 20).unwrap();
    let answer: Response = protocol::codec::decode(&frame).unwrap();
    assert_eq!(answer.rv(), CKR_OK);
    // The server stops: the idle connection is told, before it is closed, that nothing more
    // will be executed on it.
    assert!(server.stop().is_some_and(|s| s.success()));
    read_frame(&mut c, &mut frame, 1 << 20).unwrap();
    let retired: Response = protocol::codec::decode(&frame).unwrap();
    assert_eq!(retired, Response::Retired);
    assert!(
        read_frame(&mut c, &mut frame, 1 << 20).is_err(),
        "then closed"
    );
}

#[test]
fn a_slow_vendor_call_does_not_hold_up_other_clients() {
    let hsm = SoftHsm::new("slowcall");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("slowcall");
    let (slow, quick) = (
        client(&server.address, &dir, &[]),
        client(&server.address, &TempDir::new("slowcall2"), &[]),
    );
    make_token_key(&quick);
    let s = slow.open_rw(slow.first_slot());
    assert_eq!(slow.login(s, PIN), CKR_OK);
    let q = quick.open_rw(quick.first_slot());
    let key = find_key(&quick, q, CKO_PRIVATE_KEY);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (generation, quick_calls, worst) = std::thread::scope(|scope| {
        let gen = scope.spawn(|| {
            // RSA-4096 key generation: seconds of vendor work in one call.
            let bits = (4096 as CK_ULONG).to_ne_bytes();
            let exponent = [1u8, 0, 1];
            let mut public = [
                attr(CKA_MODULUS_BITS, &bits),
                attr(CKA_PUBLIC_EXPONENT, &exponent),
            ];
            let mut private: [CK_ATTRIBUTE; 0] = [];
            let mut mech = CK_MECHANISM {
                mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN,
                pParameter: ptr::null_mut(),
                ulParameterLen: 0,
            };
            let (mut a, mut b) = (0, 0);
            let started = Instant::now();
            // SAFETY: valid templates and out pointers.
            let rv = unsafe {
                slow.f().C_GenerateKeyPair.unwrap()(
                    s,
                    &mut mech,
                    public.as_mut_ptr(),
                    2,
                    private.as_mut_ptr(),
                    0,
                    &mut a,
                    &mut b,
                )
            };
            done.store(true, Ordering::Relaxed);
            assert_eq!(rv, CKR_OK);
            started.elapsed()
        });
        let (mut calls, mut worst) = (0u32, Duration::ZERO);
        while !done.load(Ordering::Relaxed) {
            let t = Instant::now();
            // SAFETY: valid arguments.
            let rv = unsafe {
                let f = quick.f();
                assert_eq!(f.C_SignInit.unwrap()(q, &mut ecdsa(), key), CKR_OK);
                sign_digest(&quick, q)
            };
            assert_eq!(rv, CKR_OK);
            worst = worst.max(t.elapsed());
            calls += 1;
        }
        (gen.join().unwrap(), calls, worst)
    });
    println!(
        "RSA-4096 generation took {generation:?}; meanwhile another client signed {quick_calls} times, slowest {worst:?}"
    );
    assert!(
        quick_calls > 10,
        "{quick_calls} signatures during the generation"
    );
    // A signature held up by the generation would wait for most of it.
    assert!(
        worst < (generation / 4).max(Duration::from_millis(50)),
        "a signature waited {worst:?}"
    );
}

/// `batches` batches of `each` clients that open two sessions, log in and are killed; then
/// the server's metrics must show no session and no application within 15 s.
fn killed_clients_leave_no_session(extra: &[&str], batches: usize, each: usize) {
    let hsm = SoftHsm::new("massacre");
    let mut args = vec![
        "--module",
        SOFTHSM,
        "--listen",
        "tcp://127.0.0.1:0",
        "--resume-grace",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let server = ProxyServer::start_with(&hsm, &args, &[]);
    let dir = TempDir::new("massacre");
    let shim = private_copy(&shim_path(), dir.path());
    let mut killed = 0;
    for _batch in 0..batches {
        let mut holders: Vec<Child> = (0..each)
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
        let lines: Vec<String> = holders
            .iter_mut()
            .map(|h| {
                let mut line = String::new();
                let _ = BufReader::new(h.stdout.take().unwrap()).read_line(&mut line);
                line
            })
            .collect();
        // Killed before anything is asserted, so that a failure leaves no holder behind.
        for mut h in holders {
            h.kill().unwrap();
            h.wait().unwrap();
            killed += 1;
        }
        for line in lines {
            assert!(line.starts_with("ready"), "{line}");
        }
    }
    assert_eq!(killed, batches * each);
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
fn two_hundred_clients_killed_mid_operation_leave_no_session_in_a_shared_worker() {
    // Twenty at once: SoftHSM2's file store fails some of twenty processes that start at once
    // (as it does loaded directly), so the crowd goes to one worker.
    killed_clients_leave_no_session(&["--shared-worker"], 10, 20);
}

#[test]
fn killed_clients_leave_no_session_and_no_worker() {
    // Each client its own worker: the worker finalises its vendor instance and exits once its
    // client is gone for the resume grace. One at a time (SoftHSM2's file store fails some of
    // several processes that start at once on one token).
    killed_clients_leave_no_session(&[], 10, 1);
}

#[test]
fn a_frozen_server_never_hangs_the_application() {
    let hsm = SoftHsm::new("frozen");
    let dir = TempDir::new("frozen");
    let mut server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    // The call waits 1 s for its answer, then up to 1 s for a server to connect to (each
    // attempt bounded by the 500 ms connect timeout: the frozen server's kernel still accepts).
    let m = client(
        &server.address,
        &dir,
        &[
            ("PKCS11_PROXY_CALL_TIMEOUT_MS", "1000"),
            ("PKCS11_PROXY_RECONNECT_MS", "1000"),
            ("PKCS11_PROXY_CONNECT_TIMEOUT_MS", "500"),
        ],
    );
    make_token_key(&m);
    let s = m.open_rw(m.first_slot());
    server.freeze();
    let started = Instant::now();
    // SAFETY: valid arguments.
    let rv = unsafe { fabric_sign(&m, s) };
    let took = started.elapsed();
    server.signal(libc::SIGCONT);
    assert_eq!(rv, CKR_DEVICE_ERROR);
    assert!(took < Duration::from_secs(4), "took {took:?}");
    server.kill();
}

/// The one object of `class` with CKA_ID `KEY_ID`.
fn find_key(m: &RawModule, s: CK_SESSION_HANDLE, class: CK_OBJECT_CLASS) -> CK_OBJECT_HANDLE {
    let f = m.f();
    let class = class.to_ne_bytes();
    let mut t = [attr(CKA_CLASS, &class), attr(CKA_ID, KEY_ID)];
    let (mut key, mut n) = (0, 0);
    // SAFETY: valid template and out pointers.
    unsafe {
        assert_eq!(f.C_FindObjectsInit.unwrap()(s, t.as_mut_ptr(), 2), CKR_OK);
        assert_eq!(f.C_FindObjects.unwrap()(s, &mut key, 1, &mut n), CKR_OK);
        assert_eq!(f.C_FindObjectsFinal.unwrap()(s), CKR_OK);
    }
    assert_eq!(n, 1);
    key
}

/// One C_Sign of a fixed digest into a 128-byte buffer, on a session whose signing
/// operation is initialised.
fn sign_digest(m: &RawModule, s: CK_SESSION_HANDLE) -> CK_RV {
    let digest = [7u8; 32];
    let mut sig = [0u8; 128];
    let mut len: CK_ULONG = 128;
    // SAFETY: valid buffers; the handle may be stale, which the module answers.
    unsafe {
        m.f().C_Sign.unwrap()(
            s,
            digest.as_ptr() as *mut u8,
            32,
            sig.as_mut_ptr(),
            &mut len,
        )
    }
}

fn ecdsa() -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

fn unix_address(dir: &TempDir) -> String {
    format!("unix://{}", dir.path().join("p.sock").display())
}

#[test]
fn a_restart_keeps_handles_logins_token_objects_and_initialised_operations() {
    let hsm = SoftHsm::new("replay");
    let dir = TempDir::new("replay");
    let address = unix_address(&dir);
    let mut server = ProxyServer::start(&hsm, &address);
    let m = client(&address, &dir, &[]);
    make_token_key(&m);
    let f = m.f();
    let slot = m.first_slot();
    let (s, s2) = (m.open_rw(slot), m.open_rw(slot));
    let key = find_key(&m, s, CKO_PRIVATE_KEY);
    let public = find_key(&m, s, CKO_PUBLIC_KEY);
    let label = b"session object";
    let data_class = CKO_DATA.to_ne_bytes();
    let fals = [CK_FALSE];
    let mut data_t = [
        attr(CKA_CLASS, &data_class),
        attr(CKA_LABEL, label),
        attr(CKA_TOKEN, &fals),
    ];
    let mut session_object = 0;
    let mut sha = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY: valid arguments throughout.
    unsafe {
        assert_eq!(f.C_SignInit.unwrap()(s, &mut ecdsa(), key), CKR_OK);
        assert_eq!(f.C_DigestInit.unwrap()(s2, &mut sha), CKR_OK);
        assert_eq!(
            f.C_DigestUpdate.unwrap()(s2, b"abc".as_ptr() as *mut u8, 3),
            CKR_OK
        );
        assert_eq!(
            f.C_CreateObject.unwrap()(s2, data_t.as_mut_ptr(), 3, &mut session_object),
            CKR_OK
        );
    }

    server.kill();
    let _server = ProxyServer::start(&hsm, &address);

    // SAFETY: valid arguments throughout.
    unsafe {
        // A first call without a session: answered by the new server as it is.
        let mut count: CK_ULONG = 0;
        assert_eq!(
            f.C_GetSlotList.unwrap()(CK_TRUE, ptr::null_mut(), &mut count),
            CKR_OK
        );
        assert!(count >= 1);
        let mut token = CK_TOKEN_INFO::default();
        assert_eq!(f.C_GetTokenInfo.unwrap()(slot, &mut token), CKR_OK);
        // The same session handle, logged in again.
        let mut info = CK_SESSION_INFO::default();
        assert_eq!(f.C_GetSessionInfo.unwrap()(s, &mut info), CKR_OK);
        assert_eq!(info.state, CKS_RW_USER_FUNCTIONS);
        // The signing operation initialised before the restart: Fabric's two-call C_Sign.
        let digest = [7u8; 32];
        let mut len: CK_ULONG = 0;
        assert_eq!(
            f.C_Sign.unwrap()(s, digest.as_ptr() as *mut u8, 32, ptr::null_mut(), &mut len),
            CKR_OK
        );
        let mut sig = vec![0u8; len as usize];
        assert_eq!(
            f.C_Sign.unwrap()(
                s,
                digest.as_ptr() as *mut u8,
                32,
                sig.as_mut_ptr(),
                &mut len
            ),
            CKR_OK
        );
        // The token public key's old handle, found again, verifies it.
        assert_eq!(f.C_VerifyInit.unwrap()(s, &mut ecdsa(), public), CKR_OK);
        assert_eq!(
            f.C_Verify.unwrap()(s, digest.as_ptr() as *mut u8, 32, sig.as_mut_ptr(), len),
            CKR_OK
        );
        // The same key handles as before: a new search hands out the same numbers.
        assert_eq!(find_key(&m, s, CKO_PRIVATE_KEY), key);
        // A digest that had taken data cannot be rebuilt; a session object is gone.
        let mut out = [0u8; 32];
        let mut out_len: CK_ULONG = 32;
        assert_eq!(
            f.C_DigestFinal.unwrap()(s2, out.as_mut_ptr(), &mut out_len),
            CKR_OPERATION_NOT_INITIALIZED
        );
        let mut q = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        }];
        assert_eq!(
            f.C_GetAttributeValue.unwrap()(s2, session_object, q.as_mut_ptr(), 1),
            CKR_OBJECT_HANDLE_INVALID
        );
        // The second session works for new operations.
        assert_eq!(f.C_DigestInit.unwrap()(s2, &mut sha), CKR_OK);
        assert_eq!(
            f.C_Digest.unwrap()(
                s2,
                b"abc".as_ptr() as *mut u8,
                3,
                out.as_mut_ptr(),
                &mut out_len
            ),
            CKR_OK
        );
        assert_eq!(&out[..4], &[0xba, 0x78, 0x16, 0xbf]);
    }
}

/// Runs `call` while `server` is frozen (so the request is sent and never answered), kills
/// it 300 ms later and starts a new one on `address`; returns the call's answer and the new
/// server.
fn answer_lost_to_a_restart(
    hsm: &SoftHsm,
    address: &str,
    mut server: ProxyServer,
    call: impl FnOnce() -> CK_RV + Send,
) -> (CK_RV, ProxyServer) {
    server.freeze();
    std::thread::scope(|scope| {
        let call = scope.spawn(call);
        // Time for the call to be sent to the stopped server, even on a machine loaded with
        // the other tests' processes (within the 1 s call timeout, though the outcome is the
        // same beyond it): sent later, it would reach the new server as a first send.
        std::thread::sleep(Duration::from_millis(800));
        server.kill();
        let restarted = ProxyServer::start(hsm, address);
        (call.join().unwrap(), restarted)
    })
}

#[test]
fn a_lost_answer_is_resent_only_when_the_call_cannot_have_changed_the_token() {
    let hsm = SoftHsm::new("lost");
    let dir = TempDir::new("lost");
    let address = unix_address(&dir);
    let server = ProxyServer::start(&hsm, &address);
    let m = client(&address, &dir, &[("PKCS11_PROXY_CALL_TIMEOUT_MS", "1000")]);
    make_token_key(&m);
    let f = m.f();
    let slot = m.first_slot();
    let (s, s2) = (m.open_rw(slot), m.open_rw(slot));
    let key = find_key(&m, s, CKO_PRIVATE_KEY);
    // SAFETY: valid arguments.
    unsafe { assert_eq!(f.C_SignInit.unwrap()(s, &mut ecdsa(), key), CKR_OK) };
    let label = b"created once";
    let data_class = CKO_DATA.to_ne_bytes();
    let tru = [CK_TRUE];
    // Each call is sent to a server that has stopped answering; the server is then killed
    // and a new one started before the answer is given up on.
    let (signed, server) = answer_lost_to_a_restart(&hsm, &address, server, || sign_digest(&m, s));
    let (created, _server) = answer_lost_to_a_restart(&hsm, &address, server, || {
        let mut t = [
            attr(CKA_CLASS, &data_class),
            attr(CKA_LABEL, label),
            attr(CKA_TOKEN, &tru),
        ];
        let mut h = 0;
        // SAFETY: valid template and out pointer.
        unsafe { f.C_CreateObject.unwrap()(s2, t.as_mut_ptr(), 3, &mut h) }
    });
    // Signing changes nothing: resent on the new server after its C_SignInit was replayed.
    assert_eq!(signed, CKR_OK);
    // Creating may have happened before the server went away: never done twice.
    assert_eq!(created, CKR_FUNCTION_FAILED);
    // It had not happened (the server was stopped): no object with that label.
    let mut t = [attr(CKA_LABEL, label)];
    let mut found = [0; 4];
    let mut n = 0;
    // SAFETY: valid template and buffers.
    unsafe {
        assert_eq!(f.C_FindObjectsInit.unwrap()(s2, t.as_mut_ptr(), 1), CKR_OK);
        assert_eq!(
            f.C_FindObjects.unwrap()(s2, found.as_mut_ptr(), 4, &mut n),
            CKR_OK
        );
        assert_eq!(f.C_FindObjectsFinal.unwrap()(s2), CKR_OK);
    }
    assert_eq!(n, 0);
}

#[test]
fn without_kept_pins_logged_in_sessions_are_lost_and_public_ones_come_back() {
    let hsm = SoftHsm::new("nopin");
    let dir = TempDir::new("nopin");
    let address = unix_address(&dir);
    let mut server = ProxyServer::start(&hsm, &address);
    let m = client(&address, &dir, &[("PKCS11_PROXY_KEEP_PIN", "off")]);
    let f = m.f();
    let slot = m.first_slot();
    let public = m.open_rw(slot);
    let mut info = CK_SESSION_INFO::default();
    server.kill();
    server = ProxyServer::start(&hsm, &address);
    // SAFETY: valid out pointers throughout.
    unsafe {
        // Not logged in: reopened as it was.
        assert_eq!(f.C_GetSessionInfo.unwrap()(public, &mut info), CKR_OK);
        assert_eq!(info.state, CKS_RW_PUBLIC_SESSION);
        assert_eq!(m.login(public, PIN), CKR_OK);
        server.kill();
        let _server = ProxyServer::start(&hsm, &address);
        // Logged in, PIN not kept: lost, with Fabric's eviction code.
        assert_eq!(
            f.C_GetSessionInfo.unwrap()(public, &mut info),
            CKR_SESSION_HANDLE_INVALID
        );
        assert_eq!(
            f.C_CloseSession.unwrap()(public),
            CKR_SESSION_HANDLE_INVALID
        );
        let new = m.open_rw(slot);
        assert_eq!(m.login(new, PIN), CKR_OK);
        assert_eq!(f.C_GetSessionInfo.unwrap()(new, &mut info), CKR_OK);
        assert_eq!(info.state, CKS_RW_USER_FUNCTIONS);
    }
}

#[test]
fn a_go_miekg_fabric_load_sees_no_error_when_the_server_is_killed_and_restarted() {
    let hsm = SoftHsm::new("gorestart");
    let dir = TempDir::new("gorestart");
    let address = unix_address(&dir);
    let mut server = ProxyServer::start(&hsm, &address);
    let program = build_go_fabric(dir.path());
    let go = GoLoop::start(&program, dir.path(), &hsm.label, &address, 4000);
    std::thread::sleep(Duration::from_millis(1000));
    server.kill();
    std::thread::sleep(Duration::from_millis(300));
    let _server = ProxyServer::start(&hsm, &address);
    let out = go.finish();
    println!("go/miekg across a restart: {}", out.summary);
    let count = |key: &str| out.count(key);
    let rest = &out.lines;
    assert_eq!((count("errors"), count("evictions")), (0, 0), "{rest:?}");
    assert!(count("late") > 0, "signing after the restart");
}

#[test]
fn a_server_killed_during_c_sign_and_not_restarted_gives_a_clean_error_in_bounded_time() {
    let hsm = SoftHsm::new("killedsign");
    let dir = TempDir::new("killedsign");
    let address = unix_address(&dir);
    let mut server = ProxyServer::start(&hsm, &address);
    let m = client(&address, &dir, &[("PKCS11_PROXY_RECONNECT_MS", "500")]);
    make_token_key(&m);
    let f = m.f();
    let s = m.open_rw(m.first_slot());
    let key = find_key(&m, s, CKO_PRIVATE_KEY);
    // SAFETY: valid arguments.
    unsafe { assert_eq!(f.C_SignInit.unwrap()(s, &mut ecdsa(), key), CKR_OK) };
    server.freeze();
    let (rv, took) = std::thread::scope(|scope| {
        let sign = scope.spawn(|| {
            let started = Instant::now();
            let rv = sign_digest(&m, s);
            (rv, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        server.kill();
        sign.join().unwrap()
    });
    println!("C_Sign with its server killed: {rv:#x} after {took:?}");
    assert_eq!(rv, CKR_DEVICE_ERROR);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Nothing is stuck: the next call answers the same, at once.
    let mut info = CK_SESSION_INFO::default();
    let started = Instant::now();
    // SAFETY: valid out pointer.
    let rv = unsafe { f.C_GetSessionInfo.unwrap()(s, &mut info) };
    assert_eq!(rv, CKR_DEVICE_ERROR);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_key_handle_kept_while_no_session_was_open_is_found_again_at_its_first_use() {
    let hsm = SoftHsm::new("nosession");
    let dir = TempDir::new("nosession");
    let address = unix_address(&dir);
    let mut server = ProxyServer::start(&hsm, &address);
    let m = client(&address, &dir, &[]);
    make_token_key(&m);
    let f = m.f();
    let slot = m.first_slot();
    let s = m.open_rw(slot);
    let key = find_key(&m, s, CKO_PRIVATE_KEY);
    // Object handles outlive sessions (v2.40 §6.7.7): the application keeps the key's handle
    // and closes every session.
    // SAFETY: valid arguments throughout.
    unsafe {
        assert_eq!(f.C_CloseAllSessions.unwrap()(slot), CKR_OK);
    }
    server.kill();
    let _server = ProxyServer::start(&hsm, &address);
    let s = m.open_rw(slot);
    assert_eq!(m.login(s, PIN), CKR_OK);
    // SAFETY: valid arguments.
    unsafe {
        assert_eq!(f.C_SignInit.unwrap()(s, &mut ecdsa(), key), CKR_OK);
        assert_eq!(sign_digest(&m, s), CKR_OK);
    }
    // A search hands out the same handle again.
    assert_eq!(find_key(&m, s, CKO_PRIVATE_KEY), key);
}

#[test]
fn over_mutual_tls_a_restart_is_invisible_too() {
    let hsm = SoftHsm::new("tlsrestart");
    let dir = TempDir::new("tlsrestart");
    let pki = tests::pki::Pki::new(dir.path(), "restart-ca");
    let (server_id, client_id) = (pki.server("server"), pki.client("peer0", false));
    let start = |listen: &str| {
        ProxyServer::start_with(
            &hsm,
            &[
                "--module",
                SOFTHSM,
                "--listen",
                listen,
                "--tls-cert",
                server_id.cert.to_str().unwrap(),
                "--tls-key",
                server_id.key.to_str().unwrap(),
                "--tls-client-ca",
                pki.ca.to_str().unwrap(),
            ],
            &[],
        )
    };
    let mut server = start("tls://127.0.0.1:0");
    let address = server.address.clone();
    let m = client(
        &address,
        &dir,
        &[
            ("PKCS11_PROXY_TLS_CA", pki.ca.to_str().unwrap()),
            ("PKCS11_PROXY_TLS_CERT", client_id.cert.to_str().unwrap()),
            ("PKCS11_PROXY_TLS_KEY", client_id.key.to_str().unwrap()),
        ],
    );
    make_token_key(&m);
    let s = m.open_rw(m.first_slot());
    let key = find_key(&m, s, CKO_PRIVATE_KEY);
    // SAFETY: valid arguments.
    unsafe { assert_eq!(m.f().C_SignInit.unwrap()(s, &mut ecdsa(), key), CKR_OK) };
    server.kill();
    let _server = start(&address);
    assert_eq!(sign_digest(&m, s), CKR_OK);
    assert_eq!(unsafe { fabric_sign(&m, s) }, CKR_OK);
}

/// The label of `object` (64 bytes at most), or the call's error.
fn label_of(
    m: &RawModule,
    s: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> Result<Vec<u8>, CK_RV> {
    let mut label = [0u8; 64];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: label.as_mut_ptr().cast(),
        ulValueLen: 64,
    }];
    // SAFETY: a 64-byte buffer.
    match unsafe { m.f().C_GetAttributeValue.unwrap()(s, object, t.as_mut_ptr(), 1) } {
        CKR_OK => Ok(label[..t[0].ulValueLen as usize].to_vec()),
        rv => Err(rv),
    }
}

#[test]
fn every_answer_that_hands_out_a_token_object_carries_its_identity_across_a_restart() {
    // Token objects handed out by each kind of answer (a data object and a certificate
    // created, a copy, a key generated, one unwrapped; found, in another application, by a
    // search that names their class and by one that does not): their identity comes with the
    // answer (no C_GetAttributeValue is made for it), and each handle still names its object
    // after the server is killed and started again.
    let hsm = SoftHsm::new("identities");
    let dir = TempDir::new("identities");
    let address = unix_address(&dir);
    let args = [
        "--module",
        SOFTHSM,
        "--listen",
        &address,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let mut server = ProxyServer::start_with(&hsm, &args, &[]);
    let reads = || {
        let text = tests::http_get(&server.metrics_address(), "/metrics").1;
        text.lines()
            .filter(|l| l.starts_with("pkcs11_proxy_calls_total{function=\"C_GetAttributeValue\""))
            .count()
    };
    let m = client(&address, &dir, &[]);
    let f = m.f();
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_OK);
    let tru = [CK_TRUE];
    let data_class = CKO_DATA.to_ne_bytes();
    let secret = CKO_SECRET_KEY.to_ne_bytes();
    let aes = CKK_AES.to_ne_bytes();
    let len32 = (32 as CK_ULONG).to_ne_bytes();
    let mut objects: Vec<(&str, CK_OBJECT_HANDLE)> = Vec::new();
    let create = |t: &mut [CK_ATTRIBUTE]| {
        let mut h = 0;
        // SAFETY: a valid template and out pointer.
        let rv =
            unsafe { f.C_CreateObject.unwrap()(s, t.as_mut_ptr(), t.len() as CK_ULONG, &mut h) };
        assert_eq!(rv, CKR_OK);
        h
    };
    let made = create(&mut [
        attr(CKA_CLASS, &data_class),
        attr(CKA_TOKEN, &tru),
        attr(CKA_LABEL, b"made"),
        attr(CKA_APPLICATION, b"identities"),
        attr(CKA_VALUE, b"value"),
    ]);
    objects.push(("made", made));
    let cert_class = CKO_CERTIFICATE.to_ne_bytes();
    let x509 = CKC_X_509.to_ne_bytes();
    let certificate = create(&mut [
        attr(CKA_CLASS, &cert_class),
        attr(CKA_CERTIFICATE_TYPE, &x509),
        attr(CKA_TOKEN, &tru),
        attr(CKA_LABEL, b"certificate"),
        attr(CKA_ID, b"certificate-id"),
        attr(CKA_SUBJECT, b"subject"),
        attr(CKA_VALUE, b"certificate value"),
    ]);
    objects.push(("certificate", certificate));
    // SAFETY: valid templates, mechanisms and out pointers throughout.
    unsafe {
        let mut t = [attr(CKA_LABEL, b"copy")];
        let mut copy = 0;
        assert_eq!(
            f.C_CopyObject.unwrap()(s, made, t.as_mut_ptr(), 1, &mut copy),
            CKR_OK
        );
        objects.push(("copy", copy));
        let mut gen = CK_MECHANISM {
            mechanism: CKM_AES_KEY_GEN,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut t = [
            attr(CKA_TOKEN, &tru),
            attr(CKA_LABEL, b"wrapping"),
            attr(CKA_ID, b"wrapping-id"),
            attr(CKA_VALUE_LEN, &len32),
            attr(CKA_WRAP, &tru),
            attr(CKA_UNWRAP, &tru),
        ];
        let mut wrapping = 0;
        assert_eq!(
            f.C_GenerateKey.unwrap()(s, &mut gen, t.as_mut_ptr(), 6, &mut wrapping),
            CKR_OK
        );
        objects.push(("wrapping", wrapping));
        let mut t = [attr(CKA_VALUE_LEN, &len32), attr(CKA_EXTRACTABLE, &tru)];
        let mut plain = 0;
        assert_eq!(
            f.C_GenerateKey.unwrap()(s, &mut gen, t.as_mut_ptr(), 2, &mut plain),
            CKR_OK
        );
        let mut wrap = CK_MECHANISM {
            mechanism: CKM_AES_KEY_WRAP,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut wrapped = [0u8; 64];
        let mut wrapped_len: CK_ULONG = 64;
        assert_eq!(
            f.C_WrapKey.unwrap()(
                s,
                &mut wrap,
                wrapping,
                plain,
                wrapped.as_mut_ptr(),
                &mut wrapped_len
            ),
            CKR_OK
        );
        let mut t = [
            attr(CKA_CLASS, &secret),
            attr(CKA_KEY_TYPE, &aes),
            attr(CKA_TOKEN, &tru),
            attr(CKA_LABEL, b"unwrapped"),
        ];
        let mut unwrapped = 0;
        assert_eq!(
            f.C_UnwrapKey.unwrap()(
                s,
                &mut wrap,
                wrapping,
                wrapped.as_mut_ptr(),
                wrapped_len,
                t.as_mut_ptr(),
                4,
                &mut unwrapped
            ),
            CKR_OK
        );
        objects.push(("unwrapped", unwrapped));
    }
    // Another application finds them: by class, and with no class in the template.
    let dir2 = TempDir::new("identities2");
    let other = client(&address, &dir2, &[]);
    let s2 = other.open_rw(other.first_slot());
    // Its own login (logins are per application: its vendor instance is its own).
    assert_eq!(other.login(s2, PIN), CKR_OK);
    let search = |template: &mut [CK_ATTRIBUTE]| {
        let mut found = [0 as CK_OBJECT_HANDLE; 8];
        let mut n = 0;
        // SAFETY: valid template and buffers.
        unsafe {
            let f = other.f();
            assert_eq!(
                f.C_FindObjectsInit.unwrap()(s2, template.as_mut_ptr(), template.len() as CK_ULONG),
                CKR_OK
            );
            assert_eq!(
                f.C_FindObjects.unwrap()(s2, found.as_mut_ptr(), 8, &mut n),
                CKR_OK
            );
            assert_eq!(f.C_FindObjectsFinal.unwrap()(s2), CKR_OK);
        }
        found[..n as usize].to_vec()
    };
    let by_class = search(&mut [
        attr(CKA_CLASS, &data_class),
        attr(CKA_APPLICATION, b"identities"),
    ]);
    assert_eq!(by_class.len(), 2);
    let any_class = search(&mut [attr(CKA_LABEL, b"wrapping")]);
    assert_eq!(any_class.len(), 1);
    assert_eq!(
        reads(),
        0,
        "an identity was read apart from the answer that handed it out"
    );

    server.kill();
    let _server = ProxyServer::start(&hsm, &address);
    for (label, object) in &objects {
        assert_eq!(
            label_of(&m, s, *object).as_deref(),
            Ok(label.as_bytes()),
            "{label}"
        );
    }
    for object in &by_class {
        let label = label_of(&other, s2, *object).unwrap();
        assert!(label == b"made" || label == b"copy", "{label:?}");
    }
    assert_eq!(
        label_of(&other, s2, any_class[0]).as_deref(),
        Ok(&b"wrapping"[..])
    );
}

/// A node started while the proxy restarts or rolls out starts normally: its C_Initialize
/// waits for a server up to the reconnect window (`PKCS11_PROXY_RECONNECT_MS`), as every
/// other call does (issue 24; DESIGN.md, "Healing the HSM side"). Past the window it fails.
#[test]
fn c_initialize_waits_for_a_server_started_after_the_application() {
    let hsm = SoftHsm::new("late");
    let dir = TempDir::new("late");
    let address = unix_address(&dir);
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let started = Instant::now();
    let init = {
        let address = address.clone();
        std::thread::spawn(move || {
            let rv = with_env(&[("PKCS11_PROXY_SOCKET", &address)], || m.initialize());
            (rv, m)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let _server = ProxyServer::start(&hsm, &address);
    let (rv, m) = init.join().unwrap();
    assert_eq!(rv, CKR_OK);
    assert!(started.elapsed() >= Duration::from_secs(2));
    make_token_key(&m);
    let s = m.open_rw(m.first_slot());
    // SAFETY: a live session of a logged-in application.
    assert_eq!(unsafe { fabric_sign(&m, s) }, CKR_OK);

    // No server for longer than the window: CKR_FUNCTION_FAILED once it is over, not before.
    let late = TempDir::new("too-late");
    let m = RawModule::load(&private_copy(&shim_path(), late.path()));
    let started = Instant::now();
    let rv = with_env(
        &[
            ("PKCS11_PROXY_SOCKET", &unix_address(&late)),
            ("PKCS11_PROXY_RECONNECT_MS", "700"),
        ],
        || m.initialize(),
    );
    assert_eq!(rv, CKR_FUNCTION_FAILED);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}
