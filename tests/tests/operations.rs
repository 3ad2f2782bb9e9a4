//! Every family of PKCS#11 operations through the proxy, with the `cryptoki` crate as the
//! client: key generation (RSA, EC P-256/P-384, AES, generic secret), sign/verify (RSA PKCS,
//! PSS, ECDSA, HMAC), encrypt/decrypt (RSA OAEP, AES CBC_PAD, GCM), digest, wrap/unwrap,
//! ECDH derive, random, multi-part operations, objects and attributes.

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use tests::{proxy_context, ProxyServer, SoftHsm, TempDir, PIN};

/// DER OID of P-256 and P-384 (CKA_EC_PARAMS).
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

struct Fixture {
    _hsm: SoftHsm,
    _server: ProxyServer,
    _dir: TempDir,
    ctx: Pkcs11,
}

fn fixture(label: &str) -> Fixture {
    let hsm = SoftHsm::new(label);
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("ops");
    let ctx = proxy_context(&server, dir.path());
    Fixture {
        _hsm: hsm,
        _server: server,
        _dir: dir,
        ctx,
    }
}

fn user_session(ctx: &Pkcs11) -> Session {
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap();
    s
}

fn ec_pair(s: &Session, curve: &[u8]) -> (ObjectHandle, ObjectHandle) {
    s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::EcParams(curve.to_vec()),
            Attribute::Verify(true),
            Attribute::Token(false),
        ],
        &[
            Attribute::Sign(true),
            Attribute::Derive(true),
            Attribute::Token(false),
            Attribute::Sensitive(true),
        ],
    )
    .unwrap()
}

fn rsa_pair(s: &Session) -> (ObjectHandle, ObjectHandle) {
    s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Verify(true),
            Attribute::Encrypt(true),
            Attribute::Token(false),
        ],
        &[
            Attribute::Sign(true),
            Attribute::Decrypt(true),
            Attribute::Token(false),
            Attribute::Sensitive(true),
        ],
    )
    .unwrap()
}

fn aes_key(s: &Session, extra: &[Attribute]) -> ObjectHandle {
    let mut t = vec![
        Attribute::ValueLen(32.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Token(false),
    ];
    t.extend_from_slice(extra);
    s.generate_key(&Mechanism::AesKeyGen, &t).unwrap()
}

#[test]
fn slots_tokens_and_mechanisms() {
    let f = fixture("info");
    // SoftHSM2 shows the initialised token and one free slot with an empty token.
    let slots = f.ctx.get_slots_with_token().unwrap();
    assert_eq!(slots.len(), 2);
    let token = f.ctx.get_token_info(slots[0]).unwrap();
    assert_eq!(token.label(), "info");
    let mechs = f.ctx.get_mechanism_list(slots[0]).unwrap();
    for m in [
        MechanismType::ECDSA,
        MechanismType::RSA_PKCS_OAEP,
        MechanismType::AES_GCM,
        MechanismType::SHA256,
    ] {
        assert!(mechs.contains(&m), "{m} missing");
    }
    let info = f
        .ctx
        .get_mechanism_info(slots[0], MechanismType::ECDSA)
        .unwrap();
    assert!(info.sign());
    let lib = f.ctx.get_library_info().unwrap();
    assert_eq!(lib.manufacturer_id(), "SoftHSM");
}

#[test]
fn ecdsa_p256_and_p384_sign_verify() {
    let f = fixture("ecdsa");
    let s = user_session(&f.ctx);
    for (curve, len) in [(P256, 64), (P384, 96)] {
        // (SoftHSM2 2.6 has no CKM_ECDSA_SHA256: Fabric hashes first and signs with CKM_ECDSA.)
        let (public, private) = ec_pair(&s, curve);
        let digest = s.digest(&Mechanism::Sha256, b"endorsement").unwrap();
        let sig = s.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
        assert_eq!(sig.len(), len);
        s.verify(&Mechanism::Ecdsa, public, &digest, &sig).unwrap();
        let mut bad = sig.clone();
        bad[3] ^= 0x40;
        assert_eq!(
            s.verify(&Mechanism::Ecdsa, public, &digest, &bad)
                .unwrap_err()
                .to_string(),
            Error::Pkcs11(
                RvError::SignatureInvalid,
                cryptoki::context::Function::Verify
            )
            .to_string()
        );
        // Fabric reads the public point back.
        let attrs = s
            .get_attributes(public, &[AttributeType::EcPoint, AttributeType::EcParams])
            .unwrap();
        assert!(matches!(&attrs[1], Attribute::EcParams(p) if p == curve));
        assert!(matches!(&attrs[0], Attribute::EcPoint(p) if !p.is_empty()));
    }
}

#[test]
fn rsa_pkcs_pss_and_oaep() {
    let f = fixture("rsa");
    let s = user_session(&f.ctx);
    let (public, private) = rsa_pair(&s);
    let sig = s
        .sign(&Mechanism::Sha256RsaPkcs, private, b"message")
        .unwrap();
    assert_eq!(sig.len(), 256);
    s.verify(&Mechanism::Sha256RsaPkcs, public, b"message", &sig)
        .unwrap();
    assert!(s
        .verify(&Mechanism::Sha256RsaPkcs, public, b"other", &sig)
        .is_err());

    let pss = PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    };
    let sig = s
        .sign(&Mechanism::Sha256RsaPkcsPss(pss), private, b"message")
        .unwrap();
    s.verify(&Mechanism::Sha256RsaPkcsPss(pss), public, b"message", &sig)
        .unwrap();
    let digest = s.digest(&Mechanism::Sha256, b"message").unwrap();
    let sig = s
        .sign(&Mechanism::RsaPkcsPss(pss), private, &digest)
        .unwrap();
    s.verify(&Mechanism::RsaPkcsPss(pss), public, &digest, &sig)
        .unwrap();

    // SoftHSM2 2.6 implements OAEP with SHA-1 only; SHA-256 gets CKR_ARGUMENTS_BAD from it,
    // directly and through the proxy alike (checked in `vendor_refusals_come_through_unchanged`).
    let oaep = PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    );
    let ct = s
        .encrypt(&Mechanism::RsaPkcsOaep(oaep), public, b"secret")
        .unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcsOaep(oaep), private, &ct)
            .unwrap(),
        b"secret"
    );
    let ct = s.encrypt(&Mechanism::RsaPkcs, public, b"v1.5").unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcs, private, &ct).unwrap(),
        b"v1.5"
    );
}

