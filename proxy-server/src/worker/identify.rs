//! The identity of each object handed out, sent with the answer that hands it out, for the
//! shim's recovery (DESIGN.md, "Recovery model"; hello flag `identify_objects`).
//!
//! Each object is identified once per application: the application's view remembers what it
//! was sent, so that Fabric's search for its key before every signature costs the vendor no
//! extra call. A class the request fixes (a search or creation template, C_GenerateKeyPair's
//! keys) is not asked again; the vendor is asked only the attributes that class has
//! (`protocol::objects::identity_query`), so a key is never asked its certificate type.

use cryptoki_sys::*;
use protocol::attribute::{AttrOut, AttrQuery, AttrValue, Attribute, Want};

use protocol::message::{Identity, Response};
use protocol::objects::{identity_query, token_identity, Handout};

use super::application::Application;
use super::state::WorkerState;
use super::template::CTemplate;
use super::ulong::wire;

/// The answer with the identities of the objects it hands out that `app` was not sent yet.
pub fn with_identities(
    worker: &WorkerState,
    app: &Application,
    handout: Handout,
    mut answer: Response,
) -> Response {
    let Ok(session) = app.check(handout.session) else {
        return answer;
    };
    let fresh: Vec<(usize, u64)> = handout
        .objects(&mut answer)
        .into_iter()
        .map(|h| *h)
        .enumerate()
        .filter(|(_, h)| *h != wire(CK_INVALID_HANDLE) && app.first_handout(*h))
        .collect();
    if fresh.is_empty() {
        return answer;
    }
    let identities = fresh
        .into_iter()
        .map(|(i, object)| Identity {
            object,
            attributes: if handout.makes_session_object(i) {
                None
            } else {
                read(worker, session, object, handout.class(i))
            },
        })
        .collect();
    Response::Identified {
        identities,
        answer: Box::new(answer),
    }
}

/// [`Request::IdentifyObjects`]: the identity of each of `objects`.
pub fn identify(
    worker: &WorkerState,
    app: &Application,
    session: CK_SESSION_HANDLE,
    objects: Vec<u64>,
) -> Response {
    let identities = objects
        .into_iter()
        .map(|object| {
            app.first_handout(object);
            Identity {
                object,
                attributes: read(worker, session, object, None),
            }
        })
        .collect();
    Response::Identified {
        identities,
        answer: Box::new(Response::Rv(wire(CKR_OK))),
    }
}

/// The identity of `object` (of `class`, when known), or `None` for a session object, an
/// object of a class that is not stored (v2.40 §4.3), or one whose attributes cannot be read.
fn read(
    worker: &WorkerState,
    session: CK_SESSION_HANDLE,
    object: u64,
    class: Option<u64>,
) -> Option<Vec<Attribute>> {
    let handle = CK_OBJECT_HANDLE::try_from(object).ok()?;
    let class = match class {
        Some(c) => c,
        None => match get(worker, session, handle, &[(wire(CKA_CLASS), 1)])?.pop()? {
            Attribute {
                value: AttrValue::Ulong(c),
                ..
            } => c,
            _ => return None,
        },
    };
    token_identity(class, get(worker, session, handle, identity_query(class)?)?)
}

/// The values the vendor gives for `query` (type, buffer in wire units); an attribute it
/// answers without a value (too long, or an answer of its own) is left out.
pub(super) fn get(
    worker: &WorkerState,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    query: &[(u64, u64)],
) -> Option<Vec<Attribute>> {
    let asked: Vec<AttrQuery> = query
        .iter()
        .map(|&(ty, units)| AttrQuery {
            ty,
            want: Want::Buffer(units),
        })
        .collect();
    let mut t = CTemplate::for_query(&asked.into()).ok()?;
    // Per-attribute answers are meaningful with these return values (v2.40 §5.7.5).
    match worker.backend.get_attribute_value(session, object, &mut t) {
        CKR_OK | CKR_ATTRIBUTE_TYPE_INVALID | CKR_ATTRIBUTE_SENSITIVE | CKR_BUFFER_TOO_SMALL => {}
        _ => return None,
    }
    Some(
        query
            .iter()
            .zip(t.results())
            .filter_map(|(&(ty, _), out)| match out {
                AttrOut::Value(value) => Some(Attribute { ty, value }),
                _ => None,
            })
            .collect(),
    )
}
