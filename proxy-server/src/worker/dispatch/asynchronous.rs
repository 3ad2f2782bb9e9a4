//! Asynchronous operations (PKCS#11 v3.2: sessions opened with CKF_ASYNC_SESSION, calls that
//! answer CKR_PENDING, C_AsyncComplete, C_AsyncGetID, C_AsyncJoin): this proxy answers as a
//! library without asynchronous support, whatever the vendor offers. The one place for it.
//!
//! Why not forward them: a pending call keeps the caller's output buffers and writes them
//! when it completes, and C_AsyncJoin hands the library a new buffer for an operation that may
//! belong to another process. Across the proxy those buffers are the worker's, alive only for
//! one request: a vendor completing into them later would write freed memory. So an
//! asynchronous session is never opened on the vendor, a token never says it supports them,
//! and the three calls are the stubs a 3.2 library without them has
//! (CKR_FUNCTION_NOT_SUPPORTED; kryoptic's own answers).

use cryptoki_sys::*;

use crate::worker::state::WorkerState;

/// C_AsyncComplete, C_AsyncGetID, C_AsyncJoin: never given to the vendor.
pub const ANSWER: CK_RV = CKR_FUNCTION_NOT_SUPPORTED;

/// A C_OpenSession asking for an asynchronous session on a token whose vendor supports them
/// is refused with the code a library answers when it has none (CKR_SESSION_ASYNC_NOT_SUPPORTED,
/// v3.2); any other is the vendor's to answer (one that does not support them ignores the
/// flag or refuses it itself).
pub fn refused_session(w: &WorkerState, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Option<CK_RV> {
    if flags & CKF_ASYNC_SESSION == 0 {
        return None;
    }
    let mut info = CK_TOKEN_INFO::default();
    let supported = w.backend.get_token_info(slot, &mut info) == CKR_OK
        && info.flags & CKF_ASYNC_SESSION_SUPPORTED != 0;
    if supported {
        tracing::info!(
            slot,
            "C_OpenSession: an asynchronous session is not forwarded; CKR_SESSION_ASYNC_NOT_SUPPORTED"
        );
    }
    supported.then_some(CKR_SESSION_ASYNC_NOT_SUPPORTED)
}

/// A token's flags as a library without asynchronous support reports them.
pub fn token_flags(flags: CK_FLAGS) -> CK_FLAGS {
    flags & !CKF_ASYNC_SESSION_SUPPORTED
}
