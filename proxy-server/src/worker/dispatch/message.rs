//! Message-based encryption, decryption, signing and verification (v3.0 §5.10 to §5.16):
//! CKR_FUNCTION_NOT_SUPPORTED from a 2.x vendor. Each answer carries the parameter as the
//! token left it (a generated IV, a tag).

use cryptoki_sys::*;
use protocol::mechanism::MsgParam;
use protocol::message::{Function, Request as R, Response};

use super::answer::{message, misrouted, rv};
use super::crypto::init;
use crate::worker::application::Application;
use crate::worker::backend::{Backend, InitFn, Output, SessionFn};
use crate::worker::mechanism::CMsgParam;
use crate::worker::state::WorkerState;
use crate::worker::ulong::to_ulong;

/// Serves a request of this chapter for `app`.
pub fn call(w: &WorkerState, app: &Application, request: R) -> Result<Response, CK_RV> {
    let b = &w.backend;
    let f = |pick: fn(&CK_FUNCTION_LIST_3_0) -> Option<InitFn>| b.list3().and_then(pick);
    // Which of a pair that share their arguments and their arm this is.
    let function = request.function();
    let decrypt = matches!(
        function,
        Function::DecryptMessage | Function::DecryptMessageBegin | Function::DecryptMessageNext
    );
    let next = matches!(
        function,
        Function::SignMessageNext | Function::VerifyMessageNext
    );
    let verify = function == Function::VerifyMessageBegin;
    match request {
        R::MessageEncryptInit {
            session,
            mechanism,
            key,
        } => init(
            w,
            app,
            f(|l| l.C_MessageEncryptInit),
            session,
            &mechanism,
            key,
        ),
        R::MessageDecryptInit {
            session,
            mechanism,
            key,
        } => init(
            w,
            app,
            f(|l| l.C_MessageDecryptInit),
            session,
            &mechanism,
            key,
        ),
        R::MessageSignInit {
            session,
            mechanism,
            key,
        } => init(w, app, f(|l| l.C_MessageSignInit), session, &mechanism, key),
        R::MessageVerifyInit {
            session,
            mechanism,
            key,
        } => init(
            w,
            app,
            f(|l| l.C_MessageVerifyInit),
            session,
            &mechanism,
            key,
        ),
        R::MessageEncryptFinal { session } => end(w, app, |l| l.C_MessageEncryptFinal, session),
        R::MessageDecryptFinal { session } => end(w, app, |l| l.C_MessageDecryptFinal, session),
        R::MessageSignFinal { session } => end(w, app, |l| l.C_MessageSignFinal, session),
        R::MessageVerifyFinal { session } => end(w, app, |l| l.C_MessageVerifyFinal, session),
        R::EncryptMessage {
            session,
            param,
            aad,
            data,
            capacity,
        }
        | R::DecryptMessage {
            session,
            param,
            aad,
            data,
            capacity,
        } => with_param(w, app, session, &param, |b, s, p| {
            b.crypt_message(decrypt, s, p, &aad, &data, capacity)
        }),
        R::EncryptMessageBegin {
            session,
            param,
            aad,
        }
        | R::DecryptMessageBegin {
            session,
            param,
            aad,
        } => with_param(w, app, session, &param, |b, s, p| {
            Output::rv(b.crypt_message_begin(decrypt, s, p, &aad))
        }),
        R::EncryptMessageNext {
            session,
            param,
            data,
            capacity,
            flags,
        }
        | R::DecryptMessageNext {
            session,
            param,
            data,
            capacity,
            flags,
        } => {
            let flags = to_ulong(flags)?;
            with_param(w, app, session, &param, |b, s, p| {
                b.crypt_message_next(decrypt, s, p, &data, capacity, flags)
            })
        }
        R::SignMessage {
            session,
            param,
            data,
            capacity,
        }
        | R::SignMessageNext {
            session,
            param,
            data,
            capacity,
        } => with_param(w, app, session, &param, |b, s, p| {
            b.sign_message(next, s, p, &data, capacity)
        }),
        R::SignMessageBegin { session, param } | R::VerifyMessageBegin { session, param } => {
            with_param(w, app, session, &param, |b, s, p| {
                Output::rv(b.message_begin(verify, s, p))
            })
        }
        R::VerifyMessage {
            session,
            param,
            data,
            signature,
        }
        | R::VerifyMessageNext {
            session,
            param,
            data,
            signature,
        } => with_param(w, app, session, &param, |b, s, p| {
            Output::rv(b.verify_message(next, s, p, &data, &signature))
        }),
        other => Err(misrouted(&other)),
    }
}

/// C_Message*Final: ends the session's operation of that family.
fn end(
    w: &WorkerState,
    app: &Application,
    pick: fn(&CK_FUNCTION_LIST_3_0) -> Option<SessionFn>,
    session: u64,
) -> Result<Response, CK_RV> {
    rv(w.backend
        .session(w.backend.list3().and_then(pick), app.check(session)?))
}

/// A message-based call on `session` with its per-message parameter: the vendor's answer
/// and the parameter as the vendor left it.
fn with_param(
    w: &WorkerState,
    app: &Application,
    session: u64,
    param: &MsgParam,
    call: impl FnOnce(&Backend, CK_SESSION_HANDLE, &mut CMsgParam) -> Output,
) -> Result<Response, CK_RV> {
    let s = app.check(session)?;
    let mut p = CMsgParam::from_wire(param)?;
    let o = call(&w.backend, s, &mut p);
    Ok(message(o, &p))
}
