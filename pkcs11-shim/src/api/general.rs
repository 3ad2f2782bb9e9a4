//! General-purpose functions (PKCS#11 v2.40 §5.4).

use std::ffi::c_void;

use cryptoki_sys::*;
use protocol::message::{Request, Response};

use crate::client;
use crate::ffi::{entry, narrow, out, padded, rv_of, unexpected, wire};

/// C_Initialize (v2.40 §5.4.1). `pReserved` must be NULL; the four mutex callbacks are all set
/// or all NULL; callbacks without CKF_OS_LOCKING_OK get CKR_CANT_LOCK, as this library can only
/// use the OS's locks. The shim starts no thread of its own, so
/// CKF_LIBRARY_CANT_CREATE_OS_THREADS is always honoured.
#[no_mangle]
pub unsafe extern "C" fn C_Initialize(init_args: *mut c_void) -> CK_RV {
    entry!({
        // Checked before the arguments, as vendor libraries (SoftHSM2 among them) do.
        if client::current().is_ok() {
            return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
        if let Some(args) = (init_args as *const CK_C_INITIALIZE_ARGS).as_ref() {
            if !args.pReserved.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            let set = [
                args.CreateMutex.is_some(),
                args.DestroyMutex.is_some(),
                args.LockMutex.is_some(),
                args.UnlockMutex.is_some(),
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if set != 0 && set != 4 {
                return Err(CKR_ARGUMENTS_BAD);
            }
            if set == 4 && args.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(CKR_CANT_LOCK);
            }
        }
        client::initialize()
    })
}

/// C_Finalize (v2.40 §5.4.2): `pReserved` must be NULL.
#[no_mangle]
pub unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    entry!({
        if !reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        client::finalize()
    })
}

/// C_GetInfo (v2.40 §5.4.3): the vendor library's information.
#[no_mangle]
pub unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    entry!({
        let client = client::current()?;
        let info = out(info)?;
        match client.call(Request::GetInfo)? {
            Response::Info(i) => {
                *info = CK_INFO {
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
                };
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    })
}

/// C_GetFunctionStatus (v2.40 §5.16): a legacy function, answered by the vendor library
/// (CKR_FUNCTION_NOT_PARALLEL for a v2.x library).
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionStatus(session: CK_SESSION_HANDLE) -> CK_RV {
    entry!({
        rv_of(client::call(Request::GetFunctionStatus {
            session: wire(session),
        })?)
    })
}

/// C_CancelFunction (v2.40 §5.16): as C_GetFunctionStatus.
#[no_mangle]
pub unsafe extern "C" fn C_CancelFunction(session: CK_SESSION_HANDLE) -> CK_RV {
    entry!({
        rv_of(client::call(Request::CancelFunction {
            session: wire(session),
        })?)
    })
}
