//! The server binary as an operator runs it: addresses, the compatible command line, the
//! handshake, hostile input, configuration errors in the shim, and the orderly stop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cryptoki_sys::*;
use protocol::handshake::{routing_id, Hello, Prelude, RouteAnswer};
use tests::raw::RawModule;
use tests::{private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir, PIN, SOFTHSM};

fn client(address: &str, dir: &TempDir) -> RawModule {
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", address)], || m.initialize()),
        CKR_OK
    );
    m
}

fn tcp_target(server: &ProxyServer) -> String {
    server.address.trim_start_matches("tcp://").to_string()
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// A client that still works proves the server survived whatever came before.
fn assert_serves(server: &ProxyServer, dir: &TempDir) {
    let m = client(&server.address, dir);
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_OK);
}

#[test]
fn sigterm_closes_sessions_finalises_and_exits_zero() {
    let hsm = SoftHsm::new("stop");
    let mut server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("stop");
    let m = client(&server.address, &dir);
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_OK);
    let status = server.stop().expect("server exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(server.log_contains("vendor library finalised"));
    // The client sees a clean error, not a hang.
    assert_eq!(m.login(s, PIN), CKR_DEVICE_ERROR);
}

#[test]
fn unix_socket_with_the_old_daemon_command_line() {
    let hsm = SoftHsm::new("unix");
    let dir = TempDir::new("unix");
    let path = dir.path().join("proxy.sock");
    let address = format!("unix://{}", path.display());
    let server =
        ProxyServer::start_with(&hsm, &[SOFTHSM, "-"], &[("PKCS11_DAEMON_SOCKET", &address)]);
    assert_eq!(server.address, address);
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_serves(&server, &dir);
    // The bare-path form of the old proxy is accepted by the shim too.
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", path.to_str().unwrap())], || m
            .initialize()),
        CKR_OK
    );
}

#[test]
fn a_file_in_the_way_of_the_unix_socket_is_not_replaced() {
    let hsm = SoftHsm::new("stale");
    let dir = TempDir::new("stale");
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"precious").unwrap();
    let out = std::process::Command::new(tests::server_path())
        .args([
            "--module",
            SOFTHSM,
            "--listen",
            &format!("unix://{}", path.display()),
        ])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn other_protocol_versions_and_garbage_are_refused_and_the_server_keeps_serving() {
    let hsm = SoftHsm::new("hostile");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("hostile");

    // A hello of protocol version 99, without the prelude: refused with a reason naming our
    // version, in the old welcome's terms.
    let mut hello = b"P11PROXY".to_vec();
    hello.extend_from_slice(&99u16.to_le_bytes());
    hello.extend_from_slice(&[8, 0]);
    hello.extend_from_slice(&[1; 16]);
    let mut c = TcpStream::connect(tcp_target(&server)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&frame(&hello)).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("P11PROXY") && text.contains("version"),
        "{text}"
    );

    // An HTTP request, a frame announcing 4 GiB, and a valid hello followed by junk.
    for junk in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        u32::MAX.to_le_bytes().to_vec(),
    ] {
        let mut c = TcpStream::connect(tcp_target(&server)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&junk).unwrap();
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink); // the server closes the connection
    }
    // A prelude of protocol version 2 (a shim from after the prelude, before this server),
    // 26 bytes long where ours has 42: a route answer refuses it at once, naming our
    // version, without waiting for bytes that never come.
    let mut old = Prelude {
        routing_id: routing_id(&[3; 16]),
        ..Default::default()
    }
    .encode();
    old[8] = 2;
    let mut c = TcpStream::connect(tcp_target(&server)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&old[..26]).unwrap();
    match RouteAnswer::read(&mut c) {
        Ok(RouteAnswer::Refused(reason)) => assert!(reason.contains("version 3"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let id = [2u8; 16];
    let mut c = TcpStream::connect(tcp_target(&server)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        &Prelude {
            routing_id: routing_id(&id),
            ..Default::default()
        }
        .encode(),
    )
    .unwrap();
    c.write_all(&frame(&Hello::new(8, id, None).encode()))
        .unwrap();
    assert_eq!(
        RouteAnswer::read(&mut c).unwrap(),
        RouteAnswer::Routed { interface: (2, 40) },
        "SoftHSM2 2.6.1 offers PKCS#11 2.40"
    );
    let mut welcome = [0u8; 4 + 35];
    c.read_exact(&mut welcome).unwrap();
    c.write_all(&frame(&[0xff; 40])).unwrap();
    let mut sink = Vec::new();
    let _ = c.read_to_end(&mut sink);

    // Refusals before the prelude are summed up in one line per interval, not one each.
    assert!(server
        .log_contains("connections that had not completed their routing prelude were refused"));
    assert!(
        server.log_contains("closing connection"),
        "junk after the hello"
    );
    assert_serves(&server, &dir);
}

#[test]
fn shim_configuration_errors_fail_c_initialize_cleanly() {
    let dir = TempDir::new("config");
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    // SAFETY: valid arguments.
    let slot_list = || unsafe {
        let mut n = 0;
        m.f().C_GetSlotList.unwrap()(CK_TRUE, std::ptr::null_mut(), &mut n)
    };
    assert_eq!(slot_list(), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(
        with_env(&[], || m.initialize()),
        CKR_GENERAL_ERROR,
        "PKCS11_PROXY_SOCKET unset"
    );
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", "http://x:1")], || m.initialize()),
        CKR_GENERAL_ERROR
    );
    assert_eq!(
        with_env(
            &[
                ("PKCS11_PROXY_SOCKET", "tcp://127.0.0.1:1"),
                ("PKCS11_PROXY_CALL_TIMEOUT_MS", "soon")
            ],
            || m.initialize()
        ),
        CKR_GENERAL_ERROR
    );
    // Nothing listens on port 1: the server is unreachable.
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", "tcp://127.0.0.1:1")], || m
            .initialize()),
        CKR_FUNCTION_FAILED
    );
    assert_eq!(slot_list(), CKR_CRYPTOKI_NOT_INITIALIZED);
}

