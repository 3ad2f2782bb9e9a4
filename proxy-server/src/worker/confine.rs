//! What an identity's policy hides from its application (DESIGN.md, "Identities, policy and
//! audit"): the tokens it may not see are not there. A slot whose token's label matches none
//! of the identity's `tokens` is absent from C_GetSlotList and answers `CKR_SLOT_ID_INVALID`
//! (v2.40 §5.5: the code of a slot that does not exist) to every call naming it. The labels
//! are the vendor's own answer to C_GetTokenInfo at the time of the call, so a token
//! initialised again under another label is seen, or hidden, at once.

use cryptoki_sys::*;
use protocol::message::Request;
use protocol::shape::Out;

use crate::policy::{Identity, Rights};
use crate::worker::state::WorkerState;
use crate::worker::ulong::wire;

/// Whether the token in `slot` is hidden from `identity`: its label matches none of its
/// patterns, or there is no token. A vendor that cannot tell (an HSM that is down) hides
/// nothing: the call goes on and the vendor answers it.
fn hides(worker: &WorkerState, identity: &Identity, slot: CK_SLOT_ID) -> bool {
    let mut info = CK_TOKEN_INFO::default();
    match worker.backend.get_token_info(slot, &mut info) {
        CKR_OK => !identity.sees_token(&info.label),
        CKR_TOKEN_NOT_PRESENT | CKR_SLOT_ID_INVALID => true,
        _ => false,
    }
}

/// The answer to a request that names a slot the rights hide.
pub fn hidden_slot(worker: &WorkerState, rights: &Rights, request: &Request) -> Option<CK_RV> {
    let identity = rights.token_limits()?;
    let slot = CK_SLOT_ID::try_from(request.slot()?).ok()?;
    hides(worker, identity, slot).then(|| {
        tracing::info!(
            identity = %identity.name,
            slot,
            function = request.descriptor().name,
            "slot hidden by policy: answered CKR_SLOT_ID_INVALID"
        );
        CKR_SLOT_ID_INVALID
    })
}

/// C_GetSlotList for `identity` (v2.40 §5.5.1): the vendor's list without the slots it
/// hides, in the caller's shape. The vendor answers the caller's own call first, so that its
/// argument checks are its own; the visible count then answers a size query, fills a buffer
/// that is large enough, or answers `CKR_BUFFER_TOO_SMALL` with the count.
pub fn visible_slot_list(
    worker: &WorkerState,
    identity: &Identity,
    token_present: bool,
    capacity: Out,
) -> (CK_RV, CK_ULONG, Vec<CK_ULONG>) {
    let b = &worker.backend;
    let (r, _, _) = b.slot_list(token_present, capacity);
    if r != CKR_OK && r != CKR_BUFFER_TOO_SMALL {
        return (r, 0, vec![]);
    }
    // Every slot, then the visible ones (the list may grow between the two calls).
    let all = loop {
        let (r, n, _) = b.slot_list(token_present, Out::query(0));
        if r != CKR_OK {
            return (r, 0, vec![]);
        }
        let (r, _, values) = b.slot_list(token_present, Out::buffer(wire(n)));
        match r {
            CKR_OK => break values,
            CKR_BUFFER_TOO_SMALL => continue,
            r => return (r, 0, vec![]),
        }
    };
    let visible: Vec<CK_ULONG> = all
        .into_iter()
        .filter(|&slot| !hides(worker, identity, slot))
        .collect();
    let count = visible.len() as CK_ULONG;
    match (capacity.buffer, capacity.len) {
        (false, _) => (CKR_OK, count, vec![]),
        (true, Some(len)) if len >= wire(count) => (CKR_OK, count, visible),
        _ => (CKR_BUFFER_TOO_SMALL, count, vec![]),
    }
}
