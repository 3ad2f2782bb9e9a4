//! `--policy`: identities matched by their TLS client certificate, each confined to its role
//! (signer, enroller, admin), its functions and mechanisms; a client no identity matches is
//! refused in the handshake; SIGHUP applies a changed policy to live applications.

use cryptoki_sys::*;
use tests::fabric::{fabric_sign_data, make_token_key_with_id};
use tests::pki::{tls_client, PolicyServer};
use tests::raw::RawModule;
use tests::{SoftHsm, PIN, SO_PIN};

/// org1's CA enrolls (makes keys), its peer signs, `ops` administers.
fn policy(peer_role: &str) -> String {
    format!(
        r#"
        [[identity]]
        name = "org1-ca"
        certificate_cn = "org1-ca"
        role = "enroller"

        [[identity]]
        name = "org1-peer0"
        certificate_cn = "org1-peer0"
        role = "{peer_role}"
        allow_mechanisms = ["CKM_ECDSA", "CKM_EC_KEY_PAIR_GEN"]

        [[identity]]
        name = "ops"
        certificate_cn = "ops"
        role = "admin"
        "#
    )
}

fn setup(tag: &str) -> PolicyServer {
    PolicyServer::start(tag, &policy("signer"), &[])
}

fn destroy(m: &RawModule, s: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
    // SAFETY: a session of `m`.
    unsafe { m.f().C_DestroyObject.unwrap()(s, o) }
}

fn set_label(m: &RawModule, s: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
    let label = b"renamed";
    let mut t = [tests::fabric::attr(CKA_LABEL, label)];
    // SAFETY: a session of `m`, a valid template.
    unsafe { m.f().C_SetAttributeValue.unwrap()(s, o, t.as_mut_ptr(), 1) }
}

fn so_login(m: &RawModule, s: CK_SESSION_HANDLE) -> CK_RV {
    // SAFETY: a session of `m`, the SO PIN's bytes.
    unsafe {
        m.f().C_Login.unwrap()(
            s,
            CKU_SO,
            SO_PIN.as_ptr() as *mut u8,
            SO_PIN.len() as CK_ULONG,
        )
    }
}

fn private_key(m: &RawModule, s: CK_SESSION_HANDLE, id: &[u8]) -> CK_OBJECT_HANDLE {
    // SAFETY: a logged-in session of `m`.
    unsafe { tests::fabric::find_signing_key(m, s, id) }.unwrap()
}

