//! Calls answered ahead (DESIGN.md, "Two-call functions"): the follow-up of a single-part size
//! query, and C_FindObjects / C_FindObjectsFinal of a search the server ran ahead, cost no
//! round trip, and every sequence a client may make answers what the vendor library answers
//! directly (SoftHSM2 here, call by call): for size queries the usual follow-up, the size
//! asked again, a short buffer, other input, a new Init over the pending result, another
//! operation on the session, a logout, the session closed; for searches one handle at a time,
//! more than the server fetched ahead, a second Init, calls after the end, another operation
//! during the search, NULL pointers, a closed session.

use std::ptr;

use cryptoki_sys::*;
use tests::fabric::attr;
use tests::kryoptic::Kryoptic;
use tests::raw::RawModule;
use tests::{private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir, PIN};

/// One call's name, return value, and what it gave back (length and deterministic bytes).
type Step = (String, CK_RV, Vec<u8>);

fn mech(mechanism: CK_MECHANISM_TYPE, param: &mut [u8]) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism,
        pParameter: if param.is_empty() {
            ptr::null_mut()
        } else {
            param.as_mut_ptr().cast()
        },
        ulParameterLen: param.len() as CK_ULONG,
    }
}

/// A single-part call `(session, in, in_len, out, out_len)`.
type SinglePart = unsafe extern "C" fn(
    CK_SESSION_HANDLE,
    *mut CK_BYTE,
    CK_ULONG,
    *mut CK_BYTE,
    *mut CK_ULONG,
) -> CK_RV;

/// Calls `f` on `input` with an output buffer of `cap` bytes (`None`: NULL, a size query);
/// records the return value, the length and, with `keep_bytes`, the bytes.
fn call(
    steps: &mut Vec<Step>,
    name: &str,
    f: SinglePart,
    s: CK_SESSION_HANDLE,
    input: &[u8],
    cap: Option<usize>,
    keep_bytes: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; cap.unwrap_or(0)];
    let mut len = cap.unwrap_or(0) as CK_ULONG;
    let out = if cap.is_some() {
        buf.as_mut_ptr()
    } else {
        ptr::null_mut()
    };
    // SAFETY: input and buf are live for their lengths; NULL output is a size query.
    let rv = unsafe {
        f(
            s,
            input.as_ptr() as *mut u8,
            input.len() as CK_ULONG,
            out,
            &mut len,
        )
    };
    if rv == CKR_OK && cap.is_some() {
        buf.truncate(len as usize);
    } else {
        buf.clear();
    }
    let mut out = (len as u64).to_le_bytes().to_vec();
    if keep_bytes {
        out.extend_from_slice(&buf);
    }
    steps.push((name.to_string(), rv, out));
    buf
}

