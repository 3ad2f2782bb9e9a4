//! Every session belongs to the application that opened it (DESIGN.md, "Server semantics").

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::ptr;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use tests::raw::RawModule;
use tests::{private_copy, shim_path, ProxyServer, SoftHsm, TempDir, PIN};

fn client(server: &ProxyServer, dir: &TempDir) -> RawModule {
    tests::proxy_client(&server.address, dir)
}

fn state(m: &RawModule, s: CK_SESSION_HANDLE) -> Result<CK_STATE, CK_RV> {
    let mut info = CK_SESSION_INFO::default();
    // SAFETY: valid out pointer.
    match unsafe { m.f().C_GetSessionInfo.unwrap()(s, &mut info) } {
        CKR_OK => Ok(info.state),
        rv => Err(rv),
    }
}

/// B calls with A's session handle and its neighbours, logs out and closes with it, closes
/// all its sessions and finalises; what B gets, and A's session state after it all.
fn foreign_session_scenario(
    a: &RawModule,
    b: &RawModule,
) -> (Vec<String>, Result<CK_STATE, CK_RV>) {
    let slot = a.first_slot();
    let ha = a.open_rw(slot);
    assert_eq!(a.login(ha, PIN), CKR_OK);
    let _hb = b.open_rw(slot);
    let f = b.f();
    let mut seen = Vec::new();
    for guess in ha.saturating_sub(4)..ha + 4 {
        seen.push(format!("state {guess}: {:?}", state(b, guess)));
    }
    let mut mech = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY: valid arguments; only the session handle may be foreign.
    unsafe {
        seen.push(format!(
            "DigestInit {:#x}",
            f.C_DigestInit.unwrap()(ha, &mut mech)
        ));
        seen.push(format!("Logout {:#x}", f.C_Logout.unwrap()(ha)));
        seen.push(format!("CloseSession {:#x}", f.C_CloseSession.unwrap()(ha)));
        seen.push(format!(
            "CloseAllSessions {:#x}",
            f.C_CloseAllSessions.unwrap()(slot)
        ));
        seen.push(format!(
            "Finalize {:#x}",
            f.C_Finalize.unwrap()(ptr::null_mut())
        ));
    }
    let a_state = state(a, ha);
    // SAFETY: valid arguments.
    unsafe { assert_eq!(a.f().C_DigestInit.unwrap()(ha, &mut mech), CKR_OK) };
    (seen, a_state)
}

#[test]
fn another_application_s_session_handles_reach_nothing_of_it_as_between_two_processes() {
    // Each application has its own vendor instance: whatever B does with A's session handle
    // (a number that means something only in A's instance) is answered by B's instance, as
    // between two processes loading SoftHSM2, and leaves A's session and login untouched.
    let hsm = SoftHsm::new("isolation");
    let (da, db) = tests::direct_pair(&hsm);
    let expected = foreign_session_scenario(&da, &db);
    let hsm2 = SoftHsm::new("isolation");
    let server = ProxyServer::start(&hsm2, "tcp://127.0.0.1:0");
    let dir = TempDir::new("isolation");
    let (a, b) = (client(&server, &dir), client(&server, &dir));
    let got = foreign_session_scenario(&a, &b);
    assert_eq!(
        expected.1,
        Ok(CKS_RW_USER_FUNCTIONS),
        "directly, A is untouched"
    );
    assert_eq!(got, expected);
}

#[test]
fn in_a_shared_worker_an_application_cannot_use_probe_or_close_another_ones_sessions() {
    let hsm = SoftHsm::new("isolation");
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            tests::SOFTHSM,
            "--listen",
            "tcp://127.0.0.1:0",
            "--shared-worker",
        ],
        &[],
    );
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
    // The vendor's login is what shows the holder's sessions from outside: a shared worker.
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            tests::SOFTHSM,
            "--listen",
            "tcp://127.0.0.1:0",
            "--shared-worker",
            "--resume-grace",
            "1",
        ],
        &[],
    );
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

    // The holder is logged in, and in a shared worker the vendor library's login shows in
    // every client's sessions: a new session of another application sees the user state.
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

