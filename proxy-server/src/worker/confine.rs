//! What an identity's policy hides from its application (DESIGN.md, "Identities, policy and
//! audit"): the tokens and token objects it may not see are not there.
//!
//! - A slot whose token's label matches none of the identity's `tokens` is absent from
//!   C_GetSlotList and answers `CKR_SLOT_ID_INVALID` (v2.40 §5.5: the code of a slot that does
//!   not exist) to every call naming it. The labels are the vendor's own answer to
//!   C_GetTokenInfo at the time of the call, so a token initialised again under another label
//!   is seen, or hidden, at once.
//! - A token object whose CKA_LABEL and CKA_ID match none of the identity's `object_labels`
//!   and `object_ids` is absent from searches (C_FindObjects asks the vendor again until it
//!   has as many visible handles as the caller asked for, or the search is over) and answers
//!   `CKR_OBJECT_HANDLE_INVALID` to object calls and `CKR_KEY_HANDLE_INVALID` to calls that
//!   take a key (v2.40 §5.7, §5.8-5.14: the codes of a handle that names nothing). Session
//!   objects and the objects the application made itself are its own. Whether an object is
//!   seen is read once per handle (C_GetAttributeValue of CKA_TOKEN, CKA_LABEL, CKA_ID on the
//!   application's session) and read again after C_SetAttributeValue.

use cryptoki_sys::*;
use protocol::attribute::{AttrValue, Attribute};
use protocol::function::Chapter;
use protocol::message::{Request, Response};
use protocol::shape::Out;

use crate::policy::{Identity, Rights};
use crate::worker::application::Application;
use crate::worker::identify;
use crate::worker::state::WorkerState;
use crate::worker::ulong::{to_ulong, wire};

/// Whether the token in `slot` is hidden from `identity`: its label matches none of its
/// patterns, or there is no token. A vendor that cannot tell (an HSM that is down) hides
/// nothing: the call goes on and the vendor answers it.
fn hides(worker: &WorkerState, identity: &Identity, slot: CK_SLOT_ID) -> bool {
    let mut info = CK_TOKEN_INFO::default();
    match worker.backend.get_token_info(slot, &mut info) {
        CKR_OK => !identity.sees_token(&info.label),
        CKR_TOKEN_NOT_PRESENT | CKR_SLOT_ID_INVALID => true,
        _ => false,
    }
}

/// The answer to a request that names a slot the rights hide.
pub fn hidden_slot(worker: &WorkerState, rights: &Rights, request: &Request) -> Option<CK_RV> {
    let identity = rights.token_limits()?;
    let slot = to_ulong(request.slot()?).ok()?;
    hides(worker, identity, slot).then(|| {
        tracing::info!(
            identity = %identity.name,
            slot,
            function = request.descriptor().name,
            "slot hidden by policy: answered CKR_SLOT_ID_INVALID"
        );
        CKR_SLOT_ID_INVALID
    })
}

/// C_GetSlotList for `identity` (v2.40 §5.5.1): the vendor's list without the slots it
/// hides, in the caller's shape. The vendor answers the caller's own call first, so that its
/// argument checks are its own; the visible count then answers a size query, fills a buffer
/// that is large enough, or answers `CKR_BUFFER_TOO_SMALL` with the count.
pub fn visible_slot_list(
    worker: &WorkerState,
    identity: &Identity,
    token_present: bool,
    capacity: Out,
) -> (CK_RV, CK_ULONG, Vec<CK_ULONG>) {
    let b = &worker.backend;
    let (r, _, _) = b.slot_list(token_present, capacity);
    if r != CKR_OK && r != CKR_BUFFER_TOO_SMALL {
        return (r, 0, vec![]);
    }
    // Every slot, then the visible ones (the list may grow between the two calls).
    let all = loop {
        let (r, n, _) = b.slot_list(token_present, Out::query(0));
        if r != CKR_OK {
            return (r, 0, vec![]);
        }
        let (r, _, values) = b.slot_list(token_present, Out::buffer(wire(n)));
        match r {
            CKR_OK => break values,
            CKR_BUFFER_TOO_SMALL => continue,
            r => return (r, 0, vec![]),
        }
    };
    let visible: Vec<CK_ULONG> = all
        .into_iter()
        .filter(|&slot| !hides(worker, identity, slot))
        .collect();
    let count = visible.len() as CK_ULONG;
    match (capacity.buffer, capacity.len) {
        (false, _) => (CKR_OK, count, vec![]),
        (true, Some(len)) if len >= wire(count) => (CKR_OK, count, visible),
        _ => (CKR_BUFFER_TOO_SMALL, count, vec![]),
    }
}

/// Longest CKA_LABEL and CKA_ID read to decide (a longer one is not seen).
const NAME_BYTES: u64 = 256;

