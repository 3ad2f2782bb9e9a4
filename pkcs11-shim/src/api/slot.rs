//! Slot and token management functions (PKCS#11 v2.40 §5.5).

use std::ffi::c_void;

use cryptoki_sys::*;
use protocol::message::{Request, Response};
use protocol::shape::Outputs;

use crate::client;
use crate::ffi::{
    entry, input, narrow, padded, pin, put, rv_of, unexpected, wire, write_answer, OutBuf,
};

fn version(v: (u8, u8)) -> CK_VERSION {
    CK_VERSION {
        major: v.0,
        minor: v.1,
    }
}

/// C_GetSlotList (v2.40 §5.5.1), with the two-call size convention.
#[no_mangle]
pub unsafe extern "C" fn C_GetSlotList(
    token_present: CK_BBOOL,
    list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    entry!("C_GetSlotList", {
        let client = client::current()?;
        let buf = OutBuf::new(list, count)?;
        let r = client.call(Request::GetSlotList {
            token_present: token_present != 0,
            capacity: buf.capacity(),
        })?;
        buf.write_ulongs(r)
    })
}

/// C_GetSlotInfo (v2.40 §5.5.2).
#[no_mangle]
pub unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    entry!("C_GetSlotInfo", {
        let client = client::current()?;
        let outputs = Outputs::of(&[!info.is_null()]);
        let r = client.call(Request::GetSlotInfo {
            slot: wire(slot),
            outputs,
        })?;
        write_answer!(r, Response::SlotInfo, info, |i| CK_SLOT_INFO {
            slotDescription: padded(&i.slot_description),
            manufacturerID: padded(&i.manufacturer_id),
            flags: narrow(i.flags)?,
            hardwareVersion: version(i.hardware_version),
            firmwareVersion: version(i.firmware_version),
        })
    })
}

/// C_GetTokenInfo (v2.40 §5.5.3).
#[no_mangle]
pub unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    entry!("C_GetTokenInfo", {
        let client = client::current()?;
        let outputs = Outputs::of(&[!info.is_null()]);
        let r = client.call(Request::GetTokenInfo {
            slot: wire(slot),
            outputs,
        })?;
        write_answer!(r, Response::TokenInfo, info, |i| CK_TOKEN_INFO {
            label: padded(&i.label),
            manufacturerID: padded(&i.manufacturer_id),
            model: padded(&i.model),
            serialNumber: padded(&i.serial_number),
            flags: narrow(i.flags)?,
            ulMaxSessionCount: narrow(i.max_session_count)?,
            ulSessionCount: narrow(i.session_count)?,
            ulMaxRwSessionCount: narrow(i.max_rw_session_count)?,
            ulRwSessionCount: narrow(i.rw_session_count)?,
            ulMaxPinLen: narrow(i.max_pin_len)?,
            ulMinPinLen: narrow(i.min_pin_len)?,
            ulTotalPublicMemory: narrow(i.total_public_memory)?,
            ulFreePublicMemory: narrow(i.free_public_memory)?,
            ulTotalPrivateMemory: narrow(i.total_private_memory)?,
            ulFreePrivateMemory: narrow(i.free_private_memory)?,
            hardwareVersion: version(i.hardware_version),
            firmwareVersion: version(i.firmware_version),
            utcTime: padded(&i.utc_time),
        })
    })
}

/// C_WaitForSlotEvent (v2.40 §5.5.4): `pReserved` must be NULL. The call takes a connection
/// of its own from the pool, so a blocking wait does not hold up other threads' calls, and a
/// C_Finalize during a blocking wait ends it with CKR_CRYPTOKI_NOT_INITIALIZED.
#[no_mangle]
pub unsafe extern "C" fn C_WaitForSlotEvent(
    flags: CK_FLAGS,
    slot: *mut CK_SLOT_ID,
    reserved: *mut c_void,
) -> CK_RV {
    entry!("C_WaitForSlotEvent", {
        let client = client::current()?;
        let request = Request::WaitForSlotEvent {
            flags: wire(flags),
            reserved: !reserved.is_null(),
            outputs: Outputs::of(&[!slot.is_null()]),
        };
        let answer = if flags & CKF_DONT_BLOCK != 0 {
            client.call(request)
        } else {
            // A C_Finalize meanwhile ends the wait (v2.40 §5.5.4).
            client
                .call_interruptible(request)
                .map_err(|rv| client::current().map_or(CKR_CRYPTOKI_NOT_INITIALIZED, |_| rv))
        };
        match answer? {
            Response::Handle(s) => {
                put(slot, narrow(s)?);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    })
}

/// C_GetMechanismList (v2.40 §5.5.5), with the two-call size convention.
#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    entry!("C_GetMechanismList", {
        let client = client::current()?;
        let buf = OutBuf::new(list, count)?;
        let r = client.call(Request::GetMechanismList {
            slot: wire(slot),
            capacity: buf.capacity(),
        })?;
        buf.write_ulongs(r)
    })
}

/// C_GetMechanismInfo (v2.40 §5.5.6).
#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    ty: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    entry!("C_GetMechanismInfo", {
        let client = client::current()?;
        let r = client.call(Request::GetMechanismInfo {
            slot: wire(slot),
            mechanism_type: wire(ty),
            outputs: Outputs::of(&[!info.is_null()]),
        })?;
        write_answer!(r, Response::MechanismInfo, info, |i| CK_MECHANISM_INFO {
            ulMinKeySize: narrow(i.min_key_size)?,
            ulMaxKeySize: narrow(i.max_key_size)?,
            flags: narrow(i.flags)?,
        })
    })
}

/// C_InitToken (v2.40 §5.5.7): the label is 32 blank-padded bytes; a NULL label travels as
/// NULL, for the vendor to answer.
#[no_mangle]
pub unsafe extern "C" fn C_InitToken(
    slot: CK_SLOT_ID,
    so_pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
    label: *mut CK_UTF8CHAR,
) -> CK_RV {
    entry!("C_InitToken", {
        let client = client::current()?;
        let label = input(label, 32)?;
        let so_pin = pin(so_pin, pin_len)?;
        rv_of(client.call(Request::InitToken {
            slot: wire(slot),
            so_pin,
            label,
        })?)
    })
}

/// C_InitPIN (v2.40 §5.5.8).
#[no_mangle]
pub unsafe extern "C" fn C_InitPIN(
    session: CK_SESSION_HANDLE,
    p: *mut CK_UTF8CHAR,
    n: CK_ULONG,
) -> CK_RV {
    entry!("C_InitPIN", {
        let client = client::current()?;
        let pin = pin(p, n)?;
        rv_of(client.call(Request::InitPin {
            session: wire(session),
            pin,
        })?)
    })
}

/// C_SetPIN (v2.40 §5.5.9).
#[no_mangle]
pub unsafe extern "C" fn C_SetPIN(
    session: CK_SESSION_HANDLE,
    old: *mut CK_UTF8CHAR,
    old_len: CK_ULONG,
    new: *mut CK_UTF8CHAR,
    new_len: CK_ULONG,
) -> CK_RV {
    entry!("C_SetPIN", {
        let client = client::current()?;
        let (old_pin, new_pin) = (pin(old, old_len)?, pin(new, new_len)?);
        rv_of(client.call(Request::SetPin {
            session: wire(session),
            old_pin,
            new_pin,
        })?)
    })
}
