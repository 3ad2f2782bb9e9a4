//! PKCS#11 v3.0 through the proxy, on NSS's soft token (`libsoftokn3.so`, which offers the
//! "PKCS 11" interface at 3.0 and implements the message-based API for AES-GCM), compared with
//! NSS loaded directly; and the same functions on SoftHSM2 (2.40 only) answering
//! CKR_FUNCTION_NOT_SUPPORTED.

use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::ptr;

use cryptoki_sys::*;
use tests::raw::RawModule;
use tests::{private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir};

const SOFTOKN: &str = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";

/// An empty NSS database in `dir` and the softokn configuration string that opens it.
fn nss_database(dir: &Path) -> String {
    let db = format!("sql:{}", dir.display());
    let out = Command::new("certutil")
        .args(["-N", "-d", &db, "--empty-password"])
        .output()
        .expect("certutil (Debian package libnss3-tools) must be installed");
    assert!(
        out.status.success(),
        "certutil: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("configdir='{db}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=")
}

/// What one run of the message-based scenario gave, for comparison.
#[derive(Debug, PartialEq)]
struct Outcome {
    rvs: Vec<(&'static str, CK_RV)>,
    plaintext: Vec<u8>,
    ivs_differ: bool,
}

/// AES-GCM with the message-based API: the token generates the IV and computes the tag, both
/// written back into the caller's CK_GCM_MESSAGE_PARAMS; decryption with them gives the data.
unsafe fn gcm_messages(m: &RawModule) -> Outcome {
    let f = m.f();
    let f3 = m.f3().expect("a 3.0 interface");
    let mut rvs = Vec::new();
    let mut n = 8;
    let mut slots = [0 as CK_SLOT_ID; 8];
    assert_eq!(
        f.C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut n),
        CKR_OK
    );
    let mut s = 0;
    assert_eq!(
        f.C_OpenSession.unwrap()(
            slots[0],
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            ptr::null_mut(),
            None,
            &mut s
        ),
        CKR_OK
    );
    let len = (32 as CK_ULONG).to_ne_bytes();
    let tru = [CK_TRUE];
    let fals = [CK_FALSE];
    let attr = |ty, v: &[u8]| CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as CK_ULONG,
    };
    let mut t = [
        attr(CKA_VALUE_LEN, &len),
        attr(CKA_ENCRYPT, &tru),
        attr(CKA_DECRYPT, &tru),
        attr(CKA_TOKEN, &fals),
    ];
    let mut keygen = CK_MECHANISM {
        mechanism: CKM_AES_KEY_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut key = 0;
    rvs.push((
        "C_GenerateKey",
        f.C_GenerateKey.unwrap()(s, &mut keygen, t.as_mut_ptr(), 4, &mut key),
    ));
    // Parameters at the Init, as NSS's own tests and the Rust cryptoki crate pass them: a
    // CK_GCM_MESSAGE_PARAMS, the size of a CK_GCM_PARAMS, read as the function gives it.
    let (mut iv0, mut tag0) = ([0u8; 12], [0u8; 16]);
    let mut at_init = CK_GCM_MESSAGE_PARAMS {
        pIv: iv0.as_mut_ptr(),
        ulIvLen: 12,
        ulIvFixedBits: 0,
        ivGenerator: CKG_GENERATE_COUNTER,
        pTag: tag0.as_mut_ptr(),
        ulTagBits: 128,
    };
    let mut gcm_at_init = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: (&mut at_init as *mut CK_GCM_MESSAGE_PARAMS).cast(),
        ulParameterLen: std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG,
    };
    rvs.push((
        "C_MessageEncryptInit(CK_GCM_MESSAGE_PARAMS)",
        f3.C_MessageEncryptInit.unwrap()(s, &mut gcm_at_init, key),
    ));
    rvs.push((
        "C_MessageEncryptFinal after it",
        f3.C_MessageEncryptFinal.unwrap()(s),
    ));
    let mut gcm = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    rvs.push((
        "C_MessageEncryptInit",
        f3.C_MessageEncryptInit.unwrap()(s, &mut gcm, key),
    ));

    let aad = b"block header";
    let data = b"transaction payload";
    let mut ivs = Vec::new();
    let mut last = (vec![], [0u8; 12], [0u8; 16]);
    for _ in 0..2 {
        let (mut iv, mut tag) = ([0u8; 12], [0u8; 16]);
        let mut params = CK_GCM_MESSAGE_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvFixedBits: 0,
            ivGenerator: CKG_GENERATE_COUNTER,
            pTag: tag.as_mut_ptr(),
            ulTagBits: 128,
        };
        let pp = (&mut params as *mut CK_GCM_MESSAGE_PARAMS).cast();
        let pl = std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;
        let mut ct_len: CK_ULONG = 0;
        let rv = f3.C_EncryptMessage.unwrap()(
            s,
            pp,
            pl,
            aad.as_ptr() as *mut u8,
            12,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            ptr::null_mut(),
            &mut ct_len,
        );
        rvs.push(("C_EncryptMessage(size)", rv));
        let mut ct = vec![0u8; ct_len as usize];
        let rv = f3.C_EncryptMessage.unwrap()(
            s,
            pp,
            pl,
            aad.as_ptr() as *mut u8,
            12,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            ct.as_mut_ptr(),
            &mut ct_len,
        );
        rvs.push(("C_EncryptMessage", rv));
        ct.truncate(ct_len as usize);
        ivs.push(iv);
        last = (ct, iv, tag);
    }
    rvs.push((
        "C_MessageEncryptFinal",
        f3.C_MessageEncryptFinal.unwrap()(s),
    ));

    rvs.push((
        "C_MessageDecryptInit",
        f3.C_MessageDecryptInit.unwrap()(s, &mut gcm, key),
    ));
    let (mut ct, mut iv, mut tag) = last;
    let mut params = CK_GCM_MESSAGE_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvFixedBits: 0,
        ivGenerator: CKG_NO_GENERATE,
        pTag: tag.as_mut_ptr(),
        ulTagBits: 128,
    };
    let pp = (&mut params as *mut CK_GCM_MESSAGE_PARAMS).cast();
    let pl = std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;
    let mut pt = vec![0u8; 64];
    let mut pt_len: CK_ULONG = 64;
    let rv = f3.C_DecryptMessage.unwrap()(
        s,
        pp,
        pl,
        aad.as_ptr() as *mut u8,
        12,
        ct.as_mut_ptr(),
        ct.len() as CK_ULONG,
        pt.as_mut_ptr(),
        &mut pt_len,
    );
    rvs.push(("C_DecryptMessage", rv));
    pt.truncate(if rv == CKR_OK { pt_len as usize } else { 0 });
    *params.pTag ^= 1; // through the pointer the module was given
    let mut pt2 = vec![0u8; 64];
    let mut pt2_len: CK_ULONG = 64;
    let rv = f3.C_DecryptMessage.unwrap()(
        s,
        pp,
        pl,
        aad.as_ptr() as *mut u8,
        12,
        ct.as_mut_ptr(),
        ct.len() as CK_ULONG,
        pt2.as_mut_ptr(),
        &mut pt2_len,
    );
    rvs.push(("C_DecryptMessage(bad tag)", rv));
    rvs.push((
        "C_MessageDecryptFinal",
        f3.C_MessageDecryptFinal.unwrap()(s),
    ));
    rvs.push((
        "C_SessionCancel",
        f3.C_SessionCancel.unwrap()(s, CKF_ENCRYPT),
    ));
    let user = b"user";
    rvs.push((
        "C_LoginUser",
        f3.C_LoginUser.unwrap()(s, CKU_USER, ptr::null_mut(), 0, user.as_ptr() as *mut u8, 4),
    ));
    Outcome {
        rvs,
        plaintext: pt,
        ivs_differ: ivs[0] != ivs[1],
    }
}

