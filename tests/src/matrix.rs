//! The differential edge-case matrix (DESIGN.md, "The vendor decides"): every PKCS#11 v2.40
//! function the shim exports, called with a matrix of argument shapes (NULL, non-NULL with a
//! count of 0, valid; invalid handles; absent, short and large output buffers; NULL length
//! pointers), before C_Initialize, while initialised and after C_Finalize. The same sequence
//! runs against SoftHSM2 directly and through the proxy; each case records its return value
//! and what it wrote, and the two records must be equal case by case.
//!
//! Handles are the module's own (the shim hands out its own numbers), so a case records
//! lengths and deterministic values only, never a handle's value.

use std::ptr::null_mut;

use cryptoki_sys::*;

use crate::raw::RawModule;
use crate::PIN;

/// One case's name, return value and deterministic output.
pub type Outcome = (String, CK_RV, Vec<u8>);

/// A handle no module hands out.
const BOGUS: CK_ULONG = 0x7fff_0000;
/// The return value recorded for a clean-up call not made (its call failed, on that side).
const NOT_RUN: CK_RV = 0xffff_fff0;

/// The handles the cases use: real ones once initialised, bogus ones before.
#[derive(Clone, Copy)]
pub struct Ctx {
    slot: CK_SLOT_ID,
    session: CK_SESSION_HANDLE,
    /// An AES-128 session key (encrypt, decrypt, wrap, unwrap, derive, extractable).
    aes: CK_OBJECT_HANDLE,
    /// A generic secret for HMAC (deterministic signatures).
    hmac: CK_OBJECT_HANDLE,
}

/// An input array's shape.
#[derive(Clone, Copy, Debug)]
enum In {
    /// NULL with a count of 0.
    Null,
    /// NULL with a count of 16.
    NullCounted,
    /// A valid pointer with a count of 0.
    Empty,
    /// Valid data.
    Valid,
}
const INPUTS: [In; 4] = [In::Null, In::NullCounted, In::Empty, In::Valid];

/// A two-call output's shape (PKCS#11 v2.40 §5.2).
#[derive(Clone, Copy, Debug)]
enum Out {
    /// NULL buffer, NULL length pointer.
    NoLength,
    /// A buffer, NULL length pointer.
    BufferNoLength,
    /// NULL buffer: a size query.
    Query,
    /// A buffer of 1 byte.
    Short,
    /// A buffer of 4096 bytes.
    Large,
}
const OUTPUTS: [Out; 5] = [
    Out::NoLength,
    Out::BufferNoLength,
    Out::Query,
    Out::Short,
    Out::Large,
];

const DATA: [u8; 16] = *b"sixteen byte msg";

/// An input's pointer and count for `shape`, over `valid`.
fn input(shape: In, valid: &[u8]) -> (*mut u8, CK_ULONG) {
    match shape {
        In::Null => (null_mut(), 0),
        In::NullCounted => (null_mut(), 16),
        In::Empty => (valid.as_ptr() as *mut u8, 0),
        In::Valid => (valid.as_ptr() as *mut u8, valid.len() as CK_ULONG),
    }
}

/// A two-call output buffer of a shape; `call` gets the buffer and length pointers.
fn output(shape: Out, call: impl FnOnce(*mut u8, *mut CK_ULONG) -> CK_RV) -> (CK_RV, Vec<u8>) {
    let mut buf = vec![0u8; 4096];
    let mut len: CK_ULONG = match shape {
        Out::Short => 1,
        _ => 4096,
    };
    let (b, l) = match shape {
        Out::NoLength => (null_mut(), null_mut()),
        Out::BufferNoLength => (buf.as_mut_ptr(), null_mut()),
        Out::Query => (null_mut(), &mut len as *mut CK_ULONG),
        Out::Short | Out::Large => (buf.as_mut_ptr(), &mut len as *mut CK_ULONG),
    };
    let rv = call(b, l);
    (rv, len.to_ne_bytes().to_vec())
}

fn attr(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as CK_ULONG,
    }
}

const TRUE: [u8; 1] = [1];
const FALSE: [u8; 1] = [0];

/// A template's pointer and count for `shape`, over `valid`.
fn template(shape: In, valid: &mut [CK_ATTRIBUTE]) -> (*mut CK_ATTRIBUTE, CK_ULONG) {
    match shape {
        In::Null => (null_mut(), 0),
        In::NullCounted => (null_mut(), valid.len() as CK_ULONG),
        In::Empty => (valid.as_mut_ptr(), 0),
        In::Valid => (valid.as_mut_ptr(), valid.len() as CK_ULONG),
    }
}

