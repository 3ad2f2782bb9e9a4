//! Every session belongs to the application that opened it (DESIGN.md, "Server semantics").

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::ptr;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use tests::raw::RawModule;
use tests::{private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir, PIN};

fn client(server: &ProxyServer, dir: &TempDir) -> RawModule {
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || m
            .initialize()),
        CKR_OK
    );
    m
}

fn state(m: &RawModule, s: CK_SESSION_HANDLE) -> Result<CK_STATE, CK_RV> {
    let mut info = CK_SESSION_INFO::default();
    // SAFETY: valid out pointer.
    match unsafe { m.f().C_GetSessionInfo.unwrap()(s, &mut info) } {
        CKR_OK => Ok(info.state),
        rv => Err(rv),
    }
}

#[test]
fn an_application_cannot_use_probe_or_close_another_ones_sessions() {
    let hsm = SoftHsm::new("isolation");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("isolation");
    let a = client(&server, &dir);
    let b = client(&server, &dir);
    let slot = a.first_slot();
    let ha = a.open_rw(slot);
    assert_eq!(a.login(ha, PIN), CKR_OK);
    let hb = b.open_rw(slot);
    let f = b.f();

    // B uses A's handle, and guesses its neighbours: always CKR_SESSION_HANDLE_INVALID.
    for guess in ha.saturating_sub(8)..ha + 8 {
        if guess == hb {
            continue;
        }
        assert_eq!(
            state(&b, guess),
            Err(CKR_SESSION_HANDLE_INVALID),
            "guess {guess}"
        );
    }
    let mut mech = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY: valid arguments; only the session handle is foreign.
    unsafe {
        assert_eq!(
            f.C_DigestInit.unwrap()(ha, &mut mech),
            CKR_SESSION_HANDLE_INVALID
        );
        assert_eq!(f.C_Logout.unwrap()(ha), CKR_SESSION_HANDLE_INVALID);
        assert_eq!(f.C_CloseSession.unwrap()(ha), CKR_SESSION_HANDLE_INVALID);
        assert_eq!(f.C_CloseAllSessions.unwrap()(slot), CKR_OK);
        assert_eq!(f.C_Finalize.unwrap()(ptr::null_mut()), CKR_OK);
    }
    // A's session survived all of it, still logged in.
    assert_eq!(state(&a, ha), Ok(CKS_RW_USER_FUNCTIONS));
    // SAFETY: valid arguments.
    unsafe { assert_eq!(a.f().C_DigestInit.unwrap()(ha, &mut mech), CKR_OK) };
}

#[test]
fn a_killed_client_leaves_no_session_behind() {
    let hsm = SoftHsm::new("killed");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("killed");
    let shim = private_copy(&shim_path(), dir.path());
    let mut holder = Command::new(env!("CARGO_BIN_EXE_hold-sessions"))
        .arg(&shim)
        .arg("3")
        .env("PKCS11_PROXY_SOCKET", &server.address)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready"), "{line}");

    // The holder is logged in, and the vendor library's login is shared by the server's
    // sessions: a new session of another application sees the user state.
    let observer = client(&server, &dir);
    let slot = observer.first_slot();
    let probe = observer.open_rw(slot);
    assert_eq!(state(&observer, probe), Ok(CKS_RW_USER_FUNCTIONS));
    // SAFETY: valid handle.
    unsafe { assert_eq!(observer.f().C_CloseSession.unwrap()(probe), CKR_OK) };

    holder.kill().unwrap();
    holder.wait().unwrap();
    // Once the holder's three sessions are closed, no session of the server is logged in.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = observer.open_rw(slot);
        let st = state(&observer, s);
        // SAFETY: valid handle.
        unsafe { observer.f().C_CloseSession.unwrap()(s) };
        if st == Ok(CKS_RW_PUBLIC_SESSION) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed client's sessions are still open: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.log_contains("closing its sessions"));
}

#[test]
fn a_forked_child_initialises_afresh_and_never_uses_the_parents_sessions() {
    let hsm = SoftHsm::new("fork");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("fork");
    let out = Command::new(env!("CARGO_BIN_EXE_fork-check"))
        .arg(private_copy(&shim_path(), dir.path()))
        .env("PKCS11_PROXY_SOCKET", &server.address)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("fork ok"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