#[test]
fn aes_cbc_pad_gcm_and_multipart() {
    let f = fixture("aes");
    let s = user_session(&f.ctx);
    let key = aes_key(&s, &[]);
    let data = vec![0x5a; 1000];

    let ct = s
        .encrypt(&Mechanism::AesCbcPad([7; 16]), key, &data)
        .unwrap();
    assert_eq!(ct.len(), 1008);
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad([7; 16]), key, &ct).unwrap(),
        data
    );

    // Multi-part, in uneven pieces.
    s.encrypt_init(&Mechanism::AesCbcPad([9; 16]), key).unwrap();
    let mut multi = s.encrypt_update(&data[..333]).unwrap();
    multi.extend(s.encrypt_update(&data[333..]).unwrap());
    multi.extend(s.encrypt_final().unwrap());
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad([9; 16]), key, &multi)
            .unwrap(),
        data
    );

    let mut iv = [3u8; 12];
    let gcm = GcmParams::new(&mut iv, b"header", 128.into()).unwrap();
    let ct = s.encrypt(&Mechanism::AesGcm(gcm), key, &data).unwrap();
    assert_eq!(ct.len(), data.len() + 16);
    let mut iv = [3u8; 12];
    let gcm = GcmParams::new(&mut iv, b"header", 128.into()).unwrap();
    assert_eq!(s.decrypt(&Mechanism::AesGcm(gcm), key, &ct).unwrap(), data);
    let mut iv = [3u8; 12];
    let gcm = GcmParams::new(&mut iv, b"other header", 128.into()).unwrap();
    assert!(
        s.decrypt(&Mechanism::AesGcm(gcm), key, &ct).is_err(),
        "GCM must authenticate the AAD"
    );
}