#[test]
fn message_based_aes_gcm_on_nss_matches_direct_with_iv_and_tag_written_back() {
    if !Path::new(SOFTOKN).exists() {
        panic!("{SOFTOKN} is missing (Debian package libnss3)");
    }
    let dir = TempDir::new("nss");
    let init = nss_database(dir.path());
    let server = ProxyServer::start_args(
        &[
            "--module",
            SOFTOKN,
            "--listen",
            "tcp://127.0.0.1:0",
            "--init-args",
            &init,
        ],
        &[],
    );
    assert!(server.log_contains("PKCS#11 3.0 interface"));

    let direct = RawModule::load(&private_copy(Path::new(SOFTOKN), dir.path()));
    let reserved = CString::new(init.clone()).unwrap();
    assert_eq!(direct.initialize_with_reserved(&reserved), CKR_OK);
    // SAFETY: the scenario passes valid buffers.
    let expected = unsafe { gcm_messages(&direct) };

    let proxy = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || proxy
            .initialize()),
        CKR_OK
    );
    // SAFETY: as above.
    let got = unsafe { gcm_messages(&proxy) };

    assert_eq!(got, expected);
    assert_eq!(expected.plaintext, b"transaction payload");
    assert!(
        expected.ivs_differ,
        "the token generates a new IV per message"
    );
    let ok = |name| {
        expected
            .rvs
            .iter()
            .any(|(n, rv)| *n == name && *rv == CKR_OK)
    };
    assert!(
        ok("C_EncryptMessage") && ok("C_DecryptMessage"),
        "{:?}",
        expected.rvs
    );
}

