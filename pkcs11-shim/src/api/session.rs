//! Session management functions (PKCS#11 v2.40 §5.6), with v3.0's C_LoginUser (§5.6.9) and
//! C_SessionCancel (§5.6.11), which a 2.x vendor answers CKR_FUNCTION_NOT_SUPPORTED.

use std::ffi::c_void;

use cryptoki_sys::*;
use protocol::message::{Request, Response};
use protocol::shape::Outputs;

use crate::client;
use crate::ffi::{entry, input, narrow, pin, rv_of, wire, write_answer, OutBuf};

/// C_OpenSession (v2.40 §5.6.1). Notification callbacks stay in this process: they are not
/// forwarded (vendor libraries, SoftHSM2 and Luna among them, do not call them either).
#[no_mangle]
pub unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _application: *mut c_void,
    _notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    entry!("C_OpenSession", {
        let client = client::current()?;
        let r = client.call(Request::OpenSession {
            slot: wire(slot),
            flags: wire(flags),
            outputs: Outputs::of(&[!session.is_null()]),
        })?;
        write_answer!(r, Response::Handle, session, |h| narrow(h)?)
    })
}

/// C_CloseSession (v2.40 §5.6.2).
#[no_mangle]
pub unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    entry!("C_CloseSession", {
        rv_of(client::call(Request::CloseSession {
            session: wire(session),
        })?)
    })
}

/// C_CloseAllSessions (v2.40 §5.6.3): closes this application's sessions on the slot only.
#[no_mangle]
pub unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    entry!("C_CloseAllSessions", {
        rv_of(client::call(Request::CloseAllSessions {
            slot: wire(slot),
        })?)
    })
}

/// C_GetSessionInfo (v2.40 §5.6.4).
#[no_mangle]
pub unsafe extern "C" fn C_GetSessionInfo(
    session: CK_SESSION_HANDLE,
    info: *mut CK_SESSION_INFO,
) -> CK_RV {
    entry!("C_GetSessionInfo", {
        let client = client::current()?;
        let r = client.call(Request::GetSessionInfo {
            session: wire(session),
            outputs: Outputs::of(&[!info.is_null()]),
        })?;
        write_answer!(r, Response::SessionInfo, info, |i| CK_SESSION_INFO {
            slotID: narrow(i.slot)?,
            state: narrow(i.state)?,
            flags: narrow(i.flags)?,
            ulDeviceError: narrow(i.device_error)?,
        })
    })
}

/// C_GetOperationState (v2.40 §5.6.5), with the two-call size convention.
#[no_mangle]
pub unsafe extern "C" fn C_GetOperationState(
    session: CK_SESSION_HANDLE,
    state: *mut CK_BYTE,
    len: *mut CK_ULONG,
) -> CK_RV {
    entry!("C_GetOperationState", {
        let client = client::current()?;
        let buf = OutBuf::new(state, len)?;
        let r = client.call(Request::GetOperationState {
            session: wire(session),
            capacity: buf.capacity(),
        })?;
        buf.write_output(r)
    })
}

/// C_SetOperationState (v2.40 §5.6.6).
#[no_mangle]
pub unsafe extern "C" fn C_SetOperationState(
    session: CK_SESSION_HANDLE,
    state: *mut CK_BYTE,
    len: CK_ULONG,
    encryption_key: CK_OBJECT_HANDLE,
    authentication_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_SetOperationState", {
        let client = client::current()?;
        let state = input(state, len)?;
        rv_of(client.call(Request::SetOperationState {
            session: wire(session),
            state,
            encryption_key: wire(encryption_key),
            authentication_key: wire(authentication_key),
        })?)
    })
}

/// C_Login (v2.40 §5.6.7). Login state is the application's own vendor instance's (with
/// `--shared-worker`, every application's: see the README's security section).
#[no_mangle]
pub unsafe extern "C" fn C_Login(
    session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    p: *mut CK_UTF8CHAR,
    n: CK_ULONG,
) -> CK_RV {
    entry!("C_Login", {
        let client = client::current()?;
        let pin = pin(p, n)?;
        rv_of(client.call(Request::Login {
            session: wire(session),
            user_type: wire(user_type),
            pin,
        })?)
    })
}

/// C_Logout (v2.40 §5.6.8).
#[no_mangle]
pub unsafe extern "C" fn C_Logout(session: CK_SESSION_HANDLE) -> CK_RV {
    entry!("C_Logout", {
        rv_of(client::call(Request::Logout {
            session: wire(session),
        })?)
    })
}

/// C_LoginUser (v3.0 §5.6.9).
#[no_mangle]
pub unsafe extern "C" fn C_LoginUser(
    session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    p: *mut CK_UTF8CHAR,
    n: CK_ULONG,
    username: *mut CK_UTF8CHAR,
    username_len: CK_ULONG,
) -> CK_RV {
    entry!("C_LoginUser", {
        let client = client::current()?;
        let pin = pin(p, n)?;
        let username = input(username, username_len)?;
        rv_of(client.call(Request::LoginUser {
            session: wire(session),
            user_type: wire(user_type),
            pin,
            username,
        })?)
    })
}

/// C_SessionCancel (v3.0 §5.6.11).
#[no_mangle]
pub unsafe extern "C" fn C_SessionCancel(session: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    entry!("C_SessionCancel", {
        let client = client::current()?;
        rv_of(client.call(Request::SessionCancel {
            session: wire(session),
            flags: wire(flags),
        })?)
    })
}

/// C_GetSessionValidationFlags (v3.2): the session's validation flags of `flags_type`.
#[no_mangle]
pub unsafe extern "C" fn C_GetSessionValidationFlags(
    session: CK_SESSION_HANDLE,
    flags_type: CK_SESSION_VALIDATION_FLAGS_TYPE,
    flags: *mut CK_FLAGS,
) -> CK_RV {
    entry!("C_GetSessionValidationFlags", {
        let client = client::current()?;
        let r = client.call(Request::GetSessionValidationFlags {
            session: wire(session),
            flags_type: wire(flags_type),
            outputs: Outputs::of(&[!flags.is_null()]),
        })?;
        write_answer!(r, Response::Flags, flags, |f| narrow(f)?)
    })
}