#[test]
fn digest_hmac_and_multipart_sign() {
    let f = fixture("digest");
    let s = user_session(&f.ctx);
    let d = s.digest(&Mechanism::Sha256, b"abc").unwrap();
    assert_eq!(
        d,
        [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad
        ]
    );
    s.digest_init(&Mechanism::Sha256).unwrap();
    s.digest_update(b"a").unwrap();
    s.digest_update(b"bc").unwrap();
    assert_eq!(s.digest_final().unwrap(), d);
    assert_eq!(s.digest(&Mechanism::Sha1, b"abc").unwrap().len(), 20);
    assert_eq!(s.digest(&Mechanism::Sha384, b"abc").unwrap().len(), 48);

    let key = s
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Token(false),
            ],
        )
        .unwrap();
    let mac = s.sign(&Mechanism::Sha256Hmac, key, b"payload").unwrap();
    s.sign_init(&Mechanism::Sha256Hmac, key).unwrap();
    s.sign_update(b"pay").unwrap();
    s.sign_update(b"load").unwrap();
    assert_eq!(s.sign_final().unwrap(), mac);
    s.verify_init(&Mechanism::Sha256Hmac, key).unwrap();
    s.verify_update(b"payload").unwrap();
    s.verify_final(&mac).unwrap();
}

#[test]
fn wrap_unwrap_and_ecdh_derive() {
    let f = fixture("keys");
    let s = user_session(&f.ctx);
    let wrapping = aes_key(&s, &[Attribute::Wrap(true), Attribute::Unwrap(true)]);
    let secret = aes_key(
        &s,
        &[Attribute::Extractable(true), Attribute::Sensitive(false)],
    );
    let wrapped = s
        .wrap_key(&Mechanism::AesKeyWrapPad, wrapping, secret)
        .unwrap();
    assert_eq!(wrapped.len(), 40);
    let unwrapped = s
        .unwrap_key(
            &Mechanism::AesKeyWrapPad,
            wrapping,
            &wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Token(false),
            ],
        )
        .unwrap();
    let ct = s
        .encrypt(&Mechanism::AesCbcPad([1; 16]), secret, b"same key?")
        .unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad([1; 16]), unwrapped, &ct)
            .unwrap(),
        b"same key?"
    );

    // ECDH: both sides derive the same secret.
    let (a_pub, a_priv) = ec_pair(&s, P256);
    let (b_pub, b_priv) = ec_pair(&s, P256);
    let point = |h| match &s.get_attributes(h, &[AttributeType::EcPoint]).unwrap()[0] {
        Attribute::EcPoint(p) => p[2..].to_vec(), // strip the DER OCTET STRING header
        _ => unreachable!(),
    };
    let (pa, pb) = (point(a_pub), point(b_pub));
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32.into()),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Token(false),
    ];
    let ka = s
        .derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &pb)),
            a_priv,
            &template,
        )
        .unwrap();
    let kb = s
        .derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &pa)),
            b_priv,
            &template,
        )
        .unwrap();
    let value = |h| match &s.get_attributes(h, &[AttributeType::Value]).unwrap()[0] {
        Attribute::Value(v) => v.clone(),
        _ => unreachable!(),
    };
    assert_eq!(value(ka), value(kb));
    assert_eq!(value(ka).len(), 32);
}

#[test]
fn objects_find_copy_destroy_and_attributes() {
    let f = fixture("objects");
    let s = user_session(&f.ctx);
    let (public, private) = ec_pair(&s, P256);
    // Fabric's key generation: set CKA_ID and CKA_LABEL afterwards, then find by class and id.
    let id = vec![0xfa, 0xb1];
    s.update_attributes(
        public,
        &[
            Attribute::Id(id.clone()),
            Attribute::Label(b"fabric".to_vec()),
        ],
    )
    .unwrap();
    s.update_attributes(private, &[Attribute::Id(id.clone())])
        .unwrap();
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.clone()),
        ])
        .unwrap();
    assert_eq!(found, vec![private]);
    // Sensitive values stay unavailable; the attribute kinds come back typed.
    let attrs = s
        .get_attributes(
            private,
            &[
                AttributeType::Class,
                AttributeType::KeyType,
                AttributeType::Sign,
                AttributeType::Value,
            ],
        )
        .unwrap();
    assert!(matches!(
        attrs[0],
        Attribute::Class(ObjectClass::PRIVATE_KEY)
    ));
    assert!(matches!(attrs[1], Attribute::KeyType(KeyType::EC)));
    assert!(matches!(attrs[2], Attribute::Sign(true)));
    assert_eq!(
        attrs.len(),
        3,
        "CKA_VALUE of a sensitive key must not come back"
    );
    // Copy with CKA_MODIFIABLE=false, as Fabric does, then destroy the original.
    let copy = s
        .copy_object(public, &[Attribute::Modifiable(false)])
        .unwrap();
    assert!(matches!(
        s.get_attributes(copy, &[AttributeType::Modifiable])
            .unwrap()[0],
        Attribute::Modifiable(false)
    ));
    s.destroy_object(public).unwrap();
    assert!(s.get_attributes(public, &[AttributeType::Label]).is_err());
    // Allowed mechanisms travel as an array of mechanism types; dates as CK_DATE.
    let key = aes_key(
        &s,
        &[Attribute::AllowedMechanisms(vec![
            MechanismType::AES_CBC_PAD,
            MechanismType::AES_GCM,
        ])],
    );
    match &s
        .get_attributes(key, &[AttributeType::AllowedMechanisms])
        .unwrap()[0]
    {
        Attribute::AllowedMechanisms(m) => {
            assert_eq!(m, &vec![MechanismType::AES_CBC_PAD, MechanismType::AES_GCM])
        }
        other => panic!("unexpected {other:?}"),
    }
    let data = s
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(b"app".to_vec()),
            Attribute::Value(vec![1, 2, 3]),
            Attribute::Token(false),
        ])
        .unwrap();
    assert!(
        matches!(&s.get_attributes(data, &[AttributeType::Value]).unwrap()[0], Attribute::Value(v) if v == &[1, 2, 3])
    );
}

