//! The PKCS#11 v2.40 functions (v2.40 §5.4–§5.15), each a thin `unsafe` call into the
//! vendor's table with the caller's shapes (NULL pointers, lengths) kept as they were.

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;
use protocol::shape::{Array, Bytes, Out};

use super::buffers::{opt_bytes, raw, with_out_buffer, with_ulong_buffer, Output};
use super::{Backend, FinalFn, InitFn, InputFn, SessionFn, UpdateFn, EMPTY_RESERVED};
use crate::worker::mechanism::CMechanism;
use crate::worker::template::CTemplate;

impl Backend {
    /// Calls a `(session, in, in_len, out, out_len)` function with the caller's shapes.
    pub fn update(
        &self,
        f: Option<UpdateFn>,
        session: CK_SESSION_HANDLE,
        input: &Bytes,
        capacity: Out,
    ) -> Output {
        let Some(f) = f else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        let (ip, il) = match raw(input) {
            Ok(r) => r,
            Err(rv) => return Output::rv(rv),
        };
        with_out_buffer(capacity, |out, len| {
            // SAFETY: ip is NULL or a live buffer of il bytes; out/len come from
            // with_out_buffer.
            unsafe { f(session, ip, il, out, len) }
        })
    }

    /// Calls a `(session, out, out_len)` function (the `*Final` functions, GetOperationState).
    pub fn final_(&self, f: Option<FinalFn>, session: CK_SESSION_HANDLE, capacity: Out) -> Output {
        let Some(f) = f else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        // SAFETY: out/len come from with_out_buffer.
        with_out_buffer(capacity, |out, len| unsafe { f(session, out, len) })
    }

    /// Calls a `(session, in, in_len)` function.
    pub fn input(&self, f: Option<InputFn>, session: CK_SESSION_HANDLE, input: &Bytes) -> CK_RV {
        let Some(f) = f else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let (p, len) = match raw(input) {
            Ok(r) => r,
            Err(rv) => return rv,
        };
        // SAFETY: NULL or a live buffer of len bytes; the vendor only reads it.
        unsafe { f(session, p, len) }
    }

    /// Calls a `(session, mechanism, key)` function (the `*Init` functions).
    pub fn init(
        &self,
        f: Option<InitFn>,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let Some(f) = f else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        // SAFETY: CMechanism keeps its parameter storage alive for its own lifetime.
        unsafe { f(session, mech.as_mut_ptr(), key) }
    }

    /// Calls a `(session)` function.
    pub fn session(&self, f: Option<SessionFn>, session: CK_SESSION_HANDLE) -> CK_RV {
        let Some(f) = f else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        // SAFETY: no pointer argument.
        unsafe { f(session) }
    }

    pub fn get_info(&self, info: *mut CK_INFO) -> CK_RV {
        let f = func!(self.C_GetInfo);
        // SAFETY: NULL (the caller's) or a valid, writable CK_INFO.
        unsafe { f(info) }
    }

    /// C_GetSlotList or C_GetMechanismList-style calls: a list of CK_ULONGs with a size query.
    pub fn slot_list(
        &self,
        token_present: bool,
        capacity: Out,
    ) -> (CK_RV, CK_ULONG, Vec<CK_ULONG>) {
        let Some(f) = self.list.C_GetSlotList else {
            return (CKR_FUNCTION_NOT_SUPPORTED, 0, vec![]);
        };
        let present = CK_BBOOL::from(token_present);
        // SAFETY: ptr/len come from with_ulong_buffer.
        with_ulong_buffer(capacity, |p, n| unsafe { f(present, p, n) })
    }

    pub fn mechanism_list(
        &self,
        slot: CK_SLOT_ID,
        capacity: Out,
    ) -> (CK_RV, CK_ULONG, Vec<CK_ULONG>) {
        let Some(f) = self.list.C_GetMechanismList else {
            return (CKR_FUNCTION_NOT_SUPPORTED, 0, vec![]);
        };
        // SAFETY: ptr/len come from with_ulong_buffer.
        with_ulong_buffer(capacity, |p, n| unsafe { f(slot, p, n) })
    }

