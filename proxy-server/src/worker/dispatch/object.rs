//! Object management (v2.40 §5.7), and the identities of objects handed out earlier
//! ([`Request::IdentifyObjects`]). C_GetAttributeValue size queries may be completed here and
//! searches run ahead (DESIGN.md, "Two-call functions").

use cryptoki_sys::*;
use protocol::attribute::{completable, follow_up, AttrQuery, Attribute};
use protocol::message::{Request, Response};
use protocol::shape::Array;

use super::answer::{handle, misrouted, object_handle, ok_then, out_ptr, rv};
use crate::worker::application::Application;
use crate::worker::confine;
use crate::worker::identify;
use crate::worker::state::WorkerState;
use crate::worker::template::CTemplate;
use crate::worker::ulong::{to_ulong, wire};

/// Most handles returned by one C_FindObjects (the caller loops until none are left).
const MAX_FIND_COUNT: u64 = 65_536;

/// Serves a request of this chapter for `app`.
pub fn call(w: &WorkerState, app: &Application, request: Request) -> Result<Response, CK_RV> {
    let b = &w.backend;
    let f = b.list();
    match request {
        Request::CreateObject {
            session,
            template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            handle(b.create_object(s, &mut t, out_ptr(outputs, 0, &mut h)), h)
        }
        Request::CopyObject {
            session,
            object,
            template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            let r = b.copy_object(
                s,
                object_handle(object)?,
                &mut t,
                out_ptr(outputs, 0, &mut h),
            );
            handle(r, h)
        }
        Request::DestroyObject { session, object } => {
            let s = app.check(session)?;
            let h = object_handle(object)?;
            let r = b.destroy_object(s, h);
            if r == CKR_OK {
                app.forget_object(object);
            }
            rv(r)
        }
        Request::GetObjectSize {
            session,
            object,
            outputs,
        } => {
            let mut size = 0;
            let s = app.check(session)?;
            let r = b.get_object_size(s, object_handle(object)?, out_ptr(outputs, 0, &mut size));
            ok_then(r, || Response::Size(wire(size)))
        }
        Request::GetAttributeValue {
            session,
            object,
            query,
            complete,
        } => get_attribute_value(w, app, session, object, &query, complete),
        Request::SetAttributeValue {
            session,
            object,
            template,
        } => {
            let s = app.check(session)?;
            let mut t = CTemplate::from_wire(&template)?;
            rv(b.set_attribute_value(s, object_handle(object)?, &mut t))
        }
        Request::FindObjectsInit {
            session,
            template,
            prefetch,
        } => find_objects_init(w, app, session, &template, prefetch),
        Request::FindObjects {
            session,
            max_count,
            outputs,
        } => {
            let s = app.check(session)?;
            let max = if outputs.has(0) {
                Ok(max_count.min(MAX_FIND_COUNT) as usize)
            } else {
                Err(to_ulong(max_count)?)
            };
            let rights = app.rights(&w.policy);
            let (r, found) = confine::find_objects(w, app, &rights, s, max, outputs.has(1));
            let values: Vec<u64> = found.into_iter().map(wire).collect();
            Ok(Response::Ulongs {
                rv: wire(r),
                count: values.len() as u64,
                values,
            })
        }
        Request::FindObjectsFinal { session } => {
            rv(b.session(f.C_FindObjectsFinal, app.check(session)?))
        }
        Request::IdentifyObjects { session, objects } => {
            let s = app.check(session)?;
            // No more than one C_FindObjects hands out.
            if objects.len() as u64 > MAX_FIND_COUNT {
                tracing::warn!(
                    objects = objects.len(),
                    "identities of more objects than one search hands out"
                );
                return Err(CKR_ARGUMENTS_BAD);
            }
            Ok(identify::identify(w, app, s, objects))
        }
        other => Err(misrouted(&other)),
    }
}

/// C_GetAttributeValue (v2.40 §5.7.5); a size query asked to be `complete`d is followed at
/// once by the application's next call, the values in buffers of the lengths the vendor gave
/// (DESIGN.md, "Two-call functions").
fn get_attribute_value(
    w: &WorkerState,
    app: &Application,
    session: u64,
    object: u64,
    query: &Array<AttrQuery>,
    complete: bool,
) -> Result<Response, CK_RV> {
    let b = &w.backend;
    let s = app.check(session)?;
    let h = object_handle(object)?;
    let mut t = CTemplate::for_query(query)?;
    let r = b.get_attribute_value(s, h, &mut t);
    let lengths = t.results();
    // None too large for one frame.
    let real = match (query, complete && r == CKR_OK) {
        (Array::Given(q), true) if completable(query) => {
            follow_up(q, &lengths).and_then(|real| CTemplate::for_query(&real.into()).ok())
        }
        _ => None,
    };
    Ok(match real {
        Some(mut real) => {
            let rv = b.get_attribute_value(s, h, &mut real);
            Response::AttributesCompleted {
                lengths,
                rv: wire(rv),
                values: real.results(),
            }
        }
        None => Response::Attributes {
            rv: wire(r),
            values: lengths,
        },
    })
}

/// C_FindObjectsInit (v2.40 §5.7.7); with a `prefetch`, the application's next calls are
/// made at once: the first handles, and the end of the search when they were all there is.
fn find_objects_init(
    w: &WorkerState,
    app: &Application,
    session: u64,
    template: &Array<Attribute>,
    prefetch: u64,
) -> Result<Response, CK_RV> {
    let b = &w.backend;
    let f = b.list();
    let s = app.check(session)?;
    let mut t = CTemplate::from_wire(template)?;
    let r = b.find_objects_init(s, &mut t);
    if r != CKR_OK || prefetch == 0 {
        return rv(r);
    }
    let asked = prefetch.min(MAX_FIND_COUNT) as usize;
    let rights = app.rights(&w.policy);
    let (find_rv, found) = confine::find_objects(w, app, &rights, s, Ok(asked), true);
    let final_rv = (find_rv == CKR_OK && found.len() < asked)
        .then(|| wire(b.session(f.C_FindObjectsFinal, s)));
    Ok(Response::Found {
        objects: found.into_iter().map(wire).collect(),
        find_rv: wire(find_rv),
        final_rv,
    })
}