#[test]
fn v3_functions_on_a_2_40_library_answer_function_not_supported() {
    let hsm = SoftHsm::new("v240");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("v240");
    let proxy = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || proxy
            .initialize()),
        CKR_OK
    );
    let s = proxy.open_rw(proxy.first_slot());
    // Like the vendor, the shim offers no 3.0 interface then ...
    assert!(proxy.f3().is_none());
    let mut gcm = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    // ... and the 3.0 functions it exports by name answer CKR_FUNCTION_NOT_SUPPORTED.
    // SAFETY: valid arguments; the symbols have the types of the 3.0 header.
    unsafe {
        let init: CK_C_MessageEncryptInit = proxy.symbol(b"C_MessageEncryptInit\0").unwrap();
        let cancel: CK_C_SessionCancel = proxy.symbol(b"C_SessionCancel\0").unwrap();
        let final_: CK_C_MessageSignFinal = proxy.symbol(b"C_MessageSignFinal\0").unwrap();
        assert_eq!(init.unwrap()(s, &mut gcm, 1), CKR_FUNCTION_NOT_SUPPORTED);
        assert_eq!(cancel.unwrap()(s, 0), CKR_FUNCTION_NOT_SUPPORTED);
        assert_eq!(final_.unwrap()(s), CKR_FUNCTION_NOT_SUPPORTED);
        // Every other 3.0 function too: each reaches its arm on the server (a request routed
        // to no arm answers CKR_GENERAL_ERROR), which asks the vendor's (absent) 3.0 table.
        let nul = ptr::null_mut();
        let mut n: CK_ULONG = 0;
        macro_rules! sym {
            ($t:ty, $name:literal) => {{
                let f: $t = proxy.symbol(concat!($name, "\0").as_bytes()).unwrap();
                ($name, f.unwrap())
            }};
        }
        let mut rvs: Vec<(&str, CK_RV)> = Vec::new();
        for (name, f) in [
            sym!(CK_C_MessageEncryptInit, "C_MessageDecryptInit"),
            sym!(CK_C_MessageEncryptInit, "C_MessageSignInit"),
            sym!(CK_C_MessageEncryptInit, "C_MessageVerifyInit"),
        ] {
            rvs.push((name, f(s, &mut gcm, 1)));
        }
        for (name, f) in [
            sym!(CK_C_MessageSignFinal, "C_MessageEncryptFinal"),
            sym!(CK_C_MessageSignFinal, "C_MessageDecryptFinal"),
            sym!(CK_C_MessageSignFinal, "C_MessageVerifyFinal"),
        ] {
            rvs.push((name, f(s)));
        }
        for (name, f) in [
            sym!(CK_C_EncryptMessage, "C_EncryptMessage"),
            sym!(CK_C_EncryptMessage, "C_DecryptMessage"),
        ] {
            rvs.push((
                name,
                f(s, nul, 0, nul.cast(), 0, nul.cast(), 0, nul.cast(), &mut n),
            ));
        }
        for (name, f) in [
            sym!(CK_C_EncryptMessageBegin, "C_EncryptMessageBegin"),
            sym!(CK_C_EncryptMessageBegin, "C_DecryptMessageBegin"),
        ] {
            rvs.push((name, f(s, nul, 0, nul.cast(), 0)));
        }
        for (name, f) in [
            sym!(CK_C_EncryptMessageNext, "C_EncryptMessageNext"),
            sym!(CK_C_EncryptMessageNext, "C_DecryptMessageNext"),
        ] {
            rvs.push((name, f(s, nul, 0, nul.cast(), 0, nul.cast(), &mut n, 0)));
        }
        for (name, f) in [
            sym!(CK_C_SignMessage, "C_SignMessage"),
            sym!(CK_C_SignMessage, "C_SignMessageNext"),
        ] {
            rvs.push((name, f(s, nul, 0, nul.cast(), 0, nul.cast(), &mut n)));
        }
        for (name, f) in [
            sym!(CK_C_SignMessageBegin, "C_SignMessageBegin"),
            sym!(CK_C_SignMessageBegin, "C_VerifyMessageBegin"),
        ] {
            rvs.push((name, f(s, nul, 0)));
        }
        for (name, f) in [
            sym!(CK_C_VerifyMessage, "C_VerifyMessage"),
            sym!(CK_C_VerifyMessage, "C_VerifyMessageNext"),
        ] {
            rvs.push((name, f(s, nul, 0, nul.cast(), 0, nul.cast(), 0)));
        }
        let (name, login_user) = sym!(CK_C_LoginUser, "C_LoginUser");
        rvs.push((name, login_user(s, CKU_USER, nul.cast(), 0, nul.cast(), 0)));
        let wrong: Vec<_> = rvs
            .iter()
            .filter(|(_, rv)| *rv != CKR_FUNCTION_NOT_SUPPORTED)
            .collect();
        assert!(
            wrong.is_empty(),
            "not CKR_FUNCTION_NOT_SUPPORTED: {wrong:x?}"
        );
        assert_eq!(rvs.len(), 19);
    }
}

