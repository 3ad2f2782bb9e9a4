//! The worker's side of the audit log (`crate::audit`): which calls of its application are
//! audited, and their events, sent to the router, which writes them on the one chain.
//!
//! An event names the identity, the application, the function, the slot and its token's
//! label, the object the call names (its CKA_ID in hex and its CKA_LABEL, read from the
//! vendor before the call, so that a destroyed object is still named), the mechanism and the
//! return value. Names are read once per handle and slot.

use cryptoki_sys::*;
use protocol::attribute::AttrValue;
use protocol::message::{Request, Response};
use protocol::names;
use protocol::shape::Array;

use super::application::{Application, ObjectNames};
use super::identify;
use super::state::WorkerState;
use super::ulong::{to_ulong, wire};
use crate::audit::{audited, now_ms, Event, Sink};
use crate::policy::Rights;

/// Longest CKA_ID and CKA_LABEL an event carries.
const NAME_BYTES: u64 = 256;

/// What an event needs of a request, taken before it is served.
pub struct Pending {
    event: Event,
}

/// The event of `request` if it is audited, with what must be read before the call.
pub fn before(
    sink: &Sink,
    worker: &WorkerState,
    app: &Application,
    rights: &Rights,
    request: &Request,
) -> Option<Pending> {
    audited(sink.level, request).then(|| Pending {
        event: event(sink, worker, app, rights, request, "call"),
    })
}

/// Sends the event of a served call.
pub fn after(sink: &Sink, pending: Pending, answer: &Response) {
    let mut event = pending.event;
    let rv = answer.rv();
    event.rv = Some(names::or_hex(names::rv(rv), rv));
    event.at_ms = now_ms();
    sink.send(event);
}

/// Sends the event of a call the policy refused with `rv`.
pub fn refused(
    sink: &Sink,
    worker: &WorkerState,
    app: &Application,
    rights: &Rights,
    request: &Request,
    rv: CK_RV,
) {
    let mut event = event(sink, worker, app, rights, request, "refused");
    event.rv = Some(names::or_hex(names::rv(wire(rv)), wire(rv)));
    sink.send(event);
}

fn event(
    sink: &Sink,
    worker: &WorkerState,
    app: &Application,
    rights: &Rights,
    request: &Request,
    kind: &str,
) -> Event {
    let session = request.session().and_then(|s| app.check(s).ok());
    let slot = match request.slot() {
        Some(s) => to_ulong(s).ok(),
        None => session.and_then(|s| app.slot_of(s)),
    };
    let (object_id, object_label) = match (session, request.object_handles()[0]) {
        (Some(s), Some(o)) => object_names(worker, app, s, o),
        _ => (None, None),
    };
    Event {
        at_ms: now_ms(),
        event: kind.into(),
        identity: match rights {
            Rights::Of(identity) => Some(identity.name.clone()),
            _ => None,
        },
        application: Some(sink.label.clone()),
        client: Some(app.id),
        function: Some(request.descriptor().name.into()),
        slot: slot.map(wire),
        token: slot.and_then(|s| sink.token(wire(s), || token_label(worker, s))),
        object_id,
        object_label,
        mechanism: request.mechanism().map(|m| match m.given() {
            Some(m) => names::or_hex(names::mechanism(m.ty), m.ty),
            None => "NULL".into(),
        }),
        detail: new_names(request),
        ..Event::default()
    }
}

/// The CKA_ID and CKA_LABEL that C_SetAttributeValue gives its object (how Fabric names a key
/// it generated: by its SKI), so that the log names the key after the call too.
fn new_names(request: &Request) -> Option<String> {
    let Request::SetAttributeValue {
        template: Array::Given(template),
        ..
    } = request
    else {
        return None;
    };
    let names: Vec<String> = template
        .iter()
        .filter_map(|a| match (a.ty, &a.value) {
            (ty, AttrValue::Bytes(b)) if ty == wire(CKA_ID) => Some(format!(
                "CKA_ID {}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )),
            (ty, AttrValue::Bytes(b)) if ty == wire(CKA_LABEL) => {
                Some(format!("CKA_LABEL {}", String::from_utf8_lossy(b)))
            }
            _ => None,
        })
        .collect();
    (!names.is_empty()).then(|| format!("sets {}", names.join(", ")))
}

/// The label of the token in `slot`, as the vendor gives it.
fn token_label(worker: &WorkerState, slot: CK_SLOT_ID) -> Option<String> {
    let mut info = CK_TOKEN_INFO::default();
    (worker.backend.get_token_info(slot, &mut info) == CKR_OK)
        .then(|| String::from_utf8_lossy(&info.label).trim_end().to_string())
}

/// The CKA_ID (hex) and CKA_LABEL of `object`, as the vendor gives them on `session` (read
/// once per handle and application, again after the application changed them).
pub fn object_names(
    worker: &WorkerState,
    app: &Application,
    session: CK_SESSION_HANDLE,
    object: u64,
) -> ObjectNames {
    app.object_names(object, || read_names(worker, session, object))
}

fn read_names(worker: &WorkerState, session: CK_SESSION_HANDLE, object: u64) -> ObjectNames {
    let Ok(handle) = to_ulong(object) else {
        return (None, None);
    };
    let query = [(wire(CKA_ID), NAME_BYTES), (wire(CKA_LABEL), NAME_BYTES)];
    let Some(attrs) = identify::get(worker, session, handle, &query) else {
        return (None, None);
    };
    let bytes = |ty: CK_ATTRIBUTE_TYPE| {
        attrs
            .iter()
            .find(|a| a.ty == wire(ty))
            .and_then(|a| match &a.value {
                AttrValue::Bytes(b) => Some(b.clone()),
                _ => None,
            })
    };
    (
        bytes(CKA_ID).map(|id| id.iter().map(|b| format!("{b:02x}")).collect()),
        bytes(CKA_LABEL).map(|l| String::from_utf8_lossy(&l).into_owned()),
    )
}
