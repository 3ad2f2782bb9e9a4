//! Per-application login state (PKCS#11 v2.40 §5.6.7, §6.7.1: login belongs to the
//! application, not to the token).
//!
//! To the vendor library the whole server is one application, so one client's C_Login would
//! log every client in and one client's C_Logout would log everyone out. Here each
//! application (one shim instance) has its own state per slot; the vendor library is logged
//! in while at least one application is, and logged out when the last one logs out or leaves.
//! When the vendor is already logged in (so it would answer CKR_USER_ALREADY_LOGGED_IN without
//! checking anything), an application's PIN is checked against an Argon2id hash, with a
//! random salt, of the PIN that last logged the vendor in; the PIN itself is never kept.
//!
//! Limits, inherent to one vendor login shared by the server: user and SO cannot be logged in
//! at the same time by different applications (the second gets
//! CKR_USER_ANOTHER_ALREADY_LOGGED_IN), and PIN retry counters are the token's only when the
//! vendor checks the PIN itself.

use std::collections::HashMap;

use argon2::{Algorithm, Argon2, Params, Version};
use cryptoki_sys::*;
use parking_lot::Mutex;

use crate::backend::Backend;

/// Argon2id cost: 8 MiB, two passes (a few milliseconds, paid only by a new application
/// logging in while another is logged in).
const ARGON2_MEMORY_KIB: u32 = 8 * 1024;
const ARGON2_PASSES: u32 = 2;

/// A salted, memory-hard hash of a PIN.
struct Verifier {
    salt: [u8; 16],
    hash: [u8; 32],
}

impl Verifier {
    fn new(pin: &[u8]) -> Option<Self> {
        let mut salt = [0u8; 16];
        // SAFETY: salt is writable for its length.
        if unsafe { libc::getrandom(salt.as_mut_ptr().cast(), salt.len(), 0) }
            != salt.len() as isize
        {
            return None;
        }
        Some(Self {
            salt,
            hash: hash(pin, &salt)?,
        })
    }

    fn matches(&self, pin: &[u8]) -> bool {
        // Constant time over the hash bytes.
        hash(pin, &self.salt).is_some_and(|h| {
            h.iter()
                .zip(&self.hash)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        })
    }
}

fn hash(pin: &[u8], salt: &[u8; 16]) -> Option<[u8; 32]> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, Some(32)).ok()?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pin, salt, &mut out)
        .ok()?;
    Some(out)
}

/// The login state of one slot.
#[derive(Default)]
struct SlotLogin {
    /// The user type the vendor library is logged in as, if any.
    vendor: Option<CK_USER_TYPE>,
    /// Each logged-in application (by id) and its user type.
    apps: HashMap<u64, CK_USER_TYPE>,
    /// The verifier of the PIN that logged the vendor in, per user type.
    verifiers: HashMap<CK_USER_TYPE, Verifier>,
}

/// Login state of every slot, plus what the vendor answers to a C_Logout without login.
pub struct Logins {
    slots: Mutex<HashMap<CK_SLOT_ID, SlotLogin>>,
    /// `--shared-login`: the old behaviour, every call forwarded as it is.
    pub shared: bool,
    /// What the vendor answered to C_Logout in a session that was not logged in (probed at
    /// start): SoftHSM2 says CKR_OK, the specification CKR_USER_NOT_LOGGED_IN.
    logout_without_login: CK_RV,
}

impl Logins {
    /// Probes the vendor's answer to a C_Logout without login on the first slot with a token.
    pub fn new(backend: &Backend, shared: bool) -> Self {
        let mut logout_without_login = CKR_USER_NOT_LOGGED_IN;
        let (rv, _, slots) = backend.slot_list(true, Some(64));
        if let (CKR_OK, Some(&slot)) = (rv, slots.first()) {
            let mut s = 0;
            if backend.open_session(slot, CKF_SERIAL_SESSION, &mut s) == CKR_OK {
                logout_without_login = backend.session(backend.list().C_Logout, s);
                backend.session(backend.list().C_CloseSession, s);
            }
        }
        Self {
            slots: Mutex::new(HashMap::new()),
            shared,
            logout_without_login,
        }
    }

    /// The user type `app` is logged in as on `slot`.
    pub fn app_state(&self, app: u64, slot: CK_SLOT_ID) -> Option<CK_USER_TYPE> {
        self.slots
            .lock()
            .get(&slot)
            .and_then(|s| s.apps.get(&app).copied())
    }

    /// Whether `app` must be kept from what the vendor allows only because another
    /// application is logged in: `app` is not logged in on `slot`, the vendor is.
    pub fn must_hide_private(&self, app: u64, slot: CK_SLOT_ID) -> bool {
        if self.shared {
            return false;
        }
        self.slots
            .lock()
            .get(&slot)
            .is_some_and(|s| s.vendor.is_some() && !s.apps.contains_key(&app))
    }

