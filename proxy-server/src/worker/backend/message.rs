//! The PKCS#11 v3.0 functions (v3.0 §5.6 C_LoginUser and C_SessionCancel, §5.9–§5.16 the
//! message-based functions). Each answers CKR_FUNCTION_NOT_SUPPORTED when the vendor library
//! has no v3.0 interface.

use std::ffi::c_void;

use cryptoki_sys::*;
use protocol::shape::{Bytes, Out};

use super::buffers::{opt_bytes, raw, with_out_buffer, Output};
use super::Backend;
use crate::worker::mechanism::CMsgParam;

impl Backend {
    fn f3<T>(&self, pick: impl FnOnce(&CK_FUNCTION_LIST_3_0) -> Option<T>) -> Option<T> {
        self.list3.and_then(pick)
    }

    pub fn login_user(
        &self,
        session: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<&[u8]>,
        username: &Bytes,
    ) -> CK_RV {
        let Some(f) = self.f3(|l| l.C_LoginUser) else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let (Some((p, n)), Ok((up, un))) = (opt_bytes(pin), raw(username)) else {
            return CKR_ARGUMENTS_BAD;
        };
        // SAFETY: NULL or live buffers of the stated lengths.
        unsafe { f(session, user, p, n, up, un) }
    }

    pub fn session_cancel(&self, session: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
        let Some(f) = self.f3(|l| l.C_SessionCancel) else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        // SAFETY: no pointer argument.
        unsafe { f(session, flags) }
    }

    /// C_EncryptMessage / C_DecryptMessage: `(session, param, aad, in, out)`.
    pub fn crypt_message(
        &self,
        decrypt: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
        aad: &Bytes,
        input: &Bytes,
        capacity: Out,
    ) -> Output {
        let Some(f) = self.f3(|l| {
            if decrypt {
                l.C_DecryptMessage
            } else {
                l.C_EncryptMessage
            }
        }) else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        let ((ap, al), (ip, il)) = match (raw(aad), raw(input)) {
            (Ok(a), Ok(i)) => (a, i),
            (Err(rv), _) | (_, Err(rv)) => return Output::rv(rv),
        };
        let (p, pl) = param.ptr_len();
        with_out_buffer(capacity, |out, len| {
            // SAFETY: param owns its buffers; aad/input are NULL or live buffers; out/len from
            // with_out_buffer.
            unsafe { f(session, p, pl, ap, al, ip, il, out, len) }
        })
    }

    /// C_EncryptMessageBegin / C_DecryptMessageBegin: `(session, param, aad)`.
    pub fn crypt_message_begin(
        &self,
        decrypt: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
        aad: &Bytes,
    ) -> CK_RV {
        let Some(f) = self.f3(|l| {
            if decrypt {
                l.C_DecryptMessageBegin
            } else {
                l.C_EncryptMessageBegin
            }
        }) else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let (ap, al) = match raw(aad) {
            Ok(r) => r,
            Err(rv) => return rv,
        };
        let (p, pl) = param.ptr_len();
        // SAFETY: param owns its buffers; aad is NULL or a live buffer.
        unsafe { f(session, p, pl, ap, al) }
    }

    /// C_EncryptMessageNext / C_DecryptMessageNext: `(session, param, in, out, flags)`.
    pub fn crypt_message_next(
        &self,
        decrypt: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
        input: &Bytes,
        capacity: Out,
        flags: CK_FLAGS,
    ) -> Output {
        let Some(f) = self.f3(|l| {
            if decrypt {
                l.C_DecryptMessageNext
            } else {
                l.C_EncryptMessageNext
            }
        }) else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        in_out(param, input, capacity, |p, pl, ip, il, out, len| {
            // SAFETY: as crypt_message.
            unsafe { f(session, p, pl, ip, il, out, len, flags) }
        })
    }

    /// C_SignMessage, or C_SignMessageNext with `next` (a NULL signature length there means
    /// "not the last part", v3.0 §5.14.4).
    pub fn sign_message(
        &self,
        next: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
        input: &Bytes,
        capacity: Out,
    ) -> Output {
        let Some(f) = self.f3(|l| {
            if next {
                l.C_SignMessageNext
            } else {
                l.C_SignMessage
            }
        }) else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        in_out(param, input, capacity, |p, pl, ip, il, out, len| {
            // SAFETY: as crypt_message.
            unsafe { f(session, p, pl, ip, il, out, len) }
        })
    }

    /// C_SignMessageBegin / C_VerifyMessageBegin: `(session, param)`.
    pub fn message_begin(
        &self,
        verify: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
    ) -> CK_RV {
        let Some(f) = self.f3(|l| {
            if verify {
                l.C_VerifyMessageBegin
            } else {
                l.C_SignMessageBegin
            }
        }) else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let (p, pl) = param.ptr_len();
        // SAFETY: param owns its buffers.
        unsafe { f(session, p, pl) }
    }

    /// C_VerifyMessage, or C_VerifyMessageNext with `next` (a NULL signature there means "not
    /// the last part", v3.0 §5.16.4).
    pub fn verify_message(
        &self,
        next: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
        input: &Bytes,
        signature: &Bytes,
    ) -> CK_RV {
        let Some(f) = self.f3(|l| {
            if next {
                l.C_VerifyMessageNext
            } else {
                l.C_VerifyMessage
            }
        }) else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let ((ip, il), (sp, sl)) = match (raw(input), raw(signature)) {
            (Ok(i), Ok(s)) => (i, s),
            (Err(rv), _) | (_, Err(rv)) => return rv,
        };
        let (p, pl) = param.ptr_len();
        // SAFETY: NULL or live buffers of the stated lengths.
        unsafe { f(session, p, pl, ip, il, sp, sl) }
    }
}

/// A per-message call with one input and one output, `(param, in, out)`: `call` gets the
/// parameter, the input and the output buffer of [`with_out_buffer`] as pointers and lengths.
#[allow(clippy::type_complexity)]
fn in_out(
    param: &mut CMsgParam,
    input: &Bytes,
    capacity: Out,
    call: impl Fn(*mut c_void, CK_ULONG, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG) -> CK_RV,
) -> Output {
    let (ip, il) = match raw(input) {
        Ok(r) => r,
        Err(rv) => return Output::rv(rv),
    };
    let (p, pl) = param.ptr_len();
    with_out_buffer(capacity, |out, len| call(p, pl, ip, il, out, len))
}
