//! The shim's object handles and their numbers on the current server (DESIGN.md, "Recovery
//! model"): the application only ever sees the shim's handles. A new handle takes the server's
//! number when that number is free (so, until a restart, the application sees exactly what the
//! vendor library handed out), else a number of the shim's own. After a restart the shim's
//! handles keep their numbers and point at the new server's objects; a handle that could not
//! be brought back can never alias an object of the new server.
//!
//! Sessions are numbered the same way ([`free_handle`]), in their own table (the journal's).

use std::collections::HashMap;

use cryptoki_sys::*;
use protocol::attribute::Attribute;
use protocol::mechanism::MechParam;
use protocol::message::Request;

use crate::ffi::{narrow, wire, Rv};

/// First number of the shim's own handles, used when the server's number is taken.
const OWN_HANDLES: u64 = 0x4000_0000;

/// `real` if no entry of `taken` has that number, else the next free number of the shim's own
/// (counted by `next_own`).
pub fn free_handle<T>(taken: &HashMap<u64, T>, real: u64, next_own: &mut u64) -> u64 {
    if real != 0 && !taken.contains_key(&real) {
        return real;
    }
    loop {
        let h = *next_own;
        *next_own = next_own.checked_add(1).unwrap_or(OWN_HANDLES);
        if !taken.contains_key(&h) {
            return h;
        }
    }
}

/// A fresh counter for [`free_handle`].
pub const fn own_numbers() -> u64 {
    OWN_HANDLES
}

/// One object handle handed to the application.
#[derive(Debug)]
pub struct ObjectRecord {
    /// The current server's handle; `None` when the object is not (or no longer) known there.
    pub real: Option<u64>,
    pub slot: u64,
    /// For a token object: the attributes that find it again on a new server.
    pub identity: Option<Vec<Attribute>>,
    /// For a session object made through the shim: the session that made it, whose closing
    /// destroys it (v2.40 §5.6.2), and ends this record.
    pub owner: Option<u64>,
    /// The shim replayed a login on the object's token since the handle was last checked:
    /// the vendor library may have renumbered it (SoftHSM2 renumbers private objects after a
    /// logout), so an "invalid handle" answer sends the shim looking for it again. Only the
    /// shim's own replays set this: a logout and login by the application keep the vendor's
    /// behaviour.
    pub recheck: bool,
}

/// The object handles handed to the application, each with the current server's number.
#[derive(Debug)]
pub struct Objects {
    records: HashMap<u64, ObjectRecord>,
    /// The current server's object handles → the shim's.
    by_real: HashMap<u64, u64>,
    next_own: u64,
}

impl Objects {
    pub fn new() -> Self {
        Self {
            records: HashMap::new(),
            by_real: HashMap::new(),
            next_own: own_numbers(),
        }
    }

    /// The record of the shim's handle `object`.
    pub fn get(&self, object: u64) -> Option<&ObjectRecord> {
        self.records.get(&object)
    }

    /// The shim's handle of the server's `real`, when it was handed out.
    pub fn shim_of(&self, real: u64) -> Option<u64> {
        self.by_real.get(&real).copied()
    }

    /// The server's handle of the shim's `object`: CKR_OBJECT_HANDLE_INVALID for one that
    /// was lost; a handle the shim never handed out travels as it is, so the vendor gives
    /// its own answer to it.
    pub fn to_server(&self, object: u64) -> Rv<u64> {
        match self.records.get(&object) {
            Some(ObjectRecord { real: Some(r), .. }) => Ok(*r),
            Some(_) => Err(CKR_OBJECT_HANDLE_INVALID),
            None => Ok(object),
        }
    }

    /// The identity of `object` when it waits to be found again on the current server.
    pub fn pending(&self, object: u64) -> Option<Vec<Attribute>> {
        match self.records.get(&object) {
            Some(ObjectRecord {
                real: None,
                identity: Some(identity),
                ..
            }) => Some(identity.clone()),
            _ => None,
        }
    }

    /// The one object waiting to be found again on `slot` whose identity is `identity`.
    pub fn pending_as(&self, slot: u64, identity: &[Attribute]) -> Option<u64> {
        let key = |a: &[Attribute]| {
            let mut v = a.to_vec();
            v.sort_by_key(|a| a.ty);
            v
        };
        let wanted = key(identity);
        let mut matches = self.records.iter().filter(|(_, o)| {
            o.real.is_none()
                && o.slot == slot
                && o.identity.as_deref().is_some_and(|id| key(id) == wanted)
        });
        match (matches.next(), matches.next()) {
            (Some((v, _)), None) => Some(*v),
            _ => None,
        }
    }

    /// Records a server object handle handed to the application and returns the shim's.
    pub fn add(
        &mut self,
        real: u64,
        slot: u64,
        identity: Option<Vec<Attribute>>,
        owner: Option<u64>,
    ) -> u64 {
        if let Some(v) = self.by_real.get(&real) {
            return *v;
        }
        let v = free_handle(&self.records, real, &mut self.next_own);
        self.records.insert(
            v,
            ObjectRecord {
                real: Some(real),
                slot,
                identity,
                owner,
                recheck: false,
            },
        );
        self.by_real.insert(real, v);
        v
    }