/// An EC P-256 key pair (session objects) with the private key's template `private`: the
/// return value, the public key and the private key.
fn ec_key_pair(
    m: &RawModule,
    s: CK_SESSION_HANDLE,
    private: &mut [CK_ATTRIBUTE],
) -> (CK_RV, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let ec = [0x06u8, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let tru = [CK_TRUE];
    let mut public = [attr(CKA_EC_PARAMS, &ec), attr(CKA_VERIFY, &tru)];
    let (mut public_key, mut private_key) = (0, 0);
    // SAFETY: valid templates, mechanism and out pointers.
    let rv = unsafe {
        m.f().C_GenerateKeyPair.unwrap()(
            s,
            &mut mech(CKM_EC_KEY_PAIR_GEN, &mut []),
            public.as_mut_ptr(),
            2,
            private.as_mut_ptr(),
            private.len() as CK_ULONG,
            &mut public_key,
            &mut private_key,
        )
    };
    (rv, public_key, private_key)
}

/// The sequences, on module `m` (initialised, its token with the user PIN set).
fn scenario(m: &RawModule) -> Vec<Step> {
    let f = m.f();
    let mut steps = Vec::new();
    let slot = m.first_slot();
    let s = m.open_rw(slot);
    assert_eq!(m.login(s, PIN), CKR_OK);
    let rec = |steps: &mut Vec<Step>, name: &str, rv: CK_RV| steps.push((name.into(), rv, vec![]));
    let digest_init = |s| {
        // SAFETY: a valid mechanism.
        unsafe { f.C_DigestInit.unwrap()(s, &mut mech(CKM_SHA256, &mut [])) }
    };
    let digest = f.C_Digest.unwrap();

    // 1. The usual pair: size query, then a buffer of that size.
    rec(&mut steps, "DigestInit", digest_init(s));
    call(&mut steps, "Digest(NULL)", digest, s, b"abc", None, true);
    call(&mut steps, "Digest(32)", digest, s, b"abc", Some(32), true);
    // The operation ended: another call answers CKR_OPERATION_NOT_INITIALIZED.
    call(
        &mut steps,
        "Digest after the end",
        digest,
        s,
        b"abc",
        Some(32),
        true,
    );
    // 2. The size asked twice, a larger buffer.
    rec(&mut steps, "DigestInit", digest_init(s));
    call(&mut steps, "Digest(NULL)", digest, s, b"abc", None, true);
    call(
        &mut steps,
        "Digest(NULL) again",
        digest,
        s,
        b"abc",
        None,
        true,
    );
    call(
        &mut steps,
        "Digest(100)",
        digest,
        s,
        b"abc",
        Some(100),
        true,
    );
    // 3. A short buffer, then the right one.
    rec(&mut steps, "DigestInit", digest_init(s));
    call(&mut steps, "Digest(NULL)", digest, s, b"abc", None, true);
    call(&mut steps, "Digest(16)", digest, s, b"abc", Some(16), true);
    call(&mut steps, "Digest(32)", digest, s, b"abc", Some(32), true);
    // 4. Other input after the query: the vendor digests that input.
    rec(&mut steps, "DigestInit", digest_init(s));
    call(
        &mut steps,
        "Digest(NULL, abc)",
        digest,
        s,
        b"abc",
        None,
        true,
    );
    call(
        &mut steps,
        "Digest(32, xyz)",
        digest,
        s,
        b"xyz",
        Some(32),
        true,
    );
    // 5. A new Init over the pending result, then the follow-up.
    rec(&mut steps, "DigestInit", digest_init(s));
    call(&mut steps, "Digest(NULL)", digest, s, b"abc", None, true);
    rec(&mut steps, "DigestInit over it", digest_init(s));
    call(&mut steps, "Digest(32)", digest, s, b"abc", Some(32), true);
    // 6. Another call of the operation's family: a multi-part update after the query.
    rec(&mut steps, "DigestInit", digest_init(s));
    call(&mut steps, "Digest(NULL)", digest, s, b"abc", None, true);
    // SAFETY: valid buffer.
    let rv = unsafe { f.C_DigestUpdate.unwrap()(s, b"abc".as_ptr() as *mut u8, 3) };
    rec(&mut steps, "DigestUpdate after the query", rv);
    let mut out = [0u8; 32];
    let mut len: CK_ULONG = 32;
    // SAFETY: valid buffer.
    let rv = unsafe { f.C_DigestFinal.unwrap()(s, out.as_mut_ptr(), &mut len) };
    steps.push(("DigestFinal".into(), rv, out[..len as usize].to_vec()));
    // 7. Another operation on the session: the one-operation-at-a-time rule of the vendor.
    rec(&mut steps, "DigestInit", digest_init(s));
    call(&mut steps, "Digest(NULL)", digest, s, b"abc", None, true);
    let mut key_value = [0x42u8; 16];
    let (class, kt, tru) = (
        CKO_SECRET_KEY.to_ne_bytes(),
        CKK_AES.to_ne_bytes(),
        [CK_TRUE],
    );
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        attr(CKA_VALUE, &key_value),
        attr(CKA_ENCRYPT, &tru),
        attr(CKA_DECRYPT, &tru),
    ];
    let mut aes = 0;
    // SAFETY: valid template and out pointer.
    let rv = unsafe { f.C_CreateObject.unwrap()(s, t.as_mut_ptr(), t.len() as CK_ULONG, &mut aes) };
    rec(&mut steps, "CreateObject(AES)", rv);
    key_value.fill(0);
    let mut iv = [7u8; 16];
    // SAFETY: a valid mechanism.
    let rv = unsafe { f.C_EncryptInit.unwrap()(s, &mut mech(CKM_AES_CBC_PAD, &mut iv), aes) };
    rec(&mut steps, "EncryptInit while a digest is pending", rv);
    call(&mut steps, "Digest(32)", digest, s, b"abc", Some(32), true);
    // 8. Encryption and decryption (deterministic: AES-CBC-PAD, fixed IV), the usual pair.
    let encrypt = f.C_Encrypt.unwrap();
    let decrypt = f.C_Decrypt.unwrap();
    let encrypt_init = |s| {
        let mut iv = [7u8; 16];
        // SAFETY: a valid mechanism.
        unsafe { f.C_EncryptInit.unwrap()(s, &mut mech(CKM_AES_CBC_PAD, &mut iv), aes) }
    };
    let decrypt_init = |s| {
        let mut iv = [7u8; 16];
        // SAFETY: a valid mechanism.
        unsafe { f.C_DecryptInit.unwrap()(s, &mut mech(CKM_AES_CBC_PAD, &mut iv), aes) }
    };
    rec(&mut steps, "EncryptInit", encrypt_init(s));
    call(
        &mut steps,
        "Encrypt(NULL)",
        encrypt,
        s,
        b"twenty bytes of text",
        None,
        true,
    );
    let cipher = call(
        &mut steps,
        "Encrypt(32)",
        encrypt,
        s,
        b"twenty bytes of text",
        Some(32),
        true,
    );
    rec(&mut steps, "DecryptInit", decrypt_init(s));
    call(&mut steps, "Decrypt(NULL)", decrypt, s, &cipher, None, true);
    call(
        &mut steps,
        "Decrypt(32)",
        decrypt,
        s,
        &cipher,
        Some(32),
        true,
    );
    // 9. A real call that fails after a successful size query (bad padding).
    rec(&mut steps, "DecryptInit", decrypt_init(s));
    call(
        &mut steps,
        "Decrypt(NULL, garbage)",
        decrypt,
        s,
        &[0x55u8; 32],
        None,
        true,
    );
    call(
        &mut steps,
        "Decrypt(32, garbage)",
        decrypt,
        s,
        &[0x55u8; 32],
        Some(32),
        true,
    );
    call(
        &mut steps,
        "Decrypt after the failure",
        decrypt,
        s,
        &[0x55u8; 32],
        Some(32),
        true,
    );
    // 10. Signing (ECDSA: random signatures; lengths, return values and verification).
    let (rv, pubkey, key) = ec_key_pair(m, s, &mut [attr(CKA_SIGN, &tru)]);
    rec(&mut steps, "GenerateKeyPair(EC)", rv);
    let sign = f.C_Sign.unwrap();
    let sign_init = |s| {
        // SAFETY: a valid mechanism.
        unsafe { f.C_SignInit.unwrap()(s, &mut mech(CKM_ECDSA, &mut []), key) }
    };
    let digest32 = [9u8; 32];
    rec(&mut steps, "SignInit", sign_init(s));
    call(&mut steps, "Sign(NULL)", sign, s, &digest32, None, false);
    let signature = call(&mut steps, "Sign(64)", sign, s, &digest32, Some(64), false);
    // SAFETY: a valid mechanism and buffers.
    let rv = unsafe {
        f.C_VerifyInit.unwrap()(s, &mut mech(CKM_ECDSA, &mut []), pubkey);
        f.C_Verify.unwrap()(
            s,
            digest32.as_ptr() as *mut u8,
            32,
            signature.as_ptr() as *mut u8,
            signature.len() as CK_ULONG,
        )
    };
    rec(&mut steps, "Verify the signature", rv);
    // 11. A new C_SignInit over a pending result; then a logout over one.
    rec(&mut steps, "SignInit", sign_init(s));
    call(&mut steps, "Sign(NULL)", sign, s, &digest32, None, false);
    rec(&mut steps, "SignInit over it", sign_init(s));
    call(&mut steps, "Sign(64)", sign, s, &digest32, Some(64), false);
    rec(&mut steps, "SignInit", sign_init(s));
    call(&mut steps, "Sign(NULL)", sign, s, &digest32, None, false);
    // SAFETY: a session of ours.
    rec(&mut steps, "Logout", unsafe { f.C_Logout.unwrap()(s) });
    call(
        &mut steps,
        "Sign(64) after logout",
        sign,
        s,
        &digest32,
        Some(64),
        false,
    );
    // 12. A NULL length pointer after the query: the vendor's argument check.
    assert_eq!(m.login(s, PIN), CKR_OK);
    rec(&mut steps, "DigestInit", digest_init(s));
    call(&mut steps, "Digest(NULL)", digest, s, b"abc", None, true);
    let mut out = [0u8; 32];
    // SAFETY: a NULL length pointer is what is tested.
    let rv = unsafe {
        digest(
            s,
            b"abc".as_ptr() as *mut u8,
            3,
            out.as_mut_ptr(),
            ptr::null_mut(),
        )
    };
    rec(&mut steps, "Digest(buffer, NULL length)", rv);
    // 13. The session closed over a pending result; the next session starts clean.
    let s2 = m.open_rw(slot);
    rec(&mut steps, "DigestInit(s2)", digest_init(s2));
    call(
        &mut steps,
        "Digest(NULL) on s2",
        digest,
        s2,
        b"abc",
        None,
        true,
    );
    // SAFETY: a session of ours.
    rec(&mut steps, "CloseSession(s2)", unsafe {
        f.C_CloseSession.unwrap()(s2)
    });
    call(
        &mut steps,
        "Digest on the closed s2",
        digest,
        s2,
        b"abc",
        Some(32),
        true,
    );
    let s3 = m.open_rw(slot);
    rec(&mut steps, "DigestInit(s3)", digest_init(s3));
    call(
        &mut steps,
        "Digest(32) on s3",
        digest,
        s3,
        b"abc",
        Some(32),
        true,
    );
    // SAFETY: sessions of ours.
    unsafe {
        f.C_CloseSession.unwrap()(s3);
        f.C_CloseSession.unwrap()(s);
    }
    steps
}

