//! The direct-versus-proxy parity scenario: one scripted sequence of raw PKCS#11 calls (all
//! function families, size queries, short buffers, per-attribute results, every parameter
//! shape, the mechanisms SoftHSM2 offers), run against two modules and compared call by call.
//! Used by `tests/tests/parity.rs` and by the `parity` runner binary.

use std::path::Path;
use std::ptr;

use cryptoki_sys::*;

use crate::raw::RawModule;
use crate::{private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir, PIN};

/// What one call gave: its name, return value and deterministic output.
pub type Step = (String, CK_RV, Vec<u8>);

/// The first `n` bytes of `buf` as the vendor reported them, at most all of it: a vendor that
/// reports a length beyond the buffer it was given is recorded as such, not a panic.
fn upto(buf: &[u8], n: CK_ULONG) -> Vec<u8> {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    buf[..n.min(buf.len())].to_vec()
}

fn ulong_bytes(v: &[CK_ULONG]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn attr(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as CK_ULONG,
    }
}

/// Whether `m` reads C_Initialize's pReserved as a configuration string (kryoptic), so
/// that the scenario's non-NULL pReserved must not be given to it.
fn reads_reserved(m: &RawModule) -> bool {
    let mut info = CK_INFO::default();
    // SAFETY: a valid out pointer.
    unsafe { m.f().C_GetInfo.unwrap()(&mut info) };
    info.manufacturerID.starts_with(b"Kryoptic")
}

