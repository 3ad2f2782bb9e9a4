//! Slot and token management (v2.40 §5.5).

use cryptoki_sys::*;
use protocol::message::{MechanismInfo, Request, Response, SlotInfo, TokenInfo};

use super::answer::{handle, misrouted, ok_then, out_ptr, rv, version};
use crate::worker::application::Application;
use crate::worker::confine;
use crate::worker::state::WorkerState;
use crate::worker::ulong::{to_ulong, wire};

/// Serves a request of this chapter for `app`.
pub fn call(w: &WorkerState, app: &Application, request: Request) -> Result<Response, CK_RV> {
    let b = &w.backend;
    match request {
        Request::GetSlotList {
            token_present,
            capacity,
        } => {
            let rights = app.rights(&w.policy);
            let (r, count, values) = match rights.token_limits() {
                Some(identity) => confine::visible_slot_list(w, identity, token_present, capacity),
                None => b.slot_list(token_present, capacity),
            };
            Ok(Response::Ulongs {
                rv: wire(r),
                count: wire(count),
                values: values.into_iter().map(wire).collect(),
            })
        }
        Request::GetSlotInfo { slot, outputs } => {
            let mut i = CK_SLOT_INFO::default();
            let r = b.get_slot_info(to_ulong(slot)?, out_ptr(outputs, 0, &mut i));
            ok_then(r, || {
                Response::SlotInfo(SlotInfo {
                    slot_description: i.slotDescription.to_vec(),
                    manufacturer_id: i.manufacturerID.to_vec(),
                    flags: wire(i.flags),
                    hardware_version: version(i.hardwareVersion),
                    firmware_version: version(i.firmwareVersion),
                })
            })
        }
        Request::GetTokenInfo { slot, outputs } => {
            let mut i = CK_TOKEN_INFO::default();
            let r = b.get_token_info(to_ulong(slot)?, out_ptr(outputs, 0, &mut i));
            i.flags = super::asynchronous::token_flags(i.flags);
            ok_then(r, || Response::TokenInfo(token_info(&i)))
        }
        Request::WaitForSlotEvent {
            flags,
            reserved,
            outputs,
        } => {
            let mut slot = 0;
            let slot_ptr = out_ptr(outputs, 0, &mut slot);
            let r = b.wait_for_slot_event(to_ulong(flags)?, reserved, slot_ptr);
            handle(r, slot)
        }
        Request::GetMechanismList { slot, capacity } => {
            let (r, count, values) = b.mechanism_list(to_ulong(slot)?, capacity);
            Ok(Response::Ulongs {
                rv: wire(r),
                count: wire(count),
                values: values.into_iter().map(wire).collect(),
            })
        }
        Request::GetMechanismInfo {
            slot,
            mechanism_type: mechanism,
            outputs,
        } => {
            let mut i = CK_MECHANISM_INFO::default();
            let info = out_ptr(outputs, 0, &mut i);
            let r = b.get_mechanism_info(to_ulong(slot)?, to_ulong(mechanism)?, info);
            ok_then(r, || {
                Response::MechanismInfo(MechanismInfo {
                    min_key_size: wire(i.ulMinKeySize),
                    max_key_size: wire(i.ulMaxKeySize),
                    flags: wire(i.flags),
                })
            })
        }
        Request::InitToken {
            slot,
            so_pin,
            label,
        } => rv(b.init_token(to_ulong(slot)?, so_pin.as_deref(), &label)),
        Request::InitPin { session, pin } => rv(b.init_pin(app.check(session)?, pin.as_deref())),
        Request::SetPin {
            session,
            old_pin,
            new_pin,
        } => {
            let s = app.check(session)?;
            rv(b.set_pin(s, old_pin.as_deref(), new_pin.as_deref()))
        }
        other => Err(misrouted(&other)),
    }
}

fn token_info(i: &CK_TOKEN_INFO) -> TokenInfo {
    TokenInfo {
        label: i.label.to_vec(),
        manufacturer_id: i.manufacturerID.to_vec(),
        model: i.model.to_vec(),
        serial_number: i.serialNumber.to_vec(),
        flags: wire(i.flags),
        max_session_count: wire(i.ulMaxSessionCount),
        session_count: wire(i.ulSessionCount),
        max_rw_session_count: wire(i.ulMaxRwSessionCount),
        rw_session_count: wire(i.ulRwSessionCount),
        max_pin_len: wire(i.ulMaxPinLen),
        min_pin_len: wire(i.ulMinPinLen),
        total_public_memory: wire(i.ulTotalPublicMemory),
        free_public_memory: wire(i.ulFreePublicMemory),
        total_private_memory: wire(i.ulTotalPrivateMemory),
        free_private_memory: wire(i.ulFreePrivateMemory),
        hardware_version: version(i.hardwareVersion),
        firmware_version: version(i.firmwareVersion),
        utc_time: i.utcTime.to_vec(),
    }
}