    /// C_Login for `app` in `session` on `slot`.
    pub fn login(
        &self,
        backend: &Backend,
        app: u64,
        session: CK_SESSION_HANDLE,
        slot: CK_SLOT_ID,
        user: CK_USER_TYPE,
        pin: Option<&[u8]>,
    ) -> CK_RV {
        if self.shared {
            return backend.login(session, user, pin);
        }
        if user != CKU_SO && user != CKU_USER && user != CKU_CONTEXT_SPECIFIC {
            return CKR_USER_TYPE_INVALID;
        }
        let mut slots = self.slots.lock();
        let st = slots.entry(slot).or_default();
        if user == CKU_CONTEXT_SPECIFIC {
            // Re-authentication for one operation: the application must be logged in itself.
            return if st.vendor.is_some() && !st.apps.contains_key(&app) {
                CKR_USER_NOT_LOGGED_IN
            } else {
                backend.login(session, user, pin)
            };
        }
        match st.apps.get(&app) {
            Some(&t) if t == user => return CKR_USER_ALREADY_LOGGED_IN,
            Some(_) => return CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
            None => {}
        }
        match st.vendor {
            None => {
                let rv = backend.login(session, user, pin);
                if rv == CKR_OK {
                    st.vendor = Some(user);
                    st.apps.insert(app, user);
                    match pin.and_then(Verifier::new) {
                        Some(v) => st.verifiers.insert(user, v),
                        None => st.verifiers.remove(&user),
                    };
                }
                rv
            }
            Some(t) if t == user => {
                let known = st.verifiers.get(&user);
                match (pin, known) {
                    (Some(pin), Some(v)) if v.matches(pin) => {
                        st.apps.insert(app, user);
                        CKR_OK
                    }
                    (None, _) | (_, None) => {
                        tracing::warn!(
                            slot,
                            "C_Login without a PIN to check while the token is logged in: refused"
                        );
                        CKR_PIN_INCORRECT
                    }
                    _ => CKR_PIN_INCORRECT,
                }
            }
            Some(_) => CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
        }
    }

    /// C_Logout for `app`; `session` is used for the vendor's logout when `app` was the last
    /// application logged in.
    pub fn logout(
        &self,
        backend: &Backend,
        app: u64,
        session: CK_SESSION_HANDLE,
        slot: CK_SLOT_ID,
    ) -> CK_RV {
        if self.shared {
            return backend.session(backend.list().C_Logout, session);
        }
        let mut slots = self.slots.lock();
        let st = slots.entry(slot).or_default();
        if st.apps.remove(&app).is_none() {
            return if st.vendor.is_none() {
                backend.session(backend.list().C_Logout, session)
            } else {
                self.logout_without_login
            };
        }
        if st.apps.is_empty() {
            st.vendor = None;
            return backend.session(backend.list().C_Logout, session);
        }
        CKR_OK
    }

    /// `app` has no session left on `slot` (closed, finalised or gone): its login ends
    /// (v2.40 §5.6.2: closing the last session logs the application out). `any_session` is an
    /// open session on the slot, for the vendor's logout; `None` if none is open (the vendor
    /// logged out by itself then).
    pub fn leave(
        &self,
        backend: &Backend,
        app: u64,
        slot: CK_SLOT_ID,
        any_session: Option<CK_SESSION_HANDLE>,
    ) {
        if self.shared {
            return;
        }
        let mut slots = self.slots.lock();
        let Some(st) = slots.get_mut(&slot) else {
            return;
        };
        if st.apps.remove(&app).is_none() || !st.apps.is_empty() {
            return;
        }
        st.vendor = None;
        if let Some(s) = any_session {
            backend.session(backend.list().C_Logout, s);
        }
    }

    /// After a successful C_SetPIN: the verifier follows the vendor's new PIN.
    pub fn pin_changed(&self, slot: CK_SLOT_ID, new_pin: Option<&[u8]>) {
        let mut slots = self.slots.lock();
        let Some(st) = slots.get_mut(&slot) else {
            return;
        };
        if let Some(user) = st.vendor {
            match new_pin.and_then(Verifier::new) {
                Some(v) => st.verifiers.insert(user, v),
                None => st.verifiers.remove(&user),
            };
        }
    }

    /// The session state `app` would see (v2.40 §5.6.4, table of session states).
    pub fn session_state(
        &self,
        app: u64,
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
        vendor_state: CK_STATE,
    ) -> CK_STATE {
        if self.shared {
            return vendor_state;
        }
        let rw = flags & CKF_RW_SESSION != 0;
        match (self.app_state(app, slot), rw) {
            (Some(CKU_SO), _) => CKS_RW_SO_FUNCTIONS,
            (Some(_), true) => CKS_RW_USER_FUNCTIONS,
            (Some(_), false) => CKS_RO_USER_FUNCTIONS,
            (None, true) => CKS_RW_PUBLIC_SESSION,
            (None, false) => CKS_RO_PUBLIC_SESSION,
        }
    }
}
