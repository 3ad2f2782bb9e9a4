//! Fabric's own PKCS#11 patterns, made with raw calls: its signing key (a token EC P-256 key
//! pair found by CKA_ID) and its signing path (fabric-lib-go bccsp/pkcs11: FindObjectsInit by
//! CKA_CLASS and CKA_ID, C_SignInit, a two-call C_Sign).

use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cryptoki_sys::*;

use crate::raw::RawModule;
use crate::PIN;

/// A template entry pointing at `v`.
pub fn attr(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as CK_ULONG,
    }
}

pub const KEY_ID: &[u8] = b"fabric-key";

/// A token EC P-256 key pair with CKA_ID `KEY_ID`, as Fabric keeps its signing key.
pub fn make_token_key(m: &RawModule) {
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_OK);
    assert_eq!(make_token_key_with_id(m, s, KEY_ID), CKR_OK);
}

/// C_GenerateKeyPair of a token EC P-256 key pair with CKA_ID `id`, on the logged-in session
/// `s`, as Fabric's BCCSP makes its keys.
pub fn make_token_key_with_id(m: &RawModule, s: CK_SESSION_HANDLE, id: &[u8]) -> CK_RV {
    let ec = [0x06u8, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let tru = [CK_TRUE];
    let mut public = [
        attr(CKA_EC_PARAMS, &ec),
        attr(CKA_TOKEN, &tru),
        attr(CKA_ID, id),
        attr(CKA_VERIFY, &tru),
    ];
    let mut private = [
        attr(CKA_TOKEN, &tru),
        attr(CKA_PRIVATE, &tru),
        attr(CKA_ID, id),
        attr(CKA_SIGN, &tru),
    ];
    let mut gen = CK_MECHANISM {
        mechanism: CKM_EC_KEY_PAIR_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let (mut a, mut b) = (0, 0);
    // SAFETY: valid templates and out pointers.
    unsafe {
        m.f().C_GenerateKeyPair.unwrap()(
            s,
            &mut gen,
            public.as_mut_ptr(),
            4,
            private.as_mut_ptr(),
            4,
            &mut a,
            &mut b,
        )
    }
}

/// Fabric's signing path on session `s`: find the private key by CKA_ID, C_SignInit, C_Sign
/// (size query, then the signature) of a digest.
///
/// # Safety
/// `s` may be stale (that is often the point); `m` is initialised.
pub unsafe fn fabric_sign(m: &RawModule, s: CK_SESSION_HANDLE) -> CK_RV {
    fabric_sign_data(m, s, KEY_ID, &[7u8; 32])
}

/// [`fabric_sign`] with the key of CKA_ID `id`, over `data`.
///
/// # Safety
/// As [`fabric_sign`].
pub unsafe fn fabric_sign_data(
    m: &RawModule,
    s: CK_SESSION_HANDLE,
    id: &[u8],
    data: &[u8],
) -> CK_RV {
    match find_signing_key(m, s, id) {
        Ok(key) => sign_with_key(m, s, key, data),
        Err(rv) => rv,
    }
}

/// The private key of CKA_ID `id`, found on session `s` as Fabric finds it by its SKI
/// (CKR_KEY_HANDLE_INVALID when there is not exactly one).
///
/// # Safety
/// As [`fabric_sign`].
pub unsafe fn find_signing_key(
    m: &RawModule,
    s: CK_SESSION_HANDLE,
    id: &[u8],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let f = m.f();
    let class = CKO_PRIVATE_KEY.to_ne_bytes();
    let mut t = [attr(CKA_CLASS, &class), attr(CKA_ID, id)];
    let rv = f.C_FindObjectsInit.unwrap()(s, t.as_mut_ptr(), 2);
    if rv != CKR_OK {
        return Err(rv);
    }
    let (mut key, mut n) = (0, 0);
    let rv = f.C_FindObjects.unwrap()(s, &mut key, 1, &mut n);
    f.C_FindObjectsFinal.unwrap()(s);
    match (rv, n) {
        (CKR_OK, 1) => Ok(key),
        (CKR_OK, _) => Err(CKR_KEY_HANDLE_INVALID),
        (rv, _) => Err(rv),
    }
}

/// Fabric's signature with a key handle it holds: C_SignInit (CKM_ECDSA), then C_Sign's
/// size query and the signature, over `data`.
///
/// # Safety
/// As [`fabric_sign`]; `key` may be stale too.
pub unsafe fn sign_with_key(
    m: &RawModule,
    s: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    data: &[u8],
) -> CK_RV {
    let f = m.f();
    let mut mech = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let rv = f.C_SignInit.unwrap()(s, &mut mech, key);
    if rv != CKR_OK {
        return rv;
    }
    let n = data.len() as CK_ULONG;
    let mut len: CK_ULONG = 0;
    let rv = f.C_Sign.unwrap()(s, data.as_ptr() as *mut u8, n, ptr::null_mut(), &mut len);
    if rv != CKR_OK {
        return rv;
    }
    let mut sig = [0u8; 128];
    f.C_Sign.unwrap()(s, data.as_ptr() as *mut u8, n, sig.as_mut_ptr(), &mut len)
}

/// A session for Fabric's pool: an RW session on the first slot, then C_Login (whose answer
/// is returned beside it: CKR_USER_ALREADY_LOGGED_IN when another session logged in first).
/// The module's answer when the session cannot be opened.
pub fn open_pooled_session(m: &RawModule) -> Result<(CK_SESSION_HANDLE, CK_RV), CK_RV> {
    let mut s = 0;
    // SAFETY: valid out pointer.
    let rv = unsafe {
        m.f().C_OpenSession.unwrap()(
            m.first_slot(),
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            ptr::null_mut(),
            None,
            &mut s,
        )
    };
    match rv {
        CKR_OK => Ok((s, m.login(s, PIN))),
        rv => Err(rv),
    }
}

/// What a Fabric-like loop saw.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub evictions: AtomicU64,
    /// The return values of the errors, for the report.
    pub codes: Mutex<Vec<(&'static str, CK_RV)>>,
    /// Milliseconds since the start of the first success after `mark`.
    pub first_ok_after_mark: AtomicU64,
    /// The longest time, in milliseconds, a thread went without a signature (from its start
    /// to its first, between two, from its last to the deadline).
    pub longest_stall_ms: AtomicU64,
}

impl Tally {
    pub fn error(&self, what: &'static str, rv: CK_RV) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.codes.lock().unwrap().push((what, rv));
    }
}

/// Threads that sign in a loop with Fabric's session rules until `deadline`: a pooled session
/// is evicted only on a 0xB* return value; a session is opened and logged in (accepting
/// CKR_USER_ALREADY_LOGGED_IN) when the pool is empty.
pub fn fabric_loop(
    m: &RawModule,
    threads: usize,
    deadline: Instant,
    start: Instant,
    mark: &AtomicU64,
    tally: &Tally,
) {
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let f = m.f();
                let mut pooled: Option<CK_SESSION_HANDLE> = None;
                let mut last_ok = Instant::now();
                let stall = |since: Instant| {
                    let ms = since.elapsed().as_millis() as u64;
                    tally.longest_stall_ms.fetch_max(ms, Ordering::Relaxed);
                };
                while Instant::now() < deadline {
                    let s = match pooled.take() {
                        Some(s) => s,
                        None => match open_pooled_session(m) {
                            Ok((s, login)) => {
                                if login != CKR_OK && login != CKR_USER_ALREADY_LOGGED_IN {
                                    tally.error("C_Login", login);
                                }
                                s
                            }
                            Err(rv) => {
                                tally.error("C_OpenSession", rv);
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        },
                    };
                    // SAFETY: the session handle may be stale; that is the point.
                    let rv = unsafe { fabric_sign(m, s) };
                    if rv == CKR_OK {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        stall(last_ok);
                        last_ok = Instant::now();
                        let now = start.elapsed().as_millis() as u64;
                        let marked = mark.load(Ordering::Relaxed);
                        if marked > 0 && now >= marked {
                            let _ = tally.first_ok_after_mark.compare_exchange(
                                0,
                                now,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                        pooled = Some(s);
                    } else if (0xB0..=0xBF).contains(&rv) {
                        tally.evictions.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: closing a stale handle is harmless.
                        unsafe { f.C_CloseSession.unwrap()(s) };
                    } else {
                        tally.error("signing", rv);
                        pooled = Some(s);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                stall(last_ok);
            });
        }
    });
}
