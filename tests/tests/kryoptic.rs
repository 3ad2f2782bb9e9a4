//! The suite's second vendor (issue 27): kryoptic, an independent PKCS#11 implementation
//! with the 3.2 interface. Differences between SoftHSM2 and kryoptic are theirs; between
//! kryoptic loaded directly and kryoptic through the proxy there must be none.

use std::process::Command;

use std::ptr;

use cryptoki_sys::*;
use tests::kryoptic::{module_path, Kryoptic, SLOT};
use tests::raw::RawModule;
use tests::v3_2::{attr, mech};

use tests::TempDir;

#[test]
fn the_parity_scenario_answers_the_same_directly_and_through_the_proxy_on_kryoptic() {
    // In a process of its own (the `parity` runner): see its documentation.
    let out = Command::new(tests::build_dir().join("parity"))
        .arg("--kryoptic")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or_default().to_string();
    eprintln!("kryoptic: {summary}");
    assert!(out.status.success(), "{text}");
    let passed: usize = summary
        .strip_prefix("parity: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed > 100, "{summary}");
}

#[test]
fn post_quantum_and_the_3_2_calls_answer_the_same_directly_and_through_the_proxy() {
    // ML-DSA-65 signatures (with and without a context, deterministic, the 3.2
    // C_VerifySignature* calls), ML-KEM-768 encapsulation and decapsulation with the two-call
    // convention, C_GetSessionValidationFlags, the asynchronous calls, authenticated wrapping:
    // in the `parity` runner's process (see its documentation).
    let out = Command::new(tests::build_dir().join("parity"))
        .args(["--kryoptic", "--v3.2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or_default().to_string();
    eprintln!("kryoptic 3.2: {summary}");
    assert!(out.status.success(), "{text}");
    for step in [
        "ok    ML-DSA C_Sign ",
        "ok    ML-DSA tampered C_VerifySignature ",
        "ok    ML-KEM C_EncapsulateKey ",
        "ok    ML-KEM the same secret ",
        "ok    C_GetInterfaceList ",
    ] {
        assert!(text.contains(step), "{step}: {text}");
    }
    // Signatures verified and secrets matched directly, so the same through the proxy.
    assert!(text.contains("ML-KEM the same secret                        rv=0x0"));
    let passed: usize = summary
        .strip_prefix("parity: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 60, "{summary}");
}

#[test]
fn the_edge_case_matrix_answers_the_same_on_kryoptic_while_initialised() {
    // Every v2.40 function with every argument shape (`tests/src/matrix.rs`), on two kryoptic
    // tokens alike, one direct and one through the proxy, in the `parity` runner's process.
    let out = Command::new(tests::build_dir().join("parity"))
        .args(["--kryoptic", "--matrix"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "kryoptic matrix: {}",
        text.lines().last().unwrap_or_default()
    );
    let initialised_ok = text
        .lines()
        .filter(|l| l.starts_with("ok    [initialised]"))
        .count();
    assert!(initialised_ok > 2000, "{initialised_ok} cases: {text}");
    // While initialised: no difference at all.
    let differ: Vec<&str> = text.lines().filter(|l| l.starts_with("DIFF")).collect();
    let inside: Vec<&&str> = differ
        .iter()
        .filter(|l| !l.contains("[before C_Initialize]") && !l.contains("[after C_Finalize]"))
        .collect();
    assert!(inside.is_empty(), "{}", text);
    // Before C_Initialize and after C_Finalize there is no vendor instance for the
    // application: the shim answers CKR_CRYPTOKI_NOT_INITIALIZED to every call, as the
    // specification says a library does (v2.40 §5.4; SoftHSM2 does, and its matrix is equal
    // there too), while kryoptic checks its arguments first and answers C_GetInfo. Those are
    // the only differences.
    assert!(
        differ.iter().all(|l| l.contains("proxy rv=0x190 ")),
        "{}",
        differ.join("\n")
    );
}

#[test]
fn pkcs11_tool_tests_the_same_on_kryoptic_directly_and_through_the_proxy() {
    let k = Kryoptic::new("tool");
    let (key, value) = k.env();
    let server = k.server("tcp://127.0.0.1:0");
    let dir = TempDir::new("kryoptic-tool");
    let shim = tests::private_copy(&tests::shim_path(), dir.path());
    let tool = |module: &std::path::Path, args: &[&str]| {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(module)
            .args(args)
            .env(key, &value)
            .env("PKCS11_PROXY_SOCKET", &server.address)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // A key to test with, made through the proxy.
    let (code, out) = tool(
        &shim,
        &[
            "-l",
            "--pin",
            tests::PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "k1",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let direct = tool(&module_path(), &["-l", "--pin", tests::PIN, "--test"]);
    let proxied = tool(&shim, &["-l", "--pin", tests::PIN, "--test"]);
    assert_eq!(direct.0, Some(0), "{}", direct.1);
    assert_eq!(direct, proxied);
    // The library's information, the 3.2 version it reports included.
    let direct = tool(&module_path(), &["-I"]);
    let proxied = tool(&shim, &["-I"]);
    assert!(direct.1.contains("Cryptoki version 3.2"), "{}", direct.1);
    assert_eq!(direct, proxied);
}

/// A token key pair of `gen` with CKA_PARAMETER_SET `set`, labelled `label`.
///
/// # Safety
/// `f` must be an initialised module's table; `s` a logged-in read-write session of it.
unsafe fn token_key_pair(
    f: &CK_FUNCTION_LIST_3_2,
    s: CK_SESSION_HANDLE,
    gen: CK_MECHANISM_TYPE,
    set: CK_ULONG,
    usage: (CK_ATTRIBUTE_TYPE, CK_ATTRIBUTE_TYPE),
    label: &[u8; 2],
) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let t = CK_TRUE;
    let mut public = [
        attr(CKA_TOKEN, &t),
        attr(CKA_PARAMETER_SET, &set),
        attr(CKA_LABEL, label),
        attr(usage.0, &t),
    ];
    let mut private = [
        attr(CKA_TOKEN, &t),
        attr(CKA_PRIVATE, &t),
        attr(CKA_LABEL, label),
        attr(usage.1, &t),
    ];
    let (mut pubk, mut privk) = (0, 0);
    let rv = f.C_GenerateKeyPair.unwrap()(
        s,
        &mut mech(gen),
        public.as_mut_ptr(),
        4,
        private.as_mut_ptr(),
        4,
        &mut pubk,
        &mut privk,
    );
    assert_eq!(rv, CKR_OK);
    (pubk, privk)
}

#[test]
fn a_restart_keeps_post_quantum_keys_their_handles_and_an_initialised_ml_dsa_signature() {
    let k = Kryoptic::new("pq-restart");
    let dir = TempDir::new("pq-restart");
    let address = format!("unix://{}", dir.path().join("p.sock").display());
    let mut server = k.server(&address);
    let m = RawModule::load(&tests::private_copy(&tests::shim_path(), dir.path()));
    let socket = [("PKCS11_PROXY_SOCKET", address.as_str())];
    assert_eq!(tests::with_env(&socket, || m.initialize()), CKR_OK);
    let f = m.f32().expect("the 3.2 interface, offered over kryoptic");
    let s = m.open_rw(SLOT);
    assert_eq!(m.login(s, tests::PIN), CKR_OK);
    let data = b"a block to order".to_vec();
    // SAFETY: valid arguments throughout.
    unsafe {
        let dsa = (CKA_VERIFY, CKA_SIGN);
        let (dsa_public, dsa_private) =
            token_key_pair(f, s, CKM_ML_DSA_KEY_PAIR_GEN, CKP_ML_DSA_65, dsa, b"pq");
        let kem = (CKA_ENCAPSULATE, CKA_DECAPSULATE);
        let (kem_public, kem_private) =
            token_key_pair(f, s, CKM_ML_KEM_KEY_PAIR_GEN, CKP_ML_KEM_768, kem, b"pq");
        assert_eq!(
            f.C_SignInit.unwrap()(s, &mut mech(CKM_ML_DSA), dsa_private),
            CKR_OK
        );

        server.kill();
        let _server = k.server(&address);

        // The signature initialised before the restart, with the two-call convention.
        let (d, dn) = (data.as_ptr() as *mut u8, data.len() as CK_ULONG);
        let mut n = 0;
        assert_eq!(f.C_Sign.unwrap()(s, d, dn, ptr::null_mut(), &mut n), CKR_OK);
        let mut sig = vec![0u8; n as usize];
        assert_eq!(
            f.C_Sign.unwrap()(s, d, dn, sig.as_mut_ptr(), &mut n),
            CKR_OK
        );
        assert_eq!(n, 3309, "an ML-DSA-65 signature");
        // The public key's old handle, found again on the new server, verifies it (3.2).
        let (sp, sn) = (sig.as_mut_ptr(), sig.len() as CK_ULONG);
        assert_eq!(
            f.C_VerifySignatureInit.unwrap()(s, &mut mech(CKM_ML_DSA), dsa_public, sp, sn),
            CKR_OK
        );
        assert_eq!(f.C_VerifySignature.unwrap()(s, d, dn), CKR_OK);
        // The ML-KEM keys' old handles: the same secret on both ends.
        let (class, kind, len, fals) =
            (CKO_SECRET_KEY, CKK_GENERIC_SECRET, 32 as CK_ULONG, CK_FALSE);
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kind),
            attr(CKA_VALUE_LEN, &len),
            attr(CKA_SENSITIVE, &fals),
            attr(CKA_EXTRACTABLE, &CK_TRUE),
        ];
        let mut ct = vec![0u8; 1088];
        let mut ctn = ct.len() as CK_ULONG;
        let (mut sent, mut received) = (0, 0);
        let mut ml_kem = mech(CKM_ML_KEM);
        assert_eq!(
            f.C_EncapsulateKey.unwrap()(
                s,
                &mut ml_kem,
                kem_public,
                t.as_mut_ptr(),
                5,
                ct.as_mut_ptr(),
                &mut ctn,
                &mut sent
            ),
            CKR_OK
        );
        assert_eq!(
            f.C_DecapsulateKey.unwrap()(
                s,
                &mut ml_kem,
                kem_private,
                t.as_mut_ptr(),
                5,
                ct.as_mut_ptr(),
                ctn,
                &mut received
            ),
            CKR_OK
        );
        let value = |h| {
            let mut v = [0u8; 32];
            let mut a = [CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: v.as_mut_ptr().cast(),
                ulValueLen: 32,
            }];
            assert_eq!(
                f.C_GetAttributeValue.unwrap()(s, h, a.as_mut_ptr(), 1),
                CKR_OK
            );
            v
        };
        assert_eq!(value(sent), value(received));
    }
}

/// What a client of the Rust `cryptoki` binding (its 3.2 support) sees of post-quantum keys
/// through `ctx`: one line per step, with the outcomes and lengths, never random bytes.
fn cryptoki_post_quantum(ctx: &cryptoki::context::Pkcs11) -> Vec<String> {
    use cryptoki::context::Function as F;
    use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{
        Attribute, KeyType, MlDsaParameterSetType, MlKemParameterSetType, ObjectClass,
    };
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let mut out = Vec::new();
    let info = ctx.get_library_info().unwrap();
    let version = info.cryptoki_version();
    out.push(format!("version {}.{}", version.major(), version.minor()));
    for f in [F::EncapsulateKey, F::VerifySignatureInit, F::AsyncComplete] {
        out.push(format!("{f:?} supported {}", ctx.is_fn_supported(f)));
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| s.id() == SLOT)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(tests::PIN.into())))
        .unwrap();
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::MlDsaKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ParameterSet(MlDsaParameterSetType::ML_DSA_87.into()),
                Attribute::Verify(true),
            ],
            &[Attribute::Token(false), Attribute::Sign(true)],
        )
        .unwrap();
    let data = b"an orderer's block header";
    let context = SignAdditionalContext::new(HedgeType::DeterministicRequired, Some(b"ch1"));
    let ml_dsa = Mechanism::MlDsa(context);
    let signature = session.sign(&ml_dsa, private, data).unwrap();
    let again = session.sign(&ml_dsa, private, data).unwrap();
    out.push(format!(
        "ML-DSA-87 signature {} bytes, deterministic {}",
        signature.len(),
        signature == again
    ));
    out.push(format!(
        "verify {:?}",
        session.verify(&ml_dsa, public, data, &signature)
    ));
    let other = Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None));
    out.push(format!(
        "verify without the context {:?}",
        session.verify(&other, public, data, &signature)
    ));
    session
        .verify_signature_init(&ml_dsa, public, &signature)
        .unwrap();
    session.verify_signature_update(&data[..10]).unwrap();
    session.verify_signature_update(&data[10..]).unwrap();
    out.push(format!(
        "verify_signature {:?}",
        session.verify_signature_final()
    ));
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::MlKemKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ParameterSet(MlKemParameterSetType::ML_KEM_1024.into()),
                Attribute::Encapsulate(true),
            ],
            &[Attribute::Token(false), Attribute::Decapsulate(true)],
        )
        .unwrap();
    let secret = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    let (ciphertext, sent) = session
        .encapsulate_key(&Mechanism::MlKem, public, &secret)
        .unwrap();
    let received = session
        .decapsulate_key(&Mechanism::MlKem, private, &secret, &ciphertext)
        .unwrap();
    let value = |h| session.get_attributes(h, &[cryptoki::object::AttributeType::Value]);
    out.push(format!(
        "ML-KEM-1024 ciphertext {} bytes, same secret {}",
        ciphertext.len(),
        value(sent).unwrap() == value(received).unwrap()
    ));
    out
}

