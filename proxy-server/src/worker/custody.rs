//! PIN custody in the worker (OPERATIONS.md, "PIN custody"): under an identity with a
//! `pin_file`, the application's user login presents its client secret, which is checked
//! here; the vendor gets the partition's PIN from the file, read at each login (rotated by
//! writing the file). A wrong secret answers `CKR_PIN_INCORRECT` and never reaches the HSM,
//! whose retry counter does not move; the router counts them per identity across its
//! applications and, after `pin_attempts` within `pin_lockout_seconds`, locks the identity
//! out for as long: its logins answer `CKR_PIN_LOCKED`. The application cannot change the
//! partition's PIN (C_SetPIN, C_InitPIN: `CKR_FUNCTION_NOT_SUPPORTED`).

use cryptoki_sys::*;
use protocol::message::{Function, Request, SecretBytes};

use super::state::WorkerState;
use super::ulong::wire;
use crate::control::ToRouter;
use crate::policy::{Custody, Identity, Rights};

/// The identity and its custody, when `rights` keep the PIN.
fn custody(rights: &Rights) -> Option<(&Identity, &Custody)> {
    match rights {
        Rights::Of(identity) => identity.custody.as_ref().map(|c| (identity.as_ref(), c)),
        _ => None,
    }
}

/// The refusal of a PIN change under custody.
pub fn refused(rights: &Rights, request: &Request) -> Option<CK_RV> {
    let (identity, _) = custody(rights)?;
    matches!(request.function(), Function::SetPin | Function::InitPin).then(|| {
        tracing::warn!(
            identity = %identity.name,
            function = request.descriptor().name,
            "refused: the proxy keeps this identity's PIN (rotate it in its pin_file)"
        );
        CKR_FUNCTION_NOT_SUPPORTED
    })
}

/// A user login under custody: checked, and given the partition's PIN; other requests pass.
pub fn login(
    worker: &WorkerState,
    rights: &Rights,
    mut request: Request,
) -> Result<Request, CK_RV> {
    let Some((identity, custody)) = custody(rights) else {
        return Ok(request);
    };
    let pin = match &mut request {
        Request::Login { user_type, pin, .. } | Request::LoginUser { user_type, pin, .. }
            if *user_type == wire(CKU_USER) =>
        {
            pin
        }
        _ => return Ok(request),
    };
    if worker.locked_out(&identity.name) {
        tracing::warn!(identity = %identity.name, "login refused: the identity is locked out (wrong client secrets)");
        return Err(CKR_PIN_LOCKED);
    }
    let presented = pin.as_deref().unwrap_or_default();
    if !custody.secret.verify(presented) {
        tracing::warn!(identity = %identity.name, "login refused: wrong client secret (the HSM was not asked)");
        let _ = worker.tell_router(&ToRouter::LoginFailed {
            identity: identity.name.clone(),
            attempts: custody.attempts,
            window_ms: custody.window.as_millis() as u64,
        });
        return Err(CKR_PIN_INCORRECT);
    }
    match std::fs::read(&custody.pin_file) {
        Ok(mut bytes) => {
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            *pin = Some(SecretBytes::from(bytes));
            Ok(request)
        }
        Err(e) => {
            tracing::error!(identity = %identity.name, pin_file = %custody.pin_file.display(), error = %e, "login failed: the partition's PIN cannot be read");
            Err(CKR_FUNCTION_FAILED)
        }
    }
}