/// Searches, on module `m` (initialised, logged in on a session of its own).
fn search_scenario(m: &RawModule) -> Vec<Step> {
    let f = m.f();
    let mut steps: Vec<Step> = Vec::new();
    let s = m.open_rw(m.first_slot());
    let rec = |steps: &mut Vec<Step>, name: &str, rv: CK_RV| steps.push((name.into(), rv, vec![]));
    // 40 data objects labelled "many-NN" and 3 labelled "few": more than one prefetch.
    let class = CKO_DATA.to_ne_bytes();
    for i in 0..43 {
        let label = if i < 40 {
            format!("many-{i:02}")
        } else {
            "few".to_string()
        };
        let group: &[u8] = if i < 40 { b"many" } else { b"few" };
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_LABEL, label.as_bytes()),
            attr(CKA_APPLICATION, group),
        ];
        let mut h = 0;
        // SAFETY: valid template and out pointer.
        let rv = unsafe { f.C_CreateObject.unwrap()(s, t.as_mut_ptr(), 3, &mut h) };
        assert_eq!(rv, CKR_OK);
    }
    let init = |steps: &mut Vec<Step>, name: &str, group: &[u8]| {
        let mut t = [attr(CKA_CLASS, &class), attr(CKA_APPLICATION, group)];
        // SAFETY: valid template.
        let rv = unsafe { f.C_FindObjectsInit.unwrap()(s, t.as_mut_ptr(), 2) };
        steps.push((name.into(), rv, vec![]));
    };
    // Each handle found, by its label (handles may be numbered differently).
    let find = |steps: &mut Vec<Step>, name: &str, max: usize| {
        let mut found = vec![0 as CK_OBJECT_HANDLE; max];
        let mut n: CK_ULONG = 0;
        // SAFETY: a buffer of max handles.
        let rv =
            unsafe { f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), max as CK_ULONG, &mut n) };
        let mut out = (n as u64).to_le_bytes().to_vec();
        for h in &found[..(n as usize).min(max)] {
            let mut label = [0u8; 16];
            let mut t = [attr(CKA_LABEL, &label)];
            t[0].pValue = label.as_mut_ptr().cast();
            // SAFETY: a buffer of 16 bytes.
            let r = unsafe { f.C_GetAttributeValue.unwrap()(s, *h, t.as_mut_ptr(), 1) };
            out.extend_from_slice(&r.to_le_bytes());
            out.extend_from_slice(&label[..(t[0].ulValueLen as usize).min(16)]);
            out.push(b'|');
        }
        steps.push((name.into(), rv, out));
    };
    let final_ = |steps: &mut Vec<Step>, name: &str| {
        // SAFETY: a session of ours.
        let rv = unsafe { f.C_FindObjectsFinal.unwrap()(s) };
        steps.push((name.into(), rv, vec![]));
    };
    // 1. One handle at a time, past the end, then the end.
    init(&mut steps, "Init(few)", b"few");
    for i in 0..5 {
        find(&mut steps, &format!("Find(1) #{i}"), 1);
    }
    final_(&mut steps, "Final");
    // 2. After the end: C_FindObjects and C_FindObjectsFinal again.
    find(&mut steps, "Find after Final", 1);
    final_(&mut steps, "Final again");
    // 3. All at once; a second Init during the search.
    init(&mut steps, "Init(few)", b"few");
    init(&mut steps, "Init(many) during the search", b"many");
    find(&mut steps, "Find(10)", 10);
    find(&mut steps, "Find(10) past the end", 10);
    final_(&mut steps, "Final");
    // 4. More than the server fetches ahead, ten at a time.
    init(&mut steps, "Init(many)", b"many");
    for i in 0..5 {
        find(&mut steps, &format!("Find(10) #{i}"), 10);
    }
    final_(&mut steps, "Final");
    // 5. Another operation during a search, then the search goes on.
    init(&mut steps, "Init(few)", b"few");
    find(&mut steps, "Find(1)", 1);
    // SAFETY: a valid mechanism.
    let rv = unsafe { f.C_DigestInit.unwrap()(s, &mut mech(CKM_SHA256, &mut [])) };
    rec(&mut steps, "DigestInit during the search", rv);
    find(&mut steps, "Find(10)", 10);
    final_(&mut steps, "Final");
    // SAFETY: valid buffers; ends a digest the vendor may have started.
    unsafe {
        let mut out = [0u8; 32];
        let mut len: CK_ULONG = 32;
        let rv = f.C_Digest.unwrap()(s, b"x".as_ptr() as *mut u8, 1, out.as_mut_ptr(), &mut len);
        rec(&mut steps, "Digest", rv);
    }
    // 6. NULL pointers and a count of 0 during a search.
    init(&mut steps, "Init(few)", b"few");
    let mut n: CK_ULONG = 0;
    let mut one = 0;
    // SAFETY: the NULL pointers are what is tested.
    unsafe {
        let rv = f.C_FindObjects.unwrap()(s, ptr::null_mut(), 1, &mut n);
        rec(&mut steps, "Find(NULL handles)", rv);
        let rv = f.C_FindObjects.unwrap()(s, &mut one, 1, ptr::null_mut());
        rec(&mut steps, "Find(NULL count)", rv);
        let rv = f.C_FindObjects.unwrap()(s, &mut one, 0, &mut n);
        steps.push(("Find(0)".into(), rv, (n as u64).to_le_bytes().to_vec()));
    }
    find(&mut steps, "Find(10)", 10);
    final_(&mut steps, "Final");
    // 7. Nothing found.
    init(&mut steps, "Init(none)", b"none");
    find(&mut steps, "Find(10)", 10);
    final_(&mut steps, "Final");
    // 8. The session closed during a search; a new one searches from scratch.
    init(&mut steps, "Init(few)", b"few");
    // SAFETY: a session of ours.
    rec(&mut steps, "CloseSession", unsafe {
        f.C_CloseSession.unwrap()(s)
    });
    let s2 = m.open_rw(m.first_slot());
    let mut t = [attr(CKA_CLASS, &class)];
    let mut found = [0 as CK_OBJECT_HANDLE; 64];
    // SAFETY: valid template and buffers.
    unsafe {
        rec(
            &mut steps,
            "Init(s2)",
            f.C_FindObjectsInit.unwrap()(s2, t.as_mut_ptr(), 1),
        );
        let rv = f.C_FindObjects.unwrap()(s2, found.as_mut_ptr(), 64, &mut n);
        // The session objects went with their session.
        steps.push(("Find(s2)".into(), rv, (n as u64).to_le_bytes().to_vec()));
        rec(&mut steps, "Final(s2)", f.C_FindObjectsFinal.unwrap()(s2));
        f.C_CloseSession.unwrap()(s2);
    }
    steps
}

