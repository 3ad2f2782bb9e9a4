//! Serves one request: the operator's policy first, then the vendor library, through one
//! file per spec chapter (mirroring the shim's `api/`), each arm the server side of one
//! PKCS#11 function. The request's descriptor names its chapter.

mod answer;
mod asynchronous;
mod crypto;
mod general;
mod key;
mod message;
mod object;
mod session;
mod slot;

use protocol::function::Chapter;
use protocol::message::{Function, Request, Response};

use crate::policy::Rights;
use protocol::objects::Handout;

use crate::worker::application::Application;
use crate::worker::audit;
use crate::worker::confine;
use crate::worker::custody;
use crate::worker::heal::Seen;
use crate::worker::identify;
use crate::worker::limits;
use crate::worker::state::WorkerState;
use crate::worker::ulong::{to_ulong, wire};

/// Serves one request for `app`: the operator's policy first (what it refuses is refused
/// with an audit record; a user login under PIN custody is checked and given the partition's
/// PIN), then [`serve`], with the call's audit record.
pub fn dispatch(worker: &WorkerState, app: &Application, request: Request) -> Response {
    let rights = app.rights(&worker.policy);
    let refused = worker
        .policy
        .denials
        .check(&request)
        .or_else(|| rights.check(&request).err())
        .or_else(|| confine::hidden_slot(worker, &rights, &request))
        .or_else(|| confine::hidden_object(worker, app, &rights, &request))
        .or_else(|| custody::refused(&rights, &request))
        .or_else(|| limits::check(app, &rights, &request));
    if let Some(rv) = refused {
        if let Some(sink) = &worker.audit {
            audit::refused(sink, worker, app, &rights, &request, rv);
        }
        if let Rights::Of(identity) = &rights {
            worker.metrics.identity_call(&identity.name, true, None);
        }
        return Response::Rv(wire(rv));
    }
    let renamed = match &request {
        Request::SetAttributeValue { object, .. } => Some(*object),
        _ => None,
    };
    let signing = match (&rights, &request) {
        (Rights::Of(_), Request::SignInit { session, key, .. }) => Some((*session, *key)),
        _ => None,
    };
    let changes = confine::Changes::of(&rights, &request);
    let audited = worker
        .audit
        .as_ref()
        .and_then(|sink| audit::before(sink, worker, app, &rights, &request));
    let answer = match custody::login(worker, &rights, request) {
        Ok(request) => serve(worker, app, request),
        Err(rv) => Response::Rv(wire(rv)),
    };
    if let Some(changes) = changes {
        confine::note(app, changes, &answer);
    }
    if let Some(object) = renamed {
        app.object_changed(object);
    }
    if let (Some(sink), Some(pending)) = (&worker.audit, audited) {
        audit::after(sink, pending, &answer);
    }
    if let Rights::Of(identity) = &rights {
        let signed = signing
            .filter(|_| answer.rv() == 0)
            .and_then(|(session, key)| Some((app.check(session).ok()?, key)))
            .map(|(session, key)| {
                audit::object_names(worker, app, session, key)
                    .0
                    .unwrap_or_else(|| "unnamed".into())
            });
        worker.metrics.identity_call(&identity.name, false, signed);
    }
    answer
}

/// Serves a request the policy lets through: while the vendor instance is broken
/// (`--heal`), its last fatal answer at once (C_Finalize aside: the application's own end of
/// the instance goes to the vendor), else the vendor, whose answer tells whether the instance
/// lost its device.
fn serve(worker: &WorkerState, app: &Application, request: Request) -> Response {
    let seen = Seen::from(&request);
    if let (Some(rv), false) = (worker.heal.fail_fast(), seen.function == Function::Finalize) {
        return Response::Rv(wire(rv));
    }
    // The identity of the objects an answer hands out travels with it (one round trip), read
    // as the application itself could read it (not where C_GetAttributeValue is denied).
    let handout = app
        .identify_objects
        .then(|| Handout::of(&request))
        .flatten()
        .filter(|_| {
            worker
                .policy
                .denials
                .allows(Function::GetAttributeValue.descriptor().name)
        });
    let answer = match request.descriptor().chapter {
        Chapter::General => general::call(worker, app, request),
        Chapter::SlotToken => slot::call(worker, app, request),
        Chapter::Session => session::call(worker, app, request),
        Chapter::Object => object::call(worker, app, request),
        Chapter::Crypto => crypto::call(worker, app, request),
        Chapter::Key => key::call(worker, app, request),
        Chapter::Message => message::call(worker, app, request),
    }
    .unwrap_or_else(|rv| Response::Rv(wire(rv)));
    if let Ok(rv) = to_ulong(answer.rv()) {
        let answers = |slot| {
            let mut info = cryptoki_sys::CK_TOKEN_INFO::default();
            to_ulong(slot).is_ok_and(|slot| {
                worker.backend.get_token_info(slot, &mut info) == cryptoki_sys::CKR_OK
            })
        };
        worker
            .heal
            .observe(&seen, rv, || worker.initialised(), answers);
    }
    match handout {
        Some(handout) => identify::with_identities(worker, app, handout, answer),
        None => answer,
    }
}
