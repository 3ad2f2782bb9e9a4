//! Session management (v2.40 §5.6), with v3.0's C_LoginUser and C_SessionCancel (v3.0
//! §5.6.10, §5.6.11: CKR_FUNCTION_NOT_SUPPORTED from a 2.x vendor).

use cryptoki_sys::*;
use protocol::message::{Request, Response, SessionInfo};

use super::answer::{handle, misrouted, object_handle, ok_then, out_ptr, output, rv};
use crate::worker::application::Application;
use crate::worker::state::WorkerState;
use crate::worker::ulong::{to_ulong, wire};

/// Serves a request of this chapter for `app`.
pub fn call(w: &WorkerState, app: &Application, request: Request) -> Result<Response, CK_RV> {
    let b = &w.backend;
    let f = b.list();
    match request {
        Request::OpenSession {
            slot,
            flags,
            outputs,
        } => {
            let slot = to_ulong(slot)?;
            if let Some(refused) = super::asynchronous::refused_session(w, slot, to_ulong(flags)?) {
                return Err(refused);
            }
            let mut h = 0;
            let r = b.open_session(slot, to_ulong(flags)?, out_ptr(outputs, 0, &mut h));
            if r == CKR_OK && outputs.has(0) {
                app.add_session(h, slot);
            }
            handle(r, h)
        }
        Request::CloseSession { session } => {
            let h = app.check(session)?;
            let r = b.session(f.C_CloseSession, h);
            if r == CKR_OK || r == CKR_SESSION_HANDLE_INVALID || r == CKR_SESSION_CLOSED {
                app.remove_session(h);
            }
            rv(r)
        }
        Request::CloseAllSessions { slot } if !app.shares_vendor() => {
            let slot = to_ulong(slot)?;
            let r = b.close_all_sessions(slot);
            if r == CKR_OK {
                app.take_sessions_of_slot(slot);
            }
            rv(r)
        }
        Request::CloseAllSessions { slot } => {
            // In a w worker, never the vendor's C_CloseAllSessions: it would close every
            // application's sessions.
            let slot = to_ulong(slot)?;
            let mut probe = CK_SLOT_INFO::default();
            let r = b.get_slot_info(slot, &mut probe);
            if r != CKR_OK {
                return rv(r);
            }
            w.close_sessions(&app.take_sessions_of_slot(slot));
            rv(CKR_OK)
        }
        Request::GetSessionInfo { session, outputs } => {
            let mut i = CK_SESSION_INFO::default();
            let r = b.get_session_info(app.check(session)?, out_ptr(outputs, 0, &mut i));
            ok_then(r, || {
                Response::SessionInfo(SessionInfo {
                    slot: wire(i.slotID),
                    state: wire(i.state),
                    flags: wire(i.flags),
                    device_error: wire(i.ulDeviceError),
                })
            })
        }
        Request::GetOperationState { session, capacity } => Ok(output(b.final_(
            f.C_GetOperationState,
            app.check(session)?,
            capacity,
        ))),
        Request::SetOperationState {
            session,
            state,
            encryption_key,
            authentication_key,
        } => {
            let s = app.check(session)?;
            rv(b.set_operation_state(
                s,
                &state,
                object_handle(encryption_key)?,
                object_handle(authentication_key)?,
            ))
        }
        Request::Login {
            session,
            user_type,
            pin,
        } => {
            let s = app.check(session)?;
            rv(b.login(s, to_ulong(user_type)?, pin.as_deref()))
        }
        Request::Logout { session } => rv(b.session(f.C_Logout, app.check(session)?)),
        Request::LoginUser {
            session,
            user_type,
            pin,
            username,
        } => rv(b.login_user(
            app.check(session)?,
            to_ulong(user_type)?,
            pin.as_deref(),
            &username,
        )),
        Request::SessionCancel { session, flags } => {
            rv(b.session_cancel(app.check(session)?, to_ulong(flags)?))
        }
        Request::GetSessionValidationFlags {
            session,
            flags_type,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut flags = 0;
            let r = b.get_session_validation_flags(
                s,
                to_ulong(flags_type)?,
                out_ptr(outputs, 0, &mut flags),
            );
            ok_then(r, || Response::Flags(wire(flags)))
        }
        other => Err(misrouted(&other)),
    }
}
