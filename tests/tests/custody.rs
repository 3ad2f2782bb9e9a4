//! PIN custody: the partition's user PIN stays with the proxy (`pin_file`); a node logs in
//! with a client secret of its own, checked against its slow hash in the policy. Wrong secrets
//! never reach the HSM (its own retry counter does not move) and lock the identity out, in
//! every application of it, after `pin_attempts`; the PIN is rotated in one place.

use std::process::{Command, Stdio};

use cryptoki_sys::*;
use tests::pki::PolicyServer;
use tests::raw::RawModule;
use tests::{server_path, TempDir, PIN};

const SECRET: &str = "org1-peer0 has its own secret";

/// `pkcs11-proxy-server policy hash-secret` of `secret`.
fn hash_secret(secret: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(server_path())
        .args(["policy", "hash-secret"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hashed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hashed.starts_with("pbkdf2-sha256$100000$"), "{hashed}");
    assert!(!hashed.contains(secret));
    hashed
}

fn login(m: &RawModule, s: CK_SESSION_HANDLE, pin: &str) -> CK_RV {
    m.login(s, pin)
}

/// The token's flags about wrong user PINs, as the vendor keeps them.
fn pin_flags(m: &RawModule) -> CK_FLAGS {
    let mut info = CK_TOKEN_INFO::default();
    // SAFETY: a valid out pointer.
    assert_eq!(
        unsafe { m.f().C_GetTokenInfo.unwrap()(m.first_slot(), &mut info) },
        CKR_OK
    );
    info.flags & (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED)
}

#[test]
fn the_node_holds_only_its_secret_and_wrong_ones_never_reach_the_hsm() {
    let secrets = TempDir::new("custody-secrets");
    let pin_file = secrets.path().join("org1-user-pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let t = PolicyServer::start(
        "custody",
        &format!(
            r#"
            [[identity]]
            name = "org1-peer0"
            certificate_cn = "org1-peer0"
            pin_file = "{}"
            client_secret = "{}"
            pin_attempts = 3
            pin_lockout_seconds = 60

            [[identity]]
            name = "ops"
            certificate_cn = "ops"
            role = "admin"
            "#,
            pin_file.display(),
            hash_secret(SECRET)
        ),
        &[],
    );
    let (server, app) = (&t.server, |cn: &str| t.app(cn));

    // The node logs in with its secret; the vendor got the partition's PIN.
    let (peer, s) = app("org1-peer0");
    assert_eq!(login(&peer, s, SECRET), CKR_OK);
    let mut r = [0u8; 8];
    // SAFETY: a logged-in session, a valid buffer.
    assert_eq!(
        unsafe { peer.f().C_GenerateRandom.unwrap()(s, r.as_mut_ptr(), 8) },
        CKR_OK
    );
    // It cannot change the partition's PIN.
    // SAFETY: valid PIN buffers.
    let rv = unsafe {
        peer.f().C_SetPIN.unwrap()(
            s,
            SECRET.as_ptr() as *mut u8,
            SECRET.len() as CK_ULONG,
            b"x".as_ptr() as *mut u8,
            1,
        )
    };
    assert_eq!(rv, CKR_FUNCTION_NOT_SUPPORTED);
    // SAFETY: a session of `peer`.
    unsafe { peer.f().C_Logout.unwrap()(s) };

    // Wrong secrets: refused by the proxy, the HSM's counter untouched; the third locks out.
    let (ops, so) = app("ops");
    assert_eq!(pin_flags(&ops), 0);
    for _ in 0..3 {
        assert_eq!(login(&peer, s, "a guess"), CKR_PIN_INCORRECT);
    }
    assert_eq!(pin_flags(&ops), 0, "the HSM saw a wrong PIN");
    assert!(server.log_contains("identity locked out: wrong client secrets"));
    // Locked: even the right secret, and in a new application of the same identity.
    assert_eq!(login(&peer, s, SECRET), CKR_PIN_LOCKED);
    let (again, s2) = app("org1-peer0");
    assert_eq!(login(&again, s2, SECRET), CKR_PIN_LOCKED);
    // Loaded without custody, the same wrong PIN does reach the HSM and moves its counter
    // (SoftHSM2 sets CKF_USER_PIN_COUNT_LOW): the check above can see it.
    assert_eq!(login(&ops, so, "a guess"), CKR_PIN_INCORRECT);
    assert_ne!(pin_flags(&ops), 0);
    assert_eq!(login(&ops, so, PIN), CKR_OK);
    assert_eq!(pin_flags(&ops), 0);
}

#[test]
fn the_partition_pin_is_rotated_in_one_place() {
    let secrets = TempDir::new("rotate-pin-secrets");
    let pin_file = secrets.path().join("user-pin");
    std::fs::write(&pin_file, PIN).unwrap();
    let t = PolicyServer::start(
        "rotate-pin",
        &format!(
            "[[identity]]\nname = \"peer\"\ncertificate_cn = \"peer\"\npin_file = \"{}\"\nclient_secret = \"{}\"\n\n\
             [[identity]]\nname = \"ops\"\ncertificate_cn = \"ops\"\nrole = \"admin\"\n",
            pin_file.display(),
            hash_secret(SECRET)
        ),
        &[],
    );
    let app = |cn: &str| t.app(cn);
    // The operator changes the partition's user PIN, and writes the new one in the file.
    let (ops, s) = app("ops");
    assert_eq!(login(&ops, s, PIN), CKR_OK);
    let new_pin = "rotated-9876";
    // SAFETY: valid PIN buffers.
    let rv = unsafe {
        ops.f().C_SetPIN.unwrap()(
            s,
            PIN.as_ptr() as *mut u8,
            PIN.len() as CK_ULONG,
            new_pin.as_ptr() as *mut u8,
            new_pin.len() as CK_ULONG,
        )
    };
    assert_eq!(rv, CKR_OK);
    std::fs::write(&pin_file, new_pin).unwrap();
    // The nodes change nothing: their secret still logs them in.
    let (peer, s) = app("peer");
    assert_eq!(login(&peer, s, SECRET), CKR_OK);
}
