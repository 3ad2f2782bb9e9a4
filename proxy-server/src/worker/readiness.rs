//! The readiness probe's view of the HSM (DESIGN.md, "Healing the HSM side": HSM
//! reachability per token): whether the vendor library answers C_GetTokenInfo for a slot with
//! a token (`/readyz`), and, for each initialised token, whether it answers now (the gauge
//! `pkcs11_proxy_hsm_reachable`). A token that stops answering keeps its label: the one it
//! had when it last answered.
//!
//! The probe's own instance, broken by an HSM outage (a lost-device answer), is finalised and
//! initialised again first (`--heal`), so that readiness follows the HSM and not the first
//! outage: it serves no application, and the router rate-limits the checks.

use std::collections::{BTreeMap, BTreeSet};

use cryptoki_sys::*;
use parking_lot::Mutex;

use super::heal;
use super::state::WorkerState;
use crate::control::Role;
use crate::metrics::{Probed, Reach};
use crate::rv;

/// The tokens the probe saw initialised, by slot: their labels.
#[derive(Default)]
pub struct Known(Mutex<BTreeMap<u64, String>>);

/// What the vendor answers now.
pub fn probe(state: &WorkerState, known: &Known) -> Probed {
    if !state.initialised() {
        return Probed::default();
    }
    let (answer, probed) = token_answers(state, known);
    if answer == CKR_OK {
        return probed;
    }
    let healing = state.settings.role == Role::Probe && state.settings.heal.enabled;
    if !healing || !heal::lost_device(answer) {
        return probed;
    }
    let b = &state.backend;
    b.finalize();
    let r = b.initialize(
        Some(super::backend::os_locking()),
        state.settings.init_args.as_deref(),
    );
    tracing::info!(
        answer = %rv::name(answer),
        initialize = %rv::name(r),
        "the readiness probe's vendor instance lost its device: initialised again"
    );
    if r != CKR_OK {
        return probed;
    }
    token_answers(state, known).1
}

/// CKR_OK when C_GetTokenInfo answers for a slot with a token, else the vendor's last answer
/// (C_GetSlotList's, or a token's); and each known token's reach.
fn token_answers(state: &WorkerState, known: &Known) -> (CK_RV, Probed) {
    let b = &state.backend;
    let mut known = known.0.lock();
    let mut answering = BTreeSet::new();
    let (rv, _, slots) = b.slot_list(true, protocol::shape::Out::buffer(64));
    let mut last = if rv == CKR_OK {
        CKR_TOKEN_NOT_PRESENT
    } else {
        rv
    };
    let mut ready = false;
    for slot in if rv == CKR_OK { slots } else { Vec::new() } {
        let mut info = CK_TOKEN_INFO::default();
        last = b.get_token_info(slot, &mut info);
        if last != CKR_OK {
            continue;
        }
        ready = true;
        if info.flags & CKF_TOKEN_INITIALIZED != 0 {
            let label = String::from_utf8_lossy(&info.label).trim_end().to_string();
            known.insert(slot, label);
            answering.insert(slot);
        }
    }
    let tokens = known
        .iter()
        .map(|(&slot, label)| Reach {
            slot,
            token: label.clone(),
            answers: answering.contains(&slot),
        })
        .collect();
    let answer = if ready { CKR_OK } else { last };
    (answer, Probed { ready, tokens })
}