#[test]
fn failover_to_the_next_address() {
    let hsm = SoftHsm::new("failover");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("failover");
    let list = format!("tcp://127.0.0.1:1,{}", server.address);
    let m = client(&list, &dir);
    assert_eq!(m.login(m.open_rw(m.first_slot()), PIN), CKR_OK);
}

#[test]
fn with_recovery_off_stale_sessions_are_invalid_after_a_restart_and_new_ones_work() {
    let hsm = SoftHsm::new("restart");
    let dir = TempDir::new("restart");
    let address = format!("unix://{}", dir.path().join("p.sock").display());
    let mut first = ProxyServer::start(&hsm, &address);
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(
            &[
                ("PKCS11_PROXY_SOCKET", &address),
                ("PKCS11_PROXY_RECOVERY", "off")
            ],
            || m.initialize()
        ),
        CKR_OK
    );
    let slot = m.first_slot();
    let old = m.open_rw(slot);
    assert_eq!(m.login(old, PIN), CKR_OK);
    assert!(first.stop().unwrap().success());
    let _second = ProxyServer::start(&hsm, &address);
    // The idle connection the server closed is noticed and replaced: no CKR_DEVICE_ERROR.
    // The old session died with the old server; Fabric evicts on this code and reopens.
    let mut info = CK_SESSION_INFO::default();
    // SAFETY: valid out pointer.
    assert_eq!(
        unsafe { m.f().C_GetSessionInfo.unwrap()(old, &mut info) },
        CKR_SESSION_HANDLE_INVALID
    );
    let new = m.open_rw(slot);
    assert_eq!(m.login(new, PIN), CKR_OK);
    // The new server numbers its sessions from 1 again: the application's stale handle never
    // names the new session.
    assert_ne!(new, old);
    // SAFETY: valid out pointer.
    assert_eq!(
        unsafe { m.f().C_GetSessionInfo.unwrap()(old, &mut info) },
        CKR_SESSION_HANDLE_INVALID
    );
}

#[test]
fn a_silent_server_never_hangs_c_initialize() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", silent.local_addr().unwrap());
    let holder = std::thread::spawn(move || silent.accept().map(|(s, _)| s));
    let dir = TempDir::new("silent");
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let started = std::time::Instant::now();
    let rv = with_env(
        &[
            ("PKCS11_PROXY_SOCKET", &address),
            ("PKCS11_PROXY_CONNECT_TIMEOUT_MS", "300"),
        ],
        || m.initialize(),
    );
    assert_eq!(rv, CKR_FUNCTION_FAILED);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(holder.join());
}