/// C_GetAttributeValue with a buffer of `cap` bytes per attribute (`None`: NULL, the length
/// asked); records the return value and each attribute's length and bytes.
fn get_attributes(
    m: &RawModule,
    steps: &mut Vec<Step>,
    name: &str,
    s: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    asked: &[(CK_ATTRIBUTE_TYPE, Option<usize>)],
) {
    let mut buffers: Vec<Vec<u8>> = asked.iter().map(|(_, c)| vec![0; c.unwrap_or(0)]).collect();
    let mut t: Vec<CK_ATTRIBUTE> = asked
        .iter()
        .zip(buffers.iter_mut())
        .map(|((ty, cap), b)| CK_ATTRIBUTE {
            type_: *ty,
            pValue: if cap.is_some() {
                b.as_mut_ptr().cast()
            } else {
                ptr::null_mut()
            },
            ulValueLen: cap.unwrap_or(0) as CK_ULONG,
        })
        .collect();
    // SAFETY: each buffer is live for its length; NULL ones ask the length.
    let rv = unsafe {
        m.f().C_GetAttributeValue.unwrap()(s, object, t.as_mut_ptr(), t.len() as CK_ULONG)
    };
    let mut out = Vec::new();
    for (a, b) in t.iter().zip(&buffers) {
        out.extend_from_slice(&a.ulValueLen.to_le_bytes());
        if !a.pValue.is_null() && a.ulValueLen != CK_UNAVAILABLE_INFORMATION {
            out.extend_from_slice(&b[..(a.ulValueLen as usize).min(b.len())]);
        }
        out.push(b'|');
    }
    steps.push((name.into(), rv, out));
}

