//! An identity's limits, per application (OPERATIONS.md, "Identities and policy"):
//!
//! - `max_sessions`: C_OpenSession past the cap answers `CKR_SESSION_COUNT` (v2.40 §5.6.1:
//!   the code of a token that cannot open more sessions);
//! - `rate_limit`: calls a second, a token bucket holding one second's worth. A call over the
//!   rate waits for its turn, up to [`MAX_WAIT`]: a node that signs in bursts is slowed down,
//!   not failed. One that would wait longer answers `CKR_FUNCTION_FAILED` at once.

use std::time::Duration;

use cryptoki_sys::*;
use protocol::message::{Function, Request};

use super::application::Application;
use crate::policy::Rights;

/// Longest a call waits for its turn under `rate_limit`.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// The answer to a request over the limits of `rights` (after waiting for its turn).
pub fn check(app: &Application, rights: &Rights, request: &Request) -> Option<CK_RV> {
    let Rights::Of(identity) = rights else {
        return None;
    };
    if let (Some(max), Function::OpenSession) = (identity.max_sessions, request.function()) {
        if app.session_count() >= max as usize {
            tracing::warn!(identity = %identity.name, max, "C_OpenSession refused: max_sessions reached");
            return Some(CKR_SESSION_COUNT);
        }
    }
    let rate = identity.rate_limit?;
    match app.take_turn(f64::from(rate), MAX_WAIT) {
        Ok(wait) => {
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            None
        }
        Err(()) => {
            tracing::warn!(identity = %identity.name, rate, function = request.descriptor().name, "call refused: rate_limit (it would wait over 1 s)");
            Some(CKR_FUNCTION_FAILED)
        }
    }
}
