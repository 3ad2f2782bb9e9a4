//! General-purpose functions (PKCS#11 v2.40 §5.4), and v3.2's asynchronous calls.

use std::ffi::c_void;

use cryptoki_sys::*;
use protocol::handshake::InitArgs;
use protocol::message::{Request, Response};
use protocol::shape::{Bytes, Out, Outputs};

use crate::client;
use crate::ffi::{entry, narrow, padded, rv_of, wire, write_answer};

/// C_Initialize (v2.40 §5.4.1): the vendor library decides. The shape of the arguments
/// (NULL or not, the flags, which of the four mutex callbacks are set, whether `pReserved` is
/// set) travels to the application's worker, which C_Initializes its vendor instance the same
/// way (with its own OS mutexes in place of the application's callbacks, which cannot run in
/// another process) and returns the vendor's answer. A second C_Initialize is forwarded too:
/// the vendor answers it (CKR_CRYPTOKI_ALREADY_INITIALIZED, or whatever it checks first).
/// The shim starts no thread of its own, so CKF_LIBRARY_CANT_CREATE_OS_THREADS is honoured.
#[no_mangle]
pub unsafe extern "C" fn C_Initialize(init_args: *mut c_void) -> CK_RV {
    entry!("C_Initialize", {
        let init = (init_args as *const CK_C_INITIALIZE_ARGS)
            .as_ref()
            .map(|args| {
                let callbacks = [
                    args.CreateMutex.is_some(),
                    args.DestroyMutex.is_some(),
                    args.LockMutex.is_some(),
                    args.UnlockMutex.is_some(),
                ]
                .iter()
                .enumerate()
                .fold(0u8, |bits, (i, set)| bits | (u8::from(*set) << i));
                InitArgs {
                    flags: wire(args.flags),
                    callbacks,
                    reserved: !args.pReserved.is_null(),
                }
            });
        if let Ok(client) = client::current() {
            return rv_of(client.call(Request::Initialize { args: init })?);
        }
        client::initialize(init)
    })
}

/// C_Finalize (v2.40 §5.4.2): `pReserved` must be NULL (checked here: the pointer's target
/// cannot cross the wire, and NULL is the only valid value). The vendor instance of the
/// application is finalised; its answer is C_Finalize's.
#[no_mangle]
pub unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    entry!("C_Finalize", {
        if !reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        client::finalize()
    })
}

/// C_GetInfo (v2.40 §5.4.3): the vendor library's information.
#[no_mangle]
pub unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    entry!("C_GetInfo", {
        let client = client::current()?;
        let outputs = Outputs::of(&[!info.is_null()]);
        let r = client.call(Request::GetInfo { outputs })?;
        write_answer!(r, Response::Info, info, |i| CK_INFO {
            cryptokiVersion: CK_VERSION {
                major: i.cryptoki_version.0,
                minor: i.cryptoki_version.1,
            },
            manufacturerID: padded(&i.manufacturer_id),
            flags: narrow(i.flags)?,
            libraryDescription: padded(&i.library_description),
            libraryVersion: CK_VERSION {
                major: i.library_version.0,
                minor: i.library_version.1,
            },
        })
    })
}

/// C_GetFunctionStatus (v2.40 §5.16): a legacy function, answered by the vendor library
/// (CKR_FUNCTION_NOT_PARALLEL for a v2.x library).
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionStatus(session: CK_SESSION_HANDLE) -> CK_RV {
    entry!("C_GetFunctionStatus", {
        rv_of(client::call(Request::GetFunctionStatus {
            session: wire(session),
        })?)
    })
}

/// C_CancelFunction (v2.40 §5.16): as C_GetFunctionStatus.
#[no_mangle]
pub unsafe extern "C" fn C_CancelFunction(session: CK_SESSION_HANDLE) -> CK_RV {
    entry!("C_CancelFunction", {
        rv_of(client::call(Request::CancelFunction {
            session: wire(session),
        })?)
    })
}

/// Longest asynchronous function name read from the caller (C_AsyncComplete and its kin
/// name a PKCS#11 function: `C_UnwrapKeyAuthenticated` is the longest).
const FUNCTION_NAME_MAX: usize = 64;

/// The caller's NUL-terminated function name, read up to its NUL or [`FUNCTION_NAME_MAX`]
/// bytes; NULL travels as NULL.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string (or at least the bytes read).
unsafe fn function_name(p: *const CK_UTF8CHAR) -> Bytes {
    if p.is_null() {
        return Bytes::Null(0);
    }
    let mut name = Vec::new();
    while name.len() < FUNCTION_NAME_MAX {
        match *p.add(name.len()) {
            0 => break,
            b => name.push(b),
        }
    }
    Bytes::Given(name)
}

/// C_AsyncComplete (v3.2). This proxy opens no asynchronous session on the vendor, so the
/// server answers it as a library without asynchronous support (see the server's
/// `worker/dispatch/asynchronous.rs`).
#[no_mangle]
pub unsafe extern "C" fn C_AsyncComplete(
    session: CK_SESSION_HANDLE,
    name: *mut CK_UTF8CHAR,
    result: *mut CK_ASYNC_DATA,
) -> CK_RV {
    entry!("C_AsyncComplete", {
        let client = client::current()?;
        rv_of(client.call(Request::AsyncComplete {
            session: wire(session),
            function_name: function_name(name),
            outputs: Outputs::of(&[!result.is_null()]),
        })?)
    })
}

/// C_AsyncGetID (v3.2), answered as [`C_AsyncComplete`] is.
#[no_mangle]
pub unsafe extern "C" fn C_AsyncGetID(
    session: CK_SESSION_HANDLE,
    name: *mut CK_UTF8CHAR,
    id: *mut CK_ULONG,
) -> CK_RV {
    entry!("C_AsyncGetID", {
        let client = client::current()?;
        rv_of(client.call(Request::AsyncGetId {
            session: wire(session),
            function_name: function_name(name),
            outputs: Outputs::of(&[!id.is_null()]),
        })?)
    })
}

/// C_AsyncJoin (v3.2), answered as [`C_AsyncComplete`] is; the caller's buffer is never
/// handed to anyone.
#[no_mangle]
pub unsafe extern "C" fn C_AsyncJoin(
    session: CK_SESSION_HANDLE,
    name: *mut CK_UTF8CHAR,
    id: CK_ULONG,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
) -> CK_RV {
    entry!("C_AsyncJoin", {
        let client = client::current()?;
        rv_of(client.call(Request::AsyncJoin {
            session: wire(session),
            function_name: function_name(name),
            operation_id: wire(id),
            capacity: Out {
                buffer: !data.is_null(),
                len: Some(wire(data_len)),
                complete: false,
            },
        })?)
    })
}
