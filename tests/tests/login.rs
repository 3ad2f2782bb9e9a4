//! Per-application login: each application has its own vendor instance (its own worker), so
//! its login state is the vendor's own, as when it loads the library directly. The same
//! two-application scenario runs on two SoftHSM2 instances (two "processes": private copies of
//! the module, each with its own login state) and on two shim instances sharing one server;
//! every answer must match.

use std::ptr;

use cryptoki_sys::*;
use tests::raw::RawModule;
use tests::{private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir, PIN, SO_PIN};

type Step = (String, CK_RV, Vec<u8>);

fn attr(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as CK_ULONG,
    }
}

unsafe fn login(m: &RawModule, s: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &str) -> CK_RV {
    m.f().C_Login.unwrap()(s, user, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)
}

/// C_Login with a NULL PIN of length 0, as Fabric's BCCSP does on a pooled session when the
/// token is already logged in (and as a protected authentication path would).
unsafe fn login_null(m: &RawModule, s: CK_SESSION_HANDLE) -> CK_RV {
    m.f().C_Login.unwrap()(s, CKU_USER, ptr::null_mut(), 0)
}

unsafe fn state(m: &RawModule, s: CK_SESSION_HANDLE) -> (CK_RV, CK_ULONG) {
    let mut info = CK_SESSION_INFO::default();
    let rv = m.f().C_GetSessionInfo.unwrap()(s, &mut info);
    (rv, info.state)
}

/// Handles found by `template` (at most 8).
unsafe fn find(
    m: &RawModule,
    s: CK_SESSION_HANDLE,
    template: &mut [CK_ATTRIBUTE],
) -> (CK_RV, Vec<CK_OBJECT_HANDLE>) {
    let f = m.f();
    let rv = f.C_FindObjectsInit.unwrap()(s, template.as_mut_ptr(), template.len() as CK_ULONG);
    if rv != CKR_OK {
        return (rv, vec![]);
    }
    let mut found = [0 as CK_OBJECT_HANDLE; 8];
    let mut n = 0;
    let rv = f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), 8, &mut n);
    f.C_FindObjectsFinal.unwrap()(s);
    (rv, found[..n as usize].to_vec())
}

