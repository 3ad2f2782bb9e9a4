//! A small PKCS#11 3.2 client of our own (issue 27): post-quantum keys and the calls 3.2 adds,
//! run on a module loaded directly and on the shim in front of the same module, each step
//! recorded as its function, return value and what may be compared across two runs with
//! different keys (lengths, whether a verification or a decapsulated key matched), never
//! random bytes.
//!
//! ML-DSA (FIPS 204) and ML-KEM (FIPS 203) as PKCS#11 3.2 defines them: CKM_ML_DSA_KEY_PAIR_GEN
//! and CKM_ML_KEM_KEY_PAIR_GEN with CKA_PARAMETER_SET, CKM_ML_DSA with an optional
//! CK_SIGN_ADDITIONAL_CONTEXT, CKM_ML_KEM with C_EncapsulateKey and C_DecapsulateKey.

use std::ffi::c_void;
use std::mem::size_of;
use std::path::Path;
use std::ptr;

use cryptoki_sys::*;

use crate::parity::{Report, Step};
use crate::raw::RawModule;
use crate::PIN;

/// An attribute pointing at `v`.
pub fn attr<T>(ty: CK_ATTRIBUTE_TYPE, v: &T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v as *const T as *mut c_void,
        ulValueLen: size_of::<T>() as CK_ULONG,
    }
}

/// A mechanism without a parameter.
pub fn mech(ty: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: ty,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// A mechanism whose parameter is `p`.
fn mech_with<T>(ty: CK_MECHANISM_TYPE, p: &mut T) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: ty,
        pParameter: p as *mut T as *mut c_void,
        ulParameterLen: size_of::<T>() as CK_ULONG,
    }
}

/// One byte that says whether something held, for a step's record.
fn held(b: bool) -> Vec<u8> {
    vec![u8::from(b)]
}

/// A step's return value for a property that must hold on either side: CKR_OK when it held,
/// CKR_GENERAL_ERROR when not (so that a run that differs shows as a failed step).
fn holds(b: bool) -> CK_RV {
    if b {
        CKR_OK
    } else {
        CKR_GENERAL_ERROR
    }
}

/// A length, for a step's record.
fn length(n: CK_ULONG) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

struct Run<'a> {
    f: &'a CK_FUNCTION_LIST_3_2,
    steps: Vec<Step>,
}

