//! One application's view inside a worker (DESIGN.md, "Server semantics"): the sessions it
//! opened and the objects whose identity it was sent. All connections of one shim instance
//! share it.
//!
//! In an application's own worker the vendor instance is the application's, so session
//! handles pass unchecked to the vendor, which answers for them. In a shared worker
//! (`--shared-worker`) each application owns the sessions it opened, and a session handle of
//! another answers `CKR_SESSION_HANDLE_INVALID` (v2.40 §5.6).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cryptoki_sys::*;
use parking_lot::Mutex;

use crate::policy::{Identities, Policy, Presented, Rights};

/// One application's view: the sessions it opened.
pub struct Application {
    /// A number naming this application inside the worker (logs, metrics).
    pub id: u64,
    /// Whether the vendor instance serves other applications too (a shared worker).
    shared_vendor: bool,
    /// Session handle to the slot it was opened on.
    sessions: Mutex<HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>>,
    /// The shim asked for the identity of the objects handed out (hello flag).
    pub identify_objects: bool,
    /// The objects whose identity it was sent (`identify`).
    identified: Mutex<HashSet<u64>>,
    /// What its client presented (certificate, uid), for the policy's identities.
    presented: Presented,
    /// Its rights under the identities they were worked out from (found again when a reload
    /// replaces them: live applications get new rules at their next call).
    rights: Mutex<(Option<Arc<Identities>>, Rights)>,
    /// Under an identity that sees only some token objects: what it was found to see, by
    /// handle, and the objects it made itself (`super::confine`).
    objects: Mutex<ObjectViews>,
    /// Its turns under its identity's `rate_limit`.
    bucket: Mutex<crate::policy::bucket::Bucket>,
    /// The CKA_ID (hex) and CKA_LABEL of objects it named, as read for the audit log and
    /// the identity metrics, by handle.
    names: Mutex<HashMap<u64, ObjectNames>>,
}

/// An object's CKA_ID (hex) and CKA_LABEL, when it has them.
pub type ObjectNames = (Option<String>, Option<String>);

/// Token objects as an identity sees them.
#[derive(Default)]
struct ObjectViews {
    visible: HashMap<u64, bool>,
    made: HashSet<u64>,
}

/// Most objects remembered as identified for one application; past it the memory starts
/// again (an object is then identified once more: a vendor call, never a wrong answer).
const MAX_IDENTIFIED: usize = 65_536;

impl Application {
    pub fn new(id: u64, shared_vendor: bool, identify_objects: bool, presented: Presented) -> Self {
        Self {
            id,
            shared_vendor,
            sessions: Mutex::new(HashMap::new()),
            identify_objects,
            identified: Mutex::new(HashSet::new()),
            presented,
            rights: Mutex::new((None, Rights::Everything)),
            objects: Mutex::new(ObjectViews::default()),
            bucket: Mutex::new(Default::default()),
            names: Mutex::new(HashMap::new()),
        }
    }