/// C_GetAttributeValue's two calls and their departures: the size query, then the values in
/// buffers of those lengths, larger ones, a short one, another order, NULL for one; the
/// object changed in between (on the same session and another), a logout in between, other
/// calls on the session in between, an attribute the object does not have or may not
/// reveal, a nested template.
fn attributes_scenario(m: &RawModule) -> Vec<Step> {
    let f = m.f();
    let mut steps: Vec<Step> = Vec::new();
    let s = m.open_rw(m.first_slot());
    let s2 = m.open_rw(m.first_slot());
    let rv = m.login(s, PIN);
    assert!(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);
    let rec = |steps: &mut Vec<Step>, name: &str, rv: CK_RV| steps.push((name.into(), rv, vec![]));
    let class = CKO_DATA.to_ne_bytes();
    let value = [7u8; 100];
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_LABEL, b"label-one"),
        attr(CKA_APPLICATION, b"app"),
        attr(CKA_VALUE, &value),
    ];
    let mut data = 0;
    // SAFETY: valid template and out pointer.
    assert_eq!(
        unsafe { f.C_CreateObject.unwrap()(s, t.as_mut_ptr(), 4, &mut data) },
        CKR_OK
    );
    let tru = [CK_TRUE];
    let (rv, _, key) = ec_key_pair(
        m,
        s,
        &mut [
            attr(CKA_PRIVATE, &tru),
            attr(CKA_SENSITIVE, &tru),
            attr(CKA_SIGN, &tru),
            attr(CKA_ID, b"attr-key"),
        ],
    );
    assert_eq!(rv, CKR_OK);
    let lengths = [
        (CKA_LABEL, None),
        (CKA_APPLICATION, None),
        (CKA_VALUE, None),
    ];
    let exact = [
        (CKA_LABEL, Some(9)),
        (CKA_APPLICATION, Some(3)),
        (CKA_VALUE, Some(100)),
    ];
    let large = [
        (CKA_LABEL, Some(256)),
        (CKA_APPLICATION, Some(256)),
        (CKA_VALUE, Some(256)),
    ];
    let get = |steps: &mut Vec<Step>, name: &str, s, o, asked: &[_]| {
        get_attributes(m, steps, name, s, o, asked)
    };
    let set_label = |steps: &mut Vec<Step>, name: &str, s, label: &[u8]| {
        let mut t = [attr(CKA_LABEL, label)];
        // SAFETY: a valid template.
        let rv = unsafe { f.C_SetAttributeValue.unwrap()(s, data, t.as_mut_ptr(), 1) };
        rec(steps, name, rv);
    };
    // 1. The usual pair, then the values asked again.
    get(&mut steps, "lengths", s, data, &lengths);
    get(&mut steps, "values (exact)", s, data, &exact);
    get(&mut steps, "values again", s, data, &exact);
    // 2. The lengths asked twice, larger buffers.
    get(&mut steps, "lengths", s, data, &lengths);
    get(&mut steps, "lengths again", s, data, &lengths);
    get(&mut steps, "values (large)", s, data, &large);
    // 3. A short buffer.
    get(&mut steps, "lengths", s, data, &lengths);
    let short = [exact[0], (CKA_APPLICATION, Some(2)), exact[2]];
    get(&mut steps, "values (one short)", s, data, &short);
    // 4. Another order; NULL for one of them.
    get(&mut steps, "lengths", s, data, &lengths);
    get(
        &mut steps,
        "values (other order)",
        s,
        data,
        &[exact[2], exact[0], exact[1]],
    );
    get(&mut steps, "lengths", s, data, &lengths);
    get(
        &mut steps,
        "values (one NULL)",
        s,
        data,
        &[exact[0], (CKA_APPLICATION, None), exact[2]],
    );
    // 5. The object changed in between, on the same session, then on another.
    get(&mut steps, "lengths", s, data, &lengths);
    set_label(&mut steps, "SetAttributeValue", s, b"label-two-longer");
    get(&mut steps, "values after a change", s, data, &large);
    get(&mut steps, "lengths", s, data, &lengths);
    set_label(&mut steps, "SetAttributeValue(s2)", s2, b"label-3");
    get(&mut steps, "values after a change on s2", s, data, &large);
    // 6. Another call on the session in between; a call on another session in between.
    get(&mut steps, "lengths", s, data, &lengths);
    // SAFETY: a valid mechanism.
    let rv = unsafe { f.C_DigestInit.unwrap()(s, &mut mech(CKM_SHA256, &mut [])) };
    rec(&mut steps, "DigestInit", rv);
    get(&mut steps, "values after DigestInit", s, data, &large);
    get(&mut steps, "lengths", s, data, &lengths);
    get(&mut steps, "lengths on s2", s2, data, &lengths);
    get(&mut steps, "values after a call on s2", s, data, &large);
    // 7. What the object does not have, or may not reveal; a nested template.
    get(
        &mut steps,
        "lengths (CKA_MODULUS on data)",
        s,
        data,
        &[(CKA_LABEL, None), (CKA_MODULUS, None)],
    );
    get(
        &mut steps,
        "values (CKA_MODULUS on data)",
        s,
        data,
        &[(CKA_LABEL, Some(64)), (CKA_MODULUS, Some(64))],
    );
    let key_lengths = [(CKA_EC_PARAMS, None), (CKA_ID, None)];
    let key_values = [(CKA_EC_PARAMS, Some(10)), (CKA_ID, Some(8))];
    get(
        &mut steps,
        "lengths (CKA_VALUE of a sensitive key)",
        s,
        key,
        &[(CKA_EC_PARAMS, None), (CKA_VALUE, None)],
    );
    get(
        &mut steps,
        "lengths (CKA_UNWRAP_TEMPLATE)",
        s,
        key,
        &[(CKA_UNWRAP_TEMPLATE, None)],
    );
    get(&mut steps, "key lengths", s, key, &key_lengths);
    get(&mut steps, "key values", s, key, &key_values);
    // 8. A logout in between (a private object is out of reach), then the values again.
    get(&mut steps, "key lengths", s, key, &key_lengths);
    // SAFETY: a session of ours.
    rec(&mut steps, "Logout", unsafe { f.C_Logout.unwrap()(s) });
    get(&mut steps, "key values after logout", s, key, &key_values);
    rec(&mut steps, "Login", m.login(s, PIN));
    get(&mut steps, "key values after login", s, key, &key_values);
    // 9. The session closed in between: its objects went with it.
    get(&mut steps, "lengths", s, data, &lengths);
    // SAFETY: a session of ours.
    rec(&mut steps, "CloseSession", unsafe {
        f.C_CloseSession.unwrap()(s)
    });
    get(&mut steps, "values on s2 after the close", s2, data, &large);
    // SAFETY: a session of ours.
    unsafe { f.C_CloseSession.unwrap()(s2) };
    steps
}