#[test]
fn each_identity_is_held_to_its_role_and_strangers_are_refused_at_the_handshake() {
    let t = setup("policy");
    // The CA (enroller) makes the peer's key, names it, and may destroy what it made.
    let (ca, s) = t.app("org1-ca");
    assert_eq!(ca.login(s, PIN), CKR_OK);
    assert_eq!(make_token_key_with_id(&ca, s, b"peer0-key"), CKR_OK);
    assert_eq!(make_token_key_with_id(&ca, s, b"scratch"), CKR_OK);
    let scratch = private_key(&ca, s, b"scratch");
    assert_eq!(set_label(&ca, s, scratch), CKR_OK);
    assert_eq!(destroy(&ca, s, scratch), CKR_OK);
    assert_eq!(so_login(&ca, s), CKR_USER_TYPE_INVALID);

    // The peer (signer) signs with it, and can do nothing else to it.
    let (peer, s) = t.app("org1-peer0");
    assert_eq!(peer.login(s, PIN), CKR_OK);
    // SAFETY: a logged-in session.
    assert_eq!(
        unsafe { fabric_sign_data(&peer, s, b"peer0-key", &[1; 32]) },
        CKR_OK
    );
    let key = private_key(&peer, s, b"peer0-key");
    assert_eq!(
        make_token_key_with_id(&peer, s, b"mine"),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    assert_eq!(set_label(&peer, s, key), CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(destroy(&peer, s, key), CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(so_login(&peer, s), CKR_USER_TYPE_INVALID);
    // A mechanism beyond its list: CKM_ECDSA_SHA256 on the same key.
    let mut mech = CK_MECHANISM {
        mechanism: CKM_ECDSA_SHA256,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY: a logged-in session, a valid mechanism.
    let rv = unsafe { peer.f().C_SignInit.unwrap()(s, &mut mech, key) };
    assert_eq!(rv, CKR_MECHANISM_INVALID);

    // The admin logs in as the Security Officer (on an application of its own).
    let (ops, s) = t.app("ops");
    assert_eq!(so_login(&ops, s), CKR_OK);

    // A certificate of the right CA that no identity names: refused at C_Initialize.
    let (rv, _) = t.connect("org2-peer0");
    assert_ne!(rv, CKR_OK);
    assert!(t
        .server
        .log_contains("handshake refused: no identity of the policy matches this client"));
    assert!(t.server.log_contains("CN org2-peer0"));
    // So is a client on the plain TCP listener: it presents nothing.
    let plain = t
        .server
        .log_lines_containing("listening on")
        .first()
        .and_then(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("tcp://"))
                .map(str::to_string)
        })
        .unwrap();
    let (rv, _) = tls_client(&t.dir, &plain, None, None);
    assert_ne!(rv, CKR_OK);
    assert!(t.server.log_contains("no credentials (plain TCP)"));
    assert!(t
        .server
        .log_contains("call refused by policy: C_GenerateKeyPair is not among its functions"));
}

#[test]
fn a_reloaded_policy_applies_to_live_applications_at_their_next_call() {
    let t = setup("reload");
    let (peer, s) = t.app("org1-peer0");
    assert_eq!(peer.login(s, PIN), CKR_OK);
    assert_eq!(
        make_token_key_with_id(&peer, s, b"k1"),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    // The operator makes the peer an enroller and reloads: its next call may generate.
    std::fs::write(&t.policy_file, policy("enroller")).unwrap();
    t.server.signal(libc::SIGHUP);
    assert!(t.server.log_contains("policy reloaded"));
    assert_eq!(make_token_key_with_id(&peer, s, b"k1"), CKR_OK);
    // A policy with a mistake is refused; the rules in force stay.
    std::fs::write(&t.policy_file, "[[identity]]\nname = \"x\"\n").unwrap();
    t.server.signal(libc::SIGHUP);
    assert!(t
        .server
        .log_contains("policy reload failed; keeping the rules in force"));
    assert_eq!(make_token_key_with_id(&peer, s, b"k2"), CKR_OK);
}

/// The slots with a token, as the application sees them.
fn slots(m: &RawModule) -> Vec<CK_SLOT_ID> {
    let mut n = 0;
    // SAFETY: size query, then a buffer of that size.
    unsafe {
        assert_eq!(
            m.f().C_GetSlotList.unwrap()(CK_TRUE, std::ptr::null_mut(), &mut n),
            CKR_OK
        );
        let mut v = vec![0; n as usize];
        assert_eq!(
            m.f().C_GetSlotList.unwrap()(CK_TRUE, v.as_mut_ptr(), &mut n),
            CKR_OK
        );
        v.truncate(n as usize);
        v
    }
}

fn token_label(m: &RawModule, slot: CK_SLOT_ID) -> Result<String, CK_RV> {
    let mut info = CK_TOKEN_INFO::default();
    // SAFETY: a valid out pointer.
    match unsafe { m.f().C_GetTokenInfo.unwrap()(slot, &mut info) } {
        CKR_OK => Ok(String::from_utf8_lossy(&info.label).trim_end().to_string()),
        rv => Err(rv),
    }
}

fn open_session(m: &RawModule, slot: CK_SLOT_ID) -> CK_RV {
    let mut s = 0;
    // SAFETY: a valid out pointer.
    unsafe {
        m.f().C_OpenSession.unwrap()(
            slot,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            std::ptr::null_mut(),
            None,
            &mut s,
        )
    }
}

#[test]
fn two_organisations_behind_one_proxy_each_see_only_their_own_token() {
    let hsm = SoftHsm::new("org1");
    hsm.add_token("org2");
    let t = PolicyServer::start_on(
        hsm,
        "tokens",
        r#"
        [[identity]]
        name = "org1-peer0"
        certificate_cn = "org1-peer0"
        tokens = ["org1"]

        [[identity]]
        name = "org2-peer0"
        certificate_cn = "org2-peer0"
        tokens = ["org2"]

        [[identity]]
        name = "ops"
        certificate_cn = "ops"
        role = "admin"
        "#,
        &[],
    );
    let connect = |cn: &str| t.client(cn);
    let (hsm, server) = (&t.hsm, &t.server);
    // Loaded directly, every application sees both tokens.
    let direct = RawModule::load(&hsm.module_copy());
    tests::with_env(&[("SOFTHSM2_CONF", hsm.conf.to_str().unwrap())], || {
        assert_eq!(direct.initialize(), CKR_OK)
    });
    // Two tokens, and SoftHSM2's free slot (a token not initialised yet, with a blank label).
    let all = slots(&direct);
    assert_eq!(all.len(), 3);
    let ops = connect("ops");
    assert_eq!(
        slots(&ops),
        all,
        "an identity without `tokens` sees every token"
    );

    let (org1, org2) = (connect("org1-peer0"), connect("org2-peer0"));
    let (mine1, mine2) = (slots(&org1), slots(&org2));
    assert_eq!((mine1.len(), mine2.len()), (1, 1));
    assert_eq!(token_label(&org1, mine1[0]).as_deref(), Ok("org1"));
    assert_eq!(token_label(&org2, mine2[0]).as_deref(), Ok("org2"));
    // The other's slot is not there, whatever the call.
    assert_eq!(token_label(&org1, mine2[0]), Err(CKR_SLOT_ID_INVALID));
    assert_eq!(open_session(&org1, mine2[0]), CKR_SLOT_ID_INVALID);
    assert_eq!(open_session(&org2, mine1[0]), CKR_SLOT_ID_INVALID);
    assert_eq!(open_session(&org1, mine1[0]), CKR_OK);
    // A buffer too small for its one slot: the count of its own.
    let mut n = 0;
    // SAFETY: a buffer of 0 slots, given.
    let rv = unsafe { org1.f().C_GetSlotList.unwrap()(CK_TRUE, [0u64; 1].as_mut_ptr(), &mut n) };
    assert_eq!((rv, n), (CKR_BUFFER_TOO_SMALL, 1));
    assert!(server.log_contains("slot hidden by policy"));
}

/// Private keys found by a search with `id` as CKA_ID (all private keys when `None`).
fn private_keys(m: &RawModule, s: CK_SESSION_HANDLE, id: Option<&[u8]>) -> Vec<CK_OBJECT_HANDLE> {
    let class = CKO_PRIVATE_KEY.to_ne_bytes();
    let mut t = vec![tests::fabric::attr(CKA_CLASS, &class)];
    if let Some(id) = id {
        t.push(tests::fabric::attr(CKA_ID, id));
    }
    let mut found = [0; 16];
    let mut n = 0;
    // SAFETY: a session of `m`, a valid template and buffer.
    unsafe {
        let f = m.f();
        assert_eq!(
            f.C_FindObjectsInit.unwrap()(s, t.as_mut_ptr(), t.len() as CK_ULONG),
            CKR_OK
        );
        assert_eq!(
            f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), 16, &mut n),
            CKR_OK
        );
        assert_eq!(f.C_FindObjectsFinal.unwrap()(s), CKR_OK);
    }
    found[..n as usize].to_vec()
}

fn label_of(m: &RawModule, s: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> Result<String, CK_RV> {
    let mut buf = [0u8; 64];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: buf.as_mut_ptr().cast(),
        ulValueLen: 64,
    }];
    // SAFETY: a session of `m`, a template with a 64-byte buffer.
    match unsafe { m.f().C_GetAttributeValue.unwrap()(s, o, t.as_mut_ptr(), 1) } {
        CKR_OK => Ok(String::from_utf8_lossy(&buf[..t[0].ulValueLen as usize]).into_owned()),
        rv => Err(rv),
    }
}