#[test]
fn c_initialize_argument_combinations_are_answered_by_the_vendor() {
    // Every shape of CK_C_INITIALIZE_ARGS (v2.40 §5.4.1) reaches the application's own vendor
    // instance, which answers as it does when loaded directly.
    let hsm = SoftHsm::new("initargs");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("initargs");
    let proxy = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let direct = RawModule::load(&hsm.module_copy());
    let conf = hsm.conf.to_string_lossy().into_owned();
    unsafe extern "C" fn create(out: *mut *mut std::ffi::c_void) -> CK_RV {
        *out = std::ptr::dangling_mut();
        CKR_OK
    }
    unsafe extern "C" fn other(_: *mut std::ffi::c_void) -> CK_RV {
        CKR_OK
    }
    let callbacks = CK_C_INITIALIZE_ARGS {
        CreateMutex: Some(create),
        DestroyMutex: Some(other),
        LockMutex: Some(other),
        UnlockMutex: Some(other),
        ..Default::default()
    };
    let cases: Vec<(&str, Option<CK_C_INITIALIZE_ARGS>)> = vec![
        (
            "pReserved set",
            Some(CK_C_INITIALIZE_ARGS {
                pReserved: std::ptr::dangling_mut(),
                ..Default::default()
            }),
        ),
        (
            "some callbacks",
            Some(CK_C_INITIALIZE_ARGS {
                LockMutex: Some(other),
                ..Default::default()
            }),
        ),
        ("callbacks only", Some(callbacks)),
        (
            "callbacks and OS locking",
            Some(CK_C_INITIALIZE_ARGS {
                flags: CKF_OS_LOCKING_OK,
                ..callbacks
            }),
        ),
        (
            "no threads of our own",
            Some(CK_C_INITIALIZE_ARGS {
                flags: CKF_LIBRARY_CANT_CREATE_OS_THREADS,
                ..Default::default()
            }),
        ),
        ("no arguments", None),
        ("empty arguments", Some(CK_C_INITIALIZE_ARGS::default())),
    ];
    let call = |m: &RawModule, env: (&str, &str), args: Option<CK_C_INITIALIZE_ARGS>| {
        with_env(&[env], || {
            let mut a = args;
            let p = a.as_mut().map_or(std::ptr::null_mut(), |a| {
                a as *mut CK_C_INITIALIZE_ARGS as *mut std::ffi::c_void
            });
            // SAFETY: NULL or a valid CK_C_INITIALIZE_ARGS.
            let rv = unsafe { m.f().C_Initialize.unwrap()(p) };
            // A second C_Initialize is the vendor's to answer too.
            let again = unsafe { m.f().C_Initialize.unwrap()(p) };
            if rv == CKR_OK {
                // SAFETY: NULL is the valid argument.
                unsafe { assert_eq!(m.f().C_Finalize.unwrap()(std::ptr::null_mut()), CKR_OK) };
            }
            (rv, again)
        })
    };
    let mut answers = Vec::new();
    for (name, args) in cases {
        let want = call(&direct, ("SOFTHSM2_CONF", &conf), args);
        let got = call(&proxy, ("PKCS11_PROXY_SOCKET", &server.address), args);
        assert_eq!(got, want, "{name}: proxy (first, second) vs direct");
        answers.push((name, want.0));
    }
    // The rules as SoftHSM2 applies them: the proxy used to answer CKR_CANT_LOCK itself for
    // application callbacks without CKF_OS_LOCKING_OK; SoftHSM2 accepts them.
    let answer = |n: &str| answers.iter().find(|a| a.0 == n).unwrap().1;
    assert_eq!(answer("pReserved set"), CKR_ARGUMENTS_BAD);
    assert_eq!(answer("some callbacks"), CKR_ARGUMENTS_BAD);
    assert_eq!(answer("callbacks only"), CKR_OK);
    assert_eq!(answer("no arguments"), CKR_OK);
}

#[test]
fn shim_configuration_file_with_environment_overrides() {
    let hsm = SoftHsm::new("shimcfg");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("shimcfg");
    let file = dir.path().join("shim.toml");
    std::fs::write(
        &file,
        format!(
            "socket = \"{}\"\ncall_timeout_ms = 20000\nlog = \"info\"\n",
            server.address
        ),
    )
    .unwrap();
    let cfg = file.to_str().unwrap();
    // The file alone is enough.
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_CONFIG", cfg)], || m.initialize()),
        CKR_OK
    );
    assert_eq!(m.login(m.open_rw(m.first_slot()), PIN), CKR_OK);
    // The environment wins: a wrong address in the variable fails although the file is right.
    let m2 = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let rv = with_env(
        &[
            ("PKCS11_PROXY_CONFIG", cfg),
            ("PKCS11_PROXY_SOCKET", "tcp://127.0.0.1:1"),
        ],
        || m2.initialize(),
    );
    assert_eq!(rv, CKR_FUNCTION_FAILED);
    // A bad file: C_Initialize fails and the log line (to the file the environment names)
    // gives the file, the line and the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("socket = \"{}\"\ntimeout = 3\n", server.address),
    )
    .unwrap();
    let log = dir.path().join("shim.log");
    let m3 = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let rv = with_env(
        &[
            ("PKCS11_PROXY_CONFIG", bad.to_str().unwrap()),
            ("PKCS11_PROXY_LOG_FILE", log.to_str().unwrap()),
        ],
        || m3.initialize(),
    );
    assert_eq!(rv, CKR_GENERAL_ERROR);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("bad.toml") && text.contains("line 2") && text.contains("timeout"),
        "{text}"
    );
}