/// Whether `identity` sees `object`, read on `session` (remembered per handle). An object
/// whose attributes the vendor will not give (a stale handle) is not hidden: the vendor
/// answers the call itself.
fn sees_object(
    worker: &WorkerState,
    app: &Application,
    identity: &Identity,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> bool {
    if let Some(seen) = app.object_view(wire(object)) {
        return seen;
    }
    let query = [
        (wire(CKA_TOKEN), 1),
        (wire(CKA_LABEL), NAME_BYTES),
        (wire(CKA_ID), NAME_BYTES),
    ];
    let Some(attrs) = identify::get(worker, session, object, &query) else {
        return true;
    };
    let value = |ty: CK_ATTRIBUTE_TYPE| {
        attrs
            .iter()
            .find(|a: &&Attribute| a.ty == wire(ty))
            .map(|a| &a.value)
    };
    let bytes = |ty| match value(ty) {
        Some(AttrValue::Bytes(b)) => Some(b.as_slice()),
        _ => None,
    };
    let visible = match value(CKA_TOKEN) {
        Some(AttrValue::Bool(false)) => true,
        Some(AttrValue::Bool(true)) => identity.sees_object(bytes(CKA_LABEL), bytes(CKA_ID)),
        _ => return true,
    };
    app.remember_object_view(wire(object), visible);
    visible
}

/// The answer to a request that names an object the rights hide.
pub fn hidden_object(
    worker: &WorkerState,
    app: &Application,
    rights: &Rights,
    request: &Request,
) -> Option<CK_RV> {
    let identity = rights.object_limits()?;
    let session = app.check(request.session()?).ok()?;
    for object in request.object_handles().into_iter().flatten() {
        let Ok(object) = to_ulong(object) else {
            continue;
        };
        if !sees_object(worker, app, identity, session, object) {
            let rv = match request.descriptor().chapter {
                Chapter::Object => CKR_OBJECT_HANDLE_INVALID,
                _ => CKR_KEY_HANDLE_INVALID,
            };
            tracing::info!(
                identity = %identity.name,
                object,
                function = request.descriptor().name,
                rv = %crate::rv::name(rv),
                "object hidden by policy"
            );
            return Some(rv);
        }
    }
    None
}

/// C_FindObjects (v2.40 §5.7.8) for `rights`: the vendor's handles without the hidden ones.
/// For an identity that sees only some objects the vendor is asked again until `max` handles
/// are visible or the search is over, so that fewer than asked still means the end.
pub fn find_objects(
    worker: &WorkerState,
    app: &Application,
    rights: &Rights,
    session: CK_SESSION_HANDLE,
    max: Result<usize, CK_ULONG>,
    count: bool,
) -> (CK_RV, Vec<CK_OBJECT_HANDLE>) {
    let b = &worker.backend;
    let (Some(identity), Ok(max), true) = (rights.object_limits(), max, count) else {
        return b.find_objects(session, max, count);
    };
    let mut visible = Vec::new();
    loop {
        let want = max - visible.len();
        let (r, found) = b.find_objects(session, Ok(want), true);
        if r != CKR_OK {
            return (r, visible);
        }
        let over = found.len() < want;
        visible.extend(
            found
                .into_iter()
                .filter(|&h| sees_object(worker, app, identity, session, h)),
        );
        if over || visible.len() >= max {
            return (CKR_OK, visible);
        }
    }
}

/// What an answer to a request changes of what an identity sees, taken before the request
/// is served.
pub struct Changes {
    /// C_SetAttributeValue's object: its name may have changed.
    renamed: Option<u64>,
    /// The request makes objects (generates, creates, copies, unwraps, derives).
    makes: bool,
}

impl Changes {
    pub fn of(rights: &Rights, request: &Request) -> Option<Self> {
        rights.object_limits()?;
        let d = request.descriptor();
        Some(Self {
            renamed: match request {
                Request::SetAttributeValue { object, .. } => Some(*object),
                _ => None,
            },
            makes: d.changes_token && d.hands_out,
        })
    }
}

/// After an answer: the objects the application made are its own, and an object whose
/// attributes changed is to be looked at again.
pub fn note(app: &Application, changes: Changes, answer: &Response) {
    if let Some(object) = changes.renamed {
        app.object_changed(object);
    }
    if !changes.makes || answer.rv() != 0 {
        return;
    }
    let mut answer = answer;
    while let Response::Identified { answer: inner, .. } = answer {
        answer = inner;
    }
    match answer {
        Response::Handle(h) => app.made_object(*h),
        Response::KeyPair {
            public_key,
            private_key,
        } => {
            app.made_object(*public_key);
            app.made_object(*private_key);
        }
        Response::Encapsulated { key: Some(h), .. } => app.made_object(*h),
        _ => {}
    }
}