/// The scenario; `m` is initialised already.
///
/// # Safety
/// `m` must be a loaded, initialised PKCS#11 module.
pub unsafe fn scenario(m: &RawModule) -> Vec<Step> {
    let f = m.f();
    let mut steps: Vec<Step> = Vec::new();
    let mut rec = |name: &str, rv: CK_RV, out: Vec<u8>| steps.push((name.to_string(), rv, out));

    // Size queries on the slot list.
    let mut n: CK_ULONG = 0;
    let rv = f.C_GetSlotList.unwrap()(CK_TRUE, ptr::null_mut(), &mut n);
    rec("GetSlotList(NULL)", rv, ulong_bytes(&[n]));
    let mut zero: CK_ULONG = 0;
    let mut one_slot = [0 as CK_SLOT_ID; 1];
    let rv = f.C_GetSlotList.unwrap()(CK_FALSE, one_slot.as_mut_ptr(), &mut zero);
    rec("GetSlotList(short)", rv, ulong_bytes(&[zero]));
    let rv = f.C_GetSlotList.unwrap()(CK_TRUE, ptr::null_mut(), ptr::null_mut());
    rec("GetSlotList(NULL count)", rv, vec![]);
    let slot = m.first_slot();

    // Mechanism list, two calls.
    let mut mn: CK_ULONG = 0;
    let rv = f.C_GetMechanismList.unwrap()(slot, ptr::null_mut(), &mut mn);
    let mut mechs = vec![0 as CK_MECHANISM_TYPE; mn as usize];
    let rv2 = f.C_GetMechanismList.unwrap()(slot, mechs.as_mut_ptr(), &mut mn);
    rec("GetMechanismList", rv | rv2, ulong_bytes(&mechs));
    // Every mechanism the token offers: its information, call by call.
    for &mech in &mechs {
        let mut info = CK_MECHANISM_INFO::default();
        let rv = f.C_GetMechanismInfo.unwrap()(slot, mech, &mut info);
        rec(
            &format!("GetMechanismInfo({mech:#x})"),
            rv,
            ulong_bytes(&[info.ulMinKeySize, info.ulMaxKeySize, info.flags]),
        );
    }
    let mut event_slot = 0;
    let rv = f.C_WaitForSlotEvent.unwrap()(CKF_DONT_BLOCK, &mut event_slot, ptr::null_mut());
    rec("WaitForSlotEvent(DONT_BLOCK)", rv, vec![]);
    let mut mi = CK_MECHANISM_INFO::default();
    let rv = f.C_GetMechanismInfo.unwrap()(slot, CKM_ECDSA, &mut mi);
    rec(
        "GetMechanismInfo(ECDSA)",
        rv,
        ulong_bytes(&[mi.ulMinKeySize, mi.ulMaxKeySize, mi.flags]),
    );
    let rv = f.C_GetMechanismInfo.unwrap()(slot, 0x7fff_fff0, &mut mi);
    rec("GetMechanismInfo(bogus)", rv, vec![]);
    let rv = f.C_GetSlotInfo.unwrap()(0x7fff_fff0, &mut CK_SLOT_INFO::default());
    rec("GetSlotInfo(bogus)", rv, vec![]);
    let mut ti = CK_TOKEN_INFO::default();
    let rv = f.C_GetTokenInfo.unwrap()(slot, &mut ti);
    rec(
        "GetTokenInfo",
        rv,
        [
            ti.label.to_vec(),
            ti.manufacturerID.to_vec(),
            ti.model.to_vec(),
            ti.serialNumber.to_vec(),
            ulong_bytes(&[
                ti.flags,
                ti.ulMaxSessionCount,
                ti.ulSessionCount,
                ti.ulMaxRwSessionCount,
                ti.ulRwSessionCount,
                ti.ulMaxPinLen,
                ti.ulMinPinLen,
            ]),
        ]
        .concat(),
    );
    // The same after opening sessions: counts, if the token keeps them, must be this
    // application's as seen directly.
    let (mut c1, mut c2) = (0, 0);
    f.C_OpenSession.unwrap()(slot, CKF_SERIAL_SESSION, ptr::null_mut(), None, &mut c1);
    f.C_OpenSession.unwrap()(
        slot,
        CKF_SERIAL_SESSION | CKF_RW_SESSION,
        ptr::null_mut(),
        None,
        &mut c2,
    );
    let rv = f.C_GetTokenInfo.unwrap()(slot, &mut ti);
    rec(
        "GetTokenInfo(two sessions open)",
        rv,
        ulong_bytes(&[ti.flags, ti.ulSessionCount, ti.ulRwSessionCount]),
    );
    f.C_CloseSession.unwrap()(c1);
    f.C_CloseSession.unwrap()(c2);

    // Sessions and login.
    let mut ro = 0;
    let rv = f.C_OpenSession.unwrap()(slot, 0, ptr::null_mut(), None, &mut ro);
    rec("OpenSession(no SERIAL flag)", rv, vec![]);
    let rv = f.C_OpenSession.unwrap()(slot, CKF_SERIAL_SESSION, ptr::null_mut(), None, &mut ro);
    rec("OpenSession(RO)", rv, vec![]);
    let s = m.open_rw(slot);
    let mut si = CK_SESSION_INFO::default();
    let rv = f.C_GetSessionInfo.unwrap()(s, &mut si);
    rec("GetSessionInfo", rv, ulong_bytes(&[si.state, si.flags]));
    rec("Login(wrong)", m.login(s, "0000"), vec![]);
    rec("Login", m.login(s, PIN), vec![]);
    rec("Login(again)", m.login(s, PIN), vec![]);
    let rv = f.C_GetSessionInfo.unwrap()(ro, &mut si);
    rec(
        "GetSessionInfo(RO after login)",
        rv,
        ulong_bytes(&[si.state, si.flags]),
    );
    rec(
        "GetSessionInfo(invalid handle)",
        f.C_GetSessionInfo.unwrap()(0xdead, &mut si),
        vec![],
    );
    rec(
        "GetSessionInfo(NULL info)",
        f.C_GetSessionInfo.unwrap()(s, ptr::null_mut()),
        vec![],
    );

    // A data object with known values, and the per-attribute rules of C_GetAttributeValue.
    let class = CKO_DATA.to_ne_bytes();
    let value = b"parity value";
    let label = b"parity";
    let tru = [CK_TRUE];
    let mut tmpl = [
        attr(CKA_CLASS, &class),
        attr(CKA_VALUE, value),
        attr(CKA_LABEL, label),
        attr(CKA_PRIVATE, &tru),
    ];
    let mut obj = 0;
    let rv = f.C_CreateObject.unwrap()(s, tmpl.as_mut_ptr(), tmpl.len() as CK_ULONG, &mut obj);
    rec("CreateObject(data)", rv, vec![]);
    let mut bad_class = [attr(CKA_CLASS, &[1, 2, 3])];
    let mut obj2 = 0;
    let rv = f.C_CreateObject.unwrap()(s, bad_class.as_mut_ptr(), 1, &mut obj2);
    rec("CreateObject(3-byte class)", rv, vec![]);
    let rv = f.C_CreateObject.unwrap()(s, ptr::null_mut(), 2, &mut obj2);
    rec("CreateObject(NULL template)", rv, vec![]);

    let mut q = [
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: 0x7fff_0001,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
    ];
    let rv = f.C_GetAttributeValue.unwrap()(s, obj, q.as_mut_ptr(), 3);
    rec(
        "GetAttributeValue(lengths)",
        rv,
        ulong_bytes(&[q[0].ulValueLen, q[1].ulValueLen, q[2].ulValueLen]),
    );
    let mut small = [0u8; 4];
    let mut class_out: CK_ULONG = 0;
    let mut q = [
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: small.as_mut_ptr().cast(),
            ulValueLen: 4,
        },
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&mut class_out as *mut CK_ULONG).cast(),
            ulValueLen: 8,
        },
    ];
    let rv = f.C_GetAttributeValue.unwrap()(s, obj, q.as_mut_ptr(), 2);
    rec(
        "GetAttributeValue(short)",
        rv,
        [
            ulong_bytes(&[q[0].ulValueLen, q[1].ulValueLen, class_out]),
            small.to_vec(),
        ]
        .concat(),
    );
    let mut big = [0u8; 64];
    let mut token_flag = [7u8; 1];
    let mut q = [
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: big.as_mut_ptr().cast(),
            ulValueLen: 64,
        },
        CK_ATTRIBUTE {
            type_: CKA_TOKEN,
            pValue: token_flag.as_mut_ptr().cast(),
            ulValueLen: 1,
        },
    ];
    let rv = f.C_GetAttributeValue.unwrap()(s, obj, q.as_mut_ptr(), 2);
    rec(
        "GetAttributeValue(values)",
        rv,
        [
            ulong_bytes(&[q[0].ulValueLen]),
            big[..q[0].ulValueLen as usize].to_vec(),
            token_flag.to_vec(),
        ]
        .concat(),
    );
    let rv = f.C_GetAttributeValue.unwrap()(s, 0xbad0, q.as_mut_ptr(), 2);
    rec("GetAttributeValue(bad object)", rv, vec![]);
    let new_label = b"renamed";
    let mut set = [attr(CKA_LABEL, new_label)];
    rec(
        "SetAttributeValue",
        f.C_SetAttributeValue.unwrap()(s, obj, set.as_mut_ptr(), 1),
        vec![],
    );
    let mut size = 0;
    rec(
        "GetObjectSize",
        f.C_GetObjectSize.unwrap()(s, obj, &mut size),
        vec![],
    );

    // Find it back.
    let mut find = [attr(CKA_LABEL, new_label)];
    rec(
        "FindObjectsInit",
        f.C_FindObjectsInit.unwrap()(s, find.as_mut_ptr(), 1),
        vec![],
    );
    rec(
        "FindObjectsInit(again)",
        f.C_FindObjectsInit.unwrap()(s, find.as_mut_ptr(), 1),
        vec![],
    );
    let mut found = [0 as CK_OBJECT_HANDLE; 4];
    let mut nfound = 0;
    let rv = f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), 4, &mut nfound);
    rec(
        "FindObjects",
        rv,
        ulong_bytes(&[nfound, (found[0] == obj) as CK_ULONG]),
    );
    rec(
        "FindObjects(NULL count)",
        f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), 4, ptr::null_mut()),
        vec![],
    );
    rec("FindObjectsFinal", f.C_FindObjectsFinal.unwrap()(s), vec![]);
    rec(
        "FindObjectsFinal(again)",
        f.C_FindObjectsFinal.unwrap()(s),
        vec![],
    );

    // Digest: size query, short buffer, then the value; the operation survives the first two.
    let mut mech = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    rec("DigestInit", f.C_DigestInit.unwrap()(s, &mut mech), vec![]);
    rec(
        "DigestInit(active)",
        f.C_DigestInit.unwrap()(s, &mut mech),
        vec![],
    );
    let data = b"the quick brown fox";
    let mut dl: CK_ULONG = 0;
    let rv = f.C_Digest.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        ptr::null_mut(),
        &mut dl,
    );
    rec("Digest(NULL)", rv, ulong_bytes(&[dl]));
    let mut d = [0u8; 64];
    let mut dl: CK_ULONG = 8;
    let rv = f.C_Digest.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        d.as_mut_ptr(),
        &mut dl,
    );
    rec("Digest(short)", rv, ulong_bytes(&[dl]));
    let mut dl: CK_ULONG = 64;
    let rv = f.C_Digest.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        d.as_mut_ptr(),
        &mut dl,
    );
    rec("Digest", rv, upto(&d, dl));
    let rv = f.C_Digest.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        d.as_mut_ptr(),
        &mut dl,
    );
    rec("Digest(ended)", rv, vec![]);

    // Multi-part digest.
    rec(
        "DigestInit(2)",
        f.C_DigestInit.unwrap()(s, &mut mech),
        vec![],
    );
    rec(
        "DigestUpdate",
        f.C_DigestUpdate.unwrap()(s, data.as_ptr() as *mut u8, 4),
        vec![],
    );
    rec(
        "DigestUpdate(2)",
        f.C_DigestUpdate.unwrap()(
            s,
            data.as_ptr().add(4) as *mut u8,
            data.len() as CK_ULONG - 4,
        ),
        vec![],
    );
    let mut dl: CK_ULONG = 64;
    let rv = f.C_DigestFinal.unwrap()(s, d.as_mut_ptr(), &mut dl);
    rec("DigestFinal", rv, upto(&d, dl));

    // HMAC with a known key: deterministic signature, and verification both ways.
    let key_class = CKO_SECRET_KEY.to_ne_bytes();
    let key_type = CKK_GENERIC_SECRET.to_ne_bytes();
    let key_value = [0x42u8; 32];
    let mut kt = [
        attr(CKA_CLASS, &key_class),
        attr(CKA_KEY_TYPE, &key_type),
        attr(CKA_VALUE, &key_value),
        attr(CKA_SIGN, &tru),
        attr(CKA_VERIFY, &tru),
    ];
    let mut key = 0;
    rec(
        "CreateObject(HMAC key)",
        f.C_CreateObject.unwrap()(s, kt.as_mut_ptr(), kt.len() as CK_ULONG, &mut key),
        vec![],
    );
    let mut hmac = CK_MECHANISM {
        mechanism: CKM_SHA256_HMAC,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    rec(
        "SignInit(HMAC)",
        f.C_SignInit.unwrap()(s, &mut hmac, key),
        vec![],
    );
    let mut sig = [0u8; 32];
    let mut sl: CK_ULONG = 0;
    let rv = f.C_Sign.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        ptr::null_mut(),
        &mut sl,
    );
    rec("Sign(NULL)", rv, ulong_bytes(&[sl]));
    let rv = f.C_Sign.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        sig.as_mut_ptr(),
        &mut sl,
    );
    rec("Sign(HMAC)", rv, sig.to_vec());
    rec(
        "VerifyInit(HMAC)",
        f.C_VerifyInit.unwrap()(s, &mut hmac, key),
        vec![],
    );
    rec(
        "Verify",
        f.C_Verify.unwrap()(
            s,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            sig.as_mut_ptr(),
            32,
        ),
        vec![],
    );
    sig[0] ^= 1;
    rec(
        "VerifyInit(2)",
        f.C_VerifyInit.unwrap()(s, &mut hmac, key),
        vec![],
    );
    rec(
        "Verify(bad)",
        f.C_Verify.unwrap()(
            s,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            sig.as_mut_ptr(),
            32,
        ),
        vec![],
    );
    rec(
        "SignInit(bad key)",
        f.C_SignInit.unwrap()(s, &mut hmac, 0xbad0),
        vec![],
    );
    rec(
        "SignInit(NULL mech)",
        f.C_SignInit.unwrap()(s, ptr::null_mut(), key),
        vec![],
    );
    rec(
        "Sign(not initialised)",
        f.C_Sign.unwrap()(s, data.as_ptr() as *mut u8, 4, sig.as_mut_ptr(), &mut sl),
        vec![],
    );

    // AES-CBC-PAD with a known key and IV: deterministic ciphertext, two-call sizes.
    let aes_type = CKK_AES.to_ne_bytes();
    let aes_value = [0x11u8; 16];
    let mut at = [
        attr(CKA_CLASS, &key_class),
        attr(CKA_KEY_TYPE, &aes_type),
        attr(CKA_VALUE, &aes_value),
        attr(CKA_ENCRYPT, &tru),
        attr(CKA_DECRYPT, &tru),
    ];
    let mut aes = 0;
    rec(
        "CreateObject(AES key)",
        f.C_CreateObject.unwrap()(s, at.as_mut_ptr(), at.len() as CK_ULONG, &mut aes),
        vec![],
    );
    let mut iv = [0x22u8; 16];
    let mut cbc = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv.as_mut_ptr().cast(),
        ulParameterLen: 16,
    };
    rec(
        "EncryptInit(CBC_PAD)",
        f.C_EncryptInit.unwrap()(s, &mut cbc, aes),
        vec![],
    );
    let mut cl: CK_ULONG = 0;
    let rv = f.C_Encrypt.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        ptr::null_mut(),
        &mut cl,
    );
    rec("Encrypt(NULL)", rv, ulong_bytes(&[cl]));
    let mut ct = [0u8; 64];
    let mut cl2: CK_ULONG = 3;
    let rv = f.C_Encrypt.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        ct.as_mut_ptr(),
        &mut cl2,
    );
    rec("Encrypt(short)", rv, ulong_bytes(&[cl2]));
    let rv = f.C_Encrypt.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        ct.as_mut_ptr(),
        &mut cl,
    );
    rec("Encrypt", rv, upto(&ct, cl));
    rec(
        "DecryptInit(CBC_PAD)",
        f.C_DecryptInit.unwrap()(s, &mut cbc, aes),
        vec![],
    );
    let mut pt = [0u8; 64];
    let mut pl: CK_ULONG = 64;
    let rv = f.C_DecryptUpdate.unwrap()(s, ct.as_mut_ptr(), cl, pt.as_mut_ptr(), &mut pl);
    rec("DecryptUpdate", rv, upto(&pt, pl));
    // The rest of the buffer after what C_DecryptUpdate reported (none if it reported more).
    let used = (pl as usize).min(pt.len());
    let mut fl = (pt.len() - used) as CK_ULONG;
    let rv = f.C_DecryptFinal.unwrap()(s, pt.as_mut_ptr().add(used), &mut fl);
    rec("DecryptFinal", rv, upto(&pt, used as CK_ULONG + fl));
    let mut short_iv = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv.as_mut_ptr().cast(),
        ulParameterLen: 5,
    };
    rec(
        "EncryptInit(5-byte IV)",
        f.C_EncryptInit.unwrap()(s, &mut short_iv, aes),
        vec![],
    );

    // More parameter shapes with deterministic results: ECB, CTR, GCM in both layouts.
    let mut ecb = CK_MECHANISM {
        mechanism: CKM_AES_ECB,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let block = [0x33u8; 32];
    rec(
        "EncryptInit(ECB)",
        f.C_EncryptInit.unwrap()(s, &mut ecb, aes),
        vec![],
    );
    let mut el: CK_ULONG = 64;
    let rv = f.C_Encrypt.unwrap()(s, block.as_ptr() as *mut u8, 32, ct.as_mut_ptr(), &mut el);
    rec("Encrypt(ECB)", rv, upto(&ct, el));
    let mut ctr_params = CK_AES_CTR_PARAMS {
        ulCounterBits: 32,
        cb: [0x44; 16],
    };
    let mut ctr = CK_MECHANISM {
        mechanism: CKM_AES_CTR,
        pParameter: (&mut ctr_params as *mut CK_AES_CTR_PARAMS).cast(),
        ulParameterLen: std::mem::size_of::<CK_AES_CTR_PARAMS>() as CK_ULONG,
    };
    rec(
        "EncryptInit(CTR)",
        f.C_EncryptInit.unwrap()(s, &mut ctr, aes),
        vec![],
    );
    let mut el: CK_ULONG = 64;
    let rv = f.C_Encrypt.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        ct.as_mut_ptr(),
        &mut el,
    );
    rec("Encrypt(CTR)", rv, upto(&ct, el));
    let mut gcm_iv = [0x55u8; 12];
    let aad = b"header";
    let mut gcm_params = CK_GCM_PARAMS {
        pIv: gcm_iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: aad.as_ptr() as *mut u8,
        ulAADLen: aad.len() as CK_ULONG,
        ulTagBits: 128,
    };
    let mut gcm = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: (&mut gcm_params as *mut CK_GCM_PARAMS).cast(),
        ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    };
    rec(
        "EncryptInit(GCM)",
        f.C_EncryptInit.unwrap()(s, &mut gcm, aes),
        vec![],
    );
    let mut el: CK_ULONG = 64;
    let rv = f.C_Encrypt.unwrap()(
        s,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        ct.as_mut_ptr(),
        &mut el,
    );
    rec("Encrypt(GCM)", rv, upto(&ct, el));
    /// The original CK_GCM_PARAMS layout, without ulIvBits.
    #[repr(C)]
    struct GcmNoIvBits {
        iv: *mut u8,
        iv_len: CK_ULONG,
        aad: *mut u8,
        aad_len: CK_ULONG,
        tag_bits: CK_ULONG,
    }
    let mut old_layout = GcmNoIvBits {
        iv: gcm_iv.as_mut_ptr(),
        iv_len: 12,
        aad: aad.as_ptr() as *mut u8,
        aad_len: 6,
        tag_bits: 128,
    };
    let mut gcm_old = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: (&mut old_layout as *mut GcmNoIvBits).cast(),
        ulParameterLen: std::mem::size_of::<GcmNoIvBits>() as CK_ULONG,
    };
    rec(
        "EncryptInit(GCM without ulIvBits)",
        f.C_EncryptInit.unwrap()(s, &mut gcm_old, aes),
        vec![],
    );

    // Key wrap with a known key: deterministic, with the two-call sizes.
    let mut kw = CK_MECHANISM {
        mechanism: CKM_AES_KEY_WRAP,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let wrap_value = [0x66u8; 16];
    let extractable = CKA_EXTRACTABLE;
    let mut wt = [
        attr(CKA_CLASS, &key_class),
        attr(CKA_KEY_TYPE, &aes_type),
        attr(CKA_VALUE, &wrap_value),
        attr(CKA_WRAP, &tru),
        attr(CKA_UNWRAP, &tru),
    ];
    let mut wrapper = 0;
    rec(
        "CreateObject(wrapping key)",
        f.C_CreateObject.unwrap()(s, wt.as_mut_ptr(), 5, &mut wrapper),
        vec![],
    );
    let fals = [CK_FALSE];
    let mut xt = [
        attr(CKA_CLASS, &key_class),
        attr(CKA_KEY_TYPE, &aes_type),
        attr(CKA_VALUE, &[0x99u8; 32]),
        attr(extractable, &tru),
        attr(CKA_SENSITIVE, &fals),
    ];
    let mut target = 0;
    rec(
        "CreateObject(extractable key)",
        f.C_CreateObject.unwrap()(s, xt.as_mut_ptr(), 5, &mut target),
        vec![],
    );
    let mut wl: CK_ULONG = 0;
    let rv = f.C_WrapKey.unwrap()(s, &mut kw, wrapper, target, ptr::null_mut(), &mut wl);
    rec("WrapKey(NULL)", rv, ulong_bytes(&[wl]));
    let mut wrapped = [0u8; 64];
    let mut short: CK_ULONG = 8;
    let rv = f.C_WrapKey.unwrap()(
        s,
        &mut kw,
        wrapper,
        target,
        wrapped.as_mut_ptr(),
        &mut short,
    );
    rec("WrapKey(short)", rv, ulong_bytes(&[short]));
    let rv = f.C_WrapKey.unwrap()(s, &mut kw, wrapper, target, wrapped.as_mut_ptr(), &mut wl);
    rec("WrapKey", rv, upto(&wrapped, wl));

    // Array attributes: CKA_ALLOWED_MECHANISMS (mechanism array) and CKA_WRAP_TEMPLATE
    // (nested template), each read with a length query, then per-entry lengths, then values.
    let allowed = [CKM_AES_CBC_PAD, CKM_AES_GCM];
    let allowed_bytes = ulong_bytes(&allowed);
    let inner_class = CKO_SECRET_KEY.to_ne_bytes();
    let inner_type = CKK_AES.to_ne_bytes();
    let mut inner = [
        attr(CKA_CLASS, &inner_class),
        attr(CKA_KEY_TYPE, &inner_type),
    ];
    let inner_attr = CK_ATTRIBUTE {
        type_: CKA_WRAP_TEMPLATE,
        pValue: inner.as_mut_ptr().cast(),
        ulValueLen: (2 * std::mem::size_of::<CK_ATTRIBUTE>()) as CK_ULONG,
    };
    let mut tt = [
        attr(CKA_CLASS, &key_class),
        attr(CKA_KEY_TYPE, &aes_type),
        attr(CKA_VALUE, &[0x77u8; 16]),
        attr(CKA_WRAP, &tru),
        attr(CKA_ALLOWED_MECHANISMS, &allowed_bytes),
        inner_attr,
    ];
    let mut templated = 0;
    rec(
        "CreateObject(wrap template)",
        f.C_CreateObject.unwrap()(s, tt.as_mut_ptr(), 6, &mut templated),
        vec![],
    );
    let mut q = [
        CK_ATTRIBUTE {
            type_: CKA_ALLOWED_MECHANISMS,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
    ];
    let rv = f.C_GetAttributeValue.unwrap()(s, templated, q.as_mut_ptr(), 2);
    rec(
        "GetAttributeValue(array lengths)",
        rv,
        ulong_bytes(&[q[0].ulValueLen, q[1].ulValueLen]),
    );
    let mut mechs_out = [0 as CK_ULONG; 4];
    let mut nested = [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_KEY_TYPE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
    ];
    // The module writes into the nested entries through this pointer; so do we.
    let np = nested.as_mut_ptr();
    let mut q = [
        CK_ATTRIBUTE {
            type_: CKA_ALLOWED_MECHANISMS,
            pValue: mechs_out.as_mut_ptr().cast(),
            ulValueLen: 32,
        },
        CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: np.cast(),
            ulValueLen: q[1].ulValueLen,
        },
    ];
    let rv = f.C_GetAttributeValue.unwrap()(s, templated, q.as_mut_ptr(), 2);
    rec(
        "GetAttributeValue(arrays, nested lengths)",
        rv,
        [
            ulong_bytes(&[
                q[0].ulValueLen,
                q[1].ulValueLen,
                (*np).ulValueLen,
                (*np.add(1)).ulValueLen,
            ]),
            ulong_bytes(&mechs_out),
        ]
        .concat(),
    );
    let (mut c_out, mut t_out) = (0 as CK_ULONG, 0 as CK_ULONG);
    (*np).pValue = (&mut c_out as *mut CK_ULONG).cast();
    (*np.add(1)).pValue = (&mut t_out as *mut CK_ULONG).cast();
    let rv = f.C_GetAttributeValue.unwrap()(s, templated, q[1..].as_mut_ptr(), 1);
    rec(
        "GetAttributeValue(nested values)",
        rv,
        ulong_bytes(&[q[1].ulValueLen, c_out, t_out]),
    );

    // Key derivation by data, with known keys: derived values compared byte for byte.
    let mut bt = [
        attr(CKA_CLASS, &key_class),
        attr(CKA_KEY_TYPE, &aes_type),
        attr(CKA_VALUE, &[0x88u8; 16]),
        attr(CKA_DERIVE, &tru),
    ];
    let mut base = 0;
    rec(
        "CreateObject(derivation base)",
        f.C_CreateObject.unwrap()(s, bt.as_mut_ptr(), 4, &mut base),
        vec![],
    );
    let derive_data = [0xabu8; 32];
    let mut string_data = CK_KEY_DERIVATION_STRING_DATA {
        pData: derive_data.as_ptr() as *mut u8,
        ulLen: 32,
    };
    let mut cbc_data = CK_AES_CBC_ENCRYPT_DATA_PARAMS {
        iv: [0x12; 16],
        pData: derive_data.as_ptr() as *mut u8,
        length: 32,
    };
    let generic = CKK_GENERIC_SECRET.to_ne_bytes();
    let derived_len = (32 as CK_ULONG).to_ne_bytes();
    let mut derived_t = [
        attr(CKA_VALUE_LEN, &derived_len),
        attr(CKA_CLASS, &key_class),
        attr(CKA_KEY_TYPE, &generic),
        attr(CKA_SENSITIVE, &[CK_FALSE]),
        attr(CKA_EXTRACTABLE, &tru),
    ];
    let derivations: [(&str, CK_MECHANISM_TYPE, *mut std::ffi::c_void, usize); 3] = [
        (
            "AES_ECB_ENCRYPT_DATA",
            CKM_AES_ECB_ENCRYPT_DATA,
            (&mut string_data as *mut CK_KEY_DERIVATION_STRING_DATA).cast(),
            std::mem::size_of::<CK_KEY_DERIVATION_STRING_DATA>(),
        ),
        (
            "AES_CBC_ENCRYPT_DATA",
            CKM_AES_CBC_ENCRYPT_DATA,
            (&mut cbc_data as *mut CK_AES_CBC_ENCRYPT_DATA_PARAMS).cast(),
            std::mem::size_of::<CK_AES_CBC_ENCRYPT_DATA_PARAMS>(),
        ),
        (
            "CONCATENATE_BASE_AND_DATA",
            CKM_CONCATENATE_BASE_AND_DATA,
            (&mut string_data as *mut CK_KEY_DERIVATION_STRING_DATA).cast(),
            std::mem::size_of::<CK_KEY_DERIVATION_STRING_DATA>(),
        ),
    ];
    for (name, mech_type, param, len) in derivations {
        let mut dm = CK_MECHANISM {
            mechanism: mech_type,
            pParameter: param,
            ulParameterLen: len as CK_ULONG,
        };
        let mut derived = 0;
        let rv = f.C_DeriveKey.unwrap()(s, &mut dm, base, derived_t.as_mut_ptr(), 5, &mut derived);
        let mut value = [0u8; 64];
        let mut vq = [CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: value.as_mut_ptr().cast(),
            ulValueLen: 64,
        }];
        let vrv = if rv == CKR_OK {
            f.C_GetAttributeValue.unwrap()(s, derived, vq.as_mut_ptr(), 1)
        } else {
            rv
        };
        let out = if vrv == CKR_OK {
            value[..vq[0].ulValueLen as usize].to_vec()
        } else {
            vec![]
        };
        rec(&format!("DeriveKey({name})"), rv, out);
    }

    // Parameter shapes SoftHSM2 2.6 refuses or lacks: the answers must still be its own.
    let mut label_src = [0x01u8; 4];
    let mut oaep_params = CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA_1,
        mgf: CKG_MGF1_SHA1,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: label_src.as_mut_ptr().cast(),
        ulSourceDataLen: 4,
    };
    let mut rsa_aes = CK_RSA_AES_KEY_WRAP_PARAMS {
        ulAESKeyBits: 256,
        pOAEPParams: &mut oaep_params,
    };
    let mut ccm_nonce = [0x31u8; 12];
    let mut ccm_params = CK_CCM_PARAMS {
        ulDataLen: data.len() as CK_ULONG,
        pNonce: ccm_nonce.as_mut_ptr(),
        ulNonceLen: 12,
        pAAD: aad.as_ptr() as *mut u8,
        ulAADLen: aad.len() as CK_ULONG,
        ulMACLen: 16,
    };
    let mut ctx = *b"ctx";
    let mut eddsa_params = CK_EDDSA_PARAMS {
        phFlag: CK_FALSE,
        ulContextDataLen: 3,
        pContextData: ctx.as_mut_ptr(),
    };
    let shapes: [(&str, CK_MECHANISM_TYPE, *mut std::ffi::c_void, usize); 3] = [
        (
            "RSA_AES_KEY_WRAP",
            CKM_RSA_AES_KEY_WRAP,
            (&mut rsa_aes as *mut CK_RSA_AES_KEY_WRAP_PARAMS).cast(),
            std::mem::size_of::<CK_RSA_AES_KEY_WRAP_PARAMS>(),
        ),
        (
            "AES_CCM",
            CKM_AES_CCM,
            (&mut ccm_params as *mut CK_CCM_PARAMS).cast(),
            std::mem::size_of::<CK_CCM_PARAMS>(),
        ),
        (
            "EDDSA(context)",
            CKM_EDDSA,
            (&mut eddsa_params as *mut CK_EDDSA_PARAMS).cast(),
            std::mem::size_of::<CK_EDDSA_PARAMS>(),
        ),
    ];
    for (name, mech_type, param, len) in shapes {
        let mut m = CK_MECHANISM {
            mechanism: mech_type,
            pParameter: param,
            ulParameterLen: len as CK_ULONG,
        };
        rec(
            &format!("EncryptInit({name})"),
            f.C_EncryptInit.unwrap()(s, &mut m, aes),
            vec![],
        );
        rec(
            &format!("SignInit({name})"),
            f.C_SignInit.unwrap()(s, &mut m, key),
            vec![],
        );
    }

    // Functions SoftHSM2 may not implement: the proxy must answer as it does.
    let mut st_len: CK_ULONG = 0;
    rec(
        "GetOperationState",
        f.C_GetOperationState.unwrap()(s, ptr::null_mut(), &mut st_len),
        ulong_bytes(&[st_len]),
    );
    rec(
        "DigestInit(3)",
        f.C_DigestInit.unwrap()(s, &mut mech),
        vec![],
    );
    rec("DigestKey", f.C_DigestKey.unwrap()(s, aes), vec![]);
    let mut rsa_x = CK_MECHANISM {
        mechanism: CKM_RSA_X_509,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    rec(
        "SignRecoverInit",
        f.C_SignRecoverInit.unwrap()(s, &mut rsa_x, key),
        vec![],
    );
    let mut info = CK_INFO::default();
    let rv = f.C_GetInfo.unwrap()(&mut info);
    rec(
        "GetInfo",
        rv,
        [
            vec![info.cryptokiVersion.major, info.cryptokiVersion.minor],
            info.manufacturerID.to_vec(),
            info.libraryDescription.to_vec(),
        ]
        .concat(),
    );

    // Random, sessions, logout, close.
    let mut r = [0u8; 32];
    rec(
        "GenerateRandom",
        f.C_GenerateRandom.unwrap()(s, r.as_mut_ptr(), 32),
        vec![],
    );
    rec(
        "GenerateRandom(NULL)",
        f.C_GenerateRandom.unwrap()(s, ptr::null_mut(), 32),
        vec![],
    );
    rec(
        "SeedRandom",
        f.C_SeedRandom.unwrap()(s, r.as_mut_ptr(), 32),
        vec![],
    );
    rec(
        "GetFunctionStatus",
        f.C_GetFunctionStatus.unwrap()(s),
        vec![],
    );
    rec("CancelFunction", f.C_CancelFunction.unwrap()(s), vec![]);
    rec("DestroyObject", f.C_DestroyObject.unwrap()(s, obj), vec![]);
    rec(
        "DestroyObject(again)",
        f.C_DestroyObject.unwrap()(s, obj),
        vec![],
    );
    rec("Logout", f.C_Logout.unwrap()(s), vec![]);
    rec("Logout(again)", f.C_Logout.unwrap()(s), vec![]);
    rec("CloseSession", f.C_CloseSession.unwrap()(s), vec![]);
    rec("CloseSession(again)", f.C_CloseSession.unwrap()(s), vec![]);
    rec(
        "CloseAllSessions(bogus slot)",
        f.C_CloseAllSessions.unwrap()(0x7fff_fff0),
        vec![],
    );
    rec(
        "CloseAllSessions",
        f.C_CloseAllSessions.unwrap()(slot),
        vec![],
    );
    rec(
        "GetSessionInfo(closed RO)",
        f.C_GetSessionInfo.unwrap()(ro, &mut si),
        vec![],
    );

    // C_Initialize / C_Finalize rules (v2.40 §5.4).
    rec("Initialize(again)", m.initialize(), vec![]);
    // pReserved must be NULL (v2.40 §5.4.1); some modules read it as their configuration
    // string (NSS softokn, kryoptic), and a pointer to nothing crashes them directly.
    if !reads_reserved(m) {
        let mut reserved = CK_C_INITIALIZE_ARGS {
            flags: CKF_OS_LOCKING_OK,
            pReserved: ptr::dangling_mut(),
            ..Default::default()
        };
        rec(
            "Initialize(pReserved)",
            f.C_Initialize.unwrap()(&mut reserved as *mut _ as *mut _),
            vec![],
        );
        rec(
            "Finalize(non-NULL)",
            f.C_Finalize.unwrap()(ptr::dangling_mut()),
            vec![],
        );
    }
    rec("Finalize", f.C_Finalize.unwrap()(ptr::null_mut()), vec![]);
    rec(
        "GetSlotList(finalized)",
        f.C_GetSlotList.unwrap()(CK_TRUE, ptr::null_mut(), &mut n),
        vec![],
    );
    rec(
        "Finalize(again)",
        f.C_Finalize.unwrap()(ptr::null_mut()),
        vec![],
    );
    unsafe extern "C" fn create(_: *mut *mut std::ffi::c_void) -> CK_RV {
        CKR_OK
    }
    let mut partial = CK_C_INITIALIZE_ARGS {
        CreateMutex: Some(create),
        ..Default::default()
    };
    rec(
        "Initialize(partial callbacks)",
        f.C_Initialize.unwrap()(&mut partial as *mut _ as *mut _),
        vec![],
    );
    steps
}