/// The CA names both keys of CKA_ID `id` with `label`.
fn name_keys(m: &RawModule, s: CK_SESSION_HANDLE, id: &[u8], label: &str) {
    for class in [CKO_PRIVATE_KEY, CKO_PUBLIC_KEY] {
        let c = class.to_ne_bytes();
        let mut t = [
            tests::fabric::attr(CKA_CLASS, &c),
            tests::fabric::attr(CKA_ID, id),
        ];
        let (mut o, mut n) = (0, 0);
        let mut l = [tests::fabric::attr(CKA_LABEL, label.as_bytes())];
        // SAFETY: a logged-in session of `m`, valid templates.
        unsafe {
            let f = m.f();
            assert_eq!(f.C_FindObjectsInit.unwrap()(s, t.as_mut_ptr(), 2), CKR_OK);
            assert_eq!(f.C_FindObjects.unwrap()(s, &mut o, 1, &mut n), CKR_OK);
            f.C_FindObjectsFinal.unwrap()(s);
            assert_eq!(n, 1);
            assert_eq!(
                f.C_SetAttributeValue.unwrap()(s, o, l.as_mut_ptr(), 1),
                CKR_OK
            );
        }
    }
}

#[test]
fn two_peers_on_one_token_each_see_and_sign_with_their_own_key_only() {
    let org2_id_hex: String = b"org2-key".iter().map(|b| format!("{b:02x}")).collect();
    let t = PolicyServer::start_on(
        SoftHsm::new("fabric"),
        "objects",
        &format!(
            r#"
            [[identity]]
            name = "ca"
            certificate_cn = "ca"
            role = "enroller"

            [[identity]]
            name = "org1-ca"
            certificate_cn = "org1-ca"
            role = "enroller"
            object_labels = ["org1-*"]

            [[identity]]
            name = "org1-peer0"
            certificate_cn = "org1-peer0"
            object_labels = ["org1-*"]

            [[identity]]
            name = "org2-peer0"
            certificate_cn = "org2-peer0"
            object_ids = ["{org2_id_hex}"]
            "#
        ),
        &[],
    );
    let (hsm, server, policy_file) = (&t.hsm, &t.server, &t.policy_file);
    let app = |cn: &str| {
        let (m, s) = t.app(cn);
        let rv = m.login(s, PIN);
        assert!(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);
        (m, s)
    };
    // The CA makes both peers' keys, the way Fabric's BCCSP names them, and sees both.
    let (ca, s) = app("ca");
    assert_eq!(make_token_key_with_id(&ca, s, b"org1-key"), CKR_OK);
    assert_eq!(make_token_key_with_id(&ca, s, b"org2-key"), CKR_OK);
    name_keys(&ca, s, b"org1-key", "org1-peer0");
    name_keys(&ca, s, b"org2-key", "org2-peer0");
    assert_eq!(private_keys(&ca, s, None).len(), 2);

    let mut peers = Vec::new();
    for (cn, mine, theirs, my_label) in [
        (
            "org1-peer0",
            &b"org1-key"[..],
            &b"org2-key"[..],
            "org1-peer0",
        ),
        (
            "org2-peer0",
            &b"org2-key"[..],
            &b"org1-key"[..],
            "org2-peer0",
        ),
    ] {
        let (m, s) = app(cn);
        // Its own key: found by its CKA_ID, and it signs.
        assert_eq!(private_keys(&m, s, Some(mine)).len(), 1, "{cn}");
        // SAFETY: a logged-in session.
        assert_eq!(
            unsafe { fabric_sign_data(&m, s, mine, &[3; 32]) },
            CKR_OK,
            "{cn}"
        );
        // The other's: not found by its CKA_ID, not among all private keys.
        assert!(private_keys(&m, s, Some(theirs)).is_empty(), "{cn}");
        assert_eq!(private_keys(&m, s, None).len(), 1, "{cn}");
        // Nor behind any handle the application holds: each that answers is its own key.
        let answered: Vec<String> = (1..=64).filter_map(|h| label_of(&m, s, h).ok()).collect();
        assert!(!answered.is_empty(), "{cn}");
        assert!(answered.iter().all(|l| l == my_label), "{cn}: {answered:?}");
        let key = private_keys(&m, s, Some(mine))[0];
        peers.push((m, s, key));
    }
    // A handle it holds of an object its rules no longer show (the operator narrowed them and
    // reloaded): the vendor's codes for a handle that names nothing.
    let narrowed = std::fs::read_to_string(policy_file).unwrap().replacen(
        "certificate_cn = \"org1-peer0\"\n            object_labels = [\"org1-*\"]",
        "certificate_cn = \"org1-peer0\"\n            object_labels = [\"nobody-*\"]",
        1,
    );
    assert!(narrowed.contains("nobody-*"));
    std::fs::write(policy_file, narrowed).unwrap();
    server.signal(libc::SIGHUP);
    assert!(server.log_contains("policy reloaded"));
    let (org1, s1, key1) = &peers[0];
    // SAFETY: a logged-in session; a handle the application holds.
    let rv = unsafe { tests::fabric::sign_with_key(org1, *s1, *key1, &[5; 32]) };
    assert_eq!(rv, CKR_KEY_HANDLE_INVALID);
    assert_eq!(label_of(org1, *s1, *key1), Err(CKR_OBJECT_HANDLE_INVALID));
    let (org2, s2, key2) = &peers[1];
    // SAFETY: as above.
    let rv = unsafe { tests::fabric::sign_with_key(org2, *s2, *key2, &[5; 32]) };
    assert_eq!(rv, CKR_OK);
    assert!(server.log_contains("object hidden by policy"));

    // An enroller limited to org1's names generates a key as Fabric does (a temporary CKA_ID,
    // then CKA_ID = the SKI and CKA_LABEL its hex): the key is its own, though no pattern
    // names it; another application of the same identity does not see it.
    let (org1_ca, s) = app("org1-ca");
    assert_eq!(make_token_key_with_id(&org1_ca, s, b"tmp"), CKR_OK);
    name_keys(&org1_ca, s, b"tmp", "abcdef0123");
    assert_eq!(private_keys(&org1_ca, s, Some(b"tmp")).len(), 1);
    // SAFETY: a logged-in session.
    assert_eq!(
        unsafe { fabric_sign_data(&org1_ca, s, b"tmp", &[4; 32]) },
        CKR_OK
    );
    let (again, s2) = app("org1-ca");
    assert!(private_keys(&again, s2, Some(b"tmp")).is_empty());
    assert_eq!(
        private_keys(&again, s2, None).len(),
        1,
        "org1's own key only"
    );

    // Loaded directly, any application sees every key.
    let direct = RawModule::load(&hsm.module_copy());
    tests::with_env(&[("SOFTHSM2_CONF", hsm.conf.to_str().unwrap())], || {
        assert_eq!(direct.initialize(), CKR_OK)
    });
    let s = direct.open_rw(direct.first_slot());
    assert_eq!(direct.login(s, PIN), CKR_OK);
    assert_eq!(private_keys(&direct, s, None).len(), 3);
}