#[test]
fn every_get_attribute_value_sequence_after_a_completed_size_query_answers_what_the_vendor_answers()
{
    compare(
        "attrahead",
        "PKCS11_PROXY_COMPLETE_SIZE_QUERIES",
        attributes_scenario,
    );
}

/// The vendor library a comparison runs on: SoftHSM2, or kryoptic (issue 27).
#[derive(Clone, Copy)]
enum Vendor {
    SoftHsm2,
    Kryoptic,
}

/// Runs `scenario` directly on SoftHSM2 and through the proxy with each setting of
/// `variable`, and compares the calls one by one.
fn compare(tag: &str, variable: &str, scenario: fn(&RawModule) -> Vec<Step>) {
    compare_on(Vendor::SoftHsm2, tag, variable, scenario);
}

/// [`compare`] on `vendor`: its token, loaded directly, then through a server that loads it.
fn compare_on(vendor: Vendor, tag: &str, variable: &str, scenario: fn(&RawModule) -> Vec<Step>) {
    let (hsm, kryoptic);
    let (direct, env, server) = match vendor {
        Vendor::SoftHsm2 => {
            hsm = SoftHsm::new(tag);
            let conf = hsm.conf.to_string_lossy().into_owned();
            let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
            (hsm.module_copy(), ("SOFTHSM2_CONF", conf), server)
        }
        Vendor::Kryoptic => {
            kryoptic = Kryoptic::new(tag);
            let (key, value) = kryoptic.env();
            let module = private_copy(&tests::kryoptic::module_path(), kryoptic.dir.path());
            (module, (key, value), kryoptic.server("tcp://127.0.0.1:0"))
        }
    };
    // kryoptic hands out search results in no set order (its own hash map's, another in each
    // instance): compared there as each call's count and every object found, in any order.
    let record = |steps: Vec<Step>| match vendor {
        Vendor::SoftHsm2 => steps,
        Vendor::Kryoptic => in_any_order(steps),
    };
    let direct = RawModule::load(&direct);
    let expected = record(with_env(&[(env.0, &env.1)], || {
        assert_eq!(direct.initialize(), CKR_OK);
        scenario(&direct)
    }));
    // kryoptic stays loaded: OpenSSL, inside it, leaves thread-local destructors that must
    // find it when this thread ends.
    std::mem::forget(direct);
    if std::env::var_os("SHOW_STEPS").is_some() {
        for (name, rv, out) in &expected {
            println!("{name}: {rv:#x} {}", String::from_utf8_lossy(out));
        }
    }
    for setting in ["on", "off"] {
        let dir = TempDir::new(tag);
        let m = proxy(&server, &dir, &[(variable, setting)]);
        let got = record(scenario(&m));
        assert_eq!(got.len(), expected.len());
        for (e, g) in expected.iter().zip(&got) {
            assert_eq!(e, g, "{variable}={setting}: {} differs", e.0);
        }
        // SAFETY: no call in progress.
        unsafe { m.f().C_Finalize.unwrap()(ptr::null_mut()) };
    }
}