    /// Points one of the shim's object handles at a server handle (after a restart).
    pub fn resolve(&mut self, object: u64, real: Option<u64>) {
        if let Some(o) = self.records.get_mut(&object) {
            o.recheck = false;
            if let Some(old) = o.real.take() {
                self.by_real.remove(&old);
            }
            o.real = real;
            if let Some(r) = real {
                self.by_real.insert(r, object);
            }
        }
    }

    /// An object that cannot be found again: its handle answers CKR_OBJECT_HANDLE_INVALID.
    pub fn lose(&mut self, object: u64) {
        self.resolve(object, None);
        if let Some(o) = self.records.get_mut(&object) {
            o.identity = None;
        }
    }

    /// The session objects `session` made are gone (the server lost the session): their
    /// handles answer CKR_OBJECT_HANDLE_INVALID until the application closes the session.
    pub fn lose_owned(&mut self, session: u64) {
        let owned: Vec<u64> = self
            .records
            .iter()
            .filter(|(_, o)| o.owner == Some(session))
            .map(|(v, _)| *v)
            .collect();
        for v in owned {
            self.lose(v);
        }
    }

    /// Forgets the session objects the given sessions made (closing them destroyed them).
    pub fn drop_owned(&mut self, sessions: &[u64]) {
        let by_real = &mut self.by_real;
        self.records.retain(|_, o| {
            let owned = o.owner.is_some_and(|s| sessions.contains(&s));
            if owned {
                if let Some(r) = o.real {
                    by_real.remove(&r);
                }
            }
            !owned
        });
    }

    /// A destroyed object: its handle is released.
    pub fn remove(&mut self, object: u64) {
        if let Some(r) = self.records.remove(&object).and_then(|o| o.real) {
            self.by_real.remove(&r);
        }
    }

    /// Attributes set on `object` that identify it (Fabric sets CKA_ID and CKA_LABEL to the
    /// SKI after generating a key): its identity follows.
    pub fn update_identity(&mut self, object: u64, template: &[Attribute]) {
        let record = self.records.get_mut(&object);
        if let Some(identity) = record.and_then(|o| o.identity.as_mut()) {
            for new in template
                .iter()
                .filter(|a| protocol::objects::is_identifying(a.ty))
            {
                identity.retain(|old| old.ty != new.ty);
                identity.push(new.clone());
            }
        }
    }

    /// Marks the token objects of `slot` for a check after a replayed login.
    pub fn recheck(&mut self, slot: u64) {
        for o in self.records.values_mut() {
            if o.slot == slot && o.identity.is_some() {
                o.recheck = true;
            }
        }
    }

    /// A new server instance: every server handle is void; the records stay (token objects
    /// are found again).
    pub fn void_all(&mut self) {
        self.by_real.clear();
        for o in self.records.values_mut() {
            o.real = None;
        }
    }

    /// Forgets every handle (C_Finalize).
    pub fn clear(&mut self) {
        self.records.clear();
        self.by_real.clear();
    }
}

/// CKM_CONCATENATE_BASE_AND_KEY: its parameter is a `CK_OBJECT_HANDLE` (v2.40 Mechanisms
/// §2.37.2), which travels as bytes.
fn param_key_mut(request: &mut Request) -> Option<&mut Vec<u8>> {
    match request {
        Request::DeriveKey { mechanism, .. } if mechanism.ty == CKM_CONCATENATE_BASE_AND_KEY => {
            match &mut mechanism.param {
                MechParam::Bytes(b) if b.len() == std::mem::size_of::<CK_OBJECT_HANDLE>() => {
                    Some(b)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The handle a CKM_CONCATENATE_BASE_AND_KEY parameter of `request` holds.
pub fn param_key(request: &Request) -> Option<u64> {
    match request {
        Request::DeriveKey { mechanism, .. } if mechanism.ty == CKM_CONCATENATE_BASE_AND_KEY => {
            match &mechanism.param {
                MechParam::Bytes(b) => Some(wire(CK_OBJECT_HANDLE::from_ne_bytes(
                    b.as_slice().try_into().ok()?,
                ))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Every object handle `request` names: its handle arguments and a handle inside its
/// mechanism parameter.
pub fn objects_named(request: &Request) -> impl Iterator<Item = u64> {
    request
        .object_handles()
        .into_iter()
        .chain([param_key(request)])
        .flatten()
}

/// Sets the handle inside `request`'s CKM_CONCATENATE_BASE_AND_KEY parameter (when it has
/// one) to `map` of it.
pub fn map_param_key(request: &mut Request, map: impl FnOnce(u64) -> Rv<u64>) -> Rv<()> {
    if let Some(held) = param_key(request) {
        let real = narrow(map(held)?)?;
        if let Some(bytes) = param_key_mut(request) {
            bytes.copy_from_slice(&real.to_ne_bytes());
        }
    }
    Ok(())
}