#[test]
fn an_identitys_rate_is_held_and_its_sessions_capped() {
    let t = PolicyServer::start(
        "limits",
        "[[identity]]\nname = \"slow\"\ncertificate_cn = \"slow\"\nrate_limit = 200\nmax_sessions = 2\n\n\
         [[identity]]\nname = \"free\"\ncertificate_cn = \"free\"\n",
        &[],
    );
    let (connect, server) = (|cn: &str| t.client(cn), &t.server);
    let randoms = |m: &RawModule, s: CK_SESSION_HANDLE, n: usize| {
        let started = std::time::Instant::now();
        for _ in 0..n {
            let mut r = [0u8; 8];
            // SAFETY: a session of `m`, a valid buffer.
            assert_eq!(
                unsafe { m.f().C_GenerateRandom.unwrap()(s, r.as_mut_ptr(), 8) },
                CKR_OK
            );
        }
        started.elapsed()
    };
    let slow = connect("slow");
    let slot = slow.first_slot();
    let (a, b) = (slow.open_rw(slot), slow.open_rw(slot));
    assert_eq!(open_session(&slow, slot), CKR_SESSION_COUNT);
    // SAFETY: a session of `slow`.
    assert_eq!(unsafe { slow.f().C_CloseSession.unwrap()(b) }, CKR_OK);
    assert_eq!(open_session(&slow, slot), CKR_OK);
    // 300 calls at 200 a second, a second's worth at once: the last 100 wait their turn.
    let took = randoms(&slow, a, 300);
    let free = connect("free");
    let s = free.open_rw(free.first_slot());
    let free_took = randoms(&free, s, 300);
    eprintln!("300 calls: {took:?} at 200/s, {free_took:?} unlimited");
    assert!(took >= std::time::Duration::from_millis(450), "{took:?}");
    assert!(free_took < took, "{free_took:?} {took:?}");
    assert!(server.log_contains("max_sessions reached"));
}