/// `steps` with each search call's labels (16 bytes each, after the count) taken out, and
/// every label found, sorted, as one last step.
fn in_any_order(steps: Vec<Step>) -> Vec<Step> {
    let mut found: Vec<Vec<u8>> = Vec::new();
    let mut steps: Vec<Step> = steps
        .into_iter()
        .map(|(name, rv, out)| {
            if name.starts_with("Find") && out.len() > 8 && (out.len() - 8) % 16 == 0 {
                found.extend(out[8..].chunks(16).map(<[u8]>::to_vec));
                (name, rv, out[..8].to_vec())
            } else {
                (name, rv, out)
            }
        })
        .collect();
    found.sort();
    steps.push((
        "every object found, in any order".into(),
        CKR_OK,
        found.concat(),
    ));
    steps
}

/// The three comparisons above, on kryoptic.
#[test]
fn on_kryoptic_every_two_call_and_search_sequence_answers_what_it_answers_directly() {
    compare_on(
        Vendor::Kryoptic,
        "twocall-k",
        "PKCS11_PROXY_COMPLETE_SIZE_QUERIES",
        scenario,
    );
    compare_on(
        Vendor::Kryoptic,
        "attrahead-k",
        "PKCS11_PROXY_COMPLETE_SIZE_QUERIES",
        attributes_scenario,
    );
    compare_on(
        Vendor::Kryoptic,
        "searchahead-k",
        "PKCS11_PROXY_PREFETCH_SEARCHES",
        |m: &RawModule| {
            let s = m.open_rw(m.first_slot());
            assert_eq!(m.login(s, PIN), CKR_OK);
            search_scenario(m)
        },
    );
}

#[test]
fn every_search_sequence_through_a_search_run_ahead_answers_what_the_vendor_answers() {
    compare(
        "searchahead",
        "PKCS11_PROXY_PREFETCH_SEARCHES",
        |m: &RawModule| {
            let s = m.open_rw(m.first_slot());
            assert_eq!(m.login(s, PIN), CKR_OK);
            search_scenario(m)
        },
    );
}

