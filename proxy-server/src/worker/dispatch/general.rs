//! General purpose functions (v2.40 §5.4) and C_GetFunctionStatus / C_CancelFunction
//! (§5.16). An application's worker forwards them: the vendor instance is the application's
//! own. A shared worker's instance is everybody's: a later C_Initialize is answered as the
//! vendor would (already initialised), and C_Finalize closes only the application's sessions.
//! The v3.2 asynchronous calls are answered here as a library without them answers
//! ([`super::asynchronous`]).

use cryptoki_sys::*;
use protocol::message::{Info, Request, Response};

use super::answer::{misrouted, ok_then, out_ptr, rv, version};
use crate::worker::application::Application;
use crate::worker::state::WorkerState;
use crate::worker::ulong::wire;

/// Serves a request of this chapter for `app`.
pub fn call(w: &WorkerState, app: &Application, request: Request) -> Result<Response, CK_RV> {
    let b = &w.backend;
    let f = b.list();
    match request {
        Request::Initialize { args } if !app.shares_vendor() => {
            rv(b.initialize(args, w.settings.init_args.as_deref()))
        }
        Request::Initialize { .. } => rv(CKR_CRYPTOKI_ALREADY_INITIALIZED),
        Request::Finalize {} if !app.shares_vendor() => {
            let r = b.finalize();
            if r == CKR_OK {
                app.take_all_sessions();
                w.finalized();
            }
            rv(r)
        }
        Request::Finalize {} => {
            w.close_sessions(&app.take_all_sessions());
            rv(CKR_OK)
        }
        Request::GetInfo { outputs } => {
            let mut i = CK_INFO::default();
            let r = b.get_info(out_ptr(outputs, 0, &mut i));
            ok_then(r, || {
                Response::Info(Info {
                    cryptoki_version: version(i.cryptokiVersion),
                    manufacturer_id: i.manufacturerID.to_vec(),
                    flags: wire(i.flags),
                    library_description: i.libraryDescription.to_vec(),
                    library_version: version(i.libraryVersion),
                })
            })
        }
        Request::GetFunctionStatus { session } => {
            rv(b.session(f.C_GetFunctionStatus, app.check(session)?))
        }
        Request::CancelFunction { session } => {
            rv(b.session(f.C_CancelFunction, app.check(session)?))
        }
        Request::AsyncComplete { .. } | Request::AsyncGetId { .. } | Request::AsyncJoin { .. } => {
            rv(super::asynchronous::ANSWER)
        }
        other => Err(misrouted(&other)),
    }
}
