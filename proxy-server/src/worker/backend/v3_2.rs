//! The PKCS#11 v3.2 functions the vendor's 3.2 table holds: key encapsulation
//! (C_EncapsulateKey, C_DecapsulateKey), verification with the signature given at init
//! (C_VerifySignatureInit and its steps), C_GetSessionValidationFlags and authenticated
//! wrapping (C_WrapKeyAuthenticated, C_UnwrapKeyAuthenticated). Each answers
//! CKR_FUNCTION_NOT_SUPPORTED when the vendor library has no 3.2 interface, as the missing
//! entry of an older library's table would.

use cryptoki_sys::*;
use protocol::shape::{Bytes, Out};

use super::buffers::{raw, with_out_buffer, Output};
use super::{Backend, InputFn, SessionFn};
use crate::worker::mechanism::CMechanism;
use crate::worker::template::CTemplate;

/// Picks a function out of the vendor's 3.2 table, or returns `$missing` from the caller.
macro_rules! f32 {
    ($self:ident . $name:ident, $missing:expr) => {
        match $self.list32.and_then(|l| l.$name) {
            Some(f) => f,
            None => return $missing,
        }
    };
}

impl Backend {
    /// C_EncapsulateKey (v3.2): the ciphertext with the two-call convention; the key the
    /// vendor made is written to `key` (NULL where the caller gave NULL).
    pub fn encapsulate_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        public_key: CK_OBJECT_HANDLE,
        t: &mut CTemplate,
        capacity: Out,
        key: *mut CK_OBJECT_HANDLE,
    ) -> Output {
        let f = f32!(
            self.C_EncapsulateKey,
            Output::rv(CKR_FUNCTION_NOT_SUPPORTED)
        );
        let (m, tp, tn) = (mech.as_mut_ptr(), t.as_mut_ptr(), t.count());
        // SAFETY: owned mechanism and template; out/len come from with_out_buffer; key is
        // NULL or the caller's output slot living across the call.
        with_out_buffer(capacity, |out, len| unsafe {
            f(session, m, public_key, tp, tn, out, len, key)
        })
    }

    /// C_DecapsulateKey (v3.2).
    pub fn decapsulate_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        private_key: CK_OBJECT_HANDLE,
        t: &mut CTemplate,
        ciphertext: &Bytes,
        key: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = f32!(self.C_DecapsulateKey, CKR_FUNCTION_NOT_SUPPORTED);
        let (cp, cn) = match raw(ciphertext) {
            Ok(r) => r,
            Err(rv) => return rv,
        };
        // SAFETY: owned mechanism, template and ciphertext bytes; key as above.
        unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                private_key,
                t.as_mut_ptr(),
                t.count(),
                cp,
                cn,
                key,
            )
        }
    }

    /// C_VerifySignatureInit (v3.2): `(session, mechanism, key, signature)`.
    pub fn verify_signature_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
        signature: &Bytes,
    ) -> CK_RV {
        let f = f32!(self.C_VerifySignatureInit, CKR_FUNCTION_NOT_SUPPORTED);
        let (sp, sn) = match raw(signature) {
            Ok(r) => r,
            Err(rv) => return rv,
        };
        // SAFETY: owned mechanism; NULL or live signature bytes.
        unsafe { f(session, mech.as_mut_ptr(), key, sp, sn) }
    }

    /// C_VerifySignature and C_VerifySignatureUpdate: `(session, data)`.
    pub fn verify_signature_input(&self, update: bool) -> Option<InputFn> {
        let l = self.list32?;
        if update {
            l.C_VerifySignatureUpdate
        } else {
            l.C_VerifySignature
        }
    }

    /// C_VerifySignatureFinal: `(session)`.
    pub fn verify_signature_final(&self) -> Option<SessionFn> {
        self.list32?.C_VerifySignatureFinal
    }

    /// C_GetSessionValidationFlags (v3.2): `flags` is NULL where the caller gave NULL.
    pub fn get_session_validation_flags(
        &self,
        session: CK_SESSION_HANDLE,
        flags_type: CK_ULONG,
        flags: *mut CK_FLAGS,
    ) -> CK_RV {
        let f = f32!(self.C_GetSessionValidationFlags, CKR_FUNCTION_NOT_SUPPORTED);
        // SAFETY: flags is NULL or a live CK_FLAGS.
        unsafe { f(session, flags_type, flags) }
    }

    /// C_WrapKeyAuthenticated (v3.2): C_WrapKey with associated data.
    pub fn wrap_key_authenticated(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        (wrapping, key): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE),
        associated_data: &Bytes,
        capacity: Out,
    ) -> Output {
        let f = f32!(
            self.C_WrapKeyAuthenticated,
            Output::rv(CKR_FUNCTION_NOT_SUPPORTED)
        );
        let (ap, an) = match raw(associated_data) {
            Ok(r) => r,
            Err(rv) => return Output::rv(rv),
        };
        let m = mech.as_mut_ptr();
        // SAFETY: owned mechanism and associated data; out/len from with_out_buffer.
        with_out_buffer(capacity, |out, len| unsafe {
            f(session, m, wrapping, key, ap, an, out, len)
        })
    }

    /// C_UnwrapKeyAuthenticated (v3.2): C_UnwrapKey with associated data.
    pub fn unwrap_key_authenticated(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        unwrapping: CK_OBJECT_HANDLE,
        (wrapped, associated_data): (&Bytes, &Bytes),
        t: &mut CTemplate,
        key: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = f32!(self.C_UnwrapKeyAuthenticated, CKR_FUNCTION_NOT_SUPPORTED);
        let ((wp, wn), (ap, an)) = match (raw(wrapped), raw(associated_data)) {
            (Ok(w), Ok(a)) => (w, a),
            (Err(rv), _) | (_, Err(rv)) => return rv,
        };
        // SAFETY: owned mechanism, template and byte buffers; key as above.
        unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                unwrapping,
                wp,
                wn,
                t.as_mut_ptr(),
                t.count(),
                ap,
                an,
                key,
            )
        }
    }
}