impl Run<'_> {
    fn step(&mut self, name: &str, rv: CK_RV, what: Vec<u8>) -> CK_RV {
        self.steps.push((name.to_string(), rv, what));
        rv
    }

    /// C_Sign of `data` with a size query first; the signature, or empty.
    unsafe fn sign(
        &mut self,
        s: CK_SESSION_HANDLE,
        m: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
        label: &str,
    ) -> Vec<u8> {
        let f = self.f;
        let rv = f.C_SignInit.unwrap()(s, m, key);
        self.step(&format!("{label} C_SignInit"), rv, vec![]);
        let mut n = 0;
        let d = data.as_ptr() as *mut u8;
        let dn = data.len() as CK_ULONG;
        let rv = f.C_Sign.unwrap()(s, d, dn, ptr::null_mut(), &mut n);
        self.step(&format!("{label} C_Sign size"), rv, length(n));
        let mut short = vec![0u8; 16];
        let mut sn = short.len() as CK_ULONG;
        let rv = f.C_Sign.unwrap()(s, d, dn, short.as_mut_ptr(), &mut sn);
        self.step(&format!("{label} C_Sign short"), rv, length(sn));
        let mut sig = vec![0u8; n as usize];
        let rv = f.C_Sign.unwrap()(s, d, dn, sig.as_mut_ptr(), &mut n);
        self.step(&format!("{label} C_Sign"), rv, length(n));
        sig.truncate(n as usize);
        sig
    }

    /// C_VerifySignatureInit and C_VerifySignature (single part), or the steps with
    /// `parts` updates and C_VerifySignatureFinal.
    #[allow(clippy::too_many_arguments)]
    unsafe fn verify_signature(
        &mut self,
        s: CK_SESSION_HANDLE,
        m: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        sig: &[u8],
        data: &[u8],
        parts: usize,
        label: &str,
    ) {
        let f = self.f;
        let rv = f.C_VerifySignatureInit.unwrap()(
            s,
            m,
            key,
            sig.as_ptr() as *mut u8,
            sig.len() as CK_ULONG,
        );
        self.step(&format!("{label} C_VerifySignatureInit"), rv, vec![]);
        if parts == 0 {
            let rv =
                f.C_VerifySignature.unwrap()(s, data.as_ptr() as *mut u8, data.len() as CK_ULONG);
            self.step(&format!("{label} C_VerifySignature"), rv, vec![]);
            return;
        }
        for chunk in data.chunks(data.len().div_ceil(parts)) {
            let rv = f.C_VerifySignatureUpdate.unwrap()(
                s,
                chunk.as_ptr() as *mut u8,
                chunk.len() as CK_ULONG,
            );
            self.step(&format!("{label} C_VerifySignatureUpdate"), rv, vec![]);
        }
        let rv = f.C_VerifySignatureFinal.unwrap()(s);
        self.step(&format!("{label} C_VerifySignatureFinal"), rv, vec![]);
    }

    /// C_VerifyInit and C_Verify.
    unsafe fn verify(
        &mut self,
        s: CK_SESSION_HANDLE,
        m: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        sig: &[u8],
        data: &[u8],
        label: &str,
    ) {
        let f = self.f;
        let rv = f.C_VerifyInit.unwrap()(s, m, key);
        self.step(&format!("{label} C_VerifyInit"), rv, vec![]);
        let rv = f.C_Verify.unwrap()(
            s,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            sig.as_ptr() as *mut u8,
            sig.len() as CK_ULONG,
        );
        self.step(&format!("{label} C_Verify"), rv, vec![]);
    }

    /// A session key pair of `gen` with CKA_PARAMETER_SET `set`.
    unsafe fn key_pair(
        &mut self,
        s: CK_SESSION_HANDLE,
        gen: CK_MECHANISM_TYPE,
        set: CK_ULONG,
        usage: (CK_ATTRIBUTE_TYPE, CK_ATTRIBUTE_TYPE),
        label: &str,
    ) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
        let (t, f) = (CK_TRUE, CK_FALSE);
        let mut public = [
            attr(CKA_TOKEN, &f),
            attr(CKA_PARAMETER_SET, &set),
            attr(usage.0, &t),
        ];
        let mut private = [
            attr(CKA_TOKEN, &f),
            attr(CKA_PRIVATE, &t),
            attr(CKA_SENSITIVE, &t),
            attr(usage.1, &t),
        ];
        let (mut pubk, mut privk) = (0, 0);
        let mut m = mech(gen);
        let rv = self.f.C_GenerateKeyPair.unwrap()(
            s,
            &mut m,
            public.as_mut_ptr(),
            public.len() as CK_ULONG,
            private.as_mut_ptr(),
            private.len() as CK_ULONG,
            &mut pubk,
            &mut privk,
        );
        self.step(&format!("{label} C_GenerateKeyPair"), rv, vec![]);
        (pubk, privk)
    }

    /// A secret key's CKA_VALUE.
    unsafe fn value(&mut self, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Vec<u8> {
        let mut a = [CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        }];
        if self.f.C_GetAttributeValue.unwrap()(s, key, a.as_mut_ptr(), 1) != CKR_OK {
            return Vec::new();
        }
        let mut v = vec![0u8; a[0].ulValueLen as usize];
        a[0].pValue = v.as_mut_ptr() as *mut c_void;
        let rv = self.f.C_GetAttributeValue.unwrap()(s, key, a.as_mut_ptr(), 1);
        if rv != CKR_OK {
            return Vec::new();
        }
        v
    }
}