#[test]
fn identities_match_by_a_dns_name_or_the_fingerprint_openssl_prints() {
    // The certificates come from the server's CA; the policy naming them is loaded after.
    let t = PolicyServer::start(
        "match",
        "[[identity]]\nname = \"nobody\"\nuid = 4000000000\n",
        &[],
    );
    let by_dns = t
        .pki
        .client_with_names("some-cn", &["peer1.org1.example.com"]);
    let by_print = t.pki.client("other-cn", false);
    // The fingerprint as operators read it: `openssl x509 -noout -fingerprint -sha256`.
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&by_print.cert)
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let fingerprint = printed.trim().rsplit('=').next().unwrap().to_string();
    assert_eq!(fingerprint.len(), 95, "{printed}");
    std::fs::write(
        &t.policy_file,
        format!(
            "[[identity]]\nname = \"by-dns\"\ncertificate_dns = \"PEER1.org1.example.com\"\n\n\
             [[identity]]\nname = \"by-fingerprint\"\ncertificate_sha256 = \"{fingerprint}\"\n"
        ),
    )
    .unwrap();
    t.server.signal(libc::SIGHUP);
    assert!(t.server.log_contains("policy reloaded"));
    for id in [&by_dns, &by_print] {
        let (rv, m) = t.connect_as(id);
        assert_eq!(rv, CKR_OK);
        let s = m.open_rw(m.first_slot());
        assert_eq!(m.login(s, PIN), CKR_OK);
    }
    // The same CN without the name or the fingerprint is nobody.
    assert_ne!(t.connect("some-cn").0, CKR_OK);
}
