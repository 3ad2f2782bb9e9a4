//! Encryption, decryption, digests, signatures and MACs, verification and the dual-function
//! calls (v2.40 §5.8 to §5.13), and v3.2's verification with the signature given at init. Most arms are one of four shapes: an Init (mechanism and
//! key), a call with input and output (single-part or Update), a Final with output, and a
//! call with input only.

use cryptoki_sys::*;
use protocol::mechanism::Mechanism;
use protocol::message::{Request as R, Response};
use protocol::shape::{Bytes, Out};

use super::answer::{misrouted, object_handle, output, rv};
use crate::worker::application::Application;
use crate::worker::backend::{FinalFn, InitFn, InputFn, UpdateFn};
use crate::worker::mechanism::CMechanism;
use crate::worker::state::WorkerState;

/// Serves a request of this chapter for `app`.
pub fn call(w: &WorkerState, app: &Application, request: R) -> Result<Response, CK_RV> {
    let f = w.backend.list();
    match request {
        R::EncryptInit {
            session: s,
            mechanism: m,
            key,
        } => init(w, app, f.C_EncryptInit, s, &m, key),
        R::Encrypt {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_Encrypt, s, &data, c),
        R::EncryptUpdate {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_EncryptUpdate, s, &data, c),
        R::EncryptFinal {
            session: s,
            capacity: c,
        } => last(w, app, f.C_EncryptFinal, s, c),
        R::DecryptInit {
            session: s,
            mechanism: m,
            key,
        } => init(w, app, f.C_DecryptInit, s, &m, key),
        R::Decrypt {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_Decrypt, s, &data, c),
        R::DecryptUpdate {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_DecryptUpdate, s, &data, c),
        R::DecryptFinal {
            session: s,
            capacity: c,
        } => last(w, app, f.C_DecryptFinal, s, c),
        R::DigestInit { session, mechanism } => {
            let s = app.check(session)?;
            rv(w.backend
                .digest_init(s, &mut CMechanism::from_wire(&mechanism)?))
        }
        R::Digest {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_Digest, s, &data, c),
        R::DigestUpdate { session: s, data } => input(w, app, f.C_DigestUpdate, s, &data),
        R::DigestKey { session, key } => {
            let s = app.check(session)?;
            rv(w.backend.digest_key(s, object_handle(key)?))
        }
        R::DigestFinal {
            session: s,
            capacity: c,
        } => last(w, app, f.C_DigestFinal, s, c),
        R::SignInit {
            session: s,
            mechanism: m,
            key,
        } => init(w, app, f.C_SignInit, s, &m, key),
        R::Sign {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_Sign, s, &data, c),
        R::SignUpdate { session: s, data } => input(w, app, f.C_SignUpdate, s, &data),
        R::SignFinal {
            session: s,
            capacity: c,
        } => last(w, app, f.C_SignFinal, s, c),
        R::SignRecoverInit {
            session: s,
            mechanism: m,
            key,
        } => init(w, app, f.C_SignRecoverInit, s, &m, key),
        R::SignRecover {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_SignRecover, s, &data, c),
        R::VerifyInit {
            session: s,
            mechanism: m,
            key,
        } => init(w, app, f.C_VerifyInit, s, &m, key),
        R::Verify {
            session,
            data,
            signature,
        } => rv(w.backend.verify(app.check(session)?, &data, &signature)),
        R::VerifyUpdate { session: s, data } => input(w, app, f.C_VerifyUpdate, s, &data),
        R::VerifyFinal {
            session: s,
            signature,
        } => input(w, app, f.C_VerifyFinal, s, &signature),
        R::VerifyRecoverInit {
            session: s,
            mechanism: m,
            key,
        } => init(w, app, f.C_VerifyRecoverInit, s, &m, key),
        R::VerifyRecover {
            session: s,
            signature,
            capacity: c,
        } => update(w, app, f.C_VerifyRecover, s, &signature, c),
        R::DigestEncryptUpdate {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_DigestEncryptUpdate, s, &data, c),
        R::DecryptDigestUpdate {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_DecryptDigestUpdate, s, &data, c),
        R::SignEncryptUpdate {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_SignEncryptUpdate, s, &data, c),
        R::DecryptVerifyUpdate {
            session: s,
            data,
            capacity: c,
        } => update(w, app, f.C_DecryptVerifyUpdate, s, &data, c),
        R::VerifySignatureInit { .. }
        | R::VerifySignature { .. }
        | R::VerifySignatureUpdate { .. }
        | R::VerifySignatureFinal { .. } => verify_signature(w, app, request),
        other => Err(misrouted(&other)),
    }
}

/// A C_*Init: the session, the mechanism and the key, as the application gave them.
pub fn init(
    w: &WorkerState,
    app: &Application,
    f: Option<InitFn>,
    session: u64,
    mechanism: &Mechanism,
    key: u64,
) -> Result<Response, CK_RV> {
    let s = app.check(session)?;
    let mut m = CMechanism::from_wire(mechanism)?;
    rv(w.backend.init(f, s, &mut m, object_handle(key)?))
}

/// A single-part call or an Update with input and output (v2.40 §5.2).
fn update(
    w: &WorkerState,
    app: &Application,
    f: Option<UpdateFn>,
    session: u64,
    data: &Bytes,
    capacity: Out,
) -> Result<Response, CK_RV> {
    Ok(output(w.backend.update(
        f,
        app.check(session)?,
        data,
        capacity,
    )))
}

/// A C_*Final with output.
fn last(
    w: &WorkerState,
    app: &Application,
    f: Option<FinalFn>,
    session: u64,
    capacity: Out,
) -> Result<Response, CK_RV> {
    Ok(output(w.backend.final_(f, app.check(session)?, capacity)))
}

/// A call with input only (an Update without output, C_VerifyFinal).
fn input(
    w: &WorkerState,
    app: &Application,
    f: Option<InputFn>,
    session: u64,
    data: &Bytes,
) -> Result<Response, CK_RV> {
    rv(w.backend.input(f, app.check(session)?, data))
}

/// Verification with the signature given at init (v3.2 C_VerifySignatureInit, then
/// C_VerifySignature, or C_VerifySignatureUpdate and C_VerifySignatureFinal).
fn verify_signature(w: &WorkerState, app: &Application, request: R) -> Result<Response, CK_RV> {
    match request {
        R::VerifySignatureInit {
            session,
            mechanism,
            key,
            signature,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let key = object_handle(key)?;
            rv(w.backend.verify_signature_init(s, &mut m, key, &signature))
        }
        R::VerifySignature { session: s, data } => {
            input(w, app, w.backend.verify_signature_input(false), s, &data)
        }
        R::VerifySignatureUpdate { session: s, data } => {
            input(w, app, w.backend.verify_signature_input(true), s, &data)
        }
        R::VerifySignatureFinal { session } => rv(w
            .backend
            .session(w.backend.verify_signature_final(), app.check(session)?)),
        other => Err(misrouted(&other)),
    }
}