/// The sessions a case may be given.
fn sessions(c: &Ctx) -> [(&'static str, CK_SESSION_HANDLE); 2] {
    [("valid", c.session), ("bogus", BOGUS)]
}

/// Runs every case against `m` in its current state and returns the outcomes.
///
/// # Safety
/// `m` must be a loaded module; `c` its handles (bogus ones when it is not initialised).
pub unsafe fn cases(m: &RawModule, c: &Ctx, state: &str) -> Vec<Outcome> {
    let f = m.f();
    let mut out: Vec<Outcome> = Vec::new();
    let mut rec = |name: String, rv: CK_RV, data: Vec<u8>| {
        out.push((format!("[{state}] {name}"), rv, data));
    };
    let ulong = |v: CK_ULONG| v.to_ne_bytes().to_vec();

    // General purpose and slot functions (v2.40 §5.4, §5.5).
    rec(
        "GetInfo(NULL)".into(),
        f.C_GetInfo.unwrap()(null_mut()),
        vec![],
    );
    let mut info = CK_INFO::default();
    rec("GetInfo".into(), f.C_GetInfo.unwrap()(&mut info), vec![]);
    for present in [CK_FALSE, CK_TRUE] {
        let mut n: CK_ULONG = 0;
        let rv = f.C_GetSlotList.unwrap()(present, null_mut(), &mut n);
        rec(format!("GetSlotList({present}, query)"), rv, ulong(n));
        let rv = f.C_GetSlotList.unwrap()(present, null_mut(), null_mut());
        rec(format!("GetSlotList({present}, NULL count)"), rv, vec![]);
        let mut slots = [0 as CK_SLOT_ID; 16];
        let mut n: CK_ULONG = 0;
        let rv = f.C_GetSlotList.unwrap()(present, slots.as_mut_ptr(), &mut n);
        rec(format!("GetSlotList({present}, 0 capacity)"), rv, ulong(n));
        let mut n: CK_ULONG = 16;
        let rv = f.C_GetSlotList.unwrap()(present, slots.as_mut_ptr(), &mut n);
        rec(format!("GetSlotList({present}, 16)"), rv, ulong(n));
    }
    for (label, slot) in [("slot", c.slot), ("bogus slot", BOGUS)] {
        rec(
            format!("GetSlotInfo({label}, NULL)"),
            f.C_GetSlotInfo.unwrap()(slot, null_mut()),
            vec![],
        );
        let mut si = CK_SLOT_INFO::default();
        let rv = f.C_GetSlotInfo.unwrap()(slot, &mut si);
        rec(format!("GetSlotInfo({label})"), rv, ulong(si.flags));
        rec(
            format!("GetTokenInfo({label}, NULL)"),
            f.C_GetTokenInfo.unwrap()(slot, null_mut()),
            vec![],
        );
        let mut ti = CK_TOKEN_INFO::default();
        let rv = f.C_GetTokenInfo.unwrap()(slot, &mut ti);
        rec(format!("GetTokenInfo({label})"), rv, ti.label.to_vec());
        let mut n: CK_ULONG = 0;
        let rv = f.C_GetMechanismList.unwrap()(slot, null_mut(), &mut n);
        rec(format!("GetMechanismList({label}, query)"), rv, ulong(n));
        let rv = f.C_GetMechanismList.unwrap()(slot, null_mut(), null_mut());
        rec(format!("GetMechanismList({label}, NULL count)"), rv, vec![]);
        let mut mechs = [0 as CK_MECHANISM_TYPE; 2];
        let mut n: CK_ULONG = 2;
        let rv = f.C_GetMechanismList.unwrap()(slot, mechs.as_mut_ptr(), &mut n);
        rec(format!("GetMechanismList({label}, short)"), rv, ulong(n));
        rec(
            format!("GetMechanismInfo({label}, NULL)"),
            f.C_GetMechanismInfo.unwrap()(slot, CKM_AES_CBC, null_mut()),
            vec![],
        );
        let mut mi = CK_MECHANISM_INFO::default();
        let rv = f.C_GetMechanismInfo.unwrap()(slot, CKM_AES_CBC, &mut mi);
        rec(
            format!("GetMechanismInfo({label})"),
            rv,
            ulong(mi.ulMaxKeySize),
        );
        // Never a valid C_InitToken: it would wipe the token.
        let so = crate::SO_PIN.as_bytes();
        rec(
            format!("InitToken({label}, NULL label)"),
            f.C_InitToken.unwrap()(
                slot,
                so.as_ptr() as *mut u8,
                so.len() as CK_ULONG,
                null_mut(),
            ),
            vec![],
        );
    }
    let mut event: CK_SLOT_ID = 0;
    rec(
        "WaitForSlotEvent(DONT_BLOCK)".into(),
        f.C_WaitForSlotEvent.unwrap()(CKF_DONT_BLOCK, &mut event, null_mut()),
        vec![],
    );
    rec(
        "WaitForSlotEvent(pReserved)".into(),
        f.C_WaitForSlotEvent.unwrap()(CKF_DONT_BLOCK, &mut event, c.slot as *mut _),
        vec![],
    );
    rec(
        "WaitForSlotEvent(NULL slot)".into(),
        f.C_WaitForSlotEvent.unwrap()(CKF_DONT_BLOCK, null_mut(), null_mut()),
        vec![],
    );

    // Session management (v2.40 §5.6).
    for flags in [0, CKF_SERIAL_SESSION] {
        rec(
            format!("OpenSession({flags:#x}, NULL handle)"),
            f.C_OpenSession.unwrap()(c.slot, flags, null_mut(), None, null_mut()),
            vec![],
        );
    }
    rec(
        "OpenSession(bogus slot)".into(),
        f.C_OpenSession.unwrap()(BOGUS, CKF_SERIAL_SESSION, null_mut(), None, &mut 0),
        vec![],
    );
    let mut extra: CK_SESSION_HANDLE = 0;
    let rv = f.C_OpenSession.unwrap()(c.slot, CKF_SERIAL_SESSION, null_mut(), None, &mut extra);
    rec("OpenSession(RO)".into(), rv, vec![]);
    rec(
        "CloseSession(RO)".into(),
        f.C_CloseSession.unwrap()(extra),
        vec![],
    );
    rec(
        "CloseSession(closed)".into(),
        f.C_CloseSession.unwrap()(extra),
        vec![],
    );
    rec(
        "CloseAllSessions(bogus slot)".into(),
        f.C_CloseAllSessions.unwrap()(BOGUS),
        vec![],
    );
    for (label, s) in sessions(c) {
        rec(
            format!("GetSessionInfo({label}, NULL)"),
            f.C_GetSessionInfo.unwrap()(s, null_mut()),
            vec![],
        );
        let mut si = CK_SESSION_INFO::default();
        let rv = f.C_GetSessionInfo.unwrap()(s, &mut si);
        rec(
            format!("GetSessionInfo({label})"),
            rv,
            [ulong(si.state), ulong(si.flags)].concat(),
        );
        for shape in OUTPUTS {
            let (rv, o) = output(shape, |b, l| f.C_GetOperationState.unwrap()(s, b, l));
            rec(format!("GetOperationState({label}, {shape:?})"), rv, o);
        }
        for shape in INPUTS {
            let (p, n) = input(shape, &DATA);
            rec(
                format!("SetOperationState({label}, {shape:?})"),
                f.C_SetOperationState.unwrap()(s, p, n, 0, 0),
                vec![],
            );
        }
        // Logged in already (the context logs in): every shape answers without a state change
        // but the wrong-PIN count, the same on both sides.
        for shape in [In::Null, In::NullCounted, In::Empty] {
            let (p, n) = input(shape, PIN.as_bytes());
            rec(
                format!("Login({label}, {shape:?})"),
                f.C_Login.unwrap()(s, CKU_USER, p, n),
                vec![],
            );
        }
        rec(
            format!("Login({label}, bad user type)"),
            f.C_Login.unwrap()(s, 7, PIN.as_ptr() as *mut u8, PIN.len() as CK_ULONG),
            vec![],
        );
        for shape in [In::Null, In::NullCounted, In::Empty] {
            let (p, n) = input(shape, PIN.as_bytes());
            rec(
                format!("InitPIN({label}, {shape:?})"),
                f.C_InitPIN.unwrap()(s, p, n),
                vec![],
            );
            rec(
                format!("SetPIN({label}, old {shape:?})"),
                f.C_SetPIN.unwrap()(s, p, n, PIN.as_ptr() as *mut u8, PIN.len() as CK_ULONG),
                vec![],
            );
            rec(
                format!("SetPIN({label}, new {shape:?})"),
                f.C_SetPIN.unwrap()(s, PIN.as_ptr() as *mut u8, PIN.len() as CK_ULONG, p, n),
                vec![],
            );
        }
        rec(
            format!("GetFunctionStatus({label})"),
            f.C_GetFunctionStatus.unwrap()(s),
            vec![],
        );
        rec(
            format!("CancelFunction({label})"),
            f.C_CancelFunction.unwrap()(s),
            vec![],
        );
    }

    // Object management (v2.40 §5.7).
    let label = b"matrix".to_vec();
    for (slabel, s) in sessions(c) {
        for shape in INPUTS {
            let class = CKO_DATA.to_ne_bytes();
            let mut t = [
                attr(CKA_CLASS, &class),
                attr(CKA_TOKEN, &FALSE),
                attr(CKA_LABEL, &label),
            ];
            let (p, n) = template(shape, &mut t);
            let mut h: CK_OBJECT_HANDLE = 0;
            let rv = f.C_CreateObject.unwrap()(s, p, n, &mut h);
            rec(format!("CreateObject({slabel}, {shape:?})"), rv, vec![]);
            rec(
                format!("DestroyObject({slabel}, created)"),
                if rv == CKR_OK {
                    f.C_DestroyObject.unwrap()(s, h)
                } else {
                    NOT_RUN
                },
                vec![],
            );
            let (p, n) = template(shape, &mut t);
            rec(
                format!("CreateObject({slabel}, {shape:?}, NULL handle)"),
                f.C_CreateObject.unwrap()(s, p, n, null_mut()),
                vec![],
            );
            // One attribute's value in each shape (an empty label: NULL or not).
            let (vp, vn) = input(shape, &label);
            let mut t = [
                attr(CKA_CLASS, &class),
                attr(CKA_TOKEN, &FALSE),
                CK_ATTRIBUTE {
                    type_: CKA_LABEL,
                    pValue: vp as *mut _,
                    ulValueLen: vn,
                },
            ];
            let mut h: CK_OBJECT_HANDLE = 0;
            let rv = f.C_CreateObject.unwrap()(s, t.as_mut_ptr(), 3, &mut h);
            rec(
                format!("CreateObject({slabel}, label value {shape:?})"),
                rv,
                vec![],
            );
            let mut label_len = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: null_mut(),
                ulValueLen: 0,
            }];
            let got = if rv == CKR_OK {
                f.C_GetAttributeValue.unwrap()(s, h, label_len.as_mut_ptr(), 1)
            } else {
                NOT_RUN
            };
            rec(
                format!("GetAttributeValue({slabel}, label value {shape:?})"),
                got,
                ulong(label_len[0].ulValueLen),
            );
            rec(
                format!("DestroyObject({slabel}, label value {shape:?})"),
                if rv == CKR_OK {
                    f.C_DestroyObject.unwrap()(s, h)
                } else {
                    NOT_RUN
                },
                vec![],
            );
            for (olabel, o) in [("key", c.aes), ("bogus", BOGUS)] {
                let mut t = [attr(CKA_LABEL, &label)];
                let (p, n) = template(shape, &mut t);
                let mut h: CK_OBJECT_HANDLE = 0;
                let rv = f.C_CopyObject.unwrap()(s, o, p, n, &mut h);
                rec(
                    format!("CopyObject({slabel}, {olabel}, {shape:?})"),
                    rv,
                    vec![],
                );
                rec(
                    format!("DestroyObject({slabel}, copy)"),
                    if rv == CKR_OK {
                        f.C_DestroyObject.unwrap()(s, h)
                    } else {
                        NOT_RUN
                    },
                    vec![],
                );
                let (p, n) = template(shape, &mut t);
                rec(
                    format!("CopyObject({slabel}, {olabel}, {shape:?}, NULL handle)"),
                    f.C_CopyObject.unwrap()(s, o, p, n, null_mut()),
                    vec![],
                );
                let mut t = [attr(CKA_LABEL, &label)];
                let (p, n) = template(shape, &mut t);
                rec(
                    format!("SetAttributeValue({slabel}, {olabel}, {shape:?})"),
                    f.C_SetAttributeValue.unwrap()(s, o, p, n),
                    vec![],
                );
                // Queries: lengths only, then values into buffers.
                let mut t = [
                    CK_ATTRIBUTE {
                        type_: CKA_CLASS,
                        pValue: null_mut(),
                        ulValueLen: 0,
                    },
                    CK_ATTRIBUTE {
                        type_: CKA_LABEL,
                        pValue: null_mut(),
                        ulValueLen: 0,
                    },
                    CK_ATTRIBUTE {
                        type_: CKA_VALUE,
                        pValue: null_mut(),
                        ulValueLen: 0,
                    },
                ];
                let (p, n) = template(shape, &mut t);
                let rv = f.C_GetAttributeValue.unwrap()(s, o, p, n);
                let lens = t.iter().flat_map(|a| ulong(a.ulValueLen)).collect();
                rec(
                    format!("GetAttributeValue({slabel}, {olabel}, {shape:?}, lengths)"),
                    rv,
                    lens,
                );
                let mut class = [0u8; 8];
                let mut short = [0u8; 1];
                let mut t = [
                    attr(CKA_CLASS, &class),
                    attr(CKA_LABEL, &short),
                    attr(0x7fff_0001, &class),
                ];
                t[0].pValue = class.as_mut_ptr() as *mut _;
                t[1].pValue = short.as_mut_ptr() as *mut _;
                let (p, n) = template(shape, &mut t);
                let rv = f.C_GetAttributeValue.unwrap()(s, o, p, n);
                let lens: Vec<u8> = t.iter().flat_map(|a| ulong(a.ulValueLen)).collect();
                rec(
                    format!("GetAttributeValue({slabel}, {olabel}, {shape:?}, buffers)"),
                    rv,
                    [lens, class.to_vec()].concat(),
                );
            }
            rec(
                format!("GetObjectSize({slabel}, NULL)"),
                f.C_GetObjectSize.unwrap()(s, c.aes, null_mut()),
                vec![],
            );
            rec(
                format!("GetObjectSize({slabel}, bogus)"),
                f.C_GetObjectSize.unwrap()(s, BOGUS, &mut 0),
                vec![],
            );
            // Searches.
            let class = CKO_SECRET_KEY.to_ne_bytes();
            let mut t = [attr(CKA_CLASS, &class)];
            let (p, n) = template(shape, &mut t);
            rec(
                format!("FindObjectsInit({slabel}, {shape:?})"),
                f.C_FindObjectsInit.unwrap()(s, p, n),
                vec![],
            );
            rec(
                format!("FindObjectsInit({slabel}, {shape:?}, again)"),
                f.C_FindObjectsInit.unwrap()(s, p, n),
                vec![],
            );
            let mut found = [0 as CK_OBJECT_HANDLE; 4];
            let mut count: CK_ULONG = 99;
            rec(
                format!("FindObjects({slabel}, NULL handles)"),
                f.C_FindObjects.unwrap()(s, null_mut(), 4, &mut count),
                ulong(count),
            );
            rec(
                format!("FindObjects({slabel}, NULL count)"),
                f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), 4, null_mut()),
                vec![],
            );
            let mut count: CK_ULONG = 99;
            rec(
                format!("FindObjects({slabel}, max 0)"),
                f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), 0, &mut count),
                ulong(count),
            );
            let mut count: CK_ULONG = 99;
            rec(
                format!("FindObjects({slabel}, 4, after {shape:?})"),
                f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), 4, &mut count),
                ulong(count),
            );
            rec(
                format!("FindObjectsFinal({slabel})"),
                f.C_FindObjectsFinal.unwrap()(s),
                vec![],
            );
            rec(
                format!("FindObjectsFinal({slabel}, again)"),
                f.C_FindObjectsFinal.unwrap()(s),
                vec![],
            );
        }
        rec(
            format!("DestroyObject({slabel}, bogus)"),
            f.C_DestroyObject.unwrap()(s, BOGUS),
            vec![],
        );
    }

    // Cryptographic functions (v2.40 §5.8-§5.13): for each single-part and multi-part call,
    // with and without an operation initialised, every input and output shape.
    let mut iv = [7u8; 16];
    let cbc = CK_MECHANISM {
        mechanism: CKM_AES_CBC,
        pParameter: iv.as_mut_ptr() as *mut _,
        ulParameterLen: 16,
    };
    let ecb = CK_MECHANISM {
        mechanism: CKM_AES_ECB,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let sha = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let hmac = CK_MECHANISM {
        mechanism: CKM_SHA256_HMAC,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    type Init<'a> =
        Box<dyn Fn(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) -> CK_RV + 'a>;
    type Single =
        unsafe extern "C" fn(CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG) -> CK_RV;
    type Last = unsafe extern "C" fn(CK_SESSION_HANDLE, *mut u8, *mut CK_ULONG) -> CK_RV;
    type Part = unsafe extern "C" fn(CK_SESSION_HANDLE, *mut u8, CK_ULONG) -> CK_RV;
    let with_key =
        |init: CK_C_EncryptInit| -> Init { Box::new(move |s, m, k| init.unwrap()(s, m, k)) };
    let digest_init: Init = Box::new(|s, m, _| f.C_DigestInit.unwrap()(s, m));
    /// One family of cryptographic calls: its Init, single-part, multi-part and final calls.
    struct Family<'a> {
        name: &'static str,
        init: Init<'a>,
        mech: CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        single: Single,
        update: Option<Single>,
        part: Option<Part>,
        last: Last,
    }
    let families = [
        Family {
            name: "Encrypt(CBC)",
            init: with_key(f.C_EncryptInit),
            mech: cbc,
            key: c.aes,
            single: f.C_Encrypt.unwrap(),
            update: f.C_EncryptUpdate,
            part: None,
            last: f.C_EncryptFinal.unwrap(),
        },
        Family {
            name: "Decrypt(ECB)",
            init: with_key(f.C_DecryptInit),
            mech: ecb,
            key: c.aes,
            single: f.C_Decrypt.unwrap(),
            update: f.C_DecryptUpdate,
            part: None,
            last: f.C_DecryptFinal.unwrap(),
        },
        Family {
            name: "Digest(SHA256)",
            init: digest_init,
            mech: sha,
            key: 0,
            single: f.C_Digest.unwrap(),
            update: None,
            part: f.C_DigestUpdate,
            last: f.C_DigestFinal.unwrap(),
        },
        Family {
            name: "Sign(HMAC)",
            init: with_key(f.C_SignInit),
            mech: hmac,
            key: c.hmac,
            single: f.C_Sign.unwrap(),
            update: None,
            part: f.C_SignUpdate,
            last: f.C_SignFinal.unwrap(),
        },
    ];
    for fam in &families {
        for (slabel, s) in sessions(c) {
            let mut mech = fam.mech;
            let name = fam.name;
            rec(
                format!("{name} Init({slabel}, NULL mechanism)"),
                (fam.init)(s, null_mut(), fam.key),
                vec![],
            );
            for shape in INPUTS {
                let mut m = fam.mech;
                let (pp, pn) = input(shape, &iv);
                m.pParameter = pp as *mut _;
                m.ulParameterLen = pn;
                rec(
                    format!("{name} Init({slabel}, parameter {shape:?})"),
                    (fam.init)(s, &mut m, fam.key),
                    vec![],
                );
                let mut big = [0u8; 4096];
                let mut n2: CK_ULONG = 4096;
                rec(
                    format!("{name}({slabel}, parameter {shape:?}, after)"),
                    (fam.single)(s, DATA.as_ptr() as *mut u8, 16, big.as_mut_ptr(), &mut n2),
                    vec![],
                );
            }
            rec(
                format!("{name} Init({slabel}, bogus key)"),
                (fam.init)(s, &mut mech, BOGUS),
                vec![],
            );
            for data in INPUTS {
                for shape in OUTPUTS {
                    // Single-part, without and with an operation.
                    let (p, n) = input(data, &DATA);
                    let (rv, o) = output(shape, |b, l| (fam.single)(s, p, n, b, l));
                    rec(
                        format!("{name}({slabel}, no init, {data:?}, {shape:?})"),
                        rv,
                        o,
                    );
                    let rv = (fam.init)(s, &mut mech, fam.key);
                    rec(format!("{name} Init({slabel})"), rv, vec![]);
                    let (rv, o) = output(shape, |b, l| (fam.single)(s, p, n, b, l));
                    rec(format!("{name}({slabel}, {data:?}, {shape:?})"), rv, o);
                    // Whatever is left of the operation, ended with a valid call.
                    let mut big = [0u8; 4096];
                    let mut n2: CK_ULONG = 4096;
                    let rv =
                        (fam.single)(s, DATA.as_ptr() as *mut u8, 16, big.as_mut_ptr(), &mut n2);
                    rec(format!("{name}({slabel}, after)"), rv, vec![]);

                    // Multi-part: update with this shape, then final with this shape.
                    let rv = (fam.init)(s, &mut mech, fam.key);
                    rec(format!("{name} Init({slabel}, multi)"), rv, vec![]);
                    if let Some(update) = fam.update {
                        let (rv, o) = output(shape, |b, l| update(s, p, n, b, l));
                        rec(
                            format!("{name} Update({slabel}, {data:?}, {shape:?})"),
                            rv,
                            o,
                        );
                    }
                    if let Some(part) = fam.part {
                        rec(
                            format!("{name} Update({slabel}, {data:?})"),
                            part(s, p, n),
                            vec![],
                        );
                    }
                    let (rv, o) = output(shape, |b, l| (fam.last)(s, b, l));
                    rec(format!("{name} Final({slabel}, {shape:?})"), rv, o);
                    let mut n2: CK_ULONG = 4096;
                    let rv = (fam.last)(s, big.as_mut_ptr(), &mut n2);
                    rec(format!("{name} Final({slabel}, after)"), rv, vec![]);
                }
            }
        }
    }
    for (slabel, s) in sessions(c) {
        // Verify (v2.40 §5.11): the signature's shapes.
        let mut mech = hmac;
        let mut sig = [0u8; 32];
        let mut n: CK_ULONG = 32;
        f.C_SignInit.unwrap()(s, &mut mech, c.hmac);
        f.C_Sign.unwrap()(s, DATA.as_ptr() as *mut u8, 16, sig.as_mut_ptr(), &mut n);
        for data in INPUTS {
            for signature in INPUTS {
                let rv = f.C_VerifyInit.unwrap()(s, &mut mech, c.hmac);
                rec(format!("VerifyInit({slabel})"), rv, vec![]);
                let (p, pn) = input(data, &DATA);
                let (q, qn) = input(signature, &sig);
                rec(
                    format!("Verify({slabel}, {data:?}, signature {signature:?})"),
                    f.C_Verify.unwrap()(s, p, pn, q, qn),
                    vec![],
                );
                let rv = f.C_VerifyInit.unwrap()(s, &mut mech, c.hmac);
                rec(format!("VerifyInit({slabel}, multi)"), rv, vec![]);
                rec(
                    format!("VerifyUpdate({slabel}, {data:?})"),
                    f.C_VerifyUpdate.unwrap()(s, p, pn),
                    vec![],
                );
                rec(
                    format!("VerifyFinal({slabel}, signature {signature:?})"),
                    f.C_VerifyFinal.unwrap()(s, q, qn),
                    vec![],
                );
                f.C_VerifyFinal.unwrap()(s, sig.as_mut_ptr(), 32);
            }
        }
        rec(
            format!("DigestKey({slabel}, no init)"),
            f.C_DigestKey.unwrap()(s, c.aes),
            vec![],
        );
        let mut mech = sha;
        f.C_DigestInit.unwrap()(s, &mut mech);
        rec(
            format!("DigestKey({slabel}, bogus)"),
            f.C_DigestKey.unwrap()(s, BOGUS),
            vec![],
        );
        rec(
            format!("DigestKey({slabel})"),
            f.C_DigestKey.unwrap()(s, c.aes),
            vec![],
        );
        let mut big = [0u8; 64];
        let mut n: CK_ULONG = 64;
        f.C_DigestFinal.unwrap()(s, big.as_mut_ptr(), &mut n);
        // Recover and dual-function calls SoftHSM2 does not offer: the answer is its own.
        let mut mech = hmac;
        rec(
            format!("SignRecoverInit({slabel})"),
            f.C_SignRecoverInit.unwrap()(s, &mut mech, c.hmac),
            vec![],
        );
        rec(
            format!("VerifyRecoverInit({slabel})"),
            f.C_VerifyRecoverInit.unwrap()(s, &mut mech, c.hmac),
            vec![],
        );
        for data in [In::Null, In::Valid] {
            for shape in OUTPUTS {
                let (p, pn) = input(data, &DATA);
                let dual: [(&str, Single); 6] = [
                    ("SignRecover", f.C_SignRecover.unwrap()),
                    ("VerifyRecover", f.C_VerifyRecover.unwrap()),
                    ("DigestEncryptUpdate", f.C_DigestEncryptUpdate.unwrap()),
                    ("DecryptDigestUpdate", f.C_DecryptDigestUpdate.unwrap()),
                    ("SignEncryptUpdate", f.C_SignEncryptUpdate.unwrap()),
                    ("DecryptVerifyUpdate", f.C_DecryptVerifyUpdate.unwrap()),
                ];
                for (name, call) in dual {
                    let (rv, o) = output(shape, |b, l| call(s, p, pn, b, l));
                    rec(format!("{name}({slabel}, {data:?}, {shape:?})"), rv, o);
                }
            }
        }

        // Key management (v2.40 §5.14).
        let len16 = (16 as CK_ULONG).to_ne_bytes();
        let mut gen = CK_MECHANISM {
            mechanism: CKM_AES_KEY_GEN,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        for shape in INPUTS {
            let mut t = [
                attr(CKA_VALUE_LEN, &len16),
                attr(CKA_TOKEN, &FALSE),
                attr(CKA_EXTRACTABLE, &TRUE),
            ];
            let (p, n) = template(shape, &mut t);
            let mut h: CK_OBJECT_HANDLE = 0;
            let rv = f.C_GenerateKey.unwrap()(s, &mut gen, p, n, &mut h);
            rec(format!("GenerateKey({slabel}, {shape:?})"), rv, vec![]);
            if rv == CKR_OK {
                f.C_DestroyObject.unwrap()(s, h);
            }
            let (p, n) = template(shape, &mut t);
            rec(
                format!("GenerateKey({slabel}, {shape:?}, NULL handle)"),
                f.C_GenerateKey.unwrap()(s, &mut gen, p, n, null_mut()),
                vec![],
            );
            rec(
                format!("GenerateKey({slabel}, NULL mechanism)"),
                f.C_GenerateKey.unwrap()(s, null_mut(), p, n, &mut h),
                vec![],
            );
            let mut ecgen = CK_MECHANISM {
                mechanism: CKM_EC_KEY_PAIR_GEN,
                pParameter: null_mut(),
                ulParameterLen: 0,
            };
            // P-256's OID.
            let params = [0x06u8, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
            let mut public = [attr(CKA_EC_PARAMS, &params), attr(CKA_TOKEN, &FALSE)];
            let mut private = [attr(CKA_TOKEN, &FALSE), attr(CKA_SIGN, &TRUE)];
            for other in [In::Null, In::Valid] {
                let (pp, pn) = template(shape, &mut public);
                let (qp, qn) = template(other, &mut private);
                let (mut a, mut b) = (0, 0);
                let rv =
                    f.C_GenerateKeyPair.unwrap()(s, &mut ecgen, pp, pn, qp, qn, &mut a, &mut b);
                rec(
                    format!("GenerateKeyPair({slabel}, public {shape:?}, private {other:?})"),
                    rv,
                    vec![],
                );
                if rv == CKR_OK {
                    f.C_DestroyObject.unwrap()(s, a);
                    f.C_DestroyObject.unwrap()(s, b);
                }
                let (pp, pn) = template(shape, &mut public);
                let (qp, qn) = template(other, &mut private);
                rec(
                    format!("GenerateKeyPair({slabel}, {shape:?}, {other:?}, NULL public handle)"),
                    f.C_GenerateKeyPair.unwrap()(s, &mut ecgen, pp, pn, qp, qn, null_mut(), &mut b),
                    vec![],
                );
                rec(
                    format!("GenerateKeyPair({slabel}, {shape:?}, {other:?}, NULL private handle)"),
                    f.C_GenerateKeyPair.unwrap()(s, &mut ecgen, pp, pn, qp, qn, &mut a, null_mut()),
                    vec![],
                );
            }
        }
        let mut wrap = CK_MECHANISM {
            mechanism: CKM_AES_KEY_WRAP,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        for shape in OUTPUTS {
            for (klabel, key) in [("key", c.aes), ("bogus", BOGUS)] {
                let (rv, o) = output(shape, |b, l| {
                    f.C_WrapKey.unwrap()(s, &mut wrap, c.aes, key, b, l)
                });
                rec(format!("WrapKey({slabel}, {klabel}, {shape:?})"), rv, o);
            }
        }
        rec(
            format!("WrapKey({slabel}, NULL mechanism)"),
            f.C_WrapKey.unwrap()(s, null_mut(), c.aes, c.aes, null_mut(), &mut 0),
            vec![],
        );
        let mut wrapped = [0u8; 24];
        let mut wn: CK_ULONG = 24;
        f.C_WrapKey.unwrap()(s, &mut wrap, c.aes, c.aes, wrapped.as_mut_ptr(), &mut wn);
        let class = CKO_SECRET_KEY.to_ne_bytes();
        let kt = CKK_AES.to_ne_bytes();
        for data in INPUTS {
            for shape in INPUTS {
                let (p, n) = input(data, &wrapped);
                let mut t = [
                    attr(CKA_CLASS, &class),
                    attr(CKA_KEY_TYPE, &kt),
                    attr(CKA_TOKEN, &FALSE),
                ];
                let (tp, tn) = template(shape, &mut t);
                let mut h: CK_OBJECT_HANDLE = 0;
                let rv = f.C_UnwrapKey.unwrap()(s, &mut wrap, c.aes, p, n, tp, tn, &mut h);
                rec(
                    format!("UnwrapKey({slabel}, wrapped {data:?}, template {shape:?})"),
                    rv,
                    vec![],
                );
                if rv == CKR_OK {
                    f.C_DestroyObject.unwrap()(s, h);
                }
            }
        }
        rec(
            format!("UnwrapKey({slabel}, NULL handle)"),
            f.C_UnwrapKey.unwrap()(
                s,
                &mut wrap,
                c.aes,
                wrapped.as_mut_ptr(),
                wn,
                null_mut(),
                0,
                null_mut(),
            ),
            vec![],
        );
        let mut derive_params = CK_KEY_DERIVATION_STRING_DATA {
            pData: DATA.as_ptr() as *mut u8,
            ulLen: 16,
        };
        let mut derive = CK_MECHANISM {
            mechanism: CKM_AES_ECB_ENCRYPT_DATA,
            pParameter: &mut derive_params as *mut _ as *mut _,
            ulParameterLen: std::mem::size_of::<CK_KEY_DERIVATION_STRING_DATA>() as CK_ULONG,
        };
        for shape in INPUTS {
            let mut t = [
                attr(CKA_CLASS, &class),
                attr(CKA_KEY_TYPE, &kt),
                attr(CKA_TOKEN, &FALSE),
            ];
            let (tp, tn) = template(shape, &mut t);
            let mut h: CK_OBJECT_HANDLE = 0;
            let rv = f.C_DeriveKey.unwrap()(s, &mut derive, c.aes, tp, tn, &mut h);
            rec(format!("DeriveKey({slabel}, {shape:?})"), rv, vec![]);
            if rv == CKR_OK {
                f.C_DestroyObject.unwrap()(s, h);
            }
            let (tp, tn) = template(shape, &mut t);
            rec(
                format!("DeriveKey({slabel}, {shape:?}, NULL handle)"),
                f.C_DeriveKey.unwrap()(s, &mut derive, c.aes, tp, tn, null_mut()),
                vec![],
            );
        }

        // Random numbers (v2.40 §5.15).
        for shape in INPUTS {
            let (p, n) = input(shape, &DATA);
            rec(
                format!("SeedRandom({slabel}, {shape:?})"),
                f.C_SeedRandom.unwrap()(s, p, n),
                vec![],
            );
            let mut buf = [0u8; 16];
            let (p, n) = match shape {
                In::Null => (null_mut(), 0),
                In::NullCounted => (null_mut(), 16),
                In::Empty => (buf.as_mut_ptr(), 0),
                In::Valid => (buf.as_mut_ptr(), 16),
            };
            rec(
                format!("GenerateRandom({slabel}, {shape:?})"),
                f.C_GenerateRandom.unwrap()(s, p, n),
                vec![],
            );
        }
    }
    rec("Logout(bogus)".into(), f.C_Logout.unwrap()(BOGUS), vec![]);
    out
}

/// Sets up the handles the cases need on an initialised module: a logged-in read-write
/// session, an AES key and an HMAC key (session objects).
///
/// # Safety
/// `m` must be initialised.
pub unsafe fn context(m: &RawModule) -> Ctx {
    let f = m.f();
    let slot = m.first_slot();
    let session = m.open_rw(slot);
    assert_eq!(m.login(session, PIN), CKR_OK);
    let len16 = (16 as CK_ULONG).to_ne_bytes();
    let len32 = (32 as CK_ULONG).to_ne_bytes();
    let key = |mech: CK_MECHANISM_TYPE, t: &mut [CK_ATTRIBUTE]| {
        let mut m = CK_MECHANISM {
            mechanism: mech,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        let mut h = 0;
        let rv =
            f.C_GenerateKey.unwrap()(session, &mut m, t.as_mut_ptr(), t.len() as CK_ULONG, &mut h);
        assert_eq!(rv, CKR_OK, "key generation {mech:#x}");
        h
    };
    let aes = key(
        CKM_AES_KEY_GEN,
        &mut [
            attr(CKA_VALUE_LEN, &len16),
            attr(CKA_TOKEN, &FALSE),
            attr(CKA_ENCRYPT, &TRUE),
            attr(CKA_DECRYPT, &TRUE),
            attr(CKA_WRAP, &TRUE),
            attr(CKA_UNWRAP, &TRUE),
            attr(CKA_DERIVE, &TRUE),
            attr(CKA_EXTRACTABLE, &TRUE),
            attr(CKA_SENSITIVE, &FALSE),
        ],
    );
    let hmac = key(
        CKM_GENERIC_SECRET_KEY_GEN,
        &mut [
            attr(CKA_VALUE_LEN, &len32),
            attr(CKA_TOKEN, &FALSE),
            attr(CKA_SIGN, &TRUE),
            attr(CKA_VERIFY, &TRUE),
        ],
    );
    Ctx {
        slot,
        session,
        aes,
        hmac,
    }
}

/// Handles for a module that is not initialised: nothing is valid then.
pub fn no_context() -> Ctx {
    Ctx {
        slot: 0,
        session: 1,
        aes: 1,
        hmac: 2,
    }
}

/// The whole matrix on `m` (loaded, not initialised; `init` initialises it): before
/// C_Initialize, initialised, and after C_Finalize.
///
/// # Safety
/// `m` must be a loaded PKCS#11 module.
pub unsafe fn run(m: &RawModule, init: impl FnOnce() -> CK_RV) -> Vec<Outcome> {
    let mut all = cases(m, &no_context(), "before C_Initialize");
    let rv = init();
    all.push(("C_Initialize".into(), rv, vec![]));
    let c = context(m);
    all.extend(cases(m, &c, "initialised"));
    all.push((
        "C_Finalize".into(),
        m.f().C_Finalize.unwrap()(null_mut()),
        vec![],
    ));
    all.extend(cases(m, &c, "after C_Finalize"));
    all
}