    pub fn get_slot_info(&self, slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
        let f = func!(self.C_GetSlotInfo);
        // SAFETY: NULL or a valid, writable struct.
        unsafe { f(slot, info) }
    }

    pub fn get_token_info(&self, slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
        let f = func!(self.C_GetTokenInfo);
        // SAFETY: NULL or a valid, writable struct.
        unsafe { f(slot, info) }
    }

    pub fn get_mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        mech: CK_MECHANISM_TYPE,
        info: *mut CK_MECHANISM_INFO,
    ) -> CK_RV {
        let f = func!(self.C_GetMechanismInfo);
        // SAFETY: NULL or a valid, writable struct.
        unsafe { f(slot, mech, info) }
    }

    /// `reserved`: the caller's `pReserved` was not NULL (it must be: its contents cannot
    /// cross the wire, so the vendor sees a pointer to nothing it may use, and answers).
    pub fn wait_for_slot_event(
        &self,
        flags: CK_FLAGS,
        reserved: bool,
        slot: *mut CK_SLOT_ID,
    ) -> CK_RV {
        let f = func!(self.C_WaitForSlotEvent);
        let reserved = if reserved {
            EMPTY_RESERVED.as_ptr() as *mut c_void
        } else {
            ptr::null_mut()
        };
        // SAFETY: NULL or a valid, writable slot id; pReserved NULL or a readable dummy.
        unsafe { f(flags, slot, reserved) }
    }

    /// `label` is NULL (the caller's) or 32 bytes.
    pub fn init_token(&self, slot: CK_SLOT_ID, pin: Option<&[u8]>, label: &Bytes) -> CK_RV {
        let f = func!(self.C_InitToken);
        let Some((p, n)) = opt_bytes(pin) else {
            return CKR_ARGUMENTS_BAD;
        };
        let label = match label {
            Array::Null(_) => ptr::null_mut(),
            Array::Given(l) if l.len() == 32 => l.as_ptr() as *mut u8,
            Array::Given(_) => return CKR_ARGUMENTS_BAD,
        };
        // SAFETY: pin and label are NULL or live buffers of the stated lengths.
        unsafe { f(slot, p, n, label) }
    }

    pub fn init_pin(&self, session: CK_SESSION_HANDLE, pin: Option<&[u8]>) -> CK_RV {
        let f = func!(self.C_InitPIN);
        let Some((p, n)) = opt_bytes(pin) else {
            return CKR_ARGUMENTS_BAD;
        };
        // SAFETY: pin is a live buffer of n bytes (or NULL).
        unsafe { f(session, p, n) }
    }

    pub fn set_pin(
        &self,
        session: CK_SESSION_HANDLE,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> CK_RV {
        let f = func!(self.C_SetPIN);
        let (Some((op, on)), Some((np, nn))) = (opt_bytes(old), opt_bytes(new)) else {
            return CKR_ARGUMENTS_BAD;
        };
        // SAFETY: both PINs are live buffers (or NULL).
        unsafe { f(session, op, on, np, nn) }
    }

    pub fn open_session(
        &self,
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
        session: *mut CK_SESSION_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_OpenSession);
        // SAFETY: no application callback is passed to the vendor (notifications are not
        // forwarded); session is writable.
        unsafe { f(slot, flags, ptr::null_mut(), None, session) }
    }

    pub fn get_session_info(
        &self,
        session: CK_SESSION_HANDLE,
        info: *mut CK_SESSION_INFO,
    ) -> CK_RV {
        let f = func!(self.C_GetSessionInfo);
        // SAFETY: NULL or a valid, writable struct.
        unsafe { f(session, info) }
    }

    pub fn set_operation_state(
        &self,
        session: CK_SESSION_HANDLE,
        state: &Bytes,
        enc: CK_OBJECT_HANDLE,
        auth: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_SetOperationState);
        let (p, n) = match raw(state) {
            Ok(r) => r,
            Err(rv) => return rv,
        };
        // SAFETY: state is NULL or a live buffer of n bytes.
        unsafe { f(session, p, n, enc, auth) }
    }

    pub fn login(
        &self,
        session: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<&[u8]>,
    ) -> CK_RV {
        let f = func!(self.C_Login);
        let Some((p, n)) = opt_bytes(pin) else {
            return CKR_ARGUMENTS_BAD;
        };
        // SAFETY: pin is a live buffer of n bytes (or NULL).
        unsafe { f(session, user, p, n) }
    }

    /// C_CloseAllSessions (v2.40 §5.6.2): only in an application's own worker.
    pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> CK_RV {
        let f = func!(self.C_CloseAllSessions);
        // SAFETY: a plain value argument.
        unsafe { f(slot) }
    }

    pub fn create_object(
        &self,
        session: CK_SESSION_HANDLE,
        t: &mut CTemplate,
        obj: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_CreateObject);
        // SAFETY: CTemplate owns every buffer its attributes point to.
        unsafe { f(session, t.as_mut_ptr(), t.count(), obj) }
    }

    pub fn copy_object(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        t: &mut CTemplate,
        obj: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_CopyObject);
        // SAFETY: as create_object.
        unsafe { f(session, object, t.as_mut_ptr(), t.count(), obj) }
    }

    pub fn destroy_object(&self, session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> CK_RV {
        let f = func!(self.C_DestroyObject);
        // SAFETY: no pointer argument.
        unsafe { f(session, object) }
    }

    pub fn get_object_size(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        size: *mut CK_ULONG,
    ) -> CK_RV {
        let f = func!(self.C_GetObjectSize);
        // SAFETY: size is NULL or writable.
        unsafe { f(session, object, size) }
    }

    pub fn get_attribute_value(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        t: &mut CTemplate,
    ) -> CK_RV {
        let f = func!(self.C_GetAttributeValue);
        // SAFETY: every non-NULL pValue points to a buffer of ulValueLen bytes owned by t.
        unsafe { f(session, object, t.as_mut_ptr(), t.count()) }
    }

    pub fn set_attribute_value(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        t: &mut CTemplate,
    ) -> CK_RV {
        let f = func!(self.C_SetAttributeValue);
        // SAFETY: as create_object.
        unsafe { f(session, object, t.as_mut_ptr(), t.count()) }
    }

    pub fn find_objects_init(&self, session: CK_SESSION_HANDLE, t: &mut CTemplate) -> CK_RV {
        let f = func!(self.C_FindObjectsInit);
        // SAFETY: as create_object.
        unsafe { f(session, t.as_mut_ptr(), t.count()) }
    }

    /// C_FindObjects into a buffer of `max` handles (`None`: the caller's NULL buffer, with
    /// its `max_count`), and a count pointer when `count` is true.
    pub fn find_objects(
        &self,
        session: CK_SESSION_HANDLE,
        max: Result<usize, CK_ULONG>,
        count: bool,
    ) -> (CK_RV, Vec<CK_OBJECT_HANDLE>) {
        let Some(f) = self.list.C_FindObjects else {
            return (CKR_FUNCTION_NOT_SUPPORTED, vec![]);
        };
        let mut found = vec![0 as CK_OBJECT_HANDLE; *max.as_ref().unwrap_or(&0)];
        let (p, max_c) = match max {
            Ok(n) => (found.as_mut_ptr(), n as CK_ULONG),
            Err(n) => (ptr::null_mut(), n),
        };
        let mut n: CK_ULONG = 0;
        let np = if count {
            &mut n as *mut CK_ULONG
        } else {
            ptr::null_mut()
        };
        // SAFETY: found holds max handles (or is the caller's NULL); np is NULL or writable.
        let rv = unsafe { f(session, p, max_c, np) };
        found.truncate(usize::try_from(n).unwrap_or(0).min(found.len()));
        (rv, found)
    }

    pub fn digest_key(&self, session: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
        let f = func!(self.C_DigestKey);
        // SAFETY: no pointer argument.
        unsafe { f(session, key) }
    }

    pub fn digest_init(&self, session: CK_SESSION_HANDLE, mech: &mut CMechanism) -> CK_RV {
        let f = func!(self.C_DigestInit);
        // SAFETY: CMechanism keeps its parameter alive.
        unsafe { f(session, mech.as_mut_ptr()) }
    }

    pub fn verify(&self, session: CK_SESSION_HANDLE, data: &Bytes, sig: &Bytes) -> CK_RV {
        let f = func!(self.C_Verify);
        let ((dp, dn), (sp, sn)) = match (raw(data), raw(sig)) {
            (Ok(d), Ok(s)) => (d, s),
            (Err(rv), _) | (_, Err(rv)) => return rv,
        };
        // SAFETY: NULL or live buffers of the stated lengths, only read.
        unsafe { f(session, dp, dn, sp, sn) }
    }

    pub fn generate_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        t: &mut CTemplate,
        key: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_GenerateKey);
        // SAFETY: owned mechanism and template.
        unsafe { f(session, mech.as_mut_ptr(), t.as_mut_ptr(), t.count(), key) }
    }

    pub fn generate_key_pair(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        public: &mut CTemplate,
        private: &mut CTemplate,
        keys: (*mut CK_OBJECT_HANDLE, *mut CK_OBJECT_HANDLE),
    ) -> CK_RV {
        let f = func!(self.C_GenerateKeyPair);
        // SAFETY: owned mechanism and templates; key handles writable.
        unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                public.as_mut_ptr(),
                public.count(),
                private.as_mut_ptr(),
                private.count(),
                keys.0,
                keys.1,
            )
        }
    }

    pub fn wrap_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        capacity: Out,
    ) -> Output {
        let Some(f) = self.list.C_WrapKey else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        let m = mech.as_mut_ptr();
        // SAFETY: owned mechanism; out/len come from with_out_buffer.
        with_out_buffer(capacity, |out, len| unsafe {
            f(session, m, wrapping, key, out, len)
        })
    }

    pub fn unwrap_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &Bytes,
        t: &mut CTemplate,
        key: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_UnwrapKey);
        let (wp, n) = match raw(wrapped) {
            Ok(r) => r,
            Err(rv) => return rv,
        };
        // SAFETY: owned mechanism, template and wrapped bytes.
        unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                unwrapping,
                wp,
                n,
                t.as_mut_ptr(),
                t.count(),
                key,
            )
        }
    }

    pub fn derive_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        base: CK_OBJECT_HANDLE,
        t: &mut CTemplate,
        key: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_DeriveKey);
        // SAFETY: owned mechanism and template.
        unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                base,
                t.as_mut_ptr(),
                t.count(),
                key,
            )
        }
    }

    /// C_GenerateRandom into a buffer of `len` bytes (`Err`: the caller's NULL buffer, with
    /// its length).
    pub fn generate_random(
        &self,
        session: CK_SESSION_HANDLE,
        len: Result<usize, CK_ULONG>,
    ) -> (CK_RV, Vec<u8>) {
        let Some(f) = self.list.C_GenerateRandom else {
            return (CKR_FUNCTION_NOT_SUPPORTED, vec![]);
        };
        let mut out = vec![0u8; *len.as_ref().unwrap_or(&0)];
        let (p, n) = match len {
            Ok(n) => (out.as_mut_ptr(), n as CK_ULONG),
            Err(n) => (ptr::null_mut(), n),
        };
        // SAFETY: out holds n writable bytes, or p is the caller's NULL.
        let rv = unsafe { f(session, p, n) };
        (rv, out)
    }
}
