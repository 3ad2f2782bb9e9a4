//! `libpkcs11_shim.so`: a PKCS#11 module that forwards every call to `pkcs11-proxy-server`.
//!
//! Exported three ways (PKCS#11 v3.0 §5.2): every `C_*` symbol, `C_GetFunctionList` (the
//! v2.40 table; Hyperledger Fabric's miekg/pkcs11 uses only this), and
//! `C_GetInterfaceList`/`C_GetInterface` (the "PKCS 11" interface at 3.2, 3.0 and 2.40, as
//! far as the vendor library offers them, newest first). The tables are typed `static`s, so a shell with a wrong signature does not compile.
//!
//! API conventions: every export runs behind a panic boundary (a panic is CKR_GENERAL_ERROR,
//! never an unwind into C); every pointer is checked (CKR_ARGUMENTS_BAD); nothing is read or
//! connected before C_Initialize; no lock is held across a round trip to the server.

#![allow(non_snake_case)]
// Each export's safety contract is the PKCS#11 specification's for that function.
#![allow(clippy::missing_safety_doc)]

mod api;
pub mod client;
mod ffi;
pub mod log;
mod mechanism;
mod message;
mod template;
mod trace;

use std::ffi::c_void;

use cryptoki_sys::*;

pub use api::crypto::*;
pub use api::general::*;
pub use api::key::*;
pub use api::message::*;
pub use api::object::*;
pub use api::session::*;
pub use api::slot::*;
use ffi::entry;

/// The version this module's tables announce.
const V2_40: CK_VERSION = CK_VERSION {
    major: 2,
    minor: 40,
};
const V3_0: CK_VERSION = CK_VERSION { major: 3, minor: 0 };
const V3_2: CK_VERSION = CK_VERSION { major: 3, minor: 2 };

/// Calls `$then!` with the 68 functions of the v2.40 table (v2.40 §5.4.4, in the order of
/// `CK_FUNCTION_LIST`) inserted before its other arguments: the one list both tables share.
macro_rules! with_v2_functions {
    ($then:ident { $($before:tt)* } $($after:tt)*) => {
        $then! { $($before)* [
        C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo,
        C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN,
        C_SetPIN, C_OpenSession, C_CloseSession, C_CloseAllSessions, C_GetSessionInfo,
        C_GetOperationState, C_SetOperationState, C_Login, C_Logout, C_CreateObject,
        C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue,
        C_SetAttributeValue, C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal,
        C_EncryptInit, C_Encrypt, C_EncryptUpdate, C_EncryptFinal, C_DecryptInit, C_Decrypt,
        C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest, C_DigestUpdate, C_DigestKey,
        C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal, C_SignRecoverInit,
        C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal,
        C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate,
        C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair,
        C_WrapKey, C_UnwrapKey, C_DeriveKey, C_SeedRandom, C_GenerateRandom,
        C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent,
        ] $($after)* }
    };
}

/// A function table of type `$ty`: each named field holds the export of the same name, so a
/// shell with a wrong signature does not compile.
macro_rules! table {
    ($ty:ident, $version:expr, $([$($f:ident),* $(,)?])*) => {
        $ty { version: $version, $($($f: Some($f),)*)* }
    };
}

/// Calls `$then!` as [`with_v2_functions`] does, with the 24 functions v3.0 adds (v3.0 §5.2,
/// in the order of `CK_FUNCTION_LIST_3_0`) as the next list: the one list the 3.0 and 3.2
/// tables share.
macro_rules! with_v3_0_functions {
    ($then:ident { $($before:tt)* } $($after:tt)*) => {
        with_v2_functions! { $then { $($before)* } [
        C_GetInterfaceList, C_GetInterface, C_LoginUser, C_SessionCancel, C_MessageEncryptInit,
        C_EncryptMessage, C_EncryptMessageBegin, C_EncryptMessageNext, C_MessageEncryptFinal,
        C_MessageDecryptInit, C_DecryptMessage, C_DecryptMessageBegin, C_DecryptMessageNext,
        C_MessageDecryptFinal, C_MessageSignInit, C_SignMessage, C_SignMessageBegin,
        C_SignMessageNext, C_MessageSignFinal, C_MessageVerifyInit, C_VerifyMessage,
        C_VerifyMessageBegin, C_VerifyMessageNext, C_MessageVerifyFinal,
        ] $($after)* }
    };
}

/// The PKCS#11 v2.40 function table (v2.40 §5.4.4).
static FUNCTION_LIST: CK_FUNCTION_LIST = with_v2_functions!(table {
    CK_FUNCTION_LIST,
    V2_40,
});

/// The PKCS#11 v3.0 function table (v3.0 §5.2): the v2.40 functions and the 24 added by 3.0.
static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = with_v3_0_functions!(table {
    CK_FUNCTION_LIST_3_0,
    V3_0,
});