#[test]
fn random_and_sessions() {
    let f = fixture("random");
    let s = user_session(&f.ctx);
    let a = s.generate_random_vec(64).unwrap();
    let b = s.generate_random_vec(64).unwrap();
    assert_ne!(a, b);
    s.seed_random(&a).unwrap();
    let info = s.get_session_info().unwrap();
    assert!(info.read_write());
    let slot = f.ctx.get_slots_with_token().unwrap()[0];
    let ro = f.ctx.open_ro_session(slot).unwrap();
    assert!(!ro.get_session_info().unwrap().read_write());
    s.logout().unwrap();
}

#[test]
fn vendor_refusals_come_through_unchanged() {
    let hsm = SoftHsm::new("refusals");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("refusals");
    let proxy = proxy_context(&server, dir.path());
    let direct = tests::direct_context(&hsm);
    let outcome = |ctx: &Pkcs11| {
        let s = user_session(ctx);
        let (public, private) = rsa_pair(&s);
        let oaep256 = PkcsOaepParams::new(
            MechanismType::SHA256,
            PkcsMgfType::MGF1_SHA256,
            PkcsOaepSource::empty(),
        );
        let label = PkcsOaepParams::new(
            MechanismType::SHA1,
            PkcsMgfType::MGF1_SHA1,
            PkcsOaepSource::data_specified(b"lbl"),
        );
        let (ec_pub, ec_priv) = ec_pair(&s, P256);
        [
            s.encrypt(&Mechanism::RsaPkcsOaep(oaep256), public, b"x")
                .map(|_| ()),
            s.encrypt(&Mechanism::RsaPkcsOaep(label), public, b"x")
                .map(|_| ()),
            s.sign(&Mechanism::EcdsaSha256, ec_priv, b"x").map(|_| ()),
            s.sign(&Mechanism::Ecdsa, public, b"x").map(|_| ()),
            s.verify(&Mechanism::Ecdsa, ec_pub, b"x", &[0; 64])
                .map(|_| ()),
            s.sign(&Mechanism::Sha256RsaPkcs, private, b"x").map(|_| ()),
        ]
        .map(|r| format!("{r:?}"))
    };
    let expected = outcome(&direct);
    assert_eq!(outcome(&proxy), expected);
    assert!(expected[0].contains("ArgumentsBad"), "{expected:?}");
}

#[test]
fn threads_share_sessions_and_keys_of_one_application() {
    use std::sync::{Arc, Mutex};
    let f = fixture("threads");
    let s = user_session(&f.ctx);
    let (public, private) = ec_pair(&s, P256);
    // Fabric's pattern: a pool of sessions, each used by one thread at a time but by many
    // threads over time, while other threads sign on their own sessions concurrently.
    let shared = Arc::new(Mutex::new(s));
    let slot = f.ctx.get_slots_with_token().unwrap()[0];
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (ctx, shared) = (f.ctx.clone(), shared.clone());
            std::thread::spawn(move || {
                let own = ctx.open_rw_session(slot).unwrap();
                for n in 0..50u8 {
                    let digest = [i as u8 ^ n; 32];
                    let sig = own.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
                    let pooled = shared.lock().unwrap();
                    pooled
                        .verify(&Mechanism::Ecdsa, public, &digest, &sig)
                        .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
}