unsafe fn sign(m: &RawModule, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> (CK_RV, CK_RV) {
    let mut mech = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let init = m.f().C_SignInit.unwrap()(s, &mut mech, key);
    if init != CKR_OK {
        return (init, init);
    }
    let digest = [0x42u8; 32];
    let mut sig = [0u8; 64];
    let mut n = 64;
    (
        init,
        m.f().C_Sign.unwrap()(s, digest.as_ptr() as *mut u8, 32, sig.as_mut_ptr(), &mut n),
    )
}

/// Two applications, `a` and `b`, both initialised on the same token.
unsafe fn scenario(a: &RawModule, b: &RawModule) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut rec = |name: &str, rv: CK_RV, out: Vec<u8>| steps.push((name.to_string(), rv, out));
    let slot = a.first_slot();
    let sa = a.open_rw(slot);
    rec("A login", login(a, sa, CKU_USER, PIN), vec![]);

    // A makes a token key pair: private key private, public key public.
    let ec = [0x06u8, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (tru, fals) = ([CK_TRUE], [CK_FALSE]);
    let id = [0x0au8, 0x0b];
    let mut public_t = [
        attr(CKA_EC_PARAMS, &ec),
        attr(CKA_TOKEN, &tru),
        attr(CKA_PRIVATE, &fals),
        attr(CKA_ID, &id),
        attr(CKA_VERIFY, &tru),
    ];
    let mut private_t = [
        attr(CKA_TOKEN, &tru),
        attr(CKA_PRIVATE, &tru),
        attr(CKA_ID, &id),
        attr(CKA_SIGN, &tru),
        attr(CKA_SENSITIVE, &tru),
    ];
    let mut gen = CK_MECHANISM {
        mechanism: CKM_EC_KEY_PAIR_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let (mut a_pub, mut a_priv) = (0, 0);
    let rv = a.f().C_GenerateKeyPair.unwrap()(
        sa,
        &mut gen,
        public_t.as_mut_ptr(),
        5,
        private_t.as_mut_ptr(),
        5,
        &mut a_pub,
        &mut a_priv,
    );
    rec("A generates a token key pair", rv, vec![]);
    rec("A signs", sign(a, sa, a_priv).1, vec![]);

    // B, not logged in, sees only public objects and cannot sign.
    let sb = b.open_rw(slot);
    let (rv, st) = state(b, sb);
    rec(
        "B session state before login",
        rv,
        st.to_ne_bytes().to_vec(),
    );
    let (rv, found) = find(b, sb, &mut [attr(CKA_ID, &id)]);
    rec(
        "B finds by CKA_ID without login",
        rv,
        (found.len() as u32).to_ne_bytes().to_vec(),
    );
    let class = CKO_PRIVATE_KEY.to_ne_bytes();
    let (rv, found) = find(b, sb, &mut [attr(CKA_CLASS, &class)]);
    rec(
        "B finds private keys without login",
        rv,
        (found.len() as u32).to_ne_bytes().to_vec(),
    );
    let data_class = CKO_DATA.to_ne_bytes();
    let mut private_data = [
        attr(CKA_CLASS, &data_class),
        attr(CKA_PRIVATE, &tru),
        attr(CKA_VALUE, b"secret"),
    ];
    let mut obj = 0;
    rec(
        "B creates a private object without login",
        b.f().C_CreateObject.unwrap()(sb, private_data.as_mut_ptr(), 3, &mut obj),
        vec![],
    );
    let mut public_data = [
        attr(CKA_CLASS, &data_class),
        attr(CKA_PRIVATE, &fals),
        attr(CKA_VALUE, b"public"),
    ];
    rec(
        "B creates a public object without login",
        b.f().C_CreateObject.unwrap()(sb, public_data.as_mut_ptr(), 3, &mut obj),
        vec![],
    );
    let (mut b_pub, mut b_priv) = (0, 0);
    let rv = b.f().C_GenerateKeyPair.unwrap()(
        sb,
        &mut gen,
        public_t.as_mut_ptr(),
        5,
        private_t.as_mut_ptr(),
        5,
        &mut b_pub,
        &mut b_priv,
    );
    rec("B generates a private token key without login", rv, vec![]);
    rec(
        "B logs out without login",
        b.f().C_Logout.unwrap()(sb),
        vec![],
    );

    // B's wrong PIN is refused while A is logged in; the right one is accepted.
    rec(
        "B login with a wrong PIN",
        login(b, sb, CKU_USER, "0000"),
        vec![],
    );
    rec("B login with a NULL PIN", login_null(b, sb), vec![]);
    rec("B login", login(b, sb, CKU_USER, PIN), vec![]);
    rec("B login again", login(b, sb, CKU_USER, PIN), vec![]);
    // Fabric's pooled-session login: an empty PIN while already logged in.
    let sb2 = b.open_rw(slot);
    rec(
        "B login with a NULL PIN on a second session, logged in",
        login_null(b, sb2),
        vec![],
    );
    rec(
        "B login with a wrong PIN on a second session, logged in",
        login(b, sb2, CKU_USER, "0000"),
        vec![],
    );
    rec(
        "B closes the second session",
        b.f().C_CloseSession.unwrap()(sb2),
        vec![],
    );
    let (rv, st) = state(b, sb);
    rec("B session state after login", rv, st.to_ne_bytes().to_vec());
    let (rv, found) = find(b, sb, &mut [attr(CKA_CLASS, &class), attr(CKA_ID, &id)]);
    rec(
        "B finds the private key",
        rv,
        (found.len() as u32).to_ne_bytes().to_vec(),
    );
    let b_key = found.first().copied().unwrap_or(0);
    let (init, signed) = sign(b, sb, b_key);
    rec("B signs", init, signed.to_ne_bytes().to_vec());

    // B's logout ends B's login only.
    rec("B logout", b.f().C_Logout.unwrap()(sb), vec![]);
    let (rv, st) = state(b, sb);
    rec(
        "B session state after logout",
        rv,
        st.to_ne_bytes().to_vec(),
    );
    rec("B SignInit after logout", sign(b, sb, b_key).0, vec![]);
    let mut label = [CK_ATTRIBUTE {
        type_: CKA_ID,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    }];
    rec(
        "B reads the private key after logout",
        b.f().C_GetAttributeValue.unwrap()(sb, b_key, label.as_mut_ptr(), 1),
        vec![],
    );
    let (init, signed) = sign(a, sa, a_priv);
    rec(
        "A still signs after B's logout",
        init,
        signed.to_ne_bytes().to_vec(),
    );

    // Rules within one application.
    rec("A login again", login(a, sa, CKU_USER, PIN), vec![]);
    rec(
        "A SO login while user",
        login(a, sa, CKU_SO, SO_PIN),
        vec![],
    );
    rec("A login with a bad user type", login(a, sa, 7, PIN), vec![]);

    // A goes away; B logged in meanwhile stays logged in.
    rec(
        "B login before A leaves",
        login(b, sb, CKU_USER, PIN),
        vec![],
    );
    // (SoftHSM2 invalidates a process's private-object handles at logout: find again.)
    let (rv, found) = find(b, sb, &mut [attr(CKA_CLASS, &class), attr(CKA_ID, &id)]);
    rec(
        "B finds the private key again",
        rv,
        (found.len() as u32).to_ne_bytes().to_vec(),
    );
    let b_key = found.first().copied().unwrap_or(0);
    rec(
        "A finalize",
        a.f().C_Finalize.unwrap()(ptr::null_mut()),
        vec![],
    );
    let (init, signed) = sign(b, sb, b_key);
    rec("B signs after A left", init, signed.to_ne_bytes().to_vec());
    rec("B logout at the end", b.f().C_Logout.unwrap()(sb), vec![]);
    let (rv, st) = state(b, sb);
    rec("B state at the end", rv, st.to_ne_bytes().to_vec());
    steps
}

#[test]
fn each_application_has_its_own_login_as_with_the_vendor_library_directly() {
    let hsm = SoftHsm::new("login");
    let dir = TempDir::new("login");
    // Directly: two instances of SoftHSM2, each with its own login state.
    let (da, db) = tests::direct_pair(&hsm);
    // SAFETY: valid arguments throughout.
    let expected = unsafe { scenario(&da, &db) };

    // Through one server: two shim instances.
    let hsm2 = SoftHsm::new("login");
    let server = ProxyServer::start(&hsm2, "tcp://127.0.0.1:0");
    let (pa, pb) = (
        RawModule::load(&private_copy(&shim_path(), dir.path())),
        RawModule::load(&private_copy(&shim_path(), dir.path())),
    );
    with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || {
        assert_eq!(pa.initialize(), CKR_OK);
        assert_eq!(pb.initialize(), CKR_OK);
    });
    // SAFETY: as above.
    let got = unsafe { scenario(&pa, &pb) };

    // The scenario shows the rules, not only errors: what SoftHSM2 answers directly.
    let answer = |name: &str| {
        expected
            .iter()
            .find(|s| s.0 == name)
            .unwrap_or_else(|| panic!("{name}"))
            .1
    };
    for name in [
        "B signs",
        "A still signs after B's logout",
        "B signs after A left",
        "B login",
    ] {
        assert_eq!(answer(name), CKR_OK, "{name}");
    }
    assert_eq!(answer("B login with a wrong PIN"), CKR_PIN_INCORRECT);
    // What made Fabric crash through the emulating proxy: the vendor refuses an empty PIN.
    assert_eq!(
        answer("B login with a NULL PIN on a second session, logged in"),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        answer("B creates a private object without login"),
        CKR_USER_NOT_LOGGED_IN
    );
    assert_eq!(
        answer("B generates a private token key without login"),
        CKR_USER_NOT_LOGGED_IN
    );
    assert_eq!(answer("B SignInit after logout"), CKR_OBJECT_HANDLE_INVALID);
    assert_eq!(
        answer("A SO login while user"),
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN
    );
    assert_eq!(answer("A login again"), CKR_USER_ALREADY_LOGGED_IN);
    assert_eq!(
        answer("A login with a bad user type"),
        CKR_USER_TYPE_INVALID
    );

    let diffs: Vec<String> = expected
        .iter()
        .zip(&got)
        .filter(|(e, g)| e != g)
        .map(|(e, g)| {
            format!(
                "{}: direct {:#x} {:02x?} / proxy {:#x} {:02x?}",
                e.0, e.1, e.2, g.1, g.2
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{} steps differ:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// One application logged in as the user, another as the SO, then swapped.
unsafe fn user_and_so(a: &RawModule, b: &RawModule) -> Vec<(CK_RV, CK_ULONG)> {
    let slot = a.first_slot();
    let (sa, sb) = (a.open_rw(slot), b.open_rw(slot));
    let mut seen = vec![
        (login(a, sa, CKU_USER, PIN), 0),
        (login(b, sb, CKU_SO, SO_PIN), 0),
    ];
    seen.push(state(a, sa));
    seen.push(state(b, sb));
    seen.push((a.f().C_Logout.unwrap()(sa), 0));
    seen.push((b.f().C_Logout.unwrap()(sb), 0));
    seen.push((login(b, sb, CKU_SO, SO_PIN), 0));
    seen.push((login(a, sa, CKU_USER, PIN), 0));
    seen.push(state(a, sa));
    seen.push(state(b, sb));
    seen
}

#[test]
fn user_and_so_logins_of_two_applications_are_the_vendor_s_answers() {
    // Two processes on SoftHSM2 can be logged in as the user and as the SO at once; so can
    // two applications through the proxy, each with its own vendor instance.
    let hsm = SoftHsm::new("so-user");
    let (da, db) = tests::direct_pair(&hsm);
    // SAFETY: valid arguments.
    let expected = unsafe { user_and_so(&da, &db) };
    let hsm2 = SoftHsm::new("so-user");
    let server = ProxyServer::start(&hsm2, "tcp://127.0.0.1:0");
    let dir = TempDir::new("so-user");
    let (a, b) = (
        RawModule::load(&private_copy(&shim_path(), dir.path())),
        RawModule::load(&private_copy(&shim_path(), dir.path())),
    );
    with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || {
        assert_eq!(a.initialize(), CKR_OK);
        assert_eq!(b.initialize(), CKR_OK);
    });
    // SAFETY: valid arguments.
    let got = unsafe { user_and_so(&a, &b) };
    assert_eq!(got, expected);
}

#[test]
fn fabric_logs_in_on_every_pooled_session_and_keeps_signing() {
    // Fabric opens sessions under load and logs in on each, accepting
    // CKR_USER_ALREADY_LOGGED_IN; a second peer does the same on the same server.
    let hsm = SoftHsm::new("fabric-login");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("fabric-login");
    let peers = [
        RawModule::load(&private_copy(&shim_path(), dir.path())),
        RawModule::load(&private_copy(&shim_path(), dir.path())),
    ];
    for p in &peers {
        assert_eq!(
            with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || p
                .initialize()),
            CKR_OK
        );
    }
    let slot = peers[0].first_slot();
    for round in 0..3 {
        for (i, p) in peers.iter().enumerate() {
            let sessions: Vec<_> = (0..4).map(|_| p.open_rw(slot)).collect();
            for (n, s) in sessions.iter().enumerate() {
                // SAFETY: valid arguments.
                let rv = unsafe { login(p, *s, CKU_USER, PIN) };
                let first = round == 0 && n == 0;
                assert_eq!(
                    rv,
                    if first {
                        CKR_OK
                    } else {
                        CKR_USER_ALREADY_LOGGED_IN
                    },
                    "peer {i} round {round} session {n}"
                );
                // SAFETY: valid arguments.
                assert_eq!(unsafe { state(p, *s).1 }, CKS_RW_USER_FUNCTIONS);
            }
            // Fabric closes the surplus but keeps one.
            for s in &sessions[1..] {
                // SAFETY: valid handle.
                unsafe { p.f().C_CloseSession.unwrap()(*s) };
            }
        }
    }
}