#[test]
fn v3_2_functions_on_a_2_40_library_answer_function_not_supported() {
    let hsm = SoftHsm::new("v240-32");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("v240-32");
    let proxy = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let address = [("PKCS11_PROXY_SOCKET", server.address.as_str())];
    assert_eq!(with_env(&address, || proxy.initialize()), CKR_OK);
    let s = proxy.open_rw(proxy.first_slot());
    // Like SoftHSM2, the shim offers no 3.2 interface (nor 3.0) ...
    assert!(proxy.f32().is_none());
    assert_eq!(proxy.interface_versions(), vec![(2, 40)]);
    // ... and the 12 functions 3.2 adds, exported by name, answer what a library without
    // them answers: CKR_FUNCTION_NOT_SUPPORTED (each reaches its arm on the server, which
    // finds no 3.2 table; a request routed to no arm would answer CKR_GENERAL_ERROR).
    let nul: *mut u8 = ptr::null_mut();
    let mut n: CK_ULONG = 0;
    let mut h: CK_OBJECT_HANDLE = 0;
    let mut mech = CK_MECHANISM {
        mechanism: CKM_ML_KEM,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let m = &mut mech as *mut CK_MECHANISM;
    let mut data = *b"data";
    let d = data.as_mut_ptr();
    let name = c"C_Sign".as_ptr() as *mut u8;
    // SAFETY: valid arguments; the symbols have the types of the 3.2 header.
    let rvs: Vec<(&str, CK_RV)> = unsafe {
        macro_rules! call {
            ($t:ty, $name:literal, ($($arg:expr),*)) => {{
                let f: $t = proxy.symbol(concat!($name, "\0").as_bytes()).unwrap();
                ($name, f.unwrap()($($arg),*))
            }};
        }
        vec![
            call!(
                CK_C_EncapsulateKey,
                "C_EncapsulateKey",
                (s, m, 1, nul.cast(), 0, nul.cast(), &mut n, &mut h)
            ),
            call!(
                CK_C_DecapsulateKey,
                "C_DecapsulateKey",
                (s, m, 1, nul.cast(), 0, d, 4, &mut h)
            ),
            call!(
                CK_C_VerifySignatureInit,
                "C_VerifySignatureInit",
                (s, m, 1, d, 4)
            ),
            call!(CK_C_VerifySignature, "C_VerifySignature", (s, d, 4)),
            call!(
                CK_C_VerifySignatureUpdate,
                "C_VerifySignatureUpdate",
                (s, d, 4)
            ),
            call!(CK_C_VerifySignatureFinal, "C_VerifySignatureFinal", (s)),
            call!(
                CK_C_GetSessionValidationFlags,
                "C_GetSessionValidationFlags",
                (s, 1, &mut n)
            ),
            call!(CK_C_AsyncComplete, "C_AsyncComplete", (s, name, nul.cast())),
            call!(CK_C_AsyncGetID, "C_AsyncGetID", (s, name, &mut n)),
            call!(CK_C_AsyncJoin, "C_AsyncJoin", (s, name, 1, d, 4)),
            call!(
                CK_C_WrapKeyAuthenticated,
                "C_WrapKeyAuthenticated",
                (s, m, 1, 2, d, 4, nul.cast(), &mut n)
            ),
            call!(
                CK_C_UnwrapKeyAuthenticated,
                "C_UnwrapKeyAuthenticated",
                (s, m, 1, d, 4, nul.cast(), 0, d, 4, &mut h)
            ),
        ]
    };
    let wrong: Vec<_> = rvs
        .iter()
        .filter(|(_, rv)| *rv != CKR_FUNCTION_NOT_SUPPORTED)
        .collect();
    assert!(
        wrong.is_empty(),
        "not CKR_FUNCTION_NOT_SUPPORTED: {wrong:x?}"
    );
    assert_eq!(rvs.len(), 12);
}

#[test]
fn an_asynchronous_session_never_reaches_a_vendor_that_supports_them() {
    // SoftHSM2 behind a wrapper that says it supports 3.2 asynchronous sessions, and records
    // every C_OpenSession that asks for one (`tests/c/async_module.c`).
    let hsm = SoftHsm::new("async");
    let dir = TempDir::new("async");
    let module = tests::build_c_module("async_module", &dir);
    let seen = dir.path().join("async-seen");
    let seen_env = seen.to_string_lossy().into_owned();
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            module.to_str().unwrap(),
            "--listen",
            "tcp://127.0.0.1:0",
        ],
        &[("ASYNC_SEEN", &seen_env)],
    );
    // Directly, the wrapper says so and takes the request (the control).
    // (Its own copies of the wrapper and SoftHSM2: an instance of its own in this process.)
    let conf = hsm.conf.to_string_lossy().into_owned();
    let own = hsm.module_copy().to_string_lossy().into_owned();
    let softhsm = [
        ("SOFTHSM2_CONF", conf.as_str()),
        ("ASYNC_SEEN", &seen_env),
        ("ASYNC_MODULE", &own),
    ];
    let direct = with_env(&softhsm, || {
        RawModule::load(&private_copy(&module, dir.path()))
    });
    assert_eq!(with_env(&softhsm, || direct.initialize()), CKR_OK);
    let slot = direct.first_slot();
    let open = |m: &RawModule| {
        let mut h = 0;
        // SAFETY: a valid out pointer.
        let rv = unsafe {
            m.f().C_OpenSession.unwrap()(
                slot,
                CKF_SERIAL_SESSION | CKF_ASYNC_SESSION,
                ptr::null_mut(),
                None,
                &mut h,
            )
        };
        (rv, h)
    };
    let async_flag = |m: &RawModule| {
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: a valid out pointer.
        assert_eq!(
            unsafe { m.f().C_GetTokenInfo.unwrap()(slot, &mut info) },
            CKR_OK
        );
        info.flags & CKF_ASYNC_SESSION_SUPPORTED != 0
    };
    assert!(async_flag(&direct));
    assert_eq!(with_env(&softhsm, || open(&direct)).0, CKR_OK);
    assert_eq!(std::fs::read(&seen).unwrap(), b"a");
    std::fs::remove_file(&seen).unwrap();
    // Through the proxy: a token without asynchronous support, and the request refused with
    // the code of one, never given to the vendor (its buffers would outlive the request).
    let proxy = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let address = [("PKCS11_PROXY_SOCKET", server.address.as_str())];
    assert_eq!(with_env(&address, || proxy.initialize()), CKR_OK);
    assert!(!async_flag(&proxy));
    assert_eq!(open(&proxy).0, CKR_SESSION_ASYNC_NOT_SUPPORTED);
    assert!(!seen.exists(), "an asynchronous session reached the vendor");
    // An ordinary session is opened as ever.
    assert_ne!(proxy.open_rw(slot), 0);
}