/// The PKCS#11 v3.2 function table (`CK_FUNCTION_LIST_3_2`): the v3.0 table and the 12
/// functions 3.2 adds (key encapsulation, verification with the signature at init, session
/// validation flags, asynchronous calls, authenticated wrapping).
static FUNCTION_LIST_3_2: CK_FUNCTION_LIST_3_2 = with_v3_0_functions!(table {
    CK_FUNCTION_LIST_3_2,
    V3_2,
} [
    C_EncapsulateKey, C_DecapsulateKey, C_VerifySignatureInit, C_VerifySignature,
    C_VerifySignatureUpdate, C_VerifySignatureFinal, C_GetSessionValidationFlags,
    C_AsyncComplete, C_AsyncGetID, C_AsyncJoin, C_WrapKeyAuthenticated,
    C_UnwrapKeyAuthenticated,
]);

/// "PKCS 11", the name of the standard interface (v3.0 §5.2).
const INTERFACE_NAME: &[u8; 8] = b"PKCS 11\0";

/// The interfaces this module can offer, newest first (the default is the first offered).
struct Interfaces([CK_INTERFACE; 3]);
// SAFETY: the pointers refer to immutable statics.
unsafe impl Sync for Interfaces {}

static INTERFACES: Interfaces = Interfaces([
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTION_LIST_3_2 as *const CK_FUNCTION_LIST_3_2 as *mut c_void,
        flags: 0,
    },
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST_3_0 as *mut c_void,
        flags: 0,
    },
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut c_void,
        flags: 0,
    },
]);

/// How many of [`INTERFACES`] (the oldest ones) a vendor interface of `version` gets: a 3.2
/// or later vendor "PKCS 11" 3.2, 3.0 and 2.40; a 3.0 or 3.1 vendor 3.0 and 2.40; a 2.x
/// vendor 2.40 alone.
fn offered_for(version: (u8, u8)) -> usize {
    match version {
        v if v >= (3, 2) => 3,
        v if v >= (3, 0) => 2,
        _ => 1,
    }
}

/// The interfaces this shim offers: the versions the vendor library offers (DESIGN.md, "Shim
/// configuration"), so a 3.x-aware client (the Rust cryptoki crate's `is_fn_supported` among
/// them) sees a 2.40 library as the 2.40 library it is, and is offered 3.2 only over a 3.2
/// vendor. With no server to ask, 3.0 and 2.40. The first answer a server gives is kept for
/// the process: the tables handed out stay the same.
fn offered() -> &'static [CK_INTERFACE] {
    static VENDOR: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let n = match VENDOR.get() {
        Some(n) => *n,
        None => match client::vendor_interface() {
            Some(version) => *VENDOR.get_or_init(|| offered_for(version)),
            None => 2,
        },
    };
    &INTERFACES.0[INTERFACES.0.len() - n..]
}

/// C_GetFunctionList (v2.40 §5.4.4): the v2.40 table; callable before C_Initialize.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    entry!("C_GetFunctionList", {
        *ffi::out(list)? = &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
        Ok(())
    })
}

/// C_GetInterfaceList (v3.0 §5.2.1), with the two-call size convention.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(
    list: *mut CK_INTERFACE,
    count: *mut CK_ULONG,
) -> CK_RV {
    entry!("C_GetInterfaceList", {
        let count = ffi::out(count)?;
        let offered = offered();
        let n = offered.len();
        if list.is_null() {
            *count = n as CK_ULONG;
            return Ok(());
        }
        if ffi::len(*count)? < n {
            *count = n as CK_ULONG;
            return Err(CKR_BUFFER_TOO_SMALL);
        }
        std::ptr::copy_nonoverlapping(offered.as_ptr(), list, n);
        *count = n as CK_ULONG;
        Ok(())
    })
}

/// C_GetInterface (v3.0 §5.2.2): a NULL name or version matches any; the interface's flags
/// must include the requested ones; no match is CKR_ARGUMENTS_BAD.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    interface: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> CK_RV {
    entry!("C_GetInterface", {
        let interface = ffi::out(interface)?;
        if !name.is_null()
            && std::ffi::CStr::from_ptr(name as *const std::ffi::c_char).to_bytes() != b"PKCS 11"
        {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let wanted = version.as_ref();
        let found = offered().iter().find(|i| {
            // SAFETY: every pFunctionList starts with its CK_VERSION.
            let v = unsafe { *(i.pFunctionList as *const CK_VERSION) };
            wanted.is_none_or(|w| w.major == v.major && w.minor == v.minor)
                && i.flags & flags == flags
        });
        match found {
            Some(i) => {
                *interface = i as *const CK_INTERFACE as *mut CK_INTERFACE;
                Ok(())
            }
            None => Err(CKR_ARGUMENTS_BAD),
        }
    })
}

protocol::getrandom_by_syscall!();