/// The 3.2 scenario on `m`'s token in `slot`, logged in with the user PIN.
///
/// # Safety
/// `m` must be an initialised module offering the 3.2 interface.
pub unsafe fn scenario(m: &RawModule, slot: CK_SLOT_ID) -> Vec<Step> {
    let mut run = Run {
        f: m.f32().expect("the module offers the 3.2 interface"),
        steps: Vec::new(),
    };
    let f = run.f;
    let versions = m.interface_versions();
    run.step(
        "C_GetInterfaceList",
        CKR_OK,
        versions.iter().flat_map(|(a, b)| [*a, *b]).collect(),
    );
    let s = m.open_rw(slot);
    run.step("C_Login", m.login(s, PIN), vec![]);
    let data = b"a Fabric proposal to endorse, signed with a post-quantum key".to_vec();

    // Mechanism information: what the token says it can do with each.
    for (name, ty) in [
        ("CKM_ML_DSA", CKM_ML_DSA),
        ("CKM_ML_KEM", CKM_ML_KEM),
        ("CKM_ML_DSA_KEY_PAIR_GEN", CKM_ML_DSA_KEY_PAIR_GEN),
    ] {
        let mut info = CK_MECHANISM_INFO::default();
        let rv = f.C_GetMechanismInfo.unwrap()(slot, ty, &mut info);
        run.step(
            &format!("{name} C_GetMechanismInfo"),
            rv,
            [info.ulMinKeySize, info.ulMaxKeySize, info.flags]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        );
    }

    // ML-DSA-65: signature, verification both ways, the 3.2 verification calls.
    let (public, private) = run.key_pair(
        s,
        CKM_ML_DSA_KEY_PAIR_GEN,
        CKP_ML_DSA_65,
        (CKA_VERIFY, CKA_SIGN),
        "ML-DSA-65",
    );
    let mut pure = mech(CKM_ML_DSA);
    let sig = run.sign(s, &mut pure, private, &data, "ML-DSA");
    run.verify(s, &mut pure, public, &sig, &data, "ML-DSA");
    let mut bad = sig.clone();
    if let Some(b) = bad.get_mut(10) {
        *b ^= 1;
    }
    run.verify(s, &mut pure, public, &bad, &data, "ML-DSA tampered");
    run.verify_signature(s, &mut pure, public, &sig, &data, 0, "ML-DSA");
    run.verify_signature(s, &mut pure, public, &sig, &data, 3, "ML-DSA parts");
    run.verify_signature(s, &mut pure, public, &bad, &data, 0, "ML-DSA tampered");
    run.verify_signature(s, &mut pure, public, &sig, b"other data", 2, "ML-DSA other");
    let rv = f.C_VerifySignatureFinal.unwrap()(s);
    run.step("C_VerifySignatureFinal without init", rv, vec![]);
    let rv = f.C_VerifySignatureInit.unwrap()(s, &mut pure, public, ptr::null_mut(), 0);
    run.step("C_VerifySignatureInit NULL signature", rv, vec![]);
    let _ = f.C_VerifySignature.unwrap()(s, data.as_ptr() as *mut u8, data.len() as CK_ULONG);

    // With a context string (CK_SIGN_ADDITIONAL_CONTEXT): the same context verifies,
    // another does not; deterministic signing gives the same signature twice.
    let mut context = *b"fabric-channel";
    let mut ctx = CK_SIGN_ADDITIONAL_CONTEXT {
        hedgeVariant: CKH_DETERMINISTIC_REQUIRED,
        pContext: context.as_mut_ptr(),
        ulContextLen: context.len() as CK_ULONG,
    };
    let mut with_ctx = mech_with(CKM_ML_DSA, &mut ctx);
    let first = run.sign(s, &mut with_ctx, private, &data, "ML-DSA context");
    let second = run.sign(s, &mut with_ctx, private, &data, "ML-DSA context again");
    let same = !first.is_empty() && first == second;
    run.step("ML-DSA deterministic", holds(same), vec![]);
    run.verify(s, &mut with_ctx, public, &first, &data, "ML-DSA context");
    run.verify(
        s,
        &mut pure,
        public,
        &first,
        &data,
        "ML-DSA without the context",
    );
    let mut other = *b"another-channel";
    let mut other_ctx = CK_SIGN_ADDITIONAL_CONTEXT {
        hedgeVariant: CKH_HEDGE_PREFERRED,
        pContext: other.as_mut_ptr(),
        ulContextLen: other.len() as CK_ULONG,
    };
    let mut with_other = mech_with(CKM_ML_DSA, &mut other_ctx);
    run.verify_signature(
        s,
        &mut with_other,
        public,
        &first,
        &data,
        0,
        "ML-DSA other context",
    );
    let mut bad_len = CK_MECHANISM {
        mechanism: CKM_ML_DSA,
        pParameter: &mut ctx as *mut _ as *mut c_void,
        ulParameterLen: 3,
    };
    let rv = f.C_SignInit.unwrap()(s, &mut bad_len, private);
    run.step("ML-DSA parameter of a wrong length C_SignInit", rv, vec![]);

    // HashML-DSA (CK_HASH_SIGN_ADDITIONAL_CONTEXT: the pre-hash named in the parameter).
    let mut hash_ctx = CK_HASH_SIGN_ADDITIONAL_CONTEXT {
        hedgeVariant: CKH_HEDGE_PREFERRED,
        pContext: context.as_mut_ptr(),
        ulContextLen: context.len() as CK_ULONG,
        hash: CKM_SHA256,
    };
    let mut hash_ml_dsa = mech_with(CKM_HASH_ML_DSA, &mut hash_ctx);
    let digest = [0x5au8; 32];
    let sig = run.sign(s, &mut hash_ml_dsa, private, &digest, "HashML-DSA SHA-256");
    run.verify_signature(s, &mut hash_ml_dsa, public, &sig, &digest, 0, "HashML-DSA");
    let mut prehashed = mech_with(CKM_HASH_ML_DSA_SHA256, &mut ctx);
    let sig = run.sign(s, &mut prehashed, private, &data, "ML-DSA with SHA-256");
    run.verify(
        s,
        &mut prehashed,
        public,
        &sig,
        &data,
        "ML-DSA with SHA-256",
    );

    // SLH-DSA-SHA2-128f (FIPS 205) with a context.
    let (public, private) = run.key_pair(
        s,
        CKM_SLH_DSA_KEY_PAIR_GEN,
        CKP_SLH_DSA_SHA2_128F,
        (CKA_VERIFY, CKA_SIGN),
        "SLH-DSA-SHA2-128f",
    );
    let mut slh = mech_with(CKM_SLH_DSA, &mut ctx);
    let sig = run.sign(s, &mut slh, private, &data, "SLH-DSA");
    run.verify_signature(s, &mut slh, public, &sig, &data, 2, "SLH-DSA");
    run.verify(s, &mut slh, public, &sig, b"other", "SLH-DSA other data");

    // ML-KEM-768: encapsulation with the two-call convention, decapsulation, the same secret.
    let (public, private) = run.key_pair(
        s,
        CKM_ML_KEM_KEY_PAIR_GEN,
        CKP_ML_KEM_768,
        (CKA_ENCAPSULATE, CKA_DECAPSULATE),
        "ML-KEM-768",
    );
    let (class, kind, len) = (CKO_SECRET_KEY, CKK_GENERIC_SECRET, 32 as CK_ULONG);
    let (t, fl) = (CK_TRUE, CK_FALSE);
    let mut template = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kind),
        attr(CKA_VALUE_LEN, &len),
        attr(CKA_TOKEN, &fl),
        attr(CKA_SENSITIVE, &fl),
        attr(CKA_EXTRACTABLE, &t),
    ];
    let tn = template.len() as CK_ULONG;
    let mut kem = mech(CKM_ML_KEM);
    // C_EncapsulateKey with `key` and a buffer of `cap` bytes (`None`: a size query); the
    // return value, the length and the key.
    let mut encapsulate = |key, cap: Option<usize>| {
        let mut buf = vec![0u8; cap.unwrap_or(0)];
        let mut n = buf.len() as CK_ULONG;
        let out = cap.map_or(ptr::null_mut(), |_| buf.as_mut_ptr());
        let mut made = 0;
        let t = template.as_mut_ptr();
        let rv = f.C_EncapsulateKey.unwrap()(s, &mut kem, key, t, tn, out, &mut n, &mut made);
        buf.truncate(n as usize);
        (rv, n, buf, made)
    };
    let (rv, n, _, _) = encapsulate(public, None);
    run.step("ML-KEM C_EncapsulateKey size", rv, length(n));
    let (rv, short, _, _) = encapsulate(public, Some(8));
    run.step("ML-KEM C_EncapsulateKey short", rv, length(short));
    let (rv, n, mut ct, sent) = encapsulate(public, Some(n as usize));
    run.step("ML-KEM C_EncapsulateKey", rv, length(n));
    let (rv, _, _, _) = encapsulate(private, None);
    run.step("ML-KEM with the private key C_EncapsulateKey", rv, vec![]);
    // C_DecapsulateKey of the first `len` bytes of `ct`; the return value and the key.
    let mut kem = mech(CKM_ML_KEM);
    let mut decapsulate = |ct: &mut [u8], len: usize| {
        let mut key = 0;
        let (t, c) = (template.as_mut_ptr(), ct.as_mut_ptr());
        let rv = f.C_DecapsulateKey.unwrap()(s, &mut kem, private, t, tn, c, len as _, &mut key);
        (rv, key)
    };
    let (rv, received) = decapsulate(&mut ct, n as usize);
    run.step("ML-KEM C_DecapsulateKey", rv, vec![]);
    let (a, b) = (run.value(s, sent), run.value(s, received));
    run.step(
        "ML-KEM the same secret",
        holds(!a.is_empty() && a == b),
        vec![],
    );
    run.step("ML-KEM secret length", CKR_OK, length(a.len() as CK_ULONG));
    // A tampered ciphertext: ML-KEM's implicit rejection gives another secret, not an error.
    ct[5] ^= 1;
    let (rv, rejected) = decapsulate(&mut ct, n as usize);
    run.step("ML-KEM tampered C_DecapsulateKey", rv, vec![]);
    let c = run.value(s, rejected);
    run.step(
        "ML-KEM tampered secret differs",
        holds(!c.is_empty() && c != a),
        vec![],
    );
    let (rv, _) = decapsulate(&mut ct, 7);
    run.step("ML-KEM short ciphertext C_DecapsulateKey", rv, vec![]);

    // The rest of what 3.2 adds.
    let mut flags = 0xdead;
    let rv = f.C_GetSessionValidationFlags.unwrap()(s, CKS_LAST_VALIDATION_OK, &mut flags);
    run.step("C_GetSessionValidationFlags", rv, length(flags));
    let rv = f.C_GetSessionValidationFlags.unwrap()(0x7777, CKS_LAST_VALIDATION_OK, &mut flags);
    run.step("C_GetSessionValidationFlags bad session", rv, vec![]);
    let mut result = CK_ASYNC_DATA {
        ulVersion: 0,
        pValue: ptr::null_mut(),
        ulValue: 0,
        hObject: 0,
        hAdditionalObject: 0,
    };
    let name = c"C_Sign".as_ptr() as *mut u8;
    let rv = f.C_AsyncComplete.unwrap()(s, name, &mut result);
    run.step("C_AsyncComplete", rv, vec![]);
    let mut id = 0;
    let rv = f.C_AsyncGetID.unwrap()(s, name, &mut id);
    run.step("C_AsyncGetID", rv, vec![]);
    let mut buf = [0u8; 16];
    let rv = f.C_AsyncJoin.unwrap()(s, name, 1, buf.as_mut_ptr(), buf.len() as CK_ULONG);
    run.step("C_AsyncJoin", rv, vec![]);
    let mut wrapped = [0u8; 64];
    let mut wn = wrapped.len() as CK_ULONG;
    let mut gcm = mech(CKM_AES_GCM);
    let rv = f.C_WrapKeyAuthenticated.unwrap()(
        s,
        &mut gcm,
        sent,
        received,
        ptr::null_mut(),
        0,
        wrapped.as_mut_ptr(),
        &mut wn,
    );
    run.step("C_WrapKeyAuthenticated", rv, vec![]);
    let mut h = 0;
    let rv = f.C_UnwrapKeyAuthenticated.unwrap()(
        s,
        &mut gcm,
        sent,
        wrapped.as_mut_ptr(),
        wn,
        template.as_mut_ptr(),
        tn,
        ptr::null_mut(),
        0,
        &mut h,
    );
    run.step("C_UnwrapKeyAuthenticated", rv, vec![]);
    let mut info = CK_TOKEN_INFO::default();
    let rv = f.C_GetTokenInfo.unwrap()(slot, &mut info);
    run.step(
        "C_GetTokenInfo async flag",
        rv,
        held(info.flags & CKF_ASYNC_SESSION_SUPPORTED != 0),
    );
    let mut async_session = 0;
    let rv = f.C_OpenSession.unwrap()(
        slot,
        CKF_SERIAL_SESSION | CKF_ASYNC_SESSION,
        ptr::null_mut(),
        None,
        &mut async_session,
    );
    run.step("C_OpenSession CKF_ASYNC_SESSION", rv, vec![]);
    if rv == CKR_OK {
        let _ = f.C_CloseSession.unwrap()(async_session);
    }
    let rv = f.C_CloseSession.unwrap()(s);
    run.step("C_CloseSession", rv, vec![]);
    run.steps
}

/// The scenario on `module` loaded directly, then through the shim to a server that loads
/// `server_module`, both with `env` (the vendor's configuration).
pub fn run_on(module: &Path, server_module: &Path, env: (&str, &str), slot: CK_SLOT_ID) -> Report {
    // SAFETY: the scenario passes valid buffers except where it tests NULL handling.
    crate::parity::compare_on(module, server_module, env, |m| unsafe { scenario(m, slot) })
}
