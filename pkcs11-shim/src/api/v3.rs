//! Functions added by PKCS#11 v3.0 (§5.1 C_LoginUser, §5.6 C_SessionCancel, §5.13 to §5.16
//! message-based functions). Forwarding them is the subject of a later change; until then each
//! answers CKR_FUNCTION_NOT_SUPPORTED once the library is initialised, as a v3.0 library that
//! does not implement them would.

use std::ffi::c_void;

use cryptoki_sys::*;

use crate::client;
use crate::ffi::entry;

/// The answer of every function of this file.
fn not_supported() -> crate::ffi::Rv {
    client::current()?;
    Err(CKR_FUNCTION_NOT_SUPPORTED)
}

macro_rules! unsupported {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {
        $(
            $(#[$doc])*
            #[no_mangle]
            pub extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                $(let _ = $arg;)*
                entry!({ not_supported() })
            }
        )*
    };
}

unsupported! {
    /// C_LoginUser (v3.0 §5.6.9).
    C_LoginUser(s: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG, name: *mut CK_UTF8CHAR, name_len: CK_ULONG);
    /// C_SessionCancel (v3.0 §5.6.11).
    C_SessionCancel(s: CK_SESSION_HANDLE, flags: CK_FLAGS);
    /// C_MessageEncryptInit (v3.0 §5.9.1).
    C_MessageEncryptInit(s: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    /// C_EncryptMessage (v3.0 §5.9.2).
    C_EncryptMessage(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
    /// C_EncryptMessageBegin (v3.0 §5.9.3).
    C_EncryptMessageBegin(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG);
    /// C_EncryptMessageNext (v3.0 §5.9.4).
    C_EncryptMessageNext(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG, f: CK_FLAGS);
    /// C_MessageEncryptFinal (v3.0 §5.9.5).
    C_MessageEncryptFinal(s: CK_SESSION_HANDLE);
    /// C_MessageDecryptInit (v3.0 §5.11.1).
    C_MessageDecryptInit(s: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    /// C_DecryptMessage (v3.0 §5.11.2).
    C_DecryptMessage(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
    /// C_DecryptMessageBegin (v3.0 §5.11.3).
    C_DecryptMessageBegin(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG);
    /// C_DecryptMessageNext (v3.0 §5.11.4).
    C_DecryptMessageNext(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG, f: CK_FLAGS);
    /// C_MessageDecryptFinal (v3.0 §5.11.5).
    C_MessageDecryptFinal(s: CK_SESSION_HANDLE);
    /// C_MessageSignInit (v3.0 §5.14.1).
    C_MessageSignInit(s: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    /// C_SignMessage (v3.0 §5.14.2).
    C_SignMessage(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
    /// C_SignMessageBegin (v3.0 §5.14.3).
    C_SignMessageBegin(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG);
    /// C_SignMessageNext (v3.0 §5.14.4).
    C_SignMessageNext(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
    /// C_MessageSignFinal (v3.0 §5.14.5).
    C_MessageSignFinal(s: CK_SESSION_HANDLE);
    /// C_MessageVerifyInit (v3.0 §5.16.1).
    C_MessageVerifyInit(s: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    /// C_VerifyMessage (v3.0 §5.16.2).
    C_VerifyMessage(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, g: *mut CK_BYTE, gl: CK_ULONG);
    /// C_VerifyMessageBegin (v3.0 §5.16.3).
    C_VerifyMessageBegin(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG);
    /// C_VerifyMessageNext (v3.0 §5.16.4).
    C_VerifyMessageNext(s: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, g: *mut CK_BYTE, gl: CK_ULONG);
    /// C_MessageVerifyFinal (v3.0 §5.16.5).
    C_MessageVerifyFinal(s: CK_SESSION_HANDLE);
}
