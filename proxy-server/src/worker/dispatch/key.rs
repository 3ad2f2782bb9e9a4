//! Key management (v2.40 §5.14; v3.2 key encapsulation and authenticated wrapping) and random
//! numbers (§5.15).

use cryptoki_sys::*;
use protocol::frame::MAX_DATA_LEN;
use protocol::message::{Request, Response};

use super::answer::{handle, misrouted, object_handle, ok_then, out_ptr, output, rv};
use crate::worker::application::Application;
use crate::worker::mechanism::CMechanism;
use crate::worker::state::WorkerState;
use crate::worker::template::CTemplate;
use crate::worker::ulong::{to_ulong, wire};

/// Serves a request of this chapter for `app`.
pub fn call(w: &WorkerState, app: &Application, request: Request) -> Result<Response, CK_RV> {
    let b = &w.backend;
    let f = b.list();
    match request {
        Request::GenerateKey {
            session,
            mechanism,
            template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            let r = b.generate_key(s, &mut m, &mut t, out_ptr(outputs, 0, &mut h));
            handle(r, h)
        }
        Request::GenerateKeyPair {
            session,
            mechanism,
            public_template,
            private_template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut public = CTemplate::from_wire(&public_template)?;
            let mut private = CTemplate::from_wire(&private_template)?;
            let (mut pubk, mut privk) = (0, 0);
            let r = b.generate_key_pair(
                s,
                &mut m,
                &mut public,
                &mut private,
                (
                    out_ptr(outputs, 0, &mut pubk),
                    out_ptr(outputs, 1, &mut privk),
                ),
            );
            ok_then(r, || Response::KeyPair {
                public_key: wire(pubk),
                private_key: wire(privk),
            })
        }
        Request::WrapKey {
            session,
            mechanism,
            wrapping_key,
            key,
            capacity,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            Ok(output(b.wrap_key(
                s,
                &mut m,
                object_handle(wrapping_key)?,
                object_handle(key)?,
                capacity,
            )))
        }
        Request::UnwrapKey {
            session,
            mechanism,
            unwrapping_key,
            wrapped_key,
            template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            handle(
                b.unwrap_key(
                    s,
                    &mut m,
                    object_handle(unwrapping_key)?,
                    &wrapped_key,
                    &mut t,
                    out_ptr(outputs, 0, &mut h),
                ),
                h,
            )
        }
        Request::DeriveKey {
            session,
            mechanism,
            base_key,
            template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            let key = out_ptr(outputs, 0, &mut h);
            handle(
                b.derive_key(s, &mut m, object_handle(base_key)?, &mut t, key),
                h,
            )
        }
        Request::SeedRandom { session, seed } => {
            rv(b.input(f.C_SeedRandom, app.check(session)?, &seed))
        }
        Request::GenerateRandom {
            session,
            len,
            outputs,
        } => {
            let s = app.check(session)?;
            if len > MAX_DATA_LEN && outputs.has(0) {
                tracing::warn!(len, "C_GenerateRandom: more bytes than one frame carries");
                return Err(CKR_ARGUMENTS_BAD);
            }
            let buffer = if outputs.has(0) {
                Ok(len as usize)
            } else {
                Err(to_ulong(len)?)
            };
            let (r, data) = b.generate_random(s, buffer);
            ok_then(r, || Response::Output {
                rv: wire(CKR_OK),
                len,
                data,
            })
        }
        Request::EncapsulateKey { .. } | Request::DecapsulateKey { .. } => {
            encapsulation(w, app, request)
        }
        Request::WrapKeyAuthenticated { .. } | Request::UnwrapKeyAuthenticated { .. } => {
            authenticated_wrapping(w, app, request)
        }
        other => Err(misrouted(&other)),
    }
}

/// Key encapsulation (v3.2 C_EncapsulateKey, C_DecapsulateKey).
fn encapsulation(w: &WorkerState, app: &Application, request: Request) -> Result<Response, CK_RV> {
    let b = &w.backend;
    match request {
        Request::EncapsulateKey {
            session,
            mechanism,
            public_key,
            template,
            capacity,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            let key = out_ptr(outputs, 0, &mut h);
            let o = b.encapsulate_key(s, &mut m, object_handle(public_key)?, &mut t, capacity, key);
            // The vendor makes the key only when it writes the ciphertext (v3.2).
            let made = o.rv == CKR_OK && capacity.buffer && outputs.has(0);
            Ok(Response::Encapsulated {
                rv: wire(o.rv),
                len: wire(o.len),
                data: o.data,
                key: made.then(|| wire(h)),
            })
        }
        Request::DecapsulateKey {
            session,
            mechanism,
            private_key,
            template,
            ciphertext,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            let key = out_ptr(outputs, 0, &mut h);
            let private_key = object_handle(private_key)?;
            handle(
                b.decapsulate_key(s, &mut m, private_key, &mut t, &ciphertext, key),
                h,
            )
        }
        other => Err(misrouted(&other)),
    }
}

/// Authenticated key wrapping (v3.2 C_WrapKeyAuthenticated, C_UnwrapKeyAuthenticated).
fn authenticated_wrapping(
    w: &WorkerState,
    app: &Application,
    request: Request,
) -> Result<Response, CK_RV> {
    let b = &w.backend;
    match request {
        Request::WrapKeyAuthenticated {
            session,
            mechanism,
            wrapping_key,
            key,
            associated_data,
            capacity,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let keys = (object_handle(wrapping_key)?, object_handle(key)?);
            Ok(output(b.wrap_key_authenticated(
                s,
                &mut m,
                keys,
                &associated_data,
                capacity,
            )))
        }
        Request::UnwrapKeyAuthenticated {
            session,
            mechanism,
            unwrapping_key,
            wrapped_key,
            template,
            associated_data,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            let key = out_ptr(outputs, 0, &mut h);
            handle(
                b.unwrap_key_authenticated(
                    s,
                    &mut m,
                    object_handle(unwrapping_key)?,
                    (&wrapped_key, &associated_data),
                    &mut t,
                    key,
                ),
                h,
            )
        }
        other => Err(misrouted(&other)),
    }
}