/// The versions of the "PKCS 11" interfaces `module` lists, before C_Initialize.
fn listed_versions(module: &Path) -> Vec<(u8, u8)> {
    RawModule::load(module).interface_versions()
}

#[test]
fn before_c_initialize_the_shim_offers_the_interfaces_the_vendor_offers() {
    // SoftHSM2 2.6.1 is a 2.40 library (it has no C_GetInterface): through the proxy, a
    // client that asks before C_Initialize sees 2.40 alone, not a 3.0 table whose message
    // functions would all answer CKR_FUNCTION_NOT_SUPPORTED.
    let hsm = tests::SoftHsm::new("ifaces");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("ifaces");
    let shim = private_copy(&shim_path(), dir.path());
    let versions = with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || {
        listed_versions(&shim)
    });
    assert_eq!(versions, vec![(2, 40)]);
    // NSS softokn offers 3.0 and 2.40 (and vendor interfaces of its own, not offered here).
    let init = nss_database(dir.path());
    let nss_server = ProxyServer::start_args(
        &[
            "--module",
            SOFTOKN,
            "--listen",
            "tcp://127.0.0.1:0",
            "--init-args",
            &init,
        ],
        &[],
    );
    let shim = private_copy(&shim_path(), dir.path());
    let versions = with_env(&[("PKCS11_PROXY_SOCKET", &nss_server.address)], || {
        listed_versions(&shim)
    });
    assert_eq!(
        versions,
        listed_versions(&private_copy(Path::new(SOFTOKN), dir.path()))
    );
    assert_eq!(versions, vec![(3, 0), (2, 40)]);
    // No server to ask: 3.0 and 2.40.
    let shim = private_copy(&shim_path(), dir.path());
    let versions = with_env(&[("PKCS11_PROXY_SOCKET", "tcp://127.0.0.1:1")], || {
        listed_versions(&shim)
    });
    assert_eq!(versions, vec![(3, 0), (2, 40)]);
}
