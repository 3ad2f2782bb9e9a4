//! Ownership of session objects.
//!
//! To the vendor library the whole server is one application, so a session object (CKA_TOKEN
//! false) made by one client is usable from any session of the server (PKCS#11 v2.40 §4.4:
//! session objects are visible to every session of the application that made them). A client
//! of the proxy must not reach another client's session objects: each one is recorded with
//! the application and session that made it; any other application gets
//! CKR_OBJECT_HANDLE_INVALID for it, exactly as for a handle that does not exist, and does not
//! find it with C_FindObjects. Records go when the object is destroyed or its session closes
//! (the vendor destroys it then). Token objects are shared by all clients, as on the token.

use std::collections::HashMap;

use cryptoki_sys::*;
use parking_lot::RwLock;

use crate::template::to_ulong;

/// Which application (and which of its sessions) made a session object.
#[derive(Clone, Copy)]
struct Owner {
    app: u64,
    session: CK_SESSION_HANDLE,
}

/// Session objects by handle.
#[derive(Default)]
pub struct SessionObjects {
    owners: RwLock<HashMap<CK_OBJECT_HANDLE, Owner>>,
}

impl SessionObjects {
    /// Records a session object made by `app` in `session`.
    pub fn record(&self, app: u64, session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) {
        self.owners.write().insert(object, Owner { app, session });
    }

    /// The handle, if `app` may use it: a token object, one of its own session objects, or a
    /// handle the vendor library will judge (unknown to us).
    pub fn check(&self, app: u64, object: u64) -> Result<CK_OBJECT_HANDLE, CK_RV> {
        let h = to_ulong(object).map_err(|_| CKR_OBJECT_HANDLE_INVALID)?;
        if self.visible(app, h) {
            Ok(h)
        } else {
            Err(CKR_OBJECT_HANDLE_INVALID)
        }
    }

    /// Whether `app` may see `object`.
    pub fn visible(&self, app: u64, object: CK_OBJECT_HANDLE) -> bool {
        self.owners.read().get(&object).is_none_or(|o| o.app == app)
    }

    /// Forgets a destroyed object.
    pub fn forget(&self, object: CK_OBJECT_HANDLE) {
        self.owners.write().remove(&object);
    }

    /// Forgets the objects of closed sessions (the vendor destroyed them with the session).
    pub fn forget_sessions(&self, sessions: &[CK_SESSION_HANDLE]) {
        if sessions.is_empty() {
            return;
        }
        self.owners
            .write()
            .retain(|_, o| !sessions.contains(&o.session));
    }
}