/// Steps that must succeed on SoftHSM2: the scenario does real work, not only errors.
pub const MUST_SUCCEED: &[&str] = &[
    "Sign(HMAC)",
    "Encrypt(CTR)",
    "Encrypt(GCM)",
    "WrapKey",
    "GetAttributeValue(arrays, nested lengths)",
    "GetAttributeValue(nested values)",
    "DecryptFinal",
    "DeriveKey(AES_ECB_ENCRYPT_DATA)",
    "DeriveKey(AES_CBC_ENCRYPT_DATA)",
];

/// The result of one comparison.
pub struct Report {
    pub expected: Vec<Step>,
    pub got: Vec<Step>,
}

impl Report {
    /// One line per step that differs.
    pub fn mismatches(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .expected
            .iter()
            .zip(&self.got)
            .filter(|(e, g)| e != g)
            .map(|(e, g)| {
                format!(
                    "{}: direct rv={:#x} out={:02x?} / proxy rv={:#x} out={:02x?}",
                    e.0, e.1, e.2, g.1, g.2
                )
            })
            .collect();
        if self.expected.len() != self.got.len() {
            out.push(format!(
                "{} steps directly, {} through the proxy",
                self.expected.len(),
                self.got.len()
            ));
        }
        out
    }
}

/// Runs the scenario on a fresh SoftHSM2 token directly, then through a fresh server.
pub fn run() -> Report {
    let hsm = SoftHsm::new("parity");
    let conf = hsm.conf.to_string_lossy().into_owned();
    run_on(
        &hsm.module_copy(),
        Path::new(crate::SOFTHSM),
        ("SOFTHSM2_CONF", &conf),
    )
}