    /// What it may call under the policy in force.
    pub fn rights(&self, policy: &Policy) -> Rights {
        // Without `--policy`, every call of every application: no lock, no lookup.
        if !policy.applies() {
            return Rights::Everything;
        }
        let current = policy.identities();
        let mut cached = self.rights.lock();
        let same = match (&cached.0, &current) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            cached.1 = Rights::of(current.as_deref(), &self.presented);
            cached.0 = current;
            // What it saw under other rules counts no more.
            self.objects.lock().visible.clear();
        }
        cached.1.clone()
    }

    /// A turn under its identity's rate limit: how long to wait for it.
    pub fn take_turn(
        &self,
        rate: f64,
        max_wait: std::time::Duration,
    ) -> Result<std::time::Duration, ()> {
        self.bucket.lock().take(rate, max_wait)
    }

    /// Whether its identity sees `object`, as last found (objects it made: always).
    pub fn object_view(&self, object: u64) -> Option<bool> {
        let views = self.objects.lock();
        if views.made.contains(&object) {
            return Some(true);
        }
        views.visible.get(&object).copied()
    }

    /// Remembers whether its identity sees `object`.
    pub fn remember_object_view(&self, object: u64, visible: bool) {
        let mut views = self.objects.lock();
        if views.visible.len() >= MAX_IDENTIFIED {
            views.visible.clear();
        }
        views.visible.insert(object, visible);
    }

    /// It made `object` (generated, created, copied, unwrapped, derived): its own.
    pub fn made_object(&self, object: u64) {
        let mut views = self.objects.lock();
        if views.made.len() >= MAX_IDENTIFIED {
            views.made.clear();
        }
        views.made.insert(object);
    }

    /// `object`'s attributes changed: whether its identity sees it, and its names, are to be
    /// read again.
    pub fn object_changed(&self, object: u64) {
        self.objects.lock().visible.remove(&object);
        self.names.lock().remove(&object);
    }

    /// The names of `object`, read with `read` the first time.
    pub fn object_names(&self, object: u64, read: impl FnOnce() -> ObjectNames) -> ObjectNames {
        if let Some(n) = self.names.lock().get(&object) {
            return n.clone();
        }
        let n = read();
        let mut names = self.names.lock();
        if names.len() >= MAX_IDENTIFIED {
            names.clear();
        }
        names.insert(object, n.clone());
        n
    }

    /// Whether `object` is handed out to the application for the first time (its identity
    /// is to be sent); it is remembered as sent from now on.
    pub fn first_handout(&self, object: u64) -> bool {
        let mut identified = self.identified.lock();
        if identified.len() >= MAX_IDENTIFIED {
            identified.clear();
        }
        identified.insert(object)
    }

    /// `object` was destroyed: its handle may name another object later.
    pub fn forget_object(&self, object: u64) {
        self.identified.lock().remove(&object);
        let mut views = self.objects.lock();
        views.visible.remove(&object);
        views.made.remove(&object);
        self.names.lock().remove(&object);
    }

    /// Whether other applications share this application's vendor instance.
    pub fn shares_vendor(&self) -> bool {
        self.shared_vendor
    }

    /// The session handle to pass to the vendor. In a shared worker, only a session the
    /// application opened (PKCS#11 v2.40 §5.6: a handle it did not get is invalid for it);
    /// in its own worker, any: the vendor answers for it.
    pub fn check(&self, session: u64) -> Result<CK_SESSION_HANDLE, CK_RV> {
        let h = CK_SESSION_HANDLE::try_from(session).map_err(|_| CKR_SESSION_HANDLE_INVALID)?;
        if !self.shared_vendor || self.sessions.lock().contains_key(&h) {
            Ok(h)
        } else {
            Err(CKR_SESSION_HANDLE_INVALID)
        }
    }

    pub fn add_session(&self, session: CK_SESSION_HANDLE, slot: CK_SLOT_ID) {
        self.sessions.lock().insert(session, slot);
    }

    /// The slot `session` was opened on, if it was opened through this view.
    pub fn slot_of(&self, session: CK_SESSION_HANDLE) -> Option<CK_SLOT_ID> {
        self.sessions.lock().get(&session).copied()
    }

    pub fn remove_session(&self, session: CK_SESSION_HANDLE) {
        self.sessions.lock().remove(&session);
    }

    /// Takes the sessions opened on `slot` out of the view.
    pub fn take_sessions_of_slot(&self, slot: CK_SLOT_ID) -> Vec<CK_SESSION_HANDLE> {
        let mut sessions = self.sessions.lock();
        let on_slot: Vec<_> = sessions
            .iter()
            .filter(|(_, s)| **s == slot)
            .map(|(h, _)| *h)
            .collect();
        for h in &on_slot {
            sessions.remove(h);
        }
        on_slot
    }

    /// Takes every session out of the view (C_Finalize, departure, stop).
    pub fn take_all_sessions(&self) -> Vec<CK_SESSION_HANDLE> {
        self.sessions.lock().drain().map(|(h, _)| h).collect()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }
}