/// `pkcs11_proxy_calls_total` of `function` (every return value), from the metrics port.
fn calls(metrics: &str, function: &str) -> u64 {
    let text = tests::http_get(metrics, "/metrics").1;
    let prefix = format!("pkcs11_proxy_calls_total{{function=\"{function}");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn proxy(server: &ProxyServer, dir: &TempDir, env: &[(&str, &str)]) -> RawModule {
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let mut all = vec![("PKCS11_PROXY_SOCKET", server.address.as_str())];
    all.extend_from_slice(env);
    assert_eq!(with_env(&all, || m.initialize()), CKR_OK);
    m
}

#[test]
fn every_sequence_after_a_completed_size_query_answers_what_the_vendor_answers() {
    compare("twocall", "PKCS11_PROXY_COMPLETE_SIZE_QUERIES", scenario);
}

#[test]
fn a_fabric_endorsement_costs_three_round_trips() {
    // Fabric's six calls per signature (C_FindObjectsInit by CKA_ID, C_FindObjects,
    // C_FindObjectsFinal, C_SignInit, C_Sign size query, C_Sign), counted as requests the
    // server served (its calls_total over every function).
    let hsm = SoftHsm::new("twocallrt");
    let server = ProxyServer::start_with_metrics(&hsm);
    let metrics = server.metrics_address();
    let dir = TempDir::new("twocallrt");
    for (complete, prefetch, per_signature) in [
        ("on", "on", 3),
        ("off", "on", 4),
        ("on", "off", 5),
        ("off", "off", 6),
    ] {
        let m = proxy(
            &server,
            &dir,
            &[
                ("PKCS11_PROXY_COMPLETE_SIZE_QUERIES", complete),
                ("PKCS11_PROXY_PREFETCH_SEARCHES", prefetch),
            ],
        );
        let id = format!("{complete}-{prefetch}");
        let s = m.open_rw(m.first_slot());
        let rv = m.login(s, PIN);
        assert!(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);
        // From the key's creation on: the identity of each object handed out (recorded for
        // recovery) comes with the answer that hands it out, so the first signature costs
        // what the others cost, and no C_GetAttributeValue is made for it.
        let before = calls(&metrics, "C_");
        let reads = calls(&metrics, "C_GetAttributeValue");
        assert_eq!(
            tests::fabric::make_token_key_with_id(&m, s, id.as_bytes()),
            CKR_OK
        );
        let made = calls(&metrics, "C_") - before;
        assert_eq!(made, 1, "C_GenerateKeyPair, with both keys' identities");
        // SAFETY: a logged-in session of this module.
        let sign = || unsafe { tests::fabric::fabric_sign_data(&m, s, id.as_bytes(), &[3; 32]) };
        for _ in 0..10 {
            assert_eq!(sign(), CKR_OK);
        }
        let after = calls(&metrics, "C_");
        assert_eq!(
            after - before - made,
            10 * per_signature,
            "completion {complete}, prefetch {prefetch}"
        );
        assert_eq!(
            calls(&metrics, "C_GetAttributeValue"),
            reads,
            "identity read apart from the answers"
        );
        // SAFETY: no call in progress.
        unsafe { m.f().C_Finalize.unwrap()(ptr::null_mut()) };
    }
}

#[test]
fn a_get_attribute_value_pair_costs_one_round_trip() {
    // C_GetAttributeValue's size query and the call with the values (how Fabric's binding
    // reads CKA_EC_POINT), counted as requests the server served.
    let hsm = SoftHsm::new("attrrt");
    let server = ProxyServer::start_with_metrics(&hsm);
    let metrics = server.metrics_address();
    let dir = TempDir::new("attrrt");
    for (complete, per_pair) in [("on", 1), ("off", 2)] {
        let m = proxy(
            &server,
            &dir,
            &[("PKCS11_PROXY_COMPLETE_SIZE_QUERIES", complete)],
        );
        let s = m.open_rw(m.first_slot());
        let rv = m.login(s, PIN);
        assert!(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);
        let class = CKO_DATA.to_ne_bytes();
        let mut t = [attr(CKA_CLASS, &class), attr(CKA_VALUE, &[9; 65])];
        let mut data = 0;
        // SAFETY: valid template and out pointer.
        assert_eq!(
            unsafe { m.f().C_CreateObject.unwrap()(s, t.as_mut_ptr(), 2, &mut data) },
            CKR_OK
        );
        let before = calls(&metrics, "C_");
        for _ in 0..10 {
            let mut steps = Vec::new();
            get_attributes(&m, &mut steps, "lengths", s, data, &[(CKA_VALUE, None)]);
            get_attributes(&m, &mut steps, "values", s, data, &[(CKA_VALUE, Some(65))]);
            assert_eq!(steps[1].1, CKR_OK);
            assert_eq!(&steps[1].2[8..73], &[9; 65][..]);
        }
        assert_eq!(
            calls(&metrics, "C_") - before,
            10 * per_pair,
            "completion {complete}"
        );
        // SAFETY: no call in progress.
        unsafe { m.f().C_Finalize.unwrap()(ptr::null_mut()) };
    }
}