/// Runs the scenario on the vendor module `module` (a private copy of it, loaded here)
/// directly, then through a fresh server that loads `server_module`; `env` is the vendor's
/// configuration variable, for both.
pub fn run_on(module: &Path, server_module: &Path, env: (&str, &str)) -> Report {
    // SAFETY: the scenario passes valid buffers except where it tests NULL handling.
    compare_on(module, server_module, env, |m| unsafe { scenario(m) })
}

/// Runs `scenario` on `module` loaded directly, then on the shim in front of a fresh server
/// that loads `server_module`, each side with its configuration set for the whole scenario
/// (`env`, the vendor's, and the server's address), and pairs the two runs. Both modules stay
/// loaded until the process ends: a vendor linked with OpenSSL (kryoptic) leaves thread-local
/// destructors that must find it (see the `parity` runner).
pub fn compare_on(
    module: &Path,
    server_module: &Path,
    env: (&str, &str),
    scenario: impl Fn(&RawModule) -> Vec<Step>,
) -> Report {
    let server = ProxyServer::start_args(
        &[
            "--module",
            server_module.to_str().unwrap(),
            "--listen",
            "tcp://127.0.0.1:0",
        ],
        &[env],
    );
    let dir = TempDir::new("parity");
    let direct = RawModule::load(module);
    assert_eq!(with_env(&[env], || direct.initialize()), CKR_OK);
    let expected = with_env(&[env], || scenario(&direct));
    let proxy = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let address = [("PKCS11_PROXY_SOCKET", server.address.as_str())];
    assert_eq!(with_env(&address, || proxy.initialize()), CKR_OK);
    let got = with_env(&address, || scenario(&proxy));
    std::mem::forget(direct);
    std::mem::forget(proxy);
    Report { expected, got }
}