/// A makes session objects; B tries to reach them by their handles; each searches by label.
/// What B gets, and what each search finds.
fn foreign_object_scenario(a: &RawModule, b: &RawModule) -> Vec<String> {
    let mut seen = Vec::new();
    let slot = a.first_slot();
    let (sa, sb) = (a.open_rw(slot), b.open_rw(slot));
    assert_eq!(a.login(sa, PIN), CKR_OK);
    // A makes a session HMAC key and a session data object; B makes one data object.
    let class = CKO_SECRET_KEY.to_ne_bytes();
    let kt = CKK_GENERIC_SECRET.to_ne_bytes();
    let value = [7u8; 32];
    let tru = [CK_TRUE];
    let label = b"mine";
    let attr = |ty, v: &[u8]| CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as CK_ULONG,
    };
    let mut key_t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        attr(CKA_VALUE, &value),
        attr(CKA_SIGN, &tru),
    ];
    let data_class = CKO_DATA.to_ne_bytes();
    let fals = [CK_FALSE];
    let mut data_t = [
        attr(CKA_CLASS, &data_class),
        attr(CKA_LABEL, label),
        attr(CKA_PRIVATE, &fals),
    ];
    let (mut key, mut data_a, mut data_b) = (0, 0, 0);
    let mut mech = CK_MECHANISM {
        mechanism: CKM_SHA256_HMAC,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY: valid templates and out pointers throughout.
    unsafe {
        assert_eq!(
            a.f().C_CreateObject.unwrap()(sa, key_t.as_mut_ptr(), 4, &mut key),
            CKR_OK
        );
        assert_eq!(
            a.f().C_CreateObject.unwrap()(sa, data_t.as_mut_ptr(), 3, &mut data_a),
            CKR_OK
        );
        assert_eq!(
            b.f().C_CreateObject.unwrap()(sb, data_t.as_mut_ptr(), 3, &mut data_b),
            CKR_OK
        );
        let f = b.f();
        // B's calls with A's object handles are answered by B's own instance.
        seen.push(format!(
            "B SignInit {:#x}",
            f.C_SignInit.unwrap()(sb, &mut mech, key)
        ));
        let mut size = 0;
        seen.push(format!(
            "B GetObjectSize {:#x}",
            f.C_GetObjectSize.unwrap()(sb, key, &mut size)
        ));
        let mut q = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        }];
        seen.push(format!(
            "B GetAttributeValue {:#x}",
            f.C_GetAttributeValue.unwrap()(sb, data_a, q.as_mut_ptr(), 1)
        ));
        let mut copy = 0;
        seen.push(format!(
            "B CopyObject {:#x}",
            f.C_CopyObject.unwrap()(sb, data_a, ptr::null_mut(), 0, &mut copy)
        ));
        // B's search for the label finds its own object only; A's finds A's only.
        for (m, s, own) in [(&b, sb, data_b), (&a, sa, data_a)] {
            let mut find = [attr(CKA_LABEL, label)];
            assert_eq!(
                m.f().C_FindObjectsInit.unwrap()(s, find.as_mut_ptr(), 1),
                CKR_OK
            );
            let mut found = [0 as CK_OBJECT_HANDLE; 8];
            let mut n = 0;
            assert_eq!(
                m.f().C_FindObjects.unwrap()(s, found.as_mut_ptr(), 8, &mut n),
                CKR_OK
            );
            assert_eq!(
                &found[..n as usize],
                &[own],
                "each finds its own object only"
            );
            assert_eq!(m.f().C_FindObjectsFinal.unwrap()(s), CKR_OK);
        }
        // A still uses its key and its object.
        assert_eq!(a.f().C_SignInit.unwrap()(sa, &mut mech, key), CKR_OK);
        assert_eq!(
            a.f().C_GetObjectSize.unwrap()(sa, data_a, &mut size),
            CKR_OK
        );
        assert_eq!(a.f().C_CloseSession.unwrap()(sa), CKR_OK);
        seen.push(format!(
            "B GetObjectSize after A closed {:#x}",
            f.C_GetObjectSize.unwrap()(sb, key, &mut size)
        ));
    }
    seen
}

#[test]
fn an_application_cannot_reach_another_ones_session_objects_as_between_two_processes() {
    let hsm = SoftHsm::new("objects");
    let (da, db) = tests::direct_pair(&hsm);
    let expected = foreign_object_scenario(&da, &db);
    let hsm2 = SoftHsm::new("objects");
    let server = ProxyServer::start(&hsm2, "tcp://127.0.0.1:0");
    let dir = TempDir::new("objects");
    let (a, b) = (client(&server, &dir), client(&server, &dir));
    assert_eq!(foreign_object_scenario(&a, &b), expected);
}