#[test]
fn the_cryptoki_binding_sees_the_same_post_quantum_outcomes_directly_and_through_the_proxy() {
    let k = Kryoptic::new("cryptoki-pq");
    let (key, value) = k.env();
    let server = k.server("tcp://127.0.0.1:0");
    let direct =
        cryptoki::context::Pkcs11::new(tests::private_copy(&module_path(), k.dir.path())).unwrap();
    tests::with_env(&[(key, &value)], || {
        direct.initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        ))
    })
    .unwrap();
    let expected = cryptoki_post_quantum(&direct);
    // kryoptic stays loaded: OpenSSL, inside it, leaves thread-local destructors that must
    // find it when this thread ends.
    std::mem::forget(direct);
    // The shim is loaded with the server's address set, as an application's environment has
    // it: cryptoki picks its function table (C_GetInterface) at load, before C_Initialize.
    let dir = TempDir::new("cryptoki-pq");
    let shim = tests::private_copy(&tests::shim_path(), dir.path());
    let proxy = tests::with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || {
        let ctx = cryptoki::context::Pkcs11::new(shim).unwrap();
        ctx.initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        ))
        .unwrap();
        ctx
    });
    let got = cryptoki_post_quantum(&proxy);
    eprintln!("{}", expected.join("\n"));
    assert!(
        expected.contains(&"verify Ok(())".to_string()),
        "{expected:?}"
    );
    assert!(
        expected.iter().any(|l| l.ends_with("same secret true")),
        "{expected:?}"
    );
    assert_eq!(expected, got);
}
